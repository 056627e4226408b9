"""Pre-train the mini base model by flow matching (eq. 1) on rendered data.

Each batch is rendered on the fly from :func:`flowopd.mini.world.training_record`,
so the data are infinite and reproducible from the seed. Loss:
``|| v_theta(x_sigma, sigma, c) - (eps - x0) ||^2`` with
``x_sigma = (1 - sigma) x0 + sigma eps`` and ``sigma ~ logit-normal(0, 1)``
(SD3's timestep density). Prompts are dropped to ``""`` 10% of the time so CFG
has an unconditional branch. Text encoder and transformer train together; the
EMA weights are what ship.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flowopd.flow_matching import flow_matching_loss
from flowopd.mini import world
from flowopd.mini.model import MiniBackbone


class PretrainConfig(BaseModel):
    """Flow-matching pre-training of the mini base."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(4000, ge=1, description="optimizer steps")
    batch_size: int = Field(64, ge=1, description="images per step")
    lr: float = Field(7e-4, gt=0, description="AdamW peak learning rate (linear warm-up, cosine decay to 10%)")
    warmup: int = Field(200, ge=0, description="warm-up steps")
    weight_decay: float = Field(0.01, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of the weights; the EMA model is saved")
    prompt_dropout: float = Field(0.1, ge=0, le=1, description="probability of training on the empty prompt")
    seed: int = 0
    threads: int = Field(0, ge=0, description="torch CPU threads (0: all cores)")
    save_every: int = Field(1000, ge=1, description="write the EMA model every N steps")
    task_mix: dict[str, float] = Field(
        default_factory=lambda: dict(world.DEFAULT_TASK_MIX), description="sampling weight of each task: compose, text, preference, quality"
    )
    text_typo_rate: float = Field(
        world.TEXT_TYPO_RATE, ge=0, lt=1, description="probability that a text render misquotes each digit (world.misquote)"
    )
    init_from: str | None = Field(None, description="start from this model (mini-base or a folder) instead of random weights")
    compose_tags: dict[str, float] | None = Field(
        None, description="sampling weight of each compose tag (world.COMPOSE_TAGS; a tag left out is not drawn); None: uniform"
    )

    @field_validator("task_mix")
    @classmethod
    def _valid_mix(cls, mix: dict[str, float]) -> dict[str, float]:
        return _sampling_weights(mix, world.TASKS, "tasks")

    @field_validator("compose_tags")
    @classmethod
    def _valid_tags(cls, tags: dict[str, float] | None) -> dict[str, float] | None:
        return None if tags is None else _sampling_weights(tags, world.COMPOSE_TAGS, "compose tags")


def _sampling_weights(weights: dict[str, float], allowed: tuple[str, ...], what: str) -> dict[str, float]:
    """``weights`` if every key is one of ``allowed`` and the weights are >= 0 with a positive sum, else ValueError."""
    unknown = set(weights) - set(allowed)
    if unknown:
        raise ValueError(f"unknown {what} {sorted(unknown)}; use {', '.join(allowed)}")
    if any(v < 0 for v in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError("weights must be >= 0 with a positive sum")
    return weights


def render_batch(
    rng: np.random.Generator,
    n: int,
    dropout: float,
    mix: dict[str, float] | None = None,
    typo_rate: float = world.TEXT_TYPO_RATE,
    tags: dict[str, float] | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """``n`` data images in [0, 1] and their prompts (some replaced by ``""``); compose tags drawn by ``tags``."""
    images, prompts = [], []
    for _ in range(n):
        rec = world.training_record(rng, mix, tags)
        images.append(world.render(rec, rng, typo_rate=typo_rate))
        prompts.append("" if rng.random() < dropout else rec.prompt)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return x, prompts


STATE_FILE = "trainer_state.pt"
RESUME_FREE_KEYS = ("threads", "save_every")  # may differ between a run and its resumption


@dataclasses.dataclass
class _Run:
    """Everything a pre-training run carries from step to step (and saves, to resume exactly)."""

    model: MiniBackbone
    params: list
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    ema: Any
    rng: np.random.Generator
    gen: torch.Generator


def pretrain(cfg: PretrainConfig, out: Path, progress=None, resume: bool = False) -> MiniBackbone:
    """Train and write the EMA model to ``out`` every ``save_every`` steps (atomically).

    Each save also writes ``trainer_state.pt`` (weights, optimizer, schedule,
    EMA, both random generators); ``resume=True`` continues from it exactly as
    if the run had not stopped.
    """
    from flowopd.errors import ConfigError
    from flowopd.runinfo import check_output_dir, run_info

    check_output_dir(out, "model_info.json")
    if not resume and (Path(out) / "model_info.json").is_file():  # replacing a base would orphan every LoRA trained on it
        raise ConfigError(f"{out} already holds a pre-trained model; pass --resume to continue its run, or a new --out")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = _start(cfg)
    info = run_info(cfg.model_dump(), cfg.seed)
    start, wall_before = _resume(run, cfg, Path(out)) if resume else (0, 0.0)
    t0 = time.time() - wall_before
    for step in range(start, cfg.steps):
        images, prompts = render_batch(run.rng, cfg.batch_size, cfg.prompt_dropout, cfg.task_mix, cfg.text_typo_rate, cfg.compose_tags)
        loss = flow_matching_loss(run.model, images, prompts, run.gen)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.params, 1.0)
        run.opt.step()
        run.sched.step()
        run.ema.step(run.params)
        if progress is not None:
            progress(step + 1, loss.item())
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            _save(run, cfg, Path(out), info, step + 1, round(time.time() - t0, 1))
    run.ema.copy_to(run.params)
    run.model.eval()
    return run.model


def _start(cfg: PretrainConfig) -> _Run:
    """A fresh run: the seeded generators, the model (random, or ``init_from``), AdamW, warm-up + cosine schedule, EMA."""
    from diffusers.training_utils import EMAModel

    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = MiniBackbone.random(cfg.seed)
    if cfg.init_from:
        from flowopd.models import load_backbone

        model.load_state_dict(load_backbone(cfg.init_from).state_dict())
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    return _Run(model, params, opt, sched, EMAModel(params, decay=cfg.ema_decay), rng, gen)


def _resume(run: _Run, cfg: PretrainConfig, out: Path) -> tuple[int, float]:
    """Load ``out``'s saved state into ``run`` (refused when the config differs); returns (step, wall seconds so far)."""
    from flowopd.errors import ConfigError

    state_path = out / STATE_FILE
    if not state_path.is_file():
        raise ConfigError(f"nothing to resume: {state_path} does not exist; drop --resume to start a new run")
    state = torch.load(state_path, weights_only=True)
    saved = {k: v for k, v in state["config"].items() if k not in RESUME_FREE_KEYS}
    now = {k: v for k, v in cfg.model_dump().items() if k not in RESUME_FREE_KEYS}
    if saved != now:
        diff = ", ".join(f"{k}: {saved.get(k)!r} in the checkpoint vs {now.get(k)!r}" for k in now if saved.get(k) != now.get(k))
        raise ConfigError(f"cannot resume {out} with a different config ({diff}); use the checkpoint's values")
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    run.ema.load_state_dict(state["ema"])
    run.rng.bit_generator.state = state["numpy_rng"]
    run.gen.set_state(state["torch_rng"])
    return int(state["step"]), float(state["wall_seconds"])


def _save(run: _Run, cfg: PretrainConfig, out: Path, info: dict, step: int, wall: float) -> None:
    """The EMA model (fp16) and the state that resumes the run exactly, written into ``out`` whole or not at all."""
    from flowopd.runinfo import atomic_dir, write_json_atomic

    snapshot = copy.deepcopy(run.model)
    run.ema.copy_to([p for p in snapshot.parameters() if p.requires_grad])
    extra = {"pretrain": {"step": step, "wall_seconds": wall, "threads": torch.get_num_threads()}}
    with atomic_dir(out, marker="model_info.json") as tmp:
        snapshot.save_pretrained(tmp, dtype=torch.float16, extra=extra)
        write_json_atomic(tmp / "run.json", {**info, **extra})
        state = {
            "step": step,
            "wall_seconds": wall,
            "config": cfg.model_dump(),
            "model": run.model.state_dict(),
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            "ema": run.ema.state_dict(),
            "numpy_rng": run.rng.bit_generator.state,
            "torch_rng": run.gen.get_state(),
        }
        torch.save(state, tmp / STATE_FILE)
