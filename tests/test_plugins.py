"""Both worked plugins (examples/reward-plugin, examples/suite-plugin) installed with pip into one folder and run through
the CLI; a suite plugin that clashes or cannot be imported is reported in one line, and nothing else breaks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def plugins(tmp_path_factory) -> Path:
    """The two examples installed with pip into a plain folder (their dist-info carry the entry points)."""
    target = tmp_path_factory.mktemp("plugins-site")
    for example in ("reward-plugin", "suite-plugin"):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target)]
            + [str(REPO / "examples" / example)],
            check=True,
            capture_output=True,
        )
    assert list(target.glob("flowopd_colour_suite-*.dist-info/entry_points.txt"))
    return target


def test_the_suite_plugin_is_listed_run_and_reported_beside_the_reward_plugin(plugins, tmp_path, run_cli):
    env = {"PYTHONPATH": str(plugins)}
    res = run_cli("suites", "list", "--format", "json", env=env)
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["mini-colours"]["source"] == "flowopd-colour-suite" and rows["mini-colours"]["available"] is True
    assert rows["mini"]["source"] == "builtin"
    assert "mini-colours" not in {r["name"] for r in json.loads(run_cli("suites", "list", "--format", "json").stdout)}

    out = tmp_path / "colours"
    res = run_cli("eval", "--suite", "mini-colours", "--model", "mini-base", "--limit", "1", "--out", str(out), env=env)
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "summary.json").read_text())["suites"]["mini-colours"]["metrics"]
    assert metrics["accuracy"]["n"] == 6 * 2 and 0 <= metrics["accuracy"]["mean"] <= 1  # 6 colours x 1 shape x 2 images
    assert {f"accuracy/{c}" for c in ("red", "yellow", "green", "blue", "purple", "white")} <= set(metrics)
    report = run_cli("report", str(out), env=env)
    assert report.returncode == 0, report.stderr
    assert "accuracy" in report.stdout and "mini-colours" in report.stdout

    # the reward plugin scores on the same install, through a suite built on the fly
    res = run_cli(
        "eval",
        "--prompts",
        "mini",
        "--reward",
        "colorfulness",
        "--model",
        "mini-base",
        "--limit",
        "1",
        "--out",
        str(tmp_path / "c"),
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert "colorfulness" in json.loads((tmp_path / "c" / "summary.json").read_text())["suites"]["custom"]["metrics"]


def _fake_dist(folder: Path, dist: str, entry: str) -> None:
    info = folder / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[flowopd.suites]\n{entry}\n")


def test_a_clashing_or_broken_suite_plugin_is_one_line_and_the_rest_still_works(tmp_path, run_cli):
    _fake_dist(tmp_path, "clash-suites", "mini = clash_suites:SUITE")
    _fake_dist(tmp_path, "broken-suites", "broken = no_such_module_here:SUITE")
    env = {"PYTHONPATH": str(tmp_path)}
    assert run_cli("--help", env=env).returncode == 0
    res = run_cli("suites", "list", "--format", "json", env=env)
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["mini"]["source"] == "builtin"
    assert "warning: plugin clash-suites declares suite 'mini', already registered by builtin; skipped" in res.stderr
    assert rows["broken"]["available"] is False and "from plugin broken-suites cannot be loaded" in rows["broken"]["reason"]
    res = run_cli("eval", "--suite", "broken", "--model", "mini-base", "--out", str(tmp_path / "e"), env=env)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()  # the clash's warning, then the one-line error
    assert len(lines) == 2 and lines[0].startswith("warning: plugin clash-suites") and "Traceback" not in res.stderr
    assert "suite 'broken' from plugin broken-suites cannot be loaded" in lines[1] and "uninstall broken-suites" in lines[1]
    res = run_cli("eval", "--suite", "all", "--model", "mini-base", "--limit", "1", "--out", str(tmp_path / "all"), env=env)
    assert res.returncode == 0, res.stderr  # `all` runs what it can and names the broken plugin among the skipped
    skipped = json.loads((tmp_path / "all" / "summary.json").read_text())["skipped"]
    assert "from plugin broken-suites cannot be loaded" in skipped["broken"]


ECHO_PLUGIN = '''
from flowopd.benchmarks.prompt_sets import PromptSet
from flowopd.mini.model import MiniBackbone


class EchoBackbone(MiniBackbone):
    """A backbone kind of its own: the mini model's classes under another name."""


SHAPES = PromptSet("echo-shapes", "echo/shapes.txt", "compose", "https://example.invalid/shapes.txt", 2, "two shape prompts")
'''


def test_backbone_world_and_prompt_set_plugins_load_through_their_entry_points(tmp_path, run_cli):
    """A model folder whose model_info.json names a plugin's backbone kind loads through that plugin; the world registered
    under the same kind draws its prompts; a plugin's prompt set is listed and read. An unknown kind is one line."""
    import shutil

    from flowopd.models import MINI_BASE_DIR

    site = tmp_path / "site"
    site.mkdir()
    (site / "echo_plugin.py").write_text(ECHO_PLUGIN)
    info = site / "echo_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[flowopd.backbones]\necho = echo_plugin:EchoBackbone\n\n[flowopd.worlds]\necho = flowopd.mini.world:WORLD\n\n"
        "[flowopd.prompt_sets]\necho-shapes = echo_plugin:SHAPES\nbroken-set = no_such_module_here:SET\n"
    )
    model = tmp_path / "echo-base"
    shutil.copytree(MINI_BASE_DIR, model)
    (model / "model_info.json").write_text(json.dumps({"kind": "echo"}))
    data = tmp_path / "data"
    (data / "echo").mkdir(parents=True)
    (data / "echo" / "shapes.txt").write_text("a red circle\na blue square\n")
    env = {"PYTHONPATH": str(site), "FLOWOPD_DATA_DIR": str(data)}

    code = (
        "import sys; from flowopd.models import load_backbone, prompt_world; from flowopd.mini.world import WORLD; "
        "b = load_backbone(sys.argv[1]); print(type(b).__name__, prompt_world(sys.argv[1]) is WORLD)"
    )
    res = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, env={**os.environ, **env})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["EchoBackbone", "True"]
    res = run_cli("sample", "--model", str(model), "--prompt", "a red circle", "--steps", "2", "--out", str(tmp_path / "a.png"), env=env)
    assert res.returncode == 0 and (tmp_path / "a.png").is_file(), res.stderr

    res = run_cli("prompts", "list", "--format", "json", env=env)
    assert res.returncode == 0, res.stderr
    sets = {s["name"]: s for s in json.loads(res.stdout)["sets"]}
    assert sets["echo-shapes"]["source"] == "echo-plugin" and sets["echo-shapes"]["present"] is True
    assert sets["geneval"]["source"] == "builtin" and "broken-set" not in sets
    assert "prompt set 'broken-set' from plugin echo-plugin cannot be loaded" in res.stderr  # said, and the rest listed
    res = run_cli("prompts", "show", "echo-shapes", "--format", "json", env=env)
    assert res.returncode == 0 and "a blue square" in res.stdout, res.stderr

    (model / "model_info.json").write_text(json.dumps({"kind": "ech"}))
    res = run_cli("sample", "--model", str(model), "--prompt", "a red circle", "--out", str(tmp_path / "b.png"), env=env)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == "error: unknown backbone 'ech'; did you mean echo?"
    assert not (tmp_path / "b.png").exists()
