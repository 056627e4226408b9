"""`flowopd train teacher | mix | coldstart | opd`."""

from __future__ import annotations

import os
import time
from enum import Enum
from pathlib import Path

import typer

from flowopd.cli.app import (
    Format,
    TrainCheckpointEvery,
    TrainDryRun,
    TrainModel,
    TrainPlanFormat,
    TrainProcesses,
    TrainResume,
    TrainSeed,
    TrainSteps,
    TrainThreads,
    _fail,
    _interrupted,
    _rerun_command,
    train_app,
)
from flowopd.cli.ui import console, error, progress_bar, warn

# ------------------------------------------------------------------ train


def _train(
    cfg,
    out: Path,
    resume: bool,
    command: str = "train",
    recipe: str | None = None,
    dry_run: bool = False,
    processes: int | None = None,
    fmt: Format = Format.table,
) -> None:
    """Run the one trainer with a progress bar (reward, KL, clip fraction) and say where the LoRA is.

    ``dry_run``: print the resolved plan (:mod:`flowopd.plan`) and stop, loading no model; only a batch/process
    arithmetic error fails it.
    """
    if dry_run:
        from flowopd.plan import dry_run as plan_dry_run

        text, problem = plan_dry_run(cfg, command, recipe, processes, fmt.value)
        if os.environ.get("RANK", "0") == "0":  # under `accelerate launch`, one copy of the plan
            print(text)
        if problem:
            _fail(problem)
        return
    if processes is not None:
        _fail("--processes only plans a --dry-run; a run takes its process count from `accelerate launch --num_processes`")
    from flowopd.trainer import Trainer

    t0 = time.time()
    trainer = Trainer(cfg, out, resume=resume)  # checks the plan and the output folder before any compute
    show = trainer.accelerator.is_main_process
    if show and trainer.restarted:
        console.print(
            f"{out} held this run stopped before its first checkpoint (nothing to resume): starting it over in place", markup=False
        )
    with progress_bar(f"train {cfg.name}", cfg.steps) as advance:
        said = [0]

        def tick(step: int, m: dict[str, float]) -> None:
            if show:
                for at, message in trainer.watch.alarms[said[0] :]:
                    warn(f"alarm at step {at}: {message}")
                said[0] = len(trainer.watch.alarms)
                fields = {k: m[k] for k in ("reward", "kl", "mar", "clip_frac", "alarms") if k in m}
                advance(completed=step, **fields)

        try:
            lora = trainer.train(tick)
        except KeyboardInterrupt:
            lora = None
    if lora is None:  # said after the progress bar has closed
        from flowopd.run_folder import checkpoints

        done = checkpoints(out)
        kept = f"kept checkpoint {done[-1]}" if done else "no checkpoint yet (the same command restarts it in place)"
        _interrupted(f"training stopped during step {trainer.step + 1}", kept, _rerun_command("--resume" if done else None))
    if show:
        console.print(f"LoRA: {lora}  (diffusers format; {trainer.step} steps in {(time.time() - t0) / 60:.1f} min; log: {out}/log.jsonl)")
    _stop_on_alarm(trainer, lora, out)


def _stop_on_alarm(trainer, lora: Path, out: Path) -> None:
    """A run that a reward-hacking alarm stopped (``eval.alarms.on_alarm: stop``) ends with one line and exit code 3."""
    if trainer.watch.stop:
        at, message = trainer.watch.alarms[-1]
        error(
            f"stopped at step {at} by a reward-hacking alarm ({message}); the LoRA of that step is in {lora}, its evaluation in "
            f"{out}/evals; set eval.alarms.on_alarm: warn and pass --resume to go on"
        )
        raise typer.Exit(3)


def _load_train_config(config: str, overrides: dict):
    from flowopd.config import load_config
    from flowopd.train_config import TrainConfig, recipe_path

    return load_config(TrainConfig, recipe_path(config), overrides)


class TeacherObjective(str, Enum):
    grpo = "grpo"
    nft = "nft"


