"""Benchmark: the Stable Diffusion 3.5 Medium transformer (random weights) through flowopd's rollout, GRPO and OPD code.

    python tests/bench/sd35m_bench.py                      # GPU: full SD3.5-M, 512 px, bf16
    python tests/bench/sd35m_bench.py --size small         # CPU: a reduced config, ~15 s on 2 cores
    python tests/bench/sd35m_bench.py [--device cuda|cpu] [--dtype bf16|fp32] [--batch 8] [--micro-batch 8]
        [--steps 10] [--teachers 3] [--warmup 1] [--repeats 1] [--peak-tflops 989] [--json OUT]

The transformer is diffusers' ``SD3Transformer2DModel`` built from the public
SD3.5-Medium config (``--size full``: 24 layers of 24 heads x 64, the first 13
with dual attention, rms q/k norm, joint attention dim 4096) with random
weights: nothing is downloaded. Random tensors stand in for the text encoders'
output (``--size full``: 77 + 256 = 333 tokens of width 4096, pooled 2048) and
the latents are not decoded, so latents/s is images/s. Measured, with the
functions the trainer uses (``flowopd.rollout``, ``flowopd.sde``,
``flowopd.objectives``, ``flowopd.lora``):

- rollout: SDE sampling of ``--batch`` samples, ``--steps`` steps (10, as in
  training), CFG 4.5 (one batched forward of both branches), log-probs kept,
  with the student LoRA active; images/s;
- one GRPO update: LoRA r 32 / alpha 64 on ``SD3_LORA_TARGETS``; over every
  trained step (``timestep_fraction`` 0.99: 9 of 10) the clipped ratio loss
  (eq. 3) on random-reward advantages + beta KL (eq. 9) to the reference (the
  base: adapters off, a no-grad forward), backward, grad-norm clip, AdamW step,
  EMA step;
- one OPD update: ``--teachers`` teacher LoRAs + 1 anchor LoRA on the same
  transformer, switched with ``flowopd.lora.use_adapter``; the signal (each
  teacher's no-grad forward on the samples routed to it, the anchor's on all,
  per trained step) and the update (the ``kl`` objective + MAR, backward, step);
- peak memory per phase (``torch.cuda.max_memory_allocated``; on CPU the
  process's peak RSS so far, ``ru_maxrss``, which only grows);
- achieved TFLOP/s and its fraction of the device's dense peak;
- parameter bytes of teachers as adapters vs teachers as separate models.

Not measured: the text encoders (CLIP-L, CLIP-G, T5-XXL), the VAE decode, the
reward models, data loading, and multi-GPU communication.

FLOPs are counted analytically from the architecture (per sample, per
transformer forward; a multiply-add is 2 FLOPs; ``D`` = heads x head dim):

    A     = 4 * D * (L * (T_img + T_txt)^2 + L_dual * T_img^2)        # QK^T and AV, joint attention + the dual layers' own
    F_fwd = 2 * (N_img * T_img + N_txt * T_txt + N_vec) + A
          + 2 * sum_LoRA r * (d_in + d_out) * T_stream                # the active adapter (none for the reference)
    F_bwd = 2 * (N'_img * T_img + N'_txt * T_txt) + 2 * A
          + 2 * sum_LoRA (2 r d_out + 2 r d_in) * T_stream            # LoRA weight + input gradients

``N_img``: the weights applied to each image token (patch embedding, the image
stream's q/k/v/out, the dual layers' second attention, the image MLP,
``proj_out``); ``N_txt``: those applied to each text token (``context_embedder``,
add_q/k/v, ``to_add_out``, the context MLP); ``N_vec``: those applied once per
sample (timestep and pooled-text embedders, the adaLN modulations: about a
third of SD3.5-M's weights, which is why ``F_fwd`` is ~2.4 TFLOP at 512 px and
not ``2 * params * tokens`` = 6.1). The backward runs through the frozen base
to the LoRA only: ``N'`` leaves out the weights whose input needs no gradient
(``N_vec``, the patch embedding, ``context_embedder``, the first block's q/k/v,
whose LoRA input gradients are left out too), so ``F_bwd`` is about one
forward, not the two of full fine-tuning. Both formulas equal
``torch.utils.flop_counter`` with the math attention kernel exactly (checked
on small configs). With ``T_img = (res / 16)^2`` (1024 at 512 px), ``T_txt =
333``, ``D = 1536``, ``L = 24``, ``L_dual = 13``. Per phase, with ``B``
samples, ``S`` sampling steps, ``K`` trained steps and CFG doubling every
forward's samples: rollout ``S 2B F_fwd``; GRPO update ``K 2B (F_fwd,ref +
F_fwd + F_bwd)``; OPD signal ``K 2B 2 F_fwd`` (the routed teachers cover each
sample once, the anchor once more); OPD update ``K 2B (F_fwd + F_bwd)``. Not counted: gradient checkpointing's recomputation (model FLOPs, as
in MFU), norms, activations, biases, softmax and the sampler's elementwise math.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from flowopd.arch_sizes import SD35M_TRANSFORMER_CONFIG as FULL  # the public SD3.5-Medium transformer config

# A reduced config with the same structure (dual attention on the first layer, rms q/k norm) that runs on a laptop CPU
SMALL = dict(
    sample_size=16,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=2,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=256,
    caption_projection_dim=128,
    pooled_projection_dim=64,
    pos_embed_max_size=16,
    qk_norm="rms_norm",
    dual_attention_layers=(0,),
)
SIZES = {
    "full": {"config": FULL, "resolution": 512, "text_tokens": (77, 256)},
    "small": {"config": SMALL, "resolution": 128, "text_tokens": (16, 32)},
}
VAE_FACTOR = 8  # the SD3 VAE downsamples by 8: 512 px -> 64 x 64 latents

# Dense (no sparsity) peak TFLOP/s by device name: (bf16 tensor cores, fp32 without TF32: torch's default for matmuls)
PEAK_TFLOPS = [
    ("h200", 989.0, 67.0),
    ("h100 pcie", 756.0, 51.0),
    ("h100 nvl", 835.0, 60.0),
    ("h100", 989.0, 67.0),  # SXM (the name reads e.g. "NVIDIA H100 80GB HBM3")
    ("a100", 312.0, 19.5),
]

# Which stream's tokens each Linear of SD3Transformer2DModel is applied to (see the FLOP formula above)
_VEC = ("time_text_embed.", ".norm1.linear", ".norm1_context.linear", "norm_out.linear")
_TXT = ("context_embedder", ".attn.add_q_proj", ".attn.add_k_proj", ".attn.add_v_proj", ".attn.to_add_out", ".ff_context.")


def _stream(name: str) -> str:
    """``vec`` (once per sample), ``txt`` (per text token) or ``img`` (per image token) for a module name."""
    dotted = "." + name
    if any(k in dotted for k in _VEC):
        return "vec"
    if any(k in dotted for k in _TXT):
        return "txt"
    return "img"


def peak_tflops(device_name: str, dtype: torch.dtype) -> float | None:
    """The device's dense peak for ``dtype`` from the table above (None: not in the table)."""
    name = device_name.lower()
    for key, bf16, fp32 in PEAK_TFLOPS:
        if key in name:
            return bf16 if dtype == torch.bfloat16 else fp32
    return None


