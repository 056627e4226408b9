"""The sizes of the full-size architectures a plan's memory estimate needs: SD3.5-Medium and -Large, FLUX.1-dev and
Qwen-Image (parameter counts, blocks, widths, token counts, the LoRA-able projections), and reward-model sizes.

Every count comes from the model's public ``transformer/config.json`` built on the meta device with the installed
diffusers / transformers (no download): tests/test_arch_sizes.py rebuilds each one and checks the numbers here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

GIB = 1024**3

# the public transformer configs (they build the architectures without a download)
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
SD35L_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=38,
    attention_head_dim=64,
    num_attention_heads=38,
    joint_attention_dim=4096,
    caption_projection_dim=2432,
    pooled_projection_dim=2048,
    pos_embed_max_size=192,
    qk_norm="rms_norm",
)
FLUX_DEV_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
QWEN_IMAGE_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    patch_size=2,
    in_channels=64,
    out_channels=16,
    num_layers=60,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=3584,
    guidance_embeds=False,
    axes_dims_rope=(16, 56, 56),
)

JOINT_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


@dataclasses.dataclass(frozen=True)
class ArchSizes:
    """What the memory estimate needs of one architecture (numbers of elements, not bytes)."""

    name: str
    transformer: int  # numbers held with the transformer (parameters + stored buffers such as SD3's position table)
    transformer_note: str
    text_encoders: dict[str, int]
    vae: int
    layers: int  # blocks every token goes through (joint, double- or single-stream)
    dual_layers: int  # SD3.5-M's blocks with a second, image-only attention
    width: int
    text_tokens: int  # per prompt, as the pipeline encodes it
    text_tokens_note: str
    text_dim: int  # width of a prompt's per-token states
    pooled_dim: int
    latent_channels: int
    vae_factor: int
    patch: int  # an image token covers patch x patch latents (SD3's patch embedding, FLUX / Qwen-Image's 2x2 packing)
    attention: tuple[tuple[str, int, int], ...]  # the blocks' attention projections: (module name, in, out)
    fsdp_units: tuple[str, ...]  # the block classes FSDP wraps (diffusers' _no_split_modules)
    largest_unit: int  # parameters of the largest block: what FSDP gathers at once

    def image_tokens(self, px: int) -> int:
        return (px // self.vae_factor // self.patch) ** 2

    @property
    def prompt_embed_bytes(self) -> int:
        """One prompt's states and pooled vector in bf16."""
        return (self.text_tokens * self.text_dim + self.pooled_dim) * 2

    def lora_per_rank(self, targets: list[str] | tuple[str, ...]) -> tuple[int, int]:
        """(LoRA parameters per unit of rank, adapted modules) for ``lora.targets`` (peft's rule: a name or a
        dot-separated suffix of one); targets outside the attention projections are not counted."""
        hit = [(i, o) for n, i, o in self.attention if any(n == t or n.endswith("." + t) for t in targets)]
        return sum(i + o for i, o in hit), len(hit)


def _projections(prefix: str, blocks: int, width: int, names: tuple[str, ...], last_has_text_out: bool = True, attn: str = "attn"):
    """``prefix.{i}.{attn}.{name}`` for every block; SD3's last block has no text output projection."""
    return tuple(
        (f"{prefix}.{i}.{attn}.{m}", width, width)
        for i in range(blocks)
        for m in names
        if not (m == "to_add_out" and i == blocks - 1 and not last_has_text_out)
    )


SD3_TEXT_ENCODERS = {"CLIP-L": 123_650_304, "CLIP-G": 694_659_840, "T5-XXL": 4_762_310_656}
SD3_VAE = 83_819_683  # SD3's and FLUX.1's 16-channel AutoencoderKL (their vae/config.json built on the meta device)

