"""The per-GPU memory estimate of a training run (``flowopd train ... --dry-run``), term by term with each formula.

The sizes are the full-size architecture of the run's base (:mod:`flowopd.arch_sizes`: SD3.5-Medium or -Large,
FLUX.1-dev, Qwen-Image). The terms of one phase (``update``: the backward's activations; ``rollout``: the VAE decode)
never coexist, so the total holds the larger phase on top of everything else. Two totals: every process holding the
whole model (DDP, what the trainer is tested with), and FSDP full sharding over the run's processes (the transformer's
weights, the LoRA and its optimizer state divided among them, two blocks gathered at a time; the text encoders, VAE,
activations and buffers whole). Check either with ``torch.cuda.max_memory_allocated()`` after a first step.
"""

from __future__ import annotations

import math
from typing import Any

from flowopd.arch_sizes import (
    ACT_PER_DUAL,
    ACT_PER_LAYER,
    GIB,
    OVERHEAD_GIB,
    REWARD_SIZES,
    VAE_DECODE_BYTES_PER_PIXEL,
    ArchSizes,
    arch_for,
)
from flowopd.train_config import TrainConfig

GPU_GIB = 79.0  # what torch reports as usable on an 80 GB GPU (H100 / A100-80GB): the "fits" check
MINI_NOTE = "mini model: ~4M parameters at 32x32 px; weights, LoRA and activations take a few hundred MB at most (negligible)"


class Terms(list):
    """The estimate's terms: what, GiB, the formula, the phase (None: held throughout), and whether FSDP shards it."""

    def add(self, what: str, nbytes: float, formula: str, phase: str | None = None, sharded: bool = False) -> None:
        self.append({"what": what, "gib": round(nbytes / GIB, 2), "formula": formula, "phase": phase, "sharded": sharded})

    def total(self, processes: int = 1) -> float:
        """Everything held throughout plus the larger phase; sharded terms divided by ``processes``."""

        def gib(t):
            return t["gib"] / processes if t["sharded"] else t["gib"]

        steady = sum(gib(t) for t in self if t["phase"] is None)
        return steady + max([0.0] + [sum(gib(t) for t in self if t["phase"] == ph) for ph in ("update", "rollout")])


def per_row_activations(arch: ArchSizes, px: int, checkpointing: bool) -> tuple[float, str]:
    """Bytes of activations one sequence (one CFG row) keeps for the backward through the transformer (an estimate)."""
    img_tokens = arch.image_tokens(px)
    s, h, n = img_tokens + arch.text_tokens, arch.width, arch.layers
    dual = " + 12 s_img h" if arch.dual_layers else ""
    if checkpointing:
        nbytes = n * 2 * s * h + ACT_PER_LAYER * s * h + (ACT_PER_DUAL * img_tokens * h if arch.dual_layers else 0)
        how = f"{n} x 2 s h B (block inputs) + one block recomputed (34 s h{dual})"
    else:
        nbytes = n * ACT_PER_LAYER * s * h + arch.dual_layers * ACT_PER_DUAL * img_tokens * h
        how = f"{n} x 34 s h" + (f" + {arch.dual_layers} x 12 s_img h" if arch.dual_layers else "") + " B"
    tokens = f"s = {img_tokens} image + {arch.text_tokens} text tokens ({arch.text_tokens_note})"
    return nbytes, f"per row {nbytes / GIB:.2f} GiB = {how}, {tokens}, h = {h}"


