"""One stochastic sampler step with its log-probability, and the per-step KL between two policies (SPEC sections 2-3).

Pure functions of (state, velocity, sigma, sigma_next): no training state, in
the manner of a diffusers scheduler step. Notation (SPEC section 1):
``x_sigma = (1 - sigma) x0 + sigma eps``, ``v = eps - x0``,
``dt = sigma_next - sigma < 0``. Everything is computed in float32.

Two kinds, both from Flow-GRPO:

- ``sde`` (eq. 5-6; noise level ``a``, 0.7 in the paper):
  ``std_dev = a sqrt(sigma / (1 - sigma))`` (at ``sigma = 1`` the denominator
  uses ``sigma_1``, the first sigma below 1, which is this step's
  ``sigma_next``), ``mu = x (1 + std_dev^2 dt / (2 sigma)) + v (1 + std_dev^2 (1 - sigma) / (2 sigma)) dt``,
  ``x_next = mu + std_dev sqrt(-dt) eps``;
- ``cps`` (coefficient-preserving, Flow-GRPO-Fast; ``a`` = 0.8 there):
  ``std = sigma_next sin(a pi / 2)``, ``x0_hat = x - sigma v``, ``x1_hat = x + (1 - sigma) v``,
  ``mu = x0_hat (1 - sigma_next) + x1_hat sqrt(sigma_next^2 - std^2)``, ``x_next = mu + std eps``.

``a = 0`` gives the deterministic Euler step ``x + dt v`` for both.
"""

from __future__ import annotations

import dataclasses
import math

import torch

KINDS = ("sde", "cps")
WEIGHTINGS = ("exact", "flow_grpo")
LOG_PROBS = ("exact", "flow_grpo")


@dataclasses.dataclass
class StepOutput:
    """``x_next`` (detached sample), ``mean`` (differentiable in ``v``), ``std`` (per element), ``log_prob`` (per sample)."""

    x_next: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor  # scalar tensor: the same std for every element
    log_prob: torch.Tensor  # [B]; mean over elements of the Gaussian log density; 0 for a deterministic step


def _check(kind: str, sigma: float, sigma_next: float, noise_level: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown sampler kind {kind!r}; choose one of {', '.join(KINDS)}")
    if not 0.0 <= sigma_next < sigma <= 1.0:
        raise ValueError(f"need 0 <= sigma_next < sigma <= 1, got sigma={sigma}, sigma_next={sigma_next}")
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")


def _sde_coefficients(sigma: float, sigma_next: float, noise_level: float) -> tuple[float, float, float, float]:
    """(std_dev, x coefficient, v coefficient, per-element std) of the ``sde`` step (eq. 5-6)."""
    dt = sigma_next - sigma
    denom_sigma = sigma_next if sigma == 1.0 else sigma  # sigma_1 stands in for sigma = 1 in the denominator
    std_dev = noise_level * math.sqrt(sigma / (1.0 - denom_sigma))
    x_coef = 1.0 + std_dev**2 / (2.0 * sigma) * dt
    v_coef = (1.0 + std_dev**2 * (1.0 - sigma) / (2.0 * sigma)) * dt
    return std_dev, x_coef, v_coef, std_dev * math.sqrt(-dt)


def _mean_and_std(
    x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float, noise_level: float, kind: str
) -> tuple[torch.Tensor, float]:
    if kind == "sde":
        _, x_coef, v_coef, std = _sde_coefficients(sigma, sigma_next, noise_level)
        return x * x_coef + v * v_coef, std
    std = sigma_next * math.sin(noise_level * math.pi / 2.0)
    x0_hat = x - sigma * v
    x1_hat = x + (1.0 - sigma) * v
    return x0_hat * (1.0 - sigma_next) + x1_hat * math.sqrt(max(sigma_next**2 - std**2, 0.0)), std


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """Per-sample mean over elements of ``log N(x; mean, std^2)``."""
    lp = -((x - mean) ** 2) / (2.0 * std**2) - math.log(std) - 0.5 * math.log(2.0 * math.pi)
    return lp.flatten(1).mean(1)


def step_log_prob(x: torch.Tensor, mean: torch.Tensor, std: float, kind: str, convention: str = "exact") -> torch.Tensor:
    """The log-probability a GRPO ratio uses: the Gaussian density (``exact``), or Flow-GRPO's (``flow_grpo``).

    Flow-GRPO's cps sampler scores ``-mean((x_next - mean)^2)``: no ``1 / (2 std^2)``
    and no constants, so its log-ratios are ``2 std^2`` times the true ones
    (0.6 at the first step of a 10-step shift-3 schedule, 1 / 6900 at the ninth)
    and its clip range is tuned to that scale. Its sde sampler uses the density,
    so ``flow_grpo`` changes only cps.
    """
    if convention not in LOG_PROBS:
        raise ValueError(f"unknown log-prob convention {convention!r}; choose one of {', '.join(LOG_PROBS)}")
    if convention == "flow_grpo" and kind == "cps":
        return -((x - mean) ** 2).flatten(1).mean(1)
    return gaussian_log_prob(x, mean, std)


def sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: float,
    sigma_next: float,
    noise_level: float,
    noise: torch.Tensor | None = None,
    kind: str = "sde",
    generator: torch.Generator | None = None,
    x_next: torch.Tensor | None = None,
    log_prob: str = "exact",
) -> StepOutput:
    """One step from ``sigma`` to ``sigma_next`` (eq. 5-6); ``x_next`` is detached, ``log_prob`` differentiates through ``mean``.

    Pass ``x_next`` (a sample drawn earlier) to evaluate its log-probability
    under this velocity instead of drawing a new one: the GRPO ratio's numerator.
    ``log_prob`` names the convention (:func:`step_log_prob`).
    """
    sigma, sigma_next = float(sigma), float(sigma_next)
    _check(kind, sigma, sigma_next, noise_level)
    x, v = x.float(), v.float()
    mean, std = _mean_and_std(x, v, sigma, sigma_next, noise_level, kind)
    if std == 0.0:  # deterministic (a = 0, or cps at sigma_next = 0): there is no density
        return StepOutput(mean.detach(), mean, torch.tensor(0.0), torch.zeros(x.shape[0], device=x.device))
    if x_next is not None:
        x_next = x_next.float().detach()
        return StepOutput(x_next, mean, torch.tensor(std), step_log_prob(x_next, mean, std, kind, log_prob))
    if noise is None:
        device = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=device).to(x.device)
    x_next = (mean + std * noise.float()).detach()
    return StepOutput(x_next, mean, torch.tensor(std), step_log_prob(x_next, mean, std, kind, log_prob))


