"""The one trainer: rollout -> learning signal -> update, on accelerate, for every objective.

A step:

1. draw ``batch_size / group_size`` prompts and ``group_size`` seeds per prompt
   (:mod:`flowopd.draws`); every process samples its share (global sample
   ``n`` lives on rank ``n % world``, so groups straddle processes) with the
   SDE sampler and keeps the trained transitions (:mod:`flowopd.rollout`);
2. the objective's signal (:mod:`flowopd.objectives`): GRPO scores the images
   and computes group advantages; OPD asks the routed teachers (and the MAR
   anchor) for their velocities at the trained states;
3. for each of ``updates_per_rollout`` parts of the batch: recompute the
   student's velocity and the log-probabilities of the stored transitions with
   gradients, the objective's per-sample loss, accumulated over the trained
   steps; clip the grad norm, AdamW step, EMA step.

Prompts, seeds and SDE windows are pure functions of (seed, step), and the
checkpoint holds the LoRA, the optimizer and the EMA, so a resumed run
continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowopd.draws import draw_prompts, sample_seeds
from flowopd.errors import ConfigError, FlowOPDError
from flowopd.models import model_digest
from flowopd.objectives.base import objective_class
from flowopd.plan_checks import check_plan
from flowopd.run_folder import (
    CONFIG_FILE,
    LOG_FILE,
    RESTART,
    RUN_MARKER,
    checkpoints,
    clear_unstarted_run,
    prepare_run_dir,
    truncate_log,
)
from flowopd.train_config import TrainConfig

OBJECTIVE_STATE = "objective.safetensors"  # in a checkpoint: what the objective keeps beyond the LoRA (Objective.state_dict)


@dataclasses.dataclass
class Batch:
    """One process's share of a step's rollout."""

    local: list[int]  # global sample indices
    records: list  # the prompt record of each sample
    cond: Any  # PromptEmbeds
    uncond: Any  # PromptEmbeds | None (no CFG)
    plan: Any  # rollout.StepPlan
    traj: Any  # rollout.Trajectories
    signal: dict[str, Any] = dataclasses.field(default_factory=dict)  # what the objective's signal attaches (advantages, targets)


class Trainer:
    """One loop on a LoRA of the backbone's transformer; the signal and the loss are the objective's (``cfg.objective``)."""

    def __init__(self, cfg: TrainConfig, out: str | Path, resume: bool = False):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.cfg = cfg
        self.out = Path(out)
        mp = cfg.mixed_precision
        if mp == "auto":
            mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        trackers = [t for t in cfg.trackers if _tracker_available(t)]
        from flowopd.runinfo import check_launcher

        check_launcher()
        self.accelerator = Accelerator(
            mixed_precision=mp,
            log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "tensorboard")),
        )
        check_plan(cfg, self.accelerator.num_processes)
        self.resume_from = prepare_run_dir(cfg, self.out, resume)
        self.restarted = self.resume_from == RESTART
        if self.restarted:  # every process has looked at the folder before the main one clears it
            self.accelerator.wait_for_everyone()
            if self.accelerator.is_main_process:
                clear_unstarted_run(self.out)
            self.accelerator.wait_for_everyone()
            self.resume_from = None
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self._build()

    # ------------------------------------------------------------------ setup

    def _build(self) -> None:
        from flowopd.lora import add_lora
        from flowopd.models import load_backbone

        cfg, acc = self.cfg, self.accelerator
        weights = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(acc.mixed_precision, torch.float32)  # SD3's frozen weights
        self.backbone = load_backbone(cfg.model, device=str(acc.device), resolution=cfg.resolution, dtype=weights)
        self.base_digest = model_digest(cfg.model)
        self.backbone.requires_grad_(False)  # text encoders and VAE (SD3) are never trained; the LoRA alone is
        transformer = self.backbone.transformer
        torch.manual_seed(cfg.seed)  # the LoRA's initial A: part of the run's seed, whatever ran before in this process
        self.objective = objective_class(cfg)(self)
        init = self.objective.initial_lora()
        if init is None:
            add_lora(transformer, cfg.lora.rank, cfg.lora.alpha, tuple(cfg.lora.targets))
        else:
            from flowopd.lora import load_lora

            load_lora(transformer, init, "default", trainable=True)
        self.params = [p for p in transformer.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError(f"lora.targets {cfg.lora.targets} match no module of the transformer; use the defaults")
        for p in self.params:  # a bf16 base (SD3 on a GPU) trains its LoRA in float32, under accelerate's autocast
            p.data = p.data.float()
        if cfg.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        self.objective.setup()
        optimizer = torch.optim.AdamW(self.params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, betas=cfg.optim.betas)
        self.model, self.optimizer = acc.prepare(transformer, optimizer)
        self.ema = None
        if cfg.optim.ema_decay > 0:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params, decay=cfg.optim.ema_decay)
        from flowopd.watch import Watcher

        self.watch = Watcher(self)
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)
        self.step = 0

    def _raw(self) -> torch.nn.Module:
        return self.backbone.transformer

    # ------------------------------------------------------------------ checkpoints (LoRA + EMA as safetensors; optimizer via accelerate)

    def _save_hook(self, models, weights, output_dir) -> None:
        from safetensors.torch import save_file

        from flowopd.lora import lora_state_dict

        while weights:  # the frozen base is never written: only the LoRA
            weights.pop()
        if not self.accelerator.is_main_process:
            return
        out = Path(output_dir)
        save_file({k: v.cpu().contiguous() for k, v in lora_state_dict(self._raw()).items()}, out / "lora.safetensors")
        state = {"step": self.step, "config_digest": self.cfg.digest(), "base_digest": self.base_digest}
        if self.ema is not None:
            save_file({str(i): p.detach().cpu().contiguous() for i, p in enumerate(self.ema.shadow_params)}, out / "ema.safetensors")
            state["ema_optimization_step"] = self.ema.optimization_step
        if extra := self.objective.state_dict():  # e.g. DiffusionNFT's old policy
            save_file({k: v.detach().cpu().contiguous() for k, v in extra.items()}, out / OBJECTIVE_STATE)
        (out / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")

    def _load_hook(self, models, input_dir) -> None:
        from flowopd.lora import load_safetensors, set_lora_state_dict

        while models:
            models.pop()
        folder = Path(input_dir)
        state = json.loads((folder / "trainer_state.json").read_text())
        if state.get("base_digest") != self.base_digest:
            raise FlowOPDError(f"checkpoint {folder} belongs to another base model; resume it with the model it was trained from")
        set_lora_state_dict(self._raw(), load_safetensors(folder / "lora.safetensors"))
        if self.ema is not None:
            shadow = load_safetensors(folder / "ema.safetensors")
            self.ema.shadow_params = [shadow[str(i)].to(p.device) for i, p in enumerate(self.params)]
            self.ema.optimization_step = int(state["ema_optimization_step"])
        if (folder / OBJECTIVE_STATE).is_file():
            self.objective.load_state_dict(load_safetensors(folder / OBJECTIVE_STATE))
        self.step = int(state["step"])

    def save_checkpoint(self) -> Path:
        """accelerate's ``save_state`` into a temp folder, renamed when every process is done; old ones pruned."""
        acc = self.accelerator
        folder = self.out / "checkpoints"
        final = folder / f"step-{self.step:06d}"
        tmp = folder / f".step-{self.step:06d}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            folder.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in checkpoints(self.out)[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    # ------------------------------------------------------------------ one step

    def _owned(self, rank: int) -> list[int]:
        """The global sample indices process ``rank`` owns (interleaved, so a group spans processes)."""
        return list(range(rank, self.cfg.batch_size, self.accelerator.num_processes))

    def gather_global(self, local_values: torch.Tensor) -> torch.Tensor:
        """Gather per-sample values from every process back into global sample order."""
        acc = self.accelerator
        gathered = acc.gather(local_values.to(acc.device).contiguous()).cpu()
        world = acc.num_processes
        per = gathered.shape[0] // world
        out = torch.empty_like(gathered)
        for r in range(world):
            out[r::world] = gathered[r * per : (r + 1) * per]
        return out

    def per_task(self, values: torch.Tensor, local_tasks: list[str], prefix: str) -> dict[str, float]:
        """``{prefix}/{task}``: the mean of global per-sample ``values`` over each task's samples (tasks from every process)."""
        names = sorted(self.cfg.tasks)
        task_ids = self.gather_global(torch.tensor([names.index(t) for t in local_tasks]))
        return {f"{prefix}/{task}": float(values[task_ids == i].mean()) for i, task in enumerate(names) if (task_ids == i).any()}

    def train_step(self) -> dict[str, float]:
        """One rollout, its learning signal and the update(s); returns the step's metrics (identical on every process)."""
        t0 = time.perf_counter()
        batch = self._collect()
        t_rollout = time.perf_counter() - t0
        keep, metrics = self.objective.signal(batch)
        t_signal = time.perf_counter() - t0 - t_rollout
        metrics.update(self._update(batch, keep, self.objective.piece_loss))
        self.step += 1
        self.objective.after_update()
        metrics.update(time_rollout=t_rollout, time_signal=t_signal, time_step=time.perf_counter() - t0)
        return metrics

    def _collect(self) -> Batch:
        """This process's share of the step's rollout (prompts, seeds and window from (seed, step))."""
        from flowopd.rollout import rollout

        cfg, acc, scfg = self.cfg, self.accelerator, self.cfg.sampler
        g = cfg.group_size
        records = draw_prompts(cfg, self.step, cfg.batch_size // g)
        seeds = sample_seeds(cfg, self.step)
        local = self._owned(acc.process_index)
        recs = [records[n // g] for n in local]
        prompts = [r.prompt for r in recs]
        plan = self.objective.rollout_plan(self.step)
        with torch.no_grad():
            cond = self.backbone.encode_prompts(prompts)
            uncond = self.backbone.encode_prompts([scfg.negative_prompt] * len(prompts)) if scfg.cfg != 1.0 else None
        latent = [seeds[(n // g) * g] if scfg.same_latent else seeds[n] for n in local]
        self.model.eval()
        with acc.autocast(), self.objective.sampling_policy():
            traj = rollout(
                self.backbone,
                cond,
                uncond,
                [seeds[n] for n in local],
                plan,
                scfg.cfg,
                scfg.noise_level,
                scfg.kind,
                cfg.micro_batch,
                latent_seeds=latent,
                log_prob=scfg.log_prob,
            )
        return Batch(local, recs, cond, uncond, plan, traj)

    def guided(self, batch: Batch, rows, x: torch.Tensor, sigma: torch.Tensor, transformer=None) -> torch.Tensor:
        """The guided velocity at states ``x`` of this process's samples ``rows`` (a slice or a list of indices)."""
        from flowopd.sampling import guided_velocity

        dev = self.accelerator.device
        c = batch.cond[rows]
        nc = batch.uncond[rows] if batch.uncond is not None else None
        detach = self.cfg.sampler.detach_uncond and transformer is not None  # the update's forward, not a teacher's
        with self.accelerator.autocast():
            return guided_velocity(
                self.backbone, x, sigma.to(dev), c, nc, self.cfg.sampler.cfg, transformer=transformer, detach_uncond=detach
            )

    def _update(self, batch: Batch, keep: torch.Tensor, piece_loss) -> dict[str, float]:
        """The objective over the kept samples and trained steps; one optimizer step per part of the batch.

        ``piece_loss(batch, k, a, b, x, v, out)`` gives the per-sample loss of local
        samples ``a:b`` at trained step ``k`` (``v``: the student's velocity with
        gradient; ``out``: the SDE step scoring the stored ``x_next``) and the
        per-sample values to log.
        """
        cfg, acc = self.cfg, self.accelerator
        dev = acc.device
        self.model.train()
        world, parts = acc.num_processes, cfg.updates_per_rollout
        size = len(batch.local) // parts
        k_steps = self.objective.trained_steps(batch)
        keep_l = keep[batch.local].to(dev).float()
        sums: dict[str, torch.Tensor] = {}
        count = torch.zeros((), device=dev)
        grad_norms = []
        for u in range(parts):
            lo, hi = u * size, (u + 1) * size
            kept = sum(int(keep[self._owned(r)[lo:hi]].sum()) for r in range(world))  # over every process's part u
            if kept == 0:
                continue
            scale = world / (kept * k_steps)  # DDP averages over processes: the global mean over kept samples and steps
            pieces = [(k, a, min(a + cfg.micro_batch, hi)) for k in range(k_steps) for a in range(lo, hi, cfg.micro_batch)]
            for j, (k, a, b) in enumerate(pieces):
                sync = contextlib.nullcontext() if j == len(pieces) - 1 else acc.no_sync(self.model)
                with sync:
                    per_sample, logs = self._piece_backward(batch, piece_loss, k, a, b, keep_l[a:b], scale)
                w = keep_l[a:b]
                logs["loss"] = per_sample.detach()
                for name, values in logs.items():
                    sums[name] = sums.get(name, torch.zeros((), device=dev)) + (values.float() * w).sum()
                count += w.sum()
            grad_norms.append(float(acc.clip_grad_norm_(self.params, cfg.optim.grad_clip)))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.step(self.params)
        names = sorted(sums)
        totals = acc.reduce(torch.stack([count, *[sums[n] for n in names]]), reduction="sum").cpu() if names else torch.zeros(1)
        denom = max(float(totals[0]), 1.0)
        metrics = {n: float(totals[i + 1]) / denom for i, n in enumerate(names)}
        metrics.update(grad_norm=float(np.mean(grad_norms)) if grad_norms else 0.0, updates=float(len(grad_norms)))
        return metrics

    def _piece_backward(self, batch: Batch, piece_loss, k: int, a: int, b: int, w: torch.Tensor, scale: float) -> tuple[torch.Tensor, dict]:
        """One micro-batch at trained step ``k``: the student's velocity with gradient, the SDE step scoring the stored
        next states (objectives that use transitions), the objective's per-sample loss, and the backward of its kept
        (``w``) sum times ``scale``."""
        from flowopd.sde import sde_step

        scfg, dev = self.cfg.sampler, self.accelerator.device
        x, sigma = self.objective.piece_inputs(batch, k, a, b)
        x = x.to(dev)
        v = self.guided(batch, slice(a, b), x, sigma, transformer=self.model)
        out = None
        if self.objective.uses_transitions:
            sig, i_step = batch.plan.sigmas, batch.plan.trained[k]
            x_next = batch.traj.next_states[a:b, k].to(dev)
            out = sde_step(
                x, v, float(sig[i_step]), float(sig[i_step + 1]), scfg.noise_level, kind=scfg.kind, x_next=x_next, log_prob=scfg.log_prob
            )
        per_sample, logs = piece_loss(batch, k, a, b, x, v, out)
        self.accelerator.backward((per_sample * w).sum() * scale)
        return per_sample, logs

    def adapter(self, name: str | None):
        """Forwards with adapter ``name`` on the student's transformer (None: the base, i.e. the reference)."""
        from flowopd.lora import use_adapter

        return use_adapter(self._raw(), name)

    def reference_velocity(self, batch: Batch, a: int, b: int, x: torch.Tensor, i_step: int) -> torch.Tensor:
        """The reference's (the base, every adapter off) guided velocity at states ``x`` of local samples ``a:b``, no gradient."""
        with torch.no_grad(), self.adapter(None):
            return self.guided(batch, slice(a, b), x, batch.plan.sigmas[i_step])

    # ------------------------------------------------------------------ the run

    def train(self, progress: Callable[[int, dict[str, float]], None] | None = None) -> Path:
        """Run to ``cfg.steps`` (from the checkpoint when resuming); returns the saved LoRA folder."""
        from flowopd.config import save_config
        from flowopd.runinfo import run_info, write_json_atomic

        cfg, acc = self.cfg, self.accelerator
        if self.resume_from is not None:
            acc.load_state(str(self.resume_from))
            if acc.is_main_process:
                truncate_log(self.out / LOG_FILE, self.step)
                save_config(cfg, self.out / CONFIG_FILE)  # only resumable fields (steps, threads, logging) can differ
        elif acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / CONFIG_FILE)
            info = run_info(cfg.model_dump(mode="json"), cfg.seed)
            info.update(base_digest=self.base_digest, num_processes=acc.num_processes, config_digest=cfg.digest())
            write_json_atomic(self.out / RUN_MARKER, info)
        acc.wait_for_everyone()
        if acc.log_with:
            self._init_trackers()
        if progress:
            progress(self.step, {})
        if self.step == 0 and self.watch.due(0):  # the starting point of the held-out curve
            self._log(self.watch.evaluate(0))
        while self.step < cfg.steps and not self.watch.stop:
            metrics = self.train_step()
            if self.watch.due(self.step):
                metrics.update(self.watch.evaluate(self.step))
            self._log(metrics)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or self.watch.stop:
                self.save_checkpoint()
            if progress:
                progress(self.step, metrics)
        lora_dir = self.save_lora()
        acc.end_training()
        return lora_dir

    @contextlib.contextmanager
    def ema_weights(self):
        """The EMA weights in the live adapter for the block (nothing changes without an EMA); the trained ones after."""
        if self.ema is None:
            yield
            return
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    def write_lora(self, target: Path) -> None:
        """The adapter's current weights in the diffusers format with ``lora_info.json``, written atomically (main process)."""
        from flowopd.lora import save_lora
        from flowopd.runinfo import atomic_dir

        info = lora_record(self.cfg, self.base_digest, self.step, self.ema is not None)
        with atomic_dir(target, marker="lora_info.json") as tmp:
            save_lora(self._raw(), tmp, info)

    def _init_trackers(self) -> None:
        """The trackers, given the resolved config, the package versions and the git hash once (``run.*`` keys)."""
        from flowopd.runinfo import git_hash, package_versions

        config = _flat(self.cfg.model_dump(mode="json"))
        config.update(_flat({"versions": package_versions()}, "run."))
        config["run.git"] = str(git_hash())
        config["run.base_digest"] = self.base_digest
        wandb = {"name": self.cfg.name, "dir": str(self.out), "config": config}
        self.accelerator.init_trackers("flowopd", config=config, init_kwargs={"wandb": wandb})

    def _log(self, metrics: dict[str, float]) -> None:
        """One line of ``log.jsonl`` for this step (main process) and the trackers."""
        if self.accelerator.is_main_process:
            with open(self.out / LOG_FILE, "a") as f:
                f.write(json.dumps({"step": self.step, **{k: round(v, 6) for k, v in metrics.items()}}) + "\n")
        if self.accelerator.log_with:
            self.accelerator.log(metrics, step=self.step)

    def save_lora(self) -> Path:
        """The final LoRA (EMA weights when the EMA is on) in the diffusers format, written atomically to ``out/lora``."""
        target = self.out / "lora"
        if self.accelerator.is_main_process:
            with self.ema_weights():
                self.write_lora(target)
        self.accelerator.wait_for_everyone()
        return target


def lora_record(cfg: TrainConfig, base_digest: str, step: int, ema: bool) -> dict[str, Any]:
    """``lora_info.json`` of a run's LoRA: its base (name and digest), tasks, step, EMA, config digest, and the objective's record."""
    info = {
        "kind": "flowopd-lora",
        "name": cfg.name,
        "base": cfg.model,
        "base_digest": base_digest,
        "tasks": cfg.tasks,
        "step": step,
        "ema": ema,
        "config_digest": cfg.digest(),
    }
    info.update(objective_class(cfg).lora_fields(cfg))
    return info


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _tracker_available(name: str) -> bool:
    """tensorboard: used when installed (the default, silently skipped otherwise); wandb: asked for, so refused when absent."""
    import importlib.util

    if name == "tensorboard":
        return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None
    if name == "wandb":
        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("trackers: wandb is not installed; pip install 'flowopd[wandb]' (or drop wandb from trackers)")
        return True
    return False
