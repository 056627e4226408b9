"""Smoke checks of the GPU check (tests/bench/gpu_check.py): its small size runs every backbone on the CPU through the
real backbone classes, and its full size skips cleanly without a GPU."""

import importlib.util
import json
import math
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "bench" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_small_size_runs_every_backbone_on_cpu(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    figures = _load().main(
        ["--size", "small", "--device", "cpu", "--batch", "2", "--micro-batch", "2", "--warmup", "0", "--json", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(figures))
    assert sorted(figures["models"]) == ["flux", "qwen-image", "sd35m"] and not figures["skipped"]
    for name, f in figures["models"].items():
        assert f["losses_finite"], name
        assert f["cfg_rows"] == (1 if name == "flux" else 2)
        flops = f["flops_per_sample_T"]
        assert flops["forward"] > flops["forward_reference"] > 0 and flops["backward"] > 0  # the LoRA adds to the forward
        for phase in ("rollout", "grpo_update", "opd_signal", "opd_update"):
            p = f["phases"][phase]
            assert p["seconds"] > 0 and p["tflop"] > 0 and math.isfinite(p["tflops_per_s"]) and p["mfu"] is None
    assert "Qwen-Image (small config)" in capsys.readouterr().out


def test_full_size_without_a_gpu_is_a_clear_skip(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    figures = _load().main(["--device", "cpu", "--json", str(out)])
    assert figures["models"] == {} and "no CUDA device" in figures["skipped"]["all"]
    assert json.loads(out.read_text())["skipped"] == figures["skipped"]
    assert capsys.readouterr().out.startswith("skipped: no CUDA device")
