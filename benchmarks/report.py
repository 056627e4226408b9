"""Leaderboard reports from evaluation run folders: the paper's tables with 95% CIs and sample counts, published
baselines beside the measured runs, as Markdown, JSON and Hugging Face ``model-index`` YAML (the HTML page, and an eval
run folder's ``report.md`` + ``report.html``: html_report.py).

A run folder is what `flowopd eval` writes: ``summary.json`` (metrics keyed ``<suite>/<metric>`` with mean, n
and ci95) and ``<suite>/samples.jsonl`` (one record per image). A baselines file (CSV or JSON) holds published
numbers, ``model, metric, value, source`` (optional ``teacher``), shown as *reported*, never as measured.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowopd.benchmarks.stats import Z95, standard_error
from flowopd.errors import InputError
from flowopd.teachers import MINI_TASK_REWARDS

GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
TAG_LABELS = {
    "single_object": "Single obj.",
    "two_object": "Two obj.",
    "counting": "Counting",
    "colors": "Colors",
    "position": "Position",
    "color_attr": "Attr. binding",
}
MINI_TASKS = ("compose", "text", "preference", "quality")
HEADLINE_REWARD = MINI_TASK_REWARDS  # each mini task's own reward
SHIPPED_BASELINES = Path(__file__).resolve().parent / "baselines"
BASELINE_FIELDS = ("model", "metric", "value", "source")


# ------------------------------------------------------------------ table layouts


@dataclasses.dataclass(frozen=True)
class Column:
    """One metric column: its key, its header, the digits it prints with, and its Avg normaliser (value / scale in 0-1)."""

    key: str
    label: str
    digits: int = 3
    scale: float | None = None


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """A table: columns in order; ``avg`` appends the mean of the normalised columns (all needed)."""

    id: str
    title: str
    columns: tuple[Column, ...]
    avg: bool = False
    note: str = ""
    keep_empty: bool = False  # show columns that no row has (the main tables keep their shape)
    require: tuple[str, ...] = ()  # shown only if some row has one of these (a per-tag table needs a tag, not just overall)


AVG = Column("avg", "Avg", 4)

MAIN_REAL = TableSpec(
    "main",
    "Main results (paper Table 2)",
    (
        Column("geneval/overall", "GenEval", 3, 1.0),
        Column("ocr/accuracy", "OCR", 3, 1.0),
        Column("deqa/deqa", "DeQA", 2, 5.0),
        Column("pickscore/pickscore", "PickScore", 2, 26.0),
    ),
    avg=True,
    note="Avg = mean of GenEval, OCR, DeQA / 5 and PickScore / 26 (the paper's 0-1 normalisation), only where all four are present.",
    keep_empty=True,
)
MAIN_MINI = TableSpec(
    "main-mini",
    "Main results, mini world (the paper's Table 2 analogues)",
    (
        Column("mini/compose/geneval_overall", "compose", 3, 1.0),
        Column("mini/text/mini_ocr", "text", 3, 1.0),
        Column("mini/preference/mini_preference", "preference", 3, 1.0),
        Column("mini/quality/mini_quality", "quality", 2, 5.0),
    ),
    avg=True,
    note="compose = GenEval-style overall, text = OCR reward, preference in 0-1, quality in 1-5; "
    "Avg = mean of compose, text, preference and quality / 5, only where all four are present.",
    keep_empty=True,
)
QUALITY = TableSpec(
    "quality",
    "Image quality and alignment (paper Table 4)",
    (
        Column("quality/imagereward", "ImageReward", 2),
        Column("quality/aesthetic", "Aesthetic", 2),
        Column("quality/unifiedreward", "UnifiedReward", 3),
        Column("quality/hpsv2.1", "HPS-v2.1", 4),
        Column("quality/qwenvl", "QwenVL", 2),
    ),
    note="DrawBench prompts; each reward's mean raw score.",
)
T2I = TableSpec(
    "t2i-compbench",
    "T2I-CompBench++ (paper Table 3)",
    tuple(
        Column(f"t2i-compbench/{c}", label, 4)
        for c, label in (
            ("color", "Color"),
            ("shape", "Shape"),
            ("texture", "Texture"),
            ("spatial", "Spatial"),
            ("3d_spatial", "3D-Spatial"),
            ("numeracy", "Numeracy"),
            ("non_spatial", "Non-Spatial"),
            ("complex", "Complex"),
        )
    ),
)
HPSV2 = TableSpec(
    "hpsv2",
    "HPS v2 benchmark (x100)",
    tuple(Column(f"hpsv2/{s}", s, 2) for s in ("anime", "concept-art", "paintings", "photo", "average")),
)


def geneval_spec(prefix: str) -> TableSpec:
    """Per-tag GenEval for a geneval suite (``geneval`` or a detector variant like ``geneval@hf-m2f``)."""
    cols = [Column(f"{prefix}/{t}", TAG_LABELS[t]) for t in GENEVAL_TAGS]
    cols += [
        Column(f"{prefix}/overall", "Overall"),
        Column(f"{prefix}/image_accuracy", "Image acc."),
        Column(f"{prefix}/prompt_accuracy", "Prompt acc."),
    ]
    title = "GenEval per tag" + ("" if prefix == "geneval" else f" ({prefix})")
    require = tuple(c.key for c in cols if not c.key.endswith("/overall"))
    note = "Overall = unweighted mean of the six tag accuracies; image accuracy = all images pooled; prompt accuracy = any of a prompt's images correct."
    return TableSpec(f"per-tag-{prefix}", title, tuple(cols), note=note, require=require)


GENEVAL_MINI = TableSpec(
    "per-tag-mini",
    "GenEval-style per tag, mini world",
    tuple(Column(f"mini/compose/geneval_{t}", TAG_LABELS[t]) for t in GENEVAL_TAGS) + (Column("mini/compose/geneval_overall", "Overall"),),
    note="Strict accuracy per tag; Overall = unweighted mean of the tags.",
    require=tuple(f"mini/compose/geneval_{t}" for t in GENEVAL_TAGS),
)


def _norm_label(text: str) -> str:
    return re.sub(r"[\s._\-]", "", text.lower())


# column labels a baselines file may use instead of a full key (case, spaces, dots, dashes and underscores ignored)
METRIC_LABELS: dict[str, str] = {_norm_label(c.label): c.key for spec in (MAIN_REAL, MAIN_MINI, QUALITY, T2I) for c in spec.columns} | {
    _norm_label(k): v for k, v in {"OCR Acc.": "ocr/accuracy", "QwenVL Score": "quality/qwenvl", "HPS v2.1": "quality/hpsv2.1"}.items()
}
KEY_LABELS: dict[str, str] = {
    c.key: c.label for spec in (MAIN_MINI, QUALITY, T2I, HPSV2, MAIN_REAL) for c in spec.columns
}  # names in model-index and the per-model listing


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
                for n, line in enumerate(f.read_text().splitlines(), 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InputError(f"{f}:{n}: not valid JSON ({exc.msg}); re-run `flowopd eval` to rewrite the run") from None
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
    """A run folder (or its summary.json)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    s = load_summary(path)
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
    return Baseline(model, key, value, text, source, teacher_raw in ("yes", "true", "1", "y"), where)


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
    """Published numbers from a CSV (header ``model,metric,value,source[,teacher]``, ``#`` comments) or a JSON list.

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
            extra = sorted(set(obj) - {*BASELINE_FIELDS, "teacher"})
            if extra:
                raise InputError(f"{path}:{line}: unknown key(s) {', '.join(extra)}; allowed: model, metric, value, source, teacher")
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


# ------------------------------------------------------------------ the leaderboard


@dataclasses.dataclass
class Cell:
    """One value: measured (mean, 95% CI, n) or reported (source; ``text`` as printed there)."""

    value: float
    ci95: tuple[float, float] | None = None
    n: int | None = None
    source: str | None = None  # None: measured
    teacher: bool = False
    text: str | None = None
    se: float | None = None  # the standard error behind ci95 (which may be clipped to the metric's range)

    @property
    def measured(self) -> bool:
        return self.source is None


@dataclasses.dataclass
class Entry:
    """A leaderboard row: a measured run, or one model's published numbers."""

    label: str
    slug: str
    cells: dict[str, Cell]
    run: Run | None = None
    printed_avg: Baseline | None = None

    @property
    def measured(self) -> bool:
        return self.run is not None

    @property
    def world(self) -> str:
        if self.run is not None:
            return self.run.world
        return "mini" if any(k.startswith("mini/") for k in self.cells) else "real"


