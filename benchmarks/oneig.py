"""OneIG-Bench (EN) in ``flowopd eval``: the ``oneig`` prompt set and suite (alignment and text rendering).

Upstream: OneIG-Bench/OneIG-Benchmark @ 41b4983 (``OneIG-Bench.csv``, ``scripts/alignment/alignment_score.py``,
``scripts/text/text_score.py``, README). The judges' rules are in :mod:`flowopd.reward_models.oneig`; this module
lays out the data and aggregates.

- Data, in the upstream layout under ``<data dir>/oneig_bench/``: ``OneIG-Bench.csv`` (1120 rows:
  ``category,id,prompt_en,type,prompt_length,class``; ``$FLOWOPD_PROMPTS_ONEIG`` points at another copy), the
  alignment questions ``scripts/alignment/Q_D/{anime,human,object}.json`` and the text ground truth
  ``scripts/text/text_content.csv`` (``id,text_content``). ``id`` restarts at 000 in each category; a prompt's
  metadata carries its category, folder, id, and its questions or ground truth where the files have them.
- Images: upstream pastes 4 images of a prompt into one 2x2 grid and scores each tile. Here each of the prompt's 4
  images is one tile (the JPEG round trip and the black-tile rule are the reward's).
- ``alignment``: per prompt the mean over its scored tiles; the mean over prompts pooled across the anime, human and
  object folders (``alignment_score.py`` L108-110, not a mean of folder means); ``alignment/<folder>`` per folder.
- ``text``: ED, CR and WAC pooled over every scored tile of every text prompt, then ``1 - min(100, ED) (1 - CR)
  (1 - WAC) / 100``. Its interval, and WAC's, is a bootstrap over prompts (2000 draws, seed 0).
- Not run (suite notes): reasoning (LLM2CLIP), style (CSD + OneIG-StyleEncoder), diversity (DreamSim); the suite
  does not make images for the 225 Knowledge_Reasoning prompts, which only reasoning and diversity score.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flowopd.benchmarks.prompt_sets import PromptSet, data_dir
from flowopd.benchmarks.prompts import Prompt
from flowopd.benchmarks.stats import mean_ci
from flowopd.benchmarks.suites import Metrics, Record, Suite
from flowopd.errors import InputError

logger = logging.getLogger(__name__)

UPSTREAM = "https://github.com/OneIG-Bench/OneIG-Benchmark"
FOLDER = "oneig_bench"
CATEGORY_FOLDERS = {
    "Anime_Stylization": "anime",
    "Portrait": "human",
    "General_Object": "object",
    "Text_Rendering": "text",
    "Knowledge_Reasoning": "reasoning",
}
ALIGNMENT_FOLDERS = ("anime", "human", "object")
SCORED_FOLDERS = (*ALIGNMENT_FOLDERS, "text")
CSV_COLUMNS = ("category", "id", "prompt_en", "type", "prompt_length", "class")
IMAGES_PER_PROMPT = 4  # text2image.py: 4 seeds in a 2x2 grid
BOOTSTRAP_DRAWS = 2000


def scripts_dir() -> Path:
    """``<data dir>/oneig_bench/scripts``: upstream's ``scripts/`` folder (questions and ground truth)."""
    return data_dir() / FOLDER / "scripts"


def question_file(folder: str) -> Path:
    return scripts_dir() / "alignment" / "Q_D" / f"{folder}.json"


def ground_truth_file() -> Path:
    return scripts_dir() / "text" / "text_content.csv"


def missing_scripts() -> str | None:
    """The question and ground-truth files that are not there, and where to put them; None when all are."""
    needed = [question_file(f) for f in ALIGNMENT_FOLDERS] + [ground_truth_file()]
    absent = [str(p) for p in needed if not p.is_file()]
    if not absent:
        return None
    return f"OneIG-Bench scripts files not there: {', '.join(absent)}; copy them from {UPSTREAM} (scripts/alignment/Q_D/, scripts/text/)"


# ----------------------------------------------------------------------------- the files


def _key_line(text: str, key: str) -> int:
    """The line of ``"key":`` in a JSON text (1 when not found)."""
    match = re.search(rf'"{re.escape(key)}"\s*:', text)
    return text.count("\n", 0, match.start()) + 1 if match else 1