def kl_weight(sigma: float, sigma_next: float, noise_level: float, weighting: str = "exact") -> float:
    """eq. 9's ``w(t) = |dt| / 2 (1 / std_dev + std_dev (1 - sigma) / (2 sigma))^2`` (``flow_grpo``: times ``|dt|``)."""
    sigma, sigma_next = float(sigma), float(sigma_next)
    _check("sde", sigma, sigma_next, noise_level)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown KL weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    std_dev, *_ = _sde_coefficients(sigma, sigma_next, noise_level)
    if std_dev == 0.0:
        raise ValueError("the step is deterministic (noise_level 0): the KL between two policies is undefined")
    dt = abs(sigma_next - sigma)
    w = dt / 2.0 * (1.0 / std_dev + std_dev * (1.0 - sigma) / (2.0 * sigma)) ** 2  # eq. 9
    return w * dt if weighting == "flow_grpo" else w


def per_step_kl(
    v_a: torch.Tensor,
    v_b: torch.Tensor,
    sigma: float,
    sigma_next: float,
    noise_level: float,
    kind: str = "sde",
    weighting: str = "exact",
) -> torch.Tensor:
    """Per-sample KL between the two transition Gaussians at the same state (eq. 8-9), mean over elements.

    Both Gaussians share the std, so ``KL = ||mean_a - mean_b||^2 / (2 std^2)``;
    the mean over elements (Flow-GRPO's convention) keeps KL coefficients
    comparable across resolutions. ``weighting="flow_grpo"`` is what Flow-GRPO's
    code computes: for ``sde`` the exact value times ``|dt|`` (it drops ``|dt|``
    from the denominator: flow_grpo issues 22 and 78), for ``cps`` the exact
    value (its cps KL has no extra factor). The state cancels, so only the velocities enter.
    ``weighting="velocity"`` (OPD only) weighs every step 1: ``||v_a - v_b||^2``, mean over elements.
    """
    sigma, sigma_next = float(sigma), float(sigma_next)
    _check(kind, sigma, sigma_next, noise_level)
    if weighting not in (*WEIGHTINGS, "velocity"):
        raise ValueError(f"unknown KL weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}, velocity")
    dv = (v_a.float() - v_b.float()).flatten(1)
    if weighting == "velocity":  # w(t) = 1: the velocity regression of flow-matching distillation, not a KL
        return (dv**2).mean(1)
    if kind == "sde":
        return kl_weight(sigma, sigma_next, noise_level, weighting) * (dv**2).mean(1)  # eq. 9
    # the step's mean is linear in v at a fixed state, so mean_a - mean_b is the mean of (x = 0, v = dv)
    dmean, std = _mean_and_std(torch.zeros_like(dv), dv, sigma, sigma_next, noise_level, kind)
    if std == 0.0:
        raise ValueError("the step is deterministic (noise_level 0 or sigma_next 0): the KL between two policies is undefined")
    return (dmean**2).mean(1) / (2.0 * std**2)  # eq. 8; Flow-GRPO's cps KL is this exact value too (no extra |dt|)
