"""Example flowopd suite plugin: ``mini-colours``, colour fidelity of single objects on the mini world.

Every colour x shape of the mini world ("a photo of a red square", ...), two
images each, scored by the mini GenEval reward; reported as the official
strict accuracy overall and per colour, with 95% intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowopd.benchmarks.stats import mean_ci
from flowopd.benchmarks.suites import Suite

COLOURS = ("red", "yellow", "green", "blue", "purple", "white")
SHAPES = ("square", "circle", "triangle")


def _items(suite: Suite, limit: int | None, seed: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(task, prompt, metadata) per prompt: GenEval's metadata, so the GenEval rules can score it; ``limit`` per colour."""
    items = []
    for colour in COLOURS:
        for shape in SHAPES[:limit]:
            meta = {"tag": "colors", "color": colour, "include": [{"class": shape, "count": 1, "color": colour}]}
            items.append(("compose", f"a photo of a {colour} {shape}", meta))
    return items


def _aggregate(suite: Suite, records: list[dict[str, Any]], rewards: Sequence[str]) -> dict[str, Any]:
    """Strict accuracy (``details.correct``) over every scored image, and per colour."""
    scored = [r for r in records if not r["scores"]["mini_geneval"].get("failed")]
    correct = [float(r["scores"]["mini_geneval"]["details"]["correct"]) for r in scored]
    metrics = {"accuracy": mean_ci(correct)} if correct else {}
    for colour in COLOURS:
        mine = [float(r["scores"]["mini_geneval"]["details"]["correct"]) for r in scored if r["metadata"]["color"] == colour]
        if mine:
            metrics[f"accuracy/{colour}"] = mean_ci(mine)
    return metrics


SUITE = Suite(
    "mini-colours",
    "colour fidelity on the mini world: every colour x shape, strict GenEval accuracy overall and per colour",
    "mini",
    2,
    ("mini_geneval",),
    group_key="color",
    build_items=_items,
    aggregate=_aggregate,
)
