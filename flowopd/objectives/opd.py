"""Multi-teacher on-policy distillation (SPEC section 6; eq. 7-12): the three objectives and MAR.

At each trained step ``t`` of a student trajectory, with the routed teacher's
velocity ``v_T`` at the same state (same CFG), eq. 9 gives the per-step reverse KL

    KL_t = w(t) * ||v_student - v_T||^2                                   (eq. 8-9; mean over elements)

and the trajectory-level reverse KL is ``KL(P_student || P_teacher) = E[sum_t KL_t]``.
Per sample and step, the loss is one of

- ``kl``    (default): ``KL_t`` with its gradient through ``v_student`` only (the states are
            detached): the direct part of the gradient, what works in practice;
- ``kl_pg``: ``KL_t`` + the clipped surrogate (eq. 3) with the reward-to-go
            ``R_t = -sum_{t' > t} KL_t'`` (detached, minus a leave-one-out baseline) as the
            advantage: the full gradient of the trajectory reverse KL;
- ``paper``: eq. 10-11 literally, the clipped surrogate with ``r_t = -KL_t`` (detached) as the
            advantage. ``r_t`` depends on the state, not on the sampled action, so its expected
            gradient is zero (``tests/test_opd_gaussian.py`` shows it); kept for ablations.

plus Manifold Anchor Regularization (eq. 12), ``lambda * w(t) * ||v_student - v_anchor||^2``
with gradient, toward a frozen anchor teacher (or the base model).
"""

from __future__ import annotations

import dataclasses

import torch

from flowopd.objectives.grpo import clipped_surrogate

OBJECTIVES = ("kl", "kl_pg", "paper")


def reward_to_go(kl: torch.Tensor) -> torch.Tensor:
    """``R_t = -sum_{t' > t} KL_t'`` for ``kl`` of shape [N, K] (trained steps in sampling order)."""
    later = kl.flip(1).cumsum(1).flip(1) - kl  # sum over t' >= t, minus t itself
    return -later


def leave_one_out(values: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """``values`` [N, K] minus the mean of the *other* members of its group, per column (unbiased; a group of 1 keeps its value)."""
    _, inverse = group_ids.unique(return_inverse=True)
    totals = torch.zeros(int(inverse.max()) + 1, values.shape[1], dtype=values.dtype).index_add_(0, inverse, values)
    sizes = torch.bincount(inverse).to(values.dtype)[inverse].unsqueeze(1)
    others = (totals[inverse] - values) / (sizes - 1).clamp(min=1)
    return torch.where(sizes > 1, values - others, values)


def step_advantages(objective: str, kl: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-step advantages [N, K] for the surrogate term, from the rollout's (detached) per-step KLs [N, K]."""
    if objective == "kl_pg":
        return leave_one_out(reward_to_go(kl), group_ids)
    if objective == "paper":
        return -kl  # eq. 10: r_t = -w(t) ||v_student.detach() - v_T||^2
    return torch.zeros_like(kl)


@dataclasses.dataclass
class OPDStepLoss:
    loss: torch.Tensor  # [B] per-sample loss at this step
    ratio: torch.Tensor  # [B] detached
    clipped: torch.Tensor  # [B] bool


def opd_step_loss(
    objective: str,
    kl: torch.Tensor,
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantage: torch.Tensor,
    clip_range: float,
    elements: int,
) -> OPDStepLoss:
    """The per-sample loss at one trained step (eq. 9-11); ``kl`` carries the gradient through ``v_student``.

    ``log_prob`` is mean-reduced over the ``elements`` of a sample (SPEC section 2)
    like ``kl``; the score-function term of ``kl_pg`` needs the full density's
    gradient, ``elements`` times the mean's, so its advantage is scaled by
    ``elements`` and both terms are the gradient of the same mean-reduced
    trajectory KL. ``paper`` keeps the release's mean-reduced ratio.
    """
    if objective == "kl":
        surr = clipped_surrogate(log_prob, old_log_prob, torch.zeros_like(advantage), clip_range)
        loss = kl
    elif objective == "kl_pg":
        surr = clipped_surrogate(log_prob, old_log_prob, advantage * elements, clip_range)
        loss = kl + surr.loss
    elif objective == "paper":
        surr = clipped_surrogate(log_prob, old_log_prob, advantage, clip_range)
        loss = surr.loss
    else:
        raise ValueError(f"unknown OPD objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    return OPDStepLoss(loss, surr.ratio, surr.clipped)
