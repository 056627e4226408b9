"""The training config: one pydantic model per section, validated (and the plan checked) before any model loads.

Sections: data (prompts and rewards), ``sampler`` (rollouts, SPEC section 2),
the objective's own (``grpo``, SPEC section 4; ``opd``, section 6: its presence
makes the run an OPD run), ``lora`` and ``optim``. Defaults are
Flow-GRPO's / the paper's unless a field says otherwise; the mini recipes in
``configs/mini/`` override what the 32x32 world needs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flowopd.lora import SD3_LORA_TARGETS
from flowopd.tasks import unknown_tasks_message
from flowopd.teachers import MINI_ANCHOR, MINI_TEACHERS, TeacherSpec


class SamplerConfig(BaseModel):
    """Rollout sampling (SPEC section 2)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(10, ge=1, description="sampling steps in training (the paper: 10; evaluation uses 40, the mini 20)")
    cfg: float = Field(4.5, ge=1.0, description="classifier-free guidance scale during training (SD3.5-M: 4.5; the mini: 3)")
    shift: float = Field(
        3.0, gt=0, description="flow-match schedule shift (SD3: 3; the mini: 1; FLUX / Qwen-Image: exp(mu) at the resolution when unset)"
    )
    spacing: Literal["sd3", "pipeline"] = Field(
        "sd3",
        description="the schedule's unshifted points: the scheduler's own spacing (sd3, SD3's pipeline) or linspace(1, 1/T) as "
        "FluxPipeline / QwenImagePipeline pass them (pipeline; their recipes get it when unset)",
    )
    shift_terminal: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="stretch the shifted schedule so its last non-zero sigma is this (Qwen-Image's scheduler: 0.02, its recipes "
        "get it when unset); None: no stretch",
    )
    noise_level: float = Field(0.7, ge=0, description="the SDE noise level a (0.7 for sde, 0.8 for cps in Flow-GRPO-Fast)")
    kind: Literal["sde", "cps"] = Field("sde", description="sde (eq. 5-6) or cps (coefficient-preserving)")
    window_size: int = Field(0, ge=0, description="stochastic steps per rollout, consecutive (0: every step is SDE)")
    window_start_max: int = Field(0, ge=0, description="each rollout's window starts at a step drawn from [0, this]")
    timestep_fraction: float = Field(0.99, gt=0, le=1, description="train on the first fraction of the stochastic steps")
    same_latent: bool = Field(
        False, description="a group shares its initial noise (Flow-GRPO's same_latent): rewards then differ only by the SDE noise"
    )
    negative_prompt: str = Field("", description="the unconditional branch of CFG (SD3 evaluates with the empty prompt)")
    log_prob: Literal["exact", "flow_grpo"] = Field(
        "exact",
        description="the log-probability in GRPO's ratio: the Gaussian density (exact), or Flow-GRPO's cps convention "
        "-mean((x_next - mu)^2) (flow_grpo; changes cps only; its clip range 1e-4 is tuned to that scale)",
    )
    detach_uncond: bool = Field(
        False, description="no gradient through CFG's unconditional branch in the update (Flow-GRPO's training step since July 2025)"
    )


class GRPOConfig(BaseModel):
    """The GRPO objective (eq. 3, SPEC section 4)."""

    model_config = ConfigDict(extra="forbid")

    adv_std: Literal["global", "group"] = Field("global", description="advantage std over the whole batch (Flow-GRPO) or per group")
    adv_clip: float = Field(5.0, gt=0, description="advantages are clipped to +-this")
    clip_range: float = Field(1e-4, gt=0, description="ratio clip eps (Flow-GRPO: 1e-4)")
    beta: float = Field(0.04, ge=0, description="KL-to-reference coefficient (0.04 GenEval/OCR, 0.01 PickScore)")
    kl_weighting: Literal["exact", "flow_grpo"] = Field(
        "exact", description="eq. 9 exact, or Flow-GRPO's (sde: exact x |dt|; cps: exact, as its code)"
    )


