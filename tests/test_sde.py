"""The sampler step and per-step KL (SPEC sections 2-3), each against an independent derivation."""

import math

import pytest
import torch

from flowopd.sampling import sigma_schedule
from flowopd.sde import kl_weight, per_step_kl, sde_step

SIGMAS = sigma_schedule(10)
STEPS = [(float(SIGMAS[i]), float(SIGMAS[i + 1])) for i in range(10)]  # includes sigma = 1 and sigma_next = 0


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["sde", "cps"])
@pytest.mark.parametrize("step", range(10))
def test_log_prob_equals_torch_normal_density(kind, step):
    sigma, sigma_next = STEPS[step]
    x, v = rand(3, 3, 4, 4, seed=1), rand(3, 3, 4, 4, seed=2)
    out = sde_step(x, v, sigma, sigma_next, 0.7, noise=rand(3, 3, 4, 4, seed=3), kind=kind)
    if out.std == 0:  # cps at the last step is deterministic
        assert kind == "cps" and sigma_next == 0.0
        torch.testing.assert_close(out.x_next, x - sigma * v)
        return
    ref = torch.distributions.Normal(out.mean, out.std).log_prob(out.x_next).flatten(1).mean(1)
    torch.testing.assert_close(out.log_prob, ref, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(out.x_next).all() and torch.isfinite(out.log_prob).all()


def test_sde_mean_and_std_follow_eq_5_6_written_out():
    sigma, sigma_next, a = 0.6, 0.45, 0.7
    x, v, eps = rand(2, 3, 2, 2, seed=4), rand(2, 3, 2, 2, seed=5), rand(2, 3, 2, 2, seed=6)
    out = sde_step(x, v, sigma, sigma_next, a, noise=eps)
    dt = sigma_next - sigma
    s = a * math.sqrt(sigma / (1 - sigma))
    mean = x * (1 + s**2 / (2 * sigma) * dt) + v * (1 + s**2 * (1 - sigma) / (2 * sigma)) * dt
    torch.testing.assert_close(out.mean, mean)
    assert out.std.item() == pytest.approx(s * math.sqrt(-dt))
    torch.testing.assert_close(out.x_next, mean + s * math.sqrt(-dt) * eps)


def test_sigma_one_uses_the_first_sigma_below_one():
    sigma, sigma_next = STEPS[0]
    assert sigma == 1.0
    out = sde_step(rand(1, 3, 2, 2), rand(1, 3, 2, 2, seed=1), sigma, sigma_next, 0.7)
    expected_std_dev = 0.7 * math.sqrt(1.0 / (1.0 - sigma_next))
    assert out.std.item() == pytest.approx(expected_std_dev * math.sqrt(sigma - sigma_next))
    assert math.isfinite(kl_weight(sigma, sigma_next, 0.7))


@pytest.mark.parametrize("kind", ["sde", "cps"])
def test_zero_noise_is_the_euler_step(kind):
    x, v = rand(2, 3, 4, 4), rand(2, 3, 4, 4, seed=1)
    for sigma, sigma_next in STEPS:
        out = sde_step(x, v, sigma, sigma_next, 0.0, kind=kind)
        torch.testing.assert_close(out.x_next, x + (sigma_next - sigma) * v, rtol=1e-5, atol=1e-6)
        assert out.std.item() == 0.0 and out.log_prob.abs().sum() == 0


def test_gradient_flows_through_the_mean_not_the_sample():
    x, v = rand(2, 3, 4, 4), rand(2, 3, 4, 4, seed=1).requires_grad_(True)
    out = sde_step(x, v, 0.5, 0.4, 0.7)
    assert not out.x_next.requires_grad
    out.log_prob.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["sde", "cps"])
