"""The runner on a real-model backbone (a tiny random SD3 pipeline) with real suites, and sharded over two processes."""

import json
import math
import os
import socket
import subprocess
import sys

import pytest
from test_reward_clip import _tiny_clip, _write_processor
from test_reward_geneval import CLIP_SET, M2F_SET, clip_dir, m2f_dir  # noqa: F401  (fixtures: tiny Mask2Former and CLIP)
from test_reward_t2i_blip import _tiny_blip
from test_reward_t2i_compbench import tiny_dpt, tiny_owlv2, tiny_spacy_wheel, write_lists
from test_sd3_backbone import save_tiny_sd3


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory):
    return save_tiny_sd3(tmp_path_factory.mktemp("sd3-eval"))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, m2f_dir, clip_dir):  # noqa: F811  (the imported fixtures)
    """Tiny random weights in the layouts of PickScore (+ its processor), CLIP ViT-B/32, BLIP VQA, and GenEval's
    Mask2Former + CLIP ViT-L/14: the real loaders read them."""
    root = tmp_path_factory.mktemp("eval-weights")
    (root / M2F_SET).symlink_to(m2f_dir, target_is_directory=True)
    (root / CLIP_SET).symlink_to(clip_dir, target_is_directory=True)
    for name in ("pickscore_v1", "clip-vit-h-14-processor", "clip-vit-base-patch32"):
        (root / name).mkdir()
    _write_processor(root / "clip-vit-h-14-processor")
    _tiny_clip(root / "pickscore_v1", projection_dim=24, seed=0, logit_scale=math.log(100.0))
    _tiny_clip(root / "clip-vit-base-patch32", projection_dim=16, seed=1, logit_scale=math.log(100.0))
    _write_processor(root / "clip-vit-base-patch32")
    _tiny_blip(root / "blip-vqa-capfilt-large")
    return root


def _env(shared_data, weights, tmp_path):
    env = {k: v for k, v in os.environ.items() if not (k.startswith("FLOWOPD_") and k.endswith("_URL"))}
    return {**env, "FLOWOPD_DATA_DIR": str(shared_data), "FLOWOPD_WEIGHTS_DIR": str(weights), "FLOWOPD_CACHE_DIR": str(tmp_path / "cache")}


def test_eval_all_on_an_sd3_checkpoint_runs_the_real_suites_it_can(tiny_sd3, tiny_weights, shared_data, tmp_path, run_cli):
    out = tmp_path / "eval"
    res = run_cli(
        "eval", "--model", str(tiny_sd3), "--limit", "2", "--out", str(out), "--no-report", env=_env(shared_data, tiny_weights, tmp_path)
    )
    assert res.returncode == 0, res.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["model"]["world"] == "real"
    assert sorted(s["suites"]) == ["geneval@hf-m2f", "ocr", "pickscore", "t2i-compbench"]
    assert "mmdet" in s["skipped"]["geneval"] and "flowopd prompts download hpsv2" in s["skipped"]["hpsv2"]
    assert "runs on mini-world models only" in s["skipped"]["mini"]
    assert s["suites"]["ocr"]["sampling"] == {"steps": 40, "cfg": 4.5, "shift": 3.0, "resolution": 16, "negative_prompt": ""}
    assert s["metrics"]["ocr/accuracy"]["n"] == 2 and s["metrics"]["pickscore/pickscore"]["n"] == 2
    assert s["metrics"]["t2i-compbench/non_spatial"]["n"] == 20  # 2 prompts x 10 images
    t2i = [json.loads(line) for line in (out / "t2i-compbench" / "samples.jsonl").read_text().splitlines()]
    cos = [r["scores"]["clipscore@vit-b-32"]["details"]["cosine"] for r in t2i if r["metadata"]["category"] == "non_spatial"]
    assert s["metrics"]["t2i-compbench/non_spatial"]["mean"] == pytest.approx(sum(cos) / len(cos), abs=1e-5)  # the cosine, not x100
    assert len({r["seed"] for r in t2i}) == 4 * 20
    # color, shape and texture by BLIP-VQA; no spaCy wheel here, so through the rule parser, named apart
    for cat in ("color", "shape", "texture"):
        recs = [r for r in t2i if r["metadata"]["category"] == cat]
        raws = [r["scores"]["t2i_blip_vqa@np-rules"]["raw"] for r in recs]
        assert f"t2i-compbench/{cat}" not in s["metrics"] and s["metrics"][f"t2i-compbench/{cat}@np-rules"]["n"] == 20
        assert s["metrics"][f"t2i-compbench/{cat}@np-rules"]["mean"] == pytest.approx(sum(raws) / 20, abs=1e-6)
        assert all(0 <= x <= 1 for x in raws) and len(recs[0]["scores"]["t2i_blip_vqa@np-rules"]["details"]["questions"]) >= 1
    # GenEval through the real detector code: 2 prompts per tag x 4 images, the official summary over the strict verdicts
    g = s["suites"]["geneval@hf-m2f"]
    assert g["n_images"] == 6 * 2 * 4 and g["n_prompts"] == 12
    recs = [json.loads(line) for line in (out / "geneval@hf-m2f" / "samples.jsonl").read_text().splitlines()]
    correct = [float(r["scores"]["geneval@hf-m2f"]["details"]["correct"]) for r in recs]
    assert s["metrics"]["geneval@hf-m2f/image_accuracy"]["mean"] == pytest.approx(sum(correct) / 48)
    assert {k.split("/")[1] for k in s["metrics"] if k.startswith("geneval@")} >= {"overall", "counting", "prompt_accuracy"}


