"""The leaderboard as Markdown (``flowopd report``, ``report.md``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowopd.benchmarks.report.leaderboard import Cell, Entry, Leaderboard, Table, cell_text, missing_text
from flowopd.benchmarks.report.runs import Run
from flowopd.benchmarks.report.tables import Column

# ------------------------------------------------------------------ Markdown


def _md(text: Any) -> str:
    """A user string safe inside a Markdown table cell (and inert if the Markdown is rendered as HTML)."""
    s = str(text).replace("\r", " ").replace("\n", " ")
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _md_cell(lb: Leaderboard, cell: Cell | None, col: Column, rank: int | None, missing: str = "n/a") -> str:
    if cell is None:
        return missing
    t = cell_text(lb, cell, col.digits)
    v = f"**{t.value}**" if rank == 1 else f"_{t.value}_" if rank == 2 else t.value
    return " ".join(part for part in (v, t.ci, t.n, t.mark, "‡" if t.teacher else "") if part)


def deltas_markdown(deltas: dict[str, dict[str, dict[str, Any]]], baseline: str) -> str:
    """One row per model: the paired change of each headline metric against ``baseline``; * marks an interval that excludes 0."""
    columns: list[str] = []
    for d in deltas.values():
        columns += [c for c in d if c not in columns]
    lines = [f"### change against {_md(baseline)} (paired by prompt and seed; mean [95% CI], * = excludes 0)", ""]
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
        lines.append(f"| {_md(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def row_label(e: Entry) -> str:
    return e.label if e.measured else f"{e.label} †"


def table_markdown(lb: Leaderboard, t: Table) -> str:
    lines = [f"## {t.spec.title}", ""]
    if t.spec.note:
        lines += [t.spec.note, ""]
    lines += ["| model | " + " | ".join(_md(c.label) for c in t.columns) + " |", "|---|" + "---|" * len(t.columns)]
    for i, (e, r) in enumerate(t.rows):
        cells = [_md_cell(lb, r.get(c.key), c, t.ranks.get((i, c.key)), missing_text(t.spec, e, c.key)) for c in t.columns]
        lines.append(f"| {_md(row_label(e))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def skipped_groups(runs: Sequence[Run]) -> list[tuple[list[str], list[str], str]]:
    """Skipped suites over runs, said once per reason: ``[(suites, models, reason)]``."""
    by_suite: dict[tuple[str, str], list[str]] = {}
    for r in runs:
        for suite, why in (r.summary.get("skipped") or {}).items():
            by_suite.setdefault((str(suite), str(why)), []).append(r.label)
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (suite, why), models in by_suite.items():
        groups.setdefault((why, tuple(models)), []).append(suite)
    return [(suites, list(models), why) for (why, models), suites in groups.items()]


def provenance(run: Run) -> dict[str, Any]:
    """What a run was: spec, digest, config, seed, git, versions, platform, sampling per suite, cache, time."""
    info = run.summary.get("run") or {}
    return {
        "folder": str(run.folder),
        "spec": run.model.get("spec"),
        "world": run.world,
        "digest": run.model.get("digest"),
        "train_log": run.model.get("train_log"),
        "config": info.get("config"),
        "seed": info.get("seed"),
        "git": info.get("git"),
        "versions": {k: v for k, v in (info.get("versions") or {}).items() if v},
        "python": info.get("python"),
        "platform": info.get("platform"),
        "sampling": {
            s: v.get("sampling") for s, v in (run.summary.get("suites") or {}).items() if isinstance(v, dict) and v.get("sampling")
        },
        "notes": {s: v.get("notes") for s, v in (run.summary.get("suites") or {}).items() if isinstance(v, dict) and v.get("notes")},
        "warnings": [str(w) for w in run.summary.get("warnings") or []],
        "cache": run.summary.get("cache"),
        "seconds": run.summary.get("seconds"),
    }


def provenance_lines(run: Run) -> list[str]:
    """The compact, human-readable provenance of a run (one line per aspect)."""
    p = provenance(run)
    head = f"spec {p['spec']}, world {p['world']}"
    head += f", digest {p['digest']}" if p["digest"] else ""
    head += f", seed {p['seed']}" if p["seed"] is not None else ""
    head += f", git {p['git'] or 'n/a'}"
    out = [head]
    versions = ", ".join(f"{k} {v}" for k, v in p["versions"].items())
    env = f"python {p['python']}" if p["python"] else ""
    out.append("; ".join(x for x in (env, versions, p["platform"] or "") if x) or "versions: n/a")
    by_sampling: dict[str, list[str]] = {}
    for s, smp in p["sampling"].items():
        text = ", ".join(f"{k} {v}" for k, v in smp.items() if v not in (None, "", [], {}))
        by_sampling.setdefault(text, []).append(s)
    out += [f"sampling ({', '.join(suites)}): {text}" for text, suites in by_sampling.items()]
    for s, notes in p["notes"].items():
        out += [f"{s} note: {n}" for n in notes]
    out += [f"warning: {w}" for w in p["warnings"]]
    tail = []
    if p["seconds"] is not None:
        tail.append(f"{float(p['seconds']):.0f} s")
    if isinstance(p["cache"], dict):
        tail.append(f"score cache {p['cache'].get('hits', 0)} hits / {p['cache'].get('misses', 0)} misses")
    if p["train_log"]:
        tail.append(f"train log {p['train_log']}")
    if tail:
        out.append(", ".join(tail))
    if p["config"] is not None:
        out.append("config " + json.dumps(p["config"], sort_keys=True, default=str))
    return out


def legend(lb: Leaderboard) -> str:
    parts = ["Measured cells: mean [95% CI] n=images. Per column **best** and _second best_, measured and reported rows together."]
    if lb.sources:
        parts.append("† reported, not measured (sources below).")
    if any(c.teacher for e in lb.entries for c in e.cells.values()):
        parts.append("‡ a teacher's own-task score (the task's ceiling), left out of the ranking as in the paper.")
    return " ".join(parts)


def curves_markdown(runs: Sequence[Run], report_path: Path | None) -> list[str]:
    """The training curves of every run trained here: SVG files beside ``report_path`` (``<stem>-curves-<model>-<chart>.svg``),
    or, when the report is printed, where its log is."""
    from flowopd.benchmarks.report.curves import train_log_path, training_charts
    from flowopd.runinfo import atomic_file

    out: list[str] = []
    for r in runs:
        log = train_log_path(r)
        if log is None or not log.is_file():
            continue
        out += [f"### {_md(r.label)}", ""]
        if report_path is None:
            out += [f"training log `{_md(log)}`: pass `--out report.md` to draw its curves beside the report", ""]
            continue
        charts, info = training_charts(log, r.label)
        for group, svg in charts:
            name = f"{report_path.stem}-curves-{r.slug}-{group.replace(' ', '-')}.svg"
            with atomic_file(report_path.parent / name, "w") as f:  # a file of its own needs the SVG namespace (inline, HTML has it)
                f.write(svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1))
            out.append(f"![{group}]({name})")
        out.append("")
        out += [f"- alarm at step {step}: {_md(message)}" for step, message in info["alarms"]]
        out.append("")
    return ["## Training curves", "", *out] if out else []


def to_markdown(lb: Leaderboard, report_path: Path | None = None) -> str:
    """The whole report as Markdown; with ``report_path`` (where it will be written) the training curves are drawn
    beside it as SVG files."""
    n_meas = len(lb.runs)
    n_rep = len(lb.entries) - n_meas
    out = [
        "# flowopd leaderboard",
        "",
        f"{n_meas} measured run(s)" + (f", {n_rep} reported model(s)" if n_rep else "") + ". " + legend(lb),
        "",
    ]
    for t in lb.tables:
        out.append(table_markdown(lb, t))
    if lb.sources or lb.notes:
        out += ["## Sources", ""]
        out += [f"- {lb.source_mark(s)} {_md(s)}" for s in lb.sources]
        out += [f"- note: {_md(n)}" for n in lb.notes]
        out.append("")
    if lb.deltas is not None:
        out.append(deltas_markdown(lb.deltas, lb.delta_baseline or "baseline"))
    skipped = skipped_groups(lb.runs)
    if skipped:
        out += ["## Skipped suites", ""]
        out += [f"- **{_md(', '.join(suites))}** ({_md(', '.join(models))}): {_md(why)}" for suites, models, why in skipped]
        out.append("")
    out += curves_markdown(lb.runs, report_path)
    out += ["## All measured metrics", ""]
    for r in lb.runs:
        out += [f"### {_md(r.label)}", "", "| metric | mean [95% CI] | n |", "|---|---|---|"]
        for key, m in r.metrics.items():
            ci = m.get("ci95") or [math.nan, math.nan]
            out.append(f"| {_md(key)} | {m['mean']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}] | {m.get('n', '')} |")
        out.append("")
    out += ["## Provenance", ""]
    for r in lb.runs:
        lines = provenance_lines(r)
        out.append(f"- **{_md(r.label)}** (`{_md(r.folder)}`): {_md(lines[0])}")
        out += [f"  - {_md(x)}" for x in lines[1:]]
    return "\n".join(out).rstrip() + "\n"
