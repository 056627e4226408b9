"""Benchmark: where along a trajectory each mini teacher's velocity differs from a student's, step by step.

For each task, 16 held-out prompts are drawn and the *student's* ODE trajectory is
followed (its own states, as OPD's rollouts are); at every step the student's and
the routed teacher's guided velocities (CFG 3) are compared. It prints, per step,
the mean squared velocity gap ``||v_student - v_teacher||^2`` and the exact cps
per-step KL of eq. 8 (noise level 0.8) that OPD's ``kl`` objective minimises.
This is how docs/opd.md found that the preference teacher's gap sits at the first,
layout-setting step, where the exact KL weighs it ~1/80 of a late step:

    python tests/bench/opd_teacher_gaps.py --student runs/reproduce-nft/models/coldstart-merge
    python tests/bench/opd_teacher_gaps.py --student runs/reproduce-nft/runs/opd/lora \
        --teacher compose=runs/teacher-compose-nft/lora --teacher text=runs/teacher-text-nft/lora
"""

from __future__ import annotations

import argparse

TEACHERS = {
    "compose": "mini-teacher-compose",
    "text": "mini-teacher-text",
    "preference": "mini-teacher-preference",
    "quality": "mini-teacher-quality",
}


def gaps(student, teacher, prompts: list[str], steps: int, cfg: float, noise_level: float) -> tuple[list[float], list[float]]:
    """Per step: the mean squared velocity gap and the mean exact cps KL (none at the last, deterministic step)."""
    import torch

    from flowopd.sampling import guided_velocity, initial_noise
    from flowopd.sde import per_step_kl

    n, sig = len(prompts), torch.linspace(1, 0, steps + 1)
    conds = [(m.encode_prompts(prompts), m.encode_prompts([""] * n)) for m in (student, teacher)]
    x = initial_noise(n, student.latent_shape, list(range(n)))
    dv2, kl = [], []
    with torch.no_grad():
        for i in range(steps):
            s = sig[i].expand(n)
            vs, vt = (guided_velocity(m, x, s, c, u, cfg) for m, (c, u) in zip((student, teacher), conds))
            dv2.append(float(((vs - vt) ** 2).mean()))
            if float(sig[i + 1]) > 0:
                kl.append(float(per_step_kl(vs, vt, sig[i], sig[i + 1], noise_level, "cps").mean()))
            x = x + (sig[i + 1] - sig[i]) * vs
    return dv2, kl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, help="a model spec or LoRA folder (the cold start, or an OPD student)")
    parser.add_argument("--teacher", action="append", default=[], help="TASK=SPEC, replacing a shipped teacher")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cfg", type=float, default=3.0)
    parser.add_argument("--noise-level", type=float, default=0.8)
    args = parser.parse_args()

    import torch

    from flowopd.mini import world
    from flowopd.models import load_backbone

    torch.set_num_threads(1)
    teachers = {**TEACHERS, **dict(t.split("=", 1) for t in args.teacher)}
    student = load_backbone(args.student)
    print(f"student {args.student}; {args.prompts} held-out prompts a task, {args.steps} ODE steps, CFG {args.cfg:g}")
    for task, spec in teachers.items():
        prompts = [r.prompt for r in world.make_prompts(task, args.prompts, seed=0, split="test")]
        dv2, kl = gaps(student, load_backbone(spec), prompts, args.steps, args.cfg, args.noise_level)
        print(f"{task:<10} teacher {spec}")
        print("  |dv|^2 by step: " + " ".join(f"{v:.3f}" for v in dv2))
        print("  cps KL by step: " + " ".join(f"{v:.4f}" for v in kl) + f"   (sum over steps 0-7: {sum(kl[:8]):.3f})")


if __name__ == "__main__":
    main()
