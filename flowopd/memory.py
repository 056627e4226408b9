"""The per-GPU memory estimate of a training run (``flowopd train ... --dry-run``), term by term with each formula.

An estimate for an SD3 base with SD3.5-Medium's sizes (:mod:`flowopd.sd35m_sizes`): the terms of one phase
(``update``: the backward's activations; ``rollout``: the VAE decode) never coexist, so the total holds the larger
phase on top of everything else. Check it with ``torch.cuda.max_memory_allocated()`` after a first step.
"""

from __future__ import annotations

import math
from typing import Any

from flowopd.sd35m_sizes import (
    ACT_PER_DUAL,
    ACT_PER_LAYER,
    GIB,
    OVERHEAD_GIB,
    REWARD_SIZES,
    SD3_LATENT_CHANNELS,
    SD3_PATCH,
    SD3_PROMPT_EMBED_BYTES,
    SD3_TEXT_TOKENS,
    SD3_VAE_FACTOR,
    SD35M_DUAL_LAYERS,
    SD35M_LAYERS,
    SD35M_TEXT_ENCODERS,
    SD35M_TRANSFORMER,
    SD35M_VAE,
    SD35M_WIDTH,
    VAE_DECODE_BYTES_PER_PIXEL,
    sd35m_lora_per_rank,
)
from flowopd.train_config import TrainConfig

MINI_NOTE = "mini model: ~4M parameters at 32x32 px; weights, LoRA and activations take a few hundred MB at most (negligible)"


class Terms(list):
    """The estimate's terms: what, GiB, the formula, and the phase (None: held throughout)."""

    def add(self, what: str, nbytes: float, formula: str, phase: str | None = None) -> None:
        self.append({"what": what, "gib": round(nbytes / GIB, 2), "formula": formula, "phase": phase})


