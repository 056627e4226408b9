"""GenEval 2 (Kamath et al., 2025, arXiv:2512.16853): Soft-TIFA with Qwen3-VL-8B-Instruct, as the official code computes it.

Official code: facebookresearch/GenEval2 @ a6e82d2, ``evaluation.py``:

- ``soft_tifa``: each ``[question, answer]`` of the prompt's ``vqa_list`` is asked on its own as
  ``"{question} Answer in one word."``; a question that starts with ``"How many"`` is right when the answer word
  ``w`` (one..seven in the data) is said, in the spellings ``w, w.capitalize(), " "+w, " "+w.capitalize(), d, " "+d``
  (``d`` the digit, ``return_numeric_string``); every other question when "yes" is said, in the spellings
  ``"Yes", "yes", " yes", " Yes"`` (its answer in the data is always ``"Yes"``).
- ``send_message_with_image``: one user turn ``[image, text]``, no system message, the processor's chat template with
  ``add_generation_prompt=True``; ``generate(max_new_tokens=1, do_sample=False, output_scores=True)``; softmax over
  the whole vocabulary of the first step's scores (the last position's logits in fp32: greedy decoding applies none
  of the checkpoint's sampling settings); the question's score is ``sum(p[tokenizer.encode(s)[0]])`` over the
  spellings, one term per spelling: a spelling whose first token another spelling shares is counted again (no
  deduplication), as upstream's loop does.
- The first-token rule is kept as it is: Qwen's tokenizer splits a space before a digit from it, so ``" 3"`` encodes
  as ``[" ", "3"]`` and a count question adds P(" ") to its score. Upstream does; so do we.
- ``main``: per prompt the arithmetic mean (Soft-TIFA AM) or ``scipy.stats.gmean`` (Soft-TIFA GM: any zero gives 0)
  of its question scores; the benchmark score is 100 x their mean over prompts. ``soft_tifa_analysis.py``: per
  skill, 100 x the mean of every question of that skill pooled over prompts; per atom count, 100 x the mean GM of
  the prompts with that count (see ``soft_tifa_metrics`` in :mod:`flowopd.benchmarks.suites`).

The reward ``geneval2_soft_tifa`` scores an image with its prompt's Soft-TIFA AM (0-1); details carry every
question's score and the GM. Two backends, one reward name:

- ``backend="local"``: Qwen3-VL-8B-Instruct in process, loaded as upstream does (``AutoProcessor`` and
  ``Qwen3VLForConditionalGeneration`` from the weight set ``qwen3-vl-8b-instruct``), one forward per question
  (an image's questions of equal token length share a forward: nothing is padded) and the last position's softmax. The
  checkpoint's dtype on CUDA (upstream's ``dtype="auto"``), float32 on CPU. transformers' Qwen3-VL processor needs
  torchvision (it builds its video processor even for images). Same model, other runtime.
- ``backend="served"``: the same model behind an OpenAI-compatible server (vLLM, SGLang;
  :mod:`flowopd.reward_models.chat_client`), one request per question with ``max_tokens=1``, ``logprobs=true``,
  ``top_logprobs=20``; the score sums ``exp(logprob)`` of the returned candidates whose token text is a spelling's
  first token. Without the tokenizer, that first token is read off the spelling with Qwen's pre-tokenizer rule
  (:func:`served_first_token`): a space before a digit is a token of its own (``" 3"`` -> ``" "``), digits are one
  token each (``"10"`` -> ``"1"``), and a word with or without its leading space (``"Yes"``, ``" yes"``,
  ``" Three"``) is one token of Qwen's vocabulary, so the whole spelling. A first token outside the top 20
  counts 0: the served score can only be lower than the full-vocabulary one, by at most the 21st candidate's
  probability per absent spelling (``details["absent_first_tokens"]`` counts them per question). A reply without logprobs is refused (the server must return them).

The backend is the ``backend=`` argument, else ``served`` when ``base_url=`` or ``$FLOWOPD_GENEVAL2_SOFT_TIFA_URL``
is given, else ``local``.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowopd.errors import FlowOPDError
from flowopd.reward_models.base import RewardModel
from flowopd.reward_models.chat_client import ChatEndpoint, ChatRequest, ChatResult, env_prefix

SKILLS = ("object", "attribute", "count", "position", "verb")  # soft_tifa_analysis.py, per_skill_analysis
NUMBER_DIGITS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
YES_SPELLINGS = ("Yes", "yes", " yes", " Yes")
COUNT_PREFIX = "How many"
ANSWER_INSTRUCTION = "Answer in one word."
SERVED_MODEL = "Qwen/Qwen3-VL-8B-Instruct"
DEFAULT_TOP_LOGPROBS = 20  # the OpenAI maximum and vLLM's default --max-logprobs
QUESTIONS_PER_FORWARD = 16
RECORD_FORMAT = 'a GenEval2 line is {"prompt", "atom_count", "vqa_list": [[question, answer], ...], "skills": [...]}'


# ----------------------------------------------------------------------------- the data


def is_count_question(question: str) -> bool:
    """Upstream's test for a count question: it starts with ``"How many"``."""
    return question.startswith(COUNT_PREFIX)


