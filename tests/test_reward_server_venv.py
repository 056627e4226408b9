"""Issue 21's hard case in miniature: a reward served from a second virtual environment (its own site-packages, flowopd
installed there from this checkout as a wheel, not the editable install) to a client in this one. The official mmdet
`geneval` follows the same recipe (docs/rewards.md); mmdet itself is too slow to build here, so the served reward is the
mini world's OCR, which runs for real.

Slow (a venv, torch and flowopd's dependencies installed into it: ~2-4 min from the local wheel cache):
    python -m pytest -q -m slow tests/test_reward_server_venv.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")

REPO = Path(__file__).resolve().parents[1]


def _health(url: str) -> dict | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/health", timeout=2) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


def _side_env(root: Path) -> Path:
    """A new venv with torch (the pinned CPU build), then flowopd[serve] built from this checkout, under the same
    constraints file as the main environment; its interpreter."""
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    python = root / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=900)
    subprocess.run([*pip, "-c", str(REPO / "constraints.txt"), f"{REPO}[serve]"], check=True, timeout=900)
    return python


@pytest.mark.slow
def test_a_reward_served_from_a_second_venv_scores_as_in_process(tmp_path):
    from test_reward_server import _free_port, text_batch

    from flowopd.mini.rewards import MiniOCR
    from flowopd.reward_models import load_reward

    python = _side_env(tmp_path / "reward-env")
    where = subprocess.run(
        [str(python), "-c", "import flowopd, sys; print(flowopd.__file__); print(sys.prefix)"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert not where[0].startswith(str(REPO)) and where[1] == str(tmp_path / "reward-env")  # its own install, not ours

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWOPD_")} | {"OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [str(python), "-m", "flowopd.cli.main", "rewards", "serve", "mini_ocr", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while (health := _health(url)) is None:
            assert server.poll() is None, server.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the served reward did not answer /health in 120 s"
            time.sleep(0.2)
        assert health["name"] == "mini_ocr" and health["version"] == MiniOCR.version and health["ready"]

        images, prompts = text_batch(12, seed=3)
        want = MiniOCR().score(images, prompts)
        got = load_reward("remote:mini_ocr", url=url).score(images, prompts)
        assert torch.equal(got.raw, want.raw) and torch.equal(got.normalized, want.normalized)
        assert got.details == want.details
    finally:
        server.terminate()
        server.wait(timeout=30)