def memory_estimate(cfg: TrainConfig, plan: dict[str, Any]) -> dict[str, Any]:
    """Per-GPU memory of the run, term by term, with each term's formula, replicated and FSDP-sharded (an estimate)."""
    if plan["backbone"] == "mini":
        return {"estimate": True, "negligible": True, "total_gib": None, "terms": [], "note": MINI_NOTE}
    arch = arch_for(cfg.model, plan["backbone"])
    terms = Terms()
    _frozen_weights(terms, cfg, plan, arch)
    if plan["command"] == "coldstart" and cfg.opd.cold_start.method == "merge":
        p = arch.lora_per_rank(cfg.lora.targets)[0] * plan["lora"]["student_rank"]
        terms.add(f"merged LoRA r{plan['lora']['student_rank']} (fp32)", p * 4, f"{p / 1e6:.1f}M params x 4 B")
    elif plan["command"] == "coldstart":
        _sft_terms(terms, cfg, plan, arch)
    else:
        _training_terms(terms, cfg, plan, arch)
    terms.add("overhead", OVERHEAD_GIB * GIB, "CUDA context, workspaces, allocator slack (a guess)")
    n = plan["processes"]
    total, sharded = round(terms.total(), 1), round(terms.total(n) + _gathered_units(arch) / GIB, 1)
    return {
        "estimate": True,
        "negligible": False,
        "sizes_of": arch.name,
        "total_gib": total,
        "fits": total <= GPU_GIB,
        "fsdp": {
            "processes": n,
            "total_gib": sharded,
            "fits": sharded <= GPU_GIB,
            "units": list(arch.fsdp_units),
            "formula": f"sharded terms / {n} + 2 gathered {'/'.join(arch.fsdp_units)} units "
            f"({_gathered_units(arch) / GIB:.2f} GiB: {arch.largest_unit / 1e6:.0f}M params x 2 B x 2)",
        },
        "terms": list(terms),
        "note": "an estimate: the sum of the terms, counting only the larger of the update's activations and the rollout's VAE "
        "decode (they never coexist); check it with torch.cuda.max_memory_allocated() after a first step",
    }


def _gathered_units(arch: ArchSizes) -> float:
    """FSDP full sharding gathers one block for its forward and prefetches the next: two of the largest in bf16."""
    return 2 * arch.largest_unit * 2


def _frozen_weights(terms: Terms, cfg: TrainConfig, plan: dict[str, Any], arch: ArchSizes) -> None:
    """The base's transformer, text encoders and VAE, and an OPD run's frozen teacher (and anchor) adapters."""
    terms.add(
        "transformer (bf16)", arch.transformer * 2, f"{arch.transformer / 1e9:.2f}e9 numbers ({arch.transformer_note}) x 2 B", sharded=True
    )
    encoders = " + ".join(f"{k} {v / 1e9:.2f}B" for k, v in arch.text_encoders.items())
    terms.add(
        "text encoders (bf16)",
        sum(arch.text_encoders.values()) * 2,
        f"({encoders}) x 2 B; held on the GPU unless offloaded (not sharded by FSDP: outside the transformer)",
    )
    terms.add("VAE (bf16)", arch.vae * 2, f"{arch.vae / 1e6:.0f}M x 2 B")
    q = arch.lora_per_rank(cfg.lora.targets)[0] * cfg.lora.rank  # one frozen adapter of the run's rank
    if cfg.opd is not None:
        names = {t.name for t in cfg.opd.teachers}
        anchor = 1 if cfg.opd.anchor is not None and cfg.opd.anchor not in names and plan["command"] != "coldstart" else 0
        frozen = len(names) + anchor
        what = f"{len(names)} teachers + the anchor" if anchor else f"{len(names)} teachers"
        terms.add(
            f"frozen adapters ({what}, fp32)", frozen * q * 4, f"{frozen} x {q / 1e6:.1f}M params (r{cfg.lora.rank}) x 4 B", sharded=True
        )
    if cfg.nft is not None:
        terms.add("the old policy's adapter (DiffusionNFT, fp32)", q * 4, f"{q / 1e6:.1f}M params (r{cfg.lora.rank}) x 4 B", sharded=True)


