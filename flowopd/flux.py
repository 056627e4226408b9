"""FLUX.1 as a flowopd backbone: the components of diffusers' ``FluxPipeline``.

What differs from SD3 (:mod:`flowopd.sd3`), and how each is handled here:

* **Text**: the pipeline's own ``encode_prompt``: T5 per-token states are the
  joint-attention tokens, CLIP-L's pooled output is the pooled vector; the text
  ids are all zeros (the pipeline's), so they are rebuilt from the sequence
  length and need no place in :class:`flowopd.backbone.PromptEmbeds`.
* **Packed latents**: the sampler, the SDE step and the objectives see
  unpacked latents ``[B, 16, H/f, W/f]`` (``latent_shape``); :meth:`velocity`
  packs them into 2x2 patches ``[B, HW/4f^2, 64]`` with the image ids, runs the
  transformer and unpacks its output. Packing is a permutation, so an
  elementwise Euler or SDE step is the same on either layout.
* **Schedule shift**: FLUX shifts its schedule by ``mu`` from the image
  sequence length (diffusers' ``calculate_shift``). With the exponential time
  shift, ``exp(mu) / (exp(mu) + 1/t - 1)`` is the plain shift
  ``s t / (1 + (s - 1) t)`` with ``s = exp(mu)``, so :attr:`shift` (and
  ``default_sampling["shift"]``) gives the shared sampler ``exp(mu)`` for the
  current resolution. The unshifted points are ``FluxPipeline``'s
  ``linspace(1, 1/T)`` (``spacing="pipeline"`` of ``sampling.sigma_schedule``,
  in ``default_sampling`` and a FLUX recipe's sampler), so our images equal the
  pipeline's default call (tests/test_flux_backbone.py checks it).
* **Guidance**: a guidance-distilled model (FLUX.1-dev, ``guidance_embeds``)
  takes the embedded guidance value :attr:`guidance` (3.5 by default, the
  pipeline's ``guidance_scale``) on every forward. The sampler's ``cfg`` is
  FLUX's *true* CFG (``true_cfg_scale`` with the sampler's negative prompt,
  two branches per step), off at ``cfg = 1`` (the default protocol). On a
  guidance-distilled model true CFG must be asked for (``true_cfg=True``);
  without it a ``cfg`` other than 1 is a :class:`ConfigError`, not a silent
  change (:meth:`check_cfg`, called by ``sampling.guided_velocity``).
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

FLUX_DEV_HUB_ID = "black-forest-labs/FLUX.1-dev"
ALIASES = {"flux-dev": FLUX_DEV_HUB_ID, "flux1-dev": FLUX_DEV_HUB_ID}
EVAL_STEPS = 28  # FluxPipeline's default and Flow-GRPO's FLUX evaluation
EVAL_RESOLUTION = 512
GUIDANCE = 3.5  # FluxPipeline's default guidance_scale (the embedded guidance of FLUX.1-dev)
MAX_SEQUENCE_LENGTH = 512  # FluxPipeline's default T5 length
# The joint blocks' attention projections of both streams (Flow-GRPO's FLUX targets); in the single-stream blocks
# `attn.to_q/k/v` match too (they have no `to_out`). Keys `transformer.<module>.lora_A/B.weight`: FluxPipeline's format.
FLUX_LORA_TARGETS = SD3_LORA_TARGETS


class FluxBackbone(PackedBackbone):
    """FLUX.1 (diffusers components) behind the :class:`flowopd.backbone.Backbone` interface."""

    kind = "flux"
    family = "FLUX"
    pipeline_class = "FluxPipeline"
    hub_id = FLUX_DEV_HUB_ID
    aliases = ALIASES

    def __init__(
        self,
        pipe: Any,
        resolution: int | None = None,
        max_sequence_length: int = MAX_SEQUENCE_LENGTH,
        guidance: float = GUIDANCE,
        true_cfg: bool = False,
    ):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.scheduler = pipe.scheduler
        self.vae_scale_factor = int(pipe.vae_scale_factor)
        self.max_sequence_length = max_sequence_length
        self.latent_channels = int(self.transformer.config.in_channels) // 4
        self.guidance_distilled = bool(self.transformer.config.guidance_embeds)
        self.guidance = float(guidance)
        self.true_cfg = bool(true_cfg) or not self.guidance_distilled
        self.native_resolution = int(pipe.default_sample_size) * self.vae_scale_factor
        self.resolution = self.native_resolution
        self.latent_shape: tuple[int, int, int] = (self.latent_channels, 0, 0)
        self._embeds: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.set_resolution(resolution if resolution is not None else min(EVAL_RESOLUTION, self.native_resolution))

    # -------------------------------------------------------------- loading

    # -------------------------------------------------------------- resolution, shift and defaults

    @property
    def default_sampling(self) -> dict[str, Any]:
        """The protocol's sampler settings: 28 steps, no true CFG (``cfg`` 1; the embedded guidance is :attr:`guidance`),
        the resolution-dependent shift on ``FluxPipeline``'s spacing, at 512 px or the native size when smaller."""
        size = min(EVAL_RESOLUTION, self.native_resolution)
        return {"steps": EVAL_STEPS, "cfg": 1.0, **self.schedule, "resolution": size, "guidance": self.guidance}

    def check_cfg(self, cfg: float) -> None:
        """``cfg`` other than 1 is FLUX's true CFG; refused on a guidance-distilled model unless ``true_cfg`` was asked for."""
        if cfg != 1.0 and not self.true_cfg:
            raise ConfigError(
                f"cfg {cfg} on a guidance-distilled FLUX model: its guidance is the embedded value (guidance {self.guidance}), "
                "not CFG; set cfg 1, or ask for true CFG with a negative prompt (true_cfg: true; two forwards per step)"
            )

    # -------------------------------------------------------------- backbone interface

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        """T5 states ``[B, max_sequence_length, D_t5]`` and CLIP-L pooled output ``[B, D_clip]`` (the pipeline's); cached
        (``DiffusersBackbone._cached_embeds``)."""

        def encode(todo: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
            tokens, pooled, _ = self.pipe.encode_prompt(
                prompt=todo, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
            )
            return list(zip(tokens, pooled))

        entries = self._cached_embeds(prompts, encode)
        return PromptEmbeds(torch.stack([t for t, _ in entries]), torch.stack([p for _, p in entries]))

    def velocity(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: PromptEmbeds, transformer: torch.nn.Module | None = None
    ) -> torch.Tensor:
        """v(x, sigma, c) on unpacked latents ``[B, C, H, W]``: packed, run with image / text ids and the embedded guidance
        (timestep ``sigma * 1000 / 1000`` as the pipeline passes it), unpacked."""
        b, c, h, w = x.shape
        sigma = torch.as_tensor(sigma, device=x.device)
        timestep = (sigma.float() * 1000.0).expand(b) if sigma.ndim == 0 else sigma.float() * 1000.0
        dtype = self.dtype
        packed = self.pipe._pack_latents(x.to(dtype), b, c, h, w)
        img_ids = self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, x.device, dtype)
        txt_ids = torch.zeros(cond.tokens.shape[1], 3, device=x.device, dtype=dtype)
        guidance = torch.full((b,), self.guidance, device=x.device, dtype=torch.float32) if self.guidance_distilled else None
        out = (transformer or self.transformer)(
            hidden_states=packed,
            timestep=timestep.to(dtype) / 1000,
            guidance=guidance,
            pooled_projections=cond.pooled.to(dtype),
            encoder_hidden_states=cond.tokens.to(dtype),
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return unpack_latents(out, c, h, w).to(x.dtype)


def load_flux_backbone(spec_source: str, lora: str | None = None, device: str = "cpu", **options: Any) -> FluxBackbone:
    """A FLUX backbone from a folder, hub id or alias (``flux-dev``), with an optional LoRA fused in, in eval mode."""
    return FluxBackbone.from_pretrained(spec_source, lora=lora, device=device, **options)
