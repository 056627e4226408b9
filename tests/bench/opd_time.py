"""Wall time of the default `flowopd train opd` (the four shipped mini teachers, merge cold start); target: under 5 minutes on 2 cores.

    python tests/bench/opd_time.py [--threads 2]

Runs the command exactly as a user would (a fresh process, a fresh output
folder), then prints its wall time, the mean time per step split into rollout,
teacher signal and update, and the target check.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default, all cores)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "opd"
        cmd = [sys.executable, "-m", "flowopd.cli.main", "train", "opd", "--out", str(out)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
        wall = time.perf_counter() - t0
        if done.returncode:
            raise SystemExit(done.stderr)
        logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        mean = {k: sum(r[k] for r in logs) / len(logs) for k in ("time_rollout", "time_signal", "time_step")}
        print(f"flowopd train opd: {len(logs)} steps, wall {wall:.0f} s ({wall / 60:.2f} min) on {os.cpu_count()} cores")
        print(
            f"per step: {mean['time_step']:.2f} s = rollout {mean['time_rollout']:.2f} + teachers/anchor {mean['time_signal']:.2f} "
            f"+ update {mean['time_step'] - mean['time_rollout'] - mean['time_signal']:.2f}"
        )
        print(f"final step: kl {logs[-1]['kl']:.4f}, mar {logs[-1]['mar']:.4f}; LoRA at {out / 'lora'} (deleted with the temp folder)")
        print(f"target < {TARGET_S:.0f} s: {'met' if wall < TARGET_S else 'NOT met'}")


if __name__ == "__main__":
    main()
