"""Rows locked to their protocol (issue 17 #5): recorded per suite, refused when mixed, printed when allowed."""

import json

import pytest

from flowopd.benchmarks.protocol import differences, protocol_of
from flowopd.benchmarks.report import build_report
from flowopd.errors import InputError


@pytest.fixture(scope="module")
def two_cfgs(tmp_path_factory):
    """mini-base evaluated twice on one prompt a group: the official CFG 3 and CFG 4.5."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("protocols")
    for name, cfg in (("cfg3", "3.0"), ("cfg45", "4.5")):
        cmd = [sys.executable, "-m", "flowopd.cli.main", "eval", "--suite", "mini", "--model", "mini-base", "--limit", "1"]
        subprocess.run([*cmd, "--cfg", cfg, "--out", str(root / name), "--no-report"], check=True, capture_output=True)
    return root / "cfg3", root / "cfg45"


def test_every_suite_records_its_protocol_against_the_official_one(two_cfgs):
    official, other = (json.loads((p / "summary.json").read_text())["suites"]["mini"]["protocol"] for p in two_cfgs)
    assert official["official"] is True and official["deviations"] == [] and official["cfg"] == 3.0
    assert official["sampler"] == "ode-euler" and official["steps"] == 20 and official["resolution"] == 32
    assert official["spacing"] == "sd3" and official["shift_terminal"] is None  # the mini's sampling names none: SD3's
    assert official["images_per_prompt"] == 1 and official["seed"] == 0 and official["seed_rule"].startswith("sha256")
    assert set(official["reward_versions"]) >= {"mini_geneval", "mini_ocr", "mini_preference", "mini_quality"}
    assert other["official"] is False and other["deviations"] == ["cfg 4.5 (official 3.0)"]
    assert differences(official, other) == ["cfg 3.0 vs 4.5"]


def test_a_report_over_two_protocols_is_refused_unless_allowed(two_cfgs, run_cli):
    res = run_cli("report", *map(str, two_cfgs))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "sampled mini with different protocols (cfg 3.0 vs 4.5)" in res.stderr and "--allow-mixed-protocols" in res.stderr
    res = run_cli("report", *map(str, two_cfgs), "--allow-mixed-protocols")
    assert res.returncode == 0, res.stderr
    assert "mixed protocols: mini-base (cfg3) and mini-base (cfg45) sampled mini with different protocols (cfg 3.0 vs 4.5)" in res.stdout
    assert "mini-base (cfg45) sampled mini off its official protocol: cfg 4.5 (official 3.0)" in res.stdout
    assert build_report([two_cfgs[0], two_cfgs[0]]).notes == []  # the same protocol twice: nothing to say


def test_older_summaries_give_their_protocol_from_sampling_and_counts():
    summary = {"suites": {"mini": {"sampling": {"steps": 20, "cfg": 3.0, "shift": 1.0, "resolution": 32}, "n_images": 12, "n_prompts": 6}}}
    proto = protocol_of(summary, "mini")
    assert proto["images_per_prompt"] == 2 and proto["official"] is None and proto["reward_versions"] is None
    new = {**proto, "negative_prompt": None, "reward_versions": {"mini_ocr": "3"}}
    assert differences(proto, new) == []  # unknown reward versions are no difference


def test_the_schedule_is_locked_and_a_protocol_without_it_is_sd3s():
    """spacing / shift_terminal are locked (FLUX / Qwen-Image sample on their pipelines' schedule); a protocol recorded
    before them (SD3's, the mini's) means SD3's spacing without a stretch, so it still pairs with a new one."""
    from flowopd.benchmarks.protocol import suite_protocol

    base = {"steps": 20, "cfg": 3.0, "shift": 1.0, "resolution": 32, "negative_prompt": ""}
    older = {k: v for k, v in suite_protocol(base, base, 1, 1, 0, []).items() if k not in ("spacing", "shift_terminal")}
    assert differences(older, suite_protocol(base, base, 1, 1, 0, [])) == []
    qwen = {**base, "spacing": "pipeline", "shift_terminal": 0.02}
    proto = suite_protocol(qwen, qwen, 1, 1, 0, [])
    assert proto["official"] and (proto["spacing"], proto["shift_terminal"]) == ("pipeline", 0.02)
    assert differences(older, proto) == ["spacing 'sd3' vs 'pipeline'", "shift_terminal None vs 0.02"]
    assert suite_protocol(base, qwen, 1, 1, 0, [])["deviations"] == [
        "spacing 'sd3' (official 'pipeline')",
        "shift_terminal None (official 0.02)",
    ]


def test_a_published_row_states_its_protocol(tmp_path, two_cfgs):
    csv = tmp_path / "b.csv"
    csv.write_text("model,metric,value,source,protocol\nPaper model,mini/text/mini_ocr,0.5,a paper,40 steps CFG 4.5 512px 4 images\n")
    lb = build_report([two_cfgs[0]], csv)
    assert "Paper model as reported by a paper, sampled with: 40 steps CFG 4.5 512px 4 images" in lb.notes
    with pytest.raises(InputError, match="unknown key"):
        bad = tmp_path / "b.json"
        bad.write_text('[{"model": "m", "metric": "mini/text/mini_ocr", "value": 1, "source": "s", "protocl": "x"}]')
        build_report([two_cfgs[0]], bad)
