"""The evaluation runner: suites, planning and skip reasons, deterministic jobs, resume, the score cache, sharding."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowopd.benchmarks.runner import EvalConfig, plan_eval, run_eval
from flowopd.benchmarks.suites import SUITES, T2I_METRIC_MODELS, Job, chunked_mean_ci, geneval_metrics, get_suite, jobs_for
from flowopd.errors import FlowOPDError, InputError
from flowopd.models import resolve_model
from flowopd.reward_models.weights import WEIGHT_SETS


@pytest.fixture()
def data_env(shared_data, monkeypatch, tmp_path):
    """The reference prompt files, an empty weights dir, no judge servers, and a private score cache."""
    monkeypatch.setenv("FLOWOPD_DATA_DIR", str(shared_data))
    monkeypatch.setenv("FLOWOPD_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("FLOWOPD_CACHE_DIR", str(tmp_path / "cache"))
    for var in list(os.environ):
        if var.startswith("FLOWOPD_") and var.endswith("_URL"):
            monkeypatch.delenv(var)
    return {**os.environ}


# ------------------------------------------------------------------ aggregation


def _rec(tag, prompt, correct, failed=False):
    score = {"raw": None, "failed": True, "details": {"error": "x"}} if failed else {"raw": 0.5, "details": {"correct": correct}}
    return {"prompt": prompt, "metadata": {"tag": tag}, "scores": {"geneval": score}}


def test_geneval_summary_is_the_official_one():
    """Overall = unweighted mean of tag accuracies (not of images); a prompt counts when any of its images is correct."""
    records = [
        _rec("counting", "p1", True),
        _rec("counting", "p1", False),
        _rec("counting", "p2", False),
        _rec("counting", "p2", False),
        _rec("position", "p3", True),
        _rec("position", "p3", True, failed=True),  # left out, not counted as wrong
    ]
    m = geneval_metrics(records, "geneval")
    assert m["counting"]["mean"] == 0.25 and m["counting"]["n"] == 4
    assert m["position"]["mean"] == 1.0 and m["position"]["n"] == 1
    assert m["overall"]["mean"] == pytest.approx((0.25 + 1.0) / 2)  # image mean would be 0.4
    assert m["image_accuracy"]["mean"] == pytest.approx(2 / 5)
    assert m["prompt_accuracy"]["mean"] == pytest.approx(2 / 3)  # p1 and p3 of p1, p2, p3
    lo, hi = m["overall"]["ci95"]
    assert lo < m["overall"]["mean"] < hi


def test_hps_benchmark_score_is_the_mean_of_ten_chunk_means():
    values = [float(i) for i in range(800)]
    m = chunked_mean_ci(values)
    assert m["chunks"] == 10 and m["n"] == 800
    assert m["mean"] == pytest.approx(sum(sum(values[80 * k : 80 * (k + 1)]) / 80 for k in range(10)) / 10)
    uneven = chunked_mean_ci([1.0] * 7 + [8.0] * 8)  # 15 values: chunks of 2 and 1 weigh differently from the image mean
    assert uneven["chunks"] == 10 and uneven["mean"] != pytest.approx(sum([1.0] * 7 + [8.0] * 8) / 15)
    assert chunked_mean_ci([2.0, 4.0])["chunks"] == 2


def test_hpsv2_suite_scales_by_100_and_averages_styles():
    suite = SUITES["hpsv2"]
    records = [
        {"prompt": f"{s}{i}", "metadata": {"style": s}, "scores": {"hpsv2": {"raw": 0.25 + 0.01 * k, "details": {}}}}
        for k, s in enumerate(("anime", "photo"))
        for i in range(20)
    ]
    m = suite.aggregate(suite, records, ["hpsv2"])
    assert m["anime"]["mean"] == pytest.approx(25.0) and m["photo"]["mean"] == pytest.approx(26.0)
    assert m["average"]["mean"] == pytest.approx(25.5) and "paintings" not in m


def test_t2i_compbench_says_which_categories_are_computed_with_which_model():
    notes = " ".join(SUITES["t2i-compbench"].notes)
    assert "non_spatial with clipscore@vit-b-32 (CLIP ViT-B/32)" in notes
    assert "color with t2i_blip_vqa or t2i_blip_vqa@np-rules (BLIP-VQA)" in notes
    assert "spatial with t2i_spatial@owlv2 (UniDet)" in notes and "complex with t2i_complex@owlv2" in notes
    assert "OWLv2 in place of UniDet" in notes and "not computed yet" not in notes


def _t2i_record(category, reward, raw):
    return {"prompt": "p", "metadata": {"category": category}, "scores": {reward: {"raw": raw, "details": {}}}}


def test_t2i_compbench_names_a_non_official_runtime_apart_and_averages_only_all_eight():
    suite = SUITES["t2i-compbench"]
    records = [_t2i_record("color", "t2i_blip_vqa@np-rules", v) for v in (0.2, 0.4)]
    records += [_t2i_record("non_spatial", "clipscore@vit-b-32", v) for v in (30.0, 32.0)]
    m = suite.aggregate(suite, records, ["t2i_blip_vqa@np-rules", "clipscore@vit-b-32"])
    assert set(m) == {"color@np-rules", "non_spatial"} and m["color@np-rules"]["mean"] == pytest.approx(0.3)
    assert m["non_spatial"]["mean"] == pytest.approx(0.31)  # the cosine: logits / 100
    official = [_t2i_record("color", "t2i_blip_vqa", 0.5)]
    assert set(suite.aggregate(suite, official, ["t2i_blip_vqa", "t2i_blip_vqa@np-rules"])) == {"color"}
    spatial = [_t2i_record("spatial", "t2i_spatial@owlv2", 0.75)]  # a stand-in detector: named apart even as the only model
    assert set(suite.aggregate(suite, spatial, ["t2i_spatial@owlv2"])) == {"spatial@owlv2"}
    every = [_t2i_record(c, "x", 0.5) for c in T2I_METRIC_MODELS]
    with_x = {c: (("x", 1.0),) for c in T2I_METRIC_MODELS}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("flowopd.benchmarks.suites.T2I_METRIC_MODELS", with_x)
        assert suite.aggregate(suite, every, ["x"])["mean"]["mean"] == pytest.approx(0.5)


# ------------------------------------------------------------------ jobs and plans


def test_seeds_depend_only_on_prompt_index_and_suite_seed():
    a = jobs_for([("t", "x", {}), ("t", "y", {})], 2, seed=0)
    b = jobs_for([("t", "y", {}), ("t", "x", {})], 2, seed=0)
    assert {(j.prompt, j.index, j.seed) for j in a} == {(j.prompt, j.index, j.seed) for j in b}
    assert len({j.seed for j in a}) == 4
    assert {j.seed for j in jobs_for([("t", "x", {})], 1, seed=1)}.isdisjoint({j.seed for j in a})
    again = jobs_for([("t", "x", {}), ("t", "x", {})], 1, seed=0)  # a recurring prompt continues its indices
    assert [j.index for j in again] == [0, 1] and isinstance(again[0], Job)


def test_limit_counts_prompts_per_group_on_the_real_files(data_env):
    jobs = get_suite("geneval").jobs(limit=3, seed=0)
    tags = [j.metadata["tag"] for j in jobs]
    assert len(jobs) == 6 * 3 * 4  # six tags x 3 prompts x 4 images (SPEC section 8)
    assert {t: tags.count(t) for t in set(tags)} == dict.fromkeys(
        ["single_object", "two_object", "counting", "colors", "position", "color_attr"], 12
    )


def _weights_present(root, *sets):
    """Files where the weights status looks (presence only: nothing here is loaded)."""
    for name in sets:
        for f in WEIGHT_SETS[name].files:
            (root / name).mkdir(parents=True, exist_ok=True)
            (root / name / f.split("|")[0]).write_text("{}")


def test_t2i_compbench_makes_images_only_for_categories_an_available_reward_scores(data_env, tmp_path):
    suite = get_suite("t2i-compbench")
    assert suite.jobs(limit=2, seed=0) == []
    _weights_present(tmp_path / "weights", "clip-vit-base-patch32")
    t2i = suite.jobs(limit=2, seed=0)
    assert len(t2i) == 2 * 10 and {j.metadata["category"] for j in t2i} == {"non_spatial"}
    _weights_present(tmp_path / "weights", "blip-vqa-capfilt-large")
    t2i = suite.jobs(limit=2, seed=0)
    assert len(t2i) == 4 * 2 * 10 and {j.metadata["category"] for j in t2i} == {"non_spatial", "color", "shape", "texture"}
    color = next(j for j in t2i if j.metadata["category"] == "color")
    assert suite.job_rewards(color, suite.available_rewards()) == ["t2i_blip_vqa@np-rules"]  # no spaCy wheel: named apart


def test_all_runs_what_the_model_allows_and_says_why_not_the_rest(data_env):
    plan = plan_eval(["all"], resolve_model("mini-base"))
    assert [s.name for s in plan.run] == ["mini"]
    assert set(plan.skipped) == set(SUITES) - {"mini"}
    assert "flowopd weights download pickscore_v1" in plan.skipped["pickscore"]
    assert "sd3:" in plan.skipped["ocr"]  # ocr's weights ship with rapidocr: only the model is missing
    assert "$FLOWOPD_QWENVL_JUDGE_URL" in plan.skipped["quality"]
    with pytest.raises(InputError, match="did you mean geneval"):
        plan_eval(["genevall"], resolve_model("mini-base"))


def test_the_cli_lists_skipped_suites_with_their_commands_verbatim(data_env, tmp_path, run_cli):
    """Reasons carry `[extras]` and `<placeholders>`: printed as text, not eaten as console markup."""
    res = run_cli("eval", "--model", "mini-base", "--limit", "1", "--steps", "1", "--out", str(tmp_path / "e"), "--no-report", env=data_env)
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert "pip install 'flowopd[geneval-mmdet]'" in text and "--model sd3:<hub id or folder>" in text
    assert "run `flowopd weights download pickscore_v1`" in text
    for name in set(SUITES) - {"mini"}:
        assert name in text


def test_strict_fails_on_any_skipped_suite(data_env, tmp_path):
    with pytest.raises(FlowOPDError, match="--strict: suite geneval cannot run"):
        run_eval(EvalConfig(suites=["all"], model="mini-base", strict=True), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written


def test_bad_model_specs_are_one_line_errors(tmp_path):
    for spec, fix in [("nope", "pass --model mini-base"), (str(tmp_path), "not a model folder"), ("sd3:", "needs a hub id")]:
        with pytest.raises(FlowOPDError, match=fix) as err:
            resolve_model(spec)
        assert "\n" not in str(err.value)
    with pytest.raises(FlowOPDError, match="--lora applies to an SD3 base"):
        resolve_model("mini-base", lora=tmp_path)


# ------------------------------------------------------------------ end to end


def test_mini_suite_end_to_end_then_nothing_recomputed(data_env, tmp_path, run_cli):
    out = tmp_path / "eval"
    first = run_cli("eval", "--suite", "mini", "--model", "mini-student", "--limit", "2", "--out", str(out), "--no-report", env=data_env)
    assert first.returncode == 0, first.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["model"]["label"] == "mini-student" and s["model"]["world"] == "mini"
    assert s["model"]["train_log"] and Path(s["model"]["train_log"]).is_file()  # the shipped student's training log
    n = 2 * 6 + 2 * 3  # two prompts per compose tag and per other task
    assert s["suites"]["mini"]["n_images"] == n and s["images"] == {"generated": n, "reused": 0}
    m = s["metrics"]["mini/compose/geneval_overall"]
    assert m["n"] == 12 and m["ci95"][0] <= m["mean"] <= m["ci95"][1]
    assert {"config", "seed", "versions", "git"} <= set(s["run"]) and s["run"]["config"]["sampling"]["steps"] == 20
    records = [json.loads(line) for line in (out / "mini" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == n and all((out / r["image"]).is_file() and (out / r["image"]).with_suffix(".json").is_file() for r in records)
    scored = sum(len(r["scores"]) for r in records)
    assert s["cache"] == {"hits": 0, "misses": scored, "path": str(tmp_path / "cache" / "scores.sqlite")}

    second = run_cli("eval", "--suite", "mini", "--model", "mini-student", "--limit", "2", "--out", str(out), "--no-report", env=data_env)
    assert second.returncode == 0, second.stderr
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["images"] == {"generated": 0, "reused": n}
    assert (s2["cache"]["hits"], s2["cache"]["misses"]) == (scored, 0)
    assert s2["metrics"] == s["metrics"]
    assert f"{scored} from the cache, 0 computed" in " ".join(second.stdout.split())

    other = run_cli("eval", "--suite", "mini", "--model", "mini-base", "--limit", "2", "--out", str(out), env=data_env)
    assert other.returncode != 0 and "another model" in other.stderr and "--out" in other.stderr


def test_a_killed_eval_resumes_and_matches_an_uninterrupted_one(data_env, tmp_path):
    """Kill the process once some images are on disk; the rerun makes only the rest and gives the same records."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "flowopd.cli.main", "eval", "--suite", "mini", "--model", "mini-base", "--limit", "6"]
    cmd += ["--batch-size", "4", "--out", str(out), "--no-report"]
    proc = subprocess.Popen(cmd, env=data_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "images").glob("*.json"))) < 8:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    made = len(list((out / "images").glob("*.json")))
    assert 8 <= made < 54 and not (out / "summary.json").exists()
    assert not list((out / "images").glob(".*.tmp"))  # only whole images: temp files of the killed write are gone or renamed
    resumed = run_eval(EvalConfig(suites=["mini"], model="mini-base", limit=6, batch_size=4), out)
    assert resumed["images"]["reused"] == made and resumed["images"]["generated"] == 54 - made
    fresh = run_eval(
        EvalConfig(suites=["mini"], model="mini-base", limit=6, batch_size=16), tmp_path / "fresh", cache_path=tmp_path / "other.sqlite"
    )
    assert fresh["images"]["generated"] == 54 and fresh["cache"]["hits"] == 0

    def rows(folder):
        return [json.loads(line) for line in (folder / "mini" / "samples.jsonl").read_text().splitlines()]

    assert rows(out) == rows(tmp_path / "fresh")  # same images (batching does not matter), same scores
    assert resumed["metrics"] == fresh["metrics"]