# ----------------------------------------------------------------------------- FLOPs and parameter bytes


_FIRST_BLOCK_INPUTS = tuple(
    f"transformer_blocks.0.{attn}.{proj}"
    for attn in ("attn", "attn2")
    for proj in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")
)


def stream_weights(model: torch.nn.Module, adapter: str | None = "default") -> dict[str, dict[str, int]]:
    """Multiply-add weights per token of each stream (``img``, ``txt``, ``vec``), for the FLOP formula.

    ``fwd``: every Linear and the patch conv (``N``); ``bwd``: those whose input
    needs a gradient when only the LoRA trains (``N'``); ``lora_fwd``:
    ``r (d_in + d_out)`` of ``adapter``; ``lora_bwd``: its weight gradients
    ``r (d_in + d_out)`` plus its input gradients ``r (d_in + d_out)``, the
    latter left out in the first block's q/k/v (their inputs need none).
    """
    out = {key: {"img": 0, "txt": 0, "vec": 0} for key in ("fwd", "bwd", "lora_fwd", "lora_bwd")}
    for name, mod in model.named_modules():
        if ".lora_" in name or name.endswith(".base_layer"):
            continue  # a wrapped Linear counts once, under its wrapper's name; adapters through the wrapper's lora_A/B
        stream, base = _stream(name), getattr(mod, "base_layer", mod)
        if isinstance(base, torch.nn.Conv2d):  # the patch embedding: one (C p p) x D product per image token; input is x
            out["fwd"]["img"] += base.weight.numel()
            continue
        if not isinstance(base, torch.nn.Linear):
            continue
        first = name in _FIRST_BLOCK_INPUTS
        out["fwd"][stream] += base.in_features * base.out_features
        if stream != "vec" and name != "context_embedder" and not first:
            out["bwd"][stream] += base.in_features * base.out_features
        lora_a = getattr(mod, "lora_A", None)
        if adapter is not None and isinstance(lora_a, torch.nn.ModuleDict) and adapter in lora_a:
            r = lora_a[adapter].out_features
            out["lora_fwd"][stream] += r * (base.in_features + base.out_features)
            out["lora_bwd"][stream] += (
                r * (base.in_features + base.out_features) + r * base.out_features + (0 if first else r * base.in_features)
            )
    return out