def _as_mapping(value: Any, what: str) -> dict:
    """A field that upstream stores as a JSON string (or, here, an object) as a dict."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"{what} is not JSON text") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


def _parse_questions(entry: Any) -> list[dict[str, Any]]:
    """One prompt's ``{"question": {...}, "dependency": {...}}`` as ``[{"id", "question", "parents"}]`` in id order."""
    if not isinstance(entry, dict):
        raise ValueError('it is not {"question": ..., "dependency": ...}')
    questions = _as_mapping(entry.get("question"), "its question field")
    dependency = _as_mapping(entry.get("dependency"), "its dependency field")
    if not questions or not all(k.isdigit() for k in questions) or set(questions) != set(dependency):
        raise ValueError("its question and dependency fields must have the same ids 1..N")
    out = []
    for key in sorted(questions, key=int):
        parents = dependency[key]
        if not isinstance(parents, list) or not all(isinstance(p, int) and (p == 0 or str(p) in questions) for p in parents):
            raise ValueError(f"question {key}'s dependency {parents!r} must list question ids of the prompt (0 for none)")
        out.append({"id": int(key), "question": str(questions[key]), "parents": [p for p in parents if p != 0]})
    return out


def load_alignment_questions(path: Path) -> dict[str, list[dict[str, Any]]]:
    """``{id: questions}`` from a ``Q_D/<folder>.json``; bad input is one ``ValueError`` line ``FILE:LINE: what; fix``."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not JSON ({exc.msg}); fix the file or copy it again from {UPSTREAM}") from None
    if not isinstance(data, dict):
        raise ValueError(f'{path}:1: not a JSON object {{"<id>": {{"question": ..., "dependency": ...}}}}; copy it again from {UPSTREAM}')
    out = {}
    for prompt_id, entry in data.items():
        try:
            out[prompt_id] = _parse_questions(entry)
        except ValueError as exc:
            raise ValueError(f"{path}:{_key_line(text, prompt_id)}: prompt {prompt_id!r}: {exc}; fix it") from None
    return out


def load_ground_truth(path: Path) -> dict[str, str]:
    """``{id: text_content}`` from ``text_content.csv`` (the raw list-like string: preprocessing strips its brackets)."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not {"id", "text_content"} <= set(reader.fieldnames or []):
            raise ValueError(f"{path}:1: the columns must include id,text_content; copy the file again from {UPSTREAM}")
        out, start = {}, reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1
            prompt_id = (row["id"] or "").strip()
            if not re.fullmatch(r"\d{3}", prompt_id) or prompt_id in out:
                raise ValueError(f"{path}:{line}: id {prompt_id!r} is not a new 3-digit id; fix the id")
            out[prompt_id] = row["text_content"] or ""
    return out


def _read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """The CSV's rows with their line numbers, checked: columns, category, 3-digit id, unique (category, id), prompt."""
    rows, seen = [], {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}:1: missing column(s) {', '.join(missing)}; OneIG-Bench.csv has the columns {','.join(CSV_COLUMNS)}")
        start = reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1
            category, prompt_id = (row["category"] or "").strip(), (row["id"] or "").strip()
            if category not in CATEGORY_FOLDERS:
                raise InputError(f"{path}:{line}: unknown category {category!r}; use one of {', '.join(CATEGORY_FOLDERS)}")
            if not re.fullmatch(r"\d{3}", prompt_id):
                raise InputError(f"{path}:{line}: id {prompt_id!r} is not 3 digits; write it like 007")
            if (category, prompt_id) in seen:
                raise InputError(
                    f"{path}:{line}: {category} id {prompt_id} is also on line {seen[category, prompt_id]}; ids must be unique"
                )
            if not (row["prompt_en"] or "").strip():
                raise InputError(f"{path}:{line}: prompt_en is empty; every row has a prompt")
            seen[category, prompt_id] = line
            rows.append((line, row))
    return rows


def _scoring_data() -> tuple[dict[str, dict[str, list]], dict[str, str]]:
    """The questions per alignment folder and the text ground truth, where their files are there."""
    questions = {}
    try:
        for folder in ALIGNMENT_FOLDERS:
            if question_file(folder).is_file():
                questions[folder] = load_alignment_questions(question_file(folder))
        truth = load_ground_truth(ground_truth_file()) if ground_truth_file().is_file() else {}
    except UnicodeDecodeError as exc:
        raise InputError(f"a OneIG-Bench scripts file is not UTF-8 text (byte {exc.start}); copy it again from {UPSTREAM}") from None
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return questions, truth