def test_closed_form_kl_equals_mean_gap_over_twice_the_variance(kind):
    x, v_a, v_b = rand(4, 3, 4, 4), rand(4, 3, 4, 4, seed=1), rand(4, 3, 4, 4, seed=2)
    for sigma, sigma_next in STEPS:
        if kind == "cps" and sigma_next == 0.0:
            with pytest.raises(ValueError, match="deterministic"):
                per_step_kl(v_a, v_b, sigma, sigma_next, 0.7, kind=kind)
            continue
        a = sde_step(x, v_a, sigma, sigma_next, 0.7, kind=kind)
        b = sde_step(x, v_b, sigma, sigma_next, 0.7, kind=kind)
        direct = ((a.mean - b.mean) ** 2).flatten(1).mean(1) / (2 * a.std**2)
        torch.testing.assert_close(per_step_kl(v_a, v_b, sigma, sigma_next, 0.7, kind=kind), direct, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["sde", "cps"])
def test_kl_matches_a_monte_carlo_estimate(kind):
    """E_{x ~ P_a}[log p_a(x) - log p_b(x)], estimated from samples, against the closed form."""
    sigma, sigma_next = 0.7, 0.55
    x, v_a = rand(1, 3, 4, 4), rand(1, 3, 4, 4, seed=1)
    v_b = v_a + rand(1, 3, 4, 4, seed=2)  # a large gap: relative precision grows with it (KL ~ gap^2, noise ~ gap)
    n = 40000
    xs, va, vb = x.expand(n, -1, -1, -1), v_a.expand(n, -1, -1, -1), v_b.expand(n, -1, -1, -1)
    gen = torch.Generator().manual_seed(7)
    a = sde_step(xs, va, sigma, sigma_next, 0.7, kind=kind, generator=gen)
    b_mean = sde_step(xs, vb, sigma, sigma_next, 0.7, kind=kind, noise=torch.zeros_like(xs)).mean
    log_pa = torch.distributions.Normal(a.mean, a.std).log_prob(a.x_next)
    log_pb = torch.distributions.Normal(b_mean, a.std).log_prob(a.x_next)
    mc = (log_pa - log_pb).flatten(1).mean(1)
    closed = per_step_kl(v_a, v_b, sigma, sigma_next, 0.7, kind=kind)
    stderr = mc.std() / math.sqrt(n)
    assert 4 * stderr < 0.05 * closed.item()  # the check can tell a 5% error apart
    assert abs(mc.mean() - closed.item()) < 4 * stderr


def test_flow_grpo_weighting_is_exact_times_dt_for_sde_and_exact_for_cps():
    """Flow-GRPO's sde KL drops |dt| from the denominator; its cps KL is the exact ||mu_a - mu_b||^2 / (2 std^2)."""
    v_a, v_b = rand(3, 3, 4, 4), rand(3, 3, 4, 4, seed=1)
    for sigma, sigma_next in STEPS[:-1]:
        exact = per_step_kl(v_a, v_b, sigma, sigma_next, 0.7, kind="sde")
        fg = per_step_kl(v_a, v_b, sigma, sigma_next, 0.7, kind="sde", weighting="flow_grpo")
        torch.testing.assert_close(fg, exact * (sigma - sigma_next))
        # cps, written out from Flow-GRPO's formula: mu = x0_hat (1 - s') + x1_hat sqrt(s'^2 - std^2), std = s' sin(a pi / 2)
        std = sigma_next * math.sin(0.7 * math.pi / 2)
        dmu = (v_a - v_b) * (-sigma * (1 - sigma_next) + (1 - sigma) * math.sqrt(sigma_next**2 - std**2))
        expected = (dmu**2).flatten(1).mean(1) / (2 * std**2)
        fg_cps = per_step_kl(v_a, v_b, sigma, sigma_next, 0.7, kind="cps", weighting="flow_grpo")
        torch.testing.assert_close(fg_cps, expected)
        torch.testing.assert_close(fg_cps, per_step_kl(v_a, v_b, sigma, sigma_next, 0.7, kind="cps"))


