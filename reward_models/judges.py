"""Served vision-language judges: UnifiedReward and the paper's QwenVL judge.

Both ask an OpenAI-compatible chat-completions server (vLLM, SGLang; see
:mod:`flowopd.reward_models.chat_client`) one question per image, with the
image as a PNG data URL, at temperature 0, and parse a 1-5 score out of the
reply. The training scale is ``raw / 5`` (SPEC section 7). A reply without a
parseable score, or with a score outside [1, 5], fails that image (raw NaN,
``details["error"]`` with an excerpt of the reply), never 0.

Configuration: ``FLOWOPD_UNIFIEDREWARD_URL`` / ``_MODEL`` / ``_API_KEY`` and
``FLOWOPD_QWENVL_JUDGE_URL`` / ``_MODEL`` / ``_API_KEY``, or the keyword
arguments ``base_url=``, ``model=``, ``api_key_env=``, ``timeout=``,
``max_retries=``, ``backoff=``, ``concurrency=``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from flowopd.reward_models.base import RewardModel
from flowopd.reward_models.chat_client import ChatEndpoint, ChatRequest, served_status

REPLY_CHARS = 2000  # the reply kept in details
EXCERPT_CHARS = 200  # the reply quoted in an error

# UnifiedReward's pointwise image-generation prompt as Flow-GRPO sends it to
# UnifiedReward-7b-v1.5 behind SGLang (yifan123/flow_grpo, flow_grpo/rewards.py,
# ``unifiedreward_score_sglang``). It is the prompt of the UnifiedReward repository
# (CodeGoat24/UnifiedReward, inference_llava/image_generation/point_score_image_generation.py)
# without that script's element-extraction sentence. The paper follows Flow-GRPO's
# reward configurations, so this is the one used, verbatim (``<image>`` line included).
UNIFIEDREWARD_PROMPT = (
    "<image>\n"
    "You are given a text caption and a generated image based on that caption. "
    "Your task is to evaluate this image based on two key criteria:\n"
    "1. Alignment with the Caption: Assess how well this image aligns with the provided caption. "
    "Consider the accuracy of depicted objects, their relationships, and attributes as described in the caption.\n"
    "2. Overall Image Quality: Examine the visual quality of this image, including clarity, detail preservation, "
    "color accuracy, and overall aesthetic appeal.\n"
    "Based on the above criteria, assign a score from 1 to 5 after 'Final Score:'.\n"
    "Your task is provided as follows:\n"
    "Text Caption: [{prompt}]"
)

# The rubric of the paper's Fig. 6, "The structured evaluation prompt for QwenVL Score"
# (Flow-OPD, appendix A: "we adapt the prompt used in Flow-GRPO"), as printed there.
QWENVL_JUDGE_PROMPT = """\
[ROLE]
You are a professional visual verification assistant. Evaluate the generated image based on the provided instruction across three specific dimensions.

[CRITERIA]

1. Aesthetic Quality

- **1-2 (Low):** Blurry, poor lighting, or chaotic composition.
- **3 (Fair):** In focus, adequate lighting, but lacks creativity.
- **4-5 (High):** Sharp, vibrant colors, masterful composition and impact.

2. Instruction Following

- **1-2 (Low):** Ignores or contradicts the instruction; misses key elements.
- **3 (Fair):** Partially follows, but distorts some important elements.
- **4-5 (High):** Faithful representation of all elements in the prompt.

3. Overall Score (Priority: Alignment > Aesthetics)
The overall score must primarily reflect **Instruction Following**. A fair image that perfectly follows the prompt scores higher than a beautiful image that misses it.

[EXECUTION RULES]

- **Strictness:** Be rigorous; required details must be explicitly supported.
- **Reasoning:** You **MUST** analyze keyword-by-keyword in the <Thought> tag.
- **Output:** Provide the analysis first, then the scores in XML tags.

[INPUT DATA]
Instruction: {prompt}

