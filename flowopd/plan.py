"""The resolved plan of a training run, without loading a model: ``flowopd train ... --dry-run``.

:func:`train_plan` returns a JSON-ready dict: the process count and where it
came from, the batch arithmetic per GPU, the sampler, the LoRA, the learning
signal (rewards, or teachers and routing for OPD), the trainer's own checks
(:func:`flowopd.plan_checks.check_arithmetic` decides; :func:`flowopd.plan_checks.check_inputs`
is reported, never raised) and a per-GPU memory estimate. :func:`format_plan`
turns it into the text the CLI prints.

The memory estimate for an SD3 base uses SD3.5-Medium's sizes (below); it is an
estimate, and the formula is part of the output so it can be checked.
"""

from __future__ import annotations

import math
import os
from typing import Any

from flowopd.train_config import TrainConfig

GIB = 1024**3

# SD3.5-Medium (stabilityai/stable-diffusion-3.5-medium), parameter counts. The transformer (MMDiT-X, 24 joint blocks of
# width 1536, dual attention in blocks 0-12) has 2.243B parameters plus a 226M-element position-embedding table stored
# with them (384 x 384 positions x 1536): 2.47B numbers held in bf16. tests/test_sd35m_recipes.py checks these against
# diffusers' SD3Transformer2DModel built on the meta device.
# the public transformer/config.json of stabilityai/stable-diffusion-3.5-medium: builds the architecture without a download
SD35M_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    pos_embed_max_size=384,
    qk_norm="rms_norm",
    dual_attention_layers=tuple(range(13)),
)
SD35M_TRANSFORMER = 2_469_663_936
SD35M_TEXT_ENCODERS = {"CLIP-L": 123_650_304, "CLIP-G": 694_659_840, "T5-XXL": 4_762_310_656}
SD35M_VAE = 83_653_863
SD35M_LAYERS, SD35M_DUAL_LAYERS, SD35M_WIDTH = 24, 13, 1536
# the attention projections of SD3.5-M's blocks (all 1536 -> 1536): the joint attention of every block (the last block
# has no text output projection) and the image-only second attention of the dual-attention blocks
SD35M_ATTENTION = [
    f"transformer_blocks.{i}.attn.{m}"
    for i in range(SD35M_LAYERS)
    for m in (
        "to_q",
        "to_k",
        "to_v",
        "to_out.0",
        "add_q_proj",
        "add_k_proj",
        "add_v_proj",
        *(("to_add_out",) if i < SD35M_LAYERS - 1 else ()),
    )
] + [f"transformer_blocks.{i}.attn2.{m}" for i in range(SD35M_DUAL_LAYERS) for m in ("to_q", "to_k", "to_v", "to_out.0")]
SD3_TEXT_TOKENS = 77 + 256  # CLIP (77) + T5 (256) tokens per prompt, concatenated
SD3_LATENT_CHANNELS, SD3_VAE_FACTOR, SD3_PATCH = 16, 8, 2
SD3_PROMPT_EMBED_BYTES = SD3_TEXT_TOKENS * 4096 * 2 + 2048 * 2  # one prompt's states + pooled vector, bf16

# reward models a GRPO run may hold on each GPU: (parameters, bytes per parameter, what) as the reward classes load them
REWARD_SIZES: dict[str, tuple[int, int, str]] = {
    "pickscore_v1": (986_000_000, 4, "CLIP ViT-H/14, fp32"),
    "deqa": (8_200_000_000, 2, "mPLUG-Owl2 (LLaMA-2-7B + ViT-L), fp16"),
    "geneval": (500_000_000, 4, "Mask2Former Swin-S + CLIP ViT-L/14, fp32"),
    "ocr": (0, 0, "PP-OCR in onnxruntime, on the CPU"),
    "hpsv2.1": (986_000_000, 4, "CLIP ViT-H/14, fp32"),
    "hpsv2": (986_000_000, 4, "CLIP ViT-H/14, fp32"),
    "clipscore": (428_000_000, 4, "CLIP ViT-L/14, fp32"),
    "aesthetic_laion_v2": (428_000_000, 4, "CLIP ViT-L/14 + MLP, fp32"),
    "imagereward_v1": (450_000_000, 4, "BLIP ViT-L + MLP, fp32"),
}

