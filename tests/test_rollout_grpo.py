"""Rollouts (SPEC section 2) and the GRPO objective (section 4), each against a direct computation."""

import numpy as np
import pytest
import torch

from flowopd.errors import ConfigError
from flowopd.objectives.grpo import clipped_surrogate, group_advantages, nonzero_groups
from flowopd.rollout import plan_steps, rollout
from flowopd.sde import sde_step

# ----------------------------------------------------------------------------- step plans


def test_plan_all_steps_trains_the_first_99_percent_like_flow_grpo():
    plan = plan_steps(10, 1.0, timestep_fraction=0.99)
    assert plan.stochastic == [True] * 10
    assert plan.trained == list(range(9))  # int(0.99 * 10) = 9: the last step is sampled but not trained
    assert plan.sigmas[0] == 1.0 and plan.sigmas[-1] == 0.0


def test_plan_window_is_stochastic_only_inside():
    plan = plan_steps(10, 1.0, window_size=3, window_start=4, timestep_fraction=1.0)
    assert [i for i, s in enumerate(plan.stochastic) if s] == [4, 5, 6]
    assert plan.trained == [4, 5, 6]
    assert plan_steps(10, 1.0, window_size=3, window_start=4, timestep_fraction=0.5).trained == [4]


@pytest.mark.parametrize("size,start", [(11, 0), (3, 8), (4, 7), (0, 10)])
def test_window_outside_the_schedule_is_a_clear_error(size, start):
    with pytest.raises(ConfigError, match="outside the 10-step schedule"):
        plan_steps(10, 1.0, window_size=size, window_start=start)


# ----------------------------------------------------------------------------- rollouts


@pytest.fixture(scope="module")
def policy(tiny_policy_dir):
    from flowopd.models import load_backbone

    return load_backbone(str(tiny_policy_dir))


def _rollout(backbone, prompts, seeds, plan, batch_size, kind="sde", a=0.7):
    cond = backbone.encode_prompts(prompts)
    uncond = backbone.encode_prompts([""] * len(prompts))
    return rollout(backbone, cond, uncond, seeds, plan, cfg=2.0, noise_level=a, kind=kind, batch_size=batch_size)


