"""Two processes on CPU (gloo through `accelerate launch`): identical weights, and group statistics over whole groups."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flowopd.objectives.grpo import group_advantages

WORKER = Path(__file__).with_name("distributed_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(nproc: int, model: Path, out: Path, steps: int, *extra: str) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(nproc), "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    cmd += ["--multi_gpu"] if nproc > 1 else []
    cmd += [str(WORKER), str(model), str(out), str(steps), *extra]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def test_two_processes_agree_with_each_other_and_with_one(tiny_policy_dir, tmp_path):
    two = _launch(2, tiny_policy_dir, tmp_path / "two", steps=2)
    assert [r["world"] for r in two] == [2, 2]
    # 1. the weights stay identical across ranks after every update (DDP averaged the gradients)
    assert two[0]["lora_sha"] == two[1]["lora_sha"] and two[0]["lora_sum"] > 0
    group_size = 4
    for step in range(2):
        r0, r1 = two[0]["steps"][step], two[1]["steps"][step]
        # samples interleave over ranks, so every group of 4 has 2 samples on each rank
        assert r0["local"] == [0, 2, 4, 6] and r1["local"] == [1, 3, 5, 7]
        rewards = torch.tensor(r0["rewards"])
        assert r0["rewards"] == r1["rewards"]  # both ranks gathered the same global rewards...
        assert [rewards[i].item() for i in r1["local"]] == r1["reward_local"]  # ...in global sample order
        # 2. advantages were computed over whole groups that straddle the ranks
        expected = group_advantages(rewards, torch.arange(8) // group_size, "global")
        torch.testing.assert_close(torch.tensor(r0["advantages"]), expected)
        assert r0["advantages"] == r1["advantages"]
    # 3. a sample is the same whatever the process count: one process draws the same prompts and rewards at step 1
    one = _launch(1, tiny_policy_dir, tmp_path / "one", steps=1)
    assert one[0]["steps"][0]["rewards"] == two[0]["steps"][0]["rewards"]
    assert one[0]["steps"][0]["prompts"][0::2] == two[0]["steps"][0]["prompts"]


def test_opd_on_two_processes_routes_and_gathers_like_one(tiny_policy_dir, tiny_teachers, tmp_path):
    two = _launch(2, tiny_policy_dir, tmp_path / "two", 2, str(tiny_teachers["compose"].parent))
    assert two[0]["lora_sha"] == two[1]["lora_sha"] and two[0]["lora_sum"] > 0  # one cold start, one set of weights
    for step in range(2):
        r0, r1 = two[0]["steps"][step], two[1]["steps"][step]
        assert r0["local"] == [0, 2, 4, 6] and r1["local"] == [1, 3, 5, 7]
        assert r0["kl"] == r1["kl"]  # every rank gathered the same per-sample, per-step KLs to the routed teachers
    one = _launch(1, tiny_policy_dir, tmp_path / "one", 1, str(tiny_teachers["compose"].parent))
    # the same samples, routed to the same teachers, whatever the process count (kl_pg's leave-one-out spans the ranks)
    torch.testing.assert_close(torch.tensor(one[0]["steps"][0]["kl"]), torch.tensor(two[0]["steps"][0]["kl"]), rtol=1e-4, atol=1e-7)
    adv_one = torch.tensor(one[0]["steps"][0]["advantages"])
    adv_two = torch.zeros_like(adv_one)
    for r in two:
        adv_two[r["steps"][0]["local"]] = torch.tensor(r["steps"][0]["advantages"])
    torch.testing.assert_close(adv_one, adv_two, rtol=1e-4, atol=1e-7)


def test_nft_on_two_processes_draws_each_samples_times_and_updates_like_one(tiny_policy_dir, tmp_path):
    two = _launch(2, tiny_policy_dir, tmp_path / "two", 1, "nft")
    assert two[0]["lora_sha"] == two[1]["lora_sha"] and two[0]["lora_sum"] > 0
    one = _launch(1, tiny_policy_dir, tmp_path / "one", 1, "nft")
    times = torch.zeros(8, 3)
    for r in two:  # a sample's training times come from (seed, step, sample), not from its process
        times[r["steps"][0]["local"]] = torch.tensor(r["steps"][0]["t"])
    assert torch.equal(times, torch.tensor(one[0]["steps"][0]["t"]))
    assert one[0]["steps"][0]["rewards"] == two[0]["steps"][0]["rewards"]
    # the loss over the gathered batch is one process's (the same x0, times, noise and r per sample). The weights after
    # AdamW's first step are not compared: at theta = theta_old with the tiny model's equal rewards (r = 1/2) the gradient
    # is float noise (~1e-9), and Adam divides by the gradient's own size
    m1, m2 = one[0]["steps"][0]["metrics"], two[0]["steps"][0]["metrics"]
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-5) and m1["grad_norm"] == pytest.approx(m2["grad_norm"], abs=1e-6)


def test_evaluations_during_training_split_over_two_processes_like_one(tiny_policy_dir, tmp_path):
    """eval_every under accelerate: every process samples its share, the main one merges; training goes on in step."""
    two = _launch(2, tiny_policy_dir, tmp_path / "two", 2, "watch")
    assert two[0]["lora_sha"] == two[1]["lora_sha"]
    _launch(1, tiny_policy_dir, tmp_path / "one", 2, "watch")
    summaries = {}
    for n in ("one", "two"):
        evals = tmp_path / n / "run" / "evals"
        assert sorted(p.name for p in evals.glob("step-*")) == ["step-000000", "step-000001", "step-000002"]
        summaries[n] = json.loads((evals / "step-000000" / "summary.json").read_text())
    # before the first step both evaluate the same weights on the same prompts and seeds: the same numbers
    assert summaries["two"]["metrics"] == summaries["one"]["metrics"] and summaries["two"]["run"]["config"]["processes"] == 2