class NFTConfig(BaseModel):
    """DiffusionNFT (``objectives/nft.py``; the official ``config/nft.py`` values); present only in NFT runs.

    Rollouts are deterministic ODE samples of the old policy; each sample trains at
    ``int(sampler.steps * sampler.timestep_fraction)`` distinct times of the rollout's
    schedule (the official 9 of 10), with fresh noise each. The guidance scale of the
    rollouts and of the loss is ``sampler.cfg``, 1 (CFG-free, as the paper) unless set.
    """

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(
        1.0, gt=0, le=1, description="mixing coefficient of the implicit policies (official: 1; 0.1 for OCR and multi-reward)"
    )
    adv_clip: float = Field(5.0, gt=0, description="advantages clipped to +-this; r = 1/2 + A / (2 clip)")
    adv_std: Literal["global", "group"] = Field("global", description="advantage std over the whole batch (official) or per group")
    weighting: Literal["adaptive", "none"] = Field(
        "adaptive", description="adaptive: the official self-normalised x0 error; none: the plain velocity MSE of the derivation"
    )
    old_policy: Literal["default", "slow", "on_policy"] = Field(
        "default",
        description="the old policy's decay eta after n optimizer steps: default min(0.001 n, 0.5); slow (OCR) 0 for 75 steps, "
        "then min(0.0075 (n - 75), 0.999); on_policy 0",
    )
    kl: float = Field(1e-4, ge=0, description="weight of mean((v - v_base)^2), the KL to the base model in velocity space (official 1e-4)")


class LoraConfig(BaseModel):
    """LoRA on the transformer's attention projections (SPEC section 4)."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(32, ge=1)
    alpha: float = Field(64.0, gt=0)
    targets: list[str] = Field(default_factory=lambda: list(SD3_LORA_TARGETS), description="module names to adapt")


class OptimConfig(BaseModel):
    """AdamW with grad-norm clipping and an EMA of the LoRA (the EMA weights are what is saved)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, gt=0, description="max grad norm")
    ema_decay: float = Field(0.9, ge=0, lt=1, description="EMA decay with diffusers' warm-up (1+n)/(10+n); 0 disables the EMA")


MERGE_METHODS = ("cat", "svd", "ties", "dare_linear", "elementwise")


class SFTConfig(BaseModel):
    """The SFT cold start: each teacher draws images for its routed prompts; the student LoRA regresses them (eq. 1)."""

    model_config = ConfigDict(extra="forbid")

    prompts_per_teacher: int = Field(128, ge=1, description="training-split prompts each teacher draws images for")
    images_per_prompt: int = Field(2, ge=1)
    sample_steps: int = Field(20, ge=1, description="ODE steps of the teachers' images")
    sample_cfg: float = Field(3.0, ge=1.0, description="guidance scale of the teachers' images")
    sample_shift: float = Field(1.0, gt=0, description="schedule shift of the teachers' images (SD3: 3)")
    steps: int = Field(200, ge=1, description="flow-matching optimizer steps")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    prompt_dropout: float = Field(0.1, ge=0, le=1, description="train on the empty prompt this often (keeps CFG's branch)")