@pytest.mark.parametrize("kind", ["sde", "cps"])
def test_a_trajectory_depends_only_on_its_seed_not_on_the_batch(policy, kind):
    plan = plan_steps(4, 1.0, window_size=2, window_start=1, timestep_fraction=1.0)
    prompts = ["a red square", "a blue circle", "two green triangles"]
    together = _rollout(policy, prompts, [5, 6, 7], plan, batch_size=3, kind=kind)
    alone = _rollout(policy, prompts[1:2], [6], plan, batch_size=1, kind=kind)
    torch.testing.assert_close(together.next_states[1:2], alone.next_states, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(together.images[1:2], alone.images, rtol=1e-4, atol=1e-5)
    assert together.states.shape == (3, 2, 3, 32, 32) and together.log_probs.shape == (3, 2)
    assert not torch.equal(together.images[0], together.images[1])


def test_a_group_can_share_its_initial_latent_and_differ_only_by_sde_noise(policy):
    """Flow-GRPO's same_latent: before the window the samples are one trajectory; the window's noise splits them."""
    plan = plan_steps(4, 1.0, window_size=1, window_start=2, timestep_fraction=1.0)
    prompts = ["a red square"] * 3
    cond, uncond = policy.encode_prompts(prompts), policy.encode_prompts([""] * 3)
    traj = rollout(policy, cond, uncond, [1, 2, 3], plan, cfg=2.0, noise_level=0.7, batch_size=3, latent_seeds=[9, 9, 9])
    torch.testing.assert_close(traj.states[0], traj.states[1])
    torch.testing.assert_close(traj.states[0], traj.states[2])
    assert not torch.allclose(traj.next_states[0], traj.next_states[1])


def test_stored_log_probs_are_the_density_of_the_stored_transition(policy):
    """Recomputing log p(x_next | x) from the stored state and a fresh velocity gives the rollout's old log-prob."""
    from flowopd.sampling import guided_velocity

    plan = plan_steps(5, 1.0, timestep_fraction=0.99)
    prompts = ["a red square", 'the text "42"']
    traj = _rollout(policy, prompts, [1, 2], plan, batch_size=2)
    cond, uncond = policy.encode_prompts(prompts), policy.encode_prompts(["", ""])
    for k, i in enumerate(traj.step_indices):
        with torch.no_grad():
            v = guided_velocity(policy, traj.states[:, k], plan.sigmas[i], cond, uncond, 2.0)
        out = sde_step(traj.states[:, k], v, float(plan.sigmas[i]), float(plan.sigmas[i + 1]), 0.7, x_next=traj.next_states[:, k])
        torch.testing.assert_close(out.log_prob, traj.log_probs[:, k], rtol=1e-4, atol=1e-4)
        # and the consecutive transitions chain: the next state of one step is the state of the next
        if k + 1 < len(traj.step_indices):
            torch.testing.assert_close(traj.next_states[:, k], traj.states[:, k + 1])


def test_steps_outside_the_window_are_euler_steps(policy):
    """With SDE only on step 2, running the ODE to step 2 by hand reproduces the stored state there."""
    from flowopd.sampling import guided_velocity, initial_noise

    plan = plan_steps(4, 1.0, window_size=1, window_start=2, timestep_fraction=1.0)
    traj = _rollout(policy, ["a red square"], [11], plan, batch_size=1)
    cond, uncond = policy.encode_prompts(["a red square"]), policy.encode_prompts([""])
    x = initial_noise(1, (3, 32, 32), [11])
    with torch.no_grad():
        for i in range(2):
            x = x + (plan.sigmas[i + 1] - plan.sigmas[i]) * guided_velocity(policy, x, plan.sigmas[i], cond, uncond, 2.0)
    torch.testing.assert_close(traj.states[:, 0], x, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- GRPO advantages and loss


def _numpy_advantages(rewards, groups, per_group):
    rewards, groups = np.asarray(rewards, float), np.asarray(groups)
    out = np.zeros_like(rewards)
    for g in np.unique(groups):
        m = groups == g
        std = rewards[m].std() if per_group else rewards.std()
        out[m] = (rewards[m] - rewards[m].mean()) / (std + 1e-4)
    return np.clip(out, -5, 5)


@pytest.mark.parametrize("mode", ["global", "group"])
def test_group_advantages_match_a_numpy_computation(mode):
    rng = np.random.default_rng(0)
    rewards = rng.random(12)
    groups = np.repeat(np.arange(3), 4)
    got = group_advantages(torch.tensor(rewards), torch.tensor(groups), mode)
    np.testing.assert_allclose(got.numpy(), _numpy_advantages(rewards, groups, mode == "group"), rtol=1e-5, atol=1e-6)
    for g in range(3):  # every group's advantages are centred
        assert abs(float(got[groups == g].sum())) < 1e-5


def test_advantages_are_clipped_and_uniform_groups_dropped():
    # 50 groups that all scored 0 and one group [0, 1]: with the global std (~0.07) its advantages would be +-7
    rewards = torch.tensor([0.0] * 100 + [0.0, 1.0])
    groups = torch.arange(102) // 2
    adv = group_advantages(rewards, groups, "global")
    assert adv[-2:].tolist() == [-5.0, 5.0]
    keep = nonzero_groups(adv, groups)
    assert keep.tolist() == [False] * 100 + [True, True]  # groups whose samples all scored the same teach nothing
    assert group_advantages(rewards, groups, "group")[-1] == pytest.approx(1.0, abs=1e-3)  # per-group std: (1 - .5) / .5


def test_clipped_surrogate_is_ppo_pessimistic_bound():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.0, 1.5, 0.5, 1.5])).requires_grad_(True)
    adv = torch.tensor([2.0, 1.0, 1.0, -1.0])
    out = clipped_surrogate(new, old, adv, clip_range=0.2)
    torch.testing.assert_close(out.loss.detach(), torch.tensor([-2.0, -1.2, -0.5, 1.5]))
    assert out.clipped.tolist() == [False, True, False, False]
    out.loss.sum().backward()
    # the clipped sample gets no gradient; the others d(-A ratio)/d log_prob = -A ratio
    torch.testing.assert_close(new.grad, torch.tensor([-2.0, 0.0, -0.5, 1.5]))


def test_weighted_reward_renormalises_over_the_rewards_that_apply():
    from flowopd.mini import world
    from flowopd.reward_models.weighted import WeightedReward

    recs = [world.make_prompts("compose", 1, 0, tag="single_object")[0], world.make_prompts("text", 1, 0)[0]]
    images = torch.stack([torch.from_numpy(world.render(r, np.random.default_rng(0))).permute(2, 0, 1).float() / 255 for r in recs])
    mix = WeightedReward({"mini_geneval": 3.0, "mini_ocr": 1.0, "mini_preference": 1.0})
    total, parts = mix(images, [r.prompt for r in recs], [r.metadata for r in recs], [r.task for r in recs])
    assert torch.isnan(parts["mini_ocr"][0]) and torch.isnan(parts["mini_geneval"][1])  # neither applies to the other's prompt
    expected0 = (3 * parts["mini_geneval"][0] + parts["mini_preference"][0]) / 4
    expected1 = (parts["mini_ocr"][1] + parts["mini_preference"][1]) / 2
    torch.testing.assert_close(total, torch.stack([expected0, expected1]))
    assert float(parts["mini_geneval"][0]) == 1.0 and float(parts["mini_ocr"][1]) == 1.0  # ground truth scores full marks
