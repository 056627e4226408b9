"""`flowopd eval --suite all` on a tiny random-weight SD3 checkpoint: which suites ran, and which were skipped and why.

Builds, in a temp dir, the tiny SD3 diffusers folder and tiny random weights (in the real weight sets' layouts) for
every reward the run can load locally, with the builders the tests use: PickScore, CLIP ViT-B/32 and ViT-L/14, the
transformers Mask2Former (GenEval rules), BLIP VQA + a spaCy wheel, OWLv2, DPT and the upstream lists
(T2I-CompBench++), ImageReward and HPS v2.1 (quality), and Qwen3-VL (GenEval 2 in process). Suites that need a served
judge (DPG-Bench, OneIG-Bench) or something not installed here get no stand-in, so they show up as skipped with the
runner's own reason. Then it runs, as a subprocess,

    flowopd eval --suite all --model <tiny sd3> --limit 1 --out <tmp>/eval --no-report

with FLOWOPD_DATA_DIR (default /work/shared/data), FLOWOPD_WEIGHTS_DIR and FLOWOPD_CACHE_DIR set, and prints, from
summary.json, each suite that ran (metrics, images, prompts) and each skipped suite with its reason. All scores come
from random weights: they show the pipeline runs, not any model's quality.

    OMP_NUM_THREADS=1 python tests/bench/eval_all_tiny.py [--keep DIR]
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
DATA = Path(os.environ.get("FLOWOPD_DATA_DIR", "/work/shared/data"))


class _Dirs:
    """Stands in for pytest's tmp_path_factory: ``mktemp(name)`` makes ``root/name``."""

    def __init__(self, root: Path):
        self.root = root

    def mktemp(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True)
        return path


def build_weights(root: Path) -> Path:
    """One folder per weight set, each written by the test helper that builds it."""
    import torch
    from test_eval_sd3_distributed import CLIP_SET, M2F_SET, clip_dir, m2f_dir
    from test_geneval2 import _tiny_qwen3_vl
    from test_reward_clip import _tiny_clip, _tiny_ref, _write_processor
    from test_reward_imagereward import tiny as tiny_imagereward
    from test_reward_t2i_blip import _tiny_blip
    from test_reward_t2i_compbench import tiny_dpt, tiny_owlv2, tiny_spacy_wheel, write_lists

    torch.set_num_threads(1)
    made = _Dirs(root / "built")
    w = root / "weights"
    w.mkdir()
    (w / M2F_SET).symlink_to(m2f_dir.__wrapped__(made), target_is_directory=True)
    (w / CLIP_SET).symlink_to(clip_dir.__wrapped__(made), target_is_directory=True)
    for name in ("pickscore_v1", "clip-vit-h-14-processor", "clip-vit-base-patch32", "hpsv2.1"):
        (w / name).mkdir()
    _write_processor(w / "clip-vit-h-14-processor")
    _tiny_clip(w / "pickscore_v1", projection_dim=24, seed=0, logit_scale=math.log(100.0))
    _tiny_clip(w / "clip-vit-base-patch32", projection_dim=16, seed=1, logit_scale=math.log(100.0))
    _write_processor(w / "clip-vit-base-patch32")
    _tiny_blip(w / "blip-vqa-capfilt-large")
    tiny_owlv2(w / "owlv2-base-patch16-ensemble")
    tiny_dpt(w / "dpt-hybrid-midas")
    tiny_spacy_wheel(w / "spacy-en-core-web-sm")
    first_complex = (DATA / "t2i-compbench" / "complex_val.txt").read_text().splitlines()[0]
    write_lists(w / "t2i-compbench-lists", spatial=(first_complex,))
    for name, path in tiny_imagereward.__wrapped__(made)["weights"].items():
        (w / name).symlink_to(path, target_is_directory=True)
    torch.save({"state_dict": _tiny_ref(3).state_dict(), "epoch": 1}, w / "hpsv2.1" / "HPS_v2.1_compressed.pt")
    _tiny_qwen3_vl(w / "qwen3-vl-8b-instruct")
    return w


def run_eval(root: Path, model: Path, weights: Path) -> tuple[subprocess.CompletedProcess, Path]:
    out = root / "eval"
    env = {k: v for k, v in os.environ.items() if not (k.startswith("FLOWOPD_") and k.endswith("_URL"))}  # no served judges
    env.update(FLOWOPD_DATA_DIR=str(DATA), FLOWOPD_WEIGHTS_DIR=str(weights), FLOWOPD_CACHE_DIR=str(root / "cache"))
    env.update(OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"), COLUMNS="200")
    args = ["eval", "--suite", "all", "--model", str(model), "--limit", "1", "--out", str(out), "--no-report"]
    print("$ flowopd " + " ".join(args).replace(str(root), "<tmp>"), flush=True)
    res = subprocess.run([sys.executable, "-m", "flowopd.cli.main", *args], capture_output=True, text=True, env=env)
    return res, out


def show(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    ran = Table(title="suites that ran (tiny random weights)", show_lines=False)
    for col in ("suite", "images", "prompts", "metrics", "metric names"):
        ran.add_column(col, overflow="fold")
    for name, s in summary["suites"].items():
        keys = [k.split("/", 1)[1] for k in summary["metrics"] if k.split("/", 1)[0] == name]
        ran.add_row(name, str(s.get("n_images", "?")), str(s.get("n_prompts", "?")), str(len(keys)), ", ".join(keys))
    skipped = Table(title="suites skipped, with the runner's reason")
    skipped.add_column("suite")
    skipped.add_column("reason", overflow="fold")
    for name, reason in summary.get("skipped", {}).items():
        skipped.add_row(name, reason)
    console = Console(width=160)
    console.print(ran)
    console.print(skipped)
    for name, s in summary["suites"].items():
        for metric, reason in (s.get("skipped_metrics") or {}).items():
            console.print(f"{name}: metric {metric} not computed: {reason}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build and run in this folder (kept) instead of a temp dir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eval-all-tiny-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        from test_sd3_backbone import save_tiny_sd3

        t0 = time.time()
        model = save_tiny_sd3(root / "tiny-sd3")
        weights = build_weights(root)
        print(f"built the tiny SD3 and {len(list(weights.iterdir()))} tiny weight sets in {time.time() - t0:.0f}s", flush=True)
        t0 = time.time()
        res, out = run_eval(root, model, weights)
        text = (res.stdout + res.stderr).replace(str(root), "<tmp>")
        print(f"exit {res.returncode} after {time.time() - t0:.0f}s")
        if res.returncode != 0:
            print(text[-3000:])
            return res.returncode
        print("\n".join(line for line in text.splitlines() if line.startswith(("images:", "wrote "))))
        show(json.loads((out / "summary.json").read_text().replace(str(root), "<tmp>")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
