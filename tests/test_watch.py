"""Evaluation during training (``eval_every``) and the reward-hacking alarms (flowopd/watch.py, issue 17)."""

import json
import warnings

import numpy as np
import pytest
from test_trainer import tiny_config

from flowopd.errors import ConfigError, RunWarning
from flowopd.trainer import Trainer
from flowopd.watch import drift_alarms, hacking_alarms, image_statistics, paired_change

EVAL = {"prompts": "mini", "rewards": ["mini_geneval", "mini_ocr", "mini_preference"], "limit": 1, "batch_size": 8}


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# every drift alarms at this limit (a warning: the run goes on), so one watched run shows the alarms in its log and report
WATCHED = {**EVAL, "alarms": {"image_drift": 1e-9}}


@pytest.fixture(scope="module")
def watched(tiny_policy_dir, tmp_path_factory):
    """One run of 2 steps evaluated before and after each step, logged to wandb offline too."""
    import os

    pytest.importorskip("wandb")
    out = tmp_path_factory.mktemp("watched") / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        trainer = Trainer(tiny_config(tiny_policy_dir, eval_every=1, eval=WATCHED, trackers=["wandb"]), out)
        trainer.train()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return out, trainer


def test_evaluating_during_training_changes_nothing_the_run_learns(tiny_policy_dir, tmp_path, watched):
    """The same LoRA bytes with and without evaluations (and their alarms, and wandb); one evaluation folder per due step,
    before the first step included, each a normal evaluation run; its means and cost in the step's log line."""
    out, trainer = watched
    assert set(trainer.watch.rewards) == {"mini_geneval", "mini_ocr", "mini_preference"}  # loaded once, kept for the next
    plain = Trainer(tiny_config(tiny_policy_dir), tmp_path / "plain").train()
    lora = "pytorch_lora_weights.safetensors"
    assert (plain / lora).read_bytes() == (out / "lora" / lora).read_bytes()
    evals = out / "evals"
    steps = ["step-000000", "step-000001", "step-000002"]
    assert sorted(p.name for p in evals.glob("step-*")) == steps and sorted(p.name for p in (evals / "loras").iterdir()) == steps
    for folder in evals.glob("step-*"):
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["metrics"]["custom/mini_ocr"]["n"] >= 1 and summary["kind"] == "flowopd-eval"
        rows = [json.loads(line) for line in (folder / "custom" / "samples.jsonl").read_text().splitlines()]
        assert {r["task"] for r in rows if "mini_geneval" in r["scores"]} == {"compose", "quality"}  # where GenEval applies
        assert {r["task"] for r in rows if "mini_ocr" in r["scores"]} == {"text"}
        record = json.loads((folder / "watch.json").read_text())
        assert set(record["image_stats"]) == {"brightness", "saturation", "flat_fraction", "jpeg_bytes"}
        assert json.loads((evals / "loras" / folder.name / "lora_info.json").read_text())["step"] == int(folder.name[-6:])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [0, 1, 2]
    assert all("eval/custom/mini_ocr" in row and row["eval/seconds"] >= 0 and "alarms" in row for row in log)
    assert "reward" in log[1] and "reward" not in log[0] and log[0]["alarms"] == 0 and log[1]["alarms"] >= 1
    # the same images at every evaluation: the seeds do not move, so the curve is paired
    seeds = [
        sorted(json.loads(line)["seed"] for line in (f / "custom" / "samples.jsonl").read_text().splitlines())
        for f in sorted(evals.glob("step-*"))
    ]
    assert seeds[0] == seeds[1] == seeds[2]


def test_a_resumed_run_reads_finished_evaluations_back(tiny_policy_dir, tmp_path, watched):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(watched[0], out)
    shutil.rmtree(out / "checkpoints" / "step-000002")  # as if killed after step 2's evaluation, before its checkpoint
    before = _files(out / "evals")
    trainer = Trainer(tiny_config(tiny_policy_dir, eval_every=1, eval=WATCHED, steps=3, trackers=[]), out, resume=True)
    trainer.train()
    after = _files(out / "evals")
    assert {k: v for k, v in after.items() if k in before} == before  # step 2's evaluation was read back, not redone
    assert any(str(k).startswith("step-000003") for k in after)
    assert {step for step, _ in trainer.watch.alarms} == {2, 3}  # step 2's alarms come back with it
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [0, 1, 2, 3] and "eval/custom/mini_ocr" in log[2]


