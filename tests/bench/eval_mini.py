"""Wall time of `flowopd eval --suite mini`: a cold run, the same run again (everything reused), and a run killed and resumed.

    python tests/bench/eval_mini.py [--model mini-student] [--limit 48] [--kill-after 100]

Each run is the CLI in a subprocess with a private score cache, so start-up,
model loading, sampling, scoring and writing are all in the figure. The third
run is SIGKILLed once ``--kill-after`` images are on disk and then started
again; it prints how many images and scores the resumed run reused, and
whether its samples equal the cold run's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _eval(out: Path, cache: Path, model: str, limit: int) -> list[str]:
    return [sys.executable, "-m", "flowopd.cli.main", "eval", "--suite", "mini", "--model", model, "--limit", str(limit), "--out", str(out)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini-student")
    parser.add_argument("--limit", type=int, default=48, help="prompts per task (compose: per tag); 48 is the default suite")
    parser.add_argument("--kill-after", type=int, default=100, help="images on disk before the kill")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "FLOWOPD_CACHE_DIR": str(tmp / "cache")}
        figures = {}
        for label in ("cold", "again"):
            t0 = time.perf_counter()
            subprocess.run(_eval(tmp / "run", tmp, args.model, args.limit), check=True, env=env, capture_output=True)
            s = json.loads((tmp / "run" / "summary.json").read_text())
            figures[label] = (time.perf_counter() - t0, s)
        killed = tmp / "killed"
        env2 = {**os.environ, "FLOWOPD_CACHE_DIR": str(tmp / "cache2")}
        proc = subprocess.Popen(_eval(killed, tmp, args.model, args.limit), env=env2, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while len(list((killed / "images").glob("*.json"))) < args.kill_after and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        on_disk = len(list((killed / "images").glob("*.json")))
        t0 = time.perf_counter()
        subprocess.run(_eval(killed, tmp, args.model, args.limit), check=True, env=env2, capture_output=True)
        resumed = json.loads((killed / "summary.json").read_text())
        same = (killed / "mini" / "samples.jsonl").read_text() == (tmp / "run" / "mini" / "samples.jsonl").read_text()
        print(f"flowopd eval --suite mini --model {args.model} --limit {args.limit}  ({os.cpu_count()} CPUs)")
        for label, (seconds, s) in figures.items():
            print(
                f"  {label:6s} {seconds:6.1f} s wall  images {s['images']['generated']} generated / {s['images']['reused']} reused  "
                f"scores {s['cache']['misses']} computed / {s['cache']['hits']} from the cache  ({s['suites']['mini']['n_images']} images)"
            )
        print(
            f"  killed after {on_disk} images; resumed in {time.perf_counter() - t0:.1f} s: images {resumed['images']['generated']} generated / "
            f"{resumed['images']['reused']} reused, scores {resumed['cache']['misses']} computed / {resumed['cache']['hits']} from the cache; "
            f"samples identical to the cold run: {same}"
        )


if __name__ == "__main__":
    main()
