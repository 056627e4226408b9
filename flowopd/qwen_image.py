"""Qwen-Image as a flowopd backbone: the components of diffusers' ``QwenImagePipeline``.

What differs from SD3 (:mod:`flowopd.sd3`) and FLUX.1 (:mod:`flowopd.flux`), and how each is handled here:

* **Text**: one encoder, Qwen2.5-VL, through the pipeline's own ``encode_prompt``: the last hidden states of the prompt
  in the pipeline's chat template, its first 34 template tokens dropped, padding removed. Prompts have different token
  counts and there is **no pooled vector**: :class:`flowopd.backbone.PromptEmbeds` carries ``tokens`` padded with zeros
  to the batch's longest, a ``mask`` (1 real, 0 padding) and a zero-width ``pooled`` ``[B, 0]``.
  :meth:`velocity` drops the padding columns that every row of its batch has and passes the mask as
  ``encoder_hidden_states_mask`` (None when every token is real, as the pipeline does); text positions are counted
  from the first token, so padding at the end changes nothing but rounding.
* **Packed latents**: as FLUX (2x2 patches; the sampler and objectives see ``[B, C, H/f, W/f]``), with
  ``img_shapes`` ``[(1, H/2f, W/2f)]`` per image instead of image ids. Qwen-Image's VAE is a video VAE: latents get a
  frame axis of 1 for it, and are normalised per channel (``latents_mean`` / ``latents_std``), not by one
  scaling / shift factor (:meth:`decode`, :meth:`encode_images`).
* **Schedule shift**: as FLUX, ``exp(mu)`` from the packed sequence length (exponential time shift), with Qwen-Image's
  scheduler bounds (``base_shift`` 0.5 at 256 tokens, ``max_shift`` 0.9 at 8192), on the pipeline's points
  ``linspace(1, 1/T)``; its scheduler also stretches the shifted schedule so that the last non-zero sigma is
  ``shift_terminal`` (0.02). ``default_sampling`` (and a Qwen-Image recipe's sampler) carries both (``spacing``
  "pipeline", ``shift_terminal``), so our images equal the pipeline's default call (docs/qwen-image.md).
* **Guidance**: Qwen-Image is *not* guidance-distilled: true CFG is its normal mode (``true_cfg_scale`` 4 with a
  negative prompt), so ``cfg`` other than 1 is allowed. The pipeline rescales the combined velocity to the norm of the
  conditional one per packed token; :meth:`combine_cfg` does the same (``sampling.guided_velocity`` calls it).
* **Negative prompt**: the pipeline runs CFG only when given a negative prompt (``negative_prompt=None``, its default,
  means no CFG whatever ``true_cfg_scale`` says: our ``cfg`` 1); the model card passes ``" "``. Our sampler's negative
  prompt (``""`` unless set) is encoded like any prompt, so ours equals the pipeline's given the same string;
  :data:`NEGATIVE_PROMPT` is the model card's, for a run that wants its protocol exactly.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from flowopd.backbone import PromptEmbeds
from flowopd.diffusers_backbone import (
    PackedBackbone,
    unpack_latents,
)
from flowopd.errors import ConfigError
from flowopd.lora import SD3_LORA_TARGETS

QWEN_IMAGE_HUB_ID = "Qwen/Qwen-Image"
ALIASES = {"qwen-image": QWEN_IMAGE_HUB_ID}
FAMILY = "Qwen-Image"
EVAL_STEPS = 50  # QwenImagePipeline.__call__'s num_inference_steps default (and the model card's)
EVAL_CFG = 4.0  # QwenImagePipeline.__call__'s true_cfg_scale default (and the model card's)
EVAL_RESOLUTION = 512  # FLUX's and SD3's here; the pipeline's default is 1024 (default_sample_size 128 x VAE factor 8)
NEGATIVE_PROMPT = " "  # the model card's negative prompt ("even an empty negative prompt like ' '" enables true CFG)
MAX_SEQUENCE_LENGTH = 512  # QwenImagePipeline.__call__'s default (text tokens after the template's are dropped)
# The joint blocks' attention projections of both streams: the same module names as SD3's and FLUX's. Keys
# `transformer.<module>.lora_A/B.weight`: what QwenImagePipeline.load_lora_weights reads.
QWEN_IMAGE_LORA_TARGETS = SD3_LORA_TARGETS


class QwenImageBackbone(PackedBackbone):
    """Qwen-Image (diffusers components) behind the :class:`flowopd.backbone.Backbone` interface."""

    kind = "qwen-image"
    family = FAMILY
    pipeline_class = "QwenImagePipeline"
    hub_id = QWEN_IMAGE_HUB_ID
    aliases = ALIASES
    text_encoder_names = ("text_encoder",)

    def __init__(self, pipe: Any, resolution: int | None = None, max_sequence_length: int = MAX_SEQUENCE_LENGTH):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.scheduler = pipe.scheduler
        self.vae_scale_factor = int(pipe.vae_scale_factor)
        self.max_sequence_length = max_sequence_length
        self.latent_channels = int(self.transformer.config.in_channels) // 4
        if self.transformer.config.guidance_embeds:
            raise ConfigError("this Qwen-Image transformer is guidance-distilled (guidance_embeds); flowopd supports the base model only")
        self.native_resolution = int(pipe.default_sample_size) * self.vae_scale_factor
        self.resolution = self.native_resolution
        self.latent_shape: tuple[int, int, int] = (self.latent_channels, 0, 0)
        self._embeds: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.set_resolution(resolution if resolution is not None else min(EVAL_RESOLUTION, self.native_resolution))

    # -------------------------------------------------------------- loading

    # -------------------------------------------------------------- resolution, shift and defaults

    @property
    def default_sampling(self) -> dict[str, Any]:
        """The protocol's sampler settings: the pipeline's 50 steps and true CFG 4 (with the sampler's negative prompt),
        the resolution-dependent shift on the pipeline's spacing with its scheduler's terminal stretch, at 512 px or the
        native size when smaller (the pipeline's default is 1024)."""
        size = min(EVAL_RESOLUTION, self.native_resolution)
        return {"steps": EVAL_STEPS, "cfg": EVAL_CFG, **self.schedule, "resolution": size}

    def combine_cfg(self, v_uncond: torch.Tensor, v_cond: torch.Tensor, cfg: float) -> torch.Tensor:
        """The pipeline's true CFG: ``v_uncond + cfg (v_cond - v_uncond)`` rescaled, per packed 2x2 token, to the norm of
        ``v_cond`` (norms over the 4C values of each token, as the pipeline takes them on its packed layout)."""
        b, c, h, w = v_cond.shape
        combined = v_uncond + cfg * (v_cond - v_uncond)
        packed_cond = self.pipe._pack_latents(v_cond, b, c, h, w)
        packed = self.pipe._pack_latents(combined, b, c, h, w)
        scale = torch.norm(packed_cond, dim=-1, keepdim=True) / torch.norm(packed, dim=-1, keepdim=True)
        return unpack_latents(packed * scale, c, h, w)

    # -------------------------------------------------------------- backbone interface

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        """Qwen2.5-VL states of each prompt (the pipeline's ``encode_prompt``: template dropped, at most
        ``max_sequence_length`` tokens), padded to the longest with a mask, and an empty pooled ``[B, 0]``; cached
        (``DiffusersBackbone._cached_embeds``)."""

        def encode(todo: list[str]) -> list[torch.Tensor]:
            tokens, mask = self.pipe.encode_prompt(prompt=todo, device=self.device, max_sequence_length=self.max_sequence_length)
            lengths = [tokens.shape[1]] * len(todo) if mask is None else mask.sum(dim=1).tolist()
            return [tokens[k, : int(n)] for k, n in enumerate(lengths)]

        entries = self._cached_embeds(prompts, encode)
        return PromptEmbeds.cat([PromptEmbeds(t[None], t.new_zeros(1, 0)) for t in entries])

    def velocity(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: PromptEmbeds, transformer: torch.nn.Module | None = None
    ) -> torch.Tensor:
        """v(x, sigma, c) on unpacked latents ``[B, C, H, W]``: packed, run with ``img_shapes`` and the text mask
        (timestep ``sigma * 1000 / 1000`` as the pipeline passes it), unpacked."""
        b, c, h, w = x.shape
        sigma = torch.as_tensor(sigma, device=x.device)
        timestep = (sigma.float() * 1000.0).expand(b) if sigma.ndim == 0 else sigma.float() * 1000.0
        dtype = self.dtype
        tokens, mask = _trim_padding(cond)
        out = (transformer or self.transformer)(
            hidden_states=self.pipe._pack_latents(x.to(dtype), b, c, h, w),
            timestep=timestep.to(dtype) / 1000,
            guidance=None,
            encoder_hidden_states_mask=mask,
            encoder_hidden_states=tokens.to(dtype),
            img_shapes=[[(1, h // 2, w // 2)]] * b,
            return_dict=False,
        )[0]
        return unpack_latents(out, c, h, w).to(x.dtype)

    # -------------------------------------------------------------- the video VAE

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's per-channel ``latents_mean`` and ``1 / latents_std`` as ``[1, C, 1, 1, 1]`` (the pipeline's)."""
        config = self.vae.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(like.device, like.dtype)
        inv_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(like.device, like.dtype)
        return mean, inv_std

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] -> normalised latents ``[B, C, H/f, W/f]`` (the VAE's mean of a one-frame
        video, as ``QwenImageImg2ImgPipeline._encode_vae_image``); the inverse of :meth:`decode`."""
        video = (images * 2.0 - 1.0).to(self.vae.device, self.vae.dtype)[:, :, None]
        latents = self.vae.encode(video).latent_dist.mean
        mean, inv_std = self._latent_stats(latents)
        return ((latents - mean) * inv_std)[:, :, 0].float()

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, C, H, W]`` -> images ``[B, 3, H*f, W*f]`` float32 in [0, 1], as the pipeline's decode and postprocess."""
        latents = x.to(self.vae.dtype)[:, :, None]
        mean, inv_std = self._latent_stats(latents)
        image = self.vae.decode(latents / inv_std + mean, return_dict=False)[0][:, :, 0]
        return (image.float() / 2 + 0.5).clamp(0, 1)


def _trim_padding(cond: PromptEmbeds) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tokens without the padding columns every row has, and the mask (None when every remaining token is real: what the
    pipeline passes for a batch without padding)."""
    if cond.mask is None:
        return cond.tokens, None
    keep = int(cond.mask.bool().any(dim=0).nonzero().max()) + 1 if cond.mask.any() else cond.tokens.shape[1]
    tokens, mask = cond.tokens[:, :keep], cond.mask[:, :keep]
    return tokens, None if bool(mask.all()) else mask


def load_qwen_image_backbone(spec_source: str, lora: str | None = None, device: str = "cpu", **options: Any) -> QwenImageBackbone:
    """A Qwen-Image backbone from a folder, hub id or alias (``qwen-image``), with an optional LoRA fused in, in eval mode."""
    return QwenImageBackbone.from_pretrained(spec_source, lora=lora, device=device, **options)