@train_app.command("teacher")
def train_teacher(
    reward: str | None = typer.Option(None, "--reward", "-r", help="Reward to train on (see `flowopd rewards list`)."),
    objective: TeacherObjective | None = typer.Option(
        None, "--objective", help="grpo (Flow-GRPO) or nft (DiffusionNFT); default: the recipe's (a mini default: grpo)."
    ),
    config: str | None = typer.Option(None, "--config", "-c", help="YAML file or shipped recipe (e.g. mini/teacher-text)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default runs/teacher-<reward>)."),
    model: TrainModel = None,
    steps: TrainSteps = None,
    seed: TrainSeed = None,
    threads: TrainThreads = None,
    checkpoint_every: TrainCheckpointEvery = None,
    resume: TrainResume = False,
    dry_run: TrainDryRun = False,
    processes: TrainProcesses = None,
    fmt: TrainPlanFormat = Format.table,
) -> None:
    """Train a teacher on one reward by GRPO (SPEC section 4) or DiffusionNFT (``--objective nft``); writes the LoRA in the
    diffusers format."""
    from flowopd.teachers import MINI_TASK_REWARDS

    if reward is None and config is None:
        _fail("pass --reward NAME (see `flowopd rewards list`) or --config RECIPE (e.g. mini/teacher-text)")
    overrides: dict = {"steps": steps, "seed": seed, "threads": threads, "checkpoint_every": checkpoint_every, "model": model}
    if config is None:
        task = {r: t for t, r in MINI_TASK_REWARDS.items()}.get(reward)
        config = f"mini/teacher-{task or 'preference'}" + ("-nft" if objective == TeacherObjective.nft else "")
        if task is None:  # a reward without its own mini task (a plugin): prompts from every task of the base's world
            from flowopd.models import prompt_world

            world = prompt_world(model or "mini-base")
            if world is not None:  # an SD3 base has none: its tasks need prompt files (the plan check says so)
                overrides["tasks"] = dict(world.task_mix)
    if reward is not None:
        overrides.update(rewards={reward: 1.0}, task_rewards={}, name=f"teacher-{reward}")
    cfg = _load_train_config(config, overrides)
    if objective is not None and cfg.objective != objective.value:
        _fail(
            f"recipe {config} trains by {cfg.objective}, not {objective.value}; pass a recipe for {objective.value} "
            f"(e.g. mini/teacher-compose{'-nft' if objective == TeacherObjective.nft else ''}) or drop --objective"
        )
    _train(cfg, out or Path("runs") / cfg.name, resume, "teacher", config, dry_run, processes, fmt)


class MixVariant(str, Enum):
    weighted = "weighted"
    alternate = "alternate"


@train_app.command("mix")
def train_mix(
    variant: MixVariant = typer.Option(
        MixVariant.weighted, "--variant", help="weighted (one 3:1:1 reward) or alternate (datasets by epoch ratio)."
    ),
    config: str | None = typer.Option(None, "--config", "-c", help="YAML file or shipped recipe (default mini/mix-<variant>)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default runs/mix-<variant>)."),
    model: TrainModel = None,
    steps: TrainSteps = None,
    seed: TrainSeed = None,
    threads: TrainThreads = None,
    checkpoint_every: TrainCheckpointEvery = None,
    resume: TrainResume = False,
    dry_run: TrainDryRun = False,
    processes: TrainProcesses = None,
    fmt: TrainPlanFormat = Format.table,
) -> None:
    """Train a GRPO-Mix baseline: several rewards in one GRPO run (SPEC section 4, the paper's seesaw)."""
    config = config or f"mini/mix-{variant.value}"
    cfg = _load_train_config(
        config, {"steps": steps, "seed": seed, "threads": threads, "checkpoint_every": checkpoint_every, "model": model}
    )
    _train(cfg, out or Path("runs") / cfg.name, resume, "mix", config, dry_run, processes, fmt)


class OPDObjective(str, Enum):
    kl = "kl"
    kl_pg = "kl_pg"
    paper = "paper"


