"""Learning curves of GRPO runs: each checkpoint's held-out mini scores against the rollout samples seen.

For each run, every checkpoint (``keep_checkpoints`` must have kept them) is
exported as a LoRA (its EMA weights: what ``lora/`` would have held there) and
evaluated on the held-out mini prompts with the evaluation protocol (20 ODE
steps, CFG 3, the same prompts and seeds at every point, so the curve is
paired). Step 0 is the run's base model. Exports and evaluations are kept under
``RUN/curve/`` and reused, so a rerun only adds new checkpoints.

    python tests/bench/learning_curve.py runs/teacher-compose runs/teacher-text --limit 24 --out docs/figures/teachers.png

Prints one line per point; writes the PNG (matplotlib, from the dev extra) and the points as JSON beside it.
``--keep EARLIER.json`` plots an earlier figure's curves again beside the new ones (runs no longer on disk).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TASKS = ("compose", "text", "preference", "quality")
SCALE = {"compose": 1.0, "text": 1.0, "preference": 1.0, "quality": 5.0}  # 0-1 as the reproduction table (quality / 5)


def curve(run: Path, limit: int, every: int = 1, last: int | None = None) -> dict:
    """The run's points: samples seen and each task's normalised headline score, per checkpoint (every ``every``-th step
    and the last one, up to step ``last`` when given)."""
    import yaml

    from flowopd.benchmarks.runner import EvalConfig, run_eval
    from flowopd.checkpoints import export_checkpoint
    from flowopd.run_folder import CONFIG_FILE, checkpoints
    from flowopd.train_config import TrainConfig

    cfg = TrainConfig.model_validate(yaml.safe_load((run / CONFIG_FILE).read_text()))
    points = []
    saved = [(int(c.name.split("-")[1]), c) for c in checkpoints(run)]
    saved = [(s, c) for s, c in saved if last is None or s <= last]
    saved = [(s, c) for s, c in saved if s % every == 0 or s == saved[-1][0]]
    for step, model in [(0, cfg.model)] + saved:
        where = run / "curve" / f"step-{step:06d}"
        if step:
            lora = where / "lora"
            if not (lora / "lora_info.json").is_file():
                export_checkpoint(model, lora)
            model = str(lora)
        summary_file = where / "eval" / "summary.json"
        if summary_file.is_file():
            summary = json.loads(summary_file.read_text())
        else:
            summary = run_eval(EvalConfig(suites=["mini"], model=model, limit=limit), where / "eval")
        mini = summary["suites"]["mini"]
        scores = {t: mini["metrics"][mini["headline"][t]]["mean"] / SCALE[t] for t in TASKS}
        points.append({"step": step, "samples": step * cfg.batch_size, **scores})
        print(
            f"{run.name} step {step:4d} samples {step * cfg.batch_size:6d} " + " ".join(f"{t} {scores[t]:.3f}" for t in TASKS), flush=True
        )
    own = [t for t, w in cfg.tasks.items() if w > 0]
    return {"run": run.name, "own_tasks": own, "rewards": cfg.rewards, "limit": limit, "points": points}


def plot(curves: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False, sharey=True)
    for ax, c in zip(axes[0], curves):
        xs = [p["samples"] for p in c["points"]]
        for t in TASKS:
            own = t in c["own_tasks"]
            ax.plot(
                xs,
                [p[t] for p in c["points"]],
                label=t,
                linewidth=2.6 if own else 1.0,
                alpha=1.0 if own else 0.6,
                marker="o" if own else None,
            )
        ax.set_title(f"{c['run']} ({', '.join(c['rewards'])})", fontsize=9)
        ax.set_xlabel("rollout samples seen")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"held-out score, 0-1 ({curves[0]['limit']} prompts a task)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="run folders of `flowopd train teacher|mix`")
    parser.add_argument("--limit", type=int, default=24, help="held-out prompts per task (compose: per tag)")
    parser.add_argument("--every", type=int, default=1, help="evaluate the checkpoints of every N-th step (and the last)")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/learning-curves.png"))
    parser.add_argument("--keep", type=Path, help="an earlier points JSON: its curves are plotted again, except those of a run given here")
    args = parser.parse_args()
    curves = [curve(run, args.limit, args.every) for run in args.runs]
    if args.keep:
        names = {c["run"] for c in curves}
        curves = [c for c in json.loads(args.keep.read_text()) if c["run"] not in names] + curves
    plot(curves, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(curves, indent=1) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