def attention_flops(cfg: dict, t_img: int, t_txt: int) -> float:
    """``4 D (L (T_img + T_txt)^2 + L_dual T_img^2)``: QK^T and AV of the joint and the dual (image-only) attention."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    return float(4 * d * (cfg["num_layers"] * (t_img + t_txt) ** 2 + len(cfg["dual_attention_layers"]) * t_img**2))


def _per_token(w: dict[str, int], t_img: int, t_txt: int) -> float:
    return float(2 * (w["img"] * t_img + w["txt"] * t_txt + w["vec"]))


def forward_flops(sw: dict[str, dict[str, int]], cfg: dict, t_img: int, t_txt: int, lora: bool) -> float:
    """``F_fwd`` per sample (module docstring); ``lora``: the adapter is active (False: adapters off, the reference)."""
    return (
        _per_token(sw["fwd"], t_img, t_txt)
        + attention_flops(cfg, t_img, t_txt)
        + (_per_token(sw["lora_fwd"], t_img, t_txt) if lora else 0.0)
    )


def backward_flops(sw: dict[str, dict[str, int]], cfg: dict, t_img: int, t_txt: int) -> float:
    """``F_bwd`` per sample through the frozen base to the LoRA: input gradients, attention x2, the LoRA's gradients."""
    return _per_token(sw["bwd"], t_img, t_txt) + 2 * attention_flops(cfg, t_img, t_txt) + _per_token(sw["lora_bwd"], t_img, t_txt)


def lora_params_arithmetic(model: torch.nn.Module, rank: int) -> int:
    """Parameters of one rank-``rank`` LoRA on ``SD3_LORA_TARGETS`` (peft's rule: the name is a target or ends in ``.target``)."""
    from flowopd.lora import SD3_LORA_TARGETS

    total = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in SD3_LORA_TARGETS):
            total += rank * (mod.in_features + mod.out_features)
    return total


def param_bytes(model: torch.nn.Module, adapters: list[str]) -> dict[str, int]:
    """Bytes of the base (parameters and buffers: the sin-cos position grid is a 384 x 384 x 1536 buffer) and of each
    adapter, from the live tensors."""
    out = {"base": 0, **{a: 0 for a in adapters}}
    for name, p in [*model.named_parameters(), *model.named_buffers()]:
        size = p.numel() * p.element_size()
        owner = next((a for a in adapters if f".{a}." in name and ".lora_" in name), None)
        out[owner or "base"] += size
    return out


def memory_layouts(base: int, student: int, others: list[int]) -> dict[str, float]:
    """Teachers + anchor as adapters on the student's base, or as separate (LoRA-fused) transformers, in GiB."""
    gib = 2**30
    adapters = base + student + sum(others)
    separate = base + student + len(others) * base
    return {
        "base_GiB": base / gib,
        "one_lora_MiB": student / 2**20,
        "student_GiB": (base + student) / gib,
        "adapters_GiB": adapters / gib,
        "separate_GiB": separate / gib,
        "separate_over_adapters": separate / adapters,
    }


