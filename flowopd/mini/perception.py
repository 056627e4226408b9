"""Deterministic perception for the mini world: an object detector and a template OCR.

The detector finds connected components that differ from the background
(at least 5 px on each side, so patch-sized fragments are not objects),
classifies each one's shape by the IoU of its mask with the ideal square,
circle and triangle fitted to its box, and its colour by the nearest palette
colour. Its output has the shape of a real detector's (class, box, score,
colour), so it feeds the same GenEval rules engine as the real detector does.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from flowopd.mini.world import COLORS, GLYPH_GAP, SHAPES, SIZE, glyph_array, shape_mask

FG_THRESHOLD = 0.25  # colour distance (RGB in [0,1], max-abs) from the background that counts as an object
MIN_AREA = 6  # components smaller than this are specks, not objects
MIN_SIDE = 5  # world objects are >= 7 px wide; patch-sized (4x4) fragments are not objects


@dataclasses.dataclass
class ShapeDetection:
    """One detected object: class, box (x0, y0, x1, y1 in pixels), confidence, colour name, area."""

    cls: str
    box: tuple[float, float, float, float]
    score: float
    color: str
    area: int
    ious: dict[str, float]


def to_float_hwc(image: np.ndarray) -> np.ndarray:
    """uint8 or float HWC image -> float32 HWC in [0, 1]."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def background_colour(img: np.ndarray) -> np.ndarray:
    """The median colour of the one-pixel border."""
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    return np.median(border, axis=0)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected labelling (labels 1..n, 0 = background) by union-find over pixel runs."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    parent = [0]

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            up = labels[y - 1, x] if y else 0
            left = labels[y, x - 1] if x else 0
            if up and left:
                ru, rl = find(up), find(left)
                labels[y, x] = min(ru, rl)
                parent[max(ru, rl)] = min(ru, rl)
            elif up or left:
                labels[y, x] = up or left
            else:
                parent.append(len(parent))
                labels[y, x] = len(parent) - 1
    roots = {}
    for i in range(1, len(parent)):
        r = find(i)
        roots.setdefault(r, len(roots) + 1)
    lut = np.zeros(len(parent), dtype=np.int32)
    for i in range(1, len(parent)):
        lut[i] = roots[find(i)]
    return lut[labels], len(roots)


def _colour_name(rgb: np.ndarray) -> str:
    names = list(COLORS)
    pal = np.array([COLORS[n] for n in names], dtype=np.float32) / 255.0
    return names[int(np.argmin(((pal - rgb) ** 2).sum(1)))]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def detect(image: np.ndarray) -> list[ShapeDetection]:
    """Detect the objects in a mini image (HWC, uint8 or float in [0,1]); sorted by confidence."""
    img = to_float_hwc(image)
    bg = background_colour(img)
    fg = np.abs(img - bg).max(axis=-1) > FG_THRESHOLD
    labels, n = connected_components(fg)
    dets: list[ShapeDetection] = []
    for k in range(1, n + 1):
        comp = labels == k
        area = int(comp.sum())
        if area < MIN_AREA:
            continue
        ys, xs = np.nonzero(comp)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        w, h = int(x1 - x0), int(y1 - y0)
        if min(w, h) < MIN_SIDE:
            continue
        ious = {s: _iou(comp, shape_mask(s, int(x0), int(y0), w, h, size=comp.shape[0])) for s in SHAPES}
        ranked = sorted(ious.items(), key=lambda kv: -kv[1])
        (best, best_iou), (_, second_iou) = ranked[0], ranked[1]
        # confident when the mask matches one ideal shape well AND clearly better than the others
        fit = 1.0 / (1.0 + np.exp(-(best_iou - 0.72) / 0.04))
        margin = float(np.clip((best_iou - second_iou) / 0.12, 0.0, 1.0))
        aspect = float(np.exp(-(np.log(max(w, 1) / max(h, 1)) ** 2) / (2 * 0.3**2)))
        score = float(fit * margin * aspect)
        colour = _colour_name(np.median(img[comp], axis=0))
        dets.append(ShapeDetection(best, (float(x0), float(y0), float(x1), float(y1)), score, colour, area, ious))
    dets.sort(key=lambda d: -d.score)
    return dets


# ---------------------------------------------------------------- OCR


@dataclasses.dataclass
class OCRResult:
    """Read characters with their confidences; ``text`` keeps the confident ones."""

    chars: list[tuple[str, float]]
    text: str


def _templates() -> dict[str, np.ndarray]:
    return {d: glyph_array(d).astype(np.float32) for d in "0123456789"}


def _resample(block: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Area-average a 2-D array onto an (out_h, out_w) grid."""
    h, w = block.shape
    yi = np.minimum((np.arange(h) * out_h) // max(h, 1), out_h - 1)
    xi = np.minimum((np.arange(w) * out_w) // max(w, 1), out_w - 1)
    out = np.zeros((out_h, out_w), dtype=np.float32)
    cnt = np.zeros((out_h, out_w), dtype=np.float32)
    np.add.at(out, (yi[:, None], xi[None, :]), block)
    np.add.at(cnt, (yi[:, None], xi[None, :]), 1.0)
    return out / np.maximum(cnt, 1.0)


def read_text(image: np.ndarray, min_confidence: float = 0.75) -> OCRResult:
    """Read digits: ink = far from the background; one text band; columns split into glyphs; template match."""
    img = to_float_hwc(image)
    bg = background_colour(img)
    ink_strength = np.clip(np.abs(img - bg).max(axis=-1) / 0.6, 0.0, 1.0)
    ink = ink_strength > 0.5
    rows = np.nonzero(ink.sum(1) > 0)[0]
    if rows.size == 0:
        return OCRResult([], "")
    # the band: the longest run of inked rows (gaps of one row allowed)
    runs, start = [], rows[0]
    for a, b in zip(rows[:-1], rows[1:]):
        if b - a > 2:
            runs.append((start, a + 1))
            start = b
    runs.append((start, rows[-1] + 1))
    y0, y1 = max(runs, key=lambda r: (ink[r[0] : r[1]].sum(), r[1] - r[0]))
    band = ink[y0:y1]
    strength = ink_strength[y0:y1]
    cols = band.sum(0) > 0
    segments, x = [], 0
    while x < SIZE:
        if cols[x]:
            s = x
            while x < SIZE and cols[x]:
                x += 1
            segments.append((s, x))
        x += 1
    templates = _templates()
    chars: list[tuple[str, float]] = []
    height = y1 - y0
    glyph_w = max(1, round(height * 3 / 5))
    for s, e in segments:
        width = e - s
        pieces = max(1, round((width + GLYPH_GAP) / (glyph_w + GLYPH_GAP)))
        edges = np.linspace(s, e, pieces + 1).round().astype(int)
        for a, b in zip(edges[:-1], edges[1:]):
            block = strength[:, a:b]
            if block.size == 0 or (b - a) < 2 or height < 4:
                continue
            grid = _resample(block, 5, 3)
            dist = {d: float(np.abs(grid - t).mean()) for d, t in templates.items()}
            best = min(dist, key=dist.get)
            chars.append((best, 1.0 - dist[best]))
    text = "".join(c for c, conf in chars if conf >= min_confidence)
    return OCRResult(chars, text)
