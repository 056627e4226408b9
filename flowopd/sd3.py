"""Stable Diffusion 3 / 3.5 as a flowopd backbone: the components of diffusers' ``StableDiffusion3Pipeline``.

Text encoding is the pipeline's own ``encode_prompt`` (CLIP-L + CLIP-G + T5,
per-token states concatenated along the sequence, the two CLIP projections
concatenated into the pooled vector), the velocity is the pipeline's
transformer call with ``timestep = sigma * 1000``, and decoding is the
pipeline's ``latents / scaling_factor + shift_factor -> vae.decode -> (img / 2 +
0.5).clamp(0, 1)``. So :func:`flowopd.sampling.sample_ode` with this backbone
reproduces ``StableDiffusion3Pipeline.__call__`` with ``negative_prompt=""``
(tests/test_sd3_backbone.py checks it), as long as the scheduler uses a fixed
``shift`` (SD3 and SD3.5 do: ``shift 3.0``, no dynamic shifting).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from flowopd.backbone import PromptEmbeds
from flowopd.diffusers_backbone import DiffusersBackbone, check_lora_folder, load_pipeline, prepare_pipeline, resolve_source
from flowopd.errors import ConfigError

SD35M_HUB_ID = "stabilityai/stable-diffusion-3.5-medium"
ALIASES = {"sd35m": SD35M_HUB_ID, "sd3.5-medium": SD35M_HUB_ID}
EVAL_STEPS = 40  # SPEC section 8
EVAL_CFG = 4.5
EVAL_RESOLUTION = 512
MAX_SEQUENCE_LENGTH = 256  # the pipeline's default T5 length


class SD3Backbone(DiffusersBackbone):
    """SD3 / SD3.5 (diffusers components) behind the :class:`flowopd.backbone.Backbone` interface."""

    text_encoder_names = ("text_encoder", "text_encoder_2", "text_encoder_3")

    def __init__(self, pipe: Any, resolution: int | None = None, max_sequence_length: int = MAX_SEQUENCE_LENGTH):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.scheduler = pipe.scheduler
        self.vae_scale_factor = int(pipe.vae_scale_factor)
        self.patch_size = int(self.transformer.config.patch_size)
        self.max_sequence_length = max_sequence_length
        self.latent_channels = int(self.vae.config.latent_channels)
        self.native_resolution = int(self.transformer.config.sample_size) * self.vae_scale_factor
        self.resolution = self.native_resolution
        self.latent_shape: tuple[int, int, int] = (self.latent_channels, 0, 0)
        self._embeds: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.set_resolution(resolution if resolution is not None else self.native_resolution)

    # -------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        lora: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        resolution: int | None = None,
    ) -> SD3Backbone:
        """Load a diffusers SD3 folder (``model_index.json``) or hub id; ``lora`` (a diffusers-format LoRA folder) is fused in."""
        from diffusers import StableDiffusion3Pipeline

        source, is_folder = resolve_source(source, ALIASES, "SD3", "StableDiffusion3Pipeline", SD35M_HUB_ID)
        if is_folder:
            _precheck_resolution(Path(source), resolution)  # a bad size fails before gigabytes load
        check_lora_folder(lora, "SD3")
        device = torch.device(device)
        pipe = load_pipeline(StableDiffusion3Pipeline, source, is_folder, device, dtype, "SD3")
        _check_scheduler(pipe.scheduler, source)
        prepare_pipeline(pipe, device, lora, "SD3", ("transformer", "vae", *cls.text_encoder_names))
        return cls(pipe, resolution=resolution)

    # -------------------------------------------------------------- resolution and defaults

    def set_resolution(self, px: int) -> None:
        """Sample square ``px`` x ``px`` images: ``latent_shape`` becomes ``(C, px / f, px / f)`` with ``f`` the VAE factor."""
        _check_resolution(px, self.vae_scale_factor, self.patch_size, self.transformer.config.get("pos_embed_max_size"))
        self.resolution = px
        self.latent_shape = (self.latent_channels, px // self.vae_scale_factor, px // self.vae_scale_factor)

    @property
    def default_sampling(self) -> dict[str, Any]:
        """The evaluation protocol's sampler settings (SPEC section 8: 40 steps, CFG 4.5, 512 px, or the model's native size
        when smaller) with this model's scheduler shift."""
        size = min(EVAL_RESOLUTION, self.native_resolution)
        return {"steps": EVAL_STEPS, "cfg": EVAL_CFG, "shift": float(self.scheduler.config.shift), "resolution": size}

    # -------------------------------------------------------------- backbone interface

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        """CLIP-L, CLIP-G and T5 states ``[B, 77 + 256, 4096]`` and pooled CLIP projections ``[B, 2048]`` (the pipeline's).

        Cached (``DiffusersBackbone._cached_embeds``): three text encoders, T5-XXL among them, are not cheap.
        """

        def encode(todo: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
            tokens, _, pooled, _ = self.pipe.encode_prompt(
                prompt=todo,
                prompt_2=None,
                prompt_3=None,
                device=self.device,
                do_classifier_free_guidance=False,
                max_sequence_length=self.max_sequence_length,
            )
            return list(zip(tokens, pooled))

        entries = self._cached_embeds(prompts, encode)
        return PromptEmbeds(torch.stack([t for t, _ in entries]), torch.stack([p for _, p in entries]))

    def velocity(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: PromptEmbeds, transformer: torch.nn.Module | None = None
    ) -> torch.Tensor:
        """v(x, sigma, c) with the transformer's timestep input ``sigma * 1000`` (float32, as the scheduler's timesteps)."""
        sigma = torch.as_tensor(sigma, device=x.device)
        timestep = sigma.float() * 1000.0
        timestep = timestep.expand(x.shape[0]) if timestep.ndim == 0 else timestep
        dtype = self.dtype
        out = (transformer or self.transformer)(
            hidden_states=x.to(dtype),
            timestep=timestep,
            encoder_hidden_states=cond.tokens.to(dtype),
            pooled_projections=cond.pooled.to(dtype),
            return_dict=False,
        )[0]
        return out.to(x.dtype)


def _check_resolution(px: Any, vae_scale_factor: int, patch_size: int, pos_embed_max_size: int | None) -> None:
    """A resolution must tile into whole patches of latents and fit the transformer's position grid."""
    step = vae_scale_factor * patch_size
    if isinstance(px, bool) or not isinstance(px, int) or px <= 0 or px % step:
        raise ConfigError(f"resolution must be a positive multiple of {step} (VAE factor x patch size) for this model, got {px!r}")
    largest = pos_embed_max_size * step if pos_embed_max_size else None
    if largest is not None and px > largest:
        raise ConfigError(f"resolution {px} is larger than this model's position grid allows ({largest} px); pass at most {largest}")


def _precheck_resolution(folder: Path, px: int | None) -> None:
    """Check ``px`` against a local folder's configs (``transformer/``, ``vae/``) before any weights load."""
    import json

    if px is None:
        return
    try:
        transformer = json.loads((folder / "transformer" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        factor = 2 ** (len(vae["block_out_channels"]) - 1)
        patch = int(transformer["patch_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # an incomplete folder: the pipeline's loader names what is missing
    _check_resolution(px, factor, patch, transformer.get("pos_embed_max_size"))


def _check_scheduler(scheduler: Any, source: str) -> None:
    """Warn where the model's scheduler would give another schedule than ``sampling.sigma_schedule(steps, shift)``."""
    config = scheduler.config
    odd = [
        key
        for key in (
            "use_dynamic_shifting",
            "invert_sigmas",
            "shift_terminal",
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
        )
        if config.get(key)
    ]
    if config.get("num_train_timesteps", 1000) != 1000:
        odd.append(f"num_train_timesteps={config.num_train_timesteps}")
    if odd:
        warnings.warn(
            f"the scheduler of {source} sets {', '.join(odd)}; flowopd samples with the plain shifted schedule "
            f"(shift {config.get('shift')}), so its images differ from this model's diffusers pipeline",
            stacklevel=3,
        )


def load_sd3_backbone(spec_source: str, lora: str | None = None, device: str = "cpu") -> SD3Backbone:
    """An SD3 backbone from a folder, hub id or alias (``sd35m``), with an optional LoRA fused in, in eval mode."""
    return SD3Backbone.from_pretrained(spec_source, lora=lora, device=device)
