"""One GPU check (issue 20): the full-size SD3.5-Medium, FLUX.1-dev and Qwen-Image transformers, random weights, through
flowopd's rollout, GRPO update and OPD update (3 teacher adapters + 1 anchor), one model after another on one GPU; one JSON.

    python tests/bench/gpu_check.py                          # a GPU: the three full-size models (budget: 8 min in all)
    python tests/bench/gpu_check.py --size small             # CPU: tiny configs of the same classes (~1 min on 2 cores)
    bash tests/bench/gpu_check.sh [OUT.json]                 # a fresh GPU machine: installs flowopd if needed, then runs it
    python tests/bench/gpu_check.py --models flux --json OUT.json [--budget-s 480] [--repeats 1]

Without a CUDA device, ``--size full`` prints one "skipped" line, writes the JSON with the reason and exits 0.

Each model is the real backbone class of flowopd (``SD3Backbone``, ``FluxBackbone``, ``QwenImageBackbone``) around
diffusers' transformer built from the public config (:mod:`flowopd.arch_sizes`) with random weights in bf16, so the
velocity (packing, ids, masks, Qwen-Image's CFG rescaling) is the code that trains. Random tensors stand in for the text
encoders' output and the latents are not decoded (no text encoders, VAE or reward models are loaded). The phases are
those of ``tests/bench/sd35m_bench.py`` (the trainer's update on one process). Per model and phase it reports seconds,
samples/s, TFLOP (counted with ``torch.utils.flop_counter`` on one sample: forward with the LoRA, forward without it for
the reference, backward through the frozen base to the LoRA, without gradient checkpointing's recomputation, as in MFU),
TFLOP/s, MFU against the device's dense bf16 peak, and the peak memory against the plan's estimate of the same terms
(``flowopd train --dry-run``: the transformer, the student LoRA with AdamW and EMA, the frozen adapters, the
activations and the rollout buffers; not the text encoders, VAE, rewards or overhead).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
TIME_BUDGET_S = 480  # the 8 minutes for the whole check

# CPU-sized configs of the same classes (``--size small``; SD3.5-M's is the SD3.5-M benchmark's own ``SMALL``)
SMALL = {
    "flux": dict(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=32, num_attention_heads=4,
        joint_attention_dim=256, pooled_projection_dim=64, guidance_embeds=True, axes_dims_rope=(8, 12, 12),
    ),
    "qwen-image": dict(
        patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=32, num_attention_heads=4,
        joint_attention_dim=256, guidance_embeds=False, axes_dims_rope=(8, 12, 12),
    ),
}  # fmt: skip
FLUX_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
QWEN_SCHEDULER = dict(
    shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02
)


def model_specs() -> dict[str, dict[str, Any]]:
    """Per model: the transformer, how its pipeline and backbone are built, its text sizes and its training protocol (the
    recipes' sampler and micro-batch: configs/<model>/teacher-pickscore.yaml, and the OPD recipe for the memory plan)."""
    from flowopd import arch_sizes as sizes

    return {
        "sd35m": dict(
            arch=sizes.SD35M, full=sizes.SD35M_TRANSFORMER_CONFIG, transformer="SD3Transformer2DModel", text=(333, 4096, 2048),
            small_text=(48, 256, 64), steps=10, cfg=4.5, noise_level=0.7, batch=8, micro_batch=8, recipe="sd35m/opd-merge",
        ),
        "flux": dict(
            arch=sizes.FLUX_DEV, full=sizes.FLUX_DEV_TRANSFORMER_CONFIG, transformer="FluxTransformer2DModel", text=(512, 4096, 768),
            small_text=(48, 256, 64), steps=6, cfg=1.0, noise_level=0.9, batch=6, micro_batch=3, recipe="flux/opd-merge",
        ),
        "qwen-image": dict(
            arch=sizes.QWEN_IMAGE, full=sizes.QWEN_IMAGE_TRANSFORMER_CONFIG, transformer="QwenImageTransformer2DModel", text=(256, 3584, 0),
            small_text=(48, 256, 0), steps=10, cfg=4.0, noise_level=1.2, batch=4, micro_batch=2, recipe="qwen-image/opd-merge",
        ),
    }  # fmt: skip


def _bench_module():
    """tests/bench/sd35m_bench.py: its phases (the trainer's updates), meter, device names and peak table."""
    spec = importlib.util.spec_from_file_location("sd35m_bench", HERE / "sd35m_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- building


def build_backbone(name: str, spec: dict, config: dict, device: torch.device, dtype: torch.dtype, resolution: int):
    """flowopd's backbone class around a random-weight transformer (built directly in ``dtype`` on ``device``), in a
    pipeline with no text encoders; decoding is skipped (latents stand in for images)."""
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # a 20B model built in fp32 first would need twice the memory
    try:
        with torch.device(device), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transformer = getattr(diffusers, spec["transformer"])(**config)
    finally:
        torch.set_default_dtype(previous)
    transformer.eval().requires_grad_(False)
    if name == "sd35m":
        from flowopd.sd3 import SD3Backbone

        vae = diffusers.AutoencoderKL(latent_channels=16, block_out_channels=(8, 8, 8, 8), norm_num_groups=4,
                                      down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)  # fmt: skip
        pipe = diffusers.StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, text_encoder=None, tokenizer=None,
            text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
        )  # fmt: skip
        backbone = SD3Backbone(pipe, resolution=resolution)
    elif name == "flux":
        from flowopd.flux import FluxBackbone

        pipe = diffusers.FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=None, text_encoder=None, tokenizer=None,
            text_encoder_2=None, tokenizer_2=None, transformer=transformer,
        )  # fmt: skip
        backbone = FluxBackbone(pipe, resolution=resolution, true_cfg=spec["cfg"] != 1.0)
    else:
        from flowopd.qwen_image import QwenImageBackbone

        pipe = diffusers.QwenImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_SCHEDULER),
            vae=None,
            text_encoder=None,
            tokenizer=None,
            transformer=transformer,
        )
        backbone = QwenImageBackbone(pipe, resolution=resolution)
    backbone.decode = lambda x: x  # no VAE in the benchmark
    return backbone


