"""Benchmark: one GRPO step's wall time against the summed time of the model forwards/backwards inside it.

The ratio ``step wall time / (transformer forwards + backwards)`` says how much
the trainer adds around the model (sampler math, rewards, advantages,
optimizer, EMA, logging); the target on the mini model is <= 1.15. Also
prints rollout images/s. Runs the shipped mini recipe by default:

    python tests/bench/grpo_step.py [--config mini/teacher-compose] [--steps 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="mini/teacher-compose", help="recipe name or YAML file")
    parser.add_argument("--steps", type=int, default=4, help="measured steps (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    from flowopd.config import load_config
    from flowopd.train_config import TrainConfig, recipe_path
    from flowopd.trainer import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(TrainConfig, recipe_path(args.config), {"steps": args.steps + 1, "trackers": [], "checkpoint_every": 10_000})
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, f"{tmp}/run")
        model_time = {"forward": 0.0, "backward": 0.0}
        transformer = trainer.backbone.transformer
        inner_forward = transformer.forward

        def timed_forward(*a, **k):
            t = time.perf_counter()
            out = inner_forward(*a, **k)
            model_time["forward"] += time.perf_counter() - t
            return out

        transformer.forward = timed_forward
        inner_backward = trainer.accelerator.backward

        def timed_backward(loss, **k):
            t = time.perf_counter()
            inner_backward(loss, **k)
            model_time["backward"] += time.perf_counter() - t

        trainer.accelerator.backward = timed_backward
        trainer.train_step()  # warm-up
        rows = []
        for _ in range(args.steps):
            model_time.update(forward=0.0, backward=0.0)
            t = time.perf_counter()
            m = trainer.train_step()
            wall = time.perf_counter() - t
            rows.append((wall, model_time["forward"], model_time["backward"], m["time_rollout"]))
    wall = sum(r[0] for r in rows) / len(rows)
    fwd = sum(r[1] for r in rows) / len(rows)
    bwd = sum(r[2] for r in rows) / len(rows)
    roll = sum(r[3] for r in rows) / len(rows)
    print(
        f"config {args.config}: batch {cfg.batch_size}, {cfg.sampler.steps} sampling steps, window {cfg.sampler.window_size or 'all'}, "
        f"torch threads {torch.get_num_threads()}, {args.steps} steps measured"
    )
    print(f"GRPO step wall time        {wall:8.3f} s")
    print(f"  model forwards           {fwd:8.3f} s")
    print(f"  model backwards          {bwd:8.3f} s")
    print(f"overhead ratio wall/(f+b)  {wall / (fwd + bwd):8.3f}   (target <= 1.15)")
    print(f"rollout                    {cfg.batch_size / roll:8.1f} images/s  ({roll:.3f} s per {cfg.batch_size} images)")


if __name__ == "__main__":
    main()
