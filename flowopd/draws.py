"""What each training step draws, as pure functions of (seed, step): its prompts, its sample seeds, its SDE window.

A resumed run draws exactly what the uninterrupted one would have, so these
take the config and the step and nothing else.
"""

from __future__ import annotations

import functools

import numpy as np

from flowopd.errors import ConfigError
from flowopd.train_config import TrainConfig


def alternate_schedule(tasks: dict[str, float]) -> list[str]:
    """One task per step, cycling by the integer ratio: {compose: 3, text: 1} -> compose, compose, compose, text."""
    return [t for t, w in tasks.items() for _ in range(int(w))]


def draw_prompts(cfg: TrainConfig, step: int, n: int) -> list:
    """``n`` training prompt records for ``step``: a task by weight (or the step's task), then a prompt of that task from its
    ``prompts:`` file, or from the base model's prompt world (its training split) for a task without one."""
    from flowopd.models import prompt_world

    rng = np.random.default_rng([cfg.seed, step, 1])
    if cfg.one_task_per_step:
        schedule = alternate_schedule(cfg.tasks)
        tasks = [schedule[step % len(schedule)]] * n
    else:
        names = [t for t, w in cfg.tasks.items() if w > 0]
        p = np.array([cfg.tasks[t] for t in names], dtype=float)
        tasks = [str(t) for t in rng.choice(names, size=n, p=p / p.sum())]
    records, world = [], None
    for task in tasks:
        if task in cfg.prompts:
            pool = training_prompts(cfg.prompts[task], task)
            records.append(pool[int(rng.integers(len(pool)))])
            continue
        world = world or prompt_world(cfg.model)
        if world is None or task not in world.tasks:
            raise ConfigError(f"task {task!r} has no training prompts for {cfg.model}; add prompts: {{{task}: FILE}}")
        records.append(world.training_prompt(task, rng))
    return records


@functools.lru_cache(maxsize=16)
def training_prompts(spec: str, task: str) -> tuple:
    """The records of a ``prompts:`` entry (a named set or a file), each tagged with ``task``; read once per process."""
    from flowopd.benchmarks.prompt_sets import resolve
    from flowopd.tasks import PromptRecord

    prompts = resolve(spec, task=task)
    if not prompts:
        raise ConfigError(f"prompts: {task}: {spec} holds no prompts; pass a non-empty prompt set or file")
    return tuple(PromptRecord(p.text, task, dict(p.metadata)) for p in prompts)


def sample_seeds(cfg: TrainConfig, step: int) -> list[int]:
    return [int(s) for s in np.random.default_rng([cfg.seed, step, 2]).integers(0, 2**62, size=cfg.batch_size)]


def window_start(cfg: TrainConfig, step: int) -> int:
    if cfg.sampler.window_start_max == 0:
        return 0
    return int(np.random.default_rng([cfg.seed, step, 3]).integers(0, cfg.sampler.window_start_max + 1))
