"""DPG-Bench (Hu et al., 2024, ELLA, arXiv:2403.05135): its question CSV, its dependency rule, and a served VQA judge.

Official code: TencentQQGYLab/ELLA @ 3c228f1, ``dpg_bench/compute_dpg_bench.py`` (and ``dist_eval.sh``):

- The CSV (``dpg_bench/dpg_bench.csv``) has one row per question with the columns of :data:`CSV_COLUMNS`; an item's
  rows are consecutive; ``proposition_id`` counts from 1 within an item; ``dependency`` lists the parent proposition
  ids, comma-separated, ``0`` meaning none. Upstream's loader skips the first data row (pandas index 0, ELLA issue
  #61), which drops a question of ``partiprompts97`` or, when another question depends on it, the whole image. We do
  **not** mimic that bug: every row is read.
- Per tile (one of the 2x2 images of a prompt) every question is asked; its raw answer is 1 when the VQA model says
  exactly ``yes``, else 0. The filtered answers start as a copy and are walked in CSV order: a question with a parent
  whose *filtered* answer is 0 is set to 0, in place, so zeroing cascades down to later descendants, and a child
  listed before its parent sees only the parent's raw answer (:func:`dependency_filtered`). The tile's score is the
  mean of the filtered answers (:func:`tile_score`).
- A question's category is the ``tuple`` text before its first ``(``, stripped (``entity - whole``);
  its L1 category is the part before the first ``-`` (:func:`question_category`, :func:`l1_category`).

The official VQA model is mPLUG-large (``damo/mplug_visual-question-answering_coco_large_en`` through ModelScope),
which is not installable here. The reward ``dpg_vqa@served-vlm`` asks the questions of a vision-language model behind
an OpenAI-compatible server instead (``$FLOWOPD_DPG_VQA_SERVED_VLM_URL``): one chat-completions request per question,
the image (a PNG data URL) then ``"<question> Answer with yes or no."``, ``max_tokens`` :data:`MAX_ANSWER_TOKENS`,
temperature 0. The reply's first word, lower-cased (:func:`answer_is_yes`), must be ``yes`` for a 1; ``no`` and
anything else (an unclear reply) count 0, as upstream counts every answer that is not ``yes``; unclear replies are
listed in ``details["unclear"]``. A failed request fails the image (NaN, ``details["error"]``), never 0. It is another
VQA model, so its numbers are not the official DPG-Bench score; the suite names them ``<metric>@served-vlm``.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flowopd.reward_models.chat_client import ChatRequest
from flowopd.reward_models.judges import ServedReward, checked_question_graph, first_failed_question

CSV_COLUMNS = (
    "item_id", "text", "keywords", "proposition_id", "dependency",
    "category_broad", "category_detailed", "tuple", "question_natural_language",
)  # fmt: skip
L1_CATEGORIES = ("entity", "attribute", "relation", "global", "other")  # the paper's columns
ANSWER_INSTRUCTION = "Answer with yes or no."
MAX_ANSWER_TOKENS = 4
QUESTIONS_FORMAT = 'DPG-Bench metadata is {"item_id", "questions": [{"id", "parents", "category", "question"}, ...]}'


@dataclasses.dataclass(frozen=True)
class DPGQuestion:
    """One CSV row: its proposition id, parent ids (0 dropped), category and question, and the CSV line it came from."""

    id: int
    parents: tuple[int, ...]
    category: str
    question: str
    line: int

    def as_metadata(self) -> dict[str, Any]:
        return {"id": self.id, "parents": list(self.parents), "category": self.category, "question": self.question}


# ----------------------------------------------------------------------------- the CSV


def question_category(tuple_text: str) -> str:
    """The L2 category: the ``tuple`` text before its first ``(``, stripped (``compute_dpg_bench.py``)."""
    return tuple_text.split("(", 1)[0].strip()


def l1_category(category: str) -> str:
    """The L1 category: the L2 category before its first ``-``, stripped (``entity - whole`` -> ``entity``)."""
    return category.split("-", 1)[0].strip()


def _parse_row(line: int, row: Mapping[str, str]) -> DPGQuestion:
    """One row as a :class:`DPGQuestion`, or a ``ValueError`` saying what to fix in it."""
    pid = (row["proposition_id"] or "").strip()
    if not pid.isdigit() or int(pid) < 1:
        raise ValueError(f"proposition_id is {pid!r}; it must be an integer from 1 within its item")
    parts = [p.strip() for p in (row["dependency"] or "").split(",")]
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"dependency is {row['dependency']!r}; write the parent proposition ids comma-separated, 0 for none")
    question = (row["question_natural_language"] or "").strip()
    if not question:
        raise ValueError("question_natural_language is empty; every row asks one question")
    parents = tuple(int(p) for p in parts if int(p) != 0)
    return DPGQuestion(int(pid), parents, question_category(row["tuple"] or ""), question, line)


def _check_item(path: Path, item_id: str, questions: Sequence[DPGQuestion]) -> None:
    """Every parent names a question of the item, and no question depends on itself through its parents."""
    by_id = {q.id: q for q in questions}
    for q in questions:
        missing = next((p for p in q.parents if p not in by_id), None)
        if missing is not None:
            raise ValueError(
                f"{path}:{q.line}: question {q.id} of item {item_id!r} depends on question {missing}, which the item does not have; "
                f"fix its dependency (ids {', '.join(map(str, sorted(by_id)))}, or 0 for none)"
            )
    for q in questions:
        cycle = _cycle_from(q.id, by_id)
        if cycle:
            chain = " -> ".join(map(str, cycle))
            raise ValueError(f"{path}:{q.line}: item {item_id!r} has a cyclic dependency ({chain}); a question cannot depend on itself")


def _cycle_from(start: int, by_id: Mapping[int, DPGQuestion]) -> list[int]:
    """A dependency path from ``start`` back to itself, or [] when there is none."""
    stack: list[tuple[int, list[int]]] = [(start, [start])]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        for parent in by_id[node].parents:
            if parent == start:
                return [*path, start]
            if parent not in seen:
                seen.add(parent)
                stack.append((parent, [*path, parent]))
    return []


def load_dpg_questions(path: str | Path) -> dict[str, list[DPGQuestion]]:
    """``{item_id: its questions in CSV order}`` from a DPG-Bench CSV, every row read (no upstream row-0 skip).

    Bad input is one ``ValueError`` line ``FILE:LINE: what is wrong; the fix``: missing columns, a bad
    ``proposition_id`` or ``dependency``, a repeated id, an item whose rows are not together, a dependency naming a
    question the item does not have, a cyclic dependency.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}:1: missing column(s) {', '.join(missing)}; a DPG-Bench CSV has the columns {','.join(CSV_COLUMNS)}")
        items: dict[str, list[DPGQuestion]] = {}
        previous, start = None, reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1  # a quoted field may span lines: the row starts after the last one
            item_id = (row["item_id"] or "").strip()
            if item_id != previous and item_id in items:
                first = items[item_id][0].line
                raise ValueError(
                    f"{path}:{line}: item {item_id!r} started at line {first} and comes back here; keep an item's rows together"
                )
            try:
                question = _parse_row(line, row)
            except ValueError as exc:
                raise ValueError(f"{path}:{line}: {exc}") from None
            if any(q.id == question.id for q in items.get(item_id, [])):
                raise ValueError(f"{path}:{line}: item {item_id!r} has proposition_id {question.id} twice; number its questions 1, 2, ...")
            items.setdefault(item_id, []).append(question)
            previous = item_id
    if not items:
        raise ValueError(f"{path}:1: no questions; a DPG-Bench CSV has one row per question")
    for item_id, questions in items.items():
        _check_item(path, item_id, questions)
    return items


