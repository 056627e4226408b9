"""GRPO for flow models (eq. 3; SPEC section 4): group-relative advantages and the clipped ratio loss.

- advantage ``A_i = (r_i - mean_group(r)) / (std + 1e-4)``, with ``std`` over the
  whole batch (Flow-GRPO's default, ``global``) or within the group (``group``),
  clipped to ``+-adv_clip``; groups whose advantages are all zero carry no
  signal and are dropped;
- per trained step: ``max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps))`` with
  ``ratio = exp(log_prob_new - log_prob_old)``, plus ``beta KL(policy || reference)``
  (section 3), the reference being the same model with the LoRA disabled.
"""

from __future__ import annotations

import dataclasses

import torch

STD_MODES = ("global", "group")


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, std_mode: str = "global", clip: float = 5.0) -> torch.Tensor:
    """Per-sample advantages from per-sample rewards; ``group_ids`` says which prompt each sample belongs to (eq. 3).

    A NaN reward marks an image its reward model failed to score: it gets
    advantage 0 and is left out of its group's mean and of the std.
    """
    if std_mode not in STD_MODES:
        raise ValueError(f"unknown advantage std mode {std_mode!r}; choose one of {', '.join(STD_MODES)}")
    rewards = rewards.double()
    scored = ~torch.isnan(rewards)
    adv = torch.zeros_like(rewards)
    global_std = rewards[scored].std(unbiased=False)  # numpy's np.std, as Flow-GRPO
    for g in torch.unique(group_ids):
        members = (group_ids == g) & scored
        if not members.any():
            continue
        r = rewards[members]
        std = global_std if std_mode == "global" else r.std(unbiased=False)
        adv[members] = (r - r.mean()) / (std + 1e-4)
    return adv.clamp(-clip, clip).float()


def nonzero_groups(advantages: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Mask of the samples whose group has at least one non-zero advantage (all-zero groups teach nothing)."""
    keep = torch.zeros_like(advantages, dtype=torch.bool)
    for g in torch.unique(group_ids):
        members = group_ids == g
        keep[members] = bool((advantages[members] != 0).any())
    return keep


@dataclasses.dataclass
class SurrogateOutput:
    loss: torch.Tensor  # [N] per-sample policy loss
    ratio: torch.Tensor  # [N]
    clipped: torch.Tensor  # [N] bool: the clipped branch was the larger one


def clipped_surrogate(
    log_prob_new: torch.Tensor, log_prob_old: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> SurrogateOutput:
    """``max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps))`` per sample (eq. 3, PPO's pessimistic bound)."""
    ratio = torch.exp(log_prob_new - log_prob_old)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return SurrogateOutput(torch.maximum(unclipped, clipped), ratio.detach(), (clipped > unclipped).detach())
