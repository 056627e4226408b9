"""A persistent score cache: a second run, or a run resumed after a kill, recomputes no score it already has.

Scores are keyed by ``(image sha256, prompt + metadata digest, reward name,
reward version, reward identity)``: the same pixels scored for the same
prompt by the same version of the same reward. The identity is what else
decides a score, e.g. the model a served judge runs
(:meth:`RewardModel.identity`). Failed scores are never cached, so they are
retried on the next run.

The store is one SQLite file (stdlib ``sqlite3``, WAL journal), so several
processes of one evaluation can read and write it at once, and a kill
loses at most the batch being written (each batch is one transaction).
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowopd.reward_models.base import RewardModel, Scores, to_uint8_hwc

SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    image TEXT NOT NULL, context TEXT NOT NULL, reward TEXT NOT NULL, version TEXT NOT NULL, identity TEXT NOT NULL,
    raw REAL NOT NULL, details TEXT NOT NULL,
    PRIMARY KEY (image, context, reward, version, identity)
)
"""


def image_digest(image: np.ndarray) -> str:
    """sha256 of a uint8 ``[H, W, 3]`` image's shape and pixels."""
    arr = np.ascontiguousarray(image, dtype=np.uint8)
    h = hashlib.sha256(str(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def context_digest(prompt: str, metadata: dict[str, Any] | None) -> str:
    """sha256 of the prompt and its metadata (key order does not matter)."""
    return hashlib.sha256(json.dumps([prompt, metadata or {}], sort_keys=True, default=str).encode()).hexdigest()


def _retry_locked(statement: Any, seconds: float = 60.0) -> None:
    """Run ``statement``, retrying while another process holds the lock: switching to WAL (and the first CREATE) needs the
    file to itself, and SQLite answers that with "database is locked" at once rather than through the busy timeout."""
    import random
    import time

    deadline = time.monotonic() + seconds
    while True:
        try:
            statement()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05 + 0.1 * random.random())


class ScoreCache:
    """Scores by (image, prompt context, reward, version, identity) in one SQLite file."""

    def __init__(self, path: str | Path):
        from flowopd.errors import FlowOPDError

        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60)
            _retry_locked(lambda: self._db.execute("PRAGMA journal_mode=WAL"))
            _retry_locked(lambda: (self._db.execute(SCHEMA), self._db.commit()))
            self._db.execute("SELECT 1 FROM scores LIMIT 1").fetchall()
        except (sqlite3.Error, OSError) as exc:
            raise FlowOPDError(f"score cache {self.path} cannot be used ({exc}); delete it, or pass --cache with a writable path") from None
        self.hits = 0
        self.misses = 0

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ScoreCache:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0])

    def get(self, keys: Sequence[tuple[str, str]], reward: str, version: str, identity: str) -> list[tuple[float, dict] | None]:
        out = []
        for image, context in keys:
            row = self._db.execute(
                "SELECT raw, details FROM scores WHERE image=? AND context=? AND reward=? AND version=? AND identity=?",
                (image, context, reward, version, identity),
            ).fetchone()
            out.append(None if row is None else (float(row[0]), json.loads(row[1])))
        return out

    def put(self, rows: Sequence[tuple[str, str, float, dict]], reward: str, version: str, identity: str) -> None:
        """Store ``(image, context, raw, details)`` rows in one transaction (failed, NaN scores are skipped)."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(i, c, reward, version, identity, float(r), json.dumps(d, default=str)) for i, c, r, d in rows if not math.isnan(r)],
            )

    def score(
        self,
        reward: RewardModel,
        images: torch.Tensor | Sequence[Any],
        prompts: Sequence[str],
        metadata: Sequence[dict[str, Any] | None] | None = None,
    ) -> Scores:
        """``reward.score`` through the cache: only the misses are scored, and then stored."""
        arrays = to_uint8_hwc(images)
        meta = list(metadata) if metadata is not None else [None] * len(prompts)
        keys = [(image_digest(a), context_digest(p, m)) for a, p, m in zip(arrays, prompts, meta)]
        identity = reward.identity()
        cached = self.get(keys, reward.name, reward.version, identity)
        todo = [k for k, c in enumerate(cached) if c is None]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        raws = [math.nan if c is None else c[0] for c in cached]
        details: list[dict[str, Any]] = [{} if c is None else c[1] for c in cached]
        if todo:
            subset = [arrays[k] for k in todo]  # uint8 HWC, as the reward's _score takes them: no conversion in between
            batch = np.stack(subset) if isinstance(arrays, np.ndarray) else subset
            fresh = reward.score(batch, [prompts[k] for k in todo], [meta[k] for k in todo])
            for k, r, d in zip(todo, fresh.raw.tolist(), fresh.details):
                raws[k], details[k] = r, d
            self.put([(*keys[k], raws[k], details[k]) for k in todo], reward.name, reward.version, identity)
        raw = torch.tensor(raws, dtype=torch.float32)
        return Scores(raw=raw, normalized=reward.normalize(raw), details=details)
