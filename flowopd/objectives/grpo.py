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
from typing import TYPE_CHECKING, Any

import torch

from flowopd.errors import ConfigError, FlowOPDError
from flowopd.objectives.base import Objective

if TYPE_CHECKING:
    from flowopd.train_config import TrainConfig

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


class GRPO(Objective):
    """GRPO on rewards (SPEC section 4): score the rollout, group-relative advantages, clipped ratio loss + beta KL."""

    name = "grpo"

    @classmethod
    def check_inputs(cls, cfg: TrainConfig) -> None:
        """Every reward can run here, names known tasks, and can score each trained task's prompts."""
        from flowopd.draws import training_prompts
        from flowopd.models import prompt_world
        from flowopd.reward_models.registry import get_reward_class
        from flowopd.tasks import unknown_tasks_message

        names = set(cfg.rewards) | {n for w in cfg.task_rewards.values() for n in w}
        for name in sorted(names):
            ok, why = get_reward_class(name).weights_status()  # unknown names: "did you mean ..."
            if not ok:
                raise FlowOPDError(f"reward {name!r} cannot run here: {why}")
        if (message := unknown_tasks_message(cfg.task_rewards, "task_rewards")) is not None:
            raise ConfigError(message)
        rewards = {n: get_reward_class(n)() for n in names}
        for t_index, task in enumerate(t for t, w in cfg.tasks.items() if w > 0):
            if task in cfg.prompts:
                rec = training_prompts(cfg.prompts[task], task)[0]
            else:  # check_prompts has made sure a task without a prompt file has a world that draws it
                rec = prompt_world(cfg.model).prompts(task, 1, seed=t_index, split="train")[0]
            weights = cfg.task_rewards.get(task, cfg.rewards)
            if not any(w > 0 and rewards[n].applies_to(rec.prompt, rec.metadata) for n, w in weights.items()):
                raise ConfigError(
                    f"no reward in {sorted(weights)} can score {task} prompts such as {rec.prompt!r}; "
                    f"add one (e.g. task_rewards: {{{task}: {{...}}}}) or drop {task} from tasks"
                )

    @classmethod
    def lora_fields(cls, cfg: TrainConfig) -> dict[str, Any]:
        return {"rewards": cfg.task_rewards or cfg.rewards}

    @classmethod
    def plan_fields(cls, cfg: TrainConfig) -> dict[str, Any]:
        grpo = cfg.grpo
        section = {"beta": grpo.beta, "kl_weighting": grpo.kl_weighting, "clip_range": grpo.clip_range, "adv_std": grpo.adv_std}
        return {"grpo": {"rewards": cfg.rewards, "task_rewards": cfg.task_rewards, **section}}

    def setup(self) -> None:
        from flowopd.reward_models.weighted import WeightedReward

        self.rewards = WeightedReward(self.cfg.rewards, self.cfg.task_rewards)

    def advantage_settings(self) -> tuple[str, float]:
        """The advantages' std mode and clip (the ``grpo`` section's)."""
        return self.cfg.grpo.adv_std, self.cfg.grpo.adv_clip

    def trained_samples(self, advantages: torch.Tensor, group_ids: torch.Tensor, failed: torch.Tensor) -> torch.Tensor:
        """The samples the update trains on: scored ones of groups with a reward difference (the others teach nothing)."""
        return nonzero_groups(advantages, group_ids) & ~failed

    def signal(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Score this process's images, gather every reward, and compute advantages over whole groups (eq. 3)."""
        cfg, trainer = self.cfg, self.trainer
        recs = batch.records
        prompts = [r.prompt for r in recs]
        reward_local, per_reward_local = self.rewards(batch.traj.images, prompts, [r.metadata for r in recs], [r.task for r in recs])
        rewards = trainer.gather_global(reward_local)
        group_ids = torch.arange(cfg.batch_size) // cfg.group_size
        failed = torch.isnan(rewards)
        if failed.all():
            first = getattr(self.rewards, "last_errors", [])[:1] or ["on another process"]
            raise FlowOPDError(f"every image of step {trainer.step + 1} failed to score; the first: {first[0]} (is its server up?)")
        adv = group_advantages(rewards, group_ids, *self.advantage_settings())
        keep = self.trained_samples(adv, group_ids, failed)
        batch.signal["advantages"] = adv[batch.local].to(trainer.accelerator.device)
        self.last_batch = {"local": batch.local, "reward_local": reward_local, "rewards": rewards, "advantages": adv, "prompts": prompts}
        metrics = {
            "reward": float(rewards[~failed].mean()),
            "reward_std": float(rewards[~failed].std(unbiased=False)),
            "reward_failed": float(failed.sum()),
            "kept_frac": float(keep.float().mean()),
        }
        metrics.update(trainer.per_task(keep.float(), [r.task for r in recs], "kept_frac"))  # groups with a reward difference
        for name, local_vals in per_reward_local.items():
            vals = trainer.gather_global(local_vals)
            if (~torch.isnan(vals)).any():
                metrics[f"reward/{name}"] = float(vals[~torch.isnan(vals)].mean())
        return keep, metrics

    def piece_loss(self, batch: Any, k: int, a: int, b: int, x: torch.Tensor, v: torch.Tensor, out: Any) -> tuple[torch.Tensor, dict]:
        """Clipped ratio loss (eq. 3) + beta KL to the reference, per sample."""
        from flowopd.sde import per_step_kl

        cfg, scfg, sig, i_step = self.cfg, self.cfg.sampler, batch.plan.sigmas, batch.plan.trained[k]
        old = batch.traj.log_probs[a:b, k].to(x.device)
        surr = clipped_surrogate(out.log_prob, old, batch.signal["advantages"][a:b], cfg.grpo.clip_range)
        loss, kl = surr.loss, torch.zeros_like(surr.loss)
        if cfg.grpo.beta > 0:
            v_ref = self.trainer.reference_velocity(batch, a, b, x, i_step)
            kl = per_step_kl(v, v_ref, sig[i_step], sig[i_step + 1], scfg.noise_level, scfg.kind, cfg.grpo.kl_weighting)
            loss = loss + cfg.grpo.beta * kl
        return loss, {"kl": kl.detach(), "clip_frac": surr.clipped.float(), "ratio": surr.ratio}
