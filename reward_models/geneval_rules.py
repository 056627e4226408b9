"""The GenEval rules engine (SPEC section 7), independent of which detector found the objects.

Input: detections per class (box, confidence, optional colour) and a GenEval
metadata record (``tag``, ``include``, optional ``exclude``). Output: the
official strict correctness (djghosh13/geneval ``evaluate``) with its
reasons, and the partial-credit training reward of the Flow-GRPO reward
server (``evaluate_reward``), with two documented repairs:

- a count term ``1 - |n - found| / n`` is floored at 0 (upstream it goes
  negative when a class is over-detected, up to -15 with 16 detections);
- a failed position check scores 0 for that clause (upstream appends a 0 and
  then, after the loop, an unconditional 1).

Colours come from a ``classify_colors(objects, classname) -> [colour]``
callback, so the real engine can run CLIP on crops and the mini engine can
read its detector's palette colour.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_THRESHOLD = 0.1
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")


@dataclasses.dataclass
class DetectedObject:
    """One detection: box ``(x0, y0, x1, y1)``, confidence, and its colour where the detector knows it."""

    box: tuple[float, float, float, float]
    score: float
    color: str | None = None


ColorFn = Callable[[list[DetectedObject], str], list[str]]


@dataclasses.dataclass
class GenEvalResult:
    """``correct``: official strict rule; ``score``: partial credit in [0, 1]; ``reasons``: why not correct."""

    correct: bool
    score: float
    reasons: list[str]


def relative_position(box_a: Sequence[float], box_b: Sequence[float], threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of box A to box B from their centres, each offset reduced by ``threshold`` x the box sizes."""
    boxes = np.array([box_a, box_b], dtype=float)[:, :4].reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - threshold * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


SEND = (
    'send a dict with a non-empty "include" list of {"class": str, "count": int >= 1[, "color": str]'
    '[, "position": [relation, index]]} clauses, as in GenEval\'s evaluation_metadata.jsonl (other keys are ignored)'
)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_clause(where: str, clause: Any, earlier: int) -> None:
    """One ``include``/``exclude`` clause, or a ValueError naming it, the key at fault and what it must be."""
    if not isinstance(clause, Mapping) or "class" not in clause or "count" not in clause:
        raise ValueError(f"GenEval clause {where} needs 'class' and 'count', got {clause!r:.80}; {SEND}")
    if not isinstance(clause["class"], str) or not clause["class"]:
        raise ValueError(f"GenEval clause {where}: 'class' must be a non-empty string, got {clause['class']!r:.40}")
    if not _is_int(clause["count"]) or clause["count"] < 1:
        raise ValueError(f"GenEval clause {where}: 'count' must be an integer >= 1, got {clause['count']!r:.40}")
    if "color" in clause and not isinstance(clause["color"], str):
        raise ValueError(f"GenEval clause {where}: 'color' must be a string, got {clause['color']!r:.40}")
    pos = clause.get("position")
    if pos is not None:
        if not (isinstance(pos, Sequence) and len(pos) == 2 and pos[0] in RELATIONS and _is_int(pos[1])):
            raise ValueError(f"GenEval clause {where}: position must be [relation, index] with relation in {RELATIONS}, got {pos!r:.60}")
        if not 0 <= pos[1] < earlier:
            raise ValueError(f"GenEval clause {where}: position target {pos[1]} must name an earlier include clause")


def validate_metadata(meta: Any) -> Mapping[str, Any]:
    """``meta`` if it is a usable GenEval record, else a one-line ValueError naming the key at fault and what to send."""
    if not isinstance(meta, Mapping):
        raise ValueError(f"no GenEval metadata (got {'null' if meta is None else type(meta).__name__}); {SEND}")
    include = meta.get("include")
    if not isinstance(include, list) or not include:
        got = "missing" if "include" not in meta else f"{include!r:.40}, not a non-empty list"
        raise ValueError(f"no GenEval metadata: 'include' is {got}; {SEND}")
    exclude = meta.get("exclude")
    if exclude is not None and not isinstance(exclude, list):
        raise ValueError(f"GenEval metadata: 'exclude' must be a list of clauses, got {exclude!r:.40}; {SEND}")
    for i, clause in enumerate(include):
        _check_clause(f"{i} of 'include'", clause, earlier=i)
    for i, clause in enumerate(exclude or []):
        _check_clause(f"{i} of 'exclude'", clause, earlier=len(include))
    return meta


