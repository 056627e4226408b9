"""The ``mini`` suite: the four mini tasks on held-out prompts, every applicable reward on every image.

The runner (:mod:`flowopd.benchmarks.runner`) samples and scores; this module says which prompts and how they
aggregate. It is a registry entry of :data:`flowopd.benchmarks.suites.SUITES` (``flowopd.mini.suite:SUITE``).

Primary metrics (one per task, like the paper's Table 2):

- ``compose``: GenEval-style: strict accuracy per tag, overall = unweighted mean of the six tags;
- ``text``: mean OCR reward (and exact-match accuracy);
- ``preference``: mean preference score in [0, 1];
- ``quality``: mean quality score in [1, 5].

Secondary rewards are scored on every image where they apply, so a reward
that is quietly hacked shows up in the others. A prompt that recurs in a task
(the mini world has only three single-object prompts) continues its image
indices, so no two images share a seed (:func:`flowopd.benchmarks.suites.jobs_for`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowopd.benchmarks.stats import mean_ci, mean_of_means_ci
from flowopd.benchmarks.suites import Job, Suite

SECONDARY = {
    "compose": ["mini_preference", "mini_quality"],
    "text": ["mini_preference", "mini_quality"],
    "preference": ["mini_quality"],
    "quality": ["mini_geneval", "mini_preference"],
}


DEFAULT_PROMPTS_PER_TASK = 48
MAX_PROMPTS_PER_TASK = 1000  # a larger --limit is capped here: the held-out prompts repeat long before (a --limit of 1e8 hung)


def suite_prompts(prompts_per_task: int = DEFAULT_PROMPTS_PER_TASK, seed: int = 0, split: str = "test") -> list[tuple[str, Any]]:
    """(task, PromptRecord) pairs: compose per tag, the other tasks whole; held-out prompts (``split="test"``) by default."""
    from flowopd.mini import world

    prompts_per_task = min(prompts_per_task, MAX_PROMPTS_PER_TASK)
    items: list[tuple[str, Any]] = []
    for t_index, task in enumerate(world.TASKS):
        if task == "compose":
            for g_index, tag in enumerate(world.COMPOSE_TAGS):
                recs = world.make_prompts("compose", prompts_per_task, 10_000 + 100 * seed + g_index, split=split, tag=tag)
                items += [(task, r) for r in recs]
        else:
            recs = world.make_prompts(task, prompts_per_task, 20_000 + 100 * seed + t_index, split=split)
            items += [(task, r) for r in recs]
    return items


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-task primary metrics, per-tag GenEval accuracies, and every secondary reward's mean."""
    from flowopd.mini.world import COMPOSE_TAGS

    metrics: dict[str, Any] = {}
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r)
    compose = by_task.get("compose", [])
    if compose:
        tags = {
            t: [float(r["scores"]["mini_geneval"]["details"]["correct"]) for r in compose if r["metadata"]["tag"] == t]
            for t in COMPOSE_TAGS
        }
        metrics["compose/geneval_overall"] = mean_of_means_ci([v for v in tags.values() if v])
        for t, v in tags.items():
            if v:
                metrics[f"compose/geneval_{t}"] = mean_ci(v)
    from flowopd.benchmarks.suites import _raw_range

    for task, rows in by_task.items():
        for name in rows[0]["scores"]:
            metrics[f"{task}/{name}"] = mean_ci([r["scores"][name]["raw"] for r in rows], bounds=_raw_range(name))
    if by_task.get("text"):
        metrics["text/exact_match"] = mean_ci([float(r["scores"]["mini_ocr"]["raw"] == 1.0) for r in by_task["text"]])
    return metrics


HEADLINE = {  # each task's primary metric (the paper's Table 2 analogues)
    "compose": "compose/geneval_overall",
    "text": "text/mini_ocr",
    "preference": "preference/mini_preference",
    "quality": "quality/mini_quality",
}


def headline(metrics: dict[str, Any]) -> dict[str, str]:
    """task -> its primary metric's key, for the tasks ``metrics`` has."""
    return {t: k for t, k in HEADLINE.items() if k in metrics}


def _items(suite: Suite, limit: int | None, seed: int) -> list[tuple[str, str, dict[str, Any]]]:
    return [(task, rec.prompt, rec.metadata) for task, rec in suite_prompts(limit or DEFAULT_PROMPTS_PER_TASK, seed)]


def _rewards(job: Job, available: Sequence[str]) -> list[str]:
    from flowopd.teachers import MINI_TASK_REWARDS

    return [MINI_TASK_REWARDS[job.task], *SECONDARY[job.task]]


def _aggregate(suite: Suite, records: list[dict[str, Any]], rewards: Sequence[str]) -> dict[str, Any]:
    return summarise(records)


SUITE = Suite(
    "mini",
    "the mini world's four tasks on held-out prompts; every mini reward on every task it applies to",
    "mini",
    1,
    ("mini_geneval", "mini_ocr", "mini_preference", "mini_quality"),
    group_key="task",
    build_items=_items,
    aggregate=_aggregate,
    rewards_for=_rewards,
    headline=headline,
)
