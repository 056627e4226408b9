"""The mini world's four reward models: real, deterministic scorers behind the one interface.

- ``mini_geneval``: the mini detector feeding the GenEval rules engine; raw = partial credit,
  ``details["correct"]`` = the official strict rule (what evaluation aggregates).
- ``mini_ocr``: the template OCR with the OCR reward's formula.
- ``mini_preference``: the preference judge in [0, 1] (PickScore analogue).
- ``mini_quality``: the prompt-free quality judge in [1, 5] (DeQA analogue), trained at /5.

A prompt of the mini world is enough: metadata is parsed from it when not given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from flowopd.mini import world
from flowopd.mini.judges import preference_score, quality_score
from flowopd.mini.perception import detect, read_text
from flowopd.reward_models import geneval_rules
from flowopd.reward_models.base import RewardModel
from flowopd.reward_models.ocr_formula import ocr_reward, target_text
from flowopd.reward_models.registry import register_reward


def _meta(prompt: str, meta: dict[str, Any] | None) -> dict[str, Any]:
    return dict(meta) if meta else world.parse_prompt(prompt).metadata


def geneval_record(prompt: str, meta: dict[str, Any] | None) -> Mapping[str, Any]:
    """An image's GenEval record: its metadata, else the one its mini-world prompt gives; a one-line ValueError naming
    what to send when neither is usable (checked like the real GenEval's, so a bad clause is never scored silently)."""
    if meta:
        return geneval_rules.validate_metadata(meta)
    try:
        return geneval_rules.validate_metadata(world.parse_prompt(prompt).metadata)
    except ValueError:
        raise ValueError(
            f"no metadata, and {prompt!r:.80} is not a mini-world prompt of objects to read it from; send metadata with a "
            "non-empty 'include' list of {class, count} clauses, or a prompt like 'a photo of two red squares'"
        ) from None


def at_world_size(image: Any) -> np.ndarray:
    """An image at the world's 32x32: an integer upscale (``flowopd sample`` and ``mini render`` write x8) is averaged back
    block by block, so every scorer reads a picture at any integer scale as it reads the original."""
    arr = np.asarray(image)
    h, w = arr.shape[:2]
    k = h // world.SIZE
    if (h, w) == (world.SIZE, world.SIZE) or k < 2 or (h, w) != (k * world.SIZE, k * world.SIZE):
        return arr
    blocks = arr.astype(np.float32).reshape(world.SIZE, k, world.SIZE, k, -1).mean(axis=(1, 3))
    return blocks.round().astype(np.uint8) if arr.dtype == np.uint8 else blocks.astype(arr.dtype)


@register_reward("mini_geneval")
class MiniGenEval(RewardModel):
    version = "1"
    raw_range = (0.0, 1.0)
    description = "mini world: connected-component detector + GenEval rules (partial credit; details.correct = strict)"
    needs_metadata = True

    def applies_to(self, prompt, metadata):
        try:
            return "include" in _meta(prompt, metadata)
        except ValueError:
            return False

    def _score(self, images, prompts, metadata):
        metas = self._checked_metadata(list(zip(prompts, metadata)), lambda pair: geneval_record(*pair))
        raws, details = [], []
        for img, meta in zip(images, metas):
            dets = detect(at_world_size(img))
            by_class: dict[str, list[geneval_rules.DetectedObject]] = {}
            for d in dets:
                by_class.setdefault(d.cls, []).append(geneval_rules.DetectedObject(d.box, d.score, d.color))
            res = geneval_rules.evaluate(by_class, meta, lambda objs, _cls: [o.color for o in objs])
            raws.append(res.score)
            details.append(
                {
                    "correct": res.correct,
                    "tag": meta.get("tag"),
                    "reasons": res.reasons,
                    "detections": [{"class": d.cls, "box": list(d.box), "score": round(d.score, 4), "color": d.color} for d in dets],
                }
            )
        return raws, details


@register_reward("mini_geneval@strict")
class MiniGenEvalStrict(MiniGenEval):
    """``mini_geneval`` with the strict rule as its raw score (1 when every clause holds, else 0): what evaluation reports,
    as a training reward (the partial credit rewards one object of two right)."""

    name = "mini_geneval@strict"
    version = "1-strict"
    description = "mini world: mini_geneval with the strict rule as the score (0 or 1; what evaluation reports)"

    def _score(self, images, prompts, metadata):
        raws, details = super()._score(images, prompts, metadata)
        return [float(d["correct"]) for d in details], details


@register_reward("mini_ocr")
class MiniOCR(RewardModel):
    version = "1"
    raw_range = (0.0, 1.0)
    description = "mini world: template OCR of 3x5-font digits; 1 - edit_distance/len of the quoted text"

    def applies_to(self, prompt, metadata):
        return bool((metadata or {}).get("text") or prompt.count('"') >= 2)

    def _score(self, images, prompts, metadata):
        raws, details = [], []
        for img, prompt, meta in zip(images, prompts, metadata):
            target = (meta or {}).get("text") or target_text(prompt)
            read = read_text(at_world_size(img))
            score, dist = ocr_reward(target, read.text)
            raws.append(score)
            details.append({"target": target, "read": read.text, "distance": dist, "chars": [[c, round(p, 3)] for c, p in read.chars]})
        return raws, details


@register_reward("mini_preference")
class MiniPreference(RewardModel):
    raw_range = (0.0, 1.0)
    version = "2"  # world v2: a weighted geometric mean, the preferred framing (flowopd.mini.judges)
    description = "mini world: preference judge in [0,1] (request match + composition; PickScore analogue)"

    @staticmethod
    def _request(prompt: str, meta: dict[str, Any] | None) -> Mapping[str, Any]:
        """What the judge reads: the metadata (its GenEval clauses checked, where it has some), else the prompt's."""
        if meta:
            for key in ("color", "shape", "background"):  # read with or without GenEval clauses (judges.preference_request)
                if meta.get(key) is not None and not isinstance(meta[key], str):
                    raise ValueError(f'metadata {key!r} is {meta[key]!r}; send a string such as "red" (or leave it out)')
            if meta.get("size") and (not isinstance(meta["size"], str) or meta["size"] not in world.PREFERRED_SIDE):
                raise ValueError(f"metadata 'size' is {meta['size']!r}; send one of {sorted(world.PREFERRED_SIDE)} (or leave it out)")
            return geneval_rules.validate_metadata(meta) if "include" in meta else meta
        try:
            return world.parse_prompt(prompt).metadata
        except ValueError:
            return {}

    def _score(self, images, prompts, metadata):
        metas = self._checked_metadata(list(zip(prompts, metadata)), lambda pair: self._request(*pair))
        raws, details = [], []
        for img, meta in zip(images, metas):
            score, terms = preference_score(at_world_size(img), meta)
            raws.append(score)
            details.append({"terms": {k: round(v, 4) for k, v in terms.items()}})
        return raws, details


@register_reward("mini_quality")
class MiniQuality(RewardModel):
    raw_range = (1.0, 5.0)
    version = "2"  # world v2: a weighted geometric mean with colour fidelity (flowopd.mini.judges)
    description = "mini world: prompt-free image quality in [1,5] (noise, colour fidelity, specks, sharpness; DeQA analogue)"

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.float() / 5.0

    def _score(self, images, prompts, metadata):
        raws, details = [], []
        for img in images:
            score, terms = quality_score(at_world_size(img))
            raws.append(score)
            details.append({"terms": {k: round(v, 4) for k, v in terms.items()}})
        return raws, details
