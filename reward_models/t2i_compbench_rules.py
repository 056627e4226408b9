"""T2I-CompBench++ detector categories as formulas: detections (and a depth map) -> the official per-image score.

No model here: :mod:`flowopd.reward_models.t2i_compbench` runs the detector and the depth model and hands their output to
these functions. Every rule follows the official scripts (``Karine-Huang/T2I-CompBench`` @1b70949; the lines named
below are that commit's):

- spatial (2D): ``UniDet_eval/2D_spatial_eval.py`` L23-78 (``determine_position``), L166-174 (relation word), L176-232
  (objects: simple and ``--complex`` parsing, the person mapping), L233-261 (matching, 0.25/0.25/0.5, the < 0.5 cut).
- 3d_spatial: ``UniDet_eval/3D_spatial_eval.py`` L54-157 (``determine_position`` with the depth branches), L278-296
  (relation, objects), L297-344 (substring matching, no cut).
- numeracy: ``UniDet_eval/numeracy_eval.py`` L48-66 (``calculate_iou``, the +1 convention), L116-130 (same-label merge
  at 0.9), L136-161 (number words and objects), L162-185 (0.5/N present + 0.5/N exact count, the aliases).
- complex: ``3_in_1_eval/3_in_1.py`` L44-69 (membership by prompt text, the 3-in-1 averages).

Boxes are ``(x_min, y_min, x_max, y_max)`` in the detector frame: the image resized with ``Resize(479, max_size=480)``
(``experts/obj_detection/generate_dataset.py`` L25), where the 150-px rule is measured. Where the official script
would crash (a simple prompt without a noun, nothing to count) these functions raise :class:`ParseError`; the reward
reports that image as failed (NaN), never as 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

SHORT_SIDE, MAX_SIDE = 479, 480  # UniDet's transforms.Resize(size=479, max_size=480)
SCORE_THRESHOLD = 0.1  # UnifiedCascadeROIHeads' hard-coded test threshold (unified_roi_heads.py L97-113)
IOU_2D, DISTANCE_2D, IOU_3D, MERGE_OVERLAP = 0.1, 150.0, 0.5, 0.9
RELATIONS_2D = ("on side of", "next to", "near", "on the left of", "on the right of", "on the bottom of", "on the top of", "on top of")
RELATIONS_3D = ("in front of", "behind", "hidden")
COMPLEX_PREPOSITIONS = ("on top of", "on bottom of", "on the left", "on the right", "next to", "on side of", "near")
PERSON_WORDS = ("girl", "boy", "man", "woman")
NUMBER_WORDS = ("a", "an", "one", "two", "three", "four", "five", "six", "seven", "eight")
_WORD_COUNTS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}  # w2n.word_to_num
NUMERACY_ALIASES = {"boy": "person", "girl": "person", "man": "person", "woman": "person", "ship": "boat", "telivision": "tv",
                    "goldfish": "fish", "painting": "picture"}  # fmt: skip
Box = tuple[float, float, float, float]


class ParseError(ValueError):
    """A prompt the official script cannot score (it would raise): the image is reported failed, not 0."""


class Token(NamedTuple):
    """One spaCy token: its text, its coarse part of speech (``pos_``), and whether a space follows it."""

    text: str
    pos: str
    space: bool = True


@dataclasses.dataclass(frozen=True)
class Det:
    """One detection: its label (the query it answers), its confidence, its box in the detector frame."""

    label: str
    score: float
    box: Box


def detector_frame(width: int, height: int) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(479, max_size=480)``: short side 479, long side at most 480."""
    short, long = min(width, height), max(width, height)
    new_short, new_long = SHORT_SIDE, int(SHORT_SIDE * long / short)
    if new_long > MAX_SIDE:
        new_short, new_long = int(MAX_SIDE * new_short / new_long), MAX_SIDE
    return (new_short, new_long) if width <= height else (new_long, new_short)


def span_text(tokens: Sequence[Token]) -> str:
    """spaCy's ``Span.text``: the tokens with the spaces between them, none after the last."""
    return "".join(t.text + (" " if t.space else "") for t in tokens[:-1]) + (tokens[-1].text if tokens else "")


def relation_in(prompt: str, vocabulary: Sequence[str]) -> str | None:
    """The first relation of ``vocabulary`` that is a substring of the prompt (2D L166-174, 3D L278-285)."""
    return next((word for word in vocabulary if word in prompt), None)