def test_flow_grpo_cps_log_prob_drops_the_variance_and_constants():
    """cps under ``flow_grpo``: log p = -mean((x_next - mu)^2), so log-ratios are 2 std^2 times the density's."""
    from flowopd.sde import sde_step

    x, v_old, v_new = rand(4, 3, 4, 4), rand(4, 3, 4, 4, seed=1), rand(4, 3, 4, 4, seed=2)
    sigma, sigma_next = STEPS[2]
    old = sde_step(x, v_old, sigma, sigma_next, 0.8, kind="cps", generator=torch.Generator().manual_seed(0), log_prob="flow_grpo")
    torch.testing.assert_close(old.log_prob, -((old.x_next - old.mean) ** 2).flatten(1).mean(1))
    new_fg = sde_step(x, v_new, sigma, sigma_next, 0.8, kind="cps", x_next=old.x_next, log_prob="flow_grpo")
    old_ex = sde_step(x, v_old, sigma, sigma_next, 0.8, kind="cps", x_next=old.x_next)
    new_ex = sde_step(x, v_new, sigma, sigma_next, 0.8, kind="cps", x_next=old.x_next)
    std = float(old.std)
    torch.testing.assert_close(new_fg.log_prob - old.log_prob, (new_ex.log_prob - old_ex.log_prob) * 2 * std**2)
    # sde keeps the density under either name (Flow-GRPO's sde sampler uses it)
    a = sde_step(x, v_old, sigma, sigma_next, 0.7, kind="sde", x_next=old.x_next, log_prob="flow_grpo")
    torch.testing.assert_close(a.log_prob, sde_step(x, v_old, sigma, sigma_next, 0.7, kind="sde", x_next=old.x_next).log_prob)


def test_kl_is_zero_for_equal_policies_and_grows_quadratically():
    v = rand(2, 3, 4, 4)
    d = rand(2, 3, 4, 4, seed=1)
    assert per_step_kl(v, v, 0.5, 0.4, 0.7).abs().max() == 0
    k1, k2 = per_step_kl(v + d, v, 0.5, 0.4, 0.7), per_step_kl(v + 2 * d, v, 0.5, 0.4, 0.7)
    torch.testing.assert_close(k2, 4 * k1)


@pytest.mark.parametrize("kind", ["sde", "cps"])
def test_velocity_weighting_is_the_plain_velocity_gap_at_every_step(kind):
    v, d = rand(2, 3, 4, 4), rand(2, 3, 4, 4, seed=1)
    for sigma, sigma_next in [(1.0, 0.9), (0.4, 0.3)]:
        out = per_step_kl(v + d, v, sigma, sigma_next, 0.8, kind, "velocity")
        torch.testing.assert_close(out, (d**2).flatten(1).mean(1))
    early, late = (per_step_kl(v + d, v, s, s - 0.1, 0.8, kind) for s in (1.0, 0.4))
    assert (late > 10 * early).all()  # the exact KL weighs a late step far above the first, layout-setting one


def test_last_sde_step_is_finite():
    sigma, sigma_next = STEPS[-1]
    assert sigma_next == 0.0
    out = sde_step(rand(2, 3, 4, 4), rand(2, 3, 4, 4, seed=1), sigma, sigma_next, 0.7)
    assert torch.isfinite(out.log_prob).all() and out.std > 0


def test_cps_preserves_the_noise_coefficient():
    """With the exact velocity of one clean image, x_next = (1 - sigma_next) x0 + sigma_next * (unit noise)."""
    sigma, sigma_next = 0.8, 0.6
    n = 20000
    x0 = rand(1, 3, 4, 4).expand(n, -1, -1, -1)
    eps = rand(n, 3, 4, 4, seed=1)
    x = (1 - sigma) * x0 + sigma * eps
    out = sde_step(x, eps - x0, sigma, sigma_next, 0.8, kind="cps", generator=torch.Generator().manual_seed(2))
    noise_part = (out.x_next - (1 - sigma_next) * x0) / sigma_next
    assert abs(noise_part.std().item() - 1.0) < 0.01


