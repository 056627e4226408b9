"""The backbone interface that the mini model and SD3.5 both implement."""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch


@dataclasses.dataclass
class PromptEmbeds:
    """Text conditioning: per-token embeddings for joint attention and a pooled vector."""

    tokens: torch.Tensor  # [B, L, D]
    pooled: torch.Tensor  # [B, P]

    def __getitem__(self, idx: slice | torch.Tensor | list[int]) -> PromptEmbeds:
        return PromptEmbeds(self.tokens[idx], self.pooled[idx])

    def to(self, device: torch.device | str) -> PromptEmbeds:
        return PromptEmbeds(self.tokens.to(device), self.pooled.to(device))

    @staticmethod
    def cat(items: list[PromptEmbeds]) -> PromptEmbeds:
        return PromptEmbeds(torch.cat([i.tokens for i in items]), torch.cat([i.pooled for i in items]))


class Backbone(Protocol):
    """What the sampler, trainer and evaluation need from a text-to-image flow model."""

    transformer: torch.nn.Module
    latent_shape: tuple[int, int, int]

    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        """Encode prompts (the empty string is the unconditional branch for CFG)."""

    def velocity(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: PromptEmbeds, transformer: torch.nn.Module | None = None
    ) -> torch.Tensor:
        """The predicted velocity ``v = eps - x0`` at noise level ``sigma`` (SPEC section 1); ``transformer`` overrides
        the backbone's own module (the trainer's distributed wrapper); its active LoRA adapter applies."""

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents (or pixels) -> images ``[B, 3, H, W]`` in [0, 1]."""
