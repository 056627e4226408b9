"""Rollouts: sample SDE trajectories with CFG and keep (state, next state, old log-prob, sigma) for the trained steps.

One engine for GRPO and OPD (SPEC sections 2, 4 and 6). The schedule is the
backbone's flow-match schedule; a *window* of k consecutive steps is
stochastic (the SDE of eq. 5-6) and the others are deterministic Euler steps
(Flow-GRPO-Fast / MixGRPO); ``timestep_fraction`` keeps the first fraction of
the stochastic steps for training (Flow-GRPO trains on the first 99%).

Every sample owns a random generator seeded by its own seed: its initial noise
and each step's noise depend only on that seed, so a trajectory is the same
whatever the batch or the number of processes it is sampled in.
"""

from __future__ import annotations

import dataclasses

import torch

from flowopd.backbone import Backbone, PromptEmbeds
from flowopd.errors import ConfigError
from flowopd.sampling import Spacing, guided_velocity, sigma_schedule
from flowopd.sde import sde_step


@dataclasses.dataclass
class StepPlan:
    """The sampling schedule and which of its steps are stochastic and trained."""

    sigmas: torch.Tensor  # [T + 1], 1 -> 0
    stochastic: list[bool]  # [T]: SDE (True) or Euler ODE (False)
    trained: list[int]  # indices of the steps whose transitions the objective uses

    @property
    def num_steps(self) -> int:
        return len(self.stochastic)


def plan_steps(
    num_steps: int,
    shift: float,
    window_size: int = 0,
    window_start: int = 0,
    timestep_fraction: float = 1.0,
    spacing: Spacing = "sd3",
    shift_terminal: float | None = None,
) -> StepPlan:
    """SDE on ``[window_start, window_start + window_size)`` (all steps when ``window_size`` is 0); train the first
    ``max(1, int(timestep_fraction * n_sde))`` of them (Flow-GRPO's rounding). The schedule: :func:`sigma_schedule`
    with ``shift``, ``spacing`` and ``shift_terminal``."""
    check_window(num_steps, window_size, window_start)
    if not 0.0 < timestep_fraction <= 1.0:
        raise ConfigError(f"timestep_fraction must be in (0, 1], got {timestep_fraction}")
    size = window_size or num_steps
    stochastic = [window_start <= i < window_start + size for i in range(num_steps)]
    sde_steps = [i for i, s in enumerate(stochastic) if s]
    trained = sde_steps[: max(1, int(timestep_fraction * len(sde_steps)))]
    return StepPlan(sigma_schedule(num_steps, shift, spacing, shift_terminal), stochastic, trained)


def check_window(num_steps: int, window_size: int, window_start: int) -> None:
    """A window must lie inside the schedule: a clear error that names the fix, before any compute."""
    if window_size < 0 or window_start < 0:
        raise ConfigError(f"sde_window_size and the window start must be >= 0, got {window_size} and {window_start}")
    if window_size > num_steps or window_start + max(window_size, 1) > num_steps:
        raise ConfigError(
            f"SDE window [{window_start}, {window_start + window_size}) is outside the {num_steps}-step schedule "
            f"(steps 0..{num_steps - 1}); lower sde_window_size / sde_window_start_max or raise sample_steps"
        )


@dataclasses.dataclass
class Trajectories:
    """What the objective needs from a rollout: transitions of the trained steps only, and the final images."""

    states: torch.Tensor  # [N, K, C, H, W] x at each trained step
    next_states: torch.Tensor  # [N, K, C, H, W] the sampled x_next
    log_probs: torch.Tensor  # [N, K] log-prob of x_next under the sampling policy (eq. 6)
    velocities: torch.Tensor  # [N, K, C, H, W] the sampling policy's (guided) velocity at each trained state
    step_indices: list[int]  # [K] which schedule steps
    images: torch.Tensor  # [N, 3, H, W] in [0, 1]
    latents: torch.Tensor  # [N, C, H, W] the final (clean) latents the images decode from (DiffusionNFT's x0)


@torch.no_grad()
def rollout(
    backbone: Backbone,
    cond: PromptEmbeds,
    uncond: PromptEmbeds | None,
    seeds: list[int],
    plan: StepPlan,
    cfg: float,
    noise_level: float,
    kind: str = "sde",
    batch_size: int = 32,
    transformer: torch.nn.Module | None = None,
    latent_seeds: list[int] | None = None,
    log_prob: str = "exact",
) -> Trajectories:
    """Sample ``len(seeds)`` trajectories (one per row of ``cond``) and keep the trained transitions.

    ``seeds`` drive each sample's SDE noise; ``latent_seeds`` (default: ``seeds``)
    its initial noise, so a group can share its starting latent (Flow-GRPO's
    ``same_latent``) while each sample still draws its own step noise.
    ``log_prob`` names the log-probability convention (``flowopd.sde.step_log_prob``).
    """
    latent_seeds = seeds if latent_seeds is None else latent_seeds
    chunks = []
    for start in range(0, len(seeds), batch_size):
        sl = slice(start, start + batch_size)
        chunks.append(
            _rollout_chunk(
                backbone,
                cond[sl],
                uncond[sl] if uncond is not None else None,
                seeds[sl],
                latent_seeds[sl],
                plan,
                cfg,
                noise_level,
                kind,
                transformer,
                log_prob,
            )
        )
    return Trajectories(
        states=torch.cat([c.states for c in chunks]),
        next_states=torch.cat([c.next_states for c in chunks]),
        log_probs=torch.cat([c.log_probs for c in chunks]),
        velocities=torch.cat([c.velocities for c in chunks]),
        step_indices=list(plan.trained),
        images=torch.cat([c.images for c in chunks]),
        latents=torch.cat([c.latents for c in chunks]),
    )


def _rollout_chunk(backbone, cond, uncond, seeds, latent_seeds, plan, cfg, noise_level, kind, transformer, log_prob) -> Trajectories:
    shape = tuple(backbone.latent_shape)
    device = backbone.device
    x = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in latent_seeds]).to(device)
    gens = [torch.Generator().manual_seed(int(s) + 1) for s in seeds]  # + 1: step noise never repeats the initial noise
    states, next_states, log_probs, velocities = [], [], [], []
    sigmas = plan.sigmas
    for i in range(plan.num_steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        v = guided_velocity(backbone, x, sigmas[i].to(device), cond, uncond, cfg, transformer=transformer)
        if plan.stochastic[i]:
            noise = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)
            out = sde_step(x, v, sigma, sigma_next, noise_level, noise=noise, kind=kind, log_prob=log_prob)
        else:
            out = sde_step(x, v, sigma, sigma_next, 0.0, kind=kind)
        if i in plan.trained:
            states.append(x.float())
            next_states.append(out.x_next)
            log_probs.append(out.log_prob)
            velocities.append(v.float())
        x = out.x_next.to(x.dtype)

    def stacked(values: list[torch.Tensor], *tail: int) -> torch.Tensor:  # a plan that trains no step (NFT): [N, 0, ...]
        return torch.stack(values, 1) if values else x.new_zeros((x.shape[0], 0, *tail)).float()

    return Trajectories(
        states=stacked(states, *shape),
        next_states=stacked(next_states, *shape),
        log_probs=stacked(log_probs),
        velocities=stacked(velocities, *shape),
        step_indices=list(plan.trained),
        images=backbone.decode(x),
        latents=x.float(),
    )