@dataclasses.dataclass
class Table:
    spec: TableSpec
    columns: list[Column]
    rows: list[tuple[Entry, dict[str, Cell | None]]]
    ranks: dict[tuple[int, str], int]


@dataclasses.dataclass
class Leaderboard:
    entries: list[Entry]
    tables: list[Table]
    sources: list[str]
    notes: list[str]
    deltas: dict[str, dict[str, dict[str, Any]]] | None = None
    delta_baseline: str | None = None

    @property
    def runs(self) -> list[Run]:
        return [e.run for e in self.entries if e.run is not None]

    def source_mark(self, source: str) -> str:
        return f"†{self.sources.index(source) + 1}" if len(self.sources) > 1 else "†"


def run_entry(run: Run) -> Entry:
    cells = {}
    for key, m in run.metrics.items():
        ci = m.get("ci95")
        ci = (
            (float(ci[0]), float(ci[1]))
            if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in ci)
            else None  # none, or n < 2
        )
        cells[key] = Cell(float(m["mean"]), ci, m.get("n"), se=standard_error(m) if ci else None)
    return Entry(run.label, run.slug, cells, run=run)


def baseline_entries(rows: Sequence[Baseline], taken: set[str]) -> list[Entry]:
    """One entry per model, in order of first appearance."""
    out: dict[str, Entry] = {}
    for b in rows:
        if b.model not in out:
            slug, k = f"reported-{slugify(b.model)}", 2
            while slug in taken:
                slug, k = f"reported-{slugify(b.model)}-{k}", k + 1
            taken.add(slug)
            out[b.model] = Entry(b.model, slug, {})
        if b.key == "avg":
            out[b.model].printed_avg = b
        else:
            out[b.model].cells[b.key] = Cell(b.value, source=b.source, teacher=b.teacher, text=b.text)
    return list(out.values())


