"""The resolved plan of a training run, without loading a model: ``flowopd train ... --dry-run``.

:func:`train_plan` returns a JSON-ready dict: the process count and where it
came from, the batch arithmetic per GPU, the sampler, the LoRA, the learning
signal (rewards, or teachers and routing for OPD), the trainer's own checks
(:func:`flowopd.plan_checks.check_arithmetic` decides; :func:`flowopd.plan_checks.check_inputs`
is reported, never raised) and a per-GPU memory estimate. :func:`format_plan`
turns it into the text the CLI prints.

The memory estimate (:mod:`flowopd.memory`) uses the full-size architecture of
the base (:mod:`flowopd.arch_sizes`: SD3.5-Medium or -Large, FLUX.1-dev,
Qwen-Image), replicated and FSDP-sharded; it is an estimate, and the formula is
part of the output so it can be checked.
"""

from __future__ import annotations

import math
import os
from typing import Any

from flowopd.memory import memory_estimate
from flowopd.train_config import TrainConfig


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
    from flowopd.models import diffusers_family
    from flowopd.objectives.base import objective_class
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
        "backbone": getattr(diffusers_family(cfg.model), "kind", "mini"),
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
    plan.update(objective_class(cfg).plan_fields(cfg))  # the objective's own section: grpo (rewards) or opd (teachers)
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
        trained = len(plan_steps(s.steps, s.shift, s.window_size, 0, s.timestep_fraction, s.spacing, s.shift_terminal).trained)
    except FlowOPDError:
        trained = None  # the arithmetic check reports the bad window
    window = "every step" if s.window_size == 0 else f"{s.window_size} consecutive steps starting in [0, {s.window_start_max}]"
    return {
        "steps": s.steps,
        "kind": s.kind,
        "noise_level": s.noise_level,
        "cfg": s.cfg,
        "shift": s.shift,
        "spacing": s.spacing,
        "shift_terminal": s.shift_terminal,
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

    from flowopd.models import KNOWN_WEIGHTS, diffusers_source, is_diffusers

    item = {"kind": "model", "name": spec, "ok": False, "detail": ""}
    if is_diffusers(spec):
        source = diffusers_source(spec)
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
        fits = "fits" if mem["fits"] else "does not fit"
        row(
            "memory per GPU",
            f"~{mem['total_gib']} GiB, every process holding the whole model ({mem['sizes_of']} sizes; {fits} an 80 GB GPU)",
        )
        for t in mem["terms"]:
            row("", f"{t['gib']:>6.2f} GiB  {t['what']}: {t['formula']}" + ("  [sharded by FSDP]" if t["sharded"] else ""))
        row("", mem["note"])
        fsdp = mem["fsdp"]
        fits = "fits" if fsdp["fits"] else "does not fit"
        row("with FSDP", f"~{fsdp['total_gib']} GiB over {fsdp['processes']} process(es) ({fits} an 80 GB GPU): {fsdp['formula']}")
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
    shift = f"{sm['shift']}" + ("" if sm.get("spacing", "sd3") == "sd3" else f" ({sm['spacing']} spacing)")
    shift += "" if sm.get("shift_terminal") is None else f", terminal {sm['shift_terminal']}"
    if "nft" in plan:
        sampler = f"{sm['steps']} steps, deterministic ODE of the old policy, CFG {sm['cfg']}, shift {shift}"
        sampler += f"; each sample trains at {plan['nft']['timesteps_per_sample']} of the schedule's times"
    else:
        sampler = f"{sm['steps']} steps, {sm['kind']} a={sm['noise_level']}, CFG {sm['cfg']}, shift {shift}; SDE on "
        sampler += f"{sm['sde_window']}, {sm['trained_steps']} trained per rollout (timestep_fraction {sm['timestep_fraction']})"
    row("sampler", sampler)
    _lora_row(plan, row)
    if "nft" in plan:
        nf = plan["nft"]
        row("rewards", _rewards_text(nf))
        row(
            "DiffusionNFT",
            f"beta {nf['beta']:g}, advantage clip {nf['adv_clip']:g} ({nf['adv_std']} std), {nf['weighting']} weighting, "
            f"old policy {nf['old_policy']}, KL to the base {nf['kl']:g}",
        )
    elif "grpo" in plan:
        gr = plan["grpo"]
        row("rewards", _rewards_text(gr))
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


def _rewards_text(section: dict[str, Any]) -> str:
    """``mini_geneval 1``, or per task ``compose: mini_geneval 1; text: mini_ocr 1``."""
    if section["task_rewards"]:
        return "; ".join(f"{t}: " + ", ".join(f"{k} {v:g}" for k, v in w.items()) for t, w in section["task_rewards"].items())
    return ", ".join(f"{k} {v:g}" for k, v in section["rewards"].items())


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
