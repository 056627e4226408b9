"""Smoke check: the SD3.5-M benchmark script (tests/bench/sd35m_bench.py) still runs end to end at its small size on CPU."""

import importlib.util
import json
import math
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "bench" / "sd35m_bench.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("sd35m_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sd35m_bench_small_runs_on_cpu(tmp_path, capsys):
    bench = _load_bench()
    out = tmp_path / "figures.json"
    argv = ["--size", "small", "--device", "cpu", "--batch", "2", "--steps", "2", "--teachers", "2", "--warmup", "0"]
    figures = bench.main([*argv, "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(figures))
    assert figures["dtype"] == "fp32" and figures["trained_steps"] == 1
    for phase in ("rollout", "grpo_update", "opd_signal", "opd_update", "opd_total"):
        p = figures["phases"][phase]
        assert p["seconds"] > 0 and p["tflop"] > 0 and math.isfinite(p["tflops_per_s"]) and p["peak_memory_GiB"] > 0
    assert figures["losses_finite"]
    mem = figures["param_memory"]
    assert mem["measured"]["separate_GiB"] > mem["measured"]["adapters_GiB"]
    assert 2000 < mem["sd35m_bf16_arithmetic"]["base_params_M"] < 2600  # SD3.5-M's transformer: ~2.24B parameters
    assert "GRPO update" in capsys.readouterr().out