class ColdStartConfig(BaseModel):
    """How the student's LoRA starts (SPEC section 5): a merge of the teachers, SFT on their images, or fresh."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["merge", "sft", "none"] = Field("merge", description="merge the teacher LoRAs, SFT on their images, or a fresh LoRA")
    merge: Literal["cat", "svd", "ties", "dare_linear", "elementwise"] = Field(
        "cat",
        description="cat: the exact weighted average of dW = BA (rank sum); svd: that, truncated to svd_rank; ties, dare_linear: "
        "peft's; elementwise: A and B averaged separately (the Flow-OPD release; NOT the average of dW)",
    )
    weights: dict[str, float] = Field(default_factory=dict, description="teacher name -> merge weight (default: equal, summing to 1)")
    svd_rank: int | None = Field(None, ge=1, description="rank of an svd merge (default: the teachers' rank)")
    density: float = Field(0.5, gt=0, le=1, description="fraction of weights kept by ties / dare_linear")
    from_lora: str | None = Field(None, description="start from this LoRA folder (e.g. written by `flowopd train coldstart`) instead")
    sft: SFTConfig = Field(default_factory=SFTConfig)


class OPDConfig(BaseModel):
    """Multi-teacher on-policy distillation (SPEC section 6, eq. 7-12); present only in OPD runs."""

    model_config = ConfigDict(extra="forbid")

    objective: Literal["kl", "kl_pg", "paper"] = Field(
        "kl", description="kl: per-step reverse KL (direct gradient); kl_pg: + the score-function term; paper: eq. 10-11 literally"
    )
    teachers: list[TeacherSpec] = Field(default_factory=lambda: [t.model_copy() for t in MINI_TEACHERS], description="the teachers")
    routing: Literal["sample", "epoch"] = Field(
        "sample", description="sample: a batch mixes tasks, each sample goes to its teacher; epoch: one task per step (the release)"
    )
    anchor: str | None = Field(
        MINI_ANCHOR, description="the MAR anchor: a teacher name, a shipped weight or a LoRA folder; null: the base model"
    )
    mar_lambda: float = Field(0.02, ge=0, description="MAR weight lambda (eq. 12; paper 0.02, the release 0.04); 0 turns MAR off")
    kl_weighting: Literal["exact", "flow_grpo", "velocity"] = Field(
        "exact",
        description="eq. 9 exact, or Flow-GRPO's (sde: exact x |dt|; cps: exact, as its code), or velocity: every step "
        "weighted 1, ||v_student - v_teacher||^2 (not a KL: the exact KL weighs the first, layout-setting steps ~1/80 of the last)",
    )
    clip_range: float = Field(1e-4, gt=0, description="ratio clip eps of the kl_pg / paper surrogate")
    task_balance: Literal["none", "kl"] = Field(
        "none",
        description="none: the paper's plain sum of per-sample KLs; kl: each sample's KL divided by its task's mean rollout KL "
        "(times the batch mean), so a teacher far from the student (a large KL) does not drown the others' signal",
    )
    beta: float = Field(0.0, ge=0, description="KL to the reference (the base, adapters off); OPD needs none")
    cold_start: ColdStartConfig = Field(default_factory=ColdStartConfig)


class AlarmConfig(BaseModel):
    """Reward-hacking alarms, checked at every evaluation during training (docs/watching.md)."""

    model_config = ConfigDict(extra="forbid")

    gold: list[str] | None = Field(
        None,
        description="held-out rewards that must not fall while the trained (proxy) rewards rise; None: every other reward the eval scores",
    )
    margin: float = Field(
        0.05, ge=0, description="a gold reward falling by more than this (0-1 scale, paired, CI below 0) while a proxy rises alarms"
    )
    window: int = Field(2, ge=1, description="compare each evaluation with the one this many evaluations before")
    image_drift: float = Field(
        0.2,
        ge=0,
        description="alarm when an image statistic moves this far from the first evaluation (brightness, saturation, "
        "flat fraction: absolute on 0-1; JPEG bytes: relative); 0 turns it off",
    )
    on_alarm: Literal["warn", "stop"] = Field("warn", description="warn: say it and go on; stop: save the LoRA and end the run")


class EvalSection(BaseModel):
    """Evaluation during training (``eval_every``): held-out prompts, the deterministic sampler, the EMA weights."""

    model_config = ConfigDict(extra="forbid")

    suites: list[str] = Field(default_factory=lambda: ["mini"], description="suites to run (`flowopd suites list`)")
    prompts: str | None = Field(None, description="instead of suites: a prompt set or file (or `mini`), scored by `rewards`")
    rewards: list[str] = Field(default_factory=list, description="with prompts: the rewards to score (default: the trained ones)")
    limit: int | None = Field(8, ge=1, description="prompts per group (a GenEval tag, a mini task); None: the whole suite")
    images_per_prompt: int | None = Field(None, ge=1, description="None: the suite's own")
    steps: int | None = Field(None, ge=1, description="ODE steps (None: the suite's official protocol)")
    cfg: float | None = Field(None, ge=1.0, description="guidance scale (None: the official protocol)")
    resolution: int | None = Field(None, ge=8, description="image size (None: the official protocol)")
    seed: int = Field(0, description="suite seed: the same images' seeds at every evaluation, so the curve is paired")
    batch_size: int = Field(16, ge=1, description="images sampled per batch per process")
    alarms: AlarmConfig = Field(default_factory=AlarmConfig)


class TrainConfig(BaseModel):
    """A GRPO run (a teacher, or a GRPO-Mix baseline) or, with an ``opd`` section, an OPD student."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("run", description="a label for logs and the LoRA's info")
    model: str = Field("mini-base", description="the base model: mini-base, a mini model folder, a diffusers SD3 folder, or sd3:<hub id>")
    seed: int = 0
    steps: int = Field(100, ge=1, description="training steps (one rollout each)")
    tasks: dict[str, float] = Field(default_factory=lambda: {"compose": 1.0}, description="prompt mix: task -> weight (flowopd.tasks)")
    prompts: dict[str, str] = Field(
        default_factory=dict,
        description="task -> training prompts: a named set (geneval-train, ocr-train, pickscore-train) or a .txt/.jsonl/.json "
        "file; a task without one draws from the mini world's generator (mini models only)",
    )
    task_sampling: Literal["mixed", "alternate"] = Field(
        "mixed", description="mixed: every batch draws tasks by weight; alternate: one task per step, cycling by the integer ratio"
    )
    rewards: dict[str, float] = Field(default_factory=lambda: {"mini_geneval": 1.0}, description="reward name -> weight")
    task_rewards: dict[str, dict[str, float]] = Field(default_factory=dict, description="per-task reward weights (override `rewards`)")
    batch_size: int = Field(32, ge=1, description="samples per rollout over all processes (= prompts x group_size)")
    group_size: int = Field(8, ge=2, description="samples per prompt (G)")
    micro_batch: int = Field(32, ge=1, description="samples per forward on one process (memory)")
    updates_per_rollout: int = Field(1, ge=1, description="optimizer updates per rollout (the batch splits into this many parts)")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    checkpoint_every: int = Field(25, ge=1, description="save a resumable checkpoint every N steps")
    keep_checkpoints: int = Field(2, ge=1, description="how many recent checkpoints to keep")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: leave torch's default)")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field("auto", description="auto: bf16 on a GPU, none on CPU")
    gradient_checkpointing: bool = Field(False, description="recompute the transformer's activations in backward (SD3.5-M: on)")
    resolution: int | None = Field(None, ge=8, description="image size in pixels for an SD3 model (the paper: 512); None: the model's")
    trackers: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"], description="accelerate trackers (wandb: pip install 'flowopd[wandb]'; WANDB_MODE=offline)"
    )
    opd: OPDConfig | None = Field(None, description="on-policy distillation from teachers instead of GRPO on rewards")
    nft: NFTConfig | None = Field(None, description="DiffusionNFT on rewards (ODE rollouts, no log-probabilities) instead of GRPO")
    eval_every: int = Field(0, ge=0, description="evaluate on held-out prompts every N steps, and before the first (0: never)")
    eval: EvalSection = Field(default_factory=EvalSection, description="what `eval_every` evaluates, and the reward-hacking alarms")

    @model_validator(mode="before")
    @classmethod
    def _sampler_follows_the_model(cls, values: Any) -> Any:
        """A mini model's recipe that leaves ``sampler.cfg`` / ``shift`` unset gets the mini world's protocol
        (CFG 3, shift 1: ``models.MINI_SAMPLING``), not SD3.5's 4.5 and 3 (an empty recipe trained with those); a diffusers
        family's gets its own ``train_cfg`` (FLUX.1: 1, guidance-distilled, true CFG is opt-in; Qwen-Image: its
        pipeline's true CFG 4), schedule ``spacing`` and ``shift_terminal`` (FLUX.1: pipeline, none; Qwen-Image: pipeline,
        0.02; SD3: sd3, none) and, for FLUX.1 / Qwen-Image, the shift ``exp(mu)`` at the recipe's resolution (512 when
        unset); NFT trains CFG-free (the paper) on any model."""
        from flowopd.models import MINI_SAMPLING, diffusers_family

        if not isinstance(values, dict):
            return values
        sampler = dict(values.get("sampler") or {})
        family = diffusers_family(str(values.get("model", "mini-base")))
        if values.get("nft") is not None:
            sampler.setdefault("cfg", 1.0)
        elif family is not None and family.train_cfg is not None:
            sampler.setdefault("cfg", family.train_cfg)
        if family is None:
            for key in ("cfg", "shift"):
                sampler.setdefault(key, MINI_SAMPLING[key])
            return {**values, "sampler": sampler}
        sampler.setdefault("spacing", family.spacing)
        sampler.setdefault("shift_terminal", family.shift_terminal)
        px = values.get("resolution")  # unset: 512, what the backbone samples the real models (native 1024) at
        shift = family.resolution_shift(px if isinstance(px, int) and not isinstance(px, bool) and px >= 16 else 512)
        if shift is not None:
            sampler.setdefault("shift", shift)
        return {**values, "sampler": sampler}

    @model_validator(mode="before")
    @classmethod
    def _updates_per_rollout_is_top_level(cls, values: Any) -> Any:
        """``grpo.updates_per_rollout`` (where configs before the objectives' split kept it) moves to the top level, which
        every objective reads."""
        if not isinstance(values, dict) or not isinstance(values.get("grpo"), dict) or "updates_per_rollout" not in values["grpo"]:
            return values
        grpo = dict(values["grpo"])
        old = grpo.pop("updates_per_rollout")
        if values.get("updates_per_rollout", old) != old:
            raise ValueError(
                f"updates_per_rollout {values['updates_per_rollout']} and grpo.updates_per_rollout {old} differ; keep the top-level one"
            )
        return {**values, "grpo": grpo, "updates_per_rollout": old}

    @field_validator("tasks")
    @classmethod
    def _valid_tasks(cls, tasks: dict[str, float]) -> dict[str, float]:
        if (message := unknown_tasks_message(tasks)) is not None:
            raise ValueError(message)
        if any(v < 0 for v in tasks.values()) or sum(tasks.values()) <= 0:
            raise ValueError("task weights must be >= 0 with a positive sum")
        return tasks

    @field_validator("prompts")
    @classmethod
    def _valid_prompts(cls, prompts: dict[str, str]) -> dict[str, str]:
        if (message := unknown_tasks_message(prompts, "prompts")) is not None:
            raise ValueError(message)
        return prompts

    @field_validator("rewards")
    @classmethod
    def _valid_rewards(cls, rewards: dict[str, float]) -> dict[str, float]:
        if not rewards or any(v < 0 for v in rewards.values()) or sum(rewards.values()) <= 0:
            raise ValueError("give at least one reward with a positive weight, e.g. {mini_geneval: 1}")
        return rewards

    # fields that may change when a run is resumed (they do not change its numbers up to the steps already done)
    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = (
        "steps",
        "checkpoint_every",
        "keep_checkpoints",
        "trackers",
        "name",
        "threads",
        "eval_every",  # evaluating never changes the training numbers (tests/test_watch.py)
        "eval",
    )

    def identity(self) -> dict:
        """The fields that define the run's numbers (what a resumed run must share)."""
        data = self.model_dump(mode="json")
        for key in self.RESUMABLE_CHANGES:
            data.pop(key, None)
        return data

    @model_validator(mode="after")
    def _one_objective_section(self) -> TrainConfig:
        if self.opd is not None and self.nft is not None:
            raise ValueError("a run has one objective: keep either the opd section (distillation) or the nft section (DiffusionNFT)")
        return self

    @property
    def objective(self) -> str:
        """The objective this config trains with: its section selects it (``opd:``: opd; ``nft:``: nft; otherwise grpo)."""
        return "opd" if self.opd is not None else "nft" if self.nft is not None else "grpo"

    @property
    def one_task_per_step(self) -> bool:
        """Every sample of a step comes from one task (``task_sampling: alternate`` or OPD's ``routing: epoch``)."""
        return self.task_sampling == "alternate" or (self.opd is not None and self.opd.routing == "epoch")

    def with_cold_start(self, **changes) -> TrainConfig:
        """This OPD config with ``opd.cold_start`` fields changed (e.g. ``method="sft"``, ``from_lora=FOLDER``)."""
        cs = self.opd.cold_start.model_copy(update=changes)
        return self.model_copy(update={"opd": self.opd.model_copy(update={"cold_start": cs})})

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


def recipe_path(name: str) -> Path:
    """A YAML file path, or a shipped recipe name such as ``mini/teacher-text`` (from ``configs/``)."""
    path = Path(name)
    if path.is_file():
        return path
    from importlib.resources import files

    from flowopd.errors import ConfigError

    root = Path(str(files("flowopd.configs")))
    for candidate in (root / name, root / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = sorted(str(p.relative_to(root).with_suffix("")) for p in root.glob("*/*.yaml") if p.parent.name != "accelerate")
    folder = name.split("/", 1)[0] + "/"
    same = [r for r in shipped if r.startswith(folder)]  # mini/nope: the mini recipes; otherwise every set by folder
    listed = ", ".join(same) if same else "; ".join(f"{f}/*" for f in sorted({r.split("/", 1)[0] for r in shipped}))
    raise ConfigError(f"config {name!r} is neither a file nor a shipped recipe; shipped recipes: {listed}")
