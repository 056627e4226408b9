"""SD3.5-Medium's sizes (parameter counts, architecture, activation constants) for the plan's memory estimate."""

from __future__ import annotations

from typing import Any

GIB = 1024**3

# SD3.5-Medium (stabilityai/stable-diffusion-3.5-medium), parameter counts. The transformer (MMDiT-X, 24 joint blocks of
# width 1536, dual attention in blocks 0-12) has 2.243B parameters plus a 226M-element position-embedding table stored
# with them (384 x 384 positions x 1536): 2.47B numbers held in bf16. tests/test_sd35m_recipes.py checks these against
# diffusers' SD3Transformer2DModel built on the meta device.
# the public transformer/config.json of stabilityai/stable-diffusion-3.5-medium: builds the architecture without a download
SD35M_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    pos_embed_max_size=384,
    qk_norm="rms_norm",
    dual_attention_layers=tuple(range(13)),
)
SD35M_TRANSFORMER = 2_469_663_936
SD35M_TEXT_ENCODERS = {"CLIP-L": 123_650_304, "CLIP-G": 694_659_840, "T5-XXL": 4_762_310_656}
SD35M_VAE = 83_653_863
SD35M_LAYERS, SD35M_DUAL_LAYERS, SD35M_WIDTH = 24, 13, 1536
# the attention projections of SD3.5-M's blocks (all 1536 -> 1536): the joint attention of every block (the last block
# has no text output projection) and the image-only second attention of the dual-attention blocks
SD35M_ATTENTION = [
    f"transformer_blocks.{i}.attn.{m}"
    for i in range(SD35M_LAYERS)
    for m in (
        "to_q",
        "to_k",
        "to_v",
        "to_out.0",
        "add_q_proj",
        "add_k_proj",
        "add_v_proj",
        *(("to_add_out",) if i < SD35M_LAYERS - 1 else ()),
    )
] + [f"transformer_blocks.{i}.attn2.{m}" for i in range(SD35M_DUAL_LAYERS) for m in ("to_q", "to_k", "to_v", "to_out.0")]
SD3_TEXT_TOKENS = 77 + 256  # CLIP (77) + T5 (256) tokens per prompt, concatenated
SD3_LATENT_CHANNELS, SD3_VAE_FACTOR, SD3_PATCH = 16, 8, 2
SD3_PROMPT_EMBED_BYTES = SD3_TEXT_TOKENS * 4096 * 2 + 2048 * 2  # one prompt's states + pooled vector, bf16

# reward models a GRPO run may hold on each GPU: (parameters, bytes per parameter, what) as the reward classes load them
REWARD_SIZES: dict[str, tuple[int, int, str]] = {
    "pickscore_v1": (986_000_000, 4, "CLIP ViT-H/14, fp32"),
    "deqa": (8_200_000_000, 2, "mPLUG-Owl2 (LLaMA-2-7B + ViT-L), fp16"),
    "geneval": (500_000_000, 4, "Mask2Former Swin-S + CLIP ViT-L/14, fp32"),
    "ocr": (0, 0, "PP-OCR in onnxruntime, on the CPU"),
    "hpsv2.1": (986_000_000, 4, "CLIP ViT-H/14, fp32"),
    "hpsv2": (986_000_000, 4, "CLIP ViT-H/14, fp32"),
    "clipscore": (428_000_000, 4, "CLIP ViT-L/14, fp32"),
    "aesthetic_laion_v2": (428_000_000, 4, "CLIP ViT-L/14 + MLP, fp32"),
    "imagereward_v1": (450_000_000, 4, "BLIP ViT-L + MLP, fp32"),
}

# activations of one sequence through one joint block, in bytes per token per width unit (bf16): 34 s h is the
# Korthikanti et al. (2022) count for a transformer layer with memory-efficient attention (no s^2 term); the
# dual-attention blocks add ~12 s_img h for their second attention's q, k, v, output and norms
ACT_PER_LAYER, ACT_PER_DUAL = 34, 12
# the VAE decoder at 512 px holds a few 128-channel full-resolution maps at once (no grad): ~0.3 GiB per image
VAE_DECODE_BYTES_PER_PIXEL = 0.3 * GIB / (512 * 512)
OVERHEAD_GIB = 2.0  # CUDA context, cuBLAS workspaces, allocator slack


def sd35m_lora_per_rank(targets: list[str] | tuple[str, ...]) -> tuple[int, int]:
    """(LoRA parameters per unit of rank, adapted modules) on SD3.5-M for ``lora.targets`` (peft's rule: a name or a
    dot-separated suffix of one); targets outside the attention projections are not counted."""
    hit = [n for n in SD35M_ATTENTION if any(n == t or n.endswith("." + t) for t in targets)]
    return len(hit) * 2 * SD35M_WIDTH, len(hit)
