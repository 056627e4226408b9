"""Benchmark: mini base throughput on this machine: flow-matching training images/s and ODE sampling images/s."""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--sample-steps", type=int, default=20)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from flowopd.flow_matching import flow_matching_loss
    from flowopd.mini.model import MiniBackbone
    from flowopd.mini.pretrain import render_batch
    from flowopd.models import MINI_SAMPLING, load_backbone
    from flowopd.sampling import sample_ode

    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    images, prompts = render_batch(rng, args.batch_size, 0.1)
    render_s = time.perf_counter() - t0
    model = MiniBackbone.random(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(args.train_steps):
        t0 = time.perf_counter()
        loss = flow_matching_loss(model, images, prompts, gen)
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    train = args.batch_size / float(np.median(times[1:] or times))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"threads {torch.get_num_threads()}, model {params:.2f} M parameters")
    print(f"render: {args.batch_size / render_s:.0f} images/s")
    print(f"pre-training: {train:.1f} images/s (batch {args.batch_size})")

    base = load_backbone("mini-base")
    t0 = time.perf_counter()
    sample_ode(base, prompts, list(range(len(prompts))), steps=args.sample_steps, cfg=MINI_SAMPLING["cfg"])
    dt = time.perf_counter() - t0
    print(f"ODE sampling: {len(prompts) / dt:.1f} images/s ({args.sample_steps} steps, CFG {MINI_SAMPLING['cfg']}, batch {len(prompts)})")


if __name__ == "__main__":
    main()
