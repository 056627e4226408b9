"""An evaluation run folder as the report reads it (``summary.json``, older layouts upgraded) and the runs' names."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowopd.errors import InputError
from flowopd.runinfo import parse_jsonl

# ------------------------------------------------------------------ runs


@dataclasses.dataclass
class Run:
    """One evaluation run folder."""

    folder: Path
    summary: dict[str, Any]
    legacy: bool = False  # the pre-suites layout: one samples.jsonl at the root, metrics without the suite prefix
    label: str = ""
    slug: str = ""
    _samples: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def model(self) -> dict[str, Any]:
        return self.summary.get("model") or {}

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        return self.summary.get("metrics") or {}

    @property
    def world(self) -> str:
        return self.model.get("world") or ("mini" if any(k.startswith("mini/") for k in self.metrics) else "real")

    def samples(self, suite: str) -> list[dict[str, Any]]:
        """The suite's per-image records (empty when the run has none)."""
        if suite not in self._samples:
            f = self.folder / "samples.jsonl" if self.legacy else self.folder / suite / "samples.jsonl"
            recs = []
            if f.is_file():
                for _, rec in parse_jsonl(f, f.read_text(), "re-run `flowopd eval` to rewrite the run"):
                    if self.legacy and isinstance(rec, dict) and rec.get("image"):
                        rec.setdefault("suite", suite)
                    recs.append(rec)
            self._samples[suite] = recs
        return self._samples[suite]

    def image_path(self, rel: str) -> Path | None:
        """An image named by a samples record, only if it lies inside the run folder (never a path outside it)."""
        try:
            p = (self.folder / rel).resolve()
            p.relative_to(self.folder.resolve())
        except (ValueError, OSError, TypeError):
            return None
        return p if p.is_file() else None


def last_evaluation(run: Path) -> Path | None:
    """A training run's last finished evaluation during training (``RUN/evals/step-N`` with a summary), or None."""
    done = sorted(p.parent for p in (run / "evals").glob("step-*/summary.json"))
    return done[-1] if done else None


def load_summary(path: str | Path) -> dict[str, Any]:
    """Read a ``summary.json`` (or the run folder that holds one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "summary.json"
    if not path.is_file():
        raise InputError(f"{path} does not exist; pass a run folder written by `flowopd eval` (or its summary.json)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); pass a summary.json written by `flowopd eval`") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise InputError(f"{path}: no 'metrics' in this file; pass a summary.json written by `flowopd eval`")
    return data


def _upgrade_legacy(s: dict[str, Any]) -> dict[str, Any]:
    """The single-suite summary of earlier versions, in today's layout."""
    suite = s.get("suite", "mini")
    cfg = (s.get("run") or {}).get("config") or {}
    spec = cfg.get("model")
    sampling = {k: cfg[k] for k in ("steps", "cfg", "shift") if k in cfg}
    return {
        "kind": "flowopd-eval",
        "model": {"spec": spec, "label": spec, "world": "mini" if suite == "mini" else "real", "digest": None, "train_log": None},
        "suites": {
            suite: {
                "n_images": s.get("n_images"),
                "headline": s.get("headline", {}),
                "metrics": s["metrics"],
                "sampling": sampling,
                "notes": [],
            }
        },
        "skipped": {},
        "metrics": {f"{suite}/{k}": v for k, v in s["metrics"].items()},
        "run": s.get("run") or {},
    }


def load_run(path: str | Path) -> Run:
    """A run folder (or its summary.json); a training run with ``eval_every``: its last evaluation, curves from its log."""
    path = Path(path)
    log = None
    last = last_evaluation(path) if path.is_dir() and not (path / "summary.json").is_file() else None
    if last is not None:
        log, path = path / "log.jsonl", last
    folder = path if path.is_dir() else path.parent
    s = load_summary(path)
    if log is not None and log.is_file() and isinstance(s.get("model"), dict) and not s["model"].get("train_log"):
        s["model"]["train_log"] = str(log.resolve())
    legacy = "suites" not in s and "model" not in s
    if legacy:
        s = _upgrade_legacy(s)
    for key, m in s["metrics"].items():
        if not (isinstance(m, dict) and isinstance(m.get("mean"), (int, float))):
            raise InputError(f"{folder / 'summary.json'}: metric {key!r} has no numeric 'mean'; re-run `flowopd eval`")
    return Run(folder=folder, summary=s, legacy=legacy)


def slugify(text: str) -> str:
    """A file-name-safe id: lowercase letters, digits, dots, dashes."""
    s = re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.")
    return s[:60] or "model"


def name_runs(runs: Sequence[Run]) -> None:
    """Set each run's label (its summary's model label; the folder name added where two runs share one) and a unique slug."""
    base = [str(r.model.get("label") or r.model.get("spec") or r.folder.name) for r in runs]
    labels = [f"{b} ({r.folder.name})" if base.count(b) > 1 else b for b, r in zip(base, runs)]
    seen: dict[str, int] = {}
    slugs: set[str] = set()
    for r, lab in zip(runs, labels):
        seen[lab] = seen.get(lab, 0) + 1
        r.label = lab if labels.count(lab) == 1 else f"{lab} #{seen[lab]}"
        slug = slugify(r.label)
        k = 2
        while slug in slugs:
            slug, k = f"{slugify(r.label)}-{k}", k + 1
        slugs.add(slug)
        r.slug = slug
