"""The Gaussian check: the OPD objectives estimate the gradients they claim (SPEC section 6; flowopd/objectives/opd.py).

Setup. A linear student ``v_theta(x, k) = a_k * x + b_k`` (per dimension, ``a, b`` of shape
[K, D]) and a fixed linear teacher ``v_T(x, k) = aT_k * x + bT_k`` drive the real ``sde``
sampler (``flowopd.sde.sde_step``, noise level 0.7) over K = 4 steps from
``x_0 ~ N(m0, s0^2)``. Each step is ``x_{k+1} = c1_k x_k + c2_k v + std_k eps``, with
``c1, c2, std`` read off ``sde_step`` itself, so every marginal is Gaussian
(``m_{k+1} = alpha_k m_k + beta_k``, ``s2_{k+1} = alpha_k^2 s2_k + std_k^2``,
``alpha = c1 + c2 a``, ``beta = c2 b``) and the mean-reduced trajectory reverse KL

    J(theta) = E_{P_student}[sum_k per_step_kl_k] = sum_k w_k mean_d[(da_k m_k + db_k)^2 + da_k^2 s2_k]

(``da = a - aT``, ``db = b - bT``, ``w_k`` eq. 9's weight) is known in closed form. Its
full gradient is ``autograd(J)``; its *direct part* is the same with the marginals
``m_k, s2_k`` detached, i.e. ``E[grad per_step_kl]`` at fixed states. The difference is the
score-function part: the parameters of step k move the states of the later steps.

What is checked (N = 48,000 student trajectories in M = 40 independent batches; the
tolerance of every comparison is in standard errors, SE = std(batch means) / sqrt(M),
per gradient component, with an absolute floor: ``|MC mean - target| < 4 (SE + 1e-5)``):

- ``kl_pg`` (KL with gradient + the clipped surrogate with the leave-one-out reward-to-go):
  its MC mean gradient equals the closed-form full gradient, every component within 4 SE;
- ``kl`` (KL with gradient, states detached): its MC mean equals the closed-form direct part,
  within 4 SE, and is far from the full gradient (> 10 SE, and the score-function part
  is > 20% of the full gradient's norm), so the distinction is not vacuous here;
- ``paper`` (eq. 10-11, the surrogate with ``r_t = -KL_t`` as the advantage): its MC mean is
  zero within 4 SE per component and by a chi-square test on the whole vector (sum of
  the 2KD = 24 squared z-scores below chi-square(24)'s 4-sigma quantile, ~62.5), because ``r_t`` depends on the state ``x_t`` and not
  on the sampled action ``x_{t+1}``, so ``E[r_t grad log pi(x_{t+1} | x_t)] = 0``; the same
  test rejects zero for ``kl_pg`` (the test has power).

The library computes in float32; the closed form is float64. At these sizes the float32
batch-mean gradients differ from a float64 evaluation on the same states by ~5e-8, three
orders of magnitude below the smallest SE (~5e-5), so float32 is precise enough and the
1e-5 floor only guards against a degenerate (near-zero) SE.
"""

from __future__ import annotations

import math

import pytest
import torch

from flowopd.objectives.opd import opd_step_loss, step_advantages
from flowopd.sde import per_step_kl, sde_step

SIGMAS = [0.9, 0.7, 0.5, 0.3, 0.1]  # K = 4 steps, strictly inside (0, 1)
STEPS = list(zip(SIGMAS[:-1], SIGMAS[1:]))
K = len(STEPS)
D = 3
NOISE = 0.7
N = 48_000  # trajectories
M = 40  # independent batches (each a whole number of groups)
GROUP = 8  # leave-one-out groups
CLIP = 1e-4
Z_TOL = 4.0  # per-component tolerance, in standard errors
FLOOR = 1e-5  # absolute floor (float32 rounding)
SEED = 1234

