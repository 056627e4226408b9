"""A suite built on the command line: ``flowopd eval --prompts SET_OR_FILE --reward NAME``.

Any reward, a plugin's included, can be evaluated without writing a suite:
the prompts are a named set (``flowopd prompts list``), a ``.txt`` / ``.jsonl``
/ ``.json`` file, or ``mini`` (the mini world's held-out prompts, every task);
every image is scored by every named reward, and each reward's mean (with
its 95% interval, inside the reward's ``raw_range``) is reported overall and
per task where the prompts carry tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowopd.benchmarks.stats import mean_ci
from flowopd.benchmarks.suites import SUITES, Suite, _raw, _raw_range
from flowopd.errors import InputError

NAME = "custom"


def custom_suite(prompts: str, rewards: Sequence[str], model_world: str) -> Suite:
    """The suite of ``--prompts`` scored by ``--reward`` (each reward must exist: unknown names fail here)."""
    from flowopd.benchmarks.prompt_sets import PROMPT_SETS
    from flowopd.reward_models import get_reward_class

    if not rewards:
        raise InputError("--prompts needs at least one --reward NAME to score the images with (see `flowopd rewards list`)")
    for r in rewards:
        get_reward_class(r)
    described = f"--prompts {prompts} scored by {', '.join(rewards)}"
    names = tuple(dict.fromkeys(rewards))
    common: dict[str, Any] = dict(images_per_prompt=1, rewards=names, aggregate=_aggregate, rewards_for=_applicable(names))
    if prompts == "mini":
        return Suite(NAME, described, "mini", build_items=SUITES["mini"].build_items, group_key="task", **common)
    if prompts in PROMPT_SETS:
        return Suite(NAME, described, "real", prompt_sets=(prompts,), **common)
    if not Path(prompts).is_file():
        raise InputError(f"--prompts {prompts}: neither a prompt set (see `flowopd prompts list`), `mini`, nor a prompt file")
    return Suite(NAME, described, model_world, build_items=_file_items(Path(prompts)), **common)


def _applicable(rewards: Sequence[str]):
    """Each job is scored by the rewards that apply to its prompt (``RewardModel.applies_to``: GenEval needs its metadata,
    OCR a quoted text), so ``--prompts mini`` mixes tasks with task-specific rewards."""
    instances: dict[str, Any] = {}

    def rewards_for(job, available: Sequence[str]) -> list[str]:
        from flowopd.reward_models import load_reward

        out = []
        for name in rewards:
            if name in available:
                if name not in instances:
                    instances[name] = load_reward(name)
                if instances[name].applies_to(job.prompt, job.metadata):
                    out.append(name)
        return out

    return rewards_for


def _file_items(path: Path):
    def items(suite: Suite, limit: int | None, seed: int) -> list[tuple[str, str, dict[str, Any]]]:
        from flowopd.benchmarks.prompts import load_prompt_file

        prompts = load_prompt_file(path)[:limit] if limit else load_prompt_file(path)
        return [(p.task or "", p.text, p.metadata) for p in prompts]

    return items


def _aggregate(suite: Suite, records: list[dict[str, Any]], rewards: Sequence[str]) -> dict[str, Any]:
    """Each reward's mean over every image, and per task when the prompts name more than one."""
    metrics: dict[str, Any] = {}
    tasks = sorted({r["task"] for r in records if r.get("task")})
    for reward in rewards:
        bounds = _raw_range(reward)
        if _raw(records, reward):
            metrics[reward] = mean_ci(_raw(records, reward), proportion=False, bounds=bounds)
        for task in tasks if len(tasks) > 1 else ():
            values = _raw([r for r in records if r.get("task") == task], reward)
            if values:
                metrics[f"{task}/{reward}"] = mean_ci(values, proportion=False, bounds=bounds)
    return metrics