def add_adapters(transformer: torch.nn.Module, teachers: list[str], anchor: str, rank: int, alpha: float) -> list[torch.nn.Parameter]:
    """The student's trainable LoRA and frozen teacher / anchor LoRAs (each with its own small update) on the same transformer."""
    from flowopd.lora import SD3_LORA_TARGETS, add_lora

    add_lora(transformer, rank, alpha, SD3_LORA_TARGETS, name="default")
    for name in [*teachers, anchor]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            add_lora(transformer, rank, alpha, SD3_LORA_TARGETS, name=name)
        for pname, p in transformer.named_parameters():
            if f".lora_B.{name}." in pname:
                p.data.normal_(0.0, 1e-3)
    transformer.set_adapters("default")
    for pname, p in transformer.named_parameters():
        p.requires_grad_(".lora_" in pname and ".default." in pname)
    return [p for p in transformer.parameters() if p.requires_grad]


def random_embeds(n: int, text: tuple[int, int, int], device: torch.device, gen: torch.Generator):
    from flowopd.backbone import PromptEmbeds

    tokens, width, pooled = text
    return PromptEmbeds(torch.randn(n, tokens, width, generator=gen), torch.randn(n, pooled, generator=gen)).to(device)


# ----------------------------------------------------------------------------- counting FLOPs and the memory plan