def answer_spellings(question: str, answer: str) -> tuple[str, ...]:
    """The spellings whose first tokens' probabilities add up to the question's score (``soft_tifa`` in evaluation.py)."""
    if not is_count_question(question):
        return YES_SPELLINGS
    digit = NUMBER_DIGITS[answer]
    return (answer, answer.capitalize(), " " + answer, " " + answer.capitalize(), digit, " " + digit)


def check_geneval2_record(record: Mapping[str, Any]) -> None:
    """Refuse a GenEval2 line (or image metadata) Soft-TIFA cannot score, with a ``ValueError`` saying what to fix."""
    if not isinstance(record, Mapping):
        raise ValueError(f"the record is {type(record).__name__}, not a dict; {RECORD_FORMAT}")
    pairs, skills = record.get("vqa_list"), record.get("skills")
    if not isinstance(pairs, list) or not pairs:
        raise ValueError(f'no "vqa_list" (a non-empty list of [question, answer] pairs); {RECORD_FORMAT}')
    if not isinstance(skills, list) or len(skills) != len(pairs):
        got = f"{len(skills)} skills" if isinstance(skills, list) else "no skills list"
        raise ValueError(f'"vqa_list" has {len(pairs)} questions but there are {got}; give one skill per question')
    for k, (pair, skill) in enumerate(zip(pairs, skills), 1):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ValueError(f"vqa_list item {k} is {pair!r}, not a [question, answer] pair of strings")
        question, answer = pair
        if skill not in SKILLS:
            raise ValueError(f"skill {k} is {skill!r}; use one of {', '.join(SKILLS)}")
        if is_count_question(question) and answer not in NUMBER_DIGITS:
            raise ValueError(f"question {k} ({question!r}) counts, so its answer must be one of {', '.join(NUMBER_DIGITS)}, not {answer!r}")
        if not is_count_question(question) and answer != "Yes":
            raise ValueError(f"question {k} ({question!r}) is not a 'How many' question, so its answer must be 'Yes', not {answer!r}")
    atoms = record.get("atom_count")
    if atoms is not None and (not isinstance(atoms, int) or isinstance(atoms, bool) or atoms < 1):
        raise ValueError(f'"atom_count" is {atoms!r}; it must be a positive integer (3-10 in GenEval2)')


def question_text(question: str) -> str:
    """What the VQA model is asked: ``'{} Answer in one word.'.format(question)``."""
    return f"{question} {ANSWER_INSTRUCTION}"


# ----------------------------------------------------------------------------- the score


def first_token_ids(tokenizer: Any, spellings: Sequence[str]) -> list[int]:
    """``tokenizer.encode(s)[0]`` per spelling (Qwen's tokenizer adds no BOS, so no special tokens are asked for)."""
    return [tokenizer.encode(s, add_special_tokens=False)[0] for s in spellings]


def soft_tifa_question_score(probabilities: Sequence[float] | torch.Tensor, token_ids: Sequence[int]) -> float:
    """The sum of the probabilities at the spellings' first tokens, one term per spelling (duplicates counted again),
    added in order in double precision as upstream's ``lm_prob += probs[0, ans_token_id].item()``."""
    if isinstance(probabilities, torch.Tensor):
        values = probabilities[list(token_ids)].tolist()
    else:
        values = [probabilities[i] for i in token_ids]
    total = 0.0
    for value in values:
        total += float(value)
    return total