def test_bad_eval_sections_are_refused_before_training(tiny_policy_dir, tmp_path):
    with pytest.raises(ConfigError, match="eval: unknown suite 'minii'; did you mean mini"):
        Trainer(tiny_config(tiny_policy_dir, eval_every=1, eval={"suites": ["minii"]}), tmp_path / "a")
    with pytest.raises(ConfigError, match="eval: unknown reward 'mini_ocrr'; did you mean 'mini_ocr'"):
        Trainer(tiny_config(tiny_policy_dir, eval_every=1, eval={"prompts": "mini", "rewards": ["mini_ocrr"]}), tmp_path / "b")
    with pytest.raises(ConfigError, match="eval: unknown reward 'gold_x'"):
        Trainer(tiny_config(tiny_policy_dir, eval_every=1, eval={"alarms": {"gold": ["gold_x"]}}), tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(tiny_config(tiny_policy_dir, eval_every=5, eval=EVAL), tmp_path / "d")
    assert any(issubclass(w.category, RunWarning) and "eval_every 5 is more than the run's 2 steps" in str(w.message) for w in caught)


def _scores(values: dict[str, list[float]]) -> dict[tuple, dict[str, float]]:
    n = len(next(iter(values.values())))
    return {("s", f"p{i}", 0, i): {name: v[i] for name, v in values.items()} for i in range(n)}


def test_proxy_up_gold_down_alarms_only_on_a_clear_fall():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, 64)
    before = _scores({"bright": list(base), "ocr": list(base), "pref": list(base)})
    hacked = _scores({"bright": list(base + 0.3), "ocr": list(base - 0.2 + rng.normal(0, 0.05, 64)), "pref": list(base)})
    alarms = hacking_alarms(before, hacked, ["bright"], ["ocr", "pref"], margin=0.05)
    assert len(alarms) == 1 and alarms[0].startswith("bright rose +0.300 while ocr fell -0.19") and "(n=64)" in alarms[0]
    # gold within the margin, gold noise with an interval across 0, or no proxy rise: silent
    small = _scores({"bright": list(base + 0.3), "ocr": list(base - 0.03), "pref": list(base)})
    noisy = _scores({"bright": list(base + 0.3), "ocr": list(base - 0.06 + rng.normal(0, 0.6, 64)), "pref": list(base)})
    flat = _scores({"bright": list(base - 0.01), "ocr": list(base - 0.3), "pref": list(base)})
    for after in (small, noisy, flat):
        assert hacking_alarms(before, after, ["bright"], ["ocr", "pref"], margin=0.05) == []
    mean, half, n = paired_change(before, hacked, "ocr")
    assert n == 64 and mean == pytest.approx(-0.2, abs=0.02) and 0 < half < 0.05


