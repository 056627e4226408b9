"""The mini world: vocabulary, the four prompt families and a procedural renderer.

Images are 32x32 RGB. Four tasks mirror the paper's four rewards:

- ``compose``: GenEval-style prompts over shapes, colours, counts and relations
  (tags single_object, two_object, counting, colors, position, color_attr),
  with GenEval's metadata format (``include`` / ``exclude`` clauses);
- ``text``: ``the text "42"``: 1-4 digits drawn in a fixed 3x5 bitmap font
  (scaled x2, dark on a light background);
- ``preference``: ``a big red circle on a gray background``: scored for
  matching the request and for composition (a PickScore analogue);
- ``quality``: two-object scenes on a coloured background, scored by a
  prompt-free image-quality measure (a DeQA analogue).

Everything is deterministic given a ``numpy.random.Generator``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any

import numpy as np

from flowopd.reward_models.geneval_rules import relative_position

SIZE = 32
SHAPES = ("square", "circle", "triangle")
PLURALS = {"square": "squares", "circle": "circles", "triangle": "triangles"}
# Object colours: a subset of GenEval's ten colour names, far apart in RGB.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (235, 215, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "purple": (150, 50, 200),
    "white": (240, 240, 240),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "gray": (110, 110, 110),
    "white": (240, 240, 240),
}
NUMBERS = {2: "two", 3: "three", 4: "four"}
RELATIONS = ("left of", "right of", "above", "below")
SIZES_WORDS = ("big", "small")
TASKS = ("compose", "text", "preference", "quality")
COMPOSE_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
TEXT_BG = (235, 235, 225)
TEXT_INK = (20, 20, 20)

# 3x5 digit glyphs; every glyph spans all three columns so segmentation is unambiguous.
FONT_3X5: dict[str, tuple[str, ...]] = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", ".##", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
}
FONT_SCALE = 2
GLYPH_W, GLYPH_H = 3 * FONT_SCALE, 5 * FONT_SCALE
GLYPH_GAP = 2


def glyph_array(digit: str) -> np.ndarray:
    """The 5x3 boolean bitmap of one digit."""
    return np.array([[c == "#" for c in row] for row in FONT_3X5[digit]], dtype=bool)


@dataclasses.dataclass(frozen=True)
class PromptRecord:
    """One prompt of the world, with its task tag and GenEval-style metadata."""

    prompt: str
    task: str
    metadata: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "task": self.task, **self.metadata}


# ---------------------------------------------------------------- prompts


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def compose_prompt(rng: np.random.Generator, tag: str | None = None, colour_counts: bool = False) -> PromptRecord:
    """A GenEval-style compositional prompt with its ``include``/``exclude`` metadata."""
    tag = tag or COMPOSE_TAGS[rng.integers(len(COMPOSE_TAGS))]
    colours = list(COLORS)
    if tag == "single_object":
        s = SHAPES[rng.integers(3)]
        include = [{"class": s, "count": 1}]
        text = f"a photo of a {s}"
    elif tag == "two_object":
        a, b = rng.choice(SHAPES, 2, replace=False).tolist()
        include = [{"class": a, "count": 1}, {"class": b, "count": 1}]
        text = f"a photo of a {a} and a {b}"
    elif tag == "counting":
        s = SHAPES[rng.integers(3)]
        n = int(rng.integers(2, 5))
        clause: dict[str, Any] = {"class": s, "count": n}
        colour = ""
        if colour_counts and rng.random() < 0.5:
            colour = colours[rng.integers(len(colours))]
            clause["color"] = colour
        include = [clause]
        text = f"a photo of {NUMBERS[n]} {colour + ' ' if colour else ''}{PLURALS[s]}"
        return PromptRecord(text, "compose", {"tag": tag, "include": include, "exclude": [{"class": s, "count": n + 1}]})
    elif tag == "colors":
        s = SHAPES[rng.integers(3)]
        c = colours[rng.integers(len(colours))]
        include = [{"class": s, "count": 1, "color": c}]
        text = f"a photo of {_article(c)} {c} {s}"
    elif tag == "position":
        a, b = rng.choice(SHAPES, 2, replace=False).tolist()
        rel = RELATIONS[rng.integers(4)]
        include = [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}]
        text = f"a photo of a {a} {rel} a {b}"
    elif tag == "color_attr":
        a, b = rng.choice(SHAPES, 2, replace=False).tolist()
        ca, cb = rng.choice(colours, 2, replace=False).tolist()
        include = [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}]
        text = f"a photo of {_article(ca)} {ca} {a} and {_article(cb)} {cb} {b}"
    else:
        raise ValueError(f"unknown compose tag {tag!r}; choose one of {', '.join(COMPOSE_TAGS)}")
    return PromptRecord(text, "compose", {"tag": tag, "include": include})


def text_prompt(rng: np.random.Generator, n_digits: int | None = None) -> PromptRecord:
    """``the text "4821"``: 1-4 digits, shorter strings more often."""
    n = n_digits or int(rng.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.2, 0.15]))
    digits = "".join(str(d) for d in rng.integers(0, 10, n))
    return PromptRecord(f'the text "{digits}"', "text", {"tag": "text", "text": digits})


def preference_prompt(rng: np.random.Generator) -> PromptRecord:
    """``a big red circle on a gray background``: one object, a size and a background."""
    size = SIZES_WORDS[rng.integers(2)]
    s = SHAPES[rng.integers(3)]
    bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    c = rng.choice([c for c in COLORS if c != bg]).item()
    meta = {"tag": "preference", "size": size, "shape": s, "color": c, "background": bg}
    return PromptRecord(f"a {size} {c} {s} on a {bg} background", "preference", meta)


def quality_prompt(rng: np.random.Generator) -> PromptRecord:
    """``a red square and a blue circle on a gray background``: a two-object scene."""
    a, b = rng.choice(SHAPES, 2, replace=False).tolist()
    bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    ca, cb = rng.choice([c for c in COLORS if c != bg], 2, replace=False).tolist()
    meta = {
        "tag": "quality",
        "background": bg,
        "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
    }
    return PromptRecord(f"{_article(ca)} {ca} {a} and {_article(cb)} {cb} {b} on a {bg} background", "quality", meta)


PROMPT_MAKERS = {"compose": compose_prompt, "text": text_prompt, "preference": preference_prompt, "quality": quality_prompt}
SPLITS = ("train", "test", "all")
# Tags with too few distinct prompts to hold any out (3 and 6 prompts): they appear in both splits.
UNSPLIT_TAGS = ("single_object", "two_object")


def is_heldout(record: PromptRecord) -> bool:
    """Whether a prompt belongs to the test split: a stable hash puts ~20% of prompts there.

    The hash is over the prompt without its "a photo of " prefix, so a
    prompt's variants share a split. Single-object and two-object prompts
    (3 and 6 of them) and one-digit texts (10) are never held out.
    """
    if record.metadata.get("tag") in UNSPLIT_TAGS or (record.task == "text" and len(record.metadata["text"]) < 2):
        return False
    key = record.prompt.removeprefix("a photo of ").encode()
    return int(hashlib.sha256(key).hexdigest(), 16) % 5 == 0


def in_split(record: PromptRecord, split: str) -> bool:
    if split == "all":
        return True
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    unsplit = record.metadata.get("tag") in UNSPLIT_TAGS or (record.task == "text" and len(record.metadata["text"]) < 2)
    return unsplit or is_heldout(record) == (split == "test")


def make_prompts(task: str, n: int, seed: int, split: str = "test", unique: bool = True, tag: str | None = None) -> list[PromptRecord]:
    """``n`` prompts of one task (and compose tag) from ``split``; with ``unique``, no text repeats while new ones exist."""
    if task not in PROMPT_MAKERS:
        raise ValueError(f"unknown mini task {task!r}; choose one of {', '.join(TASKS)}")
    rng = np.random.default_rng(seed)
    out: list[PromptRecord] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n:
        rec = compose_prompt(rng, tag) if task == "compose" and tag else PROMPT_MAKERS[task](rng)
        tries += 1
        if not in_split(rec, split):
            continue
        if unique and rec.prompt in seen and tries < 50 * n:
            continue
        seen.add(rec.prompt)
        out.append(rec)
    return out


def parse_prompt(prompt: str) -> PromptRecord:
    """Recover the task and metadata of a mini-world prompt from its text (the inverse of the makers)."""
    p = " ".join(prompt.lower().strip().split())
    if (m := re.fullmatch(r'(?:a photo of )?the text "([0-9]+)"', p)) or (m := re.search(r'"([^"]*)"', p)):
        return PromptRecord(prompt, "text", {"tag": "text", "text": m.group(1)})
    shape_re = "|".join(SHAPES)
    colour_re = "|".join(COLORS)
    bg_re = "|".join(BACKGROUNDS)
    if m := re.fullmatch(rf"an? (big|small) ({colour_re}) ({shape_re}) on an? ({bg_re}) background", p):
        size, c, s, bg = m.groups()
        return PromptRecord(prompt, "preference", {"tag": "preference", "size": size, "shape": s, "color": c, "background": bg})
    if m := re.fullmatch(rf"an? ({colour_re}) ({shape_re}) and an? ({colour_re}) ({shape_re}) on an? ({bg_re}) background", p):
        ca, a, cb, b, bg = m.groups()
        include = [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}]
        return PromptRecord(prompt, "quality", {"tag": "quality", "background": bg, "include": include})
    body = p[len("a photo of ") :] if p.startswith("a photo of ") else p
    obj = rf"(?:an? )?(?:({colour_re}) )?({shape_re})"
    if m := re.fullmatch(rf"(two|three|four) (?:({colour_re}) )?({'|'.join(PLURALS.values())})", body):
        n = {v: k for k, v in NUMBERS.items()}[m.group(1)]
        s = m.group(3)[:-1]
        clause: dict[str, Any] = {"class": s, "count": n}
        if m.group(2):
            clause["color"] = m.group(2)
        return PromptRecord(prompt, "compose", {"tag": "counting", "include": [clause], "exclude": [{"class": s, "count": n + 1}]})
    if m := re.fullmatch(rf"{obj} ({'|'.join(RELATIONS)}) {obj}", body):
        ca, a, rel, cb, b = m.groups()
        first: dict[str, Any] = {"class": b, "count": 1}
        second: dict[str, Any] = {"class": a, "count": 1, "position": [rel, 0]}
        if cb:
            first["color"] = cb
        if ca:
            second["color"] = ca
        return PromptRecord(prompt, "compose", {"tag": "position", "include": [first, second]})
    if m := re.fullmatch(rf"{obj} and {obj}", body):
        ca, a, cb, b = m.groups()
        inc = [{"class": a, "count": 1}, {"class": b, "count": 1}]
        if ca:
            inc[0]["color"] = ca
        if cb:
            inc[1]["color"] = cb
        return PromptRecord(prompt, "compose", {"tag": "color_attr" if (ca or cb) else "two_object", "include": inc})
    if m := re.fullmatch(obj, body):
        c, s = m.groups()
        clause = {"class": s, "count": 1}
        if c:
            clause["color"] = c
        return PromptRecord(prompt, "compose", {"tag": "colors" if c else "single_object", "include": [clause]})
    raise ValueError(
        f"not a mini-world prompt: {prompt!r}; write one like 'a photo of two red squares', "
        "'the text \"42\"' or 'a big red circle on a gray background' (see `flowopd mini prompts`)"
    )


# ---------------------------------------------------------------- renderer


def shape_mask(shape: str, x0: int, y0: int, w: int, h: int, size: int = SIZE) -> np.ndarray:
    """Boolean mask of ``shape`` filling the box (x0, y0, w, h); pixel centres at +0.5."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    inside = (xs >= x0) & (xs < x0 + w) & (ys >= y0) & (ys < y0 + h)
    if shape == "square":
        return inside
    cx, cy = x0 + w / 2, y0 + h / 2
    if shape == "circle":
        return ((xs - cx) / (w / 2)) ** 2 + ((ys - cy) / (h / 2)) ** 2 <= 1.0
    if shape == "triangle":  # apex at top centre, base at the bottom
        t = (ys - y0) / h
        return inside & (np.abs(xs - cx) <= t * w / 2 + 0.25)
    raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")


