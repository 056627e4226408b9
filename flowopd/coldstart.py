"""Cold start (SPEC section 5): the student's first LoRA, from the teachers, before on-policy distillation.

- **merge**: the teachers' LoRAs combined through peft's ``add_weighted_adapter``.
  ``cat`` (default) concatenates the adapters (rank = sum of ranks) with
  ``A_k`` scaled by ``w_k * scaling_k``, so ``dW = sum_k w_k B_k A_k scaling_k``
  exactly: the weighted average of the teachers' updates. ``svd`` truncates
  that sum back to a rank; ``ties`` and ``dare_linear`` are peft's task-arithmetic
  merges. ``elementwise`` averages the A's and the B's separately (what the
  Flow-OPD release's merge script does); ``sum w B * sum w A`` is not the
  average of ``dW``: it is kept only to reproduce that release.
- **sft**: each teacher draws ODE images for training prompts of the tasks routed
  to it; a fresh student LoRA regresses them with the flow-matching loss (eq. 1).

Both write a LoRA folder in the diffusers format with ``lora_info.json``.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowopd.errors import ConfigError
from flowopd.train_config import TrainConfig


def teacher_adapter(name: str) -> str:
    """The adapter name of teacher ``name`` on the student's transformer."""
    return f"teacher_{name}"


def load_teachers(backbone, cfg: TrainConfig) -> dict[str, str]:
    """Load every teacher of ``cfg.opd`` as a frozen adapter on ``backbone``'s transformer; returns teacher -> adapter name.

    A teacher recorded as trained on another base, or whose shapes do not fit
    this transformer, is refused with a one-line error before any compute.
    """
    from flowopd.lora import load_lora
    from flowopd.models import check_base, model_digest

    digest = model_digest(cfg.model)
    adapters = {}
    for spec in cfg.opd.teachers:
        folder = spec.lora_folder()
        check_base(folder, cfg.model, digest)
        adapters[spec.name] = teacher_adapter(spec.name)
        load_lora(backbone.transformer, folder, adapters[spec.name])
    return adapters


def merge_weights(cfg: TrainConfig) -> dict[str, float]:
    names = [t.name for t in cfg.opd.teachers]
    given = cfg.opd.cold_start.weights
    if not given:
        return {n: 1.0 / len(names) for n in names}
    if set(given) != set(names):
        raise ConfigError(f"opd.cold_start.weights names {sorted(given)}; give one weight per teacher: {names}")
    return {n: float(given[n]) for n in names}


def check_mergeable(transformer, adapters: dict[str, str], method: str) -> None:
    """Teachers must adapt the same modules; all but cat and svd (exact on dW) also need one rank and alpha."""
    configs = {t: transformer.peft_config[a] for t, a in adapters.items()}
    first, ref = next(iter(configs.items()))
    for name, c in configs.items():
        if set(c.target_modules) != set(ref.target_modules):
            raise ConfigError(
                f"teachers {first!r} and {name!r} adapt different modules ({sorted(ref.target_modules)} vs {sorted(c.target_modules)}); "
                "merge teachers trained with the same lora.targets"
            )
        if method not in ("cat", "svd") and (c.r, c.lora_alpha) != (ref.r, ref.lora_alpha):
            raise ConfigError(
                f"a {method} merge needs one rank: teacher {first!r} has r={ref.r}/alpha={ref.lora_alpha}, {name!r} r={c.r}/alpha={c.lora_alpha}; "
                "use merge: cat (exact for any ranks) or teachers of one rank"
            )


