"""The GRPO engine's conventions side by side, at each SDE step of a teacher recipe: clip fraction and gradient norms.

Issue 14's hypotheses: flowopd scores a cps transition by its Gaussian density,
Flow-GRPO by ``-mean((x_next - mu)^2)`` (``sampler.log_prob: flow_grpo``), a
factor ``2 std^2`` apart; and Flow-GRPO detaches CFG's unconditional branch in
the update (``sampler.detach_uncond``). For each convention and each SDE step
position, one rollout of the recipe (same prompts and seeds for every
convention) and two updates on it (``updates_per_rollout: 2``, so the second
update is off-policy and the ratio can be clipped):

    python tests/bench/grpo_conventions.py --config mini/teacher-text --positions 0 2 4 7 8

Prints, per (convention, position): the pre-clip gradient norm of the updates,
the clip fraction (the second update's share of clipped samples, the first
being exactly on-policy), the KL to the reference and the kept fraction.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

CONVENTIONS = {
    "exact": {"log_prob": "exact", "detach_uncond": False},
    "flow_grpo log-prob": {"log_prob": "flow_grpo", "detach_uncond": False},
    "detach uncond": {"log_prob": "exact", "detach_uncond": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="mini/teacher-text")
    parser.add_argument("--model", default=None, help="override the recipe's base model")
    parser.add_argument("--positions", type=int, nargs="+", default=[0, 2, 4, 7, 8], help="SDE step positions (window of 1)")
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()

    import flowopd.trainer as trainer_mod
    from flowopd.config import load_config
    from flowopd.train_config import TrainConfig, recipe_path

    base = load_config(TrainConfig, recipe_path(args.config), {})
    print(f"{args.config}: {base.sampler.kind} a={base.sampler.noise_level}, {base.sampler.steps} steps, clip_range {base.grpo.clip_range}")
    print("convention | position | grad_norm | clip_frac (2nd update) | kl | kept_frac")
    for name, sampler in CONVENTIONS.items():
        for pos in args.positions:
            over = {
                "sampler": {**base.sampler.model_dump(), **sampler, "window_size": 1, "window_start_max": max(pos, 1)},
                "updates_per_rollout": 2,
                "steps": 1,
                "trackers": [],
            }
            if args.model:
                over["model"] = args.model
            if args.batch_size:
                over["batch_size"] = args.batch_size
            cfg = TrainConfig.model_validate({**base.model_dump(), **over})
            trainer_mod.window_start = lambda _cfg, _step, pos=pos: pos  # this position, whatever the step draws
            with tempfile.TemporaryDirectory() as tmp:
                m = trainer_mod.Trainer(cfg, Path(tmp) / "run").train_step()
            print(f"{name} | {pos} | {m['grad_norm']:.4g} | {2 * m['clip_frac']:.3f} | {m['kl']:.3g} | {m['kept_frac']:.2f}", flush=True)


if __name__ == "__main__":
    main()