SD35M = ArchSizes(
    name="SD3.5-Medium",
    transformer=2_469_663_936,
    transformer_note="2.24e9 parameters + 2.26e8 position table",
    text_encoders=SD3_TEXT_ENCODERS,
    vae=SD3_VAE,
    layers=24,
    dual_layers=13,
    width=1536,
    text_tokens=77 + 256,
    text_tokens_note="CLIP 77 + T5 256, concatenated",
    text_dim=4096,
    pooled_dim=2048,
    latent_channels=16,
    vae_factor=8,
    patch=2,
    attention=_projections("transformer_blocks", 24, 1536, JOINT_PROJECTIONS, last_has_text_out=False)
    + _projections("transformer_blocks", 13, 1536, ("to_q", "to_k", "to_v", "to_out.0"), attn="attn2"),
    fsdp_units=("JointTransformerBlock",),
    largest_unit=101_506_944,
)
SD35L = dataclasses.replace(
    SD35M,
    name="SD3.5-Large",
    transformer=8_146_280_768,
    transformer_note="8.06e9 parameters + 8.97e7 position table",
    layers=38,
    dual_layers=0,
    width=2432,
    attention=_projections("transformer_blocks", 38, 2432, JOINT_PROJECTIONS, last_has_text_out=False),
    largest_unit=212_999_680,
)
FLUX_DEV = ArchSizes(
    name="FLUX.1-dev",
    transformer=11_901_408_320,
    transformer_note="19 double-stream + 38 single-stream blocks of width 3072",
    text_encoders={"CLIP-L": 123_060_480, "T5-XXL": 4_762_310_656},
    vae=SD3_VAE,
    layers=19 + 38,
    dual_layers=0,
    width=3072,
    text_tokens=512,
    text_tokens_note="T5 512 (FluxPipeline's max_sequence_length)",
    text_dim=4096,
    pooled_dim=768,
    latent_channels=16,
    vae_factor=8,
    patch=2,
    attention=_projections("transformer_blocks", 19, 3072, JOINT_PROJECTIONS)
    + _projections("single_transformer_blocks", 38, 3072, ("to_q", "to_k", "to_v")),
    fsdp_units=("FluxTransformerBlock", "FluxSingleTransformerBlock"),
    largest_unit=339_831_296,
)
QWEN_IMAGE = ArchSizes(
    name="Qwen-Image",
    transformer=20_430_401_088,
    transformer_note="60 double-stream blocks of width 3072",
    text_encoders={"Qwen2.5-VL-7B": 8_292_166_656},
    vae=126_892_531,
    layers=60,
    dual_layers=0,
    width=3072,
    text_tokens=256,
    text_tokens_note="256 assumed: the pipeline pads to the batch's longest prompt, at most its max_sequence_length 512",
    text_dim=3584,
    pooled_dim=0,
    latent_channels=16,
    vae_factor=8,
    patch=2,
    attention=_projections("transformer_blocks", 60, 3072, JOINT_PROJECTIONS),
    fsdp_units=("QwenImageTransformerBlock",),
    largest_unit=339_831_296,
)
ARCHS = {a.name: a for a in (SD35M, SD35L, FLUX_DEV, QWEN_IMAGE)}


def arch_for(model: str, backbone: str) -> ArchSizes:
    """The sizes a plan uses for base ``model`` of kind ``backbone``: FLUX.1-dev for FLUX, Qwen-Image for Qwen-Image;
    for SD3, SD3.5-Large when the spec names a large model or its folder's transformer has 38 blocks, else SD3.5-Medium."""
    import json

    if backbone == "flux":
        return FLUX_DEV
    if backbone == "qwen-image":
        return QWEN_IMAGE
    if "large" in model.lower():
        return SD35L
    config = Path(model.split(":", 1)[-1]) / "transformer" / "config.json"
    try:
        layers = json.loads(config.read_text()).get("num_layers")
    except (OSError, ValueError, AttributeError):
        layers = None
    return SD35L if layers == SD35L.layers else SD35M


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

# activations of one sequence through one block, in bytes per token per width unit (bf16): 34 s h is the
# Korthikanti et al. (2022) count for a transformer layer with memory-efficient attention (no s^2 term), used for
# joint, double- and single-stream blocks alike; SD3.5-M's dual-attention blocks add ~12 s_img h for their second
# attention's q, k, v, output and norms
ACT_PER_LAYER, ACT_PER_DUAL = 34, 12
# the VAE decoder at 512 px holds a few 128-channel full-resolution maps at once (no grad): ~0.3 GiB per image
VAE_DECODE_BYTES_PER_PIXEL = 0.3 * GIB / (512 * 512)
OVERHEAD_GIB = 2.0  # CUDA context, cuBLAS workspaces, allocator slack
