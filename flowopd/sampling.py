"""Deterministic Euler ODE sampling with classifier-free guidance (SPEC section 1).

The noise schedule comes from diffusers' ``FlowMatchEulerDiscreteScheduler``
(with the model's ``shift``, spacing and terminal stretch); the step itself is ``x_next = x + (sigma_next - sigma) * v``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from flowopd.backbone import Backbone, PromptEmbeds

Spacing = Literal["sd3", "pipeline"]


def sigma_schedule(num_steps: int, shift: float = 1.0, spacing: Spacing = "sd3", shift_terminal: float | None = None) -> torch.Tensor:
    """``sigma_0 = 1 > ... > sigma_T = 0`` (length ``num_steps + 1``) from diffusers' flow-match scheduler.

    ``spacing="sd3"``: the scheduler's own spacing of ``num_steps`` points, shifted by ``shift`` (SD3's pipeline).
    ``spacing="pipeline"``: the points ``linspace(1, 1/T, T)`` of ``FluxPipeline`` / ``QwenImagePipeline``, shifted by
    the exponential time shift with ``mu = log(shift)`` (``exp(mu) / (exp(mu) + 1/t - 1)``, the same map as
    ``s t / (1 + (s - 1) t)``), as those pipelines call the scheduler. ``shift_terminal``: the scheduler's stretch of
    the shifted schedule so that its last non-zero sigma is this value (Qwen-Image's 0.02); None: no stretch.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    if num_steps < 1:
        raise ValueError(f"steps must be at least 1, got {num_steps}")
    if spacing == "sd3":
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift, shift_terminal=shift_terminal)
        sched.set_timesteps(num_steps)
    elif spacing == "pipeline":
        sched = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, use_dynamic_shifting=True, time_shift_type="exponential", shift_terminal=shift_terminal
        )
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=math.log(shift))
    else:
        raise ValueError(f"spacing must be 'sd3' or 'pipeline', got {spacing!r}")
    return sched.sigmas.float().clone().clamp_(max=1.0)  # a shift such as FLUX's exp(mu) puts SD3's sigma_0 at 1 + 1 ulp


def schedule_args(sampling: dict) -> dict:
    """``shift`` / ``spacing`` / ``shift_terminal`` for :func:`sample_ode` from a sampling dict (a backbone's
    ``default_sampling``, the evaluation's): one without ``spacing`` (SD3's, the mini's) means SD3's, unstretched."""
    return {"shift": float(sampling["shift"]), "spacing": sampling.get("spacing", "sd3"), "shift_terminal": sampling.get("shift_terminal")}


def guided_velocity(
    backbone: Backbone,
    x: torch.Tensor,
    sigma: torch.Tensor,
    cond: PromptEmbeds,
    uncond: PromptEmbeds | None,
    cfg: float,
    transformer: torch.nn.Module | None = None,
    detach_uncond: bool = False,
) -> torch.Tensor:
    """``v = v_uncond + s * (v_cond - v_uncond)``; one batched forward for both branches.

    A backbone with a ``combine_cfg(v_uncond, v_cond, cfg)`` method combines the
    branches its own way (Qwen-Image rescales the result to the conditional
    velocity's norm per token, as its pipeline does). ``transformer`` runs instead of the backbone's own (the trainer passes its
    distributed wrapper so gradients synchronise). ``detach_uncond`` runs the
    unconditional branch without gradient (Flow-GRPO's training step): two
    forwards, and no activations kept for that branch.
    """
    extra = {} if transformer is None else {"transformer": transformer}  # a backbone that never trains need not take it
    if uncond is None or cfg == 1.0:
        return backbone.velocity(x, sigma, cond, **extra)
    check = getattr(backbone, "check_cfg", None)  # a backbone whose cfg means something else refuses it (FLUX.1-dev)
    if check is not None:
        check(cfg)
    combine = getattr(backbone, "combine_cfg", None) or _plain_cfg
    if detach_uncond and torch.is_grad_enabled():
        with torch.no_grad():
            v_uncond = backbone.velocity(x, sigma, uncond, **extra)
        v_cond = backbone.velocity(x, sigma, cond, **extra)
        return combine(v_uncond, v_cond, cfg)
    sigma = sigma.repeat(2) if sigma.ndim == 1 else sigma  # a per-sample sigma [B] (DiffusionNFT's times) for both halves
    v = backbone.velocity(torch.cat([x, x]), sigma, PromptEmbeds.cat([uncond, cond]), **extra)
    v_uncond, v_cond = v.chunk(2)
    return combine(v_uncond, v_cond, cfg)


def _plain_cfg(v_uncond: torch.Tensor, v_cond: torch.Tensor, cfg: float) -> torch.Tensor:
    """Classifier-free guidance as SD3's and FLUX's pipelines combine it."""
    return v_uncond + cfg * (v_cond - v_uncond)


def initial_noise(n: int, shape: tuple[int, ...], seeds: list[int]) -> torch.Tensor:
    """One independent noise tensor per seed, so an image depends only on its own seed."""
    if len(seeds) != n:
        raise ValueError("one seed per sample")
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def sample_ode(
    backbone: Backbone,
    prompts: list[str],
    seeds: list[int],
    steps: int = 20,
    cfg: float = 1.5,
    shift: float = 1.0,
    negative_prompt: str = "",
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
    spacing: Spacing = "sd3",
    shift_terminal: float | None = None,
) -> torch.Tensor:
    """Images ``[N, 3, H, W]`` in [0, 1] for ``prompts`` by the deterministic Euler ODE sampler (the schedule:
    :func:`sigma_schedule` with ``shift``, ``spacing`` and ``shift_terminal``)."""
    sigmas = sigma_schedule(steps, shift, spacing, shift_terminal)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        cond = backbone.encode_prompts(chunk)
        uncond = backbone.encode_prompts([negative_prompt] * len(chunk)) if cfg != 1.0 else None
        x = initial_noise(len(chunk), backbone.latent_shape, seeds[start : start + batch_size]).to(backbone.device)
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            v = guided_velocity(backbone, x, sigma.to(x.device), cond, uncond, cfg)
            x = x + (sigma_next - sigma) * v
        out.append(backbone.decode(x).cpu())
        if progress is not None:
            progress(len(chunk))
    return torch.cat(out)