def test_a_mini_model_on_a_real_suite_runs_when_asked_with_a_warning(data_env, tmp_path, run_cli):
    """The real OCR reward (rapidocr, offline) on real prompts; the mini model does not know the words, and says so."""
    out = tmp_path / "ocr"
    res = run_cli("eval", "--suite", "ocr", "--model", "mini-base", "--limit", "2", "--out", str(out), "--no-report", env=data_env)
    assert res.returncode == 0, res.stderr
    assert "mini-world model" in res.stderr
    s = json.loads((out / "summary.json").read_text())
    assert set(s["suites"]) == {"ocr"} and s["metrics"]["ocr/accuracy"]["n"] == 2
    rec = json.loads((out / "ocr" / "samples.jsonl").read_text().splitlines()[0])
    assert rec["scores"]["ocr"]["details"]["target"]  # the quoted text of the real prompt
    assert math.isfinite(rec["scores"]["ocr"]["raw"])


def test_a_folder_whose_eval_failed_before_its_first_image_is_replaced(tmp_path):
    """Issue 15 #2: an eval that failed on a model that would not load must not block the corrected command."""
    from flowopd.benchmarks.runner import MARKER, _check_out

    out = tmp_path / "ev"
    (out / "images").mkdir(parents=True)
    (out / MARKER).write_text(json.dumps({"kind": "flowopd-eval", "config": {"model": "broken"}, "model_digest": "aaa"}))
    _check_out(out, {"model": "fixed"}, "bbb")  # nothing finished: replaced
    (out / "images" / "k.png").write_bytes(b"png")
    (out / "images" / "k.json").write_text("{}")
    with pytest.raises(InputError, match="another model"):
        _check_out(out, {"model": "fixed"}, "bbb")