# activations of one sequence through one joint block, in bytes per token per width unit (bf16): 34 s h is the
# Korthikanti et al. (2022) count for a transformer layer with memory-efficient attention (no s^2 term); the
# dual-attention blocks add ~12 s_img h for their second attention's q, k, v, output and norms
ACT_PER_LAYER, ACT_PER_DUAL = 34, 12
# the VAE decoder at 512 px holds a few 128-channel full-resolution maps at once (no grad): ~0.3 GiB per image
VAE_DECODE_BYTES_PER_PIXEL = 0.3 * GIB / (512 * 512)
OVERHEAD_GIB = 2.0  # CUDA context, cuBLAS workspaces, allocator slack


def sd35m_lora_per_rank(targets: list[str] | tuple[str, ...]) -> tuple[int, int]:
    """(LoRA parameters per unit of rank, adapted modules) on SD3.5-M for ``lora.targets`` (peft's rule: a name or a
    dot-separated suffix of one); targets outside the attention projections are not counted."""
    hit = [n for n in SD35M_ATTENTION if any(n == t or n.endswith("." + t) for t in targets)]
    return len(hit) * 2 * SD35M_WIDTH, len(hit)


def resolve_processes(processes: int | None = None) -> tuple[int, str]:
    """``--processes``, else ``$WORLD_SIZE`` (set by ``accelerate launch`` / torchrun), else 1; with where it came from."""
    if processes is not None:
        return int(processes), "--processes"
    env = os.environ.get("WORLD_SIZE")
    if env and env.strip().isdigit() and int(env) > 0:
        return int(env), "$WORLD_SIZE"
    return 1, "default: no --processes, no $WORLD_SIZE"