def arithmetic_mean(scores: Sequence[float]) -> float:
    """Soft-TIFA AM of one prompt."""
    return sum(scores) / len(scores)


def geometric_mean(scores: Sequence[float]) -> float:
    """Soft-TIFA GM of one prompt: ``scipy.stats.gmean`` (``exp(mean(log))``), no epsilon, so any zero gives 0."""
    if any(s <= 0.0 for s in scores):
        return 0.0
    return math.exp(sum(math.log(s) for s in scores) / len(scores))


def served_first_token(spelling: str) -> str:
    """A spelling's first token as a server prints it, by Qwen's pre-tokenizer rule (see the module docstring)."""
    if spelling[:1] == " " and spelling[1:2].isdigit():
        return " "
    if spelling[:1].isdigit():
        return spelling[0]
    return spelling


def served_question_score(top_logprobs: Sequence[Mapping[str, Any]], spellings: Sequence[str]) -> tuple[float, int]:
    """The question's score from one position's ``top_logprobs``, and how many spellings' first tokens were not among them."""
    probability: dict[str, float] = {}
    for entry in top_logprobs:
        token, logprob = entry.get("token"), entry.get("logprob")
        if isinstance(token, str) and isinstance(logprob, (int, float)) and token not in probability:
            probability[token] = math.exp(logprob)
    firsts = [served_first_token(s) for s in spellings]
    return sum(probability.get(t, 0.0) for t in firsts), sum(t not in probability for t in firsts)


# ----------------------------------------------------------------------------- in process


def vqa_messages(image: Any, question: str) -> list[dict[str, Any]]:
    """``construct_message_with_image``: one user turn, the image then the question (no system message)."""
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question_text(question)}]}]


def encode_question(processor: Any, image: Any, question: str) -> dict[str, torch.Tensor]:
    """The model inputs of one question about one PIL image, through the processor's chat template."""
    inputs = processor.apply_chat_template(
        vqa_messages(image, question), tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    return dict(inputs)


@torch.no_grad()
def question_scores(
    model: Any, encoded: Sequence[Mapping[str, torch.Tensor]], token_ids: Sequence[Sequence[int]], per_forward: int = QUESTIONS_PER_FORWARD
) -> list[float]:
    """Each question's Soft-TIFA score: the fp32 softmax over the vocabulary at the last position, summed at its spellings'
    first token ids (:func:`soft_tifa_question_score`).

    Questions of equal token length run together, ``per_forward`` at most: nothing is padded, so each row is what a
    forward of that question alone computes.
    """
    device = next(model.parameters()).device
    out = [0.0] * len(encoded)
    lengths = [int(e["input_ids"].shape[1]) for e in encoded]
    for length in sorted(set(lengths)):
        members = [i for i, n in enumerate(lengths) if n == length]
        for start in range(0, len(members), per_forward):
            chunk = members[start : start + per_forward]
            batch = {key: torch.cat([encoded[i][key] for i in chunk]).to(device) for key in encoded[chunk[0]]}
            logits = model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1, :]
            probabilities = logits.float().softmax(dim=-1)
            for row, i in enumerate(chunk):
                out[i] = soft_tifa_question_score(probabilities[row], token_ids[i])
    return out


def load_qwen3_vl(folder: Path, device: torch.device, dtype: torch.dtype | str) -> tuple[Any, Any]:
    """``(model, processor)`` as upstream loads them: ``Qwen3VLForConditionalGeneration`` and ``AutoProcessor``."""
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(str(folder))
    model = Qwen3VLForConditionalGeneration.from_pretrained(str(folder), dtype=dtype)
    return model.to(device).eval().requires_grad_(False), processor


# ----------------------------------------------------------------------------- the reward


