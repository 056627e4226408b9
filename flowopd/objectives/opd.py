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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from flowopd.errors import ConfigError
from flowopd.objectives.base import Objective
from flowopd.objectives.grpo import clipped_surrogate

if TYPE_CHECKING:
    from flowopd.train_config import TrainConfig

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


def task_balance_weights(trajectory_kl: torch.Tensor, task_ids: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-sample weights of the KL term (global batch order): 1 (``none``, eq. 9 as written), or (``kl``) the mean over
    the batch's tasks of their mean trajectory KL, divided by the sample's own task's mean, so each task's samples carry
    the same share of the signal whatever its teacher's distance from the student. Detached: a reweighting, not a new
    gradient path."""
    if mode == "none":
        return torch.ones_like(trajectory_kl)
    present = task_ids.unique()
    means = torch.stack([trajectory_kl[task_ids == t].mean() for t in present]).clamp_min(1e-12)
    per_sample = means[torch.searchsorted(present, task_ids)]
    return (means.mean() / per_sample).detach()


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


def check_kl_weights(cfg: TrainConfig) -> None:
    """No trained step may be (nearly) deterministic: OPD's KL there is undefined, or so heavily weighted that it rules the loss.

    With cps the std of a step is ``sigma_next * sin(a pi / 2)``: the last step
    (``sigma_next = 0``) has none, and diffusers' schedules end ``..., 0.001, 0``,
    so the step into 0.001 weighs thousands of times any other (eq. 9 is exact
    there; one step would decide every update).
    """
    from flowopd.rollout import plan_steps
    from flowopd.sde import per_step_kl

    scfg = cfg.sampler
    sigmas = plan_steps(scfg.steps, scfg.shift, spacing=scfg.spacing, shift_terminal=scfg.shift_terminal).sigmas
    steps = [i for i in range(scfg.steps) if float(sigmas[i + 1]) > 0]
    one = torch.ones(1, 1)

    def weight(i: int) -> float:
        return float(per_step_kl(one, torch.zeros(1, 1), sigmas[i], sigmas[i + 1], scfg.noise_level, scfg.kind, cfg.opd.kl_weighting))

    median = sorted(weight(i) for i in steps)[len(steps) // 2]
    trained = sorted(
        {
            i
            for start in range(scfg.window_start_max + 1)
            for i in plan_steps(
                scfg.steps, scfg.shift, scfg.window_size, start, scfg.timestep_fraction, scfg.spacing, scfg.shift_terminal
            ).trained
        }
    )
    bad = [i for i in trained if float(sigmas[i + 1]) == 0 or weight(i) > 1000 * median]
    if bad:
        i, first_bad = max(bad), min(bad)  # report the latest (a deterministic last step, if trained); fix from the first
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        why = "is deterministic (sigma_next = 0)" if s_next == 0 else f"weighs {weight(i):.0f}, {weight(i) / median:.0f}x the median step"
        raise ConfigError(
            f"OPD would train sampler step {i} (sigma {s:.3f} -> {s_next:.3f}), whose {scfg.kind} KL {why}; "
            f"keep trained steps before step {first_bad} (e.g. sampler.window_start_max {max(0, first_bad - max(scfg.window_size, 1))} "
            f"or timestep_fraction {first_bad / scfg.steps:.2f})"
        )


def anchor_folder(cfg: TrainConfig) -> Path | None:
    """The MAR anchor's LoRA folder: a teacher's name, a shipped weight or a folder; None: the base model."""
    from flowopd.lora import LORA_FILE
    from flowopd.teachers import TeacherSpec

    anchor = cfg.opd.anchor
    if anchor is None:
        return None
    for spec in cfg.opd.teachers:
        if anchor == spec.name:
            return spec.lora_folder()
    try:
        return TeacherSpec(name="anchor", tasks=["-"], reward="-", checkpoint=anchor).lora_folder()
    except ConfigError:
        raise ConfigError(
            f"opd.anchor {anchor!r} is neither a teacher ({', '.join(t.name for t in cfg.opd.teachers)}), a shipped weight nor a folder "
            f"with {LORA_FILE}; name one, or set anchor: null to anchor to the base model"
        ) from None


class OPD(Objective):
    """On-policy distillation from routed teachers (SPEC section 6): the teachers' velocities at the student's states."""

    name = "opd"

    @classmethod
    def check_arithmetic(cls, cfg: TrainConfig, num_processes: int) -> None:
        from flowopd.teachers import Router

        Router(cfg.opd.teachers, cfg.opd.routing).check([t for t, w in cfg.tasks.items() if w > 0])
        check_kl_weights(cfg)

    @classmethod
    def check_inputs(cls, cfg: TrainConfig) -> None:
        """A teacher or anchor recorded as trained on another base, or missing, or bad merge weights: refused before the cold start."""
        from flowopd.coldstart import merge_weights
        from flowopd.models import check_base, model_digest

        opd = cfg.opd
        digest = model_digest(cfg.model)
        for spec in opd.teachers:
            check_base(spec.lora_folder(), cfg.model, digest)
        if opd.anchor is not None:
            check_base(anchor_folder(cfg), cfg.model, digest)
        if opd.cold_start.method == "merge" and not opd.cold_start.from_lora:
            merge_weights(cfg)

    @classmethod
    def lora_fields(cls, cfg: TrainConfig) -> dict[str, Any]:
        opd = cfg.opd
        return {
            "teachers": {t.name: {"tasks": t.tasks, "reward": t.reward, "checkpoint": t.checkpoint} for t in opd.teachers},
            "objective": opd.objective,
            "mar_lambda": opd.mar_lambda,
            "anchor": opd.anchor,
            "cold_start": opd.cold_start.method,
        }

    @classmethod
    def plan_fields(cls, cfg: TrainConfig) -> dict[str, Any]:
        opd, cs = cfg.opd, cfg.opd.cold_start
        teachers = [{"name": t.name, "tasks": t.tasks, "reward": t.reward, "checkpoint": t.checkpoint} for t in opd.teachers]
        section = {"objective": opd.objective, "routing": opd.routing, "teachers": teachers, "anchor": opd.anchor}
        section.update(mar_lambda=opd.mar_lambda, kl_weighting=opd.kl_weighting, beta=opd.beta)
        cold = {"method": cs.method, "merge": cs.merge, "from_lora": cs.from_lora}
        return {"opd": {**section, "cold_start": {**cold, **({"sft": cs.sft.model_dump()} if cs.method == "sft" else {})}}}

    def initial_lora(self) -> Path | None:
        """The student's initial LoRA (SPEC section 5), made once on the main process; reused when resuming."""
        from flowopd.coldstart import cold_start
        from flowopd.run_folder import COLDSTART_DIR

        trainer = self.trainer
        acc, folder = trainer.accelerator, trainer.out / COLDSTART_DIR
        if acc.is_main_process:
            self.cold_start_folder = cold_start(self.cfg, folder, reuse=trainer.resume_from is not None)
        acc.wait_for_everyone()
        if not acc.is_main_process:
            self.cold_start_folder = cold_start(self.cfg, folder, reuse=True)
        return self.cold_start_folder

    def setup(self) -> None:
        """Teachers and the MAR anchor as frozen adapters on the student's own transformer."""
        from flowopd.coldstart import load_teachers
        from flowopd.lora import load_lora
        from flowopd.models import check_base
        from flowopd.teachers import Router

        cfg, backbone = self.cfg, self.trainer.backbone
        self.teacher_adapters = load_teachers(backbone, cfg)
        self.router = Router(cfg.opd.teachers, cfg.opd.routing)
        folder = anchor_folder(cfg)
        self.anchor_adapter = None  # None: the base model (every adapter off)
        if folder is not None:
            same = [n for n, spec in zip(self.teacher_adapters, cfg.opd.teachers) if spec.lora_folder().resolve() == folder.resolve()]
            if same:
                self.anchor_adapter = self.teacher_adapters[same[0]]
            else:
                check_base(folder, cfg.model, self.trainer.base_digest)
                load_lora(backbone.transformer, folder, "anchor")
                self.anchor_adapter = "anchor"

    def signal(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Routed teacher (and anchor) velocities at every trained state, per-step KLs and the surrogate's advantages (eq. 7-11).

        Each teacher runs one gradient-free, batched forward per step over the
        samples routed to it; the KLs use the rollout's own student velocities.
        """
        from flowopd.sde import per_step_kl

        cfg, opd, scfg, trainer = self.cfg, self.cfg.opd, self.cfg.sampler, self.trainer
        traj, sig = batch.traj, batch.plan.sigmas
        tasks = [r.task for r in batch.records]
        routes = self.router.groups(tasks)
        v_teacher = self._velocities(batch, [(self.teacher_adapters[t], idx) for t, idx in routes.items()])
        v_anchor = self._velocities(batch, [(self.anchor_adapter, list(range(len(tasks))))]) if opd.mar_lambda > 0 else None
        kl = torch.stack(
            [
                per_step_kl(traj.velocities[:, k], v_teacher[:, k], sig[i], sig[i + 1], scfg.noise_level, scfg.kind, opd.kl_weighting)
                for k, i in enumerate(batch.plan.trained)
            ],
            1,
        )  # [n_local, K]
        kl_all = trainer.gather_global(kl)
        group_ids = torch.arange(cfg.batch_size) // cfg.group_size
        advantages = step_advantages(opd.objective, kl_all, group_ids)[batch.local].to(trainer.accelerator.device)
        task_ids = trainer.gather_global(torch.tensor([sorted(cfg.tasks).index(t) for t in tasks]))
        task_weight = task_balance_weights(kl_all.sum(1), task_ids, opd.task_balance)[batch.local]
        batch.signal.update(advantages=advantages, v_teacher=v_teacher, v_anchor=v_anchor, task_weight=task_weight)
        metrics = {"kl_rollout": float(kl_all.sum(1).mean())}
        metrics.update(trainer.per_task(kl_all.sum(1), tasks, "kl"))  # trajectory KL to the routed teacher
        self.last_batch = {"local": batch.local, "kl": kl_all, "advantages": advantages, "tasks": tasks, "routes": routes}
        return torch.ones(cfg.batch_size, dtype=torch.bool), metrics

    def _velocities(self, batch: Any, jobs: list[tuple[str | None, list[int]]]) -> torch.Tensor:
        """The guided velocity of adapter ``name`` at the trained states of samples ``rows``, for each (name, rows) job."""
        trainer, sig, traj = self.trainer, batch.plan.sigmas, batch.traj
        target = torch.empty_like(traj.velocities)
        for adapter, idx in jobs:
            with torch.no_grad(), trainer.adapter(adapter):
                for k, i_step in enumerate(batch.plan.trained):
                    for a in range(0, len(idx), self.cfg.micro_batch):
                        rows = idx[a : a + self.cfg.micro_batch]
                        x = traj.states[rows, k].to(trainer.accelerator.device)
                        target[rows, k] = trainer.guided(batch, rows, x, sig[i_step]).float().cpu()
        return target

    def piece_loss(self, batch: Any, k: int, a: int, b: int, x: torch.Tensor, v: torch.Tensor, out: Any) -> tuple[torch.Tensor, dict]:
        """The OPD objective at one trained step (eq. 9-11) + MAR (eq. 12), per sample."""
        from flowopd.sde import per_step_kl

        opd, scfg, sig, i_step = self.cfg.opd, self.cfg.sampler, batch.plan.sigmas, batch.plan.trained[k]
        dev = x.device

        def kl_to(target: torch.Tensor) -> torch.Tensor:
            return per_step_kl(v, target[a:b, k].to(dev), sig[i_step], sig[i_step + 1], scfg.noise_level, scfg.kind, opd.kl_weighting)

        kl = kl_to(batch.signal["v_teacher"]) * batch.signal["task_weight"][a:b].to(dev)
        old = batch.traj.log_probs[a:b, k].to(dev)
        step = opd_step_loss(opd.objective, kl, out.log_prob, old, batch.signal["advantages"][a:b, k], opd.clip_range, x[0].numel())
        loss, mar = step.loss, torch.zeros_like(kl)
        if batch.signal["v_anchor"] is not None:
            mar = kl_to(batch.signal["v_anchor"])  # eq. 12: w(t) ||v_student - v_anchor||^2, with gradient
            loss = loss + opd.mar_lambda * mar
        if opd.beta > 0:
            v_ref = self.trainer.reference_velocity(batch, a, b, x, i_step)
            loss = loss + opd.beta * per_step_kl(v, v_ref, sig[i_step], sig[i_step + 1], scfg.noise_level, scfg.kind, opd.kl_weighting)
        return loss, {"kl": kl.detach(), "mar": mar.detach(), "clip_frac": step.clipped.float(), "ratio": step.ratio}