def train_plan(cfg: TrainConfig, processes: int | None = None, command: str = "train", recipe: str | None = None) -> dict[str, Any]:
    """Everything ``flowopd train`` would do with ``cfg`` on ``processes`` processes, checked; loads no model."""
    from flowopd.errors import FlowOPDError
    from flowopd.models import is_sd3
    from flowopd.plan_checks import check_arithmetic

    n, source = resolve_processes(processes)
    if command == "coldstart":  # `flowopd train coldstart` runs in one process
        n, source = 1, "`flowopd train coldstart` runs in one process"
    b, g = cfg.batch_size, cfg.group_size
    u = cfg.updates_per_rollout
    per_gpu = b // n if b % n == 0 else None
    per_update = per_gpu // u if per_gpu is not None and per_gpu % u == 0 else None
    plan: dict[str, Any] = {
        "name": cfg.name,
        "command": command,
        "recipe": recipe,
        "model": cfg.model,
        "backbone": "sd3" if is_sd3(cfg.model) else "mini",
        "processes": n,
        "processes_from": source,
        "batch_size": b,
        "group_size": g,
        "prompts_per_step": b // g if b % g == 0 else None,
        "batch_per_gpu": per_gpu,
        "updates_per_rollout": u,
        "samples_per_update_per_gpu": per_update,
        "micro_batch": cfg.micro_batch,
        "micro_batches_per_update": math.ceil(per_update / cfg.micro_batch) if per_update else None,
        "processes_per_group": min(g, n),
        "steps": cfg.steps,
        "samples_total": cfg.steps * b,
        "sampler": _sampler(cfg),
        "lora": _lora(cfg, command),
        "tasks": {t: {"weight": w, "prompts": cfg.prompts.get(t, "mini world generator")} for t, w in cfg.tasks.items() if w > 0},
        "task_sampling": cfg.task_sampling,
        "mixed_precision": cfg.mixed_precision,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "resolution": cfg.resolution,
    }
    if cfg.opd is None:
        plan["grpo"] = {
            "rewards": cfg.rewards,
            "task_rewards": cfg.task_rewards,
            "beta": cfg.grpo.beta,
            "kl_weighting": cfg.grpo.kl_weighting,
            "clip_range": cfg.grpo.clip_range,
            "adv_std": cfg.grpo.adv_std,
        }
    else:
        opd = cfg.opd
        plan["opd"] = {
            "objective": opd.objective,
            "routing": opd.routing,
            "teachers": [{"name": t.name, "tasks": t.tasks, "reward": t.reward, "checkpoint": t.checkpoint} for t in opd.teachers],
            "anchor": opd.anchor,
            "mar_lambda": opd.mar_lambda,
            "kl_weighting": opd.kl_weighting,
            "beta": opd.beta,
            "cold_start": {
                "method": opd.cold_start.method,
                "merge": opd.cold_start.merge,
                "from_lora": opd.cold_start.from_lora,
                **({"sft": opd.cold_start.sft.model_dump()} if opd.cold_start.method == "sft" else {}),
            },
        }
    try:
        check_arithmetic(cfg, n)
        plan["arithmetic"] = {"ok": True, "error": None}
    except FlowOPDError as exc:
        plan["arithmetic"] = {"ok": False, "error": _line(exc)}
    plan["inputs"] = _inputs(cfg)
    plan["memory"] = memory_estimate(cfg, plan)
    return plan


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sampler(cfg: TrainConfig) -> dict[str, Any]:
    from flowopd.errors import FlowOPDError
    from flowopd.rollout import plan_steps

    s = cfg.sampler
    try:
        trained = len(plan_steps(s.steps, s.shift, s.window_size, 0, s.timestep_fraction).trained)
    except FlowOPDError:
        trained = None  # the arithmetic check reports the bad window
    window = "every step" if s.window_size == 0 else f"{s.window_size} consecutive steps starting in [0, {s.window_start_max}]"
    return {
        "steps": s.steps,
        "kind": s.kind,
        "noise_level": s.noise_level,
        "cfg": s.cfg,
        "shift": s.shift,
        "sde_window": window,
        "timestep_fraction": s.timestep_fraction,
        "trained_steps": trained,
        "same_latent": s.same_latent,
    }


def _lora(cfg: TrainConfig, command: str) -> dict[str, Any]:
    """The student's LoRA: ``lora.rank``, except after a cat merge (the rank sum) or an svd merge (``svd_rank``)."""
    r = cfg.lora.rank
    rank, note = r, "lora.rank"
    if cfg.opd is not None:
        cs, k = cfg.opd.cold_start, len(cfg.opd.teachers)
        if cs.method == "merge" and cs.merge == "cat":
            rank, note = k * r, f"a cat merge of {k} teachers of rank {r}: the rank sum"
        elif cs.method == "merge" and cs.merge == "svd":
            rank, note = cs.svd_rank or r, "an svd merge: opd.cold_start.svd_rank, else the teachers' rank"
        elif cs.method == "merge":
            note = f"a {cs.merge} merge: the teachers' rank, assumed {r}"
        elif cs.method == "sft":
            note = "an SFT cold start: a fresh LoRA of lora.rank"
        if cs.from_lora and command != "coldstart":
            note = f"{cs.from_lora}, assumed {note}"
    return {"rank": r, "alpha": cfg.lora.alpha, "targets": list(cfg.lora.targets), "student_rank": rank, "student_rank_from": note}