def test_bad_arguments():
    x = rand(1, 3, 2, 2)
    with pytest.raises(ValueError, match="sampler kind"):
        sde_step(x, x, 0.5, 0.4, 0.7, kind="ddim")
    with pytest.raises(ValueError, match="sigma_next < sigma"):
        sde_step(x, x, 0.4, 0.5, 0.7)
    with pytest.raises(ValueError, match="KL weighting"):
        per_step_kl(x, x, 0.5, 0.4, 0.7, weighting="paper")
    with pytest.raises(ValueError, match="deterministic"):
        per_step_kl(x, x, 0.5, 0.4, 0.0)


@pytest.mark.parametrize("shift", [1.0, 1.111, 1.6328428585118553, 1.8776, 3.0])
def test_sigma_schedule_starts_at_one_for_any_shift(shift):
    """Many shifts (1.111; Qwen-Image's exp(mu) at 64 tokens, 1.6328...) put the scheduler's sigma_0 at 1 + 1 ulp in float32:
    it must not pass 1 (the SDE step refuses sigma > 1); 1 - 1 ulp is the scheduler's own value and stays."""
    from flowopd.sampling import sigma_schedule

    for steps in (6, 10, 28):
        sigmas = sigma_schedule(steps, shift)
        assert 1.0 - 1e-6 < float(sigmas[0]) <= 1.0 and float(sigmas[-1]) == 0.0 and bool((sigmas[1:] < sigmas[:-1]).all())
        for terminal in (None, 0.02):
            sigmas = sigma_schedule(steps, shift, "pipeline", terminal)
            assert float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0 and bool((sigmas[1:] < sigmas[:-1]).all())


@pytest.mark.parametrize("shift_terminal", [None, 0.02])
@pytest.mark.parametrize("shift", [1.0, 1.7138, 3.0])
def test_pipeline_spacing_is_diffusers_own(shift, shift_terminal):
    """``spacing="pipeline"``: FluxPipeline's / QwenImagePipeline's points linspace(1, 1/T) through a scheduler with
    dynamic (exponential) shifting at mu = log(shift), as the pipelines call it, bit for bit; the same as the plain shift
    s t / (1 + (s - 1) t) on those points (to float32 rounding), then the terminal stretch to 0.02."""
    import math

    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    from flowopd.sampling import sigma_schedule

    for steps in (4, 10, 50):
        ours = sigma_schedule(steps, shift, "pipeline", shift_terminal)
        dynamic = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift_terminal=shift_terminal)
        dynamic.set_timesteps(steps, sigmas=np.linspace(1.0, 1 / steps, steps), mu=math.log(shift))
        assert torch.equal(ours, dynamic.sigmas)
        plain = FlowMatchEulerDiscreteScheduler(shift=shift, shift_terminal=shift_terminal)
        plain.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps))
        torch.testing.assert_close(ours, plain.sigmas, rtol=0, atol=3e-7)
        t = torch.linspace(1.0, 1 / steps, steps, dtype=torch.float64)
        by_hand = shift * t / (1 + (shift - 1) * t)
        if shift_terminal is not None:
            by_hand = 1 - (1 - by_hand) * (1 - shift_terminal) / (1 - by_hand[-1])
            assert float(ours[-2]) == pytest.approx(shift_terminal, abs=1e-7)
        torch.testing.assert_close(ours[:-1].double(), by_hand, rtol=0, atol=1e-6)
        assert len(ours) == steps + 1 and float(ours[-1]) == 0.0
    assert torch.equal(sigma_schedule(10, shift, "sd3"), sigma_schedule(10, shift))  # sd3: the default, unchanged
    with pytest.raises(ValueError, match="spacing"):
        sigma_schedule(10, shift, "flux")