[OUTPUT FORMAT]
<Thought> [Detailed analysis of quality and adherence] </Thought>
<QualityScore>X</QualityScore>
<InstructionScore>Y</InstructionScore>
<OverallScore>Z</OverallScore>"""

_NUMBER = r"([-+]?\d+(?:\.\d+)?)"
# "Final Score: 4", also "**Final Score:** 4" / "Final Score: 4.5"; the last occurrence counts.
_FINAL_SCORE = re.compile(r"Final Score\s*:\s*\**\s*" + _NUMBER, re.IGNORECASE)


def _tag(name: str) -> re.Pattern[str]:
    return re.compile(rf"<{name}>\s*{_NUMBER}\s*(?:/\s*5\s*)?</{name}>", re.IGNORECASE)


_OVERALL, _QUALITY, _INSTRUCTION = _tag("OverallScore"), _tag("QualityScore"), _tag("InstructionScore")


def _last(pattern: re.Pattern[str], text: str) -> float | None:
    found = pattern.findall(text)
    return float(found[-1]) if found else None


def parse_final_score(text: str) -> tuple[float | None, dict[str, Any]]:
    """UnifiedReward: the number after the last ``Final Score:``, or ``None``."""
    return _last(_FINAL_SCORE, text), {}


def parse_overall_score(text: str) -> tuple[float | None, dict[str, Any]]:
    """QwenVL judge (Fig. 6 format): the last ``<OverallScore>Z</OverallScore>``, or ``None``; the two sub-scores as extras."""
    extra = {k: v for k, v in (("quality_score", _last(_QUALITY, text)), ("instruction_score", _last(_INSTRUCTION, text))) if v is not None}
    return _last(_OVERALL, text), extra


def _excerpt(text: str, n: int = EXCERPT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


class ServedReward(RewardModel):
    """A reward answered by a model behind an OpenAI-compatible server: its endpoint (``FLOWOPD_<REWARD>_URL``, ...),
    its availability, and its identity (the served model, so another judge's scores are cached apart)."""

    higher_is_better = True
    reads_url_env = True  # $FLOWOPD_<REWARD>_URL is the chat-completions server
    serves: ClassVar[str] = ""  # what the server should serve (for the not-configured message)

    def __init__(
        self,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        weights: Mapping[str, str | Path] | None = None,
        **endpoint: Any,
    ):
        """``endpoint``: ``base_url``, ``model``, ``api_key_env``, ``timeout``, ``max_retries``, ``backoff``, ``concurrency`` (see :class:`ChatEndpoint`)."""
        super().__init__(device=device, batch_size=batch_size, weights=weights)
        self.endpoint = ChatEndpoint.from_env(self.name, **endpoint)

    @classmethod
    def weights_status(cls) -> tuple[bool, str | None]:
        """Available when ``FLOWOPD_<REWARD>_URL`` is set (nothing is contacted)."""
        return served_status(cls.name, cls.serves)

    def load(self) -> None:
        """Check the configuration and learn the served model name (``GET /models`` when none is given)."""
        self.endpoint.require_url()
        self.endpoint.resolve_model()

    def identity(self) -> str:
        """``served:<model>``: another judge, other cached scores."""
        return f"served:{self.endpoint.resolve_model() if self.endpoint.base_url else '?'}"

    def served_details(self, results: Sequence[Any]) -> dict[str, Any]:
        """The details every served score carries: the backend, the model and the most attempts a request took."""
        return {"backend": "served", "model": self.endpoint.model, "attempts": max((r.attempts for r in results), default=0)}


def first_failed_question(questions: Sequence[str], results: Sequence[Any]) -> str | None:
    """The error of the first question whose request failed, naming it (``None`` when all were answered)."""
    failed = next((k for k, r in enumerate(results) if r.error is not None), None)
    return None if failed is None else f"question {failed + 1} ({questions[failed]!r}): {results[failed].error}"


def checked_question_graph(meta: Any, missing: str, fmt: str, root: int | None = None) -> list[Mapping[str, Any]]:
    """An image's dependency-graph questions (``{"id", "parents", "question"}``, DPG-Bench's and OneIG's) from its
    metadata, or a ``ValueError``: ``missing`` when there are none, ``fmt`` (the expected layout) for a malformed one or
    a parent the image does not have; ``root`` is a parent id that means "no parent" (OneIG's 0)."""
    questions = meta.get("questions") if isinstance(meta, Mapping) else None
    if not isinstance(questions, list) or not questions:
        raise ValueError(missing)
    known = {q.get("id") for q in questions if isinstance(q, Mapping)} | ({root} if root is not None else set())
    for k, q in enumerate(questions, 1):
        if not isinstance(q, Mapping) or not isinstance(q.get("question"), str) or not isinstance(q.get("parents"), list):
            raise ValueError(f"question {k} is {q!r}; {fmt}")
        if any(p not in known for p in q["parents"]):
            raise ValueError(f"question {k} depends on a question the image does not have ({q['parents']}); {fmt}")
    return questions


class _ChatJudge(ServedReward):
    """A reward that asks a served VLM one templated question per image and parses a 1-5 score."""

    prompt_template: ClassVar[str] = ""
    score_range: ClassVar[tuple[float, float]] = (1.0, 5.0)
    max_tokens: ClassVar[int] = 1024

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.float() / 5.0

    def identity(self) -> str:
        return f"served:{self.endpoint.model or '?'}"

    def question(self, prompt: str) -> str:
        return self.prompt_template.replace("{prompt}", prompt)

    def parse(self, text: str) -> tuple[float | None, dict[str, Any]]:
        raise NotImplementedError

    def _score(self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any] | None]):
        requests = [ChatRequest(image=np.asarray(img), text=self.question(p)) for img, p in zip(images, prompts)]
        results = self.endpoint.chat_many(requests, max_tokens=self.max_tokens, temperature=0.0)
        raws: list[float | None] = []
        details: list[dict[str, Any]] = []
        lo, hi = self.score_range
        for res in results:
            d: dict[str, Any] = {"model": self.endpoint.model, "attempts": res.attempts}
            if res.error is not None:
                raws.append(None)
                details.append({**d, "error": res.error})
                continue
            text = res.text or ""
            d["reply"] = text[:REPLY_CHARS]
            score, extra = self.parse(text)
            d.update(extra)
            if score is None:
                d["error"] = f"no score found in the reply: {_excerpt(text)!r}"
                raws.append(None)
            elif not (math.isfinite(score) and lo <= score <= hi):
                d["error"] = f"score {score:g} outside [{lo:g}, {hi:g}] in the reply: {_excerpt(text)!r}"
                d["score"] = score
                raws.append(None)
            else:
                d["score"] = score
                raws.append(score)
            details.append(d)
        return raws, details


