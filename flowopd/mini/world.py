"""The mini world (v2): vocabulary, the four prompt families and a procedural renderer.

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

World v2 (the first world's base drew a recognisable single object 15% of the
time and multi-object scenes never, so GRPO had nothing to work with):

- objects sit on the model's 4 px patch grid with sides of whole patches
  (8-20 px), so each patch holds one of a few edge patterns;
- the preference family's data also shows big objects at 16 px and objects off
  centre by one or two patches, while the judge prefers them centred at 24 px
  (big) or 8 px (small); the quality family's data is degraded (noise, blur,
  fading, specks) 60% of the time, which the prompt never says and the quality
  judge penalises. Like a web-trained model, the base learns the whole spread,
  so the two judges' teachers have a mode to find.

Everything is deterministic given a ``numpy.random.Generator``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any

import numpy as np

from flowopd.reward_models.geneval_rules import relative_position
from flowopd.tasks import PromptRecord, unknown_tasks_message

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
TASKS = ("compose", "text", "preference", "quality")  # the core's four tasks (flowopd.tasks), each with its prompt maker below
if (_unknown := unknown_tasks_message(TASKS, "the mini world")) is not None:
    raise ImportError(_unknown)
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
TEXT_LENGTHS = (0.1, 0.3, 0.3, 0.3)  # probability of 1, 2, 3, 4 digits
# The text family's data misquote: each digit of a training render is another digit with this probability (as web
# images' captions quote their text loosely), so the base spells only about as well as its data and an OCR teacher has
# room above it. At 0 (world v2's first stage) the base read back 1.000: nothing left to learn; at 0.4 it read 0.703
# (CFG sharpens towards the quoted digits, so the base spells better than its data).
TEXT_TYPO_RATE = 0.5

# World v2 layout: objects on the model's 4 px patch grid (offset 2 px, inside a 2 px margin), sides in whole patches.
GRID, GRID_OFFSET = 4, 2
SINGLE_SIDES = (12, 16, 20)  # single_object, colors
PAIR_SIDES = (12,)  # two_object, position, color_attr, the quality family (8 px shapes came out too ragged to detect)
COUNT_SIDES = {2: (12,), 3: (12,), 4: (12,)}
# The preference family: the judge prefers the object centred at PREFERRED_SIDE; the data spread wider.
PREFERRED_SIDE = {"big": 24, "small": 8}
PREFERENCE_SIDES = {"big": (16, 24), "small": (8,)}
PREFERENCE_OFFSETS = {"big": (-4, 0, 4), "small": (-8, -4, 0, 4, 8)}
# The quality family: a share of its data is degraded (the prompt never says how); the quality judge prefers clean.
FINISHES = ("clean", "noisy", "blurred", "faded", "speckled")
DEGRADED_SHARE = 0.6


def glyph_array(digit: str) -> np.ndarray:
    """The 5x3 boolean bitmap of one digit."""
    return np.array([[c == "#" for c in row] for row in FONT_3X5[digit]], dtype=bool)


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
    """``the text "4821"``: 1-4 digits (``TEXT_LENGTHS``: mostly 2-4; one digit was too easy to leave a teacher room)."""
    n = n_digits or int(rng.choice([1, 2, 3, 4], p=TEXT_LENGTHS))
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
    include = [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}]
    meta = {"tag": "quality", "background": bg, "include": include}
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
    finish: str = "clean"  # or a degraded finish (``FINISHES``): the quality family's data only


def _place(rng: np.random.Generator, sizes: list[int], tries: int = 400) -> list[tuple[int, int, int, int]]:
    """Non-overlapping square boxes of the given sides, each drawn uniformly from the grid positions still free.

    On the 4 px patch grid (``GRID``, offset ``GRID_OFFSET``): every edge falls 2 px into a patch, one edge
    pattern per shape for the model to learn, and nothing touches the border (the scorers take the border's
    median colour for the background).
    """
    for _ in range(tries):
        boxes: list[tuple[int, int, int, int]] = []
        for s in sizes:
            spots = range(GRID_OFFSET, SIZE - GRID_OFFSET - s + 1, GRID)
            free = [(x, y, s, s) for y in spots for x in spots if not _overlaps((x, y, s, s), boxes)]
            if not free:
                break
            boxes.append(free[int(rng.integers(len(free)))])
        else:
            return boxes
    raise RuntimeError(f"could not place objects of sides {sizes} without overlap")


def _xyxy(box: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = box
    return np.array([x, y, x + w, y + h], dtype=float)


def _sides(rng: np.random.Generator, choices: tuple[int, ...], n: int = 1) -> list[int]:
    return [int(choices[rng.integers(len(choices))]) for _ in range(n)]


def preference_scene(meta: dict[str, Any], rng: np.random.Generator | None) -> Scene:
    """One object on the requested background: the preferred framing (``rng`` None) or one drawn from the data's spread.

    The judge prefers the object centred at the canonical side for its size word
    (``PREFERRED_SIDE``); the pre-training data, like web images, also holds
    smaller big objects and off-centre ones (``PREFERENCE_SIDES``, ``PREFERENCE_OFFSETS``).
    """
    if rng is None:
        side, dx, dy = PREFERRED_SIDE[meta["size"]], 0, 0
    else:
        side = _sides(rng, PREFERENCE_SIDES[meta["size"]])[0]
        offsets = PREFERENCE_OFFSETS[meta["size"]]
        dx, dy = (int(offsets[i]) for i in rng.integers(len(offsets), size=2))
    x0 = (SIZE - side) // 2 + dx
    y0 = (SIZE - side) // 2 + dy
    return Scene(meta["background"], [(meta["shape"], meta["color"], (x0, y0, side, side))])


def misquote(text: str, rng: np.random.Generator, rate: float = TEXT_TYPO_RATE) -> str:
    """``text`` with each digit replaced, with probability ``rate``, by one of the nine other digits."""
    out = []
    for ch in text:
        if rng.random() < rate:
            ch = str((int(ch) + 1 + int(rng.integers(9))) % 10)
        out.append(ch)
    return "".join(out)


def scene_for(record: PromptRecord, rng: np.random.Generator, ideal: bool = False, typo_rate: float = TEXT_TYPO_RATE) -> Scene:
    """A random scene for ``record`` (the data the base is trained on).

    ``ideal`` draws what the judges prefer where the data spread wider: the
    preference family centred at its preferred side, the quality family clean,
    the text spelt as quoted (otherwise each digit is misquoted at ``typo_rate``).
    """
    meta = record.metadata
    if record.task == "text":
        return Scene("text", [], text=meta["text"] if ideal else misquote(meta["text"], rng, typo_rate))
    colours = list(COLORS)
    if record.task == "preference":
        return preference_scene(meta, None if ideal else rng)
    bg = meta.get("background", "black")
    include = meta["include"]
    if meta["tag"] == "counting":
        n = include[0]["count"]
        sides = _sides(rng, COUNT_SIDES[n]) * n
        colour = include[0].get("color")
        objs = [(include[0]["class"], colour or colours[rng.integers(len(colours))], b) for b in _place(rng, sides)]
        return Scene(bg, objs)
    if meta["tag"] == "position":
        target, mover = include[0], include[1]
        rel = mover["position"][0]
        for _ in range(1000):
            ba, bb = _place(rng, _sides(rng, PAIR_SIDES, 2))
            rels = relative_position(_xyxy(ba), _xyxy(bb))
            if rel in rels and len(rels) == 1:
                ca = mover.get("color") or colours[rng.integers(len(colours))]
                cb = target.get("color") or colours[rng.integers(len(colours))]
                return Scene(bg, [(mover["class"], ca, ba), (target["class"], cb, bb)])
        raise RuntimeError(f"could not lay out {record.prompt!r}")
    if len(include) == 1:
        (box,) = _place(rng, _sides(rng, SINGLE_SIDES))
        c = include[0].get("color") or colours[rng.integers(len(colours))]
        return Scene(bg, [(include[0]["class"], c, box)])
    bg_excl = [c for c in colours if c != bg]
    objs = []
    for clause, box in zip(include, _place(rng, _sides(rng, PAIR_SIDES, len(include)))):
        c = clause.get("color") or bg_excl[rng.integers(len(bg_excl))]
        objs.append((clause["class"], c, box))
    finish = "clean"
    if record.task == "quality" and not ideal and rng.random() < DEGRADED_SHARE:
        finish = FINISHES[1 + int(rng.integers(len(FINISHES) - 1))]
    return Scene(bg, objs, finish=finish)


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
    """Render a scene to a uint8 ``[32, 32, 3]`` array (``rng`` draws a degraded finish's noise and specks)."""
    img = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    if scene.text is not None:
        # A fixed layout: with 6 px glyphs, 2 px gaps and centring, every glyph starts at the same
        # offset inside its 4 px patches whatever the digit count, so each glyph is one thing to learn.
        img[:] = TEXT_BG
        draw_text(img, scene.text)
        return img
    img[:] = BACKGROUNDS[scene.background]
    for shape, colour, (x, y, w, h) in scene.objects:
        img[shape_mask(shape, x, y, w, h)] = COLORS[colour]
    if scene.finish != "clean":
        img = degrade(img, scene.finish, BACKGROUNDS[scene.background], rng if rng is not None else np.random.default_rng(0))
    return img


def degrade(img: np.ndarray, finish: str, background: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """The quality family's degraded finishes, as web images have them: sensor noise, blur, a faded print, specks."""
    x = img.astype(np.float32) / 255.0
    bg = np.array(background, dtype=np.float32) / 255.0
    if finish == "noisy":
        x = x + rng.normal(0.0, 0.07, x.shape)
    elif finish == "blurred":  # 3x3 box blur, edges replicated
        pad = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
        x = sum(pad[dy : dy + SIZE, dx : dx + SIZE] for dy in range(3) for dx in range(3)) / 9.0
    elif finish == "faded":  # 40% of the way to the background: washed-out colours
        x = 0.6 * x + 0.4 * bg
    elif finish == "speckled":  # 3-6 one-pixel specks of object colours, each on open background
        palette = np.array([c for c in COLORS.values() if np.abs(np.array(c) / 255.0 - bg).max() > 0.3], dtype=np.float32) / 255.0
        is_bg = np.pad(np.abs(x - bg).max(-1) < 1e-3, 1, constant_values=True)
        open_bg = np.argwhere(np.all([is_bg[dy : dy + SIZE, dx : dx + SIZE] for dy in range(3) for dx in range(3)], axis=0))
        for y, xx in open_bg[rng.choice(len(open_bg), size=int(rng.integers(3, 7)), replace=False)]:
            x[y, xx] = palette[rng.integers(len(palette))]
    else:
        raise ValueError(f"unknown finish {finish!r}; choose one of {', '.join(FINISHES)}")
    return (np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def render(record: PromptRecord, rng: np.random.Generator, ideal: bool = False, typo_rate: float = TEXT_TYPO_RATE) -> np.ndarray:
    """A uint8 image for a prompt record as the data draw it (``ideal``: the judges' preferred framing, finish and spelling)."""
    return render_scene(scene_for(record, rng, ideal, typo_rate), rng)


# compose needs the most data (six tags of layouts); text, learnt fastest, the least (at 30% it passed 0.7 OCR in 3000 steps)
DEFAULT_TASK_MIX = {"compose": 0.55, "text": 0.15, "preference": 0.15, "quality": 0.15}


def training_record(rng: np.random.Generator, mix: dict[str, float] | None = None, tags: dict[str, float] | None = None) -> PromptRecord:
    """One pre-training prompt from the train split: the families mixed by ``mix``, compose tags by ``tags`` (uniform if None)."""
    mix = mix or DEFAULT_TASK_MIX
    tasks, p = list(TASKS), np.array([mix.get(t, 0.0) for t in TASKS], dtype=float)
    p = (p / p.sum()).tolist()
    while True:
        task = rng.choice(tasks, p=p).item()
        tag = rng.choice(list(tags), p=np.array(list(tags.values())) / sum(tags.values())).item() if tags and task == "compose" else None
        rec = compose_prompt(rng, tag, colour_counts=True) if task == "compose" else PROMPT_MAKERS[task](rng)
        if is_heldout(rec):
            continue
        if task == "compose" and rng.random() < 0.2:  # also learn prompts without the "a photo of" prefix
            rec = PromptRecord(rec.prompt.removeprefix("a photo of "), rec.task, rec.metadata)
        return rec


class MiniWorld:
    """The mini world as a prompt world (:class:`flowopd.tasks.PromptWorld`): its four tasks on its train / test split."""

    name = "mini"
    tasks = TASKS
    task_mix = DEFAULT_TASK_MIX  # the prompts of a reward with no task of its own (a plugin's)

    def training_prompt(self, task: str, rng: np.random.Generator) -> PromptRecord:
        while not in_split(rec := PROMPT_MAKERS[task](rng), "train"):
            pass
        return rec

    def prompts(self, task: str, n: int, seed: int, split: str = "test") -> list[PromptRecord]:
        return make_prompts(task, n, seed, split=split)


WORLD = MiniWorld()
