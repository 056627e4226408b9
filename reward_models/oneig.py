"""OneIG-Bench (Chang et al., 2025, arXiv:2506.07977), EN: the alignment and text-rendering judges, as the official
code computes them, over Qwen2.5-VL-7B-Instruct behind an OpenAI-compatible server.

Official code: OneIG-Bench/OneIG-Benchmark @ 41b4983:

- Tiles (``scripts/utils/utils.py`` ``split_mxn_grid``): a prompt's 4 images are one 2x2 grid; each tile is scored on
  its own after being re-saved as JPEG (PIL's default quality 75); a tile whose every pixel is (0, 0, 0) is dropped.
  Here each flowopd image is one tile: it goes through the same JPEG round trip (:func:`upstream_tile`) and an
  all-black image is dropped (failed, ``details["error"]`` says why: left out, never 0).
- Alignment (``scripts/alignment/alignment_score.py`` L30-60, ``scripts/utils/inference.py`` L41-76): every question
  is asked as ``"<question>. Please answer 'Yes' or 'No' only."`` (:func:`alignment_text`); an answer scores 1 only
  when the whole decoded reply is exactly ``Yes`` (:func:`is_exact_yes`). Dependency filter: a question with a parent
  (not 0) whose **raw** answer is 0 scores 0; parents are read raw, so nothing cascades and order does not matter
  (:func:`dependency_filtered`). A tile's score is the mean over its questions; a prompt's the mean over its tiles.
- Text (``scripts/text/text_score.py``, ``scripts/text/text_utils.py`` L5-23, inference.py L35-39): the OCR prompt
  :data:`OCR_PROMPT`; ``max_new_tokens`` 256 when the ground truth has more than 60 whitespace words, else 128. The
  reply is cleaned (``addCriterion`` and ``No text recognized.`` deleted, :func:`clean_ocr`), both strings are
  preprocessed (:func:`preprocess_text`: only CJK, ASCII letters, digits, whitespace and French accented letters kept;
  case kept), then per tile ED (character Levenshtein, unit costs), CR (ED == 0) and the word multiset match
  (:func:`text_tile_stats`). The suite pools tiles: ED, CR = means over tiles, WAC = sum of matches / sum of GT words,
  text score = ``1 - min(100, ED) (1 - CR) (1 - WAC) / 100`` (:func:`text_score`).

Backend: only served (``$FLOWOPD_ONEIG_ALIGNMENT_URL``, ``$FLOWOPD_ONEIG_TEXT_URL``; e.g. ``vllm serve
Qwen/Qwen2.5-VL-7B-Instruct``): one chat-completions request per (tile, question) or per tile, the JPEG-round-tripped
tile as a PNG data URL, ``temperature=0``, ``repetition_penalty=1.05`` (the checkpoint's generation config, which
upstream's ``generate`` applies) and upstream's ``max_new_tokens``. Same model, other runtime: upstream decodes with
transformers 4.50 ``generate`` in bf16 with flash-attention and batches the 4 tiles; a server's kernels and batching
can flip a borderline token. In process is not offered: transformers' Qwen2.5-VL processor needs torchvision, which
is not installed here (see :mod:`flowopd.reward_models.geneval2` for the same limit).
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from flowopd.reward_models.chat_client import ChatRequest
from flowopd.reward_models.judges import ServedReward, checked_question_graph, first_failed_question

SERVED_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
ALIGNMENT_SUFFIX = "Please answer 'Yes' or 'No' only."
OCR_PROMPT = (
    "Recognize the text in the image, only reply with the text content, but avoid repeating previously mentioned "
    "content. If no text is recognized, please reply with 'No text recognized'."
)
OCR_HALLUCINATIONS = ("addCriterion", "No text recognized.")  # text_utils.clean_and_remove_hallucinations
ALIGNMENT_MAX_TOKENS = 128
REPETITION_PENALTY = 1.05  # Qwen2.5-VL-7B-Instruct's generation_config.json
MAX_EDIT_DISTANCE = 100  # EN (ZH: 50)
LONG_TEXT_WORDS = 60  # more GT words than this: max_new_tokens 256, else 128
JPEG_QUALITY = 75  # PIL's default, what split_mxn_grid saves with
CJK = "\u4e00-\u9fa5"
KEPT_CHARACTERS = re.compile(rf"[^{CJK}a-zA-Z0-9\sàâäéèêëîïôöùûüçÀÂÄÉÈÊËÎÏÔÖÙÛÜÇ]")
QUESTIONS_FORMAT = 'OneIG alignment metadata is {"questions": [{"id", "question", "parents"}, ...]} (prompt set oneig)'
TEXT_FORMAT = 'OneIG text metadata is {"text_content": "<ground truth>"} (prompt set oneig)'


# ----------------------------------------------------------------------------- tiles


def upstream_tile(image: np.ndarray) -> np.ndarray:
    """The pixels upstream's judge reads: the tile saved as JPEG at PIL's default quality 75 and decoded back."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def is_black_tile(image: np.ndarray) -> bool:
    """Whether every pixel is exactly (0, 0, 0): upstream drops such a tile (it fills missing grid slots with black)."""
    return not np.any(np.asarray(image)[..., :3])