class GenEval2SoftTIFA(RewardModel):
    """GenEval 2's Soft-TIFA with Qwen3-VL-8B-Instruct: raw = the prompt's Soft-TIFA AM (0-1); details: every question's
    score and the GM. In process (transformers) or served (an OpenAI-compatible server); see the module docstring."""

    name = "geneval2_soft_tifa"
    reads_url_env = True  # $FLOWOPD_GENEVAL2_SOFT_TIFA_URL is its served backend
    version = "1"
    description = "GenEval 2 Soft-TIFA (Qwen3-VL-8B-Instruct): mean P(answer) over the prompt's VQA atoms, 0-1; local or served"
    higher_is_better = True
    needs_metadata = True
    weight_sets = ("qwen3-vl-8b-instruct",)
    raw_range = (0.0, 1.0)

    def __init__(
        self,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        weights: Mapping[str, str | Path] | None = None,
        *,
        backend: str | None = None,
        dtype: torch.dtype | str | None = None,
        questions_per_forward: int = QUESTIONS_PER_FORWARD,
        top_logprobs: int = DEFAULT_TOP_LOGPROBS,
        **endpoint: Any,
    ):
        """``endpoint``: ``base_url``, ``model``, ``api_key_env``, ``timeout``, ``max_retries``, ``backoff``, ``concurrency`` (see :class:`ChatEndpoint`)."""
        super().__init__(device=device, batch_size=batch_size, weights=weights)
        self.endpoint = ChatEndpoint.from_env(self.name, **endpoint)
        backend = backend or ("served" if self.endpoint.base_url else "local")
        if backend not in ("local", "served"):
            raise ValueError(f"{self.name}: backend must be 'local' or 'served', got {backend!r}")
        self.backend = backend
        if isinstance(dtype, str) and dtype != "auto":
            dtype = getattr(torch, dtype)
        self.dtype = dtype if dtype is not None else ("auto" if self.device.type == "cuda" else torch.float32)
        self.questions_per_forward = int(questions_per_forward)
        self.top_logprobs = int(top_logprobs)
        self._model: Any = None
        self._processor: Any = None

    @classmethod
    def weights_status(cls) -> tuple[bool, str | None]:
        """Available when ``$FLOWOPD_GENEVAL2_SOFT_TIFA_URL`` is set, or with the local weights and torchvision."""
        url_env = env_prefix(cls.name) + "_URL"
        if os.environ.get(url_env):
            return True, None
        served = f"or set ${url_env} to an OpenAI-compatible server (vLLM/SGLang) serving {SERVED_MODEL}"
        available, reason = super().weights_status()
        if not available:
            return False, f"{reason}, {served}"
        if importlib.util.find_spec("torchvision") is None:
            return False, f"needs the Python module 'torchvision' (transformers' Qwen3-VL processor): pip install torchvision, {served}"
        return True, None

    def identity(self) -> str:
        """``served:<model>`` (the server's model, asked of it when not configured) or ``local:<dtype>``."""
        if self.backend == "served":
            return f"served:{self.endpoint.resolve_model() if self.endpoint.base_url else '?'}"
        return f"local:{str(self.dtype).removeprefix('torch.')}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}@{self.version} backend={self.backend}>"

    def applies_to(self, prompt: str, metadata: dict[str, Any] | None) -> bool:
        return isinstance(metadata, Mapping) and isinstance(metadata.get("vqa_list"), list) and bool(metadata["vqa_list"])

    def load(self) -> None:
        if self.backend == "served":
            self.endpoint.require_url()
            self.endpoint.resolve_model()
            return
        folder = self.weight_path("qwen3-vl-8b-instruct")
        try:
            self._model, self._processor = load_qwen3_vl(folder, self.device, self.dtype)
        except ImportError as exc:
            if "torchvision" not in str(exc).lower():
                raise
            raise FlowOPDError(
                f"{self.name}: transformers' Qwen3-VL processor needs torchvision (it builds its video processor even for "
                f"images); pip install torchvision (the build matching your torch), or serve {SERVED_MODEL} and set "
                f"${env_prefix(self.name)}_URL"
            ) from None

    # ------------------------------------------------------------------ scoring

    def _questions(self, metadata: list[dict[str, Any] | None]) -> list[list[tuple[str, str]]]:
        """Each image's ``[question, answer]`` pairs, after checking its metadata (a ``ValueError`` naming the image)."""

        def pairs(meta: dict[str, Any] | None) -> list[tuple[str, str]]:
            if not isinstance(meta, Mapping):
                raise ValueError(f"no GenEval2 metadata; {RECORD_FORMAT} (prompt set geneval2)")
            check_geneval2_record(meta)
            return [(q, a) for q, a in meta["vqa_list"]]

        return self._checked_metadata(metadata, pairs)

    def _score(self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any] | None]):
        questions = self._questions(metadata)
        if self.backend == "served":
            return self._score_served(images, questions)
        return self._score_local(images, questions)

    def _score_local(self, images: np.ndarray, questions: list[list[tuple[str, str]]]):
        """One image at a time (its questions' pixel values are held only while it is scored), each question as upstream."""
        from PIL import Image

        tokenizer = self._processor.tokenizer
        raws: list[float | None] = []
        details: list[dict[str, Any]] = []
        for image, pairs in zip(images, questions):
            pil = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
            encoded = [encode_question(self._processor, pil, question) for question, _ in pairs]
            token_ids = [first_token_ids(tokenizer, answer_spellings(question, answer)) for question, answer in pairs]
            scores = question_scores(self._model, encoded, token_ids, self.questions_per_forward)
            d: dict[str, Any] = {"backend": "local", "question_scores": scores}
            if not all(math.isfinite(s) for s in scores):
                raws.append(None)
                details.append({**d, "error": "the model gave non-finite probabilities (check the weights and the dtype)"})
                continue
            raws.append(arithmetic_mean(scores))
            details.append({**d, "gm": geometric_mean(scores)})
        return raws, details

    def _score_served(self, images: np.ndarray, questions: list[list[tuple[str, str]]]):
        requests = [
            ChatRequest(image=np.asarray(image), text=question_text(q)) for image, pairs in zip(images, questions) for q, _ in pairs
        ]
        results = self.endpoint.chat_many(requests, max_tokens=1, temperature=0.0, top_logprobs=self.top_logprobs)
        self._refuse_without_logprobs(results)
        raws: list[float | None] = []
        details: list[dict[str, Any]] = []
        at = 0
        for pairs in questions:
            mine = results[at : at + len(pairs)]
            at += len(pairs)
            d: dict[str, Any] = {"backend": "served", "model": self.endpoint.model, "attempts": max(r.attempts for r in mine)}
            failed = next(((k, r) for k, r in enumerate(mine) if r.error is not None), None)
            if failed is not None:
                k, res = failed
                raws.append(None)
                details.append({**d, "error": f"question {k + 1} ({pairs[k][0]!r}): {res.error}"})
                continue
            scored = [served_question_score(_top_logprobs(r), answer_spellings(q, a)) for r, (q, a) in zip(mine, pairs)]
            values = [s for s, _ in scored]
            raws.append(arithmetic_mean(values))
            details.append({**d, "question_scores": values, "gm": geometric_mean(values), "absent_first_tokens": [n for _, n in scored]})
        return raws, details

    def _refuse_without_logprobs(self, results: Sequence[ChatResult]) -> None:
        """A reply without the first token's ``top_logprobs`` (or a 400 about logprobs) stops scoring: a server setting."""
        refused = next((r for r in results if r.error is None and not _top_logprobs(r)), None)
        rejected = next((r for r in results if r.error and "HTTP 400" in r.error and "logprob" in r.error.lower()), None)
        if refused is None and rejected is None:
            return
        why = "answered without logprobs" if refused is not None else f"refused logprobs ({' '.join(rejected.error.split())[:160]})"
        raise FlowOPDError(
            f"{self.name}: the server at {self.endpoint.base_url} {why}; Soft-TIFA needs the first token's top_logprobs: "
            f"serve with logprobs allowed up to {self.top_logprobs} (vLLM: --max-logprobs {self.top_logprobs} or more)"
        )


def _top_logprobs(result: ChatResult) -> list[dict[str, Any]]:
    """``top_logprobs`` of the reply's first token (empty when the reply has none)."""
    first = result.logprobs[0] if result.logprobs else None
    top = first.get("top_logprobs") if isinstance(first, dict) else None
    return top if isinstance(top, list) else []
