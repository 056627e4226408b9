"""The one scoring interface: every reward model, built-in or plugin, is a :class:`RewardModel`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

ImageBatch = torch.Tensor | Sequence[Any]  # float [B,3,H,W] in [0,1], or PIL images


@dataclasses.dataclass
class Scores:
    """Per-image raw scores, their training-scale values, and per-image details (reasons, read text...)."""

    raw: torch.Tensor  # [B] float, the reward's own scale
    normalized: torch.Tensor  # [B] float, the training scale (``RewardModel.normalize(raw)``)
    details: list[dict[str, Any]]

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per image."""
        return [
            {"raw": float(r), "normalized": float(n), "details": d}
            for r, n, d in zip(self.raw.tolist(), self.normalized.tolist(), self.details)
        ]


class RewardModel:
    """Base class for reward models.

    Subclasses set ``name``, ``version`` and ``higher_is_better``, implement
    :meth:`_score` on a uint8 ``[B, H, W, 3]`` array (or override :meth:`score`
    for tensor-native models), and override :meth:`normalize` when the raw
    scale is not the training scale. Weights load lazily on first use through
    :meth:`load`; :meth:`weights_status` says whether they are present
    without loading them.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    higher_is_better: ClassVar[bool] = True
    description: ClassVar[str] = ""
    needs_metadata: ClassVar[bool] = False  # True when a prompt alone is not enough (e.g. GenEval clauses)

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 64):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._loaded = False

    # ----------------------------------------------------------- lifecycle

    @classmethod
    def weights_status(cls) -> tuple[bool, str | None]:
        """``(available, reason)``: whether the weights are present (or not needed), without loading them."""
        return True, None

    def load(self) -> None:
        """Load weights onto ``self.device``; called once, lazily, before the first score."""

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()
            self._loaded = True

    # ----------------------------------------------------------- scoring

    def applies_to(self, prompt: str, metadata: dict[str, Any] | None) -> bool:
        """Whether this reward can score an image of ``prompt`` (a weighted mix of rewards skips it where it cannot)."""
        return True

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw scores -> the training scale (identity unless the reward says otherwise)."""
        return raw.float()

    def score(self, images: ImageBatch, prompts: Sequence[str], metadata: Sequence[dict[str, Any] | None] | None = None) -> Scores:
        """Score a batch: ``images`` as float ``[B,3,H,W]`` in [0,1] or PIL images, one prompt per image."""
        arrays = to_uint8_hwc(images)
        prompts = list(prompts)
        if len(prompts) != len(arrays):
            raise ValueError(f"{self.name}: got {len(arrays)} images but {len(prompts)} prompts; pass one prompt per image")
        meta = list(metadata) if metadata is not None else [None] * len(prompts)
        if len(meta) != len(arrays):
            raise ValueError(f"{self.name}: got {len(arrays)} images but {len(meta)} metadata entries")
        self._ensure_loaded()
        raws: list[float] = []
        details: list[dict[str, Any]] = []
        for start in range(0, len(arrays), self.batch_size):
            r, d = self._score(
                arrays[start : start + self.batch_size],
                prompts[start : start + self.batch_size],
                meta[start : start + self.batch_size],
            )
            raws.extend(float(x) for x in r)
            details.extend(d)
        raw = torch.tensor(raws, dtype=torch.float32)
        return Scores(raw=raw, normalized=self.normalize(raw), details=details)

    def _score(
        self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any] | None]
    ) -> tuple[list[float], list[dict[str, Any]]]:
        raise NotImplementedError(f"{type(self).__name__} must implement _score or override score")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}@{self.version}>"


def to_uint8_hwc(images: ImageBatch) -> np.ndarray | list[np.ndarray]:
    """Float ``[B,3,H,W]`` in [0,1] or a list of PIL images -> uint8 ``[B,H,W,3]``."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"image tensor must be [B,3,H,W], got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            arr = images.permute(0, 2, 3, 1).cpu().numpy()
        else:
            x = images.detach().float().cpu()
            if x.min() < -1e-3 or x.max() > 1 + 1e-3:
                raise ValueError("image tensor values must be in [0, 1]; decode the model output first")
            arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return np.ascontiguousarray(arr)
    out = []
    for im in images:
        if hasattr(im, "convert"):
            out.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        else:
            raise TypeError(f"expected PIL images or a [B,3,H,W] tensor, got {type(im).__name__}")
    if not out:
        return np.zeros((0, 1, 1, 3), dtype=np.uint8)
    if len({a.shape for a in out}) > 1:
        return out  # ragged sizes: a list, which per-image models slice and iterate the same way
    return np.stack(out)
