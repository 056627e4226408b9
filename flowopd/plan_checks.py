"""The plan, checked before any compute: every batch/group/process/window/reward/teacher problem as one line naming the fix."""

from __future__ import annotations

import math

from flowopd.draws import training_prompts
from flowopd.errors import ConfigError
from flowopd.objectives.base import objective_class
from flowopd.train_config import TrainConfig


def check_plan(cfg: TrainConfig, num_processes: int = 1) -> None:
    """Every batch/group/process/window/reward problem as a one-line error naming the fix, before a model loads."""
    check_arithmetic(cfg, num_processes)
    check_inputs(cfg)


def check_arithmetic(cfg: TrainConfig, num_processes: int = 1) -> None:
    """The plan's numbers: batch, groups, processes, updates, sampler window, OPD's trained steps; reads no file."""
    from flowopd.rollout import check_window

    b, g = cfg.batch_size, cfg.group_size
    if b % g:
        ok = [d for d in range(2, b + 1) if b % d == 0]
        raise ConfigError(
            f"group_size {g} does not divide batch_size {b}; use batch_size {math.ceil(b / g) * g} or a group_size in {ok[:8]}"
        )
    if b % num_processes:
        raise ConfigError(f"batch_size {b} does not split over {num_processes} processes; use a multiple of {num_processes}")
    local = b // num_processes
    u = cfg.updates_per_rollout
    if local % u:
        raise ConfigError(
            f"each process holds {local} samples, which do not split into updates_per_rollout={u} equal parts; "
            f"use a batch_size that is a multiple of {num_processes * u}"
        )
    check_window(cfg.sampler.steps, cfg.sampler.window_size, cfg.sampler.window_start_max)
    if cfg.sampler.noise_level == 0 and objective_class(cfg).uses_transitions:
        raise ConfigError("sampler.noise_level 0 makes every step deterministic: GRPO and OPD need log-probabilities; use e.g. 0.7")
    if cfg.one_task_per_step and any(w != int(w) for w in cfg.tasks.values()):
        raise ConfigError(
            "one task per step (task_sampling: alternate or opd.routing: epoch) needs integer task weights (e.g. {compose: 3, text: 1})"
        )
    objective_class(cfg).check_arithmetic(cfg, num_processes)


def check_inputs(cfg: TrainConfig) -> None:
    """What the run reads: prompt files, the objective's inputs (reward weights; teachers and anchor), the eval section: a
    one-line error each."""
    import warnings

    from flowopd.errors import RunWarning
    from flowopd.watch import check_eval_plan

    _check_prompts(cfg)
    objective_class(cfg).check_inputs(cfg)
    for message in check_eval_plan(cfg):
        warnings.warn(message, RunWarning, stacklevel=2)


def _check_prompts(cfg: TrainConfig) -> None:
    """Every trained task needs a prompt file or a prompt world that draws it: an SD3 base has none (the mini world's
    generator speaks only the mini vocabulary), so it needs a prompt file for every task."""
    from flowopd.models import is_diffusers, prompt_world

    world = prompt_world(cfg.model)
    missing = [t for t, w in cfg.tasks.items() if w > 0 and t not in cfg.prompts and (world is None or t not in world.tasks)]
    if missing:
        raise ConfigError(
            f"tasks {missing} have no training prompts for {cfg.model}; add e.g. prompts: {{{missing[0]}: "
            f"{ {'compose': 'geneval-train', 'text': 'ocr-train'}.get(missing[0], 'pickscore-train') }}} (a named set or a file)"
        )
    if not is_diffusers(cfg.model) and cfg.resolution not in (None, 32):
        raise ConfigError(f"resolution {cfg.resolution}: the mini world is 32 px; leave resolution unset for a mini model")
    for task, spec in cfg.prompts.items():
        if cfg.tasks.get(task, 0) > 0:
            training_prompts(spec, task)  # a missing or malformed file fails here, with its fix
