"""The one trainer: rollout -> learning signal -> update, on accelerate, for GRPO and OPD alike.

A GRPO step (SPEC section 4):

1. draw ``batch_size / group_size`` prompts and ``group_size`` seeds per prompt;
   every process samples its share (global sample ``n`` lives on rank
   ``n % world``, so groups straddle processes) with the SDE sampler and keeps
   the trained transitions (:mod:`flowopd.rollout`);
2. score the images (:class:`~flowopd.reward_models.weighted.WeightedReward`),
   gather every reward, and compute each group's advantages over the whole
   group, identically on every process;
3. for each of ``updates_per_rollout`` parts of the batch: recompute the
   log-probabilities of the stored transitions with gradients, clipped ratio
   loss + ``beta`` KL to the reference (the LoRA disabled), accumulate over the
   trained steps, clip the grad norm, AdamW step, EMA step.

An OPD step (SPEC section 6) replaces step 2: the routed teachers' (and the
MAR anchor's) velocities at the trained states, batched per teacher, without
gradients; and the loss in step 3 by the OPD objective (:mod:`flowopd.objectives.opd`).

Prompts, seeds and SDE windows are pure functions of (seed, step), and the
checkpoint holds the LoRA, the optimizer and the EMA, so a resumed run
continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowopd.errors import ConfigError, FlowOPDError
from flowopd.models import model_digest
from flowopd.train_config import TrainConfig

RUN_MARKER = "run.json"
CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
RESTART = "restart"  # prepare_run_dir: the folder holds a run with no checkpoint yet; start it over in place
COLDSTART_DIR = "coldstart"  # an OPD run's cold-start LoRA (a fresh start left it behind only if it stopped before run.json)


# ----------------------------------------------------------------------------- the plan, checked before any compute


def check_plan(cfg: TrainConfig, num_processes: int = 1) -> None:
    """Every batch/group/process/window/reward problem as a one-line error naming the fix, before a model loads."""
    check_arithmetic(cfg, num_processes)
    check_inputs(cfg)


def check_arithmetic(cfg: TrainConfig, num_processes: int = 1) -> None:
    """The plan's numbers: batch, groups, processes, updates, sampler window, OPD's trained steps; reads no file."""
    from flowopd.rollout import check_window

    b, g = cfg.batch_size, cfg.group_size
    if b % g:
        ok = [d for d in range(2, b + 1) if b % d == 0]
        raise ConfigError(
            f"group_size {g} does not divide batch_size {b}; use batch_size {math.ceil(b / g) * g} or a group_size in {ok[:8]}"
        )
    if b % num_processes:
        raise ConfigError(f"batch_size {b} does not split over {num_processes} processes; use a multiple of {num_processes}")
    local = b // num_processes
    u = cfg.grpo.updates_per_rollout
    if local % u:
        raise ConfigError(
            f"each process holds {local} samples, which do not split into updates_per_rollout={u} equal parts; "
            f"use a batch_size that is a multiple of {num_processes * u}"
        )
    check_window(cfg.sampler.steps, cfg.sampler.window_size, cfg.sampler.window_start_max)
    if cfg.sampler.noise_level == 0:
        raise ConfigError("sampler.noise_level 0 makes every step deterministic: GRPO and OPD need log-probabilities; use e.g. 0.7")
    epoch_like = cfg.task_sampling == "alternate" or (cfg.opd is not None and cfg.opd.routing == "epoch")
    if epoch_like and any(w != int(w) for w in cfg.tasks.values()):
        raise ConfigError(
            "one task per step (task_sampling: alternate or opd.routing: epoch) needs integer task weights (e.g. {compose: 3, text: 1})"
        )
    if cfg.opd is not None:
        from flowopd.teachers import Router

        Router(cfg.opd.teachers, cfg.opd.routing).check([t for t, w in cfg.tasks.items() if w > 0])
        _check_kl_weights(cfg)


def check_inputs(cfg: TrainConfig) -> None:
    """What the run reads: the base model, reward weights, prompt files, teachers and anchor (a one-line error each)."""
    from flowopd.mini import world
    from flowopd.reward_models.registry import get_reward_class

    _check_prompts(cfg)
    if cfg.opd is not None:
        _check_opd(cfg)
        return
    names = set(cfg.rewards) | {n for w in cfg.task_rewards.values() for n in w}
    for name in sorted(names):
        cls = get_reward_class(name)  # unknown names: "did you mean ..."
        ok, why = cls.weights_status()
        if not ok:
            raise FlowOPDError(f"reward {name!r} cannot run here: {why}")
    bad_tasks = sorted(set(cfg.task_rewards) - set(world.TASKS))
    if bad_tasks:
        raise ConfigError(f"task_rewards names unknown tasks {bad_tasks}; use {', '.join(world.TASKS)}")
    rewards = {n: get_reward_class(n)() for n in names}
    for t_index, task in enumerate(t for t, w in cfg.tasks.items() if w > 0):
        rec = (
            training_prompts(cfg.prompts[task], task)[0]
            if task in cfg.prompts
            else world.make_prompts(task, 1, seed=t_index, split="train")[0]
        )
        weights = cfg.task_rewards.get(task, cfg.rewards)
        if not any(w > 0 and rewards[n].applies_to(rec.prompt, rec.metadata) for n, w in weights.items()):
            raise ConfigError(
                f"no reward in {sorted(weights)} can score {task} prompts such as {rec.prompt!r}; "
                f"add one (e.g. task_rewards: {{{task}: {{...}}}}) or drop {task} from tasks"
            )


def _check_prompts(cfg: TrainConfig) -> None:
    """An SD3 base needs a prompt file for every task it trains on (the mini generator speaks only the mini vocabulary)."""
    from flowopd.models import is_sd3

    if is_sd3(cfg.model):
        missing = [t for t, w in cfg.tasks.items() if w > 0 and t not in cfg.prompts]
        if missing:
            raise ConfigError(
                f"tasks {missing} have no training prompts for {cfg.model}; add e.g. prompts: {{{missing[0]}: "
                f"{ {'compose': 'geneval-train', 'text': 'ocr-train'}.get(missing[0], 'pickscore-train') }}} (a named set or a file)"
            )
    elif cfg.resolution not in (None, 32):
        raise ConfigError(f"resolution {cfg.resolution}: the mini world is 32 px; leave resolution unset for a mini model")
    for task, spec in cfg.prompts.items():
        if cfg.tasks.get(task, 0) > 0:
            training_prompts(spec, task)  # a missing or malformed file fails here, with its fix


def _check_opd(cfg: TrainConfig) -> None:
    """OPD's own problems: a task without a teacher, a teacher or anchor that is not there, bad merge weights."""
    from flowopd.coldstart import merge_weights
    from flowopd.models import check_base

    opd = cfg.opd
    digest = model_digest(cfg.model)
    for spec in opd.teachers:  # a teacher (or anchor) recorded as trained on another base: refused before the cold start
        check_base(spec.lora_folder(), cfg.model, digest)
    if opd.anchor is not None:
        check_base(anchor_folder(cfg), cfg.model, digest)
    if opd.cold_start.method == "merge" and not opd.cold_start.from_lora:
        merge_weights(cfg)