M0 = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64)
S0 = torch.tensor([1.0, 0.7, 1.3], dtype=torch.float64)
# student (a, b) and teacher (aT, bT), [K, D]: the teacher differs in slope, so the later KLs
# depend on the earlier steps' marginals and the score-function part is large.
A = torch.tensor([[0.2, -0.3, 0.1], [0.0, 0.4, -0.2], [0.3, 0.1, 0.0], [-0.1, 0.2, 0.3]], dtype=torch.float64)
B = torch.tensor([[0.5, -0.4, 0.2], [-0.3, 0.1, 0.6], [0.2, 0.3, -0.5], [0.4, -0.2, 0.1]], dtype=torch.float64)
AT = A + torch.tensor([[1.5, -1.2, 1.0], [-1.3, 1.4, 1.1], [1.2, -1.0, -1.5], [1.0, 1.3, -1.2]], dtype=torch.float64)
BT = B + torch.tensor([[0.8, 0.6, -0.7], [0.5, -0.9, 0.4], [-0.6, 0.7, 0.5], [0.3, -0.4, 0.6]], dtype=torch.float64)


def step_coefficients(sigma: float, sigma_next: float) -> tuple[float, float, float, float]:
    """(c1, c2, std, w) of one step, read off the real sampler: mean at (x=1, v=0), (x=0, v=1); w from per_step_kl at dv = 1."""
    one, zero = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)
    c1 = sde_step(one, zero, sigma, sigma_next, NOISE, noise=zero).mean.item()
    out = sde_step(zero, one, sigma, sigma_next, NOISE, noise=zero)
    w = per_step_kl(one, zero, sigma, sigma_next, NOISE).item()
    return c1, out.mean.item(), out.std.item(), w


COEFS = [step_coefficients(s, sn) for s, sn in STEPS]


def closed_form(a: torch.Tensor, b: torch.Tensor, detach_marginals: bool) -> torch.Tensor:
    """J(a, b) = sum_k w_k mean_d[(da m_k + db)^2 + da^2 s2_k], marginals propagated in float64."""
    m, s2 = M0.clone(), S0**2
    total = torch.zeros((), dtype=torch.float64)
    for k, (c1, c2, std, w) in enumerate(COEFS):
        mk, s2k = (m.detach(), s2.detach()) if detach_marginals else (m, s2)
        da, db = a[k] - AT[k], b[k] - BT[k]
        total = total + w * (((da * mk + db) ** 2) + da**2 * s2k).mean()
        alpha, beta = c1 + c2 * a[k], c2 * b[k]
        m, s2 = alpha * m + beta, alpha**2 * s2 + std**2
    return total


def closed_form_gradient(detach_marginals: bool) -> torch.Tensor:
    a, b = A.clone().requires_grad_(), B.clone().requires_grad_()
    ga, gb = torch.autograd.grad(closed_form(a, b, detach_marginals), (a, b))
    return torch.cat([ga.flatten(), gb.flatten()])


def as_image(x: torch.Tensor) -> torch.Tensor:
    return x.view(x.shape[0], D, 1, 1)  # [N, C=D, H=1, W=1], the sampler's image layout


def rollout() -> dict[str, torch.Tensor]:
    """N student trajectories (no grad): states [K+1, N, D], old log-probs and detached per-step KLs [N, K]."""
    gen = torch.Generator().manual_seed(SEED)
    x = (M0 + S0 * torch.randn(N, D, generator=gen, dtype=torch.float64)).float()
    states, old_log_prob, kl = [x], [], []
    with torch.no_grad():
        for k, (sigma, sigma_next) in enumerate(STEPS):
            v, v_t = A[k] * x + B[k], AT[k] * x + BT[k]
            out = sde_step(as_image(x), as_image(v), sigma, sigma_next, NOISE, generator=gen)
            old_log_prob.append(out.log_prob)
            kl.append(per_step_kl(as_image(v), as_image(v_t), sigma, sigma_next, NOISE))
            x = out.x_next.flatten(1)
            states.append(x)
    return {"states": torch.stack(states), "old_log_prob": torch.stack(old_log_prob, 1), "kl": torch.stack(kl, 1)}


