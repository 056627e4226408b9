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
