"""A weighted sum of rewards on the training scale: a teacher's single reward, GRPO-Mix's one mixed reward.

For each image the weights of its task (``task_weights[task]``, else the
default ``weights``) apply to the rewards that can score that prompt
(:meth:`RewardModel.applies_to`), renormalised over them:
``r = sum_k w_k normalize_k(raw_k) / sum_k w_k``. A weighted GenEval:OCR:PickScore
reward on mixed prompts thus scores a text prompt by OCR and preference
only, rather than by a GenEval parse of a prompt that has no objects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from flowopd.errors import FlowOPDError
from flowopd.reward_models.registry import load_reward


class WeightedReward:
    """Score images with several reward models and combine them per task."""

    def __init__(self, weights: dict[str, float], task_weights: dict[str, dict[str, float]] | None = None, device: str = "cpu"):
        self.weights = dict(weights)
        self.task_weights = {t: dict(w) for t, w in (task_weights or {}).items()}
        names = set(self.weights) | {n for w in self.task_weights.values() for n in w}
        self.models = {name: load_reward(name, device=device) for name in sorted(names)}

    def weights_for(self, task: str | None) -> dict[str, float]:
        return self.task_weights.get(task or "", self.weights)

    def __call__(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any] | None], tasks: Sequence[str | None]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total [N], {reward name: normalised score [N], NaN where it was not applied or failed})``.

        An image that any of its weighted rewards failed to score (a judge
        server error, an unparseable reply) gets a NaN total: it is left out
        of the advantages rather than scored by the rewards that happened to work.
        """
        n = len(prompts)
        self.last_errors: list[str] = []  # "reward: why" for the images that failed, in order (the caller says the first)
        per_reward = {name: torch.full((n,), math.nan) for name in self.models}
        total = torch.zeros(n)
        wsum = torch.zeros(n)
        for name, model in self.models.items():
            idx = [i for i in range(n) if self.weights_for(tasks[i]).get(name, 0.0) > 0 and model.applies_to(prompts[i], metadata[i])]
            if not idx:
                continue
            scores = model.score(images[idx], [prompts[i] for i in idx], [metadata[i] for i in idx])
            w = torch.tensor([self.weights_for(tasks[i])[name] for i in idx])
            self.last_errors += [f"{name}: {d.get('error', 'no reason given')}" for d, f in zip(scores.details, scores.failed) if f]
            per_reward[name][idx] = scores.normalized
            total[idx] += w * scores.normalized  # NaN where this reward failed the image
            wsum[idx] += w
        if (wsum == 0).any():
            i = int((wsum == 0).nonzero()[0])
            raise FlowOPDError(
                f"no reward in {sorted(self.weights_for(tasks[i]))} can score the prompt {prompts[i]!r} (task {tasks[i]}); "
                "add a reward for that task or drop the task from `tasks`"
            )
        return total / wsum, per_reward