class ColdStartMethod(str, Enum):
    merge = "merge"
    sft = "sft"


class MergeMethod(str, Enum):
    cat = "cat"
    svd = "svd"
    ties = "ties"
    dare_linear = "dare_linear"
    elementwise = "elementwise"


@train_app.command("coldstart")
def train_coldstart(
    method: ColdStartMethod = typer.Option(ColdStartMethod.merge, "--method", help="merge the teachers' LoRAs, or SFT on their images."),
    merge: MergeMethod | None = typer.Option(
        None, "--merge", help="cat (default: the exact average of dW), svd, ties, dare_linear, elementwise (the release's)."
    ),
    config: str = typer.Option("mini/opd", "--config", "-c", help="OPD recipe naming the teachers (YAML file or shipped recipe)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="LoRA folder to write (default runs/coldstart-sft, or runs/coldstart-merge-<merge> for a merge)."
    ),
    seed: TrainSeed = None,
    threads: TrainThreads = None,
    dry_run: TrainDryRun = False,
    fmt: TrainPlanFormat = Format.table,
) -> None:
    """Make the student's starting LoRA from the teachers (SPEC section 5); writes it in the diffusers format."""
    from flowopd.coldstart import cold_start
    from flowopd.plan_checks import check_plan

    cfg = _load_train_config(config, {"seed": seed, "threads": threads})
    if cfg.opd is None:
        _fail(f"config {config} has no opd section (no teachers to start from); use an OPD recipe such as mini/opd")
    cfg = cfg.with_cold_start(method=method.value, from_lora=None, **({"merge": merge.value} if merge else {}))
    if dry_run:  # one process: no --processes here
        _train(cfg, out or Path("runs"), False, "coldstart", config, dry_run=True, fmt=fmt)
        return
    check_plan(cfg)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    label = method.value if method == ColdStartMethod.sft else f"merge-{cfg.opd.cold_start.merge}"
    out = out or Path("runs") / f"coldstart-{label}"
    t0 = time.time()
    with progress_bar(f"cold start ({label})", None) as advance:

        def show(stage: str, done: int, total: int) -> None:
            advance(description=f"cold start: {stage}", completed=done, total=total)

        folder = cold_start(cfg, out, progress=show)
    console.print(f"LoRA: {folder}  (cold start {label} of {len(cfg.opd.teachers)} teachers; diffusers format; {time.time() - t0:.0f} s)")


@train_app.command("opd")
def train_opd(
    config: str = typer.Option("mini/opd", "--config", "-c", help="YAML file or shipped recipe (default mini/opd)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default runs/<name>, i.e. runs/opd)."),
    objective: OPDObjective | None = typer.Option(
        None, "--objective", help="The OPD objective (SPEC section 6; default: the recipe's, kl)."
    ),
    model: TrainModel = None,
    steps: TrainSteps = None,
    seed: TrainSeed = None,
    threads: TrainThreads = None,
    checkpoint_every: TrainCheckpointEvery = None,
    resume: TrainResume = False,
    dry_run: TrainDryRun = False,
    processes: TrainProcesses = None,
    fmt: TrainPlanFormat = Format.table,
) -> None:
    """Distil the teachers into one student by on-policy distillation with MAR (SPEC section 6).

    With no arguments: the four shipped mini teachers, from a merge cold start.
    """
    cfg = _load_train_config(
        config, {"steps": steps, "seed": seed, "threads": threads, "checkpoint_every": checkpoint_every, "model": model}
    )
    if cfg.opd is None:
        _fail(f"config {config} has no opd section; use an OPD recipe such as mini/opd (or `flowopd train teacher` for GRPO)")
    if objective is not None:
        from flowopd.config import build_config
        from flowopd.train_config import OPDConfig

        opd = build_config(OPDConfig, {**cfg.opd.model_dump(), "objective": objective.value}, "--objective")
        cfg = cfg.model_copy(update={"opd": opd})
    _train(cfg, out or Path("runs") / cfg.name, resume, "opd", config, dry_run, processes, fmt)