def test_image_statistics_and_drift():
    flat = np.full((16, 16, 3), 128, dtype=np.uint8)
    white = np.full((16, 16, 3), 255, dtype=np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    s_flat, s_white, s_noise = image_statistics([flat]), image_statistics([white]), image_statistics([noise])
    assert s_flat["flat_fraction"] == 1.0 and s_flat["jpeg_bytes"] == 0.0 and s_flat["saturation"] == 0.0
    assert s_white["brightness"] == 1.0 and s_noise["flat_fraction"] < 0.05 and s_noise["jpeg_bytes"] > 100
    assert s_noise["saturation"] > 0.3
    assert drift_alarms(s_flat, s_white, 0.2) == ["images drifted: brightness 0.502 -> 1"]
    assert drift_alarms(s_flat, s_flat, 0.2) == [] and drift_alarms(s_flat, s_white, 0.0) == []
    assert any("jpeg_bytes" in m for m in drift_alarms(s_white, s_noise, 0.2))


def test_wandb_offline_gets_the_config_versions_git_and_every_logged_key(watched):
    out, _ = watched
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    from wandb_records import read_offline_run

    page = read_offline_run(runs[0])
    assert page["config"]["sampler.steps"] == 4 and page["config"]["run.versions.torch"] and "run.git" in page["config"]
    assert [row["_step"] for row in page["history"]] == [0, 1, 2]
    assert {"reward", "kl", "eval/custom/mini_ocr", "eval/image/brightness", "alarms"} <= set(page["summary"])
    assert page["history"][2]["eval/custom/mini_ocr"] == pytest.approx(page["summary"]["eval/custom/mini_ocr"])


def test_wandb_asked_for_but_not_installed_is_one_line(tiny_policy_dir, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"trackers: wandb is not installed; pip install 'flowopd\[wandb\]'"):
        Trainer(tiny_config(tiny_policy_dir, trackers=["wandb"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_on_alarm_stop_ends_the_run_at_the_alarm_with_its_lora_and_a_checkpoint(tiny_policy_dir, tmp_path):
    """Any movement of the images alarms at this drift limit: the run stops at its first evaluation after the start."""
    touchy = {**EVAL, "alarms": {"image_drift": 1e-9, "on_alarm": "stop"}}
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(tiny_policy_dir, steps=3, eval_every=1, eval=touchy), out)
    lora = trainer.train()
    assert trainer.watch.stop and trainer.step == 1
    (step, message), *_ = trainer.watch.alarms
    assert step == 1 and message.startswith("images drifted: ") and message.endswith("since step-000000")
    assert json.loads((lora / "lora_info.json").read_text())["step"] == 1 and (out / "checkpoints" / "step-000001").is_dir()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [0, 1] and log[1]["alarms"] >= 1 and log[0]["alarms"] == 0


def test_the_report_of_a_watched_run_draws_its_curves_with_the_alarms(watched, tmp_path):
    from flowopd.benchmarks.html_report import render_report
    from flowopd.benchmarks.report import build_report, to_markdown

    out, _ = watched
    lb = build_report([out])  # a training run folder: its last evaluation, with the curves from its log
    assert lb.runs[0].label == "run@step-000002"
    md = to_markdown(lb, tmp_path / "report.md")
    charts = sorted(p.name for p in tmp_path.glob("report-curves-*.svg"))
    assert charts == [f"report-curves-run-step-000002-{g}.svg" for g in ("clip-fraction", "held-out", "images", "kl", "loss", "reward")]
    assert "![held-out](report-curves-run-step-000002-held-out.svg)" in md and "- alarm at step 1: images drifted" in md
    held_out = (tmp_path / "report-curves-run-step-000002-held-out.svg").read_text()
    assert held_out.startswith('<svg xmlns="http://www.w3.org/2000/svg"') and "custom/mini_ocr" in held_out
    assert held_out.count('stroke-dasharray="4 3"') == 2  # the alarms of steps 1 and 2, one line a step
    page = render_report(lb)
    assert "Training curves: run@step-000002" in page and "step 2: images drifted" in page


@pytest.mark.slow
def test_the_alarms_fire_on_a_reward_made_to_be_hacked(tmp_path):
    """Issue 17: `bright` (the mean pixel value) trained with the hack-prone recipe of tests/bench/watch_demo.py on the mini
    world: the image statistics drift first, then `bright` rises while the gold judges fall (about 9 min on 2 cores; the
    shipped text teacher's recipe, 60 steps, stays silent: docs/watching.md)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "bench"))
    import watch_demo

    watch_demo.register_bright()
    trainer = Trainer(watch_demo.config("hack", steps=16, every=4, threads=0, trackers=[]), tmp_path / "hack")
    trainer.train()
    alarms = trainer.watch.alarms
    assert any(step <= 8 and message.startswith("images drifted") for step, message in alarms), alarms
    assert any(step <= 16 and message.startswith("bright rose") for step, message in alarms), alarms
