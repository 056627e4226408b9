"""Benchmark: a mini model's held-out scores per task over a sweep of CFG scales and ODE steps.

This is how the mini sampling defaults (flowopd.models.MINI_SAMPLING) were chosen,
and how docs/mini-world.md's base-model table was measured:

    python tests/bench/mini_base_scores.py --cfg 1 1.5 2 3 --steps 20 --prompts 48
    python tests/bench/mini_base_scores.py --cfg 2 --steps 10 20 40 --prompts 48
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini-base")
    parser.add_argument("--cfg", type=float, nargs="+", default=[2.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[20])
    parser.add_argument("--prompts", type=int, default=48, help="prompts per task (compose: per tag)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from flowopd.benchmarks.runner import EvalConfig, run_eval
    from flowopd.mini.world import COMPOSE_TAGS

    print(f"model {args.model}, held-out prompts, {args.prompts} prompts per task (compose: per tag), seed {args.seed}")
    header = ["cfg", "steps", "compose", *COMPOSE_TAGS, "text", "text_exact", "preference", "quality", "seconds"]
    print(" | ".join(header))
    for steps in args.steps:
        for cfg in args.cfg:
            config = EvalConfig(suites=["mini"], model=args.model, limit=args.prompts, steps=steps, cfg=cfg, seed=args.seed)
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                summary = run_eval(config, Path(tmp) / "run", cache_path=Path(tmp) / "scores.sqlite")
            m = summary["suites"]["mini"]["metrics"]
            cells = [m["compose/geneval_overall"]["mean"], *[m[f"compose/geneval_{t}"]["mean"] for t in COMPOSE_TAGS]]
            cells += [
                m["text/mini_ocr"]["mean"],
                m["text/exact_match"]["mean"],
                m["preference/mini_preference"]["mean"],
                m["quality/mini_quality"]["mean"],
            ]
            print(" | ".join([f"{cfg:g}", str(steps), *(f"{c:.3f}" for c in cells), f"{time.perf_counter() - t0:.0f}"]), flush=True)


if __name__ == "__main__":
    main()
