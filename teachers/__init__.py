"""Teachers: which reward each task's teacher is trained on, and (with OPD) the task router.

The mini world's four tasks and the reward model that defines each one. The
same table drives the mini evaluation suite (a task's primary metric) and the
mini GRPO teachers (the reward a teacher is trained on).
"""

MINI_TASK_REWARDS: dict[str, str] = {
    "compose": "mini_geneval",
    "text": "mini_ocr",
    "preference": "mini_preference",
    "quality": "mini_quality",
}
