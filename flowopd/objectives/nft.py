"""DiffusionNFT's math (issue 18): implicit policies, optimality probabilities, the loss, the old policy's soft update.

DiffusionNFT ("Online Diffusion Reinforcement with Forward Process", NVlabs)
trains on the policy's own deterministic (ODE) samples with a flow-matching
loss: no log-probabilities, no SDE. Notation as the official code
(``scripts/train_nft_sd3.py``): ``x_t = (1 - t) x0 + t eps``, the velocity
target ``u = eps - x0``, ``x0_hat = x_t - t v``; ``v_theta`` the trained
policy, ``v_old`` the old (sampling) policy, a soft copy of it.

- advantages as GRPO's (eq. 3 there): ``A = (R - mean_group R) / (std_all R + 1e-4)``,
  clipped to ``+-C`` (``C = 5``): :func:`flowopd.objectives.grpo.group_advantages`;
- the optimality probability ``r = 1/2 + clip(A, -C, C) / (2C)`` in [0, 1];
- the implicit positive and negative policies
  ``v+ = beta v_theta + (1 - beta) v_old`` and ``v- = (1 + beta) v_old - beta v_theta``
  (``v_old`` without gradient; they average to ``v_old``);
- the loss ``C (r L(v+) + (1 - r) L(v-)) / beta`` per sample, with ``L`` the
  official code's self-normalised error in x0 space,
  ``L(v) = mean((x0_hat - x0)^2) / sg(mean|x0_hat - x0|)``, or (``weighting="none"``)
  the plain ``||v - u||^2`` of the paper's derivation;
- the old policy's soft update after each outer step,
  ``theta_old <- eta theta_old + (1 - eta) theta``, with the official schedules of ``eta``.

The objective that wires these into the trainer (its config section, ODE
rollouts, the old policy as a second adapter) is the rest of issue 18; the
derivations are checked in ``tests/test_nft.py``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

ADV_CLIP = 5.0
# decay schedules of the old policy (official ``return_decay``): (steps flat at 0, rise per step, cap)
OLD_POLICY_DECAY = {"on_policy": (0, 0.0, 0.0), "default": (0, 0.001, 0.5), "slow": (75, 0.0075, 0.999)}
WEIGHTINGS = ("adaptive", "none")


def optimality_probability(advantages: torch.Tensor, clip: float = ADV_CLIP) -> torch.Tensor:
    """``r = 1/2 + clip(A, -C, C) / (2C)``: the reward as the probability that a sample is "optimal", in [0, 1]."""
    if clip <= 0:
        raise ValueError(f"the advantage clip must be > 0, got {clip}")
    return (advantages.clamp(-clip, clip) / clip / 2 + 0.5).clamp(0.0, 1.0)


def implicit_policies(v_theta: torch.Tensor, v_old: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v+, v-)``: ``beta v_theta + (1 - beta) v_old`` and ``(1 + beta) v_old - beta v_theta``, ``v_old`` detached."""
    if not 0 < beta <= 1:
        raise ValueError(f"NFT's beta must be in (0, 1], got {beta}")
    v_old = v_old.detach()
    return beta * v_theta + (1 - beta) * v_old, (1 + beta) * v_old - beta * v_theta


def _branch_loss(v: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, weighting: str) -> torch.Tensor:
    """One branch's per-sample error: adaptive, ``mean((x0_hat - x0)^2) / sg(max(mean|x0_hat - x0|, 1e-5))``; none,
    ``mean((v - u)^2)`` with ``u`` recovered as ``(x_t - x0) / t``."""
    dims = tuple(range(1, v.dim()))
    t = t.reshape(-1, *([1] * (v.dim() - 1))).to(v.dtype)
    if weighting == "none":
        return ((v - (x_t - x0) / t) ** 2).mean(dim=dims)
    err = x_t - t * v - x0
    weight = err.detach().abs().double().mean(dim=dims).clamp_min(1e-5).to(v.dtype)
    return (err**2).mean(dim=dims) / weight


def nft_loss(
    v_theta: torch.Tensor,
    v_old: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    t: torch.Tensor,
    r: torch.Tensor,
    beta: float,
    weighting: str = "adaptive",
    clip: float = ADV_CLIP,
) -> torch.Tensor:
    """Per-sample DiffusionNFT loss ``C (r L(v+) + (1 - r) L(v-)) / beta`` at the noised latents ``x_t`` of the clean
    samples ``x0`` at times ``t`` (``[B]``), with optimality probabilities ``r`` (``[B]``)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown NFT loss weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    v_pos, v_neg = implicit_policies(v_theta, v_old, beta)
    pos, neg = _branch_loss(v_pos, x_t, x0, t, weighting), _branch_loss(v_neg, x_t, x0, t, weighting)
    return clip * (r * pos + (1 - r) * neg) / beta


def old_policy_decay(step: int, schedule: str = "default") -> float:
    """``eta`` after ``step`` optimizer steps: 0 while flat, then ``min(rise * (step - flat), cap)``."""
    if schedule not in OLD_POLICY_DECAY:
        raise ValueError(f"unknown old-policy schedule {schedule!r}; choose one of {', '.join(OLD_POLICY_DECAY)}")
    flat, rise, cap = OLD_POLICY_DECAY[schedule]
    return 0.0 if step < flat else min(rise * (step - flat), cap)


@torch.no_grad()
def soft_update(old: Iterable[torch.Tensor], new: Iterable[torch.Tensor], eta: float) -> None:
    """``old <- eta old + (1 - eta) new`` in place (the old policy's parameters toward the trained ones)."""
    if not 0 <= eta <= 1:
        raise ValueError(f"the old policy's decay must be in [0, 1], got {eta}")
    for o, n in zip(old, new, strict=True):
        o.mul_(eta).add_(n.detach().to(o.dtype), alpha=1 - eta)