def _check_kl_weights(cfg: TrainConfig) -> None:
    """No trained step may be (nearly) deterministic: OPD's KL there is undefined, or so heavily weighted that it rules the loss.

    With cps the std of a step is ``sigma_next * sin(a pi / 2)``: the last step
    (``sigma_next = 0``) has none, and diffusers' schedules end ``..., 0.001, 0``,
    so the step into 0.001 weighs thousands of times any other (eq. 9 is exact
    there; one step would decide every update).
    """
    import torch

    from flowopd.rollout import plan_steps
    from flowopd.sde import per_step_kl

    scfg = cfg.sampler
    sigmas = plan_steps(scfg.steps, scfg.shift).sigmas
    steps = [i for i in range(scfg.steps) if float(sigmas[i + 1]) > 0]
    one = torch.ones(1, 1)

    def weight(i: int) -> float:
        return float(per_step_kl(one, torch.zeros(1, 1), sigmas[i], sigmas[i + 1], scfg.noise_level, scfg.kind, cfg.opd.kl_weighting))

    median = sorted(weight(i) for i in steps)[len(steps) // 2]
    trained = sorted(
        {
            i
            for start in range(scfg.window_start_max + 1)
            for i in plan_steps(scfg.steps, scfg.shift, scfg.window_size, start, scfg.timestep_fraction).trained
        }
    )
    bad = [i for i in trained if float(sigmas[i + 1]) == 0 or weight(i) > 1000 * median]
    if bad:
        i, first_bad = max(bad), min(bad)  # report the latest (a deterministic last step, if trained); fix from the first
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        why = "is deterministic (sigma_next = 0)" if s_next == 0 else f"weighs {weight(i):.0f}, {weight(i) / median:.0f}x the median step"
        raise ConfigError(
            f"OPD would train sampler step {i} (sigma {s:.3f} -> {s_next:.3f}), whose {scfg.kind} KL {why}; "
            f"keep trained steps before step {first_bad} (e.g. sampler.window_start_max {max(0, first_bad - max(scfg.window_size, 1))} "
            f"or timestep_fraction {first_bad / scfg.steps:.2f})"
        )


def anchor_folder(cfg: TrainConfig) -> Path | None:
    """The MAR anchor's LoRA folder: a teacher's name, a shipped weight or a folder; None: the base model."""
    from flowopd.errors import ConfigError
    from flowopd.lora import LORA_FILE
    from flowopd.teachers import TeacherSpec

    anchor = cfg.opd.anchor
    if anchor is None:
        return None
    for spec in cfg.opd.teachers:
        if anchor == spec.name:
            return spec.lora_folder()
    try:
        return TeacherSpec(name="anchor", tasks=["-"], reward="-", checkpoint=anchor).lora_folder()
    except ConfigError:
        raise ConfigError(
            f"opd.anchor {anchor!r} is neither a teacher ({', '.join(t.name for t in cfg.opd.teachers)}), a shipped weight nor a folder "
            f"with {LORA_FILE}; name one, or set anchor: null to anchor to the base model"
        ) from None


# ----------------------------------------------------------------------------- per-step randomness: functions of (seed, step)


def alternate_schedule(tasks: dict[str, float]) -> list[str]:
    """One task per step, cycling by the integer ratio: {compose: 3, text: 1} -> compose, compose, compose, text."""
    return [t for t, w in tasks.items() for _ in range(int(w))]


def draw_prompts(cfg: TrainConfig, step: int, n: int) -> list:
    """``n`` training prompt records for ``step``: a task by weight (or the step's task), then a prompt of that task from its
    ``prompts:`` file, or from the mini world's generator (training split) for a task without one."""
    from flowopd.mini import world

    rng = np.random.default_rng([cfg.seed, step, 1])
    if cfg.task_sampling == "alternate" or (cfg.opd is not None and cfg.opd.routing == "epoch"):
        schedule = alternate_schedule(cfg.tasks)
        tasks = [schedule[step % len(schedule)]] * n
    else:
        names = [t for t, w in cfg.tasks.items() if w > 0]
        p = np.array([cfg.tasks[t] for t in names], dtype=float)
        tasks = [str(t) for t in rng.choice(names, size=n, p=p / p.sum())]
    records = []
    for task in tasks:
        if task in cfg.prompts:
            pool = training_prompts(cfg.prompts[task], task)
            records.append(pool[int(rng.integers(len(pool)))])
            continue
        while not world.in_split(rec := world.PROMPT_MAKERS[task](rng), "train"):
            pass
        records.append(rec)
    return records


@functools.lru_cache(maxsize=16)
def training_prompts(spec: str, task: str) -> tuple:
    """The records of a ``prompts:`` entry (a named set or a file), each tagged with ``task``; read once per process."""
    from flowopd.benchmarks.prompt_sets import resolve
    from flowopd.mini.world import PromptRecord

    prompts = resolve(spec, task=task)
    if not prompts:
        raise ConfigError(f"prompts: {task}: {spec} holds no prompts; pass a non-empty prompt set or file")
    return tuple(PromptRecord(p.text, task, dict(p.metadata)) for p in prompts)


def sample_seeds(cfg: TrainConfig, step: int) -> list[int]:
    return [int(s) for s in np.random.default_rng([cfg.seed, step, 2]).integers(0, 2**62, size=cfg.batch_size)]


def window_start(cfg: TrainConfig, step: int) -> int:
    if cfg.sampler.window_start_max == 0:
        return 0
    return int(np.random.default_rng([cfg.seed, step, 3]).integers(0, cfg.sampler.window_start_max + 1))


# ----------------------------------------------------------------------------- run folder


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a half-written one is a hidden temp folder and never listed)."""
    folder = out / "checkpoints"
    return sorted(p for p in folder.glob("step-*") if p.is_dir() and (p / "trainer_state.json").is_file()) if folder.is_dir() else []


def prepare_run_dir(cfg: TrainConfig, out: Path, resume: bool) -> Path | str | None:
    """Check the output folder against the request; return the checkpoint to resume from, None to start fresh, or
    ``RESTART``: a run stopped before its first checkpoint holds nothing to resume, so the same config run again (with or
    without ``--resume``) starts over in place once :func:`clear_unstarted_run` drops its partial files."""
    if out.exists() and not out.is_dir():
        raise FlowOPDError(f"output {out} is a file; pass a folder path with --out")
    from flowopd.runinfo import check_writable

    check_writable(out.parent)
    has_run = (out / RUN_MARKER).is_file()
    if has_run and not checkpoints(out):
        _check_same_run(cfg, out)
        return RESTART
    if not resume:
        if has_run:
            raise FlowOPDError(f"{out} already holds a training run; pass --resume to continue it, or a new --out folder")
        if out.is_dir() and any(p.name != COLDSTART_DIR and not p.name.startswith(f".{COLDSTART_DIR}.") for p in out.iterdir()):
            raise FlowOPDError(f"output folder {out} exists and holds other files; pass a new or empty folder with --out")
        return None
    if not has_run:
        raise FlowOPDError(f"nothing to resume in {out} (no {RUN_MARKER}); drop --resume to start a new run there")
    _check_same_run(cfg, out)
    return checkpoints(out)[-1]


def _check_same_run(cfg: TrainConfig, out: Path) -> None:
    """The run in ``out`` must be this config's (resumable fields aside) on the same base weights."""
    import yaml

    saved = TrainConfig.model_validate(yaml.safe_load((out / CONFIG_FILE).read_text()))
    if saved.model != cfg.model:
        raise FlowOPDError(
            f"the checkpoint in {out} was trained from model {saved.model!r}, not {cfg.model!r}; resume with --model {saved.model} or use a new --out"
        )
    mine, theirs = cfg.identity(), saved.identity()
    if mine != theirs:
        diff = _first_difference(theirs, mine)
        raise FlowOPDError(f"the run in {out} used a different config ({diff}); resume with the run's own config or use a new --out")
    info = json.loads((out / RUN_MARKER).read_text())
    if info.get("base_digest") and info["base_digest"] != model_digest(cfg.model):
        raise FlowOPDError(
            f"the checkpoint in {out} was trained on another version of {cfg.model!r} (its weights changed since); use a new --out"
        )