def normalised_mean(values: Sequence[float], scales: Sequence[float]) -> float:
    """The paper's Avg: the mean of the metrics each divided by its scale (0-1)."""
    return sum(v / s for v, s in zip(values, scales)) / len(values)


def avg_cell(cells: Sequence[Cell | None], scales: Sequence[float]) -> Cell | None:
    """Avg of a row, or None unless every metric is present; measured rows get an interval (metrics taken as independent)."""
    if any(c is None or not math.isfinite(c.value) for c in cells):
        return None
    cells = [c for c in cells if c is not None]
    value = normalised_mean([c.value for c in cells], scales)
    if all(c.measured for c in cells):
        if all(c.ci95 for c in cells):
            ses = [c.se if c.se is not None else (c.ci95[1] - c.ci95[0]) / (2 * Z95) for c in cells]
            se = math.sqrt(sum((e / s) ** 2 for e, s in zip(ses, scales))) / len(cells)
            return Cell(value, (value - Z95 * se, value + Z95 * se))
        return Cell(value)
    sources = list(dict.fromkeys(c.source for c in cells if c.source))
    return Cell(value, source=sources[0] if len(sources) == 1 else "; ".join(sources))


def rank_cells(cells: Sequence[Cell | None], digits: int) -> list[int | None]:
    """1 (best) / 2 (second best) per cell, higher is better, compared as printed; teacher scores and lone values are not ranked."""
    vals = [round(c.value, digits) if c is not None and not c.teacher and math.isfinite(c.value) else None for c in cells]
    present = [v for v in vals if v is not None]
    if len(present) < 2:
        return [None] * len(cells)
    distinct = sorted(set(present), reverse=True)
    if len(distinct) == 1:  # all equal: nothing stands out
        return [None] * len(cells)
    best = distinct[0]
    second = distinct[1] if len(distinct) > 1 else None
    return [1 if v is not None and v == best else 2 if v is not None and v == second else None for v in vals]


def mini_rewards_spec(entries: Sequence[Entry]) -> TableSpec:
    """Every mini reward on every task, from the keys the runs have."""
    found: set[tuple[str, str]] = set()
    for e in entries:
        for key in e.cells:
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "mini" and parts[2].startswith("mini_"):
                found.add((parts[1], parts[2]))
    order = {t: i for i, t in enumerate(MINI_TASKS)}
    cols = []
    for task, reward in sorted(found, key=lambda tr: (order.get(tr[0], 99), tr[0], HEADLINE_REWARD.get(tr[0]) != tr[1], tr[1])):
        star = "*" if HEADLINE_REWARD.get(task) == reward else ""
        cols.append(Column(f"mini/{task}/{reward}", f"{task}: {reward.removeprefix('mini_')}{star}", 2 if reward == "mini_quality" else 3))
    note = "Every reward on every task's images (* = the task's own reward); a reward hacked in training shows as a gain in its own column and a loss in the others."
    return TableSpec("mini-rewards", "Every mini reward on every task", tuple(cols), note=note)


def table_specs(entries: Sequence[Entry]) -> list[TableSpec]:
    """The tables that apply to these entries, in the order they are shown."""
    keys = {k for e in entries for k in e.cells}
    geneval_prefixes = sorted({k.split("/")[0] for k in keys if k.split("/")[0].startswith("geneval")}, key=lambda p: (p != "geneval", p))
    specs = [
        MAIN_REAL,
        MAIN_MINI,
        *[geneval_spec(p) for p in geneval_prefixes],
        GENEVAL_MINI,
        QUALITY,
        T2I,
        HPSV2,
        mini_rewards_spec(entries),
    ]
    return [s for s in specs if any(c.key in keys for c in s.columns) and (not s.require or any(k in keys for k in s.require))]


