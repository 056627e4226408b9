"""`flowopd mini pretrain | reproduce | prompts | render`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from flowopd.cli.app import TrainSteps, _fail, _save_png, mini_app
from flowopd.cli.ui import console, progress_bar

# ------------------------------------------------------------------ mini


@mini_app.command("pretrain")
def mini_pretrain(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML file of PretrainConfig values."),
    out: Path = typer.Option(Path("runs/mini-base"), "--out", "-o", help="Model folder to write."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (default 4000, the shipped base)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per step (default 64)."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate."),
    seed: int | None = typer.Option(None, "--seed", help="Seed (default 0)."),
    threads: int | None = typer.Option(None, "--threads", min=0, help="CPU threads (0: all cores, torch's default)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
) -> None:
    """Pre-train the mini base by flow matching (eq. 1) on rendered data; reproduces the shipped base."""
    from flowopd.config import load_config, save_config
    from flowopd.mini.pretrain import PretrainConfig

    cfg = load_config(PretrainConfig, config, {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "threads": threads})
    from flowopd.mini.pretrain import pretrain

    t0 = time.time()
    with progress_bar("pretrain", cfg.steps) as advance:
        if resume:
            advance(0, completed=_checkpoint_step(out))
        pretrain(cfg, out, progress=lambda step, loss: advance(loss=loss), resume=resume)
    save_config(cfg, out / "config.yaml")
    console.print(f"wrote the EMA model to {out}/ after {cfg.steps} steps in {(time.time() - t0) / 60:.1f} min")


@mini_app.command("reproduce")
def mini_reproduce(
    out: Path = typer.Option(Path("runs/reproduce"), "--out", "-o", help="Folder for every model, evaluation and table."),
    config: str = typer.Option("mini/opd", "--config", "-c", help="The OPD recipe the students use; its teachers are the teacher rows."),
    limit: int = typer.Option(32, "--limit", min=1, help="Held-out prompts per task (compose: per tag)."),
    steps: TrainSteps = None,
) -> None:
    """The mini analogue of the paper's Tables 1, 2 and 4: base, teachers, GRPO-Mix, cold starts, OPD and its ablations.

    Resumable: run it again with the same --out to continue after an interruption.
    """
    from flowopd.mini.reproduce import reproduce

    t0 = time.time()
    with progress_bar("reproduce", None) as advance:

        def show(stage: str, done: int, total: int) -> None:
            advance(description=f"reproduce: {stage}", completed=done, total=total)

        reproduce(out, config=config, limit=limit, steps=steps, progress=show)
    console.print((out / "results.md").read_text(), markup=False, highlight=False)
    console.print(f"wrote {out}/results.md, results.json and evals/<model>/ (summary.json per model) in {(time.time() - t0) / 60:.1f} min")


def _checkpoint_step(out: Path) -> int:
    info = out / "run.json"
    return int(json.loads(info.read_text())["pretrain"]["step"]) if info.is_file() else 0


@mini_app.command("prompts")
def mini_prompts(
    task: str = typer.Option("all", "--task", help="compose, text, preference, quality or all."),
    n: int = typer.Option(10, "--n", min=1, help="Prompts per task."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompt draw (the same seed lists the same prompts)."),
    split: str = typer.Option("test", "--split", help="test (held-out), train or all."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write JSONL here (GenEval metadata format plus 'task')."),
) -> None:
    """List mini-world prompts with their metadata (JSONL)."""
    from flowopd.mini import world

    tasks = list(world.TASKS) if task == "all" else [task]
    try:
        recs = [r for t in tasks for r in world.make_prompts(t, n, seed, split=split)]
    except ValueError as exc:
        _fail(str(exc))
    lines = [json.dumps(r.to_json()) for r in recs]
    if out is None:
        print("\n".join(lines))
        return
    from flowopd.runinfo import atomic_file

    with atomic_file(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    console.print(f"wrote {len(lines)} prompts to {out}")


@mini_app.command("render")
def mini_render(
    prompt: str = typer.Option(..., "--prompt", "-p", help="A mini-world prompt."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data sample's random layout, finish and misquotes."),
    scale: int = typer.Option(8, "--scale", min=1, max=64, help="Nearest-neighbour upscale of the 32 px image."),
    ideal: bool = typer.Option(False, "--ideal", help="Draw what the judges prefer (centred, clean, spelt right), not a data sample."),
) -> None:
    """Render a prompt as the base's training data draw it (or, with --ideal, as the judges prefer it)."""
    import numpy as np

    from flowopd.mini import world

    if out.suffix.lower() != ".png":
        _fail(f"--out {out} must end in .png")
    try:
        rec = world.parse_prompt(prompt)
    except ValueError as exc:
        _fail(str(exc))
    _save_png(world.render(rec, np.random.default_rng(seed), ideal=ideal), out, scale)
    console.print(f"wrote {out}  (task {rec.task}, {json.dumps(rec.metadata)})")