def _overlaps(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]], gap: int = 2) -> bool:
    x, y, w, h = box
    return any(x < bx + bw + gap and bx < x + w + gap and y < by + bh + gap and by < y + h + gap for bx, by, bw, bh in boxes)


@dataclasses.dataclass
class Scene:
    """What the renderer drew: objects as (shape, colour name, box x0, y0, w, h)."""

    background: str
    objects: list[tuple[str, str, tuple[int, int, int, int]]]
    text: str | None = None


def _place(rng: np.random.Generator, sizes: list[int], tries: int = 400) -> list[tuple[int, int, int, int]]:
    for _ in range(tries):
        boxes: list[tuple[int, int, int, int]] = []
        for s in sizes:
            for _ in range(50):
                # even coordinates: 4 sub-patch alignments instead of 16, so the base learns shapes sooner
                box = (2 * int(rng.integers(1, (SIZE - s + 1) // 2)), 2 * int(rng.integers(1, (SIZE - s + 1) // 2)), s, s)
                if not _overlaps(box, boxes):
                    boxes.append(box)
                    break
        if len(boxes) == len(sizes):
            return boxes
    raise RuntimeError("could not place objects without overlap")


def _xyxy(box: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = box
    return np.array([x, y, x + w, y + h], dtype=float)


def scene_for(record: PromptRecord, rng: np.random.Generator) -> Scene:
    """A random scene that satisfies ``record`` (the ground truth the base is trained on)."""
    meta = record.metadata
    if record.task == "text":
        return Scene("text", [], text=meta["text"])
    colours = list(COLORS)
    if record.task == "preference":
        s = int(rng.integers(18, 23)) if meta["size"] == "big" else int(rng.integers(7, 10))
        c = (SIZE - s) / 2
        jitter = 1 if meta["size"] == "big" else 3
        x = int(np.clip(round(c + rng.integers(-jitter, jitter + 1)), 0, SIZE - s))
        y = int(np.clip(round(c + rng.integers(-jitter, jitter + 1)), 0, SIZE - s))
        return Scene(meta["background"], [(meta["shape"], meta["color"], (x, y, s, s))])
    bg = meta.get("background", "black")
    include = meta["include"]
    if meta["tag"] == "counting":
        n = include[0]["count"]
        size_range = {2: (9, 12), 3: (8, 10), 4: (7, 9)}[n]
        sizes = [int(rng.integers(*size_range))] * n
        colour = include[0].get("color")
        boxes = _place(rng, sizes)
        objs = [(include[0]["class"], colour or colours[rng.integers(len(colours))], b) for b in boxes]
        return Scene(bg, objs)
    if meta["tag"] == "position":
        target, mover = include[0], include[1]
        rel = mover["position"][0]
        for _ in range(1000):
            sa, sb = int(rng.integers(9, 13)), int(rng.integers(9, 13))
            ba, bb = _place(rng, [sa, sb])
            if (
                not _overlaps(ba, [bb])
                and rel in relative_position(_xyxy(ba), _xyxy(bb))
                and len(relative_position(_xyxy(ba), _xyxy(bb))) == 1
            ):
                ca = mover.get("color") or colours[rng.integers(len(colours))]
                cb = target.get("color") or colours[rng.integers(len(colours))]
                return Scene(bg, [(mover["class"], ca, ba), (target["class"], cb, bb)])
        raise RuntimeError(f"could not lay out {record.prompt!r}")
    if len(include) == 1:
        s = int(rng.integers(12, 19))
        (box,) = _place(rng, [s])
        c = include[0].get("color") or colours[rng.integers(len(colours))]
        return Scene(bg, [(include[0]["class"], c, box)])
    bg_excl = [c for c in colours if c != bg]
    sizes = [int(rng.integers(9, 14)) for _ in include]
    boxes = _place(rng, sizes)
    objs = []
    for clause, box in zip(include, boxes):
        c = clause.get("color") or bg_excl[rng.integers(len(bg_excl))]
        objs.append((clause["class"], c, box))
    return Scene(bg, objs)


def draw_text(img: np.ndarray, text: str, dx: int = 0, dy: int = 0) -> None:
    """Draw ``text`` centred (plus an offset) in the 3x5 font scaled x2, in place."""
    width = len(text) * GLYPH_W + (len(text) - 1) * GLYPH_GAP
    x = (SIZE - width) // 2 + dx
    y = (SIZE - GLYPH_H) // 2 + dy
    for ch in text:
        g = np.kron(glyph_array(ch), np.ones((FONT_SCALE, FONT_SCALE), dtype=bool))
        region = img[y : y + GLYPH_H, x : x + GLYPH_W]
        region[g[: region.shape[0], : region.shape[1]]] = TEXT_INK
        x += GLYPH_W + GLYPH_GAP


def render_scene(scene: Scene, rng: np.random.Generator | None = None) -> np.ndarray:
    """Render a scene to a uint8 ``[32, 32, 3]`` array."""
    if scene.text is not None:
        # A fixed layout: with 6 px glyphs, 2 px gaps and centring, every glyph starts at the same
        # offset inside its 4 px patches whatever the digit count, so each glyph is one thing to learn.
        img = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
        img[:] = TEXT_BG
        draw_text(img, scene.text)
        return img
    img = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    img[:] = BACKGROUNDS[scene.background]
    for shape, colour, (x, y, w, h) in scene.objects:
        img[shape_mask(shape, x, y, w, h)] = COLORS[colour]
    return img


def render(record: PromptRecord, rng: np.random.Generator) -> np.ndarray:
    """A ground-truth uint8 image for a prompt record."""
    return render_scene(scene_for(record, rng), rng)


DEFAULT_TASK_MIX = {"compose": 0.45, "text": 0.30, "preference": 0.15, "quality": 0.10}


def training_record(rng: np.random.Generator, mix: dict[str, float] | None = None) -> PromptRecord:
    """One pre-training prompt from the train split: the four families mixed by ``mix``, with phrasing variety."""
    mix = mix or DEFAULT_TASK_MIX
    tasks = list(TASKS)
    p = np.array([mix.get(t, 0.0) for t in tasks], dtype=float)
    p = (p / p.sum()).tolist()
    while True:
        task = rng.choice(tasks, p=p).item()
        rec = compose_prompt(rng, colour_counts=True) if task == "compose" else PROMPT_MAKERS[task](rng)
        if is_heldout(rec):
            continue
        if task == "compose" and rng.random() < 0.2:  # also learn prompts without the "a photo of" prefix
            rec = PromptRecord(rec.prompt.removeprefix("a photo of "), rec.task, rec.metadata)
        return rec
