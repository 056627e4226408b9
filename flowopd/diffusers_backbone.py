"""What every backbone built from a diffusers pipeline's components shares (SD3 / SD3.5, FLUX.1): the frozen text
encoders and VAE, the transformer as the only trainable part, the VAE's latent encode / decode, and fusing a LoRA
through the pipeline's own ``load_lora_weights``. Each model's module adds its prompt encoding, velocity and schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flowopd.errors import FlowOPDError
from flowopd.lora import LORA_FILE


def first_line(exc: BaseException) -> str:
    """An exception's first line (diffusers' and the hub's errors run to pages): what the CLI's one-line error quotes."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def looks_like_hub_id(source: str) -> bool:
    """``owner/name`` with no path syntax: a hub repository, not a (missing) local folder."""
    if source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") != 1:
        return False
    owner, name = source.split("/")
    return bool(owner) and bool(name)


def fuse_lora(pipe: Any, folder: Path, family: str) -> None:
    """Load a diffusers-format LoRA with the pipeline's ``load_lora_weights``, fuse it into the weights (``W + s B A``) and
    drop the adapter: base-model speed. A LoRA that does not fit is refused in one line naming ``family``."""
    try:
        pipe.load_lora_weights(str(folder), weight_name=LORA_FILE, adapter_name="default")
    except Exception as exc:  # peft / diffusers raise several types for a LoRA that does not fit
        raise FlowOPDError(f"LoRA {folder} does not fit this {family} model: {first_line(exc)}") from None
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()


class DiffusersBackbone:
    """The shared half of a diffusers-components backbone; subclasses set ``pipe``, ``transformer``, ``vae``, ``_embeds``."""

    world = "real"
    text_encoder_names: tuple[str, ...] = ("text_encoder", "text_encoder_2")

    pipe: Any
    transformer: Any
    vae: Any
    _embeds: Any

    def to(self, device: str | torch.device) -> DiffusersBackbone:
        """Move every component to ``device``."""
        self.pipe.to(device)
        self._embeds.clear()
        return self

    def requires_grad_(self, flag: bool = True) -> DiffusersBackbone:
        """Text encoders and VAE stay frozen whatever ``flag`` says (they are off the training path); the transformer follows it."""
        self.transformer.requires_grad_(flag)
        return self

    def parameters(self):
        return self.transformer.parameters()

    def eval(self) -> DiffusersBackbone:
        """Every component in eval mode (sampling)."""
        for module in (self.transformer, self.vae, *(getattr(self.pipe, n, None) for n in self.text_encoder_names)):
            if module is not None:
                module.eval()
        return self

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the transformer blocks' activations in backward (diffusers' own switch): memory for time."""
        self.transformer.enable_gradient_checkpointing()

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] -> the transformer's latent space (the VAE's mean, shifted and scaled): what a
        flow-matching (SFT) loss trains on; the inverse of :meth:`decode`."""
        config = self.vae.config
        posterior = self.vae.encode((images * 2.0 - 1.0).to(self.vae.device, self.vae.dtype)).latent_dist
        return ((posterior.mean - (config.shift_factor or 0.0)) * config.scaling_factor).float()

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents -> images ``[B, 3, H, W]`` float32 in [0, 1], as the pipeline's decode and postprocess."""
        config = self.vae.config
        latents = x.to(self.vae.dtype) / config.scaling_factor + (config.shift_factor or 0.0)
        image = self.vae.decode(latents, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)
