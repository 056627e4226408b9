"""Kill a training run mid-way with SIGKILL, `--resume` it, and compare its LoRA with an uninterrupted run of the same seed.

    python tests/bench/kill_resume.py [--config mini/teacher-text] [--steps 6] [--kill-after 3]
    python tests/bench/kill_resume.py --config mini/opd          # an OPD run (`flowopd train opd`)

Both runs use the recipe with ``checkpoint_every: 2``; the killed run dies
after ``--kill-after`` logged steps (between checkpoints, so the resumed run
recomputes the steps after the last one). Prints the sha256 of both LoRA files
and whether every tensor is bit-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cmd(config: Path, out: Path, steps: int, *extra: str) -> list[str]:
    import yaml

    verb = "opd" if yaml.safe_load(config.read_text()).get("opd") else "teacher"
    return [
        sys.executable,
        "-m",
        "flowopd.cli.main",
        "train",
        verb,
        "--config",
        str(config),
        "--out",
        str(out),
        "--steps",
        str(steps),
        *extra,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="mini/teacher-text")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--kill-after", type=int, default=3, help="kill once this many steps are logged")
    parser.add_argument("--batch-size", type=int, default=16, help="smaller than the recipe's, to keep this quick")
    args = parser.parse_args()

    import torch
    import yaml
    from safetensors.torch import load_file

    from flowopd.train_config import recipe_path

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        values = yaml.safe_load(recipe_path(args.config).read_text())
        values.update(checkpoint_every=2, batch_size=args.batch_size, trackers=[])
        config = tmp / "recipe.yaml"
        config.write_text(yaml.safe_dump(values))
        env = {**os.environ, "COLUMNS": "120"}

        t = time.time()
        subprocess.run(_cmd(config, tmp / "straight", args.steps), check=True, env=env, capture_output=True)
        print(f"uninterrupted run: {args.steps} steps in {time.time() - t:.0f} s")

        log = tmp / "killed" / "log.jsonl"
        proc = subprocess.Popen(_cmd(config, tmp / "killed", args.steps), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not (log.is_file() and len(log.read_text().splitlines()) >= args.kill_after):
            if proc.poll() is not None:
                raise SystemExit("the run ended before it could be killed; raise --steps")
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpts = sorted(p.name for p in (tmp / "killed" / "checkpoints").iterdir())
        print(
            f"killed (SIGKILL) after {args.kill_after} logged steps; checkpoints on disk: {ckpts}; lora/ written: {(tmp / 'killed' / 'lora').exists()}"
        )
        subprocess.run(_cmd(config, tmp / "killed", args.steps, "--resume"), check=True, env=env, capture_output=True)
        steps_logged = [json.loads(x)["step"] for x in log.read_text().splitlines()]
        print(f"resumed to step {args.steps}; log steps: {steps_logged}")

        files = [tmp / run / "lora" / "pytorch_lora_weights.safetensors" for run in ("straight", "killed")]
        for f in files:
            print(f"{f.parent.parent.name:>9}: sha256 {hashlib.sha256(f.read_bytes()).hexdigest()}")
        a, b = (load_file(f) for f in files)
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        print(f"every LoRA tensor bit-identical: {same}")
        if not same:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