def person(name: str | None) -> str | None:
    """girl/boy/man/woman -> person (2D L228-232, 3D L292-296)."""
    return "person" if name in PERSON_WORDS else name


def simple_objects(tokens: Sequence[Token]) -> tuple[str, str]:
    """obj1, obj2 = the first and the last NOUN, person-mapped (2D L222-226, 3D L287-290); none: the script crashes."""
    nouns = [t.text for t in tokens if t.pos == "NOUN"]
    if not nouns:
        raise ParseError("the prompt has no NOUN token (the official script fails on it)")
    return person(nouns[0]), person(nouns[-1])


def complex_objects(tokens: Sequence[Token]) -> tuple[str | None, str | None]:
    """``--complex`` parsing (2D L184-220): around each preposition, the nearest NOUN/PROPN before it and the first NOUN
    after it (else the first PROPN followed by a non-PROPN); exactly two objects, else (None, None). Person-mapped."""
    objects: list[str] = []
    n = len(tokens)
    for i in range(n):
        k = next((k for k in (3, 2, 1) if span_text(tokens[i : i + k]) in COMPLEX_PREPOSITIONS), 0)
        if not k:
            continue
        before = next((tokens[j].text for j in range(i - 1, -1, -1) if tokens[j].pos in ("NOUN", "PROPN")), None)
        if before is not None:
            objects.append(before)
        after = next((tokens[j].text for j in range(i + k, n) if tokens[j].pos == "NOUN"), None)
        if after is not None:
            objects.append(after)
        elif i + k < n:  # the scan reached the end without a NOUN: the PROPN fallback
            fallback = (tokens[j].text for j in range(i + k, n - 1) if tokens[j].pos == "PROPN" and tokens[j + 1].pos != "PROPN")
            objects += [x for x in [next(fallback, None)] if x is not None]
    return (person(objects[0]), person(objects[1])) if len(objects) == 2 else (None, None)


# ----------------------------------------------------------------------------- positions


