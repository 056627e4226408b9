"""The built wheel: one flowopd namespace, the shipped base inside, and a CLI that runs from it."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASE_FILES = [
    "flowopd/mini/assets/mini-base/model_info.json",
    "flowopd/mini/assets/mini-base/transformer/config.json",
    "flowopd/mini/assets/mini-base/transformer/diffusion_pytorch_model.safetensors",
    "flowopd/mini/assets/mini-base/text_encoder/model.safetensors",
    "flowopd/mini/assets/mini-base/tokenizer/tokenizer.json",
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("flowopd-*.whl")
    return whl


def test_wheel_has_one_namespace_and_the_base(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for module in (
        "flowopd/reward_models/registry.py",
        "flowopd/benchmarks/prompts.py",
        "flowopd/teachers/__init__.py",
        "flowopd/cli/main.py",
        "flowopd/mini/world.py",
        "flowopd/trainer.py",
        "flowopd/objectives/grpo.py",
        "flowopd/configs/mini/teacher-text.yaml",
        "flowopd/configs/mini/mix-weighted.yaml",
        "flowopd/configs/mini/opd.yaml",
        "flowopd/objectives/opd.py",
        "flowopd/coldstart.py",
    ):
        assert module in names, module
    tops = {n.split("/")[0] for n in names}
    assert tops == {"flowopd", next(t for t in tops if t.endswith(".dist-info"))}, tops  # nothing generic in site-packages
    for f in BASE_FILES:
        assert f in names, f
    for task in ("compose", "text", "preference", "quality"):  # the shipped mini teachers
        assert f"flowopd/mini/assets/teachers/{task}/pytorch_lora_weights.safetensors" in names, task
    for variant in ("weighted", "alternate"):  # and the GRPO-Mix baselines
        assert f"flowopd/mini/assets/mix/{variant}/pytorch_lora_weights.safetensors" in names, variant
    for f in ("pytorch_lora_weights.safetensors", "lora_info.json", "log.jsonl"):  # the mini student and its training curves
        assert f"flowopd/mini/assets/student/{f}" in names, f
    assert "flowopd/benchmarks/baselines/flow-opd-paper.csv" in names  # `--baselines flow-opd-paper`
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "flowopd = flowopd.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_cli_runs_from_the_installed_wheel(wheel, tmp_path):
    """Install the wheel in a fresh venv that borrows our dependencies but cannot see the editable checkout."""
    import sysconfig

    import torch

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    # A path line in a .pth file adds the directory but not its own .pth files, so our editable finder stays out.
    deps = {str(Path(torch.__file__).resolve().parents[1]), sysconfig.get_paths()["purelib"]}
    (site / "borrowed-deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run(
        [python, "-c", "import flowopd.cli.main as m, flowopd.mini.world as w; print(m.__file__); print(w.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # not the repo root, whose flowopd/ folder would shadow the wheel
    )
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout  # the wheel's copy, not the checkout
    res = subprocess.run(
        [python, "-m", "flowopd.cli.main", "rewards", "list", "--format", "json"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    assert {"mini_geneval", "mini_ocr", "mini_preference", "mini_quality"} <= {r["name"] for r in json.loads(res.stdout)}
    res = subprocess.run(
        [python, "-m", "flowopd.cli.main", "sample", "-p", "a photo of a red circle", "-o", "x.png", "--steps", "2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "x.png").is_file()
    # the shipped recipes and teachers resolve inside the installed wheel
    code = "from flowopd.train_config import recipe_path; from flowopd.models import KNOWN_WEIGHTS as K; "
    code += "print(recipe_path('mini/teacher-text')); print(K['mini-teacher-text'].path, K['mini-teacher-text'].present)"
    res = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    recipe, teacher = res.stdout.split("\n")[:2]
    assert recipe.startswith(str(site)) and teacher.startswith(str(site)) and teacher.endswith("True"), res.stdout