def _sft_terms(terms: Terms, cfg: TrainConfig, plan: dict[str, Any], arch: ArchSizes) -> None:
    """The SFT cold start: teacher images, then flow matching on a fresh LoRA (no CFG in the loss, no EMA)."""
    px, rank = cfg.resolution or 1024, plan["lora"]["student_rank"]
    per_rank, n_modules = arch.lora_per_rank(cfg.lora.targets)
    p, sft = per_rank * rank, cfg.opd.cold_start.sft
    n_img = sft.prompts_per_teacher * sft.images_per_prompt * len(cfg.opd.teachers)
    terms.add(
        f"student LoRA r{rank} + AdamW (fp32)",
        p * 16,
        f"{p / 1e6:.1f}M params ({n_modules} projections x r{rank} x (in + out)) x (4 weights + 4 grads + 8 Adam moments) B",
        sharded=True,
    )
    terms.add("teacher images (fp32)", n_img * 3 * px * px * 4, f"up to {n_img} images x 3 x {px} x {px} x 4 B")
    per_row, how = per_row_activations(arch, px, False)
    terms.add(
        f"activations, batch {sft.batch_size} (no gradient checkpointing assumed: an upper bound)",
        sft.batch_size * per_row,
        f"{how} (estimate)",
        phase="update",
    )
    terms.add(
        "VAE decode peak (no grad, while the teachers draw)",
        sft.batch_size * px * px * VAE_DECODE_BYTES_PER_PIXEL,
        f"{sft.batch_size} images x ~0.3 GiB per 512x512 image (estimate)",
        phase="rollout",
    )


def _training_terms(terms: Terms, cfg: TrainConfig, plan: dict[str, Any], arch: ArchSizes) -> None:
    """A GRPO or OPD run: the student's LoRA with AdamW and EMA, the rewards (GRPO), activations, rollout buffers, VAE."""
    px, rank = cfg.resolution or 1024, plan["lora"]["student_rank"]
    per_rank, n_modules = arch.lora_per_rank(cfg.lora.targets)
    p, cfg_rows, micro = per_rank * rank, 2 if cfg.sampler.cfg != 1.0 else 1, cfg.micro_batch  # CFG: [uncond; cond] rows
    terms.add(
        f"student LoRA r{rank} + AdamW + EMA (fp32)",
        p * 20,
        f"{p / 1e6:.1f}M params ({n_modules} projections x r{rank} x (in + out)) x (4 weights + 4 grads + 8 Adam moments + 4 EMA) B",
        sharded=True,
    )
    if cfg.opd is None:
        names = set(cfg.rewards) | {n for ws in cfg.task_rewards.values() for n in ws}
        known = {n: REWARD_SIZES[n] for n in sorted(names) if n in REWARD_SIZES}
        if known:
            terms.add(
                "reward models, if held on the GPU",
                sum(n_ * b_ for n_, b_, _ in known.values()),
                "; ".join(f"{n} {v[0] / 1e9:.2f}B x {v[1]} B ({v[2]})" for n, v in known.items()),
            )
    per_row, how = per_row_activations(arch, px, cfg.gradient_checkpointing)
    terms.add(
        f"activations, micro-batch {micro} x {cfg_rows} rows (gradient checkpointing {'on' if cfg.gradient_checkpointing else 'off'})",
        micro * cfg_rows * per_row,
        f"{how} (estimate)",
        phase="update",
    )
    local = plan["batch_per_gpu"] or math.ceil(cfg.batch_size / plan["processes"])
    k = plan["sampler"]["trained_steps"] or cfg.sampler.steps
    lat_bytes = arch.latent_channels * (px // arch.vae_factor) ** 2 * 4
    latents, which = (1 + k, f"(the clean latent + {k} noise draws)") if cfg.nft is not None else (3 * k, f"({k} trained steps x 3)")
    terms.add(
        "rollout buffers",
        local * (latents * lat_bytes + 3 * px * px * 4 + cfg_rows * arch.prompt_embed_bytes),
        f"{local} samples x ({latents} latents fp32 {which} + the fp32 image + {cfg_rows} prompt embeddings bf16)",
    )
    terms.add(
        "VAE decode peak (no grad, during the rollout)",
        micro * px * px * VAE_DECODE_BYTES_PER_PIXEL,
        f"{micro} images x ~0.3 GiB per 512x512 image (estimate)",
        phase="rollout",
    )