def plain_iou(a: Box, b: Box) -> float:
    """IoU without the +1 convention (2D L33-39); a zero union (two empty boxes) counts as no overlap."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _centre_offsets(a: Box, b: Box) -> tuple[float, float]:
    """(dx, dy) from box a's centre to box b's (y grows downwards)."""
    return (b[0] + b[2]) / 2 - (a[0] + a[2]) / 2, (b[1] + b[3]) / 2 - (a[1] + a[3]) / 2


def position_2d(relation: str | None, a: Box, b: Box) -> float:
    """``determine_position`` of 2D_spatial_eval.py L23-78 (A = obj1, B = obj2; IoU threshold 0.1, distance 150 px).

    near / next to / on side of: 1 if |dx| < 150 OR |dy| < 150, else 150 / max(|dx|, |dy|). on the right of: B's centre
    left of A's (dx < 0) and |dx| > |dy|: 1 if IoU < 0.1 else 0.1 / IoU; left / bottom / top alike. Anything else,
    ``on top of`` included, is 0.
    """
    dx, dy = _centre_offsets(a, b)
    if relation in ("next to", "on side of", "near"):
        return 1.0 if abs(dx) < DISTANCE_2D or abs(dy) < DISTANCE_2D else DISTANCE_2D / max(abs(dx), abs(dy))
    along, across, sign = {
        "on the right of": (dx, dy, -1),
        "on the left of": (dx, dy, 1),
        "on the bottom of": (dy, dx, -1),
        "on the top of": (dy, dx, 1),
    }.get(relation or "", (0.0, 0.0, 0))
    if sign == 0 or along * sign <= 0 or abs(along) <= abs(across):
        return 0.0
    iou = plain_iou(a, b)
    return 1.0 if iou < IOU_2D else IOU_2D / iou


def mean_depth(depth: np.ndarray, box: Box) -> float:
    """The mean of ``depth[int(x_min):int(x_max), int(y_min):int(y_max)]`` (3D L111-114): rows indexed by x, as upstream
    (a transpose: on a square image the box mirrored about the diagonal). An empty region is NaN (every test then fails)."""
    region = depth[int(box[0]) : int(box[2]), int(box[1]) : int(box[3])]
    return float(region.mean()) if region.size else math.nan


def position_3d(relation: str | None, a: Box, b: Box, depth: np.ndarray) -> float:
    """``determine_position`` of 3D_spatial_eval.py L54-157 (IoU threshold 0.5) on relative inverse depth (larger = nearer).

    in front of: IoU > 0.5 and mean depth A > B -> 1; 0 < IoU < 0.5 and A > B -> IoU / 0.5; otherwise 0 (IoU = 0.5: 0).
    behind / hidden: the same with A < B. The 2D relations are the 2D rule (unused by the category).
    """
    if relation not in RELATIONS_3D:
        return position_2d(relation, a, b)
    diff = mean_depth(depth, a) - mean_depth(depth, b)
    nearer = diff > 0 if relation == "in front of" else diff < 0  # NaN compares False
    iou = plain_iou(a, b)
    if not nearer:
        return 0.0
    if iou > IOU_3D:
        return 1.0
    return iou / IOU_3D if 0 < iou < IOU_3D else 0.0


# ----------------------------------------------------------------------------- per-image scores


def spatial_2d_score(obj1: str | None, obj2: str | None, relation: str | None, dets: Sequence[Det]) -> tuple[float, dict]:
    """2D_spatial_eval.py L233-261: exact label match, the first (best) detection of each; both found:
    0.25 conf1 + 0.25 conf2 + 0.5 position; one found: 0.25 conf; none: 0; then a score below 0.5 is 0."""
    labels = [d.label for d in dets]
    found = [labels.index(o) if o is not None and o in labels else None for o in (obj1, obj2)]
    position = None
    if found[0] is not None and found[1] is not None:
        a, b = dets[found[0]], dets[found[1]]
        position = position_2d(relation, a.box, b.box)
        score = 0.25 * a.score + 0.25 * b.score + 0.5 * position
    elif found[0] is not None or found[1] is not None:
        score = 0.25 * dets[found[0] if found[0] is not None else found[1]].score
    else:
        score = 0.0
    score = 0.0 if score < 0.5 else score
    return score, {"matched": found, "position": position}


def substring_matches(obj1: str, obj2: str, labels: Sequence[str]) -> tuple[int | None, int | None]:
    """3D_spatial_eval.py L297-342: with both in the joined labels, one pass sets obj1's index at *every* label containing
    it and stops once both are set (obj1 can land on a lower-ranked label); with one, its first label. Raises
    :class:`ParseError` where a name occurs only across two labels (the script then indexes with None)."""
    joined = " ".join(labels)
    has1, has2 = obj1 in joined, obj2 in joined
    i1 = i2 = None
    if has1 and has2:
        for i, label in enumerate(labels):
            i1 = i if obj1 in label else i1
            i2 = i if obj2 in label else i2
            if i1 is not None and i2 is not None:
                break
    elif has1:
        i1 = next((i for i, label in enumerate(labels) if obj1 in label), None)
    elif has2:
        i2 = next((i for i, label in enumerate(labels) if obj2 in label), None)
    if (has1 and i1 is None) or (has2 and i2 is None):
        raise ParseError(f"{obj1!r} or {obj2!r} occurs only across detector labels (the official script fails here)")
    return i1, i2


def spatial_3d_score(obj1: str, obj2: str, relation: str | None, dets: Sequence[Det], depth: np.ndarray) -> tuple[float, dict]:
    """3D_spatial_eval.py L297-344: substring matching, 0.25 conf1 + 0.25 conf2 + 0.5 position / 0.25 conf / 0, no cut."""
    i1, i2 = substring_matches(obj1, obj2, [d.label for d in dets])
    position = None
    if i1 is not None and i2 is not None:
        position = position_3d(relation, dets[i1].box, dets[i2].box, depth)
        score = 0.25 * dets[i1].score + 0.25 * dets[i2].score + 0.5 * position
    elif i1 is not None or i2 is not None:
        score = 0.25 * dets[i1 if i1 is not None else i2].score
    else:
        score = 0.0
    return score, {"matched": [i1, i2], "position": position}


# ----------------------------------------------------------------------------- numeracy


def _overlapping(a: Box, b: Box) -> bool:
    """numeracy_eval.py ``calculate_iou`` L48-66: +1-pixel areas; IoU > 0.9, or the intersection > 0.9 of either box."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    area_a, area_b = (a[2] - a[0] + 1) * (a[3] - a[1] + 1), (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter) > MERGE_OVERLAP or inter / area_a > MERGE_OVERLAP or inter / area_b > MERGE_OVERLAP


