"""The one scoring interface: every reward model, built-in or plugin, is a :class:`RewardModel`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from flowopd.errors import FlowOPDError

# uint8 [B,H,W,3] arrays (or a list of [H,W,3] ones of mixed sizes): the one image type between the sampler's output and a
# reward's _score, converted once at each edge; also accepted: the sampler's float [B,3,H,W] tensors in [0,1], PIL images
ImageBatch = np.ndarray | torch.Tensor | Sequence[Any]


@dataclasses.dataclass
class Scores:
    """Per-image raw scores, their training-scale values, and per-image details (reasons, read text...).

    An image the reward could not score (a server error, an unparseable
    judge reply) is *failed*: its ``raw`` and ``normalized`` are NaN and
    ``details["error"]`` says why. Failed images are never scored 0: the
    trainer leaves them out of the advantages and evaluation counts them apart.
    """

    raw: torch.Tensor  # [B] float, the reward's own scale (NaN where failed)
    normalized: torch.Tensor  # [B] float, the training scale (``RewardModel.normalize(raw)``)
    details: list[dict[str, Any]]

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    @property
    def failed(self) -> torch.Tensor:
        """[B] bool: the images that could not be scored."""
        return torch.isnan(self.raw)

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per image (``raw``/``normalized`` are ``None`` and ``failed`` is true where scoring failed)."""
        out = []
        for r, n, d in zip(self.raw.tolist(), self.normalized.tolist(), self.details):
            if math.isnan(r):
                out.append({"raw": None, "normalized": None, "failed": True, "details": d})
            else:
                out.append({"raw": float(r), "normalized": float(n), "details": d})
        return out


