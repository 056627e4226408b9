"""Benchmark: wall time of `flowopd --help` (target < 1.5 s on 2 cores). Prints the median of N runs."""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    exe = shutil.which("flowopd")
    cmd = [exe, "--help"] if exe else [sys.executable, "-m", "flowopd.cli.main", "--help"]
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    print(
        f"flowopd --help: median {statistics.median(times):.3f} s, min {min(times):.3f} s, max {max(times):.3f} s over {args.runs} runs (target < 1.5 s)"
    )


if __name__ == "__main__":
    main()
