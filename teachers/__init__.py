"""Teachers: which reward each task's teacher is trained on, the teacher specs, and the task router (eq. 7).

A teacher is a LoRA on the student's own base model, trained by GRPO on one
reward (``flowopd train teacher``). For on-policy distillation every prompt
carries a task tag, and the router sends it to the teacher that serves that
tag; the teachers, the MAR anchor and the reference are named adapters on the
student's frozen transformer, switched per forward (:func:`flowopd.lora.use_adapter`).

The mini world's four tasks and the reward model that defines each one drive
the mini evaluation suite (a task's primary metric), the mini GRPO teachers
(the reward a teacher is trained on) and the shipped teacher specs below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from flowopd.errors import ConfigError

MINI_TASK_REWARDS: dict[str, str] = {
    "compose": "mini_geneval",
    "text": "mini_ocr",
    "preference": "mini_preference",
    "quality": "mini_quality",
}


class TeacherSpec(BaseModel):
    """One teacher: a name, the task tags it serves, the reward it was trained on, and its LoRA."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="adapter name, e.g. compose")
    tasks: list[str] = Field(min_length=1, description="task tags routed to this teacher")
    reward: str = Field(description="the reward the teacher was trained on (documentation and reports)")
    checkpoint: str = Field(description="a LoRA folder, or a shipped weight name such as mini-teacher-text")

    def lora_folder(self) -> Path:
        """The LoRA folder ``checkpoint`` names (a shipped weight or a path), with a clear error when absent."""
        from flowopd.lora import LORA_FILE, is_lora_folder
        from flowopd.models import KNOWN_WEIGHTS

        if self.checkpoint in KNOWN_WEIGHTS:
            ws = KNOWN_WEIGHTS[self.checkpoint]
            if not ws.present:
                raise ConfigError(
                    f"teacher {self.name!r}: weights {self.checkpoint!r} are not in this install; get them with: {ws.how_to_get}"
                )
            return ws.path
        path = Path(self.checkpoint)
        if not is_lora_folder(path):
            raise ConfigError(
                f"teacher {self.name!r}: {self.checkpoint!r} is neither a shipped teacher nor a LoRA folder (no {LORA_FILE} or "
                "peft adapter_model.safetensors); "
                "pass a folder written by `flowopd train teacher` (its lora/ subfolder)"
            )
        return path


# The four shipped mini GRPO teachers (configs/mini/teacher-*.yaml reproduce them).
MINI_TEACHERS: list[TeacherSpec] = [
    TeacherSpec(name=task, tasks=[task], reward=reward, checkpoint=f"mini-teacher-{task}") for task, reward in MINI_TASK_REWARDS.items()
]
# The MAR anchor (eq. 12): the paper's is its "aesthetic" DeQA teacher; the mini analogue is the quality teacher.
MINI_ANCHOR = "mini-teacher-quality"


class Router:
    """Task tag -> teacher name (eq. 7): deterministic, one teacher per tag, checked up front."""

    def __init__(self, teachers: list[TeacherSpec], routing: Literal["sample", "epoch"] = "sample"):
        self.routing = routing
        self.table: dict[str, str] = {}
        names = [t.name for t in teachers]
        if len(set(names)) != len(names):
            raise ConfigError(f"teacher names must be unique; got {names}")
        for t in teachers:
            for tag in t.tasks:
                if tag in self.table:
                    raise ConfigError(
                        f"task {tag!r} is served by two teachers ({self.table[tag]!r} and {t.name!r}); give each task one teacher"
                    )
                self.table[tag] = t.name

    def check(self, tasks: list[str]) -> None:
        """Every task the run draws must have a teacher."""
        missing = sorted(set(tasks) - set(self.table))
        if missing:
            raise ConfigError(
                f"task(s) {missing} have no teacher (teachers serve {sorted(self.table)}); add a teacher for them under opd.teachers or drop them from tasks"
            )

    def __call__(self, task: str) -> str:
        try:
            return self.table[task]
        except KeyError:
            raise ConfigError(f"task {task!r} has no teacher (teachers serve {sorted(self.table)})") from None

    def groups(self, tasks: list[str]) -> dict[str, list[int]]:
        """Sample indices per teacher, in first-seen order: each teacher runs one batched forward on its own samples."""
        out: dict[str, list[int]] = {}
        for i, task in enumerate(tasks):
            out.setdefault(self(task), []).append(i)
        return out
