"""The OCR reward's formula (SPEC section 7), shared by every OCR backend.

target = the text between the first pair of double quotes; recognised = the
confident lines joined, spaces removed, lower-case (the target likewise);
dist = 0 if the target is a substring of the recognised text, else the
Levenshtein distance capped at ``len(target)``; reward = ``1 - dist / len``.
"""

from __future__ import annotations

from rapidfuzz.distance import Levenshtein


def target_text(prompt: str) -> str:
    """The text between the first pair of double quotes (the whole prompt if it has none)."""
    parts = prompt.split('"')
    return parts[1] if len(parts) >= 3 else prompt


def ocr_reward(target: str, recognised: str) -> tuple[float, int]:
    """``(1 - dist / len(target), dist)`` with Flow-GRPO's normalisation."""
    t = target.replace(" ", "").lower()
    r = recognised.replace(" ", "").lower()
    if not t:
        return 0.0, 0
    dist = 0 if t in r else min(Levenshtein.distance(r, t), len(t))
    return 1.0 - dist / len(t), dist
