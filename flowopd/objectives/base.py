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

Objectives that do not train on the rollout's SDE transitions (DiffusionNFT)
also override the rollout hooks: ``rollout_plan(step)`` (which steps are
stochastic and trained), ``sampling_policy()`` (the adapter that samples),
``trained_steps(batch)`` and ``piece_inputs(batch, k, a, b)`` (the states and
times the update's forwards run at), ``uses_transitions`` (whether the update
scores stored transitions), ``after_update()``, and ``state_dict`` /
``load_state_dict`` for what a checkpoint must keep beyond the LoRA.

``lora_fields(cfg)`` adds the objective's own record to ``lora_info.json``, and
``plan_fields(cfg)`` its section to the dry-run plan.

Adding an objective is one module with a subclass and one line in
:data:`OBJECTIVES` (docs/architecture.md walks through it).
"""

from __future__ import annotations

import abc
import contextlib
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
        "nft": "flowopd.objectives.nft:NFT",
    },
)


class Objective(abc.ABC):
    """A learning signal and its loss over the trainer's rollout (see the module docstring); ``signal`` and ``piece_loss``
    are abstract, so an objective without them fails when the trainer builds it, not mid-run."""

    name: ClassVar[str]
    uses_transitions: ClassVar[bool] = True  # the update scores the rollout's stored SDE transitions (log-probabilities)

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.cfg: TrainConfig = trainer.cfg
        self.last_batch: dict[str, Any] = {}  # the last signal's per-sample values (tests and debugging)
        self._plans: dict[int, Any] = {}  # window start -> StepPlan

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

    def rollout_plan(self, step: int) -> Any:
        """The step's :class:`flowopd.rollout.StepPlan`: the SDE window drawn from (seed, step) by default."""
        from flowopd.draws import window_start
        from flowopd.rollout import plan_steps

        s, start = self.cfg.sampler, window_start(self.cfg, step)
        if start not in self._plans:
            self._plans[start] = plan_steps(s.steps, s.shift, s.window_size, start, s.timestep_fraction, s.spacing, s.shift_terminal)
        return self._plans[start]

    def sampling_policy(self) -> contextlib.AbstractContextManager:
        """The adapter the rollout samples with, as a context (default: the trained one)."""
        return contextlib.nullcontext()

    def trained_steps(self, batch: Any) -> int:
        """How many trained steps each sample of ``batch`` has (the update's inner loop)."""
        return len(batch.plan.trained)

    def piece_inputs(self, batch: Any, k: int, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The states of local samples ``a:b`` at trained step ``k`` and their sigma (a scalar, or one per sample)."""
        return batch.traj.states[a:b, k], batch.plan.sigmas[batch.plan.trained[k]]

    def after_update(self) -> None:
        """Called once per step, after its optimizer steps."""
        return None  # optional: nothing by default

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors a checkpoint must keep beyond the LoRA, the optimizer and the EMA (none by default)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` from a checkpoint."""
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
