"""The registry: lazy built-ins, decorator checks, did-you-mean, and plugins found through real entry-point metadata."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flowopd.errors import FlowOPDError
from flowopd.reward_models import RewardModel, UnknownRewardError, load_reward, names, register_reward
from flowopd.reward_models.registry import BUILTIN

REPO = Path(__file__).resolve().parents[1]


def test_builtins_are_listed_without_importing_them():
    code = (
        "import sys; from flowopd.reward_models import names; n = names(); "
        f"print(all(k in n for k in {list(BUILTIN)!r}), 'flowopd.reward_models.mini' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"]


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownRewardError, match=r"unknown reward 'mini_ocrr'; did you mean 'mini_ocr'"):
        load_reward("mini_ocrr")
    with pytest.raises(UnknownRewardError, match="flowopd rewards list"):
        load_reward("zzzzzz")


def test_name_collisions_and_type_checks_are_errors():
    with pytest.raises(FlowOPDError, match="already registered"):

        @register_reward("mini_ocr")
        class Other(RewardModel):
            pass

    with pytest.raises(FlowOPDError, match="subclass of flowopd.reward_models.RewardModel"):
        register_reward("not_a_reward")(dict)


def test_decorator_registers_and_scores_tensors_and_pil():
    @register_reward("test_mean_red")
    class MeanRed(RewardModel):
        version = "7"

        def _score(self, images, prompts, metadata):
            return [float(np.asarray(im)[..., 0].mean()) for im in images], [{} for _ in images]

    reward = load_reward("test_mean_red")
    assert reward.name == "test_mean_red" and "test_mean_red" in names()
    x = torch.zeros(2, 3, 4, 4)
    x[1, 0] = 1.0
    s = reward.score(x, ["a", "b"])
    assert s.raw.tolist() == [0.0, 255.0]
    from PIL import Image

    s2 = reward.score([Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 0))], ["a", "b"])
    assert s2.raw.tolist() == [255.0, 0.0]  # ragged sizes are fine
    with pytest.raises(ValueError, match="one prompt per image"):
        reward.score(x, ["only one"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reward.score(x * 255, ["a", "b"])


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """The worked example installed with pip into a plain folder: its dist-info carries the entry point."""
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO / "examples" / "reward-plugin"),
        ],
        check=True,
        capture_output=True,
    )
    assert list(target.glob("flowopd_colorfulness-*.dist-info/entry_points.txt"))
    return target


def test_plugin_is_discovered_through_entry_point_metadata(plugin_path, run_cli):
    res = run_cli("rewards", "list", "--format", "json", env={"PYTHONPATH": str(plugin_path)})
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["colorfulness"]["source"] == "flowopd-colorfulness"
    assert rows["colorfulness"]["available"] is True and rows["colorfulness"]["reason"] is None
    assert rows["mini_ocr"]["source"] == "builtin"
    assert set(rows["mini_ocr"]) >= {"name", "source", "available", "reason"}
    # without the path the plugin is gone: nothing was registered by hand
    res = run_cli("rewards", "list", "--format", "json")
    assert "colorfulness" not in {r["name"] for r in json.loads(res.stdout)}


def test_plugin_scores_through_the_cli(plugin_path, tmp_path, run_cli):
    from PIL import Image

    Image.new("RGB", (16, 16), (0, 0, 0)).save(tmp_path / "grey.png")
    arr = np.zeros((16, 16, 3), dtype=np.uint8)
    arr[:, :8] = (255, 0, 0)
    arr[:, 8:] = (0, 0, 255)
    Image.fromarray(arr).save(tmp_path / "vivid.png")
    res = run_cli(
        "rewards",
        "score",
        "colorfulness",
        str(tmp_path / "grey.png"),
        str(tmp_path / "vivid.png"),
        "--prompt",
        "x",
        "--format",
        "json",
        env={"PYTHONPATH": str(plugin_path)},
    )
    assert res.returncode == 0, res.stderr
    grey, vivid = json.loads(res.stdout)
    assert grey["raw"] == 0.0 and vivid["raw"] > 100
    assert vivid["normalized"] == pytest.approx(vivid["raw"] / 100)


def fake_dist(folder: Path, dist: str, entry: str) -> Path:
    """A bare dist-info declaring one reward entry point: all that importlib.metadata needs to find it."""
    info = folder / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[flowopd.reward_models]\n{entry}\n")
    return folder


def test_plugin_that_reuses_a_builtin_name_is_skipped(tmp_path, run_cli):
    fake_dist(tmp_path, "evil-plugin", "mini_ocr = os:getcwd")
    res = run_cli("rewards", "list", "--format", "json", env={"PYTHONPATH": str(tmp_path)})
    assert res.returncode == 0
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["mini_ocr"]["source"] == "builtin"
    assert "evil-plugin declares reward 'mini_ocr'" in res.stderr


def test_broken_plugin_is_listed_as_unavailable(tmp_path, run_cli):
    fake_dist(tmp_path, "broken-plugin", "broken = no_such_module_xyz:Reward")
    res = run_cli("rewards", "list", "--format", "json", env={"PYTHONPATH": str(tmp_path)})
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["broken"]["available"] is False and "no_such_module_xyz" in rows["broken"]["reason"]
    assert rows["mini_geneval"]["available"] is True
