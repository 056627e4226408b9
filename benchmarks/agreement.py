"""Reward/human agreement: how often each reward model picks the image people preferred.

Pair files are JSON Lines (or a JSON list), one comparison set per record,
image paths relative to the file:

- Pick-a-Pic style: ``{"prompt": ..., "images": [a, b], "preferred": 0}``
  (``preferred: null`` or ``"label": 0.5`` marks a tie, which is skipped);
- HPD v2 style: ``{"prompt": ..., "images": [a, b, c, ...], "rank": [2, 1, 3, ...]}``
  (lower rank = preferred); every pair of differently ranked images is one comparison.

A reward *agrees* on a comparison when it scores the preferred image higher
(a tie in score counts one half). Accuracy is the mean over comparisons; its
95% interval is a percentile bootstrap over records, because the comparisons
of one record share a prompt and images and are not independent. An image a
reward failed to score drops that reward's comparisons that use it (counted).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flowopd.errors import InputError
from flowopd.runinfo import parse_jsonl


@dataclasses.dataclass
class PairRecord:
    prompt: str
    images: list[Path]
    comparisons: list[tuple[int, int]]  # (preferred index, other index)
    metadata: dict[str, Any] | None = None


def load_pairs(path: str | Path) -> list[PairRecord]:
    """Parse a pair file; a malformed record is an :class:`InputError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pair file {path} not found; pass a .jsonl file of {{prompt, images, preferred|rank}} records")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            items = list(enumerate(json.loads(text), start=1))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    else:
        items = parse_jsonl(path, text, "each line must be one {prompt, images, preferred|rank} record")
    records = [_record(path, lineno, item) for lineno, item in items]
    if not any(r.comparisons for r in records):
        raise InputError(f"{path}: no comparisons (every record is a tie or has one image)")
    return records


def _record(path: Path, lineno: int, item: Any) -> PairRecord:
    where = f"{path}:{lineno}"
    if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
        raise InputError(f"{where}: each record needs a 'prompt' string, 'images' and 'preferred' or 'rank'")
    images = item.get("images")
    if not isinstance(images, list) or len(images) < 2 or not all(isinstance(i, str) for i in images):
        raise InputError(f"{where}: 'images' must be a list of at least two image paths")
    paths = [(path.parent / i) if not Path(i).is_absolute() else Path(i) for i in images]
    for p in paths:
        if not p.is_file():
            raise InputError(f"{where}: image {p} not found (paths are relative to the pair file)")
    n = len(paths)
    if "rank" in item:
        rank = item["rank"]
        if not isinstance(rank, list) or len(rank) != n or not all(isinstance(r, int | float) for r in rank):
            raise InputError(f"{where}: 'rank' must be a list of {n} numbers (lower = preferred)")
        comparisons = [(i, j) for i in range(n) for j in range(n) if rank[i] < rank[j]]
    elif "preferred" in item or "label" in item:
        if n != 2:
            raise InputError(f"{where}: 'preferred' needs exactly two images; use 'rank' for more")
        pref = item.get("preferred")
        if pref is None and "label" in item:  # Pick-a-Pic: label_0 = 1 (first), 0 (second), 0.5 (tie)
            label = float(item["label"])
            pref = None if label == 0.5 else 0 if label == 1 else 1 if label == 0 else "bad"
        if pref not in (0, 1, None):
            raise InputError(f"{where}: 'preferred' must be 0, 1 or null (tie); 'label' must be 1, 0 or 0.5")
        comparisons = [] if pref is None else [(pref, 1 - pref)]
    else:
        raise InputError(f"{where}: give 'preferred' (0/1/null) or 'rank' (list, lower = preferred)")
    meta = item.get("metadata")
    return PairRecord(item["prompt"], paths, comparisons, meta if isinstance(meta, dict) else None)


def agreement_of(scores: Sequence[Sequence[float]], records: Sequence[PairRecord]) -> tuple[list[float], int]:
    """Per-record agreement (mean over its comparisons) and the number of comparisons dropped for failed images."""
    per_record, dropped = [], 0
    for s, rec in zip(scores, records):
        vals = []
        for a, b in rec.comparisons:
            if math.isnan(s[a]) or math.isnan(s[b]):
                dropped += 1
                continue
            vals.append(1.0 if s[a] > s[b] else 0.5 if s[a] == s[b] else 0.0)
        per_record.append((float(np.mean(vals)), len(vals)) if vals else (math.nan, 0))
    return per_record, dropped


def bootstrap_ci(per_record: Sequence[tuple[float, int]], n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Accuracy over comparisons, with a 95% percentile bootstrap interval resampling records."""
    vals = np.array([v for v, n in per_record if n > 0], dtype=float)
    counts = np.array([n for v, n in per_record if n > 0], dtype=float)
    if len(vals) == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    mean = float((vals * counts).sum() / counts.sum())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(vals), size=(n_boot, len(vals)))
    boots = (vals[idx] * counts[idx]).sum(1) / counts[idx].sum(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"mean": mean, "lo": float(lo), "hi": float(hi), "n": int(counts.sum())}


def run_agreement(
    records: Sequence[PairRecord],
    rewards: Sequence[str],
    device: str = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
    chunk_images: int = 64,
) -> list[dict[str, Any]]:
    """Score every image of every record with each reward; one result row per reward.

    Records are taken in chunks of about ``chunk_images`` images: each chunk
    is decoded once and scored by every reward in one batched call.
    """
    from PIL import Image

    from flowopd.reward_models import load_reward

    models = {name: load_reward(name, device=device) for name in rewards}
    scores: dict[str, list[list[float]]] = {name: [] for name in rewards}
    start = 0
    while start < len(records):
        stop = start
        n_images = 0
        while stop < len(records) and (stop == start or n_images + len(records[stop].images) <= chunk_images):
            n_images += len(records[stop].images)
            stop += 1
        chunk = records[start:stop]
        images = [Image.open(p).convert("RGB") for rec in chunk for p in rec.images]
        prompts = [rec.prompt for rec in chunk for _ in rec.images]
        metas = [rec.metadata for rec in chunk for _ in rec.images]
        for name, model in models.items():
            raw = model.score(images, prompts, metas).raw
            flat = (raw if model.higher_is_better else -raw).tolist()
            for rec in chunk:
                scores[name].append(flat[: len(rec.images)])
                flat = flat[len(rec.images) :]
        if progress:
            progress(f"{stop} of {len(records)} records scored", stop, len(records))
        start = stop
    rows = []
    for name, model in models.items():
        per_record, dropped = agreement_of(scores[name], records)
        rows.append({"reward": name, "version": model.version, **bootstrap_ci(per_record), "dropped_failed": dropped})
    return rows
