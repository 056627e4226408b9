"""Published baselines (CSV or JSON: ``model, metric, value, source``), shown as *reported*, never as measured."""

from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import math
import re
from pathlib import Path
from typing import Any

from flowopd.benchmarks.report.tables import (
    BASELINE_FIELDS,
    MAIN_MINI,
    MAIN_REAL,
    METRIC_LABELS,
    QUALITY,
    SHIPPED_BASELINES,
    T2I,
    _norm_label,
)
from flowopd.errors import InputError

# ------------------------------------------------------------------ baselines


@dataclasses.dataclass(frozen=True)
class Baseline:
    """One published number."""

    model: str
    key: str  # a metric key, or "avg" (a printed average: checked, never shown)
    value: float
    text: str  # as written
    source: str
    teacher: bool = False
    where: str = ""  # file:line
    protocol: str = ""  # as the publication states it (steps, CFG, resolution, seeds...), shown under the tables


def metric_key(name: str) -> str | None:
    """A baselines file's metric: a full key (``geneval/overall``) as is, a column label (GenEval, HPS-v2.1...) mapped to its key."""
    name = name.strip()
    if "/" in name:
        return name if re.fullmatch(r"[a-z0-9][a-z0-9._@\-]*(/[a-z0-9][a-z0-9._@\-]*)+", name.lower()) else None
    return "avg" if _norm_label(name) == "avg" else METRIC_LABELS.get(_norm_label(name))


def _baseline(path: Path, line: int, row: dict[str, Any]) -> Baseline:
    where = f"{path}:{line}"
    missing = [f for f in BASELINE_FIELDS if row.get(f) is None or str(row.get(f)).strip() == ""]
    if missing:
        raise InputError(
            f"{where}: empty {', '.join(missing)}; every row needs model, metric, value and source (e.g. 'Flow-OPD paper, Table 2')"
        )
    model, metric, source = (str(row[f]).strip() for f in ("model", "metric", "source"))
    key = metric_key(metric)
    if key is None:
        labels = sorted({c.label for spec in (MAIN_REAL, QUALITY, T2I, MAIN_MINI) for c in spec.columns})
        close = difflib.get_close_matches(metric, labels, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise InputError(
            f"{where}: unknown metric {metric!r}{hint}; use a column label ({', '.join(labels)}) or a full key like geneval/overall"
        )
    raw = row["value"]
    text = str(raw).strip()
    try:
        value = float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise InputError(f"{where}: value {text!r} is not a number; write a plain number like 0.63 (in the metric's own units)")
    teacher_raw = str(row.get("teacher") or "").strip().lower()
    if teacher_raw not in ("", "yes", "no", "true", "false", "1", "0", "y", "n"):
        raise InputError(f"{where}: teacher {teacher_raw!r} is not yes/no; write yes for a teacher's own-task score, or leave it empty")
    protocol = str(row.get("protocol") or "").strip()
    return Baseline(model, key, value, text, source, teacher_raw in ("yes", "true", "1", "y"), where, protocol)


def _json_items(path: Path, text: str) -> list[tuple[int, Any]]:
    """The elements of a top-level JSON list with the line each starts on."""
    dec = json.JSONDecoder()

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    i = skip(0)
    if i >= len(text) or text[i] != "[":
        raise InputError(f"{path}:1: expected a JSON list of objects with keys model, metric, value, source; wrap the rows in [ ]")
    i, out = skip(i + 1), []
    while i < len(text) and text[i] != "]":
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); fix the syntax there") from None
        out.append((text.count("\n", 0, i) + 1, obj))
        i = skip(end)
        if i < len(text) and text[i] == ",":
            i = skip(i + 1)
        elif i < len(text) and text[i] != "]":
            line = text.count("\n", 0, i) + 1
            raise InputError(f"{path}:{line}: expected ',' or ']' between the rows; fix the syntax there")
    if i >= len(text):
        raise InputError(f"{path}:{text.count(chr(10)) + 1}: the list is not closed; end the file with ]")
    return out


def load_baselines(path: str | Path) -> list[Baseline]:
    """Published numbers from a CSV (header ``model,metric,value,source[,teacher][,protocol]``, ``#`` comments) or a JSON list.

    A bare name (``flow-opd-paper``) names a file shipped in ``flowopd/benchmarks/baselines``. Any problem is
    one line naming the file, the line and the fix.
    """
    path = Path(path)
    if not path.exists() and path.parent == Path(".") and (SHIPPED_BASELINES / f"{path.name}.csv").is_file():
        path = SHIPPED_BASELINES / f"{path.name}.csv"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SHIPPED_BASELINES.glob("*.csv")))
        raise InputError(f"baselines file {path} does not exist; pass a CSV or JSON of model, metric, value, source (shipped: {shipped})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}:1: not UTF-8 text; save the baselines file as UTF-8 CSV or JSON") from None
    rows: list[Baseline] = []
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        for line, obj in _json_items(path, text):
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{line}: expected an object with keys model, metric, value, source; found {type(obj).__name__}")
            extra = sorted(set(obj) - {*BASELINE_FIELDS, "teacher", "protocol"})
            if extra:
                raise InputError(
                    f"{path}:{line}: unknown key(s) {', '.join(extra)}; allowed: model, metric, value, source, teacher, protocol"
                )
            rows.append(_baseline(path, line, obj))
    else:
        header: list[str] | None = None
        for line, raw in enumerate(text.splitlines(), 1):
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            fields = next(csv.reader([raw]))
            if header is None:
                header = [f.strip().lower() for f in fields]
                missing = [f for f in BASELINE_FIELDS if f not in header]
                if missing:
                    raise InputError(
                        f"{path}:{line}: header lacks {', '.join(missing)}; the first line must be model,metric,value,source (optional teacher)"
                    )
                continue
            if len(fields) != len(header):
                raise InputError(
                    f"{path}:{line}: expected {len(header)} fields ({', '.join(header)}), found {len(fields)}; quote a field that holds a comma"
                )
            rows.append(_baseline(path, line, dict(zip(header, fields))))
        if header is None:
            raise InputError(f"{path}:1: empty file; write the header model,metric,value,source and one row per number")
    seen: dict[tuple[str, str], str] = {}
    for b in rows:
        if (b.model, b.key) in seen:
            raise InputError(f"{b.where}: {b.model} / {b.key} is already given at {seen[(b.model, b.key)]}; keep one of the two")
        seen[(b.model, b.key)] = b.where
    return rows
