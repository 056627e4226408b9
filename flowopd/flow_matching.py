"""The flow-matching loss (eq. 1): pre-training the mini base and the SFT cold start (SPEC section 5) regress it."""

from __future__ import annotations

import torch

from flowopd.backbone import Backbone


def flow_matching_loss(model: Backbone, images: torch.Tensor, prompts: list[str], gen: torch.Generator) -> torch.Tensor:
    """Eq. 1: regress the velocity ``eps - x0`` at a logit-normal ``sigma`` (any backbone with ``encode_images``: the mini
    model's pixels, SD3's VAE latents)."""
    x0 = model.encode_images(images.to(model.device))
    eps = torch.randn(x0.shape, generator=gen).to(x0.device)  # drawn on the CPU generator: the same numbers on any device
    sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=gen)).to(x0.device)
    s = sigma.view(-1, 1, 1, 1)
    x_sigma = (1 - s) * x0 + s * eps
    v = model.velocity(x_sigma, sigma, model.encode_prompts(prompts))
    return torch.nn.functional.mse_loss(v, eps - x0)