def merge_teachers(cfg: TrainConfig, out: Path) -> Path:
    """The merge cold start into ``out`` (a LoRA folder); see the module docstring for the methods."""
    from peft import LoraModel

    from flowopd.lora import lora_state_dict, save_lora
    from flowopd.models import load_backbone, model_digest
    from flowopd.runinfo import atomic_dir

    cs = cfg.opd.cold_start
    backbone = load_backbone(cfg.model, device=_device())
    transformer = backbone.transformer
    adapters = load_teachers(backbone, cfg)
    check_mergeable(transformer, adapters, cs.merge)
    weights = merge_weights(cfg)
    names = list(adapters.values())
    w = [weights[t] for t in adapters]
    if cs.merge == "elementwise":
        state = _elementwise(transformer, names, w)
        save_name = names[0]  # same rank and alpha as every teacher
    else:
        first = transformer.peft_config[names[0]]
        scratch = copy.deepcopy(first)  # LoraModel injects one adapter of its own; deleted with the backbone
        with warnings.catch_warnings():  # peft warns that the model already holds adapters: the teachers, on purpose
            warnings.simplefilter("ignore", UserWarning)
            tuner = LoraModel(transformer, {**transformer.peft_config, "merge_scratch": scratch}, "merge_scratch")
        torch.manual_seed(cfg.seed)  # dare_linear drops weights at random
        extra: dict[str, Any] = {}
        if cs.merge == "svd":
            extra["svd_rank"] = cs.svd_rank or max(transformer.peft_config[n].r for n in names)
        if cs.merge in ("ties", "dare_linear"):
            extra["density"] = cs.density
        tuner.add_weighted_adapter(names, w, "merged", combination_type=cs.merge, **extra)
        state, save_name = lora_state_dict(transformer, "merged"), "merged"
    info = {
        "kind": "flowopd-lora",
        "name": f"coldstart-merge-{cs.merge}",
        "base": cfg.model,
        "base_digest": model_digest(cfg.model),
        "cold_start": {"method": "merge", "merge": cs.merge, "weights": weights},
        "teachers": {t.name: t.checkpoint for t in cfg.opd.teachers},
    }
    with atomic_dir(out, marker="lora_info.json") as tmp:
        save_lora(transformer, tmp, info, name=save_name, state=state)
    return out


def _elementwise(transformer, names: list[str], weights: list[float]) -> dict[str, torch.Tensor]:
    """``A = sum w_k A_k``, ``B = sum w_k B_k`` (the release's merge; not the average of ``dW``)."""
    from flowopd.lora import lora_state_dict

    states = [lora_state_dict(transformer, n) for n in names]
    return {k: sum(wk * s[k] for wk, s in zip(weights, states)) for k in states[0]}