def sd35m_parameter_arithmetic(rank: int, teachers: int) -> dict[str, Any]:
    """Parameter bytes of the full SD3.5-M transformer in bf16, built on the meta device (no memory, no download)."""
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        model = SD3Transformer2DModel(**FULL)
    base_params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    lora = lora_params_arithmetic(model, rank)
    t_img, t_txt = (512 // VAE_FACTOR // FULL["patch_size"]) ** 2, sum(SIZES["full"]["text_tokens"])
    sw = stream_weights(model, None)
    out = {
        "base_params_M": base_params / 1e6,
        "base_buffers_M": buffers / 1e6,
        "lora_params_M": lora / 1e6,
        "forward_GFLOP_per_sample_512px": forward_flops(sw, FULL, t_img, t_txt, lora=False) / 1e9,
    }
    out.update(memory_layouts(2 * (base_params + buffers), 2 * lora, [2 * lora] * (teachers + 1)))
    return out


# ----------------------------------------------------------------------------- the backbone adapter


class TransformerBackbone:
    """The :class:`flowopd.backbone.Backbone` protocol around a bare SD3 transformer (no text encoders, no VAE)."""

    def __init__(self, transformer: torch.nn.Module, latent_shape: tuple[int, int, int], dtype: torch.dtype):
        self.transformer = transformer
        self.latent_shape = latent_shape
        self.dtype = dtype

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def _autocast(self):
        # as the trainer's accelerate autocast with mixed_precision bf16 (the LoRA's weights may stay float32)
        if self.dtype == torch.bfloat16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond, transformer: torch.nn.Module | None = None) -> torch.Tensor:
        """v(x, sigma, c) with the transformer's timestep input ``sigma * 1000`` (as ``flowopd.sd3.SD3Backbone``)."""
        sigma = torch.as_tensor(sigma, device=x.device)
        timestep = sigma.float() * 1000.0
        timestep = timestep.expand(x.shape[0]) if timestep.ndim == 0 else timestep
        with self._autocast():
            out = (transformer or self.transformer)(
                hidden_states=x.to(self.dtype),
                timestep=timestep,
                encoder_hidden_states=cond.tokens.to(self.dtype),
                pooled_projections=cond.pooled.to(self.dtype),
                return_dict=False,
            )[0]
        return out.to(x.dtype)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Not decoded: the VAE is outside the benchmark; the latents stand in for the images."""
        return x


# ----------------------------------------------------------------------------- measuring


class Meter:
    """Wall time (synchronised on CUDA) and peak memory of one phase."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, record: dict[str, Any]):
        self.sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        yield
        self.sync()
        record["seconds"] = time.perf_counter() - t0
        record["peak_memory_GiB"] = self.peak_gib()

    def peak_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux: KiB


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


# ----------------------------------------------------------------------------- the updates (as flowopd.trainer.Trainer._update)


def _update(bb, params, optimizer, ema, traj, plan, cond, uncond, args, ks: list[int], keep: torch.Tensor, piece_loss) -> dict:
    """One optimizer step over the kept samples and trained steps ``ks``: the trainer's ``_update`` on one process."""
    from flowopd.sampling import guided_velocity
    from flowopd.sde import sde_step

    tr, sig, dev, n = bb.transformer, plan.sigmas, bb.device, keep.shape[0]
    tr.train()
    scale = 1.0 / (float(keep.sum()) * len(ks))
    total = 0.0
    for k in ks:
        i_step = plan.trained[k]
        for a in range(0, n, args.micro_batch):
            b = min(a + args.micro_batch, n)
            x, x_next = traj.states[a:b, k].to(dev), traj.next_states[a:b, k].to(dev)
            v = guided_velocity(bb, x, sig[i_step].to(dev), cond[a:b], uncond[a:b], args.cfg)
            out = sde_step(x, v, float(sig[i_step]), float(sig[i_step + 1]), args.noise_level, kind="sde", x_next=x_next)
            per_sample = piece_loss(k, a, b, x, v, out)
            loss = (per_sample * keep[a:b]).sum() * scale
            loss.backward()
            total += float(loss.detach())
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema.step(params)
    tr.eval()
    return {"loss": total, "grad_norm": grad_norm}


def grpo_update(bb, params, optimizer, ema, traj, plan, cond, uncond, args, ks: list[int]) -> dict:
    """Random rewards -> group advantages (eq. 3) -> clipped ratio loss + beta KL to the reference (adapters off)."""
    from flowopd.lora import use_adapter
    from flowopd.objectives.grpo import clipped_surrogate, group_advantages, nonzero_groups
    from flowopd.sampling import guided_velocity
    from flowopd.sde import per_step_kl

    n, dev, sig = traj.states.shape[0], bb.device, plan.sigmas
    group_ids = torch.zeros(n, dtype=torch.long)  # one prompt, G = batch samples (the reward model is not benchmarked)
    rewards = torch.rand(n, generator=torch.Generator().manual_seed(0))
    adv = group_advantages(rewards, group_ids).to(dev)
    keep = nonzero_groups(adv.cpu(), group_ids).to(dev).float()

    def piece(k, a, b, x, v, out):
        i_step = plan.trained[k]
        surr = clipped_surrogate(out.log_prob, traj.log_probs[a:b, k].to(dev), adv[a:b], args.clip_range)
        with torch.no_grad(), use_adapter(bb.transformer, None):
            v_ref = guided_velocity(bb, x, sig[i_step].to(dev), cond[a:b], uncond[a:b], args.cfg)
        kl = per_step_kl(v, v_ref, sig[i_step], sig[i_step + 1], args.noise_level)
        return surr.loss + args.beta * kl

    return _update(bb, params, optimizer, ema, traj, plan, cond, uncond, args, ks, keep, piece)