def test_intervals_stay_in_the_metric_range_and_need_two_values():
    """Issue 15: [0.370, 1.005] for a 0-1 metric, quality up to 5.139, and zero-width intervals at n = 1."""
    from flowopd.benchmarks.stats import mean_ci, mean_of_means_ci, standard_error

    high = mean_ci([1.0, 0.98, 0.4, 1.0, 1.0], bounds=(0.0, 1.0))
    assert high["ci95"][1] == 1.0 and high["clipped"] and standard_error(high) == high["se"] > 0
    quality = mean_ci([5.0, 4.9, 3.0, 5.0], bounds=(1.0, 5.0))
    assert quality["ci95"][1] == 5.0 and quality["ci95"][0] > 1.0
    one = mean_ci([0.7], proportion=False, bounds=(0.0, 1.0))
    assert one["note"] == "n < 2" and all(math.isnan(x) for x in one["ci95"])
    wilson = mean_ci([1.0])  # a proportion keeps Wilson's interval, never zero-width, inside 0-1
    assert 0.0 < wilson["ci95"][0] < wilson["ci95"][1] <= 1.0
    overall = mean_of_means_ci([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert overall["ci95"][1] <= 1.0
    diffs = mean_of_means_ci([[-1.0, -1.0, 0.0], [-1.0, 0.0, -1.0]], bounds=(-1.0, 1.0))
    assert diffs["ci95"][0] >= -1.0 and diffs["mean"] < 0