def _device() -> str:
    """Cold starts run in one process before training: on the GPU when there is one (SD3.5 on a CPU would take days)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _draw(pool: tuple, n: int, rng: np.random.Generator) -> list:
    """``n`` distinct records of ``pool`` (all of them when it is smaller)."""
    return [pool[int(i)] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)]


def sft_cold_start(cfg: TrainConfig, out: Path, progress: Callable[[str, int, int], None] | None = None) -> Path:
    """The SFT cold start into ``out``: teacher images for their routed prompts, then flow matching (eq. 1) on a fresh LoRA."""
    from flowopd.flow_matching import flow_matching_loss
    from flowopd.lora import add_lora, save_lora
    from flowopd.models import load_backbone, model_digest
    from flowopd.runinfo import atomic_dir

    sft = cfg.opd.cold_start.sft
    backbone = load_backbone(cfg.model, device=_device(), resolution=cfg.resolution)
    backbone.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    add_lora(backbone.transformer, cfg.lora.rank, cfg.lora.alpha, tuple(cfg.lora.targets))
    data, prompts = _teacher_images(backbone, cfg, progress)
    params = [p for p in backbone.transformer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=sft.lr, weight_decay=cfg.optim.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    backbone.transformer.train()
    t0, losses = time.perf_counter(), []
    for step in range(sft.steps):
        idx = torch.randint(0, len(data), (min(sft.batch_size, len(data)),), generator=gen)
        drop = torch.rand(len(idx), generator=gen) < sft.prompt_dropout
        batch_prompts = ["" if d else prompts[int(i)] for i, d in zip(idx, drop)]
        loss = flow_matching_loss(backbone, data[idx], batch_prompts, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if progress and (step + 1) % 10 == 0:
            progress("sft", step + 1, sft.steps)
    info = {
        "kind": "flowopd-lora",
        "name": "coldstart-sft",
        "base": cfg.model,
        "base_digest": model_digest(cfg.model),
        "cold_start": {"method": "sft", "images": len(data), **sft.model_dump()},
        "teachers": {t.name: t.checkpoint for t in cfg.opd.teachers},
        "final_loss": float(np.mean(losses[-10:])),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    with atomic_dir(out, marker="lora_info.json") as tmp:
        save_lora(backbone.transformer, tmp, info)
    return out


def _teacher_images(backbone, cfg: TrainConfig, progress) -> tuple[torch.Tensor, list[str]]:
    """Each teacher's ODE images for training prompts of the tasks it serves (its adapter on ``backbone``), and their prompts."""
    from flowopd.draws import training_prompts
    from flowopd.lora import use_adapter
    from flowopd.models import prompt_world
    from flowopd.sampling import sample_ode

    sft = cfg.opd.cold_start.sft
    adapters = load_teachers(backbone, cfg)
    images, prompts = [], []
    rng = np.random.default_rng([cfg.seed, 7])
    tasks = [t for t, w in cfg.tasks.items() if w > 0]
    for t_index, spec in enumerate(cfg.opd.teachers):
        served = [t for t in spec.tasks if t in tasks]
        recs = [
            r
            for i, task in enumerate(served)
            for r in (
                _draw(training_prompts(cfg.prompts[task], task), sft.prompts_per_teacher, rng)
                if task in cfg.prompts
                else prompt_world(cfg.model).prompts(task, sft.prompts_per_teacher, 31_000 + 10 * t_index + i, split="train")
            )
        ]
        if not recs:
            continue
        batch_prompts = [r.prompt for r in recs for _ in range(sft.images_per_prompt)]
        seeds = [int(s) for s in rng.integers(0, 2**31, size=len(batch_prompts))]
        if progress:
            progress(f"teacher {spec.name} draws", t_index, len(cfg.opd.teachers))
        schedule = {"shift": sft.sample_shift, "spacing": cfg.sampler.spacing, "shift_terminal": cfg.sampler.shift_terminal}  # the model's
        with use_adapter(backbone.transformer, adapters[spec.name]), torch.no_grad():
            images.append(sample_ode(backbone, batch_prompts, seeds, steps=sft.sample_steps, cfg=sft.sample_cfg, **schedule))
        prompts += batch_prompts
    return torch.cat(images), prompts


def cold_start(cfg: TrainConfig, out: Path, reuse: bool = False, progress: Callable[[str, int, int], None] | None = None) -> Path | None:
    """The student's initial LoRA folder for ``cfg``, written to ``out`` (``reuse``: keep one already there); None: a fresh LoRA."""
    from flowopd.lora import LORA_FILE

    cs = cfg.opd.cold_start
    if cs.from_lora:
        folder = Path(cs.from_lora)
        if not (folder / LORA_FILE).is_file():
            raise ConfigError(
                f"opd.cold_start.from_lora {folder} is not a LoRA folder (no {LORA_FILE}); pass one written by `flowopd train coldstart`"
            )
        return folder
    if cs.method == "none":
        return None
    if reuse and (out / LORA_FILE).is_file():
        return out
    if cs.method == "merge":
        return merge_teachers(cfg, out)
    return sft_cold_start(cfg, out, progress)


def delta_weight(transformer, adapter: str, module: str) -> torch.Tensor:
    """``scaling * B @ A`` of ``adapter`` on ``module``: the update it adds to that weight (for the merge tests)."""
    layer = dict(transformer.named_modules())[module]
    return layer.lora_B[adapter].weight @ layer.lora_A[adapter].weight * layer.scaling[adapter]
