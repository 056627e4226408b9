"""Paired comparisons on the mini suite (same prompts, image indices and seeds), and :func:`build_report`."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowopd.benchmarks.report.baselines import load_baselines
from flowopd.benchmarks.report.leaderboard import Leaderboard, build_leaderboard
from flowopd.benchmarks.report.runs import Run, load_run
from flowopd.benchmarks.report.tables import HEADLINE_REWARD, MAIN_MINI
from flowopd.benchmarks.stats import Z95
from flowopd.errors import InputError

# ------------------------------------------------------------------ paired comparisons (mini suite)


def load_samples(path: str | Path, suite: str = "mini") -> list[dict[str, Any]]:
    """The per-image records of a run folder's suite (``<suite>/samples.jsonl``; a root samples.jsonl in old runs)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    for f in (folder / suite / "samples.jsonl", folder / "samples.jsonl"):
        if f.is_file():
            return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    raise InputError(f"{folder} has no {suite}/samples.jsonl; pass a run folder written by `flowopd eval --suite {suite}`")


def headline_values(records: list[dict[str, Any]]) -> dict[str, dict[tuple, tuple[str, float]]]:
    """Per mini headline metric, the per-image values it aggregates: ``{(prompt, index, seed): (group, value)}``.

    Compose counts the strict GenEval verdict and averages within tags (group =
    tag), the others average the task reward's raw score.
    """
    out: dict[str, dict[tuple, tuple[str, float]]] = {}
    for r in records:
        task = r.get("task")
        score = r.get("scores", {}).get(HEADLINE_REWARD.get(task, ""))
        if not score or score.get("failed") or score.get("raw") is None:
            continue
        if task == "compose":
            key, group, value = "compose/geneval_overall", r["metadata"]["tag"], float(score["details"]["correct"])
        else:
            key, group, value = f"{task}/{HEADLINE_REWARD[task]}", task, float(score["raw"])
        out.setdefault(key, {})[(r["prompt"], r["index"], r["seed"])] = (group, value)
    return out


def paired_deltas(run: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each headline metric's change against a baseline run, paired image by image (same prompt, index and seed).

    Differences are averaged like the metric itself (compose: within tags, then
    over tags), so the interval is that of the paired difference, far tighter
    than comparing two independent intervals.
    """
    from flowopd.benchmarks.stats import mean_ci, mean_of_means_ci

    mine, theirs = headline_values(run), headline_values(baseline)
    out: dict[str, dict[str, Any]] = {}
    for key, values in mine.items():
        shared = sorted(set(values) & set(theirs.get(key, {})))
        if not shared:
            continue
        groups: dict[str, list[float]] = {}
        for k in shared:
            groups.setdefault(values[k][0], []).append(values[k][1] - theirs[key][k][1])
        out[key] = (
            mean_of_means_ci(list(groups.values()), bounds=(-1.0, 1.0))
            if key.startswith("compose/")
            else mean_ci(groups[next(iter(groups))], proportion=False)
        )  # differences, never a proportion
    return out


def add_deltas(lb: Leaderboard, baseline: Run) -> None:
    """Paired changes of every measured mini run against ``baseline`` (a mini run folder)."""
    base = baseline.samples("mini")
    if not base:
        raise InputError(
            f"--baseline {baseline.folder} has no mini/samples.jsonl; pass a run folder written by `flowopd eval --suite mini`"
        )
    same = baseline.folder.resolve()
    theirs = _mini_sampling(baseline)
    for r in lb.runs:
        mine = _mini_sampling(r)
        if r.samples("mini") and r.folder.resolve() != same and mine != theirs:
            diff = ", ".join(
                f"{k} {mine.get(k)} vs {theirs.get(k)}" for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)
            )
            raise InputError(
                f"{r.folder} and --baseline {baseline.folder} were sampled differently ({diff}): their images do not pair; "
                "evaluate both with the same settings"
            )
    lb.deltas = {r.label: paired_deltas(r.samples("mini"), base) for r in lb.runs if r.samples("mini") and r.folder.resolve() != same}
    for d in lb.deltas.values():
        avg = paired_avg(d)
        if avg is not None:
            d[PAIRED_AVG] = avg
    lb.delta_baseline = str(baseline.model.get("label") or baseline.model.get("spec") or baseline.folder.name)


PAIRED_AVG = "Avg (0-1)"


def paired_avg(deltas: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The paired change of the mini Avg: the mean of the four headline changes, each divided by its scale (quality / 5).

    The four tasks are scored on disjoint prompts, so their errors add in
    quadrature (an undefined interval, n < 2, leaves it undefined). None unless all four are present.
    """
    parts = []
    for col in MAIN_MINI.columns:
        d = deltas.get(col.key.removeprefix("mini/"))
        if d is None:
            return None
        parts.append((d["mean"] / col.scale, (d["ci95"][1] - d["ci95"][0]) / (2 * Z95) / col.scale, d.get("n", 0)))
    mean = sum(m for m, _, _ in parts) / len(parts)
    se = math.sqrt(sum(e * e for _, e, _ in parts)) / len(parts)
    return {"mean": mean, "ci95": [mean - Z95 * se, mean + Z95 * se], "se": se, "n": sum(n for _, _, n in parts)}


def _mini_sampling(run: Run) -> dict[str, Any]:
    """The sampling settings of a run's mini suite (steps, CFG, shift, resolution...)."""
    suite = (run.summary.get("suites") or {}).get("mini") or {}
    return dict(suite.get("sampling") or {}) if isinstance(suite, dict) else {}


def build_report(
    results: Sequence[str | Path],
    baselines: str | Path | Sequence[str | Path] | None = None,
    baseline_run: str | Path | None = None,
    allow_mixed_protocols: bool = False,
) -> Leaderboard:
    """Load the run folders (and published numbers: one baselines file or several) into a leaderboard; with
    ``baseline_run``, add paired mini deltas.

    Runs sampled with different protocols on a suite are refused unless ``allow_mixed_protocols`` (then the difference
    is a note under the tables), and runs off their suite's official protocol are noted (``benchmarks/protocol.py``)."""
    from flowopd.benchmarks.protocol import check_protocols

    runs = [load_run(p) for p in results]
    files = [] if baselines is None else [baselines] if isinstance(baselines, str | Path) else list(baselines)
    rows = [row for f in files for row in load_baselines(f)]
    lb = build_leaderboard(runs, rows)
    if baseline_run is not None:  # its own, sharper refusal first: the images of two protocols do not pair
        add_deltas(lb, load_run(baseline_run))
    lb.notes += check_protocols(lb.runs, allow_mixed_protocols)
    return lb
