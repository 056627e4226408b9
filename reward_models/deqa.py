"""DeQA-Score (You et al., 2025, arXiv:2501.11561): prompt-free image quality in [1, 5], trained at /5.

DeQA-Score-Mix3 is an mPLUG-Owl2 model fine-tuned to answer "How would you
rate the quality of this image?" with a distribution over five level words.
The official scorer (zhiyuanyou/DeQA-Score, ``src/evaluate/scorer.py``; the
``model.score`` method of the hub remote code is the same computation) reads
the next-token logits after the prefix

    USER: How would you rate the quality of this image?\\n<|image|>\\nASSISTANT: The quality of the image is

at the tokens of ``excellent, good, fair, poor, bad`` and returns
``softmax(logits) @ [5, 4, 3, 2, 1]``.

Two backends:

- ``backend="local"``: the model in process, loaded as the official README does,
  ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True,
  attn_implementation="eager", torch_dtype=...)`` from the weight set
  ``deqa-score-mix3``, scored with its ``score(list_of_PIL_images)``. The remote
  code runs from the weights folder and targets ``transformers==4.36.1``.
- ``backend="served"``: an OpenAI-compatible server asked for one token after the
  answer prefix (``continue_final_message``) with ``logprobs``/``top_logprobs``.
  A token's logprob is its logit minus the log-partition, a constant per position,
  so the softmax over the five level tokens' logprobs equals the softmax over their
  logits: the same score. A level word missing from ``top_logprobs`` counts as
  probability 0 (logprob -inf); when none is present the image fails.

The backend is the ``backend=`` argument, else ``served`` when ``base_url=`` or
``$FLOWOPD_DEQA_URL`` is given, else ``local``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowopd.errors import FlowOPDError
from flowopd.reward_models.base import RewardModel
from flowopd.reward_models.chat_client import ChatEndpoint, ChatRequest, env_prefix

LEVELS: tuple[str, ...] = ("excellent", "good", "fair", "poor", "bad")
LEVEL_WEIGHTS: tuple[float, ...] = (5.0, 4.0, 3.0, 2.0, 1.0)
QUESTION = "How would you rate the quality of this image?"
ANSWER_PREFIX = "The quality of the image is"
DEFAULT_TOP_LOGPROBS = 20  # the OpenAI maximum and vLLM's default --max-logprobs


def level_logprobs(top_logprobs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The logprob of each level word among one position's ``top_logprobs`` (absent words are left out).

    A token matches a level when, stripped of surrounding whitespace, it is the
    lower-case word itself (the official scorer's token is ``▁excellent``, which
    servers print as ``" excellent"``); where several tokens match one level the
    most likely counts.
    """
    out: dict[str, float] = {}
    for entry in top_logprobs:
        token, lp = entry.get("token"), entry.get("logprob")
        if not isinstance(token, str) or not isinstance(lp, (int, float)) or math.isnan(lp):
            continue
        word = token.strip()
        if word in LEVELS and (word not in out or lp > out[word]):
            out[word] = float(lp)
    return out


def deqa_from_logprobs(logprobs: Mapping[str, float]) -> tuple[float | None, dict[str, float]]:
    """``sum_i softmax(lp)_i * w_i`` over the five levels (weights 5..1; absent levels are -inf), and the probabilities.

    ``None`` when no level is present or none has a finite logprob.
    """
    lps = [logprobs.get(level, -math.inf) for level in LEVELS]
    top = max(lps)
    if not math.isfinite(top):
        return None, {}
    exps = [math.exp(lp - top) for lp in lps]
    total = sum(exps)
    probs = {level: e / total for level, e in zip(LEVELS, exps)}
    return sum(probs[level] * w for level, w in zip(LEVELS, LEVEL_WEIGHTS)), probs


