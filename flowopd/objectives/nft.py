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

:class:`NFT` wires these into the one trainer (config section ``nft``): the
rollout is the old policy's deterministic ODE sample (its final latent is
``x0``; no transitions, no log-probabilities), rewards and advantages are
GRPO's, each sample trains at ``K = int(steps * timestep_fraction)`` distinct
times of the rollout's own schedule with fresh noise (the official 9 of 10),
and the old policy is a second LoRA adapter ``old`` on the same transformer,
soft-updated once per step. The paper's text was not available here, so the
formulas cite the official code (``scripts/train_nft_sd3.py``), not equation
numbers. The derivations are checked in ``tests/test_nft.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from flowopd.errors import ConfigError
from flowopd.objectives.grpo import GRPO

if TYPE_CHECKING:
    from flowopd.train_config import TrainConfig

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


# sampler fields that shape an SDE rollout: an NFT recipe that sets them expects an effect they cannot have
SDE_FIELDS = ("kind", "noise_level", "window_size", "window_start_max", "log_prob")
OLD = "old"  # the old (sampling) policy's adapter


class NFT(GRPO):
    """DiffusionNFT on rewards: ODE rollouts of the old policy, GRPO's advantages turned into ``r``, the NFT loss at
    fresh times, the old policy soft-updated after each step (module docstring)."""

    name = "nft"
    uses_transitions = False

    @classmethod
    def check_arithmetic(cls, cfg: TrainConfig, num_processes: int) -> None:
        """SDE and GRPO settings have no effect on NFT: refused by name, with the fix."""
        given = [f for f in SDE_FIELDS if f in cfg.sampler.model_fields_set]
        if given:
            raise ConfigError(
                f"sampler.{given[0]} shapes an SDE rollout; DiffusionNFT samples by the deterministic ODE: drop it from the recipe"
            )
        if cfg.sampler.same_latent:
            raise ConfigError("sampler.same_latent makes a group's ODE samples identical (no reward difference); set it false for NFT")
        if "grpo" in cfg.model_fields_set:
            raise ConfigError("the grpo section is GRPO's; DiffusionNFT reads nft: (adv_clip, adv_std, beta, kl): move the values there")

    @classmethod
    def lora_fields(cls, cfg: TrainConfig) -> dict[str, Any]:
        return {**super().lora_fields(cfg), "objective": "nft", "nft": cfg.nft.model_dump(mode="json")}

    @classmethod
    def plan_fields(cls, cfg: TrainConfig) -> dict[str, Any]:
        section = {**cfg.nft.model_dump(mode="json"), "timesteps_per_sample": times_per_sample(cfg), "cfg": cfg.sampler.cfg}
        return {"nft": {"rewards": cfg.rewards, "task_rewards": cfg.task_rewards, **section}}

    def setup(self) -> None:
        """The rewards (GRPO's), the ODE plan, and the old policy as a frozen copy of the fresh LoRA."""
        from flowopd.lora import copy_adapter
        from flowopd.rollout import StepPlan
        from flowopd.sampling import sigma_schedule

        super().setup()
        s = self.cfg.sampler
        sigmas = sigma_schedule(s.steps, s.shift, s.spacing, s.shift_terminal)
        self.plan = StepPlan(sigmas, [False] * s.steps, [])  # deterministic everywhere, no stored transitions
        self.times = sigmas[:-1]  # the schedule's times, 1 included, 0 not (the official `scheduler.timesteps`)
        self.k = times_per_sample(self.cfg)
        raw = self.trainer.backbone.transformer
        copy_adapter(raw, "default", OLD)
        named = dict(raw.named_parameters())
        self.old_names = sorted(n for n in named if f".{OLD}." in n)
        self.old = [named[n] for n in self.old_names]
        self.new = [named[n.replace(f".{OLD}.", ".default.")] for n in self.old_names]

    def rollout_plan(self, step: int) -> Any:
        return self.plan

    def sampling_policy(self) -> contextlib.AbstractContextManager:
        return self.trainer.adapter(OLD)  # the official rollouts sample with the old policy

    def trained_steps(self, batch: Any) -> int:
        return self.k

    def advantage_settings(self) -> tuple[str, float]:
        return self.cfg.nft.adv_std, self.cfg.nft.adv_clip

    def trained_samples(self, advantages: torch.Tensor, group_ids: torch.Tensor, failed: torch.Tensor) -> torch.Tensor:
        """Every scored sample: ``r = 1/2`` still pulls the policy toward the old one (the official trains them all)."""
        return ~failed

    def signal(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """GRPO's rewards and advantages, then ``r`` and each local sample's times and noise (from (seed, step, sample))."""
        keep, metrics = super().signal(batch)
        adv = batch.signal["advantages"]
        r = optimality_probability(adv.cpu(), self.cfg.nft.adv_clip)
        batch.signal["r"] = r.to(adv.device)
        shape = tuple(batch.traj.latents.shape[1:])
        times, noise = [], []
        for n in batch.local:
            g = torch.Generator().manual_seed(int(np.random.default_rng([self.cfg.seed, self.trainer.step, 4, n]).integers(2**62)))
            times.append(self.times[torch.randperm(len(self.times), generator=g)[: self.k]])
            noise.append(torch.randn((self.k, *shape), generator=g))
        batch.signal["t"], batch.signal["noise"] = torch.stack(times), torch.stack(noise)
        self.last_batch["t"] = batch.signal["t"]
        metrics["r_mean_abs"] = float((self.trainer.gather_global(r) - 0.5).abs().mean())
        return keep, metrics

    def piece_inputs(self, batch: Any, k: int, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_t = (1 - t) x0 + t eps`` of local samples ``a:b`` at their ``k``-th time, and those times ``[b - a]``."""
        t = batch.signal["t"][a:b, k]
        x0, eps = batch.traj.latents[a:b], batch.signal["noise"][a:b, k]
        tt = t.reshape(-1, *([1] * (x0.dim() - 1)))
        return (1 - tt) * x0 + tt * eps, t

    def piece_loss(self, batch: Any, k: int, a: int, b: int, x: torch.Tensor, v: torch.Tensor, out: Any) -> tuple[torch.Tensor, dict]:
        """The NFT loss against the old policy's velocity, plus ``kl * mean((v - v_base)^2)`` (the official KL term)."""
        trainer, nft = self.trainer, self.cfg.nft
        t = batch.signal["t"][a:b, k].to(x.device)
        with torch.no_grad(), trainer.adapter(OLD):
            v_old = trainer.guided(batch, slice(a, b), x, t)
        x0 = batch.traj.latents[a:b].to(x.device)
        r = batch.signal["r"][a:b]
        loss = nft_loss(v, v_old, x, x0, t, r, nft.beta, nft.weighting, nft.adv_clip)
        kl = torch.zeros_like(loss)
        if nft.kl > 0:
            with torch.no_grad(), trainer.adapter(None):
                v_ref = trainer.guided(batch, slice(a, b), x, t)
            kl = ((v - v_ref) ** 2).mean(dim=tuple(range(1, v.dim())))
            loss = loss + nft.kl * kl
        return loss, {"kl": kl.detach()}  # r is logged per step as r_mean_abs (its mean is 1/2 by construction)

    def after_update(self) -> None:
        """``theta_old <- eta theta_old + (1 - eta) theta`` with ``eta`` after this many optimizer steps (official: once per epoch)."""
        soft_update(self.old, self.new, old_policy_decay(self.trainer.step * self.cfg.updates_per_rollout, self.cfg.nft.old_policy))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.old_names, self.old, strict=True))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in zip(self.old_names, self.old, strict=True):
                p.copy_(state[name].to(p.device, p.dtype))


def times_per_sample(cfg: TrainConfig) -> int:
    """``max(1, int(steps * timestep_fraction))`` distinct times per sample (the official ``int(10 * 0.99) = 9``)."""
    return max(1, int(cfg.sampler.steps * cfg.sampler.timestep_fraction))