def clear_unstarted_run(out: Path) -> None:
    """Remove what a run wrote before its first checkpoint (its record, config, log, tracker files), keeping a cold start."""
    for name in (RUN_MARKER, CONFIG_FILE, LOG_FILE):
        (out / name).unlink(missing_ok=True)
    for name in ("tensorboard", "checkpoints"):
        shutil.rmtree(out / name, ignore_errors=True)


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    return f"{path}: {a!r} then, {b!r} now"


# ----------------------------------------------------------------------------- the trainer


@dataclasses.dataclass
class Batch:
    """One process's share of a step's rollout."""

    local: list[int]  # global sample indices
    records: list  # the prompt record of each sample
    cond: Any  # PromptEmbeds
    uncond: Any  # PromptEmbeds | None (no CFG)
    plan: Any  # rollout.StepPlan
    traj: Any  # rollout.Trajectories
    advantages: torch.Tensor | None = None  # GRPO [n]; OPD [n, K] (the surrogate's, per trained step)
    v_teacher: torch.Tensor | None = None  # OPD: the routed teacher's velocity at each trained state [n, K, ...]
    v_anchor: torch.Tensor | None = None  # OPD with MAR: the anchor's velocity there


class Trainer:
    """GRPO (rewards) or OPD (teachers) on a LoRA of the backbone's transformer: one loop, the signal and loss chosen by the config."""

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
        from flowopd.rollout import plan_steps

        cfg, acc = self.cfg, self.accelerator
        weights = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(acc.mixed_precision, torch.float32)  # SD3's frozen weights
        self.backbone = load_backbone(cfg.model, device=str(acc.device), resolution=cfg.resolution, dtype=weights)
        self.base_digest = model_digest(cfg.model)
        self.backbone.requires_grad_(False)  # text encoders and VAE (SD3) are never trained; the LoRA alone is
        transformer = self.backbone.transformer
        torch.manual_seed(cfg.seed)  # the LoRA's initial A: part of the run's seed, whatever ran before in this process
        init = self._cold_start() if cfg.opd is not None else None
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
        if cfg.opd is not None:
            self._load_teachers()
        optimizer = torch.optim.AdamW(self.params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, betas=cfg.optim.betas)
        self.model, self.optimizer = acc.prepare(transformer, optimizer)
        self.ema = None
        if cfg.optim.ema_decay > 0:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params, decay=cfg.optim.ema_decay)
        if cfg.opd is None:
            from flowopd.reward_models.weighted import WeightedReward

            self.rewards = WeightedReward(cfg.rewards, cfg.task_rewards)
        self.plans = {
            s: plan_steps(cfg.sampler.steps, cfg.sampler.shift, cfg.sampler.window_size, s, cfg.sampler.timestep_fraction)
            for s in range(cfg.sampler.window_start_max + 1)
        }
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)
        self.step = 0

    def _cold_start(self) -> Path | None:
        """The student's initial LoRA (SPEC section 5), made once on the main process; reused when resuming."""
        from flowopd.coldstart import cold_start

        acc, folder = self.accelerator, self.out / COLDSTART_DIR
        if acc.is_main_process:
            self.cold_start_folder = cold_start(self.cfg, folder, reuse=self.resume_from is not None)
        acc.wait_for_everyone()
        if not acc.is_main_process:
            self.cold_start_folder = cold_start(self.cfg, folder, reuse=True)
        return self.cold_start_folder

    def _load_teachers(self) -> None:
        """Teachers and the MAR anchor as frozen adapters on the student's own transformer (SPEC section 6)."""
        from flowopd.coldstart import load_teachers
        from flowopd.lora import load_lora
        from flowopd.models import check_base
        from flowopd.teachers import Router

        cfg = self.cfg
        self.teacher_adapters = load_teachers(self.backbone, cfg)
        self.router = Router(cfg.opd.teachers, cfg.opd.routing)
        folder = anchor_folder(cfg)
        self.anchor_adapter = None  # None: the base model (every adapter off)
        if folder is not None:
            same = [n for n, spec in zip(self.teacher_adapters, cfg.opd.teachers) if spec.lora_folder().resolve() == folder.resolve()]
            if same:
                self.anchor_adapter = self.teacher_adapters[same[0]]
            else:
                check_base(folder, cfg.model, self.base_digest)
                load_lora(self.backbone.transformer, folder, "anchor")
                self.anchor_adapter = "anchor"

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

    def _gather_global(self, local_values: torch.Tensor) -> torch.Tensor:
        """Gather per-sample values from every process back into global sample order."""
        acc = self.accelerator
        gathered = acc.gather(local_values.to(acc.device).contiguous()).cpu()
        world = acc.num_processes
        per = gathered.shape[0] // world
        out = torch.empty_like(gathered)
        for r in range(world):
            out[r::world] = gathered[r * per : (r + 1) * per]
        return out

    def train_step(self) -> dict[str, float]:
        """One rollout, its learning signal and the update(s); returns the step's metrics (identical on every process)."""
        t0 = time.perf_counter()
        batch = self._collect()
        t_rollout = time.perf_counter() - t0
        if self.cfg.opd is None:
            weights, metrics = self._grpo_signal(batch)
            piece_loss = self._grpo_piece
        else:
            weights, metrics = self._opd_signal(batch)
            piece_loss = self._opd_piece
        t_signal = time.perf_counter() - t0 - t_rollout
        metrics.update(self._update(batch, weights, piece_loss))
        self.step += 1
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
        plan = self.plans[window_start(cfg, self.step)]
        with torch.no_grad():
            cond = self.backbone.encode_prompts(prompts)
            uncond = self.backbone.encode_prompts([scfg.negative_prompt] * len(prompts)) if scfg.cfg != 1.0 else None
        latent = [seeds[(n // g) * g] if scfg.same_latent else seeds[n] for n in local]
        self.model.eval()
        with acc.autocast():
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

    def _grpo_signal(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Score this process's images, gather every reward, and compute advantages over whole groups (eq. 3)."""
        from flowopd.objectives.grpo import group_advantages, nonzero_groups

        cfg = self.cfg
        recs = batch.records
        prompts = [r.prompt for r in recs]
        reward_local, per_reward_local = self.rewards(batch.traj.images, prompts, [r.metadata for r in recs], [r.task for r in recs])
        rewards = self._gather_global(reward_local)
        group_ids = torch.arange(cfg.batch_size) // cfg.group_size
        failed = torch.isnan(rewards)
        if failed.all():
            first = getattr(self.rewards, "last_errors", [])[:1] or ["on another process"]
            raise FlowOPDError(f"every image of step {self.step + 1} failed to score; the first: {first[0]} (is its server up?)")
        adv = group_advantages(rewards, group_ids, cfg.grpo.adv_std, cfg.grpo.adv_clip)
        keep = nonzero_groups(adv, group_ids) & ~failed
        batch.advantages = adv[batch.local].to(self.accelerator.device)
        self.last_batch = {"local": batch.local, "reward_local": reward_local, "rewards": rewards, "advantages": adv, "prompts": prompts}
        metrics = {
            "reward": float(rewards[~failed].mean()),
            "reward_std": float(rewards[~failed].std(unbiased=False)),
            "reward_failed": float(failed.sum()),
            "kept_frac": float(keep.float().mean()),
        }
        task_names = sorted(cfg.tasks)
        task_ids = self._gather_global(torch.tensor([task_names.index(r.task) for r in recs]))
        for i, task in enumerate(task_names):  # the share of each task's groups that carry a reward difference
            if (task_ids == i).any():
                metrics[f"kept_frac/{task}"] = float(keep[task_ids == i].float().mean())
        for name, local_vals in per_reward_local.items():
            vals = self._gather_global(local_vals)
            if (~torch.isnan(vals)).any():
                metrics[f"reward/{name}"] = float(vals[~torch.isnan(vals)].mean())
        return keep, metrics

    def _opd_signal(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Routed teacher (and anchor) velocities at every trained state, per-step KLs and the surrogate's advantages (eq. 7-11).

        Each teacher runs one gradient-free, batched forward per step over the
        samples routed to it; the KLs use the rollout's own student velocities.
        """
        from flowopd.objectives.opd import step_advantages
        from flowopd.sde import per_step_kl

        cfg, opd, acc, scfg = self.cfg, self.cfg.opd, self.accelerator, self.cfg.sampler
        traj, sig, dev = batch.traj, batch.plan.sigmas, acc.device
        tasks = [r.task for r in batch.records]
        routes = self.router.groups(tasks)
        v_teacher = torch.empty_like(traj.velocities)
        v_anchor = torch.empty_like(traj.velocities) if opd.mar_lambda > 0 else None
        jobs = [(self.teacher_adapters[t], idx, v_teacher) for t, idx in routes.items()]
        if v_anchor is not None:
            jobs.append((self.anchor_adapter, list(range(len(tasks))), v_anchor))
        for adapter, idx, target in jobs:
            with torch.no_grad(), self._adapter(adapter):
                for k, i_step in enumerate(batch.plan.trained):
                    for a in range(0, len(idx), cfg.micro_batch):
                        rows = idx[a : a + cfg.micro_batch]
                        target[rows, k] = self._guided(batch, rows, traj.states[rows, k].to(dev), sig[i_step]).float().cpu()
        kl = torch.stack(
            [
                per_step_kl(traj.velocities[:, k], v_teacher[:, k], sig[i], sig[i + 1], scfg.noise_level, scfg.kind, opd.kl_weighting)
                for k, i in enumerate(batch.plan.trained)
            ],
            1,
        )  # [n_local, K]
        kl_all = self._gather_global(kl)
        group_ids = torch.arange(cfg.batch_size) // cfg.group_size
        batch.advantages = step_advantages(opd.objective, kl_all, group_ids)[batch.local].to(dev)
        batch.v_teacher, batch.v_anchor = v_teacher, v_anchor
        task_ids = self._gather_global(torch.tensor([sorted(cfg.tasks).index(t) for t in tasks]))
        metrics = {"kl_rollout": float(kl_all.sum(1).mean())}
        for i, task in enumerate(sorted(cfg.tasks)):
            if (task_ids == i).any():
                metrics[f"kl/{task}"] = float(kl_all[task_ids == i].sum(1).mean())  # trajectory KL to the routed teacher
        self.last_batch = {"local": batch.local, "kl": kl_all, "advantages": batch.advantages, "tasks": tasks, "routes": routes}
        return torch.ones(cfg.batch_size, dtype=torch.bool), metrics

    def _guided(self, batch: Batch, rows, x: torch.Tensor, sigma: torch.Tensor, transformer=None) -> torch.Tensor:
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

    def _grpo_piece(self, batch: Batch, k: int, a: int, b: int, x: torch.Tensor, v: torch.Tensor, out) -> tuple[torch.Tensor, dict]:
        """Clipped ratio loss (eq. 3) + beta KL to the reference, per sample."""
        from flowopd.objectives.grpo import clipped_surrogate
        from flowopd.sde import per_step_kl

        cfg, scfg, sig, i_step = self.cfg, self.cfg.sampler, batch.plan.sigmas, batch.plan.trained[k]
        surr = clipped_surrogate(out.log_prob, batch.traj.log_probs[a:b, k].to(x.device), batch.advantages[a:b], cfg.grpo.clip_range)
        loss, kl = surr.loss, torch.zeros_like(surr.loss)
        if cfg.grpo.beta > 0:
            with torch.no_grad(), self._adapter(None):
                v_ref = self._guided(batch, slice(a, b), x, sig[i_step])
            kl = per_step_kl(v, v_ref, sig[i_step], sig[i_step + 1], scfg.noise_level, scfg.kind, cfg.grpo.kl_weighting)
            loss = loss + cfg.grpo.beta * kl
        return loss, {"kl": kl.detach(), "clip_frac": surr.clipped.float(), "ratio": surr.ratio}

    def _opd_piece(self, batch: Batch, k: int, a: int, b: int, x: torch.Tensor, v: torch.Tensor, out) -> tuple[torch.Tensor, dict]:
        """The OPD objective at one trained step (eq. 9-11) + MAR (eq. 12), per sample."""
        from flowopd.objectives.opd import opd_step_loss
        from flowopd.sde import per_step_kl

        opd, scfg, sig, i_step = self.cfg.opd, self.cfg.sampler, batch.plan.sigmas, batch.plan.trained[k]
        dev = x.device

        def kl_to(target: torch.Tensor) -> torch.Tensor:
            return per_step_kl(v, target[a:b, k].to(dev), sig[i_step], sig[i_step + 1], scfg.noise_level, scfg.kind, opd.kl_weighting)

        kl = kl_to(batch.v_teacher)
        step = opd_step_loss(
            opd.objective, kl, out.log_prob, batch.traj.log_probs[a:b, k].to(dev), batch.advantages[a:b, k], opd.clip_range, x[0].numel()
        )
        loss, mar = step.loss, torch.zeros_like(kl)
        if batch.v_anchor is not None:
            mar = kl_to(batch.v_anchor)  # eq. 12: w(t) ||v_student - v_anchor||^2, with gradient
            loss = loss + opd.mar_lambda * mar
        if opd.beta > 0:
            with torch.no_grad(), self._adapter(None):
                v_ref = self._guided(batch, slice(a, b), x, sig[i_step])
            loss = loss + opd.beta * per_step_kl(v, v_ref, sig[i_step], sig[i_step + 1], scfg.noise_level, scfg.kind, opd.kl_weighting)
        return loss, {"kl": kl.detach(), "mar": mar.detach(), "clip_frac": step.clipped.float(), "ratio": step.ratio}

    def _update(self, batch: Batch, keep: torch.Tensor, piece_loss) -> dict[str, float]:
        """The objective over the kept samples and trained steps; one optimizer step per part of the batch.

        ``piece_loss(batch, k, a, b, x, v, out)`` gives the per-sample loss of local
        samples ``a:b`` at trained step ``k`` (``v``: the student's velocity with
        gradient; ``out``: the SDE step scoring the stored ``x_next``) and the
        per-sample values to log.
        """
        from flowopd.sde import sde_step

        cfg, acc, scfg = self.cfg, self.accelerator, self.cfg.sampler
        traj, plan, sig, dev = batch.traj, batch.plan, batch.plan.sigmas, acc.device
        self.model.train()
        world, parts = acc.num_processes, cfg.grpo.updates_per_rollout
        size = len(batch.local) // parts
        k_steps = len(plan.trained)
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
                i_step = plan.trained[k]
                x, x_next = traj.states[a:b, k].to(dev), traj.next_states[a:b, k].to(dev)
                sync = contextlib.nullcontext() if j == len(pieces) - 1 else acc.no_sync(self.model)
                with sync:
                    v = self._guided(batch, slice(a, b), x, sig[i_step], transformer=self.model)
                    out = sde_step(
                        x,
                        v,
                        float(sig[i_step]),
                        float(sig[i_step + 1]),
                        scfg.noise_level,
                        kind=scfg.kind,
                        x_next=x_next,
                        log_prob=scfg.log_prob,
                    )
                    per_sample, logs = piece_loss(batch, k, a, b, x, v, out)
                    w = keep_l[a:b]
                    loss = (per_sample * w).sum() * scale
                    acc.backward(loss)
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

    def _adapter(self, name: str | None):
        """Forwards with adapter ``name`` on the student's transformer (None: the base, i.e. the reference)."""
        from flowopd.lora import use_adapter

        return use_adapter(self._raw(), name)

    # ------------------------------------------------------------------ the run

    def train(self, progress: Callable[[int, dict[str, float]], None] | None = None) -> Path:
        """Run to ``cfg.steps`` (from the checkpoint when resuming); returns the saved LoRA folder."""
        from flowopd.config import save_config
        from flowopd.runinfo import run_info, write_json_atomic

        cfg, acc = self.cfg, self.accelerator
        if self.resume_from is not None:
            acc.load_state(str(self.resume_from))
            if acc.is_main_process:
                _truncate_log(self.out / LOG_FILE, self.step)
                save_config(cfg, self.out / CONFIG_FILE)  # only resumable fields (steps, threads, logging) can differ
        elif acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / CONFIG_FILE)
            info = run_info(cfg.model_dump(mode="json"), cfg.seed)
            info.update(base_digest=self.base_digest, num_processes=acc.num_processes, config_digest=cfg.digest())
            write_json_atomic(self.out / RUN_MARKER, info)
        acc.wait_for_everyone()
        if acc.log_with:
            acc.init_trackers("train", config=_flat(cfg.model_dump(mode="json")))
        if progress:
            progress(self.step, {})
        while self.step < cfg.steps:
            metrics = self.train_step()
            if acc.is_main_process:
                with open(self.out / LOG_FILE, "a") as f:
                    f.write(json.dumps({"step": self.step, **{k: round(v, 6) for k, v in metrics.items()}}) + "\n")
            if acc.log_with:
                acc.log(metrics, step=self.step)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
            if progress:
                progress(self.step, metrics)
        lora_dir = self.save_lora()
        acc.end_training()
        return lora_dir

    def save_lora(self) -> Path:
        """The final LoRA (EMA weights when the EMA is on) in the diffusers format, written atomically to ``out/lora``."""
        from flowopd.lora import lora_state_dict, save_lora
        from flowopd.runinfo import atomic_dir

        acc = self.accelerator
        target = self.out / "lora"
        if acc.is_main_process:
            state = None
            if self.ema is not None:
                self.ema.store(self.params)
                self.ema.copy_to(self.params)
                state = lora_state_dict(self._raw())
                self.ema.restore(self.params)
            info = lora_record(self.cfg, self.base_digest, self.step, self.ema is not None)
            if self.cfg.opd is not None:
                opd = self.cfg.opd
                info["teachers"] = {t.name: {"tasks": t.tasks, "reward": t.reward, "checkpoint": t.checkpoint} for t in opd.teachers}
                info.update(objective=opd.objective, mar_lambda=opd.mar_lambda, anchor=opd.anchor, cold_start=opd.cold_start.method)
            with atomic_dir(target, marker="lora_info.json") as tmp:
                save_lora(self._raw(), tmp, info, state=state)
        acc.wait_for_everyone()
        return target


def lora_record(cfg: TrainConfig, base_digest: str, step: int, ema: bool) -> dict[str, Any]:
    """``lora_info.json`` of a run's LoRA: its base (name and digest), tasks, step, EMA, config digest; a GRPO run's rewards."""
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
    if cfg.opd is None:
        info["rewards"] = cfg.task_rewards or cfg.rewards
    return info


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    from flowopd.runinfo import atomic_file

    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    with atomic_file(path, "w") as f:
        f.write("".join(ln + "\n" for ln in lines))


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
    import importlib.util

    if name == "tensorboard":
        return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None
    return False