def batch_gradients(objective: str, traj: dict[str, torch.Tensor]) -> torch.Tensor:
    """[M, 2 K D] gradients of sum_k mean_batch(opd_step_loss(...).loss), one per batch, by one backward pass.

    Each batch gets its own copy of (a, b), so the gradient of the sum over batches with
    respect to copy m is batch m's gradient.
    """
    group_ids = torch.arange(N) // GROUP
    adv = step_advantages(objective, traj["kl"], group_ids)
    a = A.expand(M, K, D).clone().requires_grad_()
    b = B.expand(M, K, D).clone().requires_grad_()
    batch = torch.arange(N) // (N // M)
    total = torch.zeros((), dtype=torch.float64)
    for k, (sigma, sigma_next) in enumerate(STEPS):
        x, x_next = traj["states"][k], traj["states"][k + 1]
        v, v_t = a[batch, k] * x + b[batch, k], AT[k] * x + BT[k]
        kl = per_step_kl(as_image(v), as_image(v_t), sigma, sigma_next, NOISE)
        log_prob = sde_step(as_image(x), as_image(v), sigma, sigma_next, NOISE, x_next=as_image(x_next)).log_prob
        out = opd_step_loss(objective, kl, log_prob, traj["old_log_prob"][:, k], adv[:, k], clip_range=CLIP, elements=D)
        assert not out.clipped.any()  # on-policy: the ratio is 1 up to float32 rounding
        torch.testing.assert_close(out.ratio, torch.ones_like(out.ratio), rtol=0, atol=1e-5)
        total = total + out.loss.double().sum() / (N // M)
    ga, gb = torch.autograd.grad(total, (a, b))
    return torch.cat([ga.flatten(1), gb.flatten(1)], 1)


def z_scores(batches: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per component ``(MC mean - target) / (SE + floor)``, SE = std over the M batch means / sqrt(M)."""
    mean = batches.mean(0)
    se = batches.std(0) / math.sqrt(batches.shape[0])
    return (mean - target) / (se + FLOOR)


def chi_square_upper(dof: int, z: float = 4.0) -> float:
    """Wilson-Hilferty: the chi-square(dof) quantile at the standard-normal quantile z (z = 4: p ~ 3e-5)."""
    return dof * (1.0 - 2.0 / (9.0 * dof) + z * math.sqrt(2.0 / (9.0 * dof))) ** 3


@pytest.fixture(scope="module")
def gradients() -> dict[str, torch.Tensor]:
    traj = rollout()
    out = {obj: batch_gradients(obj, traj) for obj in ("kl", "kl_pg", "paper")}
    out["full"] = closed_form_gradient(detach_marginals=False)
    out["direct"] = closed_form_gradient(detach_marginals=True)
    return out


def test_sampler_coefficients_agree_with_eq9_weight():
    """The KL weight (eq. 9) is the KL of the sampler's own transitions: w = c2^2 / (2 std^2)."""
    for c1, c2, std, w in COEFS:
        assert c1 != 1.0 and std > 0.0
        assert w == pytest.approx(c2**2 / (2.0 * std**2), rel=1e-5)


def test_closed_form_matches_monte_carlo_objective():
    """J itself (not a gradient): the closed form equals the MC mean of sum_k per_step_kl within 4 SE."""
    kl_sum = rollout()["kl"].double().sum(1)
    se = kl_sum.std() / math.sqrt(N)
    assert abs(kl_sum.mean().item() - closed_form(A, B, detach_marginals=False).item()) < Z_TOL * se.item()


def test_kl_pg_estimates_full_gradient(gradients):
    """kl_pg's MC mean gradient equals the closed-form full gradient: every component within 4 SE (+ 1e-5)."""
    z = z_scores(gradients["kl_pg"], gradients["full"])
    assert z.abs().max() < Z_TOL, z


def test_kl_estimates_direct_part_only(gradients):
    """kl's MC mean equals the closed-form direct part within 4 SE (+ 1e-5), and misses the full gradient by > 10 SE."""
    full, direct = gradients["full"], gradients["direct"]
    assert (full - direct).norm() > 0.2 * full.norm()  # the score-function part is not negligible here
    z = z_scores(gradients["kl"], direct)
    assert z.abs().max() < Z_TOL, z
    assert z_scores(gradients["kl"], full).abs().max() > 10.0


def test_paper_gradient_is_zero_in_expectation(gradients):
    """paper's MC mean is zero: every component within 4 SE (+ 1e-5), and sum z^2 below the chi-square(2KD) 4-sigma quantile.

    The same test rejects zero for kl_pg, whose mean is the (nonzero) full gradient.
    """
    dof = 2 * K * D
    z = z_scores(gradients["paper"], torch.zeros(dof, dtype=torch.float64))
    assert z.abs().max() < Z_TOL, z
    assert (z**2).sum() < chi_square_upper(dof)
    z_pg = z_scores(gradients["kl_pg"], torch.zeros(dof, dtype=torch.float64))
    assert z_pg.abs().max() > 10.0 and (z_pg**2).sum() > chi_square_upper(dof)