def opd_signal(bb, traj, plan, cond, uncond, args, teachers: list[str], anchor: str, ks: list[int]):
    """Each teacher's no-grad forward on the samples routed to it, the anchor's on all, at the trained states (eq. 7)."""
    from flowopd.lora import use_adapter
    from flowopd.objectives.opd import step_advantages
    from flowopd.sampling import guided_velocity
    from flowopd.sde import per_step_kl

    n, dev, sig = traj.states.shape[0], bb.device, plan.sigmas
    routes = {t: [i for i in range(n) if i % len(teachers) == j] for j, t in enumerate(teachers)}  # per-sample routing
    v_teacher = torch.zeros_like(traj.velocities)
    v_anchor = torch.zeros_like(traj.velocities)
    jobs = [(t, idx, v_teacher) for t, idx in routes.items() if idx] + [(anchor, list(range(n)), v_anchor)]
    for adapter, idx, target in jobs:
        with torch.no_grad(), use_adapter(bb.transformer, adapter):
            for k in ks:
                i_step = plan.trained[k]
                for a in range(0, len(idx), args.micro_batch):
                    rows = idx[a : a + args.micro_batch]
                    target[rows, k] = guided_velocity(
                        bb, traj.states[rows, k].to(dev), sig[i_step].to(dev), cond[rows], uncond[rows], args.cfg
                    ).float()
    kl = torch.stack(
        [per_step_kl(traj.velocities[:, k], v_teacher[:, k], sig[plan.trained[k]], sig[plan.trained[k] + 1], args.noise_level) for k in ks],
        1,
    )
    adv = torch.zeros(n, traj.states.shape[1], device=dev)
    adv[:, ks] = step_advantages(args.opd_objective, kl.cpu(), torch.zeros(n, dtype=torch.long)).to(dev)
    return v_teacher, v_anchor, adv, float(kl.sum(1).mean())