def _inputs(cfg: TrainConfig) -> dict[str, Any]:
    """What the run reads, each present or missing (cheap checks, no download), and check_inputs' own verdict."""
    from flowopd.plan_checks import check_inputs

    items: list[dict[str, Any]] = [_model_item(cfg.model)]
    for task, w in cfg.tasks.items():
        if w > 0 and task in cfg.prompts:
            items.append(_prompt_item(task, cfg.prompts[task]))
    if cfg.opd is None:
        names = sorted(set(cfg.rewards) | {n for ws in cfg.task_rewards.values() for n in ws})
        items += [_reward_item(n) for n in names]
    else:
        for spec in cfg.opd.teachers:
            items.append(_folder_item("teacher", spec.name, spec.lora_folder))
        if cfg.opd.anchor is not None:
            from flowopd.objectives.opd import anchor_folder

            items.append(_folder_item("anchor", cfg.opd.anchor, lambda: anchor_folder(cfg)))
        if cfg.opd.cold_start.from_lora:
            from flowopd.lora import LORA_FILE

            path = cfg.opd.cold_start.from_lora
            ok = os.path.isfile(os.path.join(path, LORA_FILE))
            items.append({"kind": "cold start", "name": path, "ok": ok, "detail": "" if ok else "make it with `flowopd train coldstart`"})
    try:
        check_inputs(cfg)
        error = None
    except Exception as exc:  # a dry run reports what a real run would refuse; it never fails on it
        error = _line(exc)
    return {"ok": error is None and all(i["ok"] for i in items), "error": error, "items": items}


def _model_item(spec: str) -> dict[str, Any]:
    from pathlib import Path

    from flowopd.models import KNOWN_WEIGHTS, SD3_PREFIX, is_sd3

    item = {"kind": "model", "name": spec, "ok": False, "detail": ""}
    if is_sd3(spec):
        source = spec.removeprefix(SD3_PREFIX)
        if (Path(source).expanduser() / "model_index.json").is_file():
            item.update(ok=True, detail="diffusers folder")
            return item
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "model_index.json")
        except Exception:  # not a hub id, or no huggingface_hub: not in the cache either way
            cached = None
        if isinstance(cached, str):
            item.update(ok=True, detail="in the Hugging Face cache (model_index.json found)")
        else:
            item["detail"] = (
                "not in the Hugging Face cache: accept its licence on the hub, `huggingface-cli login`, and it downloads on first use"
            )
        return item
    if spec in KNOWN_WEIGHTS:
        ws = KNOWN_WEIGHTS[spec]
        item.update(ok=ws.present, detail="shipped" if ws.present else ws.how_to_get)
    else:
        ok = Path(spec).is_dir()
        item.update(ok=ok, detail="folder" if ok else "no such folder")
    return item


def _prompt_item(task: str, spec: str) -> dict[str, Any]:
    from pathlib import Path

    from flowopd.benchmarks.prompt_sets import PROMPT_SETS

    item = {"kind": "prompts", "name": f"{task}: {spec}", "ok": False, "detail": ""}
    if spec in PROMPT_SETS:
        ps = PROMPT_SETS[spec]
        ok = ps.present()
        item.update(ok=ok, detail=str(ps.path()) if ok else f"`flowopd prompts download {spec}`, or set ${ps.env_var}")
    else:
        ok = Path(spec).is_file()
        item.update(ok=ok, detail="file" if ok else "no such file")
    return item


def _reward_item(name: str) -> dict[str, Any]:
    from flowopd.reward_models.registry import get_reward_class

    try:
        ok, why = get_reward_class(name).weights_status()
    except Exception as exc:
        ok, why = False, _line(exc)
    return {"kind": "reward", "name": name, "ok": ok, "detail": why or "weights present"}


def _folder_item(kind: str, name: str, folder) -> dict[str, Any]:
    try:
        return {"kind": kind, "name": name, "ok": True, "detail": str(folder())}
    except Exception as exc:
        return {"kind": kind, "name": name, "ok": False, "detail": _line(exc)}


# ----------------------------------------------------------------------------- memory


