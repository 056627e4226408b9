"""The report's table layouts: which metric of which suite goes in which column, and the paper's tables."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path

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
SHIPPED_BASELINES = Path(__file__).resolve().parent.parent / "baselines"  # benchmarks/baselines/
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
    skipped: tuple[str, ...] = ()  # columns the suite does not compute: a measured row shows "skipped" there, not n/a


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
T2I_CATEGORIES = (  # the suite's categories (suites.T2I_METRIC_MODELS) in the paper's Table 3 order, with their headers
    ("color", "Color"),
    ("shape", "Shape"),
    ("texture", "Texture"),
    ("spatial", "Spatial"),
    ("3d_spatial", "3D-Spatial"),
    ("numeracy", "Numeracy"),
    ("non_spatial", "Non-Spatial"),
    ("complex", "Complex"),
)
T2I = TableSpec(
    "t2i-compbench", "T2I-CompBench++ (paper Table 3)", tuple(Column(f"t2i-compbench/{c}", label, 4) for c, label in T2I_CATEGORIES)
)
T2I_MEAN = Column("t2i-compbench/mean", "Mean (8)", 4)
T2I_NOTE = (
    "Per category, the official metric model's score (0-1; Non-Spatial is a raw CLIP cosine). A column headed with a "
    "runtime (e.g. Color @np-rules) is computed by another runtime of that model, named apart: not the official "
    "T2I-CompBench++ number. Mean (8) = the official mean, only where all eight categories come from their official models."
)


def t2i_spec(keys: Iterable[str]) -> TableSpec:
    """T2I-CompBench++ per category: each category's official column, then any runtime named apart
    (``<category>@<runtime>``, headed with its runtime), and the official 8-category mean last."""
    keys = set(keys)
    cols: list[Column] = []
    for cat, label in T2I_CATEGORIES:
        cols.append(Column(f"t2i-compbench/{cat}", label, 4))
        runtimes = sorted(k.split("@", 1)[1] for k in keys if k.startswith(f"t2i-compbench/{cat}@"))
        cols += [Column(f"t2i-compbench/{cat}@{rt}", f"{label} @{rt}", 4) for rt in runtimes]
    return TableSpec(T2I.id, T2I.title, (*cols, T2I_MEAN), note=T2I_NOTE)


GENEVAL2_SKILLS = (("object", "Object"), ("attribute", "Attribute"), ("count", "Count"), ("position", "Position"), ("verb", "Verb"))
GENEVAL2 = TableSpec(
    "geneval2",
    "GenEval 2 (Soft-TIFA x 100)",
    (
        Column("geneval2/soft_tifa_am", "Soft-TIFA AM", 2),
        Column("geneval2/soft_tifa_gm", "Soft-TIFA GM", 2),
        *(Column(f"geneval2/skill/{s}", f"{label} (AM)", 2) for s, label in GENEVAL2_SKILLS),
    ),
    note="AM / GM = the mean over prompts of each prompt's arithmetic / geometric mean of its question scores; "
    "per skill: every question of that skill pooled over prompts (the atom-level AM view of soft_tifa_analysis.py).",
)
GENEVAL2_ATOMS = TableSpec(
    "geneval2-atoms",
    "GenEval 2 per atom count (Soft-TIFA GM x 100)",
    tuple(Column(f"geneval2/atoms/{k}", f"{k} atoms", 2) for k in range(3, 11)),
    note="The mean per-prompt GM of the prompts with that many atoms (the prompt-level view of soft_tifa_analysis.py).",
)
DPG_L1 = (("global", "Global"), ("entity", "Entity"), ("attribute", "Attribute"), ("relation", "Relation"), ("other", "Other"))


def dpg_spec(runtime: str = "") -> TableSpec:
    """DPG-Bench overall and its L1 categories (x 100) as ``dpg-bench`` writes them, named ``<metric>@<runtime>``
    when a judge other than the official mPLUG-large answered (one table per judge: different judges, different metrics)."""
    suffix = f"@{runtime}" if runtime else ""
    cols = tuple(Column(f"dpg-bench/L1/{c}{suffix}", label, 2) for c, label in DPG_L1) + (
        Column(f"dpg-bench/overall{suffix}", "Overall", 2),
    )
    title = f"DPG-Bench, judged by {runtime}: not the official number" if runtime else "DPG-Bench"
    note = "Overall = 100 x the mean over prompts of the dependency-filtered yes rate; L1 = the raw answers of each prompt's last tile, pooled."
    if runtime:
        note += f" Every value here was answered by {runtime}, not the official mPLUG-large VQA model."
    return TableSpec(f"dpg-bench{suffix}", title, cols, note=note)


def dpg_runtimes(keys: Iterable[str]) -> list[str]:
    """The judges the DPG-Bench metrics in ``keys`` come from: "" (official), then each ``@<runtime>``."""
    found = {k.rsplit("/", 1)[1].split("@", 1)[1] if "@" in k.rsplit("/", 1)[1] else "" for k in keys if k.startswith("dpg-bench/")}
    return sorted(found, key=lambda rt: (rt != "", rt))


ONEIG = TableSpec(
    "oneig",
    "OneIG-Bench (EN) dimensions",
    tuple(Column(f"oneig/{d}", d.capitalize(), 3) for d in ("alignment", "text", "reasoning", "style", "diversity")),
    note="Alignment (sets O, P, A, S) and Text (set T) as the oneig suite computes them; Reasoning, Style and Diversity "
    "are not run by the suite (their models are not in the zoo; see the suite's notes): measured rows show them as skipped.",
    keep_empty=True,
    skipped=("oneig/reasoning", "oneig/style", "oneig/diversity"),
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