def opd_update(bb, params, optimizer, ema, traj, plan, cond, uncond, args, ks, v_teacher, v_anchor, adv) -> dict:
    """The OPD objective (eq. 9-11) + MAR (eq. 12) on the student's velocity, backward, step."""
    from flowopd.objectives.opd import opd_step_loss
    from flowopd.sde import per_step_kl

    dev, sig = bb.device, plan.sigmas

    def piece(k, a, b, x, v, out):
        i_step = plan.trained[k]
        kl = per_step_kl(v, v_teacher[a:b, k], sig[i_step], sig[i_step + 1], args.noise_level)
        step = opd_step_loss(
            args.opd_objective, kl, out.log_prob, traj.log_probs[a:b, k].to(dev), adv[a:b, k], args.clip_range, x[0].numel()
        )
        mar = per_step_kl(v, v_anchor[a:b, k], sig[i_step], sig[i_step + 1], args.noise_level)  # eq. 12, with gradient
        return step.loss + args.mar_lambda * mar

    keep = torch.ones(traj.states.shape[0], device=dev)
    return _update(bb, params, optimizer, ema, traj, plan, cond, uncond, args, ks, keep, piece)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="full: SD3.5-M at 512 px; small: a CPU-sized config")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when there is one)")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default=None, help="default: bf16 on a GPU, fp32 on CPU")
    parser.add_argument("--batch", type=int, default=None, help="samples per rollout and update (default: 8 full, 4 small)")
    parser.add_argument("--micro-batch", type=int, default=None, help="samples per forward (x2 with CFG); default: --batch")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps (training uses 10)")
    parser.add_argument("--timestep-fraction", type=float, default=0.99, help="trained fraction of the steps (Flow-GRPO: 0.99)")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default: 512 full, 128 small)")
    parser.add_argument("--cfg", type=float, default=4.5, help="guidance scale (SD3.5-M: 4.5)")
    parser.add_argument("--noise-level", type=float, default=0.7)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=64.0)
    parser.add_argument("--beta", type=float, default=0.04, help="GRPO's KL-to-reference coefficient")
    parser.add_argument("--clip-range", type=float, default=1e-4)
    parser.add_argument("--mar-lambda", type=float, default=0.02)
    parser.add_argument("--opd-objective", choices=("kl", "kl_pg", "paper"), default="kl")
    parser.add_argument("--teachers", type=int, default=3, help="teacher adapters (+ 1 anchor adapter)")
    parser.add_argument("--gradient-checkpointing", choices=("auto", "on", "off"), default="auto", help="auto: on for full, off for small")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before measuring (kernels, allocator, optimizer state)")
    parser.add_argument("--repeats", type=int, default=1, help="measured rounds (times are medians)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak (default: from a table by device name)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_out", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(args.device)
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    args.batch = args.batch or (8 if args.size == "full" else 4)
    args.micro_batch = args.micro_batch or args.batch
    args.resolution = args.resolution or size["resolution"]
    if args.batch < 2:
        parser.error("--batch must be at least 2 (GRPO's group advantages need two samples)")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be at least 1 and --warmup at least 0")
    if args.teachers < 1:
        parser.error("--teachers must be at least 1")
    step = VAE_FACTOR * size["config"]["patch_size"]
    if args.resolution % step or args.resolution // step > size["config"]["pos_embed_max_size"]:
        parser.error(f"--resolution must be a multiple of {step} and at most {step * size['config']['pos_embed_max_size']}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Build, measure, print the table; returns the figures (also written to ``--json``)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import SD3Transformer2DModel
    from diffusers.training_utils import EMAModel
    from diffusers.utils import logging as diffusers_logging

    from flowopd.backbone import PromptEmbeds
    from flowopd.lora import SD3_LORA_TARGETS, add_lora
    from flowopd.rollout import plan_steps, rollout

    size = SIZES[args.size]
    cfg = dict(size["config"])
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    meter = Meter(device)
    torch.manual_seed(args.seed)

    # the model: random weights, built on the device, frozen; student LoRA + teacher and anchor LoRAs
    t0 = time.perf_counter()
    with torch.device(device):
        transformer = SD3Transformer2DModel(**cfg)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # "modules to keep in float32: []": there are none in this model
    try:
        transformer.to(dtype).eval().requires_grad_(False)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    checkpointing = args.gradient_checkpointing == "on" or (args.gradient_checkpointing == "auto" and args.size == "full")
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    teachers = [f"teacher{j}" for j in range(args.teachers)]
    anchor = "anchor"
    add_lora(transformer, args.rank, args.alpha, SD3_LORA_TARGETS, name="default")
    for name in [*teachers, anchor]:
        with warnings.catch_warnings():  # peft warns that a model with adapters gets another one: that is the point
            warnings.simplefilter("ignore", UserWarning)
            add_lora(transformer, args.rank, args.alpha, SD3_LORA_TARGETS, name=name)
        for pname, p in transformer.named_parameters():
            if f".lora_B.{name}." in pname:  # zero B would make every teacher the base: give each its own update
                p.data.normal_(0.0, 1e-3)
    transformer.set_adapters("default")  # adding an adapter activates it; the student's is the one that trains
    for pname, p in transformer.named_parameters():
        p.requires_grad_(".lora_" in pname and ".default." in pname)
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-4, weight_decay=1e-4)
    ema = EMAModel(params, decay=0.9)
    build_s = time.perf_counter() - t0
    sw = stream_weights(transformer, "default")

    # inputs: random stand-ins for the text encoders' output; the CFG branch gets its own
    latent = args.resolution // VAE_FACTOR
    latent_shape = (cfg["in_channels"], latent, latent)
    t_img = (latent // cfg["patch_size"]) ** 2
    t_txt = sum(size["text_tokens"])
    gen = torch.Generator().manual_seed(args.seed)

    def embeds() -> PromptEmbeds:
        tokens = torch.randn(args.batch, t_txt, cfg["joint_attention_dim"], generator=gen)
        return PromptEmbeds(tokens, torch.randn(args.batch, cfg["pooled_projection_dim"], generator=gen)).to(device)

    cond, uncond = embeds(), embeds()
    bb = TransformerBackbone(transformer, latent_shape, dtype)
    plan = plan_steps(args.steps, 3.0, timestep_fraction=args.timestep_fraction)  # SD3's shift 3; every step SDE
    ks = list(range(len(plan.trained)))
    seeds = list(range(args.batch))

    # phases: warm-up rounds (untimed), then measured rounds
    rec: dict[str, list[dict]] = {"rollout": [], "grpo_update": [], "opd_signal": [], "opd_update": []}
    kl_rollout = float("nan")
    for round_ in range(args.warmup + args.repeats):
        timed = round_ >= args.warmup
        use_ks = ks if timed else ks[:1]  # a warm-up update on one trained step: kernels, allocator, optimizer state
        r: dict[str, dict] = {p: {} for p in rec}
        with meter.phase(r["rollout"]):
            traj = rollout(bb, cond, uncond, seeds, plan, args.cfg, args.noise_level, "sde", args.micro_batch)
        with meter.phase(r["grpo_update"]):
            r["grpo_update"].update(grpo_update(bb, params, optimizer, ema, traj, plan, cond, uncond, args, use_ks))
        with meter.phase(r["opd_signal"]):
            v_t, v_a, adv, kl_rollout = opd_signal(bb, traj, plan, cond, uncond, args, teachers, anchor, use_ks)
        with meter.phase(r["opd_update"]):
            r["opd_update"].update(opd_update(bb, params, optimizer, ema, traj, plan, cond, uncond, args, use_ks, v_t, v_a, adv))
        if timed:
            for p in rec:
                rec[p].append(r[p])
        del traj, v_t, v_a, adv
    finite = bool(torch.isfinite(torch.tensor([r["loss"] for r in rec["grpo_update"] + rec["opd_update"]])).all())

    def median(phase: str, key: str) -> float:  # robust to a busy machine's stray slow round
        return statistics.median(r[key] for r in rec[phase])

    # FLOPs (per phase, from the analytic per-sample counts; x2 samples for CFG)
    f_lora = forward_flops(sw, cfg, t_img, t_txt, lora=True)
    f_base = forward_flops(sw, cfg, t_img, t_txt, lora=False)
    f_bwd = backward_flops(sw, cfg, t_img, t_txt)
    cfg_mult = 2 if args.cfg != 1.0 else 1
    n, k = args.batch, len(ks)
    flops = {
        "rollout": args.steps * cfg_mult * n * f_lora,
        "grpo_update": k * cfg_mult * n * ((f_base if args.beta > 0 else 0.0) + f_lora + f_bwd),
        "opd_signal": k * cfg_mult * n * 2 * f_lora,  # the routed teachers cover every sample once, the anchor once more
        "opd_update": k * cfg_mult * n * (f_lora + f_bwd),
    }
    name = device_name(device)
    peak = args.peak_tflops or (peak_tflops(name, dtype) if device.type == "cuda" else None)
    phases: dict[str, dict[str, Any]] = {}
    for p in rec:
        s = median(p, "seconds")
        tflops = flops[p] / s / 1e12
        phases[p] = {
            "seconds": s,
            "samples_per_s": n / s,
            "tflop": flops[p] / 1e12,
            "tflops_per_s": tflops,
            "mfu": tflops / peak if peak else None,
            "peak_memory_GiB": max(r["peak_memory_GiB"] for r in rec[p]),
        }
    opd_s = phases["opd_signal"]["seconds"] + phases["opd_update"]["seconds"]
    opd_flop = flops["opd_signal"] + flops["opd_update"]
    phases["opd_total"] = {
        "seconds": opd_s,
        "samples_per_s": n / opd_s,
        "tflop": opd_flop / 1e12,
        "tflops_per_s": opd_flop / opd_s / 1e12,
        "mfu": opd_flop / opd_s / 1e12 / peak if peak else None,
        "peak_memory_GiB": max(phases["opd_signal"]["peak_memory_GiB"], phases["opd_update"]["peak_memory_GiB"]),
    }

    # teachers as adapters vs as separate models: measured bytes here, and the full SD3.5-M in bf16 by arithmetic
    measured = param_bytes(transformer, ["default", *teachers, anchor])
    memory = {
        "measured": {
            "dtype": str(dtype).replace("torch.", ""),
            **memory_layouts(measured["base"], measured["default"], [measured[a] for a in [*teachers, anchor]]),
        },
        "sd35m_bf16_arithmetic": sd35m_parameter_arithmetic(args.rank, args.teachers),
    }
    figures = {
        "device": name,
        "device_type": device.type,
        "dtype": args.dtype,
        "size": args.size,
        "config": {k2: (list(v) if isinstance(v, tuple) else v) for k2, v in cfg.items()},
        "resolution": args.resolution,
        "latent_shape": list(latent_shape),
        "tokens": {"image": t_img, "text": t_txt},
        "batch": n,
        "micro_batch": args.micro_batch,
        "sampling_steps": args.steps,
        "trained_steps": k,
        "cfg": args.cfg,
        "lora": {"rank": args.rank, "alpha": args.alpha, "teachers": args.teachers, "anchor": 1},
        "gradient_checkpointing": checkpointing,
        "base_params_M": sum(p.numel() for n_, p in transformer.named_parameters() if ".lora_" not in n_) / 1e6,
        "lora_params_M": sum(p.numel() for p in params) / 1e6,
        "build_seconds": build_s,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "peak_tflops": peak,
        "flops_per_sample_forward_T": f_lora / 1e12,
        "flops_per_sample_backward_T": f_bwd / 1e12,
        "rollout_images_per_s": phases["rollout"]["samples_per_s"],
        "phases": phases,
        "param_memory": memory,
        "opd_rollout_kl": kl_rollout,
        "losses": {p: [r["loss"] for r in rec[p]] for p in ("grpo_update", "opd_update")},
        "losses_finite": finite,
    }
    print_table(figures)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_table(f: dict[str, Any]) -> None:
    c = f["config"]
    mem_label = "peak GPU memory GiB" if f["device_type"] == "cuda" else "peak RSS GiB (so far)"
    print(
        f"SD3.5-M transformer benchmark ({f['size']}: {c['num_layers']} layers, {c['num_attention_heads']} heads x {c['attention_head_dim']}, "
        f"{f['base_params_M']:.1f}M params, random weights)"
    )
    print(f"device {f['device']}, dtype {f['dtype']}, torch {f['torch']}")
    print(
        f"{f['resolution']} px, latents {'x'.join(map(str, f['latent_shape']))}, tokens {f['tokens']['image']} image + "
        f"{f['tokens']['text']} text, batch {f['batch']} (micro {f['micro_batch']}, x2 for CFG {f['cfg']}), "
        f"{f['sampling_steps']} sampling steps, {f['trained_steps']} trained"
    )
    print(
        f"LoRA r {f['lora']['rank']} / alpha {f['lora']['alpha']:g} ({f['lora_params_M']:.2f}M trainable), "
        f"{f['lora']['teachers']} teacher + 1 anchor adapters, gradient checkpointing {'on' if f['gradient_checkpointing'] else 'off'}, "
        f"{f['warmup']} warm-up + {f['repeats']} measured rounds"
    )
    print(
        f"FLOPs per sample: forward {f['flops_per_sample_forward_T'] * 1e3:.2f} GFLOP (with LoRA), backward {f['flops_per_sample_backward_T'] * 1e3:.2f} GFLOP; "
        f"device peak {_fmt(f['peak_tflops'], 'g')} TFLOP/s"
    )
    print()
    print(f"{'phase':<26}{'seconds':>10}{'samples/s':>11}{'TFLOP':>10}{'TFLOP/s':>10}{'MFU':>8}{mem_label:>24}")
    labels = {
        "rollout": "rollout (SDE, CFG)",
        "grpo_update": "GRPO update",
        "opd_signal": "OPD signal (teachers)",
        "opd_update": "OPD update (student)",
        "opd_total": "OPD update, total",
    }
    for key, label in labels.items():
        p = f["phases"][key]
        print(
            f"{label:<26}{p['seconds']:>10.3f}{p['samples_per_s']:>11.2f}{p['tflop']:>10.3f}{p['tflops_per_s']:>10.3f}"
            f"{_fmt(p['mfu'], '.1%'):>8}{p['peak_memory_GiB']:>24.3f}"
        )
    print()
    m, s = f["param_memory"]["measured"], f["param_memory"]["sd35m_bf16_arithmetic"]
    t = f["lora"]["teachers"]
    print(f"parameter memory, {t} teachers + anchor   as adapters    as separate models   separate/adapters")
    print(
        f"  this model ({m['dtype']}, measured)   {m['adapters_GiB']:>10.3f} GiB {m['separate_GiB']:>14.3f} GiB {m['separate_over_adapters']:>14.2f}x"
        f"   (base {m['base_GiB']:.3f} GiB, one LoRA {m['one_lora_MiB']:.2f} MiB)"
    )
    print(
        f"  SD3.5-M (bf16, arithmetic)    {s['adapters_GiB']:>10.3f} GiB {s['separate_GiB']:>14.3f} GiB {s['separate_over_adapters']:>14.2f}x"
        f"   (base {s['base_params_M']:.0f}M params + {s['base_buffers_M']:.0f}M buffer, one LoRA {s['lora_params_M']:.1f}M)"
    )
    print(f"  SD3.5-M forward at 512 px: {s['forward_GFLOP_per_sample_512px']:.0f} GFLOP per sample (no LoRA)")
    if not f["losses_finite"]:
        print("note: a loss was not finite (random weights); the timings stand, the loss values do not")


if __name__ == "__main__":
    main()
