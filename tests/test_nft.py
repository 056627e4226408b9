"""DiffusionNFT's math (flowopd/objectives/nft.py) against derivations written out here, not taken from the code."""

import math

import pytest
import torch

from flowopd.objectives.grpo import group_advantages
from flowopd.objectives.nft import implicit_policies, nft_loss, old_policy_decay, optimality_probability, soft_update


def _batch(seed: int = 0, b: int = 4, shape=(2, 3, 3)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, *shape, generator=g, dtype=torch.float64)
    eps = torch.randn(b, *shape, generator=g, dtype=torch.float64)
    t = torch.rand(b, generator=g, dtype=torch.float64) * 0.9 + 0.05
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    v_old = torch.randn(b, *shape, generator=g, dtype=torch.float64)
    return x0, eps, t, x_t, v_old


def _grad_at_old(v_old, x_t, x0, t, r, beta, weighting):
    v = v_old.clone().requires_grad_(True)  # theta = theta_old: the trained velocity equals the old one
    nft_loss(v, v_old, x_t, x0, t, r, beta, weighting).sum().backward()
    return v.grad


@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_plain_loss_gradient_at_the_old_policy_is_2_beta_2r_minus_1_times_v_old_minus_target(beta):
    """With L(v) = ||v - u||^2 summed, d/dv [r L(v+) + (1-r) L(v-)] = r 2 beta (v+ - u) - (1-r) 2 beta (v- - u), and at
    theta = theta_old (v+ = v- = v_old) it is 2 beta (2r - 1)(v_old - u). The code's loss is C/beta times this with
    mean instead of sum over the D elements, so its gradient is (C / beta) 2 beta (2r - 1)(v_old - u) / D."""
    x0, eps, t, x_t, v_old = _batch()
    r = torch.tensor([0.0, 0.25, 0.9, 1.0], dtype=torch.float64)
    u = eps - x0
    d = x0[0].numel()
    expected = 2 * beta * (2 * r.view(-1, 1, 1, 1) - 1) * (v_old - u)
    got = _grad_at_old(v_old, x_t, x0, t, r, beta, "none") * d * beta / 5.0
    torch.testing.assert_close(got, expected)


def test_adaptive_loss_gradient_at_the_old_policy():
    """The official loss, L(v) = mean((x0_hat - x0)^2) / sg(mean|x0_hat - x0|) with x0_hat - x0 = -t (v - u), is
    t mean((v - u)^2) / m with m = mean|v_old - u| held fixed; at theta = theta_old its gradient is
    (C / beta) (2r - 1) beta 2 t (v_old - u) / (D m) = 2 clip(A) t (v_old - u) / (D m), since C (2r - 1) = clip(A)."""
    x0, eps, t, x_t, v_old = _batch(1)
    u = eps - x0
    adv = torch.tensor([-7.0, -1.0, 0.5, 3.0], dtype=torch.float64)
    r = optimality_probability(adv)
    d = x0[0].numel()
    m = (v_old - u).abs().flatten(1).mean(1).view(-1, 1, 1, 1)
    tt = t.view(-1, 1, 1, 1)
    expected = 2 * adv.clamp(-5, 5).view(-1, 1, 1, 1) * tt * (v_old - u) / (d * m)
    for beta in (1.0, 0.3):  # beta cancels
        torch.testing.assert_close(_grad_at_old(v_old, x_t, x0, t, r, beta, "adaptive"), expected)


def test_half_optimal_samples_and_equal_rewards_carry_no_signal():
    x0, _, t, x_t, v_old = _batch(2)
    half = torch.full((4,), 0.5, dtype=torch.float64)
    for weighting in ("adaptive", "none"):
        assert _grad_at_old(v_old, x_t, x0, t, half, 1.0, weighting).abs().max() == 0
    # a group whose rewards are all equal: advantage 0, r = 1/2, no gradient; the other group still moves
    rewards = torch.tensor([0.7, 0.7, 0.2, 0.9])
    adv = group_advantages(rewards, torch.tensor([0, 0, 1, 1]))
    r = optimality_probability(adv.double())
    assert r[:2].tolist() == [0.5, 0.5] and r[2] < 0.5 < r[3]
    grad = _grad_at_old(v_old, x_t, x0, t, r, 1.0, "adaptive")
    assert grad[:2].abs().max() == 0 and grad[2:].abs().min() > 0


def test_the_implicit_policies_average_to_the_old_one_and_only_v_theta_gets_gradient():
    v = torch.randn(3, 4, requires_grad=True)
    v_old = torch.randn(3, 4, requires_grad=True)
    for beta in (1.0, 0.5, 0.01):
        pos, neg = implicit_policies(v, v_old, beta)
        torch.testing.assert_close((pos + neg) / 2, v_old.detach())
        (pos.sum() + neg.sum()).backward()
    assert v_old.grad is None
    with pytest.raises(ValueError, match=r"beta must be in \(0, 1\]"):
        implicit_policies(v, v_old, 0.0)


def test_optimality_probability_maps_clipped_advantages_onto_0_1():
    r = optimality_probability(torch.tensor([-9.0, -5.0, 0.0, 2.5, 5.0, 12.0]))
    assert r.tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]


def test_the_old_policy_after_n_soft_updates():
    """With theta fixed, n updates with decays eta_1..eta_n give theta_old_n = P theta_old_0 + (1 - P) theta,
    P = prod eta_k (by induction: theta_old_k - theta = eta_k (theta_old_{k-1} - theta))."""
    theta = [torch.randn(5, 3), torch.randn(7)]
    old = [torch.randn(5, 3), torch.randn(7)]
    start = [o.clone() for o in old]
    etas = [old_policy_decay(s) for s in range(1, 31)]
    for eta in etas:
        soft_update(old, theta, eta)
    p = math.prod(etas)
    for o, s, th in zip(old, start, theta):
        torch.testing.assert_close(o, p * s + (1 - p) * th)
    # the official schedules: on-policy (old = current), default min(0.001 s, 0.5), slow (0 for 75 steps, then 0.0075 a step)
    assert old_policy_decay(10, "on_policy") == 0.0
    assert old_policy_decay(0) == 0.0 and old_policy_decay(100) == pytest.approx(0.1) and old_policy_decay(10_000) == 0.5
    assert old_policy_decay(74, "slow") == 0.0 and old_policy_decay(95, "slow") == pytest.approx(0.15)
    assert old_policy_decay(10_000, "slow") == 0.999
    with pytest.raises(ValueError, match="unknown old-policy schedule"):
        old_policy_decay(1, "fast")