class RewardModel:
    """Base class for reward models.

    Subclasses set ``name``, ``version`` and ``higher_is_better``, implement
    :meth:`_score` on a uint8 ``[B, H, W, 3]`` array (or override :meth:`score`
    for tensor-native models), and override :meth:`normalize` when the raw
    scale is not the training scale. Weights load lazily on first use through
    :meth:`load`; :meth:`weights_status` says whether they are present
    without loading them.

    Rewards with weights list the weight sets they need in ``weight_sets``
    (see :mod:`flowopd.reward_models.weights`); ``weights={"set": path}``
    overrides where one is looked for, and :meth:`weight_path` finds it or
    fails with the command that fetches it. ``_score`` returns ``None`` (or
    NaN) as the raw score of an image it could not score, with
    ``details["error"]``.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    higher_is_better: ClassVar[bool] = True
    description: ClassVar[str] = ""
    needs_metadata: ClassVar[bool] = False  # True when a prompt alone is not enough (e.g. GenEval clauses)
    weight_sets: ClassVar[tuple[str, ...]] = ()  # names in flowopd.reward_models.weights.WEIGHT_SETS
    requires: ClassVar[tuple[str, ...]] = ()  # importable modules the reward needs beyond the core install
    raw_range: ClassVar[tuple[float, float] | None] = None  # the raw scale's bounds, where it has them (intervals stay inside)
    reads_url_env: ClassVar[bool] = False  # True: $FLOWOPD_<NAME>_URL is its own chat server, not a `rewards serve` one

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 64, weights: Mapping[str, str | Path] | None = None):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.weights = dict(weights or {})
        unknown = set(self.weights) - set(self.weight_sets)
        if unknown:
            raise ValueError(f"{self.name}: unknown weight set {sorted(unknown)[0]!r}; this reward uses {list(self.weight_sets) or 'none'}")
        self._loaded = False

    # ----------------------------------------------------------- lifecycle

    @classmethod
    def weights_status(cls) -> tuple[bool, str | None]:
        """``(available, reason)``: whether the packages and weights are present (or not needed), without loading them."""
        import importlib.util

        from flowopd.reward_models.weights import get_weight_set

        for module in cls.requires:
            if importlib.util.find_spec(module) is None:
                return False, f"needs the Python module {module!r}: {cls.install_hint()}"
        for set_name in cls.weight_sets:
            ws = get_weight_set(set_name)
            missing = ws.missing()
            if missing:
                return False, f"weights {set_name!r}: {missing[0]} not in {ws.path()}; run `flowopd weights download {cls.name}`"
        return True, None

    @classmethod
    def install_hint(cls) -> str:
        """How to install the reward's extra packages (rewards in an extra override this)."""
        return f"pip install {' '.join(cls.requires)}"

    def weight_path(self, set_name: str) -> Path:
        """The folder of one of this reward's weight sets, or a one-line error with the command that fetches it."""
        from flowopd.reward_models.weights import get_weight_set

        if set_name not in self.weight_sets:
            raise ValueError(f"{self.name} does not declare weight set {set_name!r}")
        return get_weight_set(set_name).require(self.name, self.weights.get(set_name))

    def load(self) -> None:
        """Load weights onto ``self.device``; called once, lazily, before the first score."""

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            import importlib.util

            for module in self.requires:  # the package before its weights: installing comes first
                if importlib.util.find_spec(module) is None:
                    raise FlowOPDError(f"{self.name} needs the Python module {module!r}: {self.install_hint()}")
            self.load()
            self._loaded = True

    # ----------------------------------------------------------- scoring

    def identity(self) -> str:
        """What decides this reward's scores besides its name and version (a served judge: its model); part of score-cache keys."""
        return ""

    def applies_to(self, prompt: str, metadata: dict[str, Any] | None) -> bool:
        """Whether this reward can score an image of ``prompt`` (a weighted mix of rewards skips it where it cannot)."""
        return True

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw scores -> the training scale (identity unless the reward says otherwise)."""
        return raw.float()

    def checked_inputs(
        self, images: ImageBatch, prompts: Sequence[str], metadata: Sequence[dict[str, Any] | None] | None
    ) -> tuple[Any, list[str], list[dict[str, Any] | None]]:
        """``(uint8 [B,H,W,3] images, prompts, metadata)`` with one prompt and one metadata entry per image, else ValueError."""
        arrays = to_uint8_hwc(images)
        prompts = list(prompts)
        if len(prompts) != len(arrays):
            raise ValueError(f"{self.name}: got {len(arrays)} images but {len(prompts)} prompts; pass one prompt per image")
        meta = list(metadata) if metadata is not None else [None] * len(prompts)
        if len(meta) != len(arrays):
            raise ValueError(f"{self.name}: got {len(arrays)} images but {len(meta)} metadata entries")
        return arrays, prompts, meta

    def score(self, images: ImageBatch, prompts: Sequence[str], metadata: Sequence[dict[str, Any] | None] | None = None) -> Scores:
        """Score a batch: ``images`` as uint8 ``[B,H,W,3]`` arrays, float ``[B,3,H,W]`` in [0,1] or PIL images, one prompt per image."""
        arrays, prompts, meta = self.checked_inputs(images, prompts, metadata)
        self._ensure_loaded()
        raws: list[float] = []
        details: list[dict[str, Any]] = []
        for start in range(0, len(arrays), self.batch_size):
            chunk = arrays[start : start + self.batch_size]
            try:
                r, d = self._score(chunk, prompts[start : start + self.batch_size], meta[start : start + self.batch_size])
            except FlowOPDError:
                raise
            except Exception as exc:
                if type(self).__module__.startswith("flowopd."):  # ours raise what they mean (bad metadata: ValueError)
                    raise
                raise FlowOPDError(f"reward {self.name!r} failed while scoring: {type(exc).__name__}: {exc}") from exc
            raws.extend(self._checked_scores(r, d, len(chunk)))
            details.extend(d)
        raw = torch.tensor(raws, dtype=torch.float32)
        return Scores(raw=raw, normalized=self.normalize(raw), details=details)

    def _checked_scores(self, raw: Any, details: Any, n: int) -> list[float]:
        """``_score``'s scores as floats (None -> NaN), after checking there is one number and one details dict per image."""
        fix = "its _score must return (one float or None per image, one dict per image)"
        try:
            raw, details = list(raw), list(details)
        except TypeError:
            raise FlowOPDError(f"reward {self.name!r} returned {type(raw).__name__} scores; {fix}") from None
        if len(raw) != n or len(details) != n:
            raise FlowOPDError(f"reward {self.name!r} returned {len(raw)} scores and {len(details)} details for {n} images; {fix}")
        out = []
        for x in raw:
            try:
                if isinstance(x, (str, bytes)):
                    raise TypeError
                out.append(math.nan if x is None else float(x))
            except (TypeError, ValueError):
                raise FlowOPDError(f"reward {self.name!r} returned a {type(x).__name__} score ({x!r:.40}); {fix}") from None
        if not all(isinstance(d, dict) for d in details):
            raise FlowOPDError(f"reward {self.name!r} returned details that are not dicts; {fix}")
        return out

    def _checked_metadata(self, metadata: Sequence[dict[str, Any] | None], check: Any) -> list[Any]:
        """``check(meta)`` for each image's metadata; its ``ValueError`` is raised again naming this reward and the image."""
        out = []
        for index, meta in enumerate(metadata):
            try:
                out.append(check(meta))
            except ValueError as exc:
                raise ValueError(f"{self.name}: image {index}: {exc}") from None
        return out

    def _score(
        self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any] | None]
    ) -> tuple[list[float], list[dict[str, Any]]]:
        raise NotImplementedError(f"{type(self).__name__} must implement _score or override score")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}@{self.version}>"


def to_uint8_hwc(images: ImageBatch) -> np.ndarray | list[np.ndarray]:
    """Any :data:`ImageBatch` -> uint8 ``[B,H,W,3]`` (a list for mixed sizes); uint8 HWC arrays pass through as they are."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8 [B,H,W,3], got {images.dtype} {tuple(images.shape)}")
        return np.ascontiguousarray(images)
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
        if isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.ndim == 3 and im.shape[-1] == 3:
            out.append(im)
        elif hasattr(im, "convert"):
            out.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        else:
            raise TypeError(f"expected uint8 [H,W,3] arrays, PIL images or a [B,3,H,W] tensor, got {type(im).__name__}")
    if not out:
        return np.zeros((0, 1, 1, 3), dtype=np.uint8)
    if len({a.shape for a in out}) > 1:
        return out  # ragged sizes: a list, which per-image models slice and iterate the same way
    return np.stack(out)
