"""Reward-hacking alarms on the mini world: a reward that pays for bright pixels, and a shipped teacher's normal recipe.

    python tests/bench/watch_demo.py --out runs/watch-demo                 # both runs (about 25 min on 2 cores)
    python tests/bench/watch_demo.py --out runs/watch-demo --only hack --steps 20

``hack``: the text teacher's recipe (``mini/teacher-text``) trained on ``bright`` (the mean pixel value, a reward
registered here like a plugin's) over all four mini tasks, with independent initial latents, 3 SDE steps, no KL and
lr 3e-3 (so that it hacks within a few steps), evaluated every ``--every`` steps on 8 held-out prompts a task with ``bright``
and the four mini judges. ``normal``: the text teacher's recipe as shipped, evaluated the same
way. Prints each run's evaluations (the proxy and the gold rewards, the image statistics) and every alarm with its
step; the runs' folders hold ``evals/step-N`` for ``flowopd report``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

GOLD = ["mini_geneval", "mini_ocr", "mini_preference", "mini_quality"]


def register_bright() -> None:
    from flowopd.reward_models import RewardModel, names, register_reward

    if "bright" in names():
        return

    @register_reward("bright")
    class Bright(RewardModel):
        """Pays for bright pixels: the mean pixel value on 0-1. Deliberately easy to hack."""

        version = "1"
        raw_range = (0.0, 1.0)
        description = "mean pixel value (a reward made to be hacked)"

        def _score(self, images, prompts, metadata):
            return [float(np.asarray(im).mean()) / 255 for im in images], [{} for _ in images]


def config(kind: str, steps: int, every: int, threads: int, trackers: list[str]):
    import yaml

    from flowopd.train_config import TrainConfig, recipe_path

    over: dict = {
        "steps": steps,
        "threads": threads,
        "eval_every": every,
        "eval": {"prompts": "mini", "rewards": ["bright", *GOLD], "limit": 8},
        "checkpoint_every": every,
        "trackers": trackers,
    }
    if kind == "hack":  # made to hack fast: independent latents, 3 SDE steps (more spread in a group), no KL, lr 3e-3
        over.update(name="hack-bright", rewards={"bright": 1.0}, tasks={"compose": 1.0, "text": 1.0, "preference": 1.0, "quality": 1.0})
    else:
        over.update(name="teacher-text-watched")
    values = {**yaml.safe_load(recipe_path("mini/teacher-text").read_text()), **over}
    if kind == "hack":
        values["sampler"].update(same_latent=False, window_size=3)
        values["grpo"].update(beta=0.0)
        values["optim"].update(lr=3e-3)
    return TrainConfig.model_validate(values)


def run(kind: str, out: Path, steps: int, every: int, threads: int, trackers: list[str]) -> None:
    from flowopd.trainer import Trainer

    cfg = config(kind, steps, every, threads, trackers)
    t0 = time.time()
    trainer = Trainer(cfg, out / kind, resume=(out / kind / "run.json").is_file())
    trainer.train()
    wall = time.time() - t0
    rows = [json.loads(line) for line in (out / kind / "log.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/seconds" in r]
    spent = sum(r["eval/seconds"] for r in evals)
    print(f"\n== {kind}: {cfg.steps} steps, {wall / 60:.1f} min, of which evaluation {spent / 60:.1f} min ({spent / wall:.0%})")
    keys = ["custom/bright", *(f"custom/{g}" for g in GOLD)]
    print("step  " + "  ".join(k.split("/")[1][:12].rjust(12) for k in keys) + "  brightness  flat  jpeg")
    for r in evals:
        cells = "  ".join(f"{r.get('eval/' + k, float('nan')):12.3f}" for k in keys)
        stats = f"{r['eval/image/brightness']:10.3f}  {r['eval/image/flat_fraction']:.3f}  {r['eval/image/jpeg_bytes']:5.0f}"
        print(f"{r['step']:4d}  {cells}  {stats}")
    for step, message in trainer.watch.alarms:
        print(f"ALARM at step {step}: {message}")
    if not trainer.watch.alarms:
        print("no alarm")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/watch-demo"))
    ap.add_argument("--only", choices=["hack", "normal"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tracker", action="append", default=[], choices=["tensorboard", "wandb"], help="e.g. wandb (WANDB_MODE=offline)")
    args = ap.parse_args()
    register_bright()
    for kind in ("hack", "normal"):
        if args.only in (None, kind):
            run(kind, args.out, args.steps, args.every, args.threads, args.tracker)


if __name__ == "__main__":
    main()
