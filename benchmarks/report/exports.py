"""The leaderboard as JSON, and Hugging Face ``model-index`` YAML for model cards."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from flowopd.benchmarks.report.leaderboard import Cell, Entry, Leaderboard
from flowopd.benchmarks.report.markdown import provenance
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