def _per_row_activations(px: int, checkpointing: bool) -> tuple[float, str]:
    """Bytes of activations one sequence (one CFG row) keeps for the backward through the SD3.5-M transformer (an estimate)."""
    img_tokens = (px // SD3_VAE_FACTOR // SD3_PATCH) ** 2
    s, h = img_tokens + SD3_TEXT_TOKENS, SD35M_WIDTH
    if checkpointing:
        nbytes = SD35M_LAYERS * 2 * s * h + ACT_PER_LAYER * s * h + ACT_PER_DUAL * img_tokens * h
        how = f"{SD35M_LAYERS} x 2 s h B (block inputs) + one block recomputed (34 s h + 12 s_img h)"
    else:
        nbytes = SD35M_LAYERS * ACT_PER_LAYER * s * h + SD35M_DUAL_LAYERS * ACT_PER_DUAL * img_tokens * h
        how = f"{SD35M_LAYERS} x 34 s h + {SD35M_DUAL_LAYERS} x 12 s_img h B"
    return nbytes, f"per row {nbytes / GIB:.2f} GiB = {how}, s = {img_tokens} image + {SD3_TEXT_TOKENS} text tokens, h = {h}"


def memory_estimate(cfg: TrainConfig, plan: dict[str, Any]) -> dict[str, Any]:
    """Per-GPU memory of the run, term by term, with each term's formula (an estimate; SD3.5-M sizes for any SD3 base).

    The terms of one phase (``update``: the backward's activations; ``rollout``: the VAE decode) never coexist, so
    the total holds the larger phase on top of everything else.
    """
    if plan["backbone"] != "sd3":
        return {
            "estimate": True,
            "negligible": True,
            "total_gib": None,
            "terms": [],
            "note": "mini model: ~4M parameters at 32x32 px; weights, LoRA and activations take a few hundred MB at most (negligible)",
        }
    px = cfg.resolution or 1024  # SD3.5-M's native size when unset
    lat = px // SD3_VAE_FACTOR
    cfg_rows = 2 if cfg.sampler.cfg != 1.0 else 1  # CFG: one forward on [uncond; cond]
    coldstart = plan["command"] == "coldstart"
    terms: list[dict[str, Any]] = []

    def add(what: str, nbytes: float, formula: str, phase: str | None = None) -> None:
        terms.append({"what": what, "gib": round(nbytes / GIB, 2), "formula": formula, "phase": phase})

    add("transformer (bf16)", SD35M_TRANSFORMER * 2, "2.47e9 numbers (2.24e9 parameters + 2.26e8 position table) x 2 B")
    add(
        "text encoders (bf16)",
        sum(SD35M_TEXT_ENCODERS.values()) * 2,
        "(CLIP-L 123M + CLIP-G 695M + T5-XXL 4.76B) x 2 B; held on the GPU unless offloaded (T5 alone is 8.9 GiB)",
    )
    add("VAE (bf16)", SD35M_VAE * 2, "84M x 2 B")
    per_rank, n_modules = sd35m_lora_per_rank(cfg.lora.targets)
    q = per_rank * cfg.lora.rank
    if cfg.opd is not None:
        names = {t.name for t in cfg.opd.teachers}
        anchor = 1 if cfg.opd.anchor is not None and cfg.opd.anchor not in names and not coldstart else 0
        frozen = len(names) + anchor
        what = f"{len(names)} teachers + the anchor" if anchor else f"{len(names)} teachers"
        add(f"frozen adapters ({what}, fp32)", frozen * q * 4, f"{frozen} x {q / 1e6:.1f}M params (r{cfg.lora.rank}) x 4 B")
    rank = plan["lora"]["student_rank"]
    p = per_rank * rank
    if coldstart and cfg.opd.cold_start.method == "merge":
        add(f"merged LoRA r{rank} (fp32)", p * 4, f"{p / 1e6:.1f}M params x 4 B")
        add("overhead", OVERHEAD_GIB * GIB, "CUDA context, workspaces, allocator slack (a guess)")
    elif coldstart:  # SFT: teacher images, then flow matching on a fresh LoRA (no CFG in the loss, no EMA)
        sft = cfg.opd.cold_start.sft
        n_img = sft.prompts_per_teacher * sft.images_per_prompt * len(cfg.opd.teachers)
        add(
            f"student LoRA r{rank} + AdamW (fp32)",
            p * 16,
            f"{p / 1e6:.1f}M params ({n_modules} projections x r{rank} x (1536 + 1536)) x (4 weights + 4 grads + 8 Adam moments) B",
        )
        add("teacher images (fp32)", n_img * 3 * px * px * 4, f"up to {n_img} images x 3 x {px} x {px} x 4 B")
        per_row, how = _per_row_activations(px, False)
        add(
            f"activations, batch {sft.batch_size} (no gradient checkpointing assumed: an upper bound)",
            sft.batch_size * per_row,
            f"{how} (estimate)",
            phase="update",
        )
        add(
            "VAE decode peak (no grad, while the teachers draw)",
            sft.batch_size * px * px * VAE_DECODE_BYTES_PER_PIXEL,
            f"{sft.batch_size} images x ~0.3 GiB per 512x512 image (estimate)",
            phase="rollout",
        )
        add("overhead", OVERHEAD_GIB * GIB, "CUDA context, workspaces, allocator slack (a guess)")
    else:
        add(
            f"student LoRA r{rank} + AdamW + EMA (fp32)",
            p * 20,
            f"{p / 1e6:.1f}M params ({n_modules} projections x r{rank} x (1536 + 1536)) x (4 weights + 4 grads + 8 Adam moments + 4 EMA) B",
        )
        if cfg.opd is None:
            names_ = set(cfg.rewards) | {n for ws in cfg.task_rewards.values() for n in ws}
            known = {n: REWARD_SIZES[n] for n in sorted(names_) if n in REWARD_SIZES}
            if known:
                add(
                    "reward models, if held on the GPU",
                    sum(n_ * b_ for n_, b_, _ in known.values()),
                    "; ".join(f"{n} {v[0] / 1e9:.2f}B x {v[1]} B ({v[2]})" for n, v in known.items()),
                )
        per_row, how = _per_row_activations(px, cfg.gradient_checkpointing)
        micro = cfg.micro_batch
        add(
            f"activations, micro-batch {micro} x {cfg_rows} rows (gradient checkpointing {'on' if cfg.gradient_checkpointing else 'off'})",
            micro * cfg_rows * per_row,
            f"{how} (estimate)",
            phase="update",
        )
        local = plan["batch_per_gpu"] or math.ceil(cfg.batch_size / plan["processes"])
        k = plan["sampler"]["trained_steps"] or cfg.sampler.steps
        lat_bytes = SD3_LATENT_CHANNELS * lat * lat * 4
        add(
            "rollout buffers",
            local * (3 * k * lat_bytes + 3 * px * px * 4 + cfg_rows * SD3_PROMPT_EMBED_BYTES),
            f"{local} samples x ({k} trained steps x 3 latents fp32 + the fp32 image + {cfg_rows} prompt embeddings bf16)",
        )
        add(
            "VAE decode peak (no grad, during the rollout)",
            micro * px * px * VAE_DECODE_BYTES_PER_PIXEL,
            f"{micro} images x ~0.3 GiB per 512x512 image (estimate)",
            phase="rollout",
        )
        add("overhead", OVERHEAD_GIB * GIB, "CUDA context, workspaces, allocator slack (a guess)")
    steady = sum(t["gib"] for t in terms if t["phase"] is None)
    total = steady + max([0.0] + [sum(t["gib"] for t in terms if t["phase"] == ph) for ph in ("update", "rollout")])
    return {
        "estimate": True,
        "negligible": False,
        "sizes_of": "SD3.5-Medium",
        "total_gib": round(total, 1),
        "terms": terms,
        "note": "an estimate: the sum of the terms, counting only the larger of the update's activations and the rollout's VAE "
        "decode (they never coexist); check it with torch.cuda.max_memory_allocated() after a first step",
    }


# ----------------------------------------------------------------------------- text


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as aligned ``key  value`` lines (what ``flowopd train ... --dry-run`` prints)."""
    lines: list[str] = []

    def row(key: str, value: Any) -> None:
        lines.append(f"  {key:<22} {value}")

    head = f"plan: {plan['name']}  (flowopd train {plan['command']}"
    head += f", --config {plan['recipe']})" if plan.get("recipe") else ")"
    lines.append(head)
    extra = []
    if plan["resolution"]:
        extra.append(f"{plan['resolution']} px")
    extra.append(f"mixed precision {plan['mixed_precision']}")
    extra.append(f"gradient checkpointing {'on' if plan['gradient_checkpointing'] else 'off'}")
    row("model", f"{plan['model']}  ({', '.join(extra)})")
    n = plan["processes"]
    row("processes", f"{n}  ({plan['processes_from']})")
    if plan["command"] == "coldstart":
        _format_coldstart(plan, row)
    else:
        _format_run(plan, row)
    ar = plan["arithmetic"]
    row("arithmetic", f"ok for {n} process(es)" if ar["ok"] else f"FAILED: {ar['error']}")
    inp = plan["inputs"]
    missing = [i for i in inp["items"] if not i["ok"]]
    row(
        "inputs",
        "ok" if inp["ok"] else f"missing {len(missing)} of {len(inp['items'])} (a dry run reports them; a real run stops at the first)",
    )
    for i in inp["items"]:
        row("", f"{'ok' if i['ok'] else 'missing':<8} {i['kind']} {i['name']}" + (f"  ({i['detail']})" if i["detail"] else ""))
    if inp["error"]:
        row("", f"check_inputs: {inp['error']}")
    mem = plan["memory"]
    if mem["negligible"] or mem["total_gib"] is None:
        row("memory per GPU", mem["note"])
    else:
        row("memory per GPU", f"~{mem['total_gib']} GiB (an estimate, {mem['sizes_of']} sizes)")
        for t in mem["terms"]:
            row("", f"{t['gib']:>6.2f} GiB  {t['what']}: {t['formula']}")
        row("", mem["note"])
    return "\n".join(lines)


def _lora_row(plan: dict[str, Any], row) -> None:
    lo = plan["lora"]
    lora = f"r {lo['rank']} / alpha {lo['alpha']:g} on {len(lo['targets'])} projection names"
    if lo["student_rank"] != lo["rank"] or plan.get("opd"):
        lora += f"; student rank {lo['student_rank']} ({lo['student_rank_from']})"
    row("LoRA", lora)
    row("tasks", ", ".join(f"{t} {v['weight']:g} <- {v['prompts']}" for t, v in plan["tasks"].items()) + f"  ({plan['task_sampling']})")


def _teacher_rows(plan: dict[str, Any], row) -> None:
    for i, t in enumerate(plan["opd"]["teachers"]):
        row("teachers" if i == 0 else "", f"{t['name']}: {', '.join(t['tasks'])} -> {t['checkpoint']}  ({t['reward']})")


def _format_coldstart(plan: dict[str, Any], row) -> None:
    cs = plan["opd"]["cold_start"]
    if cs["method"] == "merge":
        row("cold start", f"merge ({cs['merge']}) of the teachers' LoRAs, on the GPU when there is one")
    else:
        sft = cs["sft"]
        row(
            "cold start",
            f"sft: each teacher draws {sft['prompts_per_teacher']} prompts x {sft['images_per_prompt']} images "
            f"({sft['sample_steps']} ODE steps, CFG {sft['sample_cfg']:g}); then {sft['steps']} flow-matching steps of "
            f"{sft['batch_size']} at lr {sft['lr']:g}",
        )
    _teacher_rows(plan, row)
    _lora_row(plan, row)


def _format_run(plan: dict[str, Any], row) -> None:
    n = plan["processes"]
    b, g = plan["batch_size"], plan["group_size"]
    prompts = plan["prompts_per_step"]
    row("batch per step", f"{b} samples over all processes = {prompts if prompts is not None else f'{b}/{g} (not whole)'} prompts x {g}")
    row("prompts (groups)/step", prompts if prompts is not None else f"none: group_size {g} does not divide batch_size {b}")
    row("group size", f"{g}  (a group spans {plan['processes_per_group']} process(es); advantages use the gathered batch)")
    per = plan["batch_per_gpu"]
    row("batch per GPU", per if per is not None else f"{b}/{n}: not a whole number")
    u, pu = plan["updates_per_rollout"], plan["samples_per_update_per_gpu"]
    row("updates per rollout", f"{u}  ({pu if pu is not None else '?'} samples per GPU per update)")
    mb = plan["micro_batches_per_update"]
    row("micro-batch", f"{plan['micro_batch']}  ({mb if mb is not None else '?'} forward/backward per trained step per update)")
    row("steps", f"{plan['steps']}  ({plan['samples_total']:,} samples)")
    sm = plan["sampler"]
    row(
        "sampler",
        f"{sm['steps']} steps, {sm['kind']} a={sm['noise_level']}, CFG {sm['cfg']}, shift {sm['shift']}; SDE on {sm['sde_window']}, "
        f"{sm['trained_steps']} trained per rollout (timestep_fraction {sm['timestep_fraction']})",
    )
    _lora_row(plan, row)
    if "grpo" in plan:
        gr = plan["grpo"]
        rewards = ", ".join(f"{k} {v:g}" for k, v in gr["rewards"].items())
        if gr["task_rewards"]:
            rewards = "; ".join(f"{t}: " + ", ".join(f"{k} {v:g}" for k, v in w.items()) for t, w in gr["task_rewards"].items())
        row("rewards", rewards)
        row("GRPO", f"beta {gr['beta']:g} ({gr['kl_weighting']} KL), clip {gr['clip_range']:g}, advantage std {gr['adv_std']}")
    else:
        op = plan["opd"]
        _teacher_rows(plan, row)
        row("routing", f"{op['routing']}" + (": each sample to its task's teacher" if op["routing"] == "sample" else ": one task per step"))
        row(
            "MAR",
            f"lambda {op['mar_lambda']:g}, anchor {op['anchor'] or 'the base model'}" if op["mar_lambda"] > 0 else "off (mar_lambda 0)",
        )
        row("objective", f"{op['objective']} ({op['kl_weighting']} KL), beta {op['beta']:g}")
        cs = op["cold_start"]
        cold = f"{cs['method']}" + (f" ({cs['merge']})" if cs["method"] == "merge" else "")
        if cs["from_lora"]:
            cold += f", from {cs['from_lora']}"
        if "sft" in cs:
            sft = cs["sft"]
            cold += f"; sft: {sft['prompts_per_teacher']} prompts x {sft['images_per_prompt']} images per teacher, {sft['steps']} steps of {sft['batch_size']}"
        row("cold start", cold)


def fitting_process_counts(cfg: TrainConfig, limit: int = 64) -> list[int]:
    """Process counts up to ``limit`` on which the batch arithmetic works (batch split, equal update parts)."""
    b, u = cfg.batch_size, cfg.updates_per_rollout
    return [n for n in range(1, limit + 1) if b % n == 0 and (b // n) % u == 0]


def dry_run(
    cfg: TrainConfig, command: str, recipe: str | None = None, processes: int | None = None, fmt: str = "table"
) -> tuple[str, str | None]:
    """``flowopd train ... --dry-run``: (the plan as text or JSON, the one-line error that makes the command fail, or None).

    Only the arithmetic fails a dry run; missing inputs (weights, prompts, teachers) are listed, not raised.
    """
    import json

    plan = train_plan(cfg, processes, command, recipe)
    text = json.dumps(plan, indent=2) if fmt == "json" else format_plan(plan)
    error, n = plan["arithmetic"]["error"], plan["processes"]
    if error and cfg.batch_size % cfg.group_size == 0 and n not in fitting_process_counts(cfg, max(64, n)):
        fits = [k for k in fitting_process_counts(cfg) if k > 1]  # the failure is about the process count: say which fit
        if fits:
            error += f" (or launch on a process count that fits this batch: {', '.join(map(str, fits[:10]))})"
    return text, error
