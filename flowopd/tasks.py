"""Tasks and prompt records: what a training prompt asks for, known to the core without any world.

A *task* is one alignment goal with its own teacher (SPEC section 1): the
paper's four are registered here (compose, text, preference, quality), each
with the reward its full-size teacher trains on by default. A user registers
more with :func:`register_task`. Every prompt the trainer draws is a
:class:`PromptRecord` tagged with its task; the router (eq. 7) sends it to that
task's teacher.

A *world* is a prompt generator for tasks that have no prompt file: the mini
world (``mini/world.py``) generates prompts for the four tasks, on its
own train / test split. Worlds are registry entries (``"module:attribute"``),
imported on first use, so the core never imports one.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Protocol

import numpy as np

from flowopd.registry import Registry


@dataclasses.dataclass(frozen=True)
class PromptRecord:
    """One prompt, with its task tag and metadata (GenEval-style for compose, the text for OCR)."""

    prompt: str
    task: str
    metadata: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "task": self.task, **self.metadata}


@dataclasses.dataclass(frozen=True)
class Task:
    """A task: its name (the tag on prompts and the router's key), what it asks, and its teacher's default reward."""

    name: str
    description: str
    default_reward: str


TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry; a name already taken by another definition is refused."""
    TASKS.register(task.name, task)
    return task


for _task in (
    Task("compose", "compositional correctness: GenEval's six tags", "geneval"),
    Task("text", "text rendering: OCR of the quoted text", "ocr"),
    Task("preference", "human preference", "pickscore_v1"),
    Task("quality", "image quality (the paper's aesthetic teacher: DeQA)", "deqa"),
):
    register_task(_task)


def task_names() -> tuple[str, ...]:
    return tuple(TASKS)


def unknown_tasks_message(names: list[str] | set[str], what: str = "tasks") -> str | None:
    """None when every name is a registered task; else one line naming the unknown ones and the fix."""
    unknown = sorted(set(names) - set(TASKS))
    if not unknown:
        return None
    hints = [m for u in unknown for m in difflib.get_close_matches(u, TASKS, n=1)]
    hint = f" (did you mean {', '.join(repr(h) for h in hints)}?)" if hints else ""
    return f"{what} names unknown tasks {unknown}{hint}; use {', '.join(TASKS)} or register a task (flowopd.tasks.register_task)"


class PromptWorld(Protocol):
    """A prompt generator for some tasks, with a train / test split (the mini world is one)."""

    name: str
    tasks: tuple[str, ...]
    task_mix: dict[str, float]  # the prompt mix for a reward that has no task of its own (a plugin's)

    def training_prompt(self, task: str, rng: np.random.Generator) -> PromptRecord:
        """One training-split prompt of ``task`` drawn with ``rng``."""

    def prompts(self, task: str, n: int, seed: int, split: str = "test") -> list[PromptRecord]:
        """``n`` distinct prompts of ``task`` from ``split`` (``train``, ``test`` or ``all``)."""


# world name -> its PromptWorld; a base's world is the one registered under its backbone kind (``models.prompt_world``).
# Plugins add worlds through the ``flowopd.worlds`` entry-point group.
WORLDS: Registry[PromptWorld] = Registry("prompt world", {"mini": "flowopd.mini.world:WORLD"}, entry_point_group="flowopd.worlds")


def get_world(name: str) -> PromptWorld:
    """The registered prompt world ``name``."""
    return WORLDS.get_or_explain(name)
