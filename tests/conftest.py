import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _private_score_cache(tmp_path_factory):
    """Evaluations in tests (and the CLI subprocesses they start) cache scores in a temp dir, never in ~/.cache."""
    os.environ["FLOWOPD_CACHE_DIR"] = str(tmp_path_factory.mktemp("score-cache"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only reference prompt files (../shared/data); skipped where a checkout has none beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-weight mini model saved with save_pretrained, to be loaded back through the real code."""
    from flowopd.mini.model import MiniBackbone

    path = tmp_path_factory.mktemp("tiny-mini")
    MiniBackbone.random(seed=1).save_pretrained(path, extra={"note": "random weights for tests"})
    return path


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory) -> Path:
    """Like ``tiny_model_dir`` but with a non-zero output layer, so gradients reach a LoRA (training tests)."""
    from flowopd.mini.model import MiniBackbone

    path = tmp_path_factory.mktemp("tiny-policy")
    model = MiniBackbone.random(seed=2)
    torch.manual_seed(3)
    torch.nn.init.normal_(model.transformer.proj_out.weight, std=0.05)
    model.save_pretrained(path, extra={"note": "random weights for training tests"})
    return path


@pytest.fixture()
def run_cli():
    """Run the installed CLI in a subprocess; returns CompletedProcess (stdout, stderr, returncode)."""
    import subprocess

    def run(*args: str, env: dict | None = None, cwd: Path | None = None):
        full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "flowopd.cli.main", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=600
        )

    return run


@pytest.fixture(scope="session")
def tiny_teachers(tiny_policy_dir, tmp_path_factory) -> dict[str, Path]:
    """Three random rank-4 teacher LoRAs on ``tiny_policy_dir`` (compose, text, quality), saved as `flowopd train` saves them."""
    from flowopd.lora import add_lora, save_lora
    from flowopd.mini.model import MiniBackbone
    from flowopd.models import model_digest

    root = tmp_path_factory.mktemp("tiny-teachers")
    out = {}
    for i, task in enumerate(("compose", "text", "quality")):
        model = MiniBackbone.from_pretrained(tiny_policy_dir)
        torch.manual_seed(10 + i)
        add_lora(model.transformer, 4, 8)
        with torch.no_grad():
            for name, p in model.transformer.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.05)
        info = {
            "kind": "flowopd-lora",
            "name": f"teacher-{task}",
            "base": str(tiny_policy_dir),
            "base_digest": model_digest(str(tiny_policy_dir)),
        }
        save_lora(model.transformer, root / task, info)
        out[task] = root / task
    return out