def build_table(spec: TableSpec, entries: Sequence[Entry]) -> Table | None:
    """A table's rows (entries with any of its metrics), its Avg column, and the best/second marks per column."""
    rows = [(e, {c.key: e.cells.get(c.key) for c in spec.columns}) for e in entries if any(c.key in e.cells for c in spec.columns)]
    if not rows:
        return None
    columns = [c for c in spec.columns if spec.keep_empty or any(r[c.key] is not None for _, r in rows)]
    if spec.avg:
        scales = [c.scale or 1.0 for c in spec.columns]
        for _, r in rows:
            r["avg"] = avg_cell([r[c.key] for c in spec.columns], scales)
        columns.append(AVG)
    ranks: dict[tuple[int, str], int] = {}
    for c in columns:
        for i, rk in enumerate(rank_cells([r[c.key] for _, r in rows], c.digits)):
            if rk:
                ranks[(i, c.key)] = rk
    return Table(spec, columns, rows, ranks)


def build_leaderboard(runs: Sequence[Run], baselines: Sequence[Baseline] = ()) -> Leaderboard:
    """Measured runs first (in the order given), then the published rows; every table that applies."""
    name_runs(runs)
    entries = [run_entry(r) for r in runs]
    entries += baseline_entries(baselines, {r.slug for r in runs})
    tables = [t for t in (build_table(s, entries) for s in table_specs(entries)) if t is not None]
    sources = list(dict.fromkeys(b.source for b in baselines if b.key != "avg"))
    notes = []
    for t in tables:
        if not t.spec.avg:
            continue
        for e, r in t.rows:
            p = e.printed_avg
            if p is not None and r.get("avg") is not None and abs(r["avg"].value - p.value) > 6e-4:
                notes.append(
                    f"{e.label}: {p.source} prints Avg {p.text}, but its four metrics give {r['avg'].value:.4f}; "
                    "the table shows the computed value."
                )
    return Leaderboard(entries, tables, sources, notes)


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


# ------------------------------------------------------------------ Markdown


def _md(text: Any) -> str:
    """A user string safe inside a Markdown table cell (and inert if the Markdown is rendered as HTML)."""
    s = str(text).replace("\r", " ").replace("\n", " ")
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def fmt_value(cell: Cell, digits: int) -> str:
    """The number as printed: a reported value as its source printed it."""
    if not cell.measured and cell.text:
        return cell.text
    return f"{cell.value:.{digits}f}" if math.isfinite(cell.value) else "nan"


def _md_cell(lb: Leaderboard, cell: Cell | None, col: Column, rank: int | None) -> str:
    if cell is None:
        return "n/a"
    v = fmt_value(cell, col.digits)
    v = f"**{v}**" if rank == 1 else f"_{v}_" if rank == 2 else v
    if cell.measured:
        if cell.ci95:
            v += f" [{cell.ci95[0]:.{col.digits}f}, {cell.ci95[1]:.{col.digits}f}]"
        if cell.n:
            v += f" n={cell.n}"
    else:
        v += " " + lb.source_mark(cell.source or "")
        if cell.teacher:
            v += " ‡"
    return v


def row_label(e: Entry) -> str:
    return e.label if e.measured else f"{e.label} †"


def table_markdown(lb: Leaderboard, t: Table) -> str:
    lines = [f"## {t.spec.title}", ""]
    if t.spec.note:
        lines += [t.spec.note, ""]
    lines += ["| model | " + " | ".join(_md(c.label) for c in t.columns) + " |", "|---|" + "---|" * len(t.columns)]
    for i, (e, r) in enumerate(t.rows):
        cells = [_md_cell(lb, r.get(c.key), c, t.ranks.get((i, c.key))) for c in t.columns]
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


def to_markdown(lb: Leaderboard) -> str:
    """The whole report as Markdown."""
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


def build_report(results: Sequence[str | Path], baselines: str | Path | None = None, baseline_run: str | Path | None = None) -> Leaderboard:
    """Load the run folders (and published numbers) into a leaderboard; with ``baseline_run``, add paired mini deltas."""
    runs = [load_run(p) for p in results]
    rows = load_baselines(baselines) if baselines is not None else []
    lb = build_leaderboard(runs, rows)
    if baseline_run is not None:
        add_deltas(lb, load_run(baseline_run))
    return lb