def test_t2i_compbench_scores_all_eight_categories_when_their_tiny_weights_are_given(
    tiny_sd3, tiny_weights, shared_data, tmp_path, run_cli
):
    """The spaCy wheel makes color/shape/texture official (t2i_blip_vqa); OWLv2 (+ DPT) and the upstream lists add spatial,
    3d_spatial, numeracy and complex, each named apart (<category>@owlv2...)."""
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("clip-vit-base-patch32", "blip-vqa-capfilt-large"):
        (weights / name).symlink_to(tiny_weights / name, target_is_directory=True)
    tiny_owlv2(weights / "owlv2-base-patch16-ensemble")
    tiny_dpt(weights / "dpt-hybrid-midas")
    tiny_spacy_wheel(weights / "spacy-en-core-web-sm")
    first_complex = (shared_data / "t2i-compbench" / "complex_val.txt").read_text().splitlines()[0]
    write_lists(weights / "t2i-compbench-lists", spatial=(first_complex,))
    out = tmp_path / "eval"
    args = ("eval", "--suite", "t2i-compbench", "--model", str(tiny_sd3), "--limit", "1", "--out", str(out), "--no-report")
    res = run_cli(*args, env=_env(shared_data, weights, tmp_path))
    assert res.returncode == 0, res.stderr
    s = json.loads((out / "summary.json").read_text())
    keys = {"color", "shape", "texture", "non_spatial", "spatial@owlv2", "3d_spatial@owlv2-dpt", "numeracy@owlv2", "complex@owlv2"}
    assert {k.split("/", 1)[1] for k in s["metrics"]} == keys  # no "mean": four of the eight are not the official models
    recs = [json.loads(line) for line in (out / "t2i-compbench" / "samples.jsonl").read_text().splitlines()]
    for key in keys:
        cat = key.split("@")[0]
        reward = next(iter(next(r for r in recs if r["metadata"]["category"] == cat)["scores"]))
        raws = [r["scores"][reward]["raw"] for r in recs if r["metadata"]["category"] == cat]
        assert s["metrics"][f"t2i-compbench/{key}"]["n"] == 10 and all(x is not None and math.isfinite(x) for x in raws)
        assert s["metrics"][f"t2i-compbench/{key}"]["mean"] == pytest.approx(
            sum(raws) / 10 * (0.01 if cat == "non_spatial" else 1), abs=1e-5
        )
    complex_recs = [r["scores"]["t2i_complex@owlv2"]["details"] for r in recs if r["metadata"]["category"] == "complex"]
    assert {d["group"] for d in complex_recs} == {"spatial"}  # the first complex prompt is in the (cut-down) spatial list


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_split_the_images_and_agree_with_one(shared_data, tmp_path, run_cli):
    env = {**os.environ, "FLOWOPD_CACHE_DIR": str(tmp_path / "cache2"), "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    out2 = tmp_path / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1", "--multi_gpu"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    cmd += ["-m", "flowopd.cli.main", "eval", "--suite", "mini", "--model", "mini-base", "--limit", "2", "--out", str(out2), "--no-report"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((out2 / "summary.json").read_text())
    assert two["run"]["config"]["processes"] == 2
    assert not list(out2.rglob(".records.rank*")) and not list(out2.glob(".stats.rank*"))
    one_out = tmp_path / "one"
    res = run_cli(
        "eval",
        "--suite",
        "mini",
        "--model",
        "mini-base",
        "--limit",
        "2",
        "--out",
        str(one_out),
        "--no-report",
        env={"FLOWOPD_CACHE_DIR": str(tmp_path / "cache1")},
    )
    assert res.returncode == 0, res.stderr
    one = json.loads((one_out / "summary.json").read_text())
    assert two["metrics"] == one["metrics"]
    assert (out2 / "mini" / "samples.jsonl").read_text() == (one_out / "mini" / "samples.jsonl").read_text()
    assert two["images"]["generated"] == one["images"]["generated"] == 18
