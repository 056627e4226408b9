"""Memory of OPD's teachers as adapters on one base, against the student alone and against teachers as separate models.

    python tests/bench/opd_memory.py [--batch 32] [--steps-trained 3]

Three fresh processes run one OPD step's work on the mini world (rollout of
``--batch`` samples, then the student's forward and backward at the trained
states) and report their peak resident memory (``ru_maxrss``):

- ``student``:   the student alone (base + its cat-merged LoRA), no teacher;
- ``adapters``:  + the four teachers and the MAR anchor as adapters on the
                 student's own transformer (what ``flowopd train opd`` does), each
                 running its gradient-free forward on the same states;
- ``separate``:  + the same teachers and anchor loaded as separate models
                 (base with the LoRA fused), each running the same forwards.

At the mini scale a process's memory is mostly the Python/torch runtime, so the
bench also counts parameter bytes exactly, for the mini model and for the
SD3.5-Medium transformer (built on the meta device from its public config: no
download), where the base is what dominates.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def _work(mode: str, batch: int, k_steps: int, merged: str) -> dict:
    import contextlib
    import resource

    import torch
    import yaml

    from flowopd.coldstart import load_teachers
    from flowopd.lora import load_lora, use_adapter
    from flowopd.models import load_backbone
    from flowopd.rollout import plan_steps, rollout
    from flowopd.sampling import guided_velocity
    from flowopd.sde import per_step_kl, sde_step
    from flowopd.train_config import TrainConfig, recipe_path

    torch.set_num_threads(2)
    cfg = TrainConfig.model_validate(yaml.safe_load(recipe_path("mini/opd").read_text()))
    backbone = load_backbone("mini-base")
    backbone.requires_grad_(False)
    tr = backbone.transformer
    load_lora(tr, merged, "default", trainable=True)
    teachers: list = []  # (model, adapter to switch to on the student's transformer, or None for a separate model)
    if mode == "adapters":
        adapters = load_teachers(backbone, cfg)
        teachers = [(backbone, a) for a in adapters.values()] + [(backbone, adapters[cfg.opd.anchor])]  # the anchor: a teacher
    elif mode == "separate":
        anchor = next(t.checkpoint for t in cfg.opd.teachers if t.name == cfg.opd.anchor)
        models = [load_backbone(t.checkpoint) for t in cfg.opd.teachers] + [load_backbone(anchor)]
        teachers = [(m, None) for m in models]
    s = cfg.sampler
    plan = plan_steps(s.steps, s.shift, k_steps, 0, 1.0)
    prompts = ["a photo of a red circle", "the text 42"] * (batch // 2)
    cond, uncond = backbone.encode_prompts(prompts), backbone.encode_prompts([""] * batch)
    traj = rollout(backbone, cond, uncond, list(range(batch)), plan, s.cfg, s.noise_level, s.kind, batch)
    sig = plan.sigmas
    for k, i in enumerate(plan.trained):
        x = traj.states[:, k]
        targets = []
        for model, adapter in teachers:
            with torch.no_grad(), use_adapter(tr, adapter) if adapter else contextlib.nullcontext():
                targets.append(guided_velocity(model, x, sig[i], cond, uncond, s.cfg))
        v = guided_velocity(backbone, x, sig[i], cond, uncond, s.cfg)
        out = sde_step(x, v, float(sig[i]), float(sig[i + 1]), s.noise_level, kind=s.kind, x_next=traj.next_states[:, k])
        loss = out.log_prob.mean() * 0
        for t in targets:
            loss = loss + per_step_kl(v, t, sig[i], sig[i + 1], s.noise_level, s.kind).mean()
        if not targets:
            loss = loss + v.pow(2).mean()
        loss.backward()
    params = sum(p.numel() * p.element_size() for p in backbone.parameters())
    if mode == "separate":
        params += sum(p.numel() * p.element_size() for m in models for p in m.parameters())
    return {"mode": mode, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "param_mb": params / 2**20}


def sd35m_parameter_memory(teachers: int = 4, rank: int = 32) -> dict:
    """Parameter bytes (bf16) of the SD3.5-M transformer, a rank-r LoRA on SPEC's 8 targets, and the two layouts."""
    import torch
    from diffusers import SD3Transformer2DModel

    from flowopd.arch_sizes import SD35M_TRANSFORMER_CONFIG
    from flowopd.lora import SD3_LORA_TARGETS

    with torch.device("meta"):
        model = SD3Transformer2DModel(**SD35M_TRANSFORMER_CONFIG)
    base = sum(p.numel() for p in model.parameters())
    lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.endswith(t) for t in SD3_LORA_TARGETS):
            lora += rank * (module.in_features + module.out_features)
    gb = 2 / 2**30  # bf16
    student = base + teachers * lora  # the cat merge of K rank-r teachers has rank K*r
    adapters = student + (teachers + 1) * lora  # + K teachers + the anchor as adapters
    separate = student + (teachers + 1) * base  # + K teachers + the anchor as whole (merged) transformers
    return {
        "base_params_M": base / 1e6,
        "lora_params_M": lora / 1e6,
        "student_GB": student * gb,
        "adapters_GB": adapters * gb,
        "separate_GB": separate * gb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps-trained", type=int, default=3)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--merged", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(_work(args.mode, args.batch, args.steps_trained, args.merged)))
        return
    import tempfile
    from pathlib import Path

    import yaml

    from flowopd.coldstart import merge_teachers
    from flowopd.train_config import TrainConfig, recipe_path

    cfg = TrainConfig.model_validate(yaml.safe_load(recipe_path("mini/opd").read_text()))
    merged = merge_teachers(cfg, Path(tempfile.mkdtemp()) / "merge")  # the student's cold start, made once, outside the measured processes
    rows = {}
    for mode in ("student", "adapters", "separate"):
        cmd = [sys.executable, __file__, "--mode", mode, "--batch", str(args.batch), "--steps-trained", str(args.steps_trained)]
        done = subprocess.run([*cmd, "--merged", str(merged)], capture_output=True, text=True, check=True)
        rows[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{mode:9s} peak RSS {rows[mode]['peak_rss_mb']:7.1f} MB   parameters {rows[mode]['param_mb']:6.1f} MB")
    s, a, p = rows["student"], rows["adapters"], rows["separate"]
    print(
        f"mini, peak RSS:   adapters / student = {a['peak_rss_mb'] / s['peak_rss_mb']:.3f}   separate / student = {p['peak_rss_mb'] / s['peak_rss_mb']:.3f}"
    )
    print(
        f"mini, parameters: adapters / student = {a['param_mb'] / s['param_mb']:.3f}   separate / student = {p['param_mb'] / s['param_mb']:.3f}"
    )
    sd = sd35m_parameter_memory()
    print(
        f"SD3.5-M transformer (bf16): base {sd['base_params_M']:.0f}M params, one rank-32 LoRA {sd['lora_params_M']:.1f}M; "
        f"student {sd['student_GB']:.2f} GB, + 4 teachers and the anchor as adapters {sd['adapters_GB']:.2f} GB "
        f"(x{sd['adapters_GB'] / sd['student_GB']:.3f}), as separate models {sd['separate_GB']:.2f} GB (x{sd['separate_GB'] / sd['student_GB']:.2f})"
    )


if __name__ == "__main__":
    main()