def count_flops(bb, x: torch.Tensor, sigma: torch.Tensor, cond, autocast) -> dict[str, float]:
    """FLOPs of one sample's forward with the LoRA, without it (the reference), and of its backward to the LoRA
    (``torch.utils.flop_counter``; gradient checkpointing off while counting, so recomputation is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    from flowopd.lora import use_adapter

    def counted(fn) -> float:
        mode = FlopCounterMode(display=False)
        with mode:
            fn()
        return float(mode.get_total_flops())

    tr = bb.transformer
    checkpointing = getattr(tr, "gradient_checkpointing", False)
    if checkpointing:
        tr.disable_gradient_checkpointing()
    try:
        with torch.no_grad(), autocast():
            f_lora = counted(lambda: bb.velocity(x, sigma, cond))
            with use_adapter(tr, None):
                f_base = counted(lambda: bb.velocity(x, sigma, cond))

        def forward_backward():
            with autocast():
                v = bb.velocity(x, sigma, cond)
            v.float().square().mean().backward()

        total = counted(forward_backward)
        for p in tr.parameters():
            p.grad = None
    finally:
        if checkpointing:
            tr.enable_gradient_checkpointing()
    return {"forward": f_lora, "forward_reference": f_base, "backward": total - f_lora}


def planned_memory(spec: dict, batch: int, micro_batch: int, rank: int) -> dict[str, Any]:
    """The plan's memory terms for the benchmark's run (the model's OPD recipe at this batch, student rank ``rank``):
    the terms this benchmark holds, their sum (throughout + the update's activations), and the full estimate."""
    from flowopd.cli.main import _load_train_config
    from flowopd.plan import train_plan

    cfg = _load_train_config(spec["recipe"], {})
    cfg.batch_size, cfg.group_size, cfg.micro_batch, cfg.updates_per_rollout = batch, batch, micro_batch, 1
    cfg.sampler.steps, cfg.sampler.window_size, cfg.sampler.timestep_fraction = spec["steps"], 0, 0.99
    cfg.lora.rank, cfg.opd.cold_start.method = rank, "sft"  # the bench's student has the teachers' rank (no cat merge)
    memory = train_plan(cfg, 1, "opd", spec["recipe"])["memory"]
    held = ("transformer", "student LoRA", "frozen adapters", "activations", "rollout buffers")
    terms = [t for t in memory["terms"] if t["what"].startswith(held)]
    return {
        "terms": {t["what"]: t["gib"] for t in terms},
        "bench_terms_GiB": round(sum(t["gib"] for t in terms), 2),
        "full_estimate_GiB": memory["total_gib"],
    }


# ----------------------------------------------------------------------------- one model


def run_model(name: str, args: argparse.Namespace, bench, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Build one model, run the warm-up and measured rounds of the four phases, count FLOPs; the model's figures."""
    from diffusers.training_utils import EMAModel

    from flowopd.rollout import plan_steps, rollout

    spec = model_specs()[name]
    full = args.size == "full"
    config = dict(spec["full"] if full else bench.SMALL if name == "sd35m" else SMALL[name])
    resolution = args.resolution or (512 if full else 128)
    batch = args.batch or (spec["batch"] if full else 4)
    micro = args.micro_batch or (spec["micro_batch"] if full else 2)
    text = spec["text"] if full else spec["small_text"]
    meter = bench.Meter(device)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    bb = build_backbone(name, spec, config, device, dtype, resolution)
    if full:
        bb.transformer.enable_gradient_checkpointing()
    teachers, anchor = [f"teacher{j}" for j in range(3)], "anchor"
    params = add_adapters(bb.transformer, teachers, anchor, 32, 64.0)
    optimizer = torch.optim.AdamW(params, lr=3e-4, weight_decay=1e-4)
    ema = EMAModel(params, decay=0.9)
    build_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(args.seed)
    cond, uncond = random_embeds(batch, text, device, gen), random_embeds(batch, text, device, gen)
    ds = bb.default_sampling  # the model's protocol schedule (FLUX / Qwen-Image: their pipelines' spacing and terminal)
    plan = plan_steps(
        spec["steps"], ds["shift"], timestep_fraction=0.99, spacing=ds.get("spacing", "sd3"), shift_terminal=ds.get("shift_terminal")
    )
    ks, seeds = list(range(len(plan.trained))), list(range(batch))
    hp = argparse.Namespace(
        micro_batch=micro, cfg=spec["cfg"], noise_level=spec["noise_level"], clip_range=1e-4, beta=0.04, opd_objective="kl", mar_lambda=0.02
    )

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if dtype == torch.bfloat16 else contextlib.nullcontext()

    rec: dict[str, list[dict]] = {"rollout": [], "grpo_update": [], "opd_signal": [], "opd_update": []}
    for round_ in range(args.warmup + args.repeats):
        timed, r = round_ >= args.warmup, {p: {} for p in rec}
        use_ks = ks if timed else ks[:1]
        with meter.phase(r["rollout"]), autocast():
            traj = rollout(bb, cond, uncond, seeds, plan, hp.cfg, hp.noise_level, "sde", micro)
        with meter.phase(r["grpo_update"]), autocast():
            r["grpo_update"].update(bench.grpo_update(bb, params, optimizer, ema, traj, plan, cond, uncond, hp, use_ks))
        with meter.phase(r["opd_signal"]), autocast():
            v_t, v_a, adv, _ = bench.opd_signal(bb, traj, plan, cond, uncond, hp, teachers, anchor, use_ks)
        with meter.phase(r["opd_update"]), autocast():
            r["opd_update"].update(bench.opd_update(bb, params, optimizer, ema, traj, plan, cond, uncond, hp, use_ks, v_t, v_a, adv))
        if timed:
            for p in rec:
                rec[p].append(r[p])
        del traj, v_t, v_a, adv
    x = torch.randn(1, *bb.latent_shape, generator=gen).to(device)
    flops = count_flops(bb, x, plan.sigmas[0].to(device), cond[:1], autocast)
    figures = _figures(name, spec, bb, rec, flops, batch, micro, len(ks), bench, device, dtype, args)
    figures.update(build_seconds=build_s, resolution=resolution, text_tokens=text[0], full_size=full)
    if full:
        figures["memory_plan"] = planned_memory(spec, batch, micro, 32)
        figures["memory_plan"]["measured_peak_GiB"] = max(p["peak_memory_GiB"] for p in figures["phases"].values())
    del bb, params, optimizer, ema
    return figures


def _figures(name, spec, bb, rec, flops, n, micro, k, bench, device, dtype, args) -> dict[str, Any]:
    """Per phase: median seconds, samples/s, TFLOP (the per-sample counts x samples x CFG rows x steps), TFLOP/s, MFU, peak memory."""
    rows = 2 if spec["cfg"] != 1.0 else 1
    f, fr, fb = flops["forward"], flops["forward_reference"], flops["backward"]
    total = {
        "rollout": spec["steps"] * rows * n * f,
        "grpo_update": k * rows * n * (fr + f + fb),
        "opd_signal": k * rows * n * 2 * f,  # the routed teachers cover each sample once, the anchor once more
        "opd_update": k * rows * n * (f + fb),
    }
    device_name = bench.device_name(device)
    peak = args.peak_tflops or (bench.peak_tflops(device_name, dtype) if device.type == "cuda" else None)
    phases = {}
    for p, records in rec.items():
        s = statistics.median(r["seconds"] for r in records)
        tflops = total[p] / s / 1e12
        phases[p] = {
            "seconds": s,
            "samples_per_s": n / s,
            "tflop": total[p] / 1e12,
            "tflops_per_s": tflops,
            "mfu": tflops / peak if peak else None,
            "peak_memory_GiB": max(r["peak_memory_GiB"] for r in records),
        }
    losses = [r["loss"] for r in rec["grpo_update"] + rec["opd_update"]]
    return {
        "model": spec["arch"].name if args.size == "full" else f"{spec['arch'].name} (small config)",
        "params_M": sum(p.numel() for n_, p in bb.transformer.named_parameters() if ".lora_" not in n_) / 1e6,
        "batch": n,
        "micro_batch": micro,
        "cfg_rows": rows,
        "sampling_steps": spec["steps"],
        "trained_steps": k,
        "latent_shape": list(bb.latent_shape),
        "flops_per_sample_T": {key: v / 1e12 for key, v in flops.items()},
        "peak_tflops": peak,
        "phases": phases,
        "losses_finite": bool(torch.isfinite(torch.tensor(losses)).all()),
    }


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("full", "small"), default="full", help="full: the real architectures (a GPU); small: CPU")
    parser.add_argument("--models", nargs="+", choices=("sd35m", "flux", "qwen-image"), default=["sd35m", "flux", "qwen-image"])
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when there is one)")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default: 512 full, 128 small)")
    parser.add_argument("--batch", type=int, default=None, help="samples per rollout (default: per model, as its recipe allows)")
    parser.add_argument("--micro-batch", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (one trained step) before measuring")
    parser.add_argument("--repeats", type=int, default=1, help="measured rounds (times are medians)")
    parser.add_argument("--budget-s", type=float, default=TIME_BUDGET_S, help="skip the models left once this much time has passed")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak (default: by device name)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_out", default="gpu_check.json", help="where the figures go")
    args = parser.parse_args(argv)
    if args.batch is not None and args.batch < 2:
        parser.error("--batch must be at least 2 (GRPO's group advantages need two samples)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = _bench_module()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out: dict[str, Any] = {"size": args.size, "torch": torch.__version__, "device": bench.device_name(device), "models": {}, "skipped": {}}
    if args.size == "full" and device.type != "cuda":
        out["skipped"] = {"all": "no CUDA device: the full-size check needs a GPU (run --size small on a CPU)"}
        print(f"skipped: {out['skipped']['all']}")
        _write(args.json_out, out)
        return out
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    for name in args.models:
        if time.perf_counter() - t0 > args.budget_s:
            out["skipped"][name] = f"time budget of {args.budget_s:.0f} s spent"
            print(f"{name}: skipped ({out['skipped'][name]})")
            continue
        try:
            out["models"][name] = run_model(name, args, bench, device, dtype)
            print_model(out["models"][name])
        except torch.cuda.OutOfMemoryError as exc:  # a figure, not a crash: the other models still run
            out["skipped"][name] = f"out of memory: {str(exc).splitlines()[0]}"
            print(f"{name}: {out['skipped'][name]}")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        _write(args.json_out, out)  # after every model: a run cut short keeps what it measured
    out["total_seconds"] = time.perf_counter() - t0
    _write(args.json_out, out)
    print(f"total {out['total_seconds']:.0f} s; figures in {args.json_out}")
    return out


def _write(path: str, out: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2) + "\n")


def print_model(f: dict[str, Any]) -> None:
    print(
        f"\n{f['model']}: {f['params_M']:.0f}M params, {f['resolution']} px (latents {'x'.join(map(str, f['latent_shape']))}), "
        f"{f['text_tokens']} text tokens, batch {f['batch']} (micro {f['micro_batch']}, {f['cfg_rows']} CFG rows), "
        f"{f['sampling_steps']} steps / {f['trained_steps']} trained; built in {f['build_seconds']:.1f} s"
    )
    print(f"{'phase':<14}{'seconds':>9}{'samples/s':>11}{'TFLOP':>10}{'TFLOP/s':>10}{'MFU':>8}{'peak GiB':>10}")
    for key, p in f["phases"].items():
        mfu = "-" if p["mfu"] is None else f"{p['mfu']:.1%}"
        print(
            f"{key:<14}{p['seconds']:>9.2f}{p['samples_per_s']:>11.2f}{p['tflop']:>10.3g}{p['tflops_per_s']:>10.3g}{mfu:>8}{p['peak_memory_GiB']:>10.2f}"
        )
    plan = f.get("memory_plan")
    if plan:
        print(
            f"memory: measured peak {plan['measured_peak_GiB']:.1f} GiB against the plan's {plan['bench_terms_GiB']:.1f} GiB for the same terms"
        )
    if not f["losses_finite"]:
        print("note: a loss was not finite (random weights); the timings stand")


if __name__ == "__main__":
    main()
