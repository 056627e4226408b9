"""The objective interface: what a learning signal adds to the one rollout and the one trainer.

The trainer owns everything every objective shares: the LoRA, the rollout
(SDE transitions with the student's velocities and log-probabilities), the
update loop over trained steps, the optimizer, the EMA, checkpoints and the
run folder. An objective owns its config section and answers five questions:

- ``check_arithmetic(cfg, processes)`` / ``check_inputs(cfg)``: what is wrong
  with the plan, as one line naming the fix, before any model loads;
- ``initial_lora()``: a LoRA folder to start from (OPD's cold start), or None
  for a fresh LoRA;
- ``setup()``: load what the signal needs (rewards; teachers and an anchor);
- ``signal(batch)``: after the rollout, the samples to train on and the step's
  metrics; it may attach per-sample data to the batch (advantages, targets);
- ``piece_loss(batch, k, a, b, x, v, out)``: the per-sample loss of local
  samples ``a:b`` at trained step ``k``, given the student's velocity ``v``
  (with gradient) at the stored states ``x`` and the SDE step ``out`` that
  scores the stored next states; returns the loss and per-sample values to log.

``lora_fields(cfg)`` adds the objective's own record to ``lora_info.json``, and
``plan_fields(cfg)`` its section to the dry-run plan.

Adding an objective is one module with a subclass and one line in
:data:`OBJECTIVES` (docs/architecture.md walks through it).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from flowopd.registry import Registry

if TYPE_CHECKING:
    from pathlib import Path

    from flowopd.train_config import TrainConfig

# name -> "module:Class", imported when a run uses it
OBJECTIVES: Registry[type[Objective]] = Registry(
    "objective",
    {
        "grpo": "flowopd.objectives.grpo:GRPO",
        "opd": "flowopd.objectives.opd:OPD",
    },
)


class Objective(abc.ABC):
    """A learning signal and its loss over the trainer's rollout (see the module docstring); ``signal`` and ``piece_loss``
    are abstract, so an objective without them fails when the trainer builds it, not mid-run."""

    name: ClassVar[str]

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.cfg: TrainConfig = trainer.cfg
        self.last_batch: dict[str, Any] = {}  # the last signal's per-sample values (tests and debugging)

    # ---------------------------------------------------------------- before any model loads

    @classmethod
    def check_arithmetic(cls, cfg: TrainConfig, num_processes: int) -> None:
        """The objective's own numbers (reads no file)."""
        return None  # optional: nothing by default

    @classmethod
    def check_inputs(cls, cfg: TrainConfig) -> None:
        """What the objective reads (reward weights, teachers), a one-line error each."""
        return None  # optional: nothing by default

    @classmethod
    def lora_fields(cls, cfg: TrainConfig) -> dict[str, Any]:
        """The objective's entries in the saved LoRA's ``lora_info.json``."""
        return {}

    @classmethod
    def plan_fields(cls, cfg: TrainConfig) -> dict[str, Any]:
        """The objective's section of the dry-run plan (``flowopd train ... --dry-run``)."""
        return {}

    # ---------------------------------------------------------------- in the run

    def initial_lora(self) -> Path | None:
        """A LoRA folder the student starts from; None: a fresh LoRA (``cfg.lora``)."""
        return None

    def setup(self) -> None:
        """Load what ``signal`` needs, after the trained LoRA exists."""
        return None  # optional: nothing by default

    @abc.abstractmethod
    def signal(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The mask of global samples to train on [batch_size] and the step's metrics (identical on every process)."""

    @abc.abstractmethod
    def piece_loss(self, batch: Any, k: int, a: int, b: int, x: torch.Tensor, v: torch.Tensor, out: Any) -> tuple[torch.Tensor, dict]:
        """Per-sample loss [b - a] at trained step ``k`` and per-sample values to log."""


def objective_class(cfg: TrainConfig) -> type[Objective]:
    """The objective class ``cfg`` trains with (``cfg.objective``), imported on first use."""
    return OBJECTIVES.get_or_explain(cfg.objective)