# ----------------------------------------------------------------------------- the score


def dependency_filtered(raw: Sequence[int], questions: Sequence[Mapping[str, Any]]) -> list[int]:
    """Upstream's dependency rule: walking the questions in order, one with a parent whose filtered answer is 0 gets 0.

    The filtered answers are changed in place, so a zero cascades to later descendants, and a child listed before its
    parent sees the parent's raw answer (the parent is filtered only when its turn comes).
    """
    filtered = {q["id"]: int(a) for q, a in zip(questions, raw)}
    for q in questions:
        if any(filtered[p] == 0 for p in q["parents"]):
            filtered[q["id"]] = 0
    return [filtered[q["id"]] for q in questions]


def tile_score(raw: Sequence[int], questions: Sequence[Mapping[str, Any]]) -> float:
    """One tile's DPG score (0-1): the mean of its dependency-filtered answers."""
    filtered = dependency_filtered(raw, questions)
    return sum(filtered) / len(filtered)


def answer_is_yes(reply: str) -> bool | None:
    """True for a reply whose first word is ``yes`` (any case), False for ``no``, None for anything else (unclear)."""
    match = re.match(r"\W*([a-z]+)", reply.lower())
    word = match.group(1) if match else ""
    return True if word == "yes" else False if word == "no" else None


def check_dpg_metadata(meta: Any) -> list[Mapping[str, Any]]:
    """An image's questions from its metadata, or a ``ValueError`` saying what the metadata must hold."""
    return checked_question_graph(meta, f"no DPG-Bench questions; {QUESTIONS_FORMAT} (prompt set dpg-bench)", QUESTIONS_FORMAT)


# ----------------------------------------------------------------------------- the served reward


class DPGServedVQA(ServedReward):
    """DPG-Bench's question answering by a served VLM instead of the official mPLUG-large: raw = the tile score (0-1);
    details: every reply, the raw and the dependency-filtered answers. Not the official number (see the module docstring)."""

    name = "dpg_vqa@served-vlm"
    version = "1"
    description = "DPG-Bench yes/no questions asked of a served VLM (not the official mPLUG-large): dependency-filtered mean, 0-1"
    serves = "a vision-language model that answers yes/no questions (e.g. Qwen2.5-VL-7B-Instruct)"
    needs_metadata = True
    raw_range = (0.0, 1.0)

    def applies_to(self, prompt: str, metadata: dict[str, Any] | None) -> bool:
        return isinstance(metadata, Mapping) and isinstance(metadata.get("questions"), list) and bool(metadata["questions"])

    def _score(self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any] | None]):
        questions = self._checked_metadata(metadata, check_dpg_metadata)
        requests = [
            ChatRequest(image=np.asarray(image), text=f"{q['question']} {ANSWER_INSTRUCTION}")
            for image, asked in zip(images, questions)
            for q in asked
        ]
        results = self.endpoint.chat_many(requests, max_tokens=MAX_ANSWER_TOKENS, temperature=0.0)
        raws: list[float | None] = []
        details: list[dict[str, Any]] = []
        at = 0
        for asked in questions:
            mine, at = results[at : at + len(asked)], at + len(asked)
            d = self.served_details(mine)
            error = first_failed_question([q["question"] for q in asked], mine)
            if error is not None:
                raws.append(None)
                details.append({**d, "error": error})
                continue
            replies = [r.text or "" for r in mine]
            said = [answer_is_yes(text) for text in replies]
            raw_answers = [int(bool(s)) for s in said]
            filtered = dependency_filtered(raw_answers, asked)
            raws.append(sum(filtered) / len(filtered))
            unclear = [k + 1 for k, s in enumerate(said) if s is None]
            details.append({**d, "replies": replies, "raw_answers": raw_answers, "filtered_answers": filtered, "unclear": unclear})
        return raws, details