BLACK_TILE_ERROR = "an all-black tile: upstream's split_mxn_grid drops it (left out, not scored 0)"


# ----------------------------------------------------------------------------- alignment


def alignment_text(question: str) -> str:
    """The user text upstream sends: the question, ``". "``, then the yes/no instruction (questions end in ``?``)."""
    return f"{question}. {ALIGNMENT_SUFFIX}"


def is_exact_yes(reply: str) -> bool:
    """Upstream's rule: 1 only when the whole reply is ``Yes`` (case-sensitive, no period, no spaces)."""
    return reply == "Yes"


def dependency_filtered(raw: Sequence[int], questions: Sequence[Mapping[str, Any]]) -> list[int]:
    """A question with a parent (not 0) whose **raw** answer is 0 gets 0; parents are read raw: no cascade."""
    raw_by_id = {q["id"]: int(a) for q, a in zip(questions, raw)}
    return [0 if any(raw_by_id[p] == 0 for p in q["parents"] if p != 0) else raw_by_id[q["id"]] for q in questions]


def check_questions(meta: Any) -> list[Mapping[str, Any]]:
    """An image's alignment questions from its metadata, or a ``ValueError`` saying what the metadata must hold."""
    return checked_question_graph(meta, f"no OneIG alignment questions; {QUESTIONS_FORMAT}", QUESTIONS_FORMAT, root=0)


# ----------------------------------------------------------------------------- text


def clean_ocr(reply: str) -> str:
    """Upstream's cleaning: the substrings ``addCriterion`` and ``No text recognized.`` deleted."""
    for junk in OCR_HALLUCINATIONS:
        reply = reply.replace(junk, "")
    return reply


def preprocess_text(text: str) -> str:
    """Upstream's ``preprocess_string``: keep CJK, ASCII letters, digits, whitespace, French accents (case kept); with
    CJK left, drop all whitespace, else collapse whitespace runs to one space and strip."""
    kept = KEPT_CHARACTERS.sub("", text)
    if re.search(f"[{CJK}]", kept):
        return re.sub(r"\s+", "", kept)
    return re.sub(r"\s+", " ", kept).strip()


def text_tile_stats(ocr: str, ground_truth: str) -> dict[str, int]:
    """One tile: ``ed`` (Levenshtein of the preprocessed strings), ``cr`` (ed == 0), ``matched_words`` (the multiset
    intersection of GT and OCR words; characters for CJK ground truth) and ``gt_words``."""
    from rapidfuzz.distance import Levenshtein

    seen, truth = preprocess_text(clean_ocr(ocr)), preprocess_text(ground_truth)
    ed = int(Levenshtein.distance(seen, truth))
    if re.search(f"[{CJK}]", truth):
        truth_units, seen_units = list(truth), list(seen)
    else:
        truth_units, seen_units = truth.split(), seen.split()
    matched = sum((Counter(truth_units) & Counter(seen_units)).values())
    return {"ed": ed, "cr": int(ed == 0), "matched_words": matched, "gt_words": len(truth_units)}


def text_score(ed: float, cr: float, wac: float, max_ed: float = MAX_EDIT_DISTANCE) -> float:
    """``1 - min(max_ed, ED) (1 - CR) (1 - WAC) / max_ed`` (``text_score.py``; max_ed 100 for EN)."""
    return 1 - min(max_ed, ed) * (1 - cr) * (1 - wac) / max_ed


def ocr_max_tokens(ground_truth: str) -> int:
    """256 when the raw ground truth has more than 60 whitespace-separated words, else 128 (``text_score.py``)."""
    return 256 if len(ground_truth.split()) > LONG_TEXT_WORDS else 128


def check_text_content(meta: Any) -> str:
    """An image's ground-truth text from its metadata, or a ``ValueError`` saying what the metadata must hold."""
    text = meta.get("text_content") if isinstance(meta, Mapping) else None
    if not isinstance(text, str):
        raise ValueError(f"no OneIG text ground truth; {TEXT_FORMAT}")
    return text


# ----------------------------------------------------------------------------- the served rewards


