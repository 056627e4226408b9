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
        f"print(all(k in n for k in {list(BUILTIN)!r}), 'flowopd.mini.rewards' in sys.modules)"
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


BAD_PLUGINS = """
from flowopd.reward_models import RewardModel


class _Base(RewardModel):
    version = "1"
    higher_is_better = True


class Short(_Base):
    def _score(self, images, prompts, metadata):
        return [1.0], [{}]


class Strings(_Base):
    def _score(self, images, prompts, metadata):
        return ["high"] * len(images), [{} for _ in images]


class Raising(_Base):
    def _score(self, images, prompts, metadata):
        raise ZeroDivisionError("oops")


class BadInit(_Base):
    def __init__(self, **kwargs):
        raise RuntimeError("no config file")


class AllFail(_Base):
    def _score(self, images, prompts, metadata):
        return [None] * len(images), [{"error": "the server answered garbage"} for _ in images]
"""


@pytest.fixture()
def bad_plugins(tmp_path):
    (tmp_path / "badplug.py").write_text(BAD_PLUGINS)
    entries = ["short = badplug:Short", "strings = badplug:Strings", "raising = badplug:Raising", "bad_init = badplug:BadInit"]
    entries += ["all_fail = badplug:AllFail", "mini_ocr = badplug:Short"]
    fake_dist(tmp_path, "bad-plugins", "\n".join(entries))
    from PIL import Image

    for k in range(2):
        Image.new("RGB", (32, 32), (10 * k, 0, 0)).save(tmp_path / f"{k}.png")
    return tmp_path


@pytest.mark.parametrize(
    "name, message",
    [
        ("short", "reward 'short' returned 1 scores and 1 details for 2 images; its _score must return"),
        ("strings", "reward 'strings' returned a str score ('high')"),
        ("raising", "reward 'raising' failed while scoring: ZeroDivisionError: oops"),
        ("bad_init", "reward 'bad_init' (from bad-plugins) failed to start: RuntimeError: no config file"),
        ("all_fail", "every image failed to score with all_fail: the server answered garbage"),
    ],
)
def test_a_misbehaving_plugin_is_one_line_naming_it_and_a_nonzero_exit(bad_plugins, run_cli, name, message):
    """Issue 15 #5/#6: 2 images in used to give 1 row and exit 0; all failed exited 0; raises did not name the reward."""
    imgs = [str(bad_plugins / f"{k}.png") for k in range(2)]
    res = run_cli("rewards", "score", name, *imgs, "--prompt", "a red square", env={"PYTHONPATH": str(bad_plugins)})
    assert res.returncode == 1, res.stdout
    assert message in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_plugin_warnings_are_said_by_any_command_and_a_failing_constructor_is_unavailable(bad_plugins, run_cli):
    res = run_cli(
        "rewards", "score", "mini_ocr", str(bad_plugins / "0.png"), "--prompt", 'the text "1"', env={"PYTHONPATH": str(bad_plugins)}
    )
    assert res.returncode == 0
    assert "warning: plugin bad-plugins declares reward 'mini_ocr', already registered by builtin; skipped" in res.stderr
    res = run_cli("rewards", "list", "--format", "json", env={"PYTHONPATH": str(bad_plugins)})
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["bad_init"]["available"] is False and "failed to start: RuntimeError: no config file" in rows["bad_init"]["reason"]
    assert rows["short"]["available"] is True


def test_training_names_the_first_scoring_error_when_every_image_failed(tiny_policy_dir, tmp_path):
    """Issue 15 #5: the trainer said 'see the reward's errors above' with nothing above."""
    from test_trainer import tiny_config

    from flowopd.errors import FlowOPDError
    from flowopd.trainer import Trainer

    @register_reward("test_always_fails")
    class AlwaysFails(RewardModel):
        version = "1"

        def _score(self, images, prompts, metadata):
            return [None] * len(images), [{"error": "HTTP 502 from the judge"} for _ in images]

    cfg = tiny_config(tiny_policy_dir, rewards={"test_always_fails": 1.0}, steps=1)
    with pytest.raises(FlowOPDError, match="every image of step 1 failed to score; the first: test_always_fails: HTTP 502 from the judge"):
        Trainer(cfg, tmp_path / "run").train()


def test_a_plugin_reward_is_evaluated_on_prompts_without_writing_a_suite(tmp_path, run_cli):
    """Issue 15: `--suite brightness` was an unknown suite and nothing said how to evaluate a plugin reward."""
    (tmp_path / "brightplug.py").write_text(
        "from flowopd.reward_models import RewardModel\n\n\n"
        "class Brightness(RewardModel):\n"
        "    raw_range = (0.0, 1.0)\n\n"
        "    def _score(self, images, prompts, metadata):\n"
        "        return [float(im.mean()) / 255 for im in images], [{} for _ in images]\n"
    )
    fake_dist(tmp_path, "bright-plugin", "brightness = brightplug:Brightness")
    prompts = tmp_path / "p.txt"
    prompts.write_text('a red circle\na white square on a black background\nthe text "42"\n')
    out = tmp_path / "ev"
    args = ("eval", "--model", "mini-base", "--prompts", str(prompts), "--reward", "brightness", "--out", str(out), "--no-report")
    res = run_cli(*args, env={"PYTHONPATH": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "summary.json").read_text())["suites"]["custom"]["metrics"]
    assert metrics["brightness"]["n"] == 3 and 0.0 <= metrics["brightness"]["ci95"][0] <= metrics["brightness"]["mean"] <= 1.0
    rows = [json.loads(line) for line in (out / "custom" / "samples.jsonl").read_text().splitlines()]
    assert sorted(r["prompt"] for r in rows) == sorted(prompts.read_text().splitlines())
    res = run_cli("eval", "--model", "mini-base", "--prompts", str(prompts), "--reward", "brightnes", env={"PYTHONPATH": str(tmp_path)})
    assert res.returncode == 1 and "unknown reward 'brightnes'; did you mean 'brightness'?" in res.stderr
    res = run_cli("eval", "--suite", "mini", "--prompts", str(prompts), "--reward", "brightness", env={"PYTHONPATH": str(tmp_path)})
    assert res.returncode == 1 and "pass either --suite or --prompts with --reward" in res.stderr