class DeQA(RewardModel):
    """DeQA-Score-Mix3 image quality, raw 1-5, trained at /5 (SPEC section 7; paper Table 2 reports DeQA / 5)."""

    name = "deqa"
    reads_url_env = True  # $FLOWOPD_DEQA_URL is its served backend
    version = "1"
    description = "DeQA-Score-Mix3 (mPLUG-Owl2): softmax over excellent..bad weighted 5..1, raw 1-5, /5; local or served"
    higher_is_better = True
    weight_sets = ("deqa-score-mix3",)

    def __init__(
        self,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        weights: Mapping[str, str | Path] | None = None,
        *,
        backend: str | None = None,
        dtype: torch.dtype | str | None = None,
        top_logprobs: int = DEFAULT_TOP_LOGPROBS,
        **endpoint: Any,
    ):
        """``endpoint``: ``base_url``, ``model``, ``api_key_env``, ``timeout``, ``max_retries``, ``backoff``, ``concurrency`` (see :class:`ChatEndpoint`)."""
        super().__init__(device=device, batch_size=batch_size, weights=weights)
        self.endpoint = ChatEndpoint.from_env(self.name, **endpoint)
        if backend is None:
            backend = "served" if self.endpoint.base_url else "local"
        if backend not in ("local", "served"):
            raise ValueError(f"deqa: backend must be 'local' or 'served', got {backend!r}")
        self.backend = backend
        self.dtype = dtype
        self.top_logprobs = int(top_logprobs)
        self._model: Any = None

    @classmethod
    def weights_status(cls) -> tuple[bool, str | None]:
        """Available when ``$FLOWOPD_DEQA_URL`` is set or the local weights are present."""
        url_env = env_prefix(cls.name) + "_URL"
        if os.environ.get(url_env):
            return True, None
        available, reason = super().weights_status()
        if available:
            return True, None
        return False, f"{reason}, or set ${url_env} to an OpenAI-compatible server (vLLM/SGLang) serving DeQA-Score-Mix3"

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.float() / 5.0

    def identity(self) -> str:
        return f"served:{self.endpoint.model or '?'}" if self.backend == "served" else ""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}@{self.version} backend={self.backend}>"

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        if self.backend == "served":
            self.endpoint.require_url()
            self.endpoint.resolve_model()
            return
        from transformers import AutoModelForCausalLM

        path = self.weight_path("deqa-score-mix3")
        dtype = self.dtype
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if dtype is None:
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        import transformers

        # the official README passes torch_dtype=; transformers 5 renamed it dtype=
        dtype_kw = {"dtype": dtype} if int(transformers.__version__.split(".")[0]) >= 5 else {"torch_dtype": dtype}
        try:
            model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, attn_implementation="eager", **dtype_kw)
        except Exception as exc:  # the remote code is pinned to an old transformers
            raise FlowOPDError(
                f"deqa: cannot load DeQA-Score-Mix3 from {path} with transformers {transformers.__version__} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); its remote code targets "
                f"transformers==4.36.1: use that in a separate environment, or serve the model and set $FLOWOPD_DEQA_URL"
            ) from exc
        self._model = model.to(self.device).eval().requires_grad_(False)

    # ------------------------------------------------------------------ scoring

    def _score(self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any] | None]):
        if self.backend == "served":
            return self._score_served(images)
        return self._score_local(images)

    @torch.no_grad()
    def _score_local(self, images: np.ndarray):
        from PIL import Image

        pil = [Image.fromarray(np.asarray(img, dtype=np.uint8)) for img in images]
        scores = self._model.score(pil)
        values = [float(s) for s in torch.as_tensor(scores).float().flatten().tolist()]
        raws: list[float | None] = []
        details: list[dict[str, Any]] = []
        for v in values:
            if math.isfinite(v):
                raws.append(v)
                details.append({"backend": "local"})
            else:
                raws.append(None)
                details.append({"backend": "local", "error": f"model returned {v}"})
        return raws, details

    def _score_served(self, images: np.ndarray):
        requests = [ChatRequest(image=np.asarray(img), text=QUESTION, image_first=False, assistant_prefix=ANSWER_PREFIX) for img in images]
        results = self.endpoint.chat_many(requests, max_tokens=1, temperature=0.0, top_logprobs=self.top_logprobs)
        raws: list[float | None] = []
        details: list[dict[str, Any]] = []
        for res in results:
            d: dict[str, Any] = {"backend": "served", "model": self.endpoint.model, "attempts": res.attempts}
            if res.error is not None:
                raws.append(None)
                details.append({**d, "error": res.error})
                continue
            first = res.logprobs[0] if res.logprobs else None
            top = first.get("top_logprobs") if isinstance(first, dict) else None
            if not top:
                raws.append(None)
                details.append({**d, "error": "the reply has no top_logprobs for the first token; does the server support logprobs?"})
                continue
            found = level_logprobs(top)
            score, probs = deqa_from_logprobs(found)
            d["token"] = first.get("token")
            if score is None:
                seen = ", ".join(repr(e.get("token")) for e in top[:5])
                raws.append(None)
                details.append({**d, "error": f"none of {', '.join(LEVELS)} among the top {len(top)} first tokens ({seen}, ...)"})
                continue
            d["probs"] = {k: round(v, 6) for k, v in probs.items()}
            d["missing_levels"] = [lvl for lvl in LEVELS if lvl not in found]
            raws.append(score)
            details.append(d)
        return raws, details