class _OneIGServedJudge(ServedReward):
    """The served Qwen2.5-VL judge both OneIG rewards share."""

    serves = f"{SERVED_MODEL} (OneIG-Bench's judge)"
    needs_metadata = True
    raw_range = (0.0, 1.0)

    def _ask(self, requests: list[ChatRequest], max_tokens: int | list[int]):
        """Every request's result, in order (``max_tokens`` per request where a list)."""
        extra = {"repetition_penalty": REPETITION_PENALTY}
        if isinstance(max_tokens, int):
            return self.endpoint.chat_many(requests, max_tokens=max_tokens, temperature=0.0, extra_body=extra)
        out = []
        for tokens in sorted(set(max_tokens)):
            group = [k for k, t in enumerate(max_tokens) if t == tokens]
            results = self.endpoint.chat_many([requests[k] for k in group], max_tokens=tokens, temperature=0.0, extra_body=extra)
            out += list(zip(group, results))
        return [r for _, r in sorted(out, key=lambda pair: pair[0])]


class OneIGAlignment(_OneIGServedJudge):
    """OneIG-Bench alignment on one tile: raw = the mean of its dependency-filtered exact-``Yes`` answers (0-1);
    details: every reply, the raw and filtered answers."""

    name = "oneig_alignment"
    version = "1"
    description = "OneIG-Bench alignment: exact-'Yes' answers of Qwen2.5-VL (served), raw-parent dependency filter, mean per tile"

    def applies_to(self, prompt: str, metadata: dict[str, Any] | None) -> bool:
        return isinstance(metadata, Mapping) and isinstance(metadata.get("questions"), list) and bool(metadata["questions"])

    def _score(self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any] | None]):
        asked_per_image = self._checked_metadata(metadata, check_questions)
        black = [is_black_tile(image) for image in images]
        requests = [
            ChatRequest(image=upstream_tile(image), text=alignment_text(q["question"]))
            for image, asked, dark in zip(images, asked_per_image, black)
            if not dark
            for q in asked
        ]
        results = iter(self._ask(requests, ALIGNMENT_MAX_TOKENS))
        raws: list[float | None] = []
        details: list[dict[str, Any]] = []
        for asked, dark in zip(asked_per_image, black):
            if dark:
                raws.append(None)
                details.append({"backend": "served", "error": BLACK_TILE_ERROR})
                continue
            mine = [next(results) for _ in asked]
            d = self.served_details(mine)
            error = first_failed_question([q["question"] for q in asked], mine)
            if error is not None:
                raws.append(None)
                details.append({**d, "error": error})
                continue
            replies = [r.text or "" for r in mine]
            raw_answers = [int(is_exact_yes(text)) for text in replies]
            filtered = dependency_filtered(raw_answers, asked)
            raws.append(sum(filtered) / len(filtered))
            details.append({**d, "replies": replies, "raw_answers": raw_answers, "filtered_answers": filtered})
        return raws, details


class OneIGText(_OneIGServedJudge):
    """OneIG-Bench text rendering on one tile: details carry the OCR reply and the tile's ED, CR, matched and GT words
    (the suite pools them); raw = the text-score formula on this tile alone (its own ED, CR and WAC)."""

    name = "oneig_text"
    version = "1"
    description = "OneIG-Bench text rendering: Qwen2.5-VL OCR (served), ED/CR/word matches per tile; the suite pools the text score"

    def applies_to(self, prompt: str, metadata: dict[str, Any] | None) -> bool:
        return isinstance(metadata, Mapping) and isinstance(metadata.get("text_content"), str)

    def _score(self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any] | None]):
        truths = self._checked_metadata(metadata, check_text_content)
        black = [is_black_tile(image) for image in images]
        live = [k for k, dark in enumerate(black) if not dark]
        requests = [ChatRequest(image=upstream_tile(images[k]), text=OCR_PROMPT) for k in live]
        results = dict(zip(live, self._ask(requests, [ocr_max_tokens(truths[k]) for k in live])))
        raws: list[float | None] = []
        details: list[dict[str, Any]] = []
        for k, truth in enumerate(truths):
            if black[k]:
                raws.append(None)
                details.append({"backend": "served", "error": BLACK_TILE_ERROR})
                continue
            result = results[k]
            d = self.served_details([result])
            if result.error is not None:
                raws.append(None)
                details.append({**d, "error": f"OCR request: {result.error}"})
                continue
            stats = text_tile_stats(result.text or "", truth)
            wac = stats["matched_words"] / stats["gt_words"] if stats["gt_words"] else 0.0
            raws.append(text_score(stats["ed"], stats["cr"], wac))
            details.append({**d, "ocr": result.text or "", **stats})
        return raws, details