def select_objects(
    detections: Mapping[str, Sequence[DetectedObject]], tag: str | None, max_objects: int = MAX_OBJECTS
) -> dict[str, list[DetectedObject]]:
    """Keep detections above the confidence threshold (0.9 for counting), most confident first, at most 16 per class."""
    threshold = COUNTING_THRESHOLD if tag == "counting" else THRESHOLD
    out: dict[str, list[DetectedObject]] = {}
    for cls, objs in detections.items():
        kept = sorted((o for o in objs if o.score > threshold), key=lambda o: -o.score)[:max_objects]
        if kept:
            out[cls] = kept
    return out


def evaluate_strict(
    objects: Mapping[str, list[DetectedObject]], meta: Mapping[str, Any], classify_colors: ColorFn
) -> tuple[bool, list[str]]:
    """The official GenEval rule: include clauses AND-ed (at least ``count``), exclude clauses (fewer than ``count``)."""
    correct = True
    reasons: list[str] = []
    matched_groups: list[list[DetectedObject] | None] = []
    for req in meta["include"]:
        cls, count = req["class"], int(req["count"])
        matched = True
        found = objects.get(cls, [])[:count]
        if len(found) < count:
            correct = matched = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = classify_colors(found, cls)
                if colors.count(req["color"]) < count:
                    correct = matched = False
                    reasons.append(f"expected {req['color']} {cls}>={count}, found {colors.count(req['color'])} {req['color']}")
            if req.get("position") is not None and matched:
                rel, target = req["position"][0], int(req["position"][1])
                if matched_groups[target] is None:
                    correct = matched = False
                    reasons.append(f"no target for {cls} to be {rel}")
                else:
                    for obj in found:
                        for tobj in matched_groups[target]:
                            true_rels = relative_position(obj.box, tobj.box)
                            if rel not in true_rels:
                                correct = matched = False
                                reasons.append(f"expected {cls} {rel} target, found {' and '.join(sorted(true_rels)) or 'no relation'}")
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for req in meta.get("exclude") or []:
        cls, count = req["class"], int(req["count"])
        if len(objects.get(cls, [])) >= count:
            correct = False
            reasons.append(f"expected {cls}<{count}, found {len(objects[cls])}")
    return correct, reasons


def evaluate_partial(objects: Mapping[str, list[DetectedObject]], meta: Mapping[str, Any], classify_colors: ColorFn) -> float:
    """Flow-GRPO's partial-credit reward: the mean of per-clause count, colour and position credits."""
    credits: list[float] = []
    matched_groups: list[list[DetectedObject] | None] = []
    for req in meta["include"]:
        cls, count = req["class"], int(req["count"])
        found = objects.get(cls, [])
        credits.append(max(0.0, 1.0 - abs(count - len(found)) / count))
        matched = len(found) == count
        if not matched:
            if "color" in req or req.get("position") is not None:
                credits.append(0.0)
        else:
            if "color" in req:
                n_right = classify_colors(found, cls).count(req["color"])
                credits.append(max(0.0, 1.0 - abs(count - n_right) / count))
                matched = n_right == count
            if req.get("position") is not None and matched:
                rel, target = req["position"][0], int(req["position"][1])
                ok = matched_groups[target] is not None and all(
                    rel in relative_position(o.box, t.box) for o in found for t in matched_groups[target]
                )
                credits.append(1.0 if ok else 0.0)
                matched = ok
        matched_groups.append(found if matched else None)
    return sum(credits) / len(credits) if credits else 0.0


def evaluate(detections: Mapping[str, Sequence[DetectedObject]], meta: Mapping[str, Any], classify_colors: ColorFn) -> GenEvalResult:
    """Threshold the raw detections for the record's tag, then apply both rules."""
    validate_metadata(meta)
    objects = select_objects(detections, meta.get("tag"))
    correct, reasons = evaluate_strict(objects, meta, classify_colors)
    score = evaluate_partial(objects, meta, classify_colors)
    return GenEvalResult(correct, score, reasons)