@dataclasses.dataclass(frozen=True)
class OneIGPromptSet(PromptSet):
    """``OneIG-Bench.csv`` (EN prompts), each prompt with its alignment questions or text ground truth attached."""

    def missing_reason(self, group: str) -> str:
        return f"OneIG-Bench prompts not at {self.path()}; copy OneIG-Bench.csv from {UPSTREAM} there, or point ${self.env_var} at it"

    def load(self) -> list[Prompt]:
        """One prompt per CSV row, in CSV order; metadata: category, folder, id, type, prompt_length, class, set, and
        ``questions`` (anime/human/object) or ``text_content`` (text) where the scripts files have the id."""
        if not self.present():
            raise InputError(self.missing_reason(self.name))
        try:
            rows = _read_rows(self.path())
        except UnicodeDecodeError as exc:
            raise InputError(f"{self.path()}: not UTF-8 text (byte {exc.start}); save the CSV as UTF-8") from None
        questions, truth = _scoring_data()
        out = []
        for _, row in rows:
            folder = CATEGORY_FOLDERS[row["category"].strip()]
            prompt_id = row["id"].strip()
            meta: dict[str, Any] = {"category": row["category"].strip(), "folder": folder, "id": prompt_id, "set": self.name}
            meta.update({k: (row[k] or "").strip() for k in ("type", "prompt_length", "class")})
            if prompt_id in questions.get(folder, {}):
                meta["questions"] = questions[folder][prompt_id]
            if folder == "text" and prompt_id in truth:
                meta["text_content"] = truth[prompt_id]
            out.append(Prompt(row["prompt_en"].strip(), meta, "text" if folder == "text" else "compose"))
        return out


PROMPT_SET = OneIGPromptSet(
    "oneig",
    f"{FOLDER}/OneIG-Bench.csv",
    "compose",
    f"{UPSTREAM}/blob/main/OneIG-Bench.csv",
    1120,
    "OneIG-Bench EN: 1120 prompts in 5 categories (anime, portrait, object, text rendering, knowledge/reasoning)",
)


# ----------------------------------------------------------------------------- the suite


def _oneig_items(suite: Suite, limit: int | None, seed: int) -> list[tuple[str, str, dict[str, Any]]]:
    """The anime, human, object and text prompts (at most ``limit`` per category), in CSV order; a prompt whose
    questions or ground truth the scripts files lack is left out, with a warning."""
    out, counts, unscored = [], {}, {}
    for p in PROMPT_SET.load():
        folder = p.metadata["folder"]
        if folder not in SCORED_FOLDERS:
            continue
        if "questions" not in p.metadata and "text_content" not in p.metadata:
            unscored[folder] = unscored.get(folder, 0) + 1
            continue
        if limit is not None and counts.get(folder, 0) >= limit:
            continue
        counts[folder] = counts.get(folder, 0) + 1
        out.append((p.task or "", p.text, p.metadata))
    for folder, n in unscored.items():
        where = ground_truth_file() if folder == "text" else question_file(folder)
        logger.warning("oneig: %d %s prompt(s) have no entry in %s and are not scored", n, folder, where)
    return out


def _oneig_rewards(job: Any, available: Sequence[str]) -> list[str]:
    name = "oneig_text" if job.metadata.get("folder") == "text" else "oneig_alignment"
    return [name] if name in available else []


def _scored(records: list[Record], reward: str) -> list[Record]:
    return [
        r for r in records if reward in r["scores"] and not r["scores"][reward].get("failed") and r["scores"][reward]["raw"] is not None
    ]


def _by_prompt(records: list[Record]) -> dict[tuple[str, str], list[Record]]:
    out: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        out.setdefault((r["metadata"]["folder"], r["metadata"]["id"]), []).append(r)
    return out


def alignment_metrics(records: list[Record], reward: str = "oneig_alignment") -> Metrics:
    """``alignment`` (prompts pooled over the folders) and ``alignment/<folder>``: the mean over prompts of the prompt's
    mean tile score, with n (prompts) and a 95% interval."""
    prompts = {
        key: sum(t["scores"][reward]["raw"] for t in tiles) / len(tiles) for key, tiles in _by_prompt(_scored(records, reward)).items()
    }
    if not prompts:
        return {}
    metrics: Metrics = {"alignment": mean_ci(list(prompts.values()), proportion=False, bounds=(0.0, 1.0))}
    for folder in ALIGNMENT_FOLDERS:
        values = [v for (f, _), v in prompts.items() if f == folder]
        if values:
            metrics[f"alignment/{folder}"] = mean_ci(values, proportion=False, bounds=(0.0, 1.0))
    return metrics


