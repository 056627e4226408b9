"""Both worked plugins (examples/reward-plugin, examples/suite-plugin) installed with pip into one folder and run through
the CLI; a suite plugin that clashes or cannot be imported is reported in one line, and nothing else breaks."""

import json
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
