"""The leaderboard as JSON, and Hugging Face ``model-index`` YAML for model cards."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from flowopd.benchmarks.report.leaderboard import Cell, Entry, Leaderboard
from flowopd.benchmarks.report.markdown import provenance, provenance_lines, table_markdown
from flowopd.benchmarks.report.tables import KEY_LABELS

# ------------------------------------------------------------------ JSON and model-index


def _cell_json(cell: Cell | None, rank: int | None = None) -> dict[str, Any] | None:
    if cell is None:
        return None
    finite = [x if math.isfinite(x) else None for x in (cell.value, *(cell.ci95 or ()))]  # JSON has no NaN
    return {
        "value": finite[0],
        "ci95": finite[1:] if cell.ci95 else None,
        "n": cell.n,
        "measured": cell.measured,
        "source": cell.source,
        "teacher": cell.teacher,
        "rank": rank,
    }


def to_json(lb: Leaderboard) -> dict[str, Any]:
    """The report as one machine-readable document (tables with every cell's value, CI, n, measured or reported, source, rank)."""
    models = []
    for e in lb.entries:
        m: dict[str, Any] = {"id": e.slug, "label": e.label, "measured": e.measured, "world": e.world}
        if e.run is not None:
            m["folder"] = str(e.run.folder)
            m["skipped"] = e.run.summary.get("skipped") or {}
            m["provenance"] = provenance(e.run)
        if e.printed_avg is not None:
            m["printed_avg"] = {"value": e.printed_avg.value, "source": e.printed_avg.source}
        m["metrics"] = {k: _cell_json(c) for k, c in e.cells.items()}
        models.append(m)
    tables = []
    for t in lb.tables:
        tables.append(
            {
                "id": t.spec.id,
                "title": t.spec.title,
                "note": t.spec.note,
                "columns": [{"key": c.key, "label": c.label, "digits": c.digits, "scale": c.scale} for c in t.columns],
                "rows": [
                    {
                        "model": e.slug,
                        "label": e.label,
                        "measured": e.measured,
                        "cells": {c.key: _cell_json(r.get(c.key), t.ranks.get((i, c.key))) for c in t.columns},
                    }
                    for i, (e, r) in enumerate(t.rows)
                ],
            }
        )
    doc: dict[str, Any] = {
        "kind": "flowopd-leaderboard",
        "version": 1,
        "models": models,
        "tables": tables,
        "sources": lb.sources,
        "notes": lb.notes,
    }
    if lb.deltas is not None:
        doc["paired_deltas"] = {"baseline": lb.delta_baseline, "models": lb.deltas}
    return doc


DATASETS = {
    "geneval": ("GenEval", "geneval"),
    "ocr": ("OCR (Flow-GRPO test set)", "flow-grpo-ocr"),
    "pickscore": ("PickScore (Flow-GRPO test set)", "flow-grpo-pickscore"),
    "deqa": ("DrawBench (DeQA)", "drawbench"),
    "quality": ("DrawBench (image quality rewards)", "drawbench"),
    "hpsv2": ("HPS v2 benchmark", "hpsv2"),
    "t2i-compbench": ("T2I-CompBench++", "t2i-compbench"),
    "geneval2": ("GenEval 2 (Soft-TIFA)", "geneval2"),
    "dpg-bench": ("DPG-Bench", "dpg-bench"),
    "oneig": ("OneIG-Bench (EN)", "oneig-bench"),
}


def model_index_entry(e: Entry) -> dict[str, Any]:
    """One model's ``model-index`` entry: results grouped by dataset, each metric with type, name and value."""
    groups: dict[str, list[tuple[str, Cell]]] = {}
    for key, cell in e.cells.items():
        parts = key.split("/")
        ds = "/".join(parts[:2]) if parts[0] == "mini" and len(parts) > 2 else parts[0]
        groups.setdefault(ds, []).append((key, cell))
    results = []
    for ds, items in groups.items():
        if ds.startswith("mini/"):
            name, dtype = f"flowopd mini world: {ds.split('/')[1]} (held-out prompts)", "flowopd-mini"
        elif ds.startswith("geneval@"):
            name, dtype = f"GenEval ({ds.split('@', 1)[1]} detector)", "geneval"
        else:
            name, dtype = DATASETS.get(ds, (ds, ds))
        metrics = [
            {"type": key, "name": KEY_LABELS.get(key, key.split("/", 1)[1] if "/" in key else key), "value": round(c.value, 4)}
            for key, c in items
            if math.isfinite(c.value)
        ]
        results.append(
            {"task": {"type": "text-to-image", "name": "Text-to-Image"}, "dataset": {"name": name, "type": dtype}, "metrics": metrics}
        )
    return {"name": e.label, "results": results}


def model_index_yaml(entries: Sequence[Entry]) -> str:
    """The ``model-index:`` block of a Hugging Face model card, one entry per measured model."""
    import yaml

    return yaml.safe_dump({"model-index": [model_index_entry(e) for e in entries if e.measured]}, sort_keys=False, allow_unicode=True)


def model_card(lb: Leaderboard, e: Entry) -> str:
    """A Hugging Face model card (``README.md``) for one measured model: YAML front matter with its ``model-index`` (the
    format huggingface_hub's ``ModelCard`` and ``model_index_to_eval_results`` parse; tests/test_report.py checks it), then
    the leaderboard's tables and where the numbers come from."""
    import yaml

    meta: dict[str, Any] = {"library_name": "flowopd", "tags": ["text-to-image", "flow-matching", "flowopd"]}
    base = (e.run.summary.get("run") or {}).get("config", {}).get("model") if e.run is not None else None
    if base and "/" in base and not base.startswith(("/", ".")):  # a hub id (sd3:org/name -> org/name), not a local folder
        meta["base_model"] = base.removeprefix("sd3:")
    meta["model-index"] = [model_index_entry(e)]
    body = [f"# {e.label}", "", "Measured with [flowopd](https://github.com/flowopd/flowopd): mean [95% CI] and n per metric.", ""]
    body += [table_markdown(lb, t) for t in lb.tables if any(row is e for row, _ in t.rows)]
    if e.run is not None:
        body += ["## Provenance", "", *(f"- {line}" for line in provenance_lines(e.run))]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n" + "\n".join(body).rstrip() + "\n"
