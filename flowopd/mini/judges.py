"""Continuous judges of the mini world: a preference score (PickScore analogue) and an image-quality score (DeQA analogue).

Both are deterministic functions of the pixels, documented term by term, and
neither is maximised by a blank image. World v2: each is a **weighted
geometric mean** of its terms, ``prod t_k^(w_k / sum w)``, so one bad term
sinks the score (a weighted sum let the base sit at 0.77 preference and 4.1/5
quality by getting the easy terms right); and each prefers one mode of what the
pre-training data shows (``flowopd.mini.world``: the preference family's data
is also off-centre and smaller, a share of the quality family's is degraded),
as a human-preference model prefers some of the pictures a web-trained model
draws. What the judges prefer (``world.render(..., ideal=True)``) scores
>= 0.98 of the scale; the data's own spread scores about 0.46 and 3.2/5.

**Preference** in [0, 1] asks "does this look like what was asked, and is it
well composed?". Terms (each in [0, 1]; weights), over the terms the prompt
specifies:

- ``background`` (0.15): ``exp(-|bg - requested bg|^2 / 2 0.15^2)``, bg = median border colour;
- ``colour`` (0.30): mean over foreground pixels of ``exp(-|p - c|^2 / 2 0.2^2)``, c the nearest requested colour;
- ``size`` (0.20): foreground fraction against the requested shape drawn at its preferred side
  (``world.PREFERRED_SIDE``: big 24 px, small 8 px), ``exp(-log(frac / target)^2 / 2 0.35^2)``;
- ``shape`` (0.20): for the k largest components (k requested objects), the mean IoU of each with
  its best requested ideal shape in its box, times the share of the foreground they hold (clean objects);
- ``composition`` (0.15, always): ``exp(-d^2 / 2 0.12^2)``, d = distance of the foreground's
  bounding-box centre from the image centre in half-widths (4 px off: 0.61; 8 px: 0.14).

Compose prompts imply a black background. No foreground means zero colour,
size, shape and composition, so a blank image scores ~0.

**Quality** in [1, 5] is prompt-free: ``1 + 4 q``, q the weighted geometric mean of

- ``noise`` (0.30): ``exp(-median|laplacian(luma)| / 0.02)``; flat regions dominate the median,
  so clean renders score 1 and sensor-like noise drives it to 0;
- ``fidelity`` (0.25): mean over foreground pixels of ``exp(-d^2 / 2 0.06^2)``, d the distance to the
  nearest colour the world draws with (objects, backgrounds, ink, paper): washed-out or muddy
  colours fall; 0 without a foreground;
- ``clean`` (0.25): ``exp(-specks)``, specks = foreground components under 6 px;
- ``sharp`` (0.20): ``exp(-halo / 0.15)``, halo = faint pixels (distance 0.06 to half the
  object contrast) per foreground pixel: blur and fringes raise it.

Each degraded finish of the data (noisy, blurred, faded, speckled) costs a clean
render more than 1 point (``tests/test_mini_scorers.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flowopd.mini.perception import FG_THRESHOLD, MIN_AREA, background_colour, connected_components, to_float_hwc
from flowopd.mini.world import BACKGROUNDS, COLORS, PREFERRED_SIDE, TEXT_BG, TEXT_INK, shape_mask

IDEAL_FILL = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}
PREFERENCE_WEIGHTS = {"background": 0.15, "colour": 0.30, "size": 0.20, "shape": 0.20, "composition": 0.15}
COLOUR_TOLERANCE, SIZE_TOLERANCE, CENTRE_TOLERANCE = 0.2, 0.35, 0.12
QUALITY_WEIGHTS = {"noise": 0.30, "fidelity": 0.25, "clean": 0.25, "sharp": 0.20}
NOISE_SCALE, FIDELITY_TOLERANCE, SPECK_SCALE, HALO_SCALE = 0.02, 0.06, 1.0, 0.15
# every colour the world draws with: objects, backgrounds, text ink and paper
PALETTE = np.array([*COLORS.values(), *BACKGROUNDS.values(), TEXT_BG, TEXT_INK], dtype=np.float32) / 255.0


def _rgb(name: str, table: dict[str, tuple[int, int, int]]) -> np.ndarray:
    return np.array(table[name], dtype=np.float32) / 255.0


def preference_request(meta: dict[str, Any] | None) -> dict[str, Any]:
    """What a prompt asks for: ``background``, ``size``, and the ``colors`` and ``shapes`` of its objects, where given."""
    meta = meta or {}
    req: dict[str, Any] = {k: meta[k] for k in ("background", "size") if meta.get(k)}
    colors = [meta["color"]] if meta.get("color") else []
    shapes = [meta["shape"]] if meta.get("shape") else []
    for clause in meta.get("include") or []:
        shapes += [clause["class"]] * int(clause.get("count", 1))
        if clause.get("color"):
            colors.append(clause["color"])
    if colors:
        req["colors"] = colors
    if shapes:
        req["shapes"] = shapes
    if meta.get("tag") in {"single_object", "two_object", "counting", "colors", "position", "color_attr"}:
        req.setdefault("background", "black")
    return req


def _weighted_geometric_mean(terms: dict[str, float], weights: dict[str, float]) -> float:
    """``prod t_k^(w_k / sum w)`` over the present terms: one term near 0 sinks the score, as it should."""
    total = sum(weights[k] for k in terms)
    return float(np.exp(sum(weights[k] * np.log(max(v, 1e-6)) for k, v in terms.items()) / total))


def preference_score(image: np.ndarray, meta: dict[str, Any] | None) -> tuple[float, dict[str, float]]:
    """The preference score in [0, 1] and its terms."""
    img = to_float_hwc(image)
    req = preference_request(meta)
    bg = background_colour(img)
    dist = np.abs(img - bg).max(axis=-1)
    fg = dist > FG_THRESHOLD
    terms: dict[str, float] = {}
    if req.get("background") in BACKGROUNDS:
        terms["background"] = float(np.exp(-((bg - _rgb(req["background"], BACKGROUNDS)) ** 2).sum() / (2 * 0.15**2)))
    shapes = [s for s in req.get("shapes", []) if s in IDEAL_FILL]
    colors = [c for c in req.get("colors", []) if c in COLORS]
    if not fg.any():
        terms.update({k: 0.0 for k, present in (("colour", colors), ("size", "size" in req), ("shape", shapes)) if present})
        terms["composition"] = 0.0
    else:
        if colors:  # each foreground pixel against the nearest requested colour
            pal = np.stack([_rgb(c, COLORS) for c in colors])
            d2 = ((img[fg][:, None, :] - pal[None]) ** 2).sum(-1).min(1)
            terms["colour"] = float(np.exp(-d2 / (2 * COLOUR_TOLERANCE**2)).mean())
        if "size" in req:
            side = PREFERRED_SIDE[req["size"]]  # the area of the ideal shape as drawn at its preferred side
            target = shape_mask(shapes[0] if shapes else "circle", 0, 0, side, side).mean()
            terms["size"] = float(np.exp(-(np.log(fg.mean() / target) ** 2) / (2 * SIZE_TOLERANCE**2)))
        if shapes:
            terms["shape"] = _shape_fit(fg, shapes)
        ys, xs = np.nonzero(fg)
        h, w = fg.shape
        d = np.hypot((xs.min() + xs.max() + 1) / 2 - w / 2, (ys.min() + ys.max() + 1) / 2 - h / 2) / (w / 2)  # box centre
        terms["composition"] = float(np.exp(-(d**2) / (2 * CENTRE_TOLERANCE**2)))
    return _weighted_geometric_mean(terms, PREFERENCE_WEIGHTS), terms


def _shape_fit(fg: np.ndarray, shapes: list[str]) -> float:
    """The k largest components (k requested objects), each against its best-fitting requested shape, times their share of
    the foreground (clean objects); a missing object counts as a zero fit."""
    labels, _ = connected_components(fg)
    areas = np.bincount(labels.ravel())[1:]
    top = np.argsort(-areas)[: len(shapes)] + 1
    ious = []
    for k in top:
        comp = labels == k
        ys, xs = np.nonzero(comp)
        x0, y0, w, h = int(xs.min()), int(ys.min()), int(xs.max()) + 1 - int(xs.min()), int(ys.max()) + 1 - int(ys.min())
        ideals = [shape_mask(s, x0, y0, w, h, size=comp.shape[0]) for s in set(shapes)]
        ious.append(max((comp & m).sum() / (comp | m).sum() for m in ideals))
    ious += [0.0] * (len(shapes) - len(ious))
    return float(np.mean(ious) * areas[top - 1].sum() / fg.sum())


def _laplacian(x: np.ndarray) -> np.ndarray:
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    h, w = x.shape
    out = np.zeros((h - 2, w - 2), dtype=np.float32)
    for dy in range(3):
        for dx in range(3):
            out += k[dy, dx] * x[dy : dy + h - 2, dx : dx + w - 2]
    return out


def quality_score(image: np.ndarray) -> tuple[float, dict[str, float]]:
    """The quality score in [1, 5] and its terms (each in [0, 1])."""
    img = to_float_hwc(image)
    luma = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    terms = {"noise": float(np.exp(-np.median(np.abs(_laplacian(luma))) / NOISE_SCALE))}
    bg = background_colour(img)
    dist = np.abs(img - bg).max(axis=-1)
    fg = dist > FG_THRESHOLD
    if fg.sum() == 0:
        terms.update(fidelity=0.0, clean=0.0, sharp=0.0)
    else:
        d2 = ((img[fg][:, None, :] - PALETTE[None]) ** 2).sum(-1).min(1)
        terms["fidelity"] = float(np.exp(-d2 / (2 * FIDELITY_TOLERANCE**2)).mean())
        labels, _ = connected_components(fg)
        areas = np.bincount(labels.ravel())[1:]
        terms["clean"] = float(np.exp(-(areas < MIN_AREA).sum() / SPECK_SCALE))
        contrast = float(np.percentile(dist[fg], 90))
        halo = ((dist > 0.06) & (dist < 0.5 * contrast)).sum() / fg.sum()
        terms["sharp"] = float(np.exp(-halo / HALO_SCALE))
    return 1.0 + 4.0 * _weighted_geometric_mean(terms, QUALITY_WEIGHTS), terms
