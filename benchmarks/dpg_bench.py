"""DPG-Bench in ``flowopd eval``: the ``dpg-bench`` prompt set (the prompt files joined with the question CSV) and suite.

Upstream: TencentQQGYLab/ELLA @ 3c228f1, ``dpg_bench/`` (``compute_dpg_bench.py``, ``dist_eval.sh``, README). The
formula and the CSV rules are in :mod:`flowopd.reward_models.dpg_bench`; this module lays out the data and aggregates.

- Data: ``<data dir>/dpg_bench/dpg_bench/`` holds ELLA's ``dpg_bench/`` folder: ``prompts/<item_id>.txt`` (1065
  files) and ``dpg_bench.csv`` (the questions; ``$FLOWOPD_PROMPTS_DPG_BENCH`` points at another copy of the CSV).
  A prompt is the item's ``.txt`` file; its metadata carries the item's questions, in CSV order.
- Images: upstream tiles 4 images of a prompt 2x2 into one file and scores each tile (TL, TR, BL, BR). Here each of
  the prompt's 4 images (``images_per_prompt=4``, image indices 0-3 in that order) is one tile, scored on its own;
  the prompt's score is the mean over its scored tiles, computed here.
- ``overall``: 100 x the mean over prompts of the prompt score. A failed tile is left out (and counted); a prompt
  with no scored tile is left out, as upstream leaves out an image it could not score.
- ``L1/<category>``, ``L2/<category>``: upstream's quirk (ELLA issue #60) is kept, since the published numbers carry
  it: the values are the **raw** (not dependency-filtered) 0/1 answers of the prompt's **last** tile only (the
  highest scored image index; BR with 4 images), pooled over prompts, x 100. ``L2`` is the ``tuple`` text before its
  ``(`` (``entity - whole`` -> key ``entity-whole``), ``L1`` its part before the first ``-``.
- The official VQA model (mPLUG-large) is not in the zoo; the served judge ``dpg_vqa@served-vlm`` answers instead,
  and every metric it gives is named ``<metric>@served-vlm``: not the official DPG-Bench number.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

from flowopd.benchmarks.prompt_sets import PromptSet, data_dir
from flowopd.benchmarks.prompts import Prompt
from flowopd.benchmarks.stats import mean_ci
from flowopd.benchmarks.suites import Metrics, Record, Suite
from flowopd.errors import InputError

ELLA = "https://raw.githubusercontent.com/TencentQQGYLab/ELLA/main/dpg_bench"
FOLDER = "dpg_bench/dpg_bench"  # ELLA's dpg_bench/ folder, under the data dir's dpg_bench/
SERVED_REWARD = "dpg_vqa@served-vlm"
IMAGES_PER_PROMPT = 4  # dist_eval.sh PIC_NUM=4: a 2x2 grid, each tile scored


@dataclasses.dataclass(frozen=True)
class DPGPromptSet(PromptSet):
    """The prompt files ``prompts/<item_id>.txt`` joined with the question CSV; :meth:`path` is the CSV."""

    def prompts_dir(self) -> Path:
        return data_dir() / FOLDER / "prompts"

    def present(self) -> bool:
        return self.path().is_file() and self.prompts_dir().is_dir()

    def missing_reason(self, group: str) -> str:
        if not self.path().is_file():
            return (
                f"DPG-Bench questions not at {self.path()} (dpg_bench.csv is not shipped); run `flowopd prompts download {group}`, "
                f"or point ${self.env_var} at a copy of {self.url}"
            )
        return f"DPG-Bench prompt files not in {self.prompts_dir()}; copy the prompts/ folder of ELLA's dpg_bench/ ({ELLA}) there"

    def load(self) -> list[Prompt]:
        """One prompt per CSV item, in CSV order, with ``item_id`` and its ``questions`` as metadata."""
        from flowopd.reward_models.dpg_bench import load_dpg_questions

        if not self.present():
            raise InputError(self.missing_reason(self.name))
        path, folder = self.path(), self.prompts_dir()
        try:
            items = load_dpg_questions(path)
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text (byte {exc.start}); save the CSV as UTF-8") from None
        except ValueError as exc:
            raise InputError(str(exc)) from None
        out = []
        for item_id, questions in items.items():
            txt = folder / f"{item_id}.txt"
            if not txt.is_file():
                raise InputError(f"{path}:{questions[0].line}: item {item_id!r} has no prompt file {txt}; add it or drop the item's rows")
            meta = {"item_id": item_id, "questions": [q.as_metadata() for q in questions], "set": self.name}
            out.append(Prompt(txt.read_text(encoding="utf-8").strip(), meta, self.task))
        return out


PROMPT_SET = DPGPromptSet(
    "dpg-bench",
    f"{FOLDER}/dpg_bench.csv",
    "compose",
    f"{ELLA}/dpg_bench.csv",
    1065,
    "DPG-Bench: 1065 dense prompts (prompts/<item_id>.txt) with their yes/no questions and dependencies (dpg_bench.csv)",
)


# ----------------------------------------------------------------------------- aggregation


def category_key(category: str) -> str:
    """A category as a metric key: spaces around ``-`` and an end ``-`` dropped, other spaces ``_`` (``entity - whole`` ->
    ``entity-whole``, ``global -`` -> ``global``)."""
    key = re.sub(r"\s+", "_", re.sub(r"\s*-\s*", "-", category.strip()).strip("-"))
    return key or "uncategorized"


def _percent(metric: dict) -> dict:
    """A 0-1 metric (mean, interval, se) on the 0-100 scale."""
    out = dict(metric, mean=100 * metric["mean"], ci95=[100 * v for v in metric["ci95"]])
    if "se" in out:
        out["se"] = 100 * out["se"]
    return out


def _tiles_by_prompt(records: list[Record], reward: str) -> dict[str, list[Record]]:
    """The scored tiles of each prompt (item id); failed tiles are left out."""
    out: dict[str, list[Record]] = {}
    for r in records:
        score = r["scores"].get(reward)
        if score is not None and not score.get("failed") and score["raw"] is not None:
            out.setdefault(r["metadata"]["item_id"], []).append(r)
    return out


def dpg_metrics(records: list[Record], reward: str) -> Metrics:
    """``overall``, ``L1/<cat>``, ``L2/<cat>`` (x 100, each with n and a 95% interval), named ``<metric>@<runtime>`` for a
    reward named ``dpg_vqa@<runtime>``; see the module docstring for the tiles and the last-tile category quirk."""
    from flowopd.reward_models.dpg_bench import l1_category

    suffix = "@" + reward.split("@", 1)[1] if "@" in reward else ""
    by_prompt = _tiles_by_prompt(records, reward)
    if not by_prompt:
        return {}
    prompt_scores = [100 * sum(t["scores"][reward]["raw"] for t in tiles) / len(tiles) for tiles in by_prompt.values()]
    metrics: Metrics = {f"overall{suffix}": mean_ci(prompt_scores, proportion=False, bounds=(0.0, 100.0))}
    l2: dict[str, list[float]] = {}
    for tiles in by_prompt.values():
        last = max(tiles, key=lambda t: t["index"])
        answers = last["scores"][reward]["details"]["raw_answers"]
        for question, answer in zip(last["metadata"]["questions"], answers):
            l2.setdefault(question["category"], []).append(float(answer))
    l1: dict[str, list[float]] = {}
    for category, values in l2.items():
        l1.setdefault(l1_category(category), []).extend(values)
    for level, groups in (("L1", l1), ("L2", l2)):
        for category in sorted(groups):
            metrics[f"{level}/{category_key(category)}{suffix}"] = _percent(mean_ci(groups[category], proportion=True))
    return metrics


def _dpg_aggregate(suite: Suite, records: list[Record], rewards: Sequence[str]) -> Metrics:
    return dpg_metrics(records, suite.rewards[0])


SUITE = Suite(
    "dpg-bench",
    "DPG-Bench (1065 dense prompts, 4 images each as the 2x2 tiles): dependency-filtered yes/no questions x 100, L1/L2 categories",
    "real",
    IMAGES_PER_PROMPT,
    (SERVED_REWARD,),
    prompt_sets=("dpg-bench",),
    aggregate=_dpg_aggregate,
    notes=(
        "NOT the official DPG-Bench number: the official VQA model (mPLUG-large via ModelScope) is not in the zoo; a served "
        "VLM answers the questions (dpg_vqa@served-vlm), so every metric is named <metric>@served-vlm",
        "each image is one tile of upstream's 2x2 grid (TL, TR, BL, BR = image 0-3); L1/L2 use the raw answers of the last tile "
        "(ELLA issue #60, kept); upstream's skipped first CSV row (ELLA issue #61) is not mimicked; see docs/eval.md",
    ),
)