def _pooled_text(groups: Sequence[np.ndarray]) -> tuple[float, float, float, float]:
    """ED, CR, WAC and the text score pooled over every tile of the given prompts (rows: ed, cr, matched, gt words)."""
    from flowopd.reward_models.oneig import text_score

    tiles = np.concatenate(groups, axis=0)
    ed, cr = float(tiles[:, 0].mean()), float(tiles[:, 1].mean())
    words = float(tiles[:, 3].sum())
    wac = float(tiles[:, 2].sum()) / words if words else 0.0
    return ed, cr, wac, text_score(ed, cr, wac)


def text_metrics(records: list[Record], reward: str = "oneig_text") -> Metrics:
    """``text`` and its parts ``text/ED``, ``text/CR``, ``text/WAC`` pooled over tiles (``text_score.py``); n counts
    tiles; the intervals of WAC and the text score are a bootstrap over prompts."""
    keys = ("ed", "cr", "matched_words", "gt_words")
    groups = [
        np.array([[t["scores"][reward]["details"][k] for k in keys] for t in tiles], dtype=float)
        for tiles in _by_prompt(_scored(records, reward)).values()
    ]
    if not groups:
        return {}
    ed, cr, wac, score = _pooled_text(groups)
    tiles = np.concatenate(groups, axis=0)
    n = len(tiles)
    rng = np.random.default_rng(0)
    draws = np.array([_pooled_text([groups[k] for k in rng.integers(0, len(groups), len(groups))]) for _ in range(BOOTSTRAP_DRAWS)])
    note = f"pooled over {n} tiles of {len(groups)} prompts; 95% interval: bootstrap over prompts"
    return {
        "text": {"mean": score, "n": n, "ci95": np.percentile(draws[:, 3], [2.5, 97.5]).tolist(), "prompts": len(groups), "note": note},
        "text/ED": mean_ci(tiles[:, 0].tolist(), proportion=False, bounds=(0.0, float("inf"))),
        "text/CR": mean_ci(tiles[:, 1].tolist(), proportion=True),
        "text/WAC": {"mean": wac, "n": n, "ci95": np.percentile(draws[:, 2], [2.5, 97.5]).tolist(), "note": note},
    }


def _oneig_aggregate(suite: Suite, records: list[Record], rewards: Sequence[str]) -> Metrics:
    return {**alignment_metrics(records), **text_metrics(records)}


@dataclasses.dataclass(frozen=True)
class OneIGSuite(Suite):
    """The suite, whose inputs also include the scripts files (questions, ground truth)."""

    def missing_inputs(self) -> str | None:
        missing = [m for m in (super().missing_inputs(), missing_scripts()) if m]
        return "; ".join(missing) or None


SKIPPED_DIMENSIONS = (
    "reasoning not run: it needs LLM2CLIP (microsoft/LLM2CLIP-Openai-L-14-336 and the 8B "
    "LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned, both loaded with trust_remote_code), which the zoo does not carry",
    "style not run: it needs the CSD style encoder (CLIP ViT-L/14 + a Google-Drive checkpoint) and xingpng/OneIG-StyleEncoder "
    "with upstream's reference embeddings CSD_embed.pt / SE_embed.pt, none of which the zoo carries",
    "diversity not run: it needs DreamSim (the dreamsim package and its GitHub-release weights), which is not installed",
)

SUITE = OneIGSuite(
    "oneig",
    "OneIG-Bench EN (4 images per prompt as the 2x2 tiles): alignment (695 prompts) and text rendering (200 prompts), Qwen2.5-VL-7B served",
    "real",
    IMAGES_PER_PROMPT,
    ("oneig_alignment", "oneig_text"),
    prompt_sets=("oneig",),
    group_key="folder",
    build_items=_oneig_items,
    aggregate=_oneig_aggregate,
    rewards_for=_oneig_rewards,
    notes=(
        "each image is one tile of upstream's 2x2 grid, JPEG q75 round-tripped, all-black tiles dropped; the judge is "
        "Qwen2.5-VL-7B-Instruct behind a server (same model, other runtime than upstream's transformers generate)",
        "alignment: prompt = mean of its tiles, pooled over anime/human/object prompts; text: ED, CR, WAC pooled over tiles, "
        "text = 1 - min(100, ED)(1 - CR)(1 - WAC)/100; see docs/eval.md",
        *SKIPPED_DIMENSIONS,
    ),
)