class UnifiedReward(_ChatJudge):
    """UnifiedReward-7b-v1.5 pointwise score (1-5) behind a chat-completions server; trained at /5.

    Prompt: :data:`UNIFIEDREWARD_PROMPT` (Flow-GRPO's ``unifiedreward_score_sglang``).
    Parsing: the number after the last ``Final Score:`` (Flow-GRPO uses the first
    ``Final Score:\\s*([1-5](?:\\.\\d+)?)`` match and scores a miss 0; here a miss or an
    out-of-range number fails the image instead).
    """

    name = "unifiedreward"
    version = "1"
    description = "UnifiedReward-7b-v1.5 (served, OpenAI-compatible): pointwise 'Final Score' 1-5 (Flow-GRPO prompt), /5"
    serves = "CodeGoat24/UnifiedReward-7b-v1.5"
    prompt_template = UNIFIEDREWARD_PROMPT

    def parse(self, text: str) -> tuple[float | None, dict[str, Any]]:
        return parse_final_score(text)


class QwenVLJudge(_ChatJudge):
    """The paper's QwenVL Score (Flow-OPD Fig. 6 rubric, 1-5) from a Qwen VL model behind a chat-completions server; /5.

    Prompt: :data:`QWENVL_JUDGE_PROMPT`, the rubric of Fig. 6 with the instruction
    substituted. Parsing: the last ``<OverallScore>Z</OverallScore>`` (``Z`` in 1-5, the
    rubric's scale); ``<QualityScore>`` and ``<InstructionScore>`` go to details. The paper
    names Qwen3-30B-A3B-Instruct-2507 as the judge; the model is whatever
    ``FLOWOPD_QWENVL_JUDGE_MODEL`` (or the server's single model) is.
    """

    name = "qwenvl_judge"
    version = "1"
    description = "QwenVL judge (served, OpenAI-compatible): Flow-OPD Fig. 6 rubric, <OverallScore> 1-5, /5"
    serves = "a Qwen VL model (the paper: Qwen3-30B-A3B-Instruct-2507)"
    prompt_template = QWENVL_JUDGE_PROMPT
    max_tokens = 2048

    def parse(self, text: str) -> tuple[float | None, dict[str, Any]]:
        return parse_overall_score(text)
