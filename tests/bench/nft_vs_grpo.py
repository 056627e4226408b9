"""Sample efficiency of DiffusionNFT against GRPO: own-task held-out score against rollout samples seen, per task.

For each task, a GRPO run and an NFT run from the same base and seed (their
checkpoints kept: ``keep_checkpoints`` >= the number saved). Every checkpoint
is exported and evaluated on the held-out mini prompts by the evaluation
protocol (``learning_curve.py``, whose cached evaluations under ``RUN/curve/``
are reused). Each checkpoint's own-task gain over the base is smoothed by a
trailing mean over three checkpoints (a 24-prompt point is noisy). The target
is the GRPO run's final smoothed gain (at its last checkpoint up to
``--steps``); for each objective the script
reports the rollout samples of the first checkpoint whose gain reaches it, and
the ratio NFT / GRPO (below 1: NFT needs fewer). Wall time per 1,000 rollout
samples comes from each run's ``log.jsonl``.

    python tests/bench/nft_vs_grpo.py --pair compose runs/teacher-compose runs/teacher-compose-nft \\
        --pair text runs/teacher-text runs/teacher-text-nft --limit 24 --out docs/figures/nft-vs-grpo.png

Prints a markdown table; writes the PNG and the points as JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curve import curve  # noqa: E402  (a sibling script, not a package)

SMOOTH = 3  # a point's gain is the mean over it and the checkpoints before it, up to this many (one point is noisy)


def own_gains(c: dict, task: str, max_steps: int) -> list[tuple[int, int, float]]:
    """(step, samples, own-task gain over the step-0 point, trailing mean over ``SMOOTH`` checkpoints) up to ``max_steps``."""
    base = c["points"][0][task]
    raw = [(p["step"], p["samples"], p[task] - base) for p in c["points"] if p["step"] <= max_steps]
    out = [raw[0]]
    for i in range(1, len(raw)):
        window = [g for _, _, g in raw[max(1, i - SMOOTH + 1) : i + 1]]
        out.append((raw[i][0], raw[i][1], sum(window) / len(window)))
    return out


def samples_to_reach(gains: list[tuple[int, int, float]], target: float) -> int | None:
    """Rollout samples of the first checkpoint whose gain reaches ``target`` (None: never within the run)."""
    return next((samples for step, samples, gain in gains if step > 0 and gain >= target), None)


def seconds_per_1k_samples(run: Path) -> float:
    """Mean training wall time per 1,000 rollout samples (evaluations excluded), from ``log.jsonl``."""
    import yaml

    batch = yaml.safe_load((run / "config.yaml").read_text())["batch_size"]
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    times = [r["time_step"] for r in rows if "time_step" in r]
    return 1000 * sum(times) / (len(times) * batch)


def compare(task: str, grpo_run: Path, nft_run: Path, limit: int, max_steps: int) -> dict:
    curves = {"grpo": curve(grpo_run, limit, last=max_steps), "nft": curve(nft_run, limit, last=max_steps)}
    gains = {k: own_gains(c, task, max_steps) for k, c in curves.items()}
    target = gains["grpo"][-1][2]
    reach = {k: samples_to_reach(g, target) if target > 0 else None for k, g in gains.items()}
    ratio = reach["nft"] / reach["grpo"] if reach["nft"] and reach["grpo"] else None
    speed = {k: seconds_per_1k_samples(r) for k, r in (("grpo", grpo_run), ("nft", nft_run))}
    return {"task": task, "target_gain": target, "reach": reach, "ratio": ratio, "s_per_1k": speed, "gains": gains, "curves": curves}


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4.6 * len(rows), 3.5), squeeze=False)
    for ax, row in zip(axes[0], rows):
        for name, style in (("grpo", "-o"), ("nft", "-s")):
            xs = [s for _, s, _ in row["gains"][name]]
            ax.plot(xs, [g for _, _, g in row["gains"][name]], style, label=name.upper(), linewidth=2)
        ax.axhline(row["target_gain"], color="grey", linestyle="--", linewidth=1, label="GRPO's final gain")
        ax.set_title(f"{row['task']}: own-task gain over the base (trailing mean of {SMOOTH})", fontsize=9)
        ax.set_xlabel("rollout samples seen")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("held-out score gain, 0-1")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def table(rows: list[dict]) -> str:
    lines = [
        "| task | GRPO's final gain | samples to reach it: GRPO | NFT | NFT / GRPO | NFT's best gain | s per 1k samples: GRPO | NFT |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        reach, ratio = r["reach"], r["ratio"]
        best = max(g for _, _, g in r["gains"]["nft"])
        lines.append(
            f"| {r['task']} | {r['target_gain']:+.3f} | {reach['grpo'] or '-'} | {reach['nft'] or 'not reached'} | "
            f"{f'{ratio:.2f}' if ratio else '-'} | {best:+.3f} | {r['s_per_1k']['grpo']:.0f} | {r['s_per_1k']['nft']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", nargs=3, action="append", metavar=("TASK", "GRPO_RUN", "NFT_RUN"), required=True)
    parser.add_argument("--limit", type=int, default=24, help="held-out prompts per task (compose: per tag)")
    parser.add_argument("--steps", type=int, default=60, help="the GRPO teacher's final step (its recipe's)")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/nft-vs-grpo.png"))
    args = parser.parse_args()
    rows = [compare(task, Path(g), Path(n), args.limit, args.steps) for task, g, n in args.pair]
    plot(rows, args.out)
    args.out.with_suffix(".json").write_text(json.dumps([{k: v for k, v in r.items() if k != "curves"} for r in rows], indent=1) + "\n")
    print(table(rows))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