def per_row_activations(px: int, checkpointing: bool) -> tuple[float, str]:
    """Bytes of activations one sequence (one CFG row) keeps for the backward through the SD3.5-M transformer (an estimate)."""
    img_tokens = (px // SD3_VAE_FACTOR // SD3_PATCH) ** 2
    s, h = img_tokens + SD3_TEXT_TOKENS, SD35M_WIDTH
    if checkpointing:
        nbytes = SD35M_LAYERS * 2 * s * h + ACT_PER_LAYER * s * h + ACT_PER_DUAL * img_tokens * h
        how = f"{SD35M_LAYERS} x 2 s h B (block inputs) + one block recomputed (34 s h + 12 s_img h)"
    else:
        nbytes = SD35M_LAYERS * ACT_PER_LAYER * s * h + SD35M_DUAL_LAYERS * ACT_PER_DUAL * img_tokens * h
        how = f"{SD35M_LAYERS} x 34 s h + {SD35M_DUAL_LAYERS} x 12 s_img h B"
    return nbytes, f"per row {nbytes / GIB:.2f} GiB = {how}, s = {img_tokens} image + {SD3_TEXT_TOKENS} text tokens, h = {h}"


def memory_estimate(cfg: TrainConfig, plan: dict[str, Any]) -> dict[str, Any]:
    """Per-GPU memory of the run, term by term, with each term's formula (an estimate; SD3.5-M sizes for any SD3 base)."""
    if plan["backbone"] != "sd3":
        return {"estimate": True, "negligible": True, "total_gib": None, "terms": [], "note": MINI_NOTE}
    terms = Terms()
    _frozen_weights(terms, cfg, plan)
    if plan["command"] == "coldstart" and cfg.opd.cold_start.method == "merge":
        p = sd35m_lora_per_rank(cfg.lora.targets)[0] * plan["lora"]["student_rank"]
        terms.add(f"merged LoRA r{plan['lora']['student_rank']} (fp32)", p * 4, f"{p / 1e6:.1f}M params x 4 B")
    elif plan["command"] == "coldstart":
        _sft_terms(terms, cfg, plan)
    else:
        _training_terms(terms, cfg, plan)
    terms.add("overhead", OVERHEAD_GIB * GIB, "CUDA context, workspaces, allocator slack (a guess)")
    steady = sum(t["gib"] for t in terms if t["phase"] is None)
    total = steady + max([0.0] + [sum(t["gib"] for t in terms if t["phase"] == ph) for ph in ("update", "rollout")])
    return {
        "estimate": True,
        "negligible": False,
        "sizes_of": "SD3.5-Medium",
        "total_gib": round(total, 1),
        "terms": list(terms),
        "note": "an estimate: the sum of the terms, counting only the larger of the update's activations and the rollout's VAE "
        "decode (they never coexist); check it with torch.cuda.max_memory_allocated() after a first step",
    }


def _frozen_weights(terms: Terms, cfg: TrainConfig, plan: dict[str, Any]) -> None:
    """The base's transformer, text encoders and VAE, and an OPD run's frozen teacher (and anchor) adapters."""
    terms.add("transformer (bf16)", SD35M_TRANSFORMER * 2, "2.47e9 numbers (2.24e9 parameters + 2.26e8 position table) x 2 B")
    terms.add(
        "text encoders (bf16)",
        sum(SD35M_TEXT_ENCODERS.values()) * 2,
        "(CLIP-L 123M + CLIP-G 695M + T5-XXL 4.76B) x 2 B; held on the GPU unless offloaded (T5 alone is 8.9 GiB)",
    )
    terms.add("VAE (bf16)", SD35M_VAE * 2, "84M x 2 B")
    q = sd35m_lora_per_rank(cfg.lora.targets)[0] * cfg.lora.rank  # one frozen adapter of the run's rank
    if cfg.opd is not None:
        names = {t.name for t in cfg.opd.teachers}
        anchor = 1 if cfg.opd.anchor is not None and cfg.opd.anchor not in names and plan["command"] != "coldstart" else 0
        frozen = len(names) + anchor
        what = f"{len(names)} teachers + the anchor" if anchor else f"{len(names)} teachers"
        terms.add(f"frozen adapters ({what}, fp32)", frozen * q * 4, f"{frozen} x {q / 1e6:.1f}M params (r{cfg.lora.rank}) x 4 B")
    if cfg.nft is not None:
        terms.add("the old policy's adapter (DiffusionNFT, fp32)", q * 4, f"{q / 1e6:.1f}M params (r{cfg.lora.rank}) x 4 B")


def _sft_terms(terms: Terms, cfg: TrainConfig, plan: dict[str, Any]) -> None:
    """The SFT cold start: teacher images, then flow matching on a fresh LoRA (no CFG in the loss, no EMA)."""
    px, rank = cfg.resolution or 1024, plan["lora"]["student_rank"]
    per_rank, n_modules = sd35m_lora_per_rank(cfg.lora.targets)
    p, sft = per_rank * rank, cfg.opd.cold_start.sft
    n_img = sft.prompts_per_teacher * sft.images_per_prompt * len(cfg.opd.teachers)
    terms.add(
        f"student LoRA r{rank} + AdamW (fp32)",
        p * 16,
        f"{p / 1e6:.1f}M params ({n_modules} projections x r{rank} x (1536 + 1536)) x (4 weights + 4 grads + 8 Adam moments) B",
    )
    terms.add("teacher images (fp32)", n_img * 3 * px * px * 4, f"up to {n_img} images x 3 x {px} x {px} x 4 B")
    per_row, how = per_row_activations(px, False)
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


def _training_terms(terms: Terms, cfg: TrainConfig, plan: dict[str, Any]) -> None:
    """A GRPO or OPD run: the student's LoRA with AdamW and EMA, the rewards (GRPO), activations, rollout buffers, VAE."""
    px, rank = cfg.resolution or 1024, plan["lora"]["student_rank"]
    per_rank, n_modules = sd35m_lora_per_rank(cfg.lora.targets)
    p, cfg_rows, micro = per_rank * rank, 2 if cfg.sampler.cfg != 1.0 else 1, cfg.micro_batch  # CFG: [uncond; cond] rows
    terms.add(
        f"student LoRA r{rank} + AdamW + EMA (fp32)",
        p * 20,
        f"{p / 1e6:.1f}M params ({n_modules} projections x r{rank} x (1536 + 1536)) x (4 weights + 4 grads + 8 Adam moments + 4 EMA) B",
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
    per_row, how = per_row_activations(px, cfg.gradient_checkpointing)
    terms.add(
        f"activations, micro-batch {micro} x {cfg_rows} rows (gradient checkpointing {'on' if cfg.gradient_checkpointing else 'off'})",
        micro * cfg_rows * per_row,
        f"{how} (estimate)",
        phase="update",
    )
    local = plan["batch_per_gpu"] or math.ceil(cfg.batch_size / plan["processes"])
    k = plan["sampler"]["trained_steps"] or cfg.sampler.steps
    lat_bytes = SD3_LATENT_CHANNELS * (px // SD3_VAE_FACTOR) ** 2 * 4
    latents, which = (1 + k, f"(the clean latent + {k} noise draws)") if cfg.nft is not None else (3 * k, f"({k} trained steps x 3)")
    terms.add(
        "rollout buffers",
        local * (latents * lat_bytes + 3 * px * px * 4 + cfg_rows * SD3_PROMPT_EMBED_BYTES),
        f"{local} samples x ({latents} latents fp32 {which} + the fp32 image + {cfg_rows} prompt embeddings bf16)",
    )
    terms.add(
        "VAE decode peak (no grad, during the rollout)",
        micro * px * px * VAE_DECODE_BYTES_PER_PIXEL,
        f"{micro} images x ~0.3 GiB per 512x512 image (estimate)",
        phase="rollout",
    )
