"""Leaderboard reports from evaluation summaries (Markdown today; HTML and model cards build on this)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flowopd.errors import InputError


def load_summary(path: str | Path) -> dict[str, Any]:
    """Read a ``summary.json`` (or the run folder that holds one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "summary.json"
    if not path.is_file():
        raise InputError(f"{path} does not exist; pass a summary.json written by `flowopd eval` or its run folder")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}); pass a summary.json written by `flowopd eval`") from None
    if not isinstance(data, dict) or "metrics" not in data:
        raise InputError(f"{path}: no 'metrics' in this file; pass a summary.json written by `flowopd eval`")
    return data


def _fmt(m: dict[str, Any]) -> str:
    lo, hi = m["ci95"]
    return f"{m['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def to_markdown(summaries: dict[str, dict[str, Any]]) -> str:
    """A leaderboard: one row per model, one column per headline metric (mean [95% CI]), then every metric per model."""
    names = list(summaries)
    columns: list[str] = []
    for s in summaries.values():
        for key in s.get("headline", {}).values():
            if key not in columns:
                columns.append(key)
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in names:
        metrics = summaries[name]["metrics"]
        cells = [_fmt(metrics[c]) if c in metrics else "n/a" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name in names:
        s = summaries[name]
        lines += ["", f"### {name}", "", "| metric | mean [95% CI] | n |", "|---|---|---|"]
        for key, m in s["metrics"].items():
            lines.append(f"| {key} | {_fmt(m)} | {m['n']} |")
        run = s.get("run", {})
        if run:
            cfg = run.get("config", {})
            lines += [
                "",
                f"config: `{json.dumps(cfg, sort_keys=True)}`; git `{run.get('git')}`; torch {run.get('versions', {}).get('torch')}",
            ]
    return "\n".join(lines) + "\n"


def load_samples(path: str | Path) -> list[dict[str, Any]]:
    """The per-image records (``samples.jsonl``) of an evaluation run folder."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    f = folder / "samples.jsonl"
    if not f.is_file():
        raise InputError(f"{folder} has no samples.jsonl; pass the run folder written by `flowopd eval`")
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


def paired_deltas(run: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each headline metric's change against a baseline run, paired image by image (same prompt, index and seed).

    Differences are averaged like the metric itself (compose: within tags, then
    over tags), so the interval is that of the paired difference, far tighter
    than comparing two independent intervals.
    """
    from flowopd.benchmarks.mini_suite import headline_values
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
            mean_of_means_ci(list(groups.values())) if key.startswith("compose/") else mean_ci(groups[next(iter(groups))], proportion=False)
        )  # differences, never a proportion
    return out


def deltas_markdown(deltas: dict[str, dict[str, dict[str, Any]]], baseline: str) -> str:
    """One row per model: the paired change of each headline metric against ``baseline``; * marks an interval that excludes 0."""
    columns: list[str] = []
    for d in deltas.values():
        columns += [c for c in d if c not in columns]
    lines = [f"### change against {baseline} (paired by prompt and seed; mean [95% CI], * = excludes 0)", ""]
    lines += ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, d in deltas.items():
        cells = []
        for c in columns:
            if c not in d:
                cells.append("n/a")
                continue
            lo, hi = d[c]["ci95"]
            star = "*" if lo > 0 or hi < 0 else ""
            cells.append(f"{d[c]['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]{star}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
