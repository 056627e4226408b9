"""Benchmark: loopback load test of `flowopd rewards serve mini_ocr` (127.0.0.1 only, bounded in requests and time).

C concurrent clients each score N mini-world text images in requests of B images through the remote client;
prints throughput and p50/p99 request latency, the same for in-process scoring, once per --max-batch of the
server (batching's effect: 1 = no batching across requests).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import statistics
import subprocess
import sys
import time

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(port: int, max_batch: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "flowopd.cli.main", "rewards", "serve", "mini_ocr", "--port", str(port), "--max-batch", str(max_batch)]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start in 60 s")


def _run(score, clients: int, images: np.ndarray, prompts: list[str], batch: int, max_seconds: float) -> dict[str, float]:
    """``score(images, prompts)`` from ``clients`` threads, each over all images in requests of ``batch``."""
    latencies: list[float] = []
    deadline = time.monotonic() + max_seconds

    def client(_: int) -> int:
        done = 0
        for start in range(0, len(images), batch):
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            score(images[start : start + batch], prompts[start : start + batch])
            latencies.append(time.perf_counter() - t0)
            done += len(images[start : start + batch])
        return done

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        scored = sum(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"images": scored, "images_per_s": scored / wall, "p50_ms": 1000 * q[49], "p99_ms": 1000 * q[98]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--images", type=int, default=200, help="images per client")
    parser.add_argument("--batch", type=int, default=8, help="images per request")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 64], help="server --max-batch values to compare")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="per measurement")
    args = parser.parse_args()

    from flowopd.mini import world
    from flowopd.reward_models import load_reward

    rng = np.random.default_rng(0)
    records = world.make_prompts("text", args.images, seed=0, unique=False)
    images = np.stack([world.render(r, rng) for r in records])
    prompts = [r.prompt for r in records]
    local = load_reward("mini_ocr")
    row = _run(local.score, args.clients, images, prompts, args.batch, args.max_seconds)
    print(
        f"in process      : {row['images']} images, {row['images_per_s']:.0f} img/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms"
    )
    for max_batch in args.max_batch:
        port = _free_port()
        proc = _start(port, max_batch)
        try:
            remote = load_reward("remote:mini_ocr", url=f"http://127.0.0.1:{port}", batch_size=args.batch, timeout=60.0)
            row = _run(remote.score, args.clients, images, prompts, args.batch, args.max_seconds)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        print(
            f"served max-batch {max_batch:>3}: {row['images']} images, {row['images_per_s']:.0f} img/s, "
            f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms ({args.clients} clients x {args.batch}-image requests)"
        )


if __name__ == "__main__":
    main()
