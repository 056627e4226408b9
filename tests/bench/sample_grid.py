"""A picture of what a mini model draws: one row per task, held-out prompts, the evaluation protocol (20 ODE steps, CFG 3).

    python tests/bench/sample_grid.py --model mini-base --n 8 --out docs/figures/mini-base-v2-samples.png

Row order: compose (its six tags in turn), text, preference, quality; images upscaled x4 with hard pixel edges.
Prints each image's prompt and its own task's score, so a reader can check the picture against the numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def held_out(task: str, n: int, seed: int) -> list:
    from flowopd.mini import world

    if task != "compose":
        return world.make_prompts(task, n, seed=seed, split="test")
    per_tag = [world.make_prompts("compose", n, seed=seed, split="test", tag=t) for t in world.COMPOSE_TAGS]
    return [per_tag[i % len(per_tag)][i // len(per_tag)] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini-base")
    parser.add_argument("--n", type=int, default=8, help="images per task")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=Path("samples.png"))
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from flowopd.mini import world
    from flowopd.models import MINI_SAMPLING, load_backbone
    from flowopd.reward_models import load_reward
    from flowopd.sampling import sample_ode

    model = load_backbone(args.model)
    reward_of = {"compose": "mini_geneval", "text": "mini_ocr", "preference": "mini_preference", "quality": "mini_quality"}
    rows = []
    for task in world.TASKS:
        recs = held_out(task, args.n, args.seed)
        seeds = [1000 * args.seed + i for i in range(len(recs))]
        imgs = sample_ode(model, [r.prompt for r in recs], seeds, steps=MINI_SAMPLING["steps"], cfg=MINI_SAMPLING["cfg"])
        scores = load_reward(reward_of[task]).score(imgs, [r.prompt for r in recs], [r.metadata for r in recs])
        for i, r in enumerate(recs):
            strict = scores.details[i].get("correct")
            extra = f" (strict: {'yes' if strict else 'no'})" if strict is not None else ""
            print(f"{task:10s} {i}: {r.prompt!r}: {reward_of[task]} {float(scores.raw[i]):.3f}{extra}")
        rows.append(torch.cat(list(imgs), dim=2))
    grid = (torch.cat(rows, dim=1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