def merge_duplicates(dets: Sequence[Det]) -> list[Det]:
    """numeracy_eval.py L116-130: in score order, drop a detection overlapping (> 0.9) a kept one of the same label."""
    kept: list[Det] = []
    for d in dets:
        if not any(k.label == d.label and _overlapping(d.box, k.box) for k in kept):
            kept.append(d)
    return kept


def _count_of(word: str) -> int | None:
    """``w2n.word_to_num`` on the number words: one..eight; ``a``/``an`` raise there, and the count is skipped (None)."""
    return _WORD_COUNTS.get(word)


def parse_counts(tokens: Sequence[str], singular: Sequence[str], plural: Sequence[str]) -> tuple[list[str], list[int]]:
    """numeracy_eval.py L136-161: the objects and counts after each number word (two-word entries first).

    A count w2n cannot read is skipped, so the lists can misalign, as upstream. Raises :class:`ParseError` where the
    script would crash (a number word last in the prompt, with no next token).
    """
    objects: list[str] = []
    counts: list[int] = []
    n = len(tokens)
    for i, word in enumerate(tokens):
        if word not in NUMBER_WORDS:
            continue
        pair = f"{tokens[i + 1]} {tokens[i + 2]}" if i < n - 2 else None
        if pair is not None and (pair in singular or pair in plural):
            if pair in plural and word not in ("a", "an", "one"):
                objects.append(singular[plural.index(pair)])
                counts += [c for c in [_count_of(word)] if c is not None]
            else:
                objects.append(pair)
                counts.append(1)
            continue
        if i + 1 >= n:
            raise ParseError(f"the number word {word!r} ends the prompt (the official script fails on it)")
        nxt = tokens[i + 1]
        if nxt in singular and word in ("a", "an", "one"):
            objects.append(nxt)
            counts.append(1)
        elif nxt in plural or nxt in singular:
            if nxt not in plural:  # a singular after a count word: object_p.index raises upstream
                raise ParseError(f"{word} {nxt!r}: a singular after a count (the official script fails on it)")
            objects.append(singular[plural.index(nxt)])
            counts += [c for c in [_count_of(word)] if c is not None]
    return objects, counts


def numeracy_score(objects: Sequence[str], counts: Sequence[int], labels: Sequence[str]) -> tuple[float, dict]:
    """numeracy_eval.py L162-185: each object weighs 1/N; present: +0.5/N, exactly counted: +0.5/N (after the aliases and
    the substring renaming of labels that do not name it exactly)."""
    if not objects:
        raise ParseError("no counted object in the prompt (the official script divides by zero)")
    labels = list(labels)
    weight, score, found = 1.0 / len(objects), 0.0, []
    for i, name in enumerate(objects):
        name = NUMERACY_ALIASES.get(name, name)
        if name not in labels:
            labels = [name if name in label else label for label in labels]
        if name in labels:
            if i >= len(counts):
                raise ParseError("fewer counts than objects (the official script fails on num_obj[i])")
            score += 0.5 * weight + (0.5 * weight if labels.count(name) == counts[i] else 0.0)
        found.append(labels.count(name))
    return score, {"objects": list(objects), "counts": list(counts), "detected": found}


def read_object_vocabulary(text: str) -> tuple[list[str], list[str]]:
    """``new_objects.txt`` (``singular - plural`` per line) -> lower-cased singulars and plurals (numeracy_eval.py L23-25)."""
    lines = [line for line in text.splitlines() if line.strip()]
    pairs = [line.split(" - ") for line in lines]
    return [p[0].strip().lower() for p in pairs], [p[1].strip().lower() for p in pairs]


# ----------------------------------------------------------------------------- complex


def complex_key(line: str) -> str:
    """3_in_1.py L45-53: ``strip('\\n').split('.')[0].lower()``; blanks around are dropped too (CRLF files)."""
    return line.strip().split(".")[0].lower().strip()


def complex_group(prompt: str, spatial: set[str], action: set[str]) -> str:
    """Which 3-in-1 average applies (3_in_1.py L63-69): ``spatial``, ``action``, else ``spatial_action``."""
    key = complex_key(prompt)
    return "spatial" if key in spatial else "action" if key in action else "spatial_action"


def three_in_one(group: str, attribute: float, spatial: float, action: float) -> float:
    """3_in_1.py L63-69: spatial: (spatial + attribute) / 2; action: (action + attribute) / 2; else the mean of all three."""
    if group == "spatial":
        return (spatial + attribute) * 0.5
    if group == "action":
        return (action + attribute) * 0.5
    return (attribute + spatial + action) / 3
