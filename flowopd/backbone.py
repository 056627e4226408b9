"""The backbone interface that the mini model and SD3.5 both implement."""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch


@dataclasses.dataclass
class PromptEmbeds:
    """Text conditioning: per-token embeddings for joint attention and a pooled vector.

    ``mask`` (``[B, L]``, 1 for a real token, 0 for padding) is for a model whose prompts have different token counts
    (Qwen-Image: no fixed-length padding, no pooled vector: ``pooled`` is ``[B, 0]``); None means every token is real
    (SD3, FLUX, the mini model). :meth:`cat` pads shorter token sequences with zeros, masked out.
    """

    tokens: torch.Tensor  # [B, L, D]
    pooled: torch.Tensor  # [B, P]
    mask: torch.Tensor | None = None  # [B, L], or None: all real

    def __getitem__(self, idx: slice | torch.Tensor | list[int]) -> PromptEmbeds:
        return PromptEmbeds(self.tokens[idx], self.pooled[idx], None if self.mask is None else self.mask[idx])

    def to(self, device: torch.device | str) -> PromptEmbeds:
        return PromptEmbeds(self.tokens.to(device), self.pooled.to(device), None if self.mask is None else self.mask.to(device))

    @staticmethod
    def cat(items: list[PromptEmbeds]) -> PromptEmbeds:
        """One batch of several; with masks or different token counts, tokens are padded to the longest (mask 0)."""
        pooled = torch.cat([i.pooled for i in items])
        length = max(i.tokens.shape[1] for i in items)
        if all(i.mask is None and i.tokens.shape[1] == length for i in items):
            return PromptEmbeds(torch.cat([i.tokens for i in items]), pooled)
        tokens, masks = [], []
        for i in items:
            b, n = i.tokens.shape[:2]
            mask = i.mask if i.mask is not None else torch.ones(b, n, dtype=torch.long, device=i.tokens.device)
            tokens.append(torch.nn.functional.pad(i.tokens, (0, 0, 0, length - n)))
            masks.append(torch.nn.functional.pad(mask.long(), (0, length - n)))
        return PromptEmbeds(torch.cat(tokens), pooled, torch.cat(masks))


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
