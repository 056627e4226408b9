"""The reward zoo's shared parts: weight sets and their settings, failed scores, the CLI's weights and agreement commands."""

import json
import math

import numpy as np
import pytest
import torch

from flowopd.reward_models import RewardModel, get_reward_class, load_reward, register_reward
from flowopd.reward_models.weights import WEIGHT_SETS, WeightsMissingError, env_var, weights_dir

ZOO = [
    "geneval",
    "geneval@hf-m2f",
    "ocr",
    "pickscore_v1",
    "clipscore",
    "clipscore@vit-b-32",
    "aesthetic_laion_v2",
    "hpsv2",
    "hpsv2.1",
    "imagereward_v1",
    "deqa",
    "geneval2_soft_tifa",
    "unifiedreward",
    "qwenvl_judge",
]
SERVED = {"unifiedreward", "qwenvl_judge"}


@pytest.fixture()
def empty_weights(tmp_path, monkeypatch):
    """An empty weights dir and no served-reward endpoints: nothing with weights is available."""
    monkeypatch.setenv("FLOWOPD_WEIGHTS_DIR", str(tmp_path / "weights"))
    for var in list(__import__("os").environ):
        if var.startswith("FLOWOPD_WEIGHTS_") and var != "FLOWOPD_WEIGHTS_DIR" or var.endswith("_URL") and var.startswith("FLOWOPD_"):
            monkeypatch.delenv(var)
    return tmp_path / "weights"


def test_weights_dir_and_per_set_override(empty_weights, tmp_path, monkeypatch):
    ws = WEIGHT_SETS["pickscore_v1"]
    assert weights_dir() == empty_weights
    assert ws.path() == empty_weights / "pickscore_v1" and ws.where() == "$FLOWOPD_WEIGHTS_DIR"
    assert env_var("hpsv2.1") == "FLOWOPD_WEIGHTS_HPSV2_1"
    own = tmp_path / "my-pickscore"
    own.mkdir()
    monkeypatch.setenv(env_var("pickscore_v1"), str(own))
    assert ws.path() == own and ws.where() == "$FLOWOPD_WEIGHTS_PICKSCORE_V1"
    assert ws.missing() == ["config.json", "model.safetensors|pytorch_model.bin"]
    with pytest.raises(WeightsMissingError) as err:
        ws.require("pickscore_v1")
    msg = str(err.value)
    assert "\n" not in msg and "flowopd weights download pickscore_v1" in msg and str(own) in msg
    for f in ("config.json", "pytorch_model.bin"):  # either weights file will do
        (own / f).write_text("{}")
    assert ws.require("pickscore_v1") == own


def test_instance_weights_override_and_unknown_set(tmp_path):
    with pytest.raises(ValueError, match="unknown weight set 'nope'"):
        load_reward("pickscore_v1", weights={"nope": tmp_path})
    reward = load_reward("pickscore_v1", weights={"pickscore_v1": tmp_path})
    with pytest.raises(WeightsMissingError, match=str(tmp_path)):
        reward.weight_path("pickscore_v1")


def test_rewards_list_json_has_the_zoo_and_reasons(empty_weights, run_cli):
    res = run_cli("rewards", "list", "--format", "json", env={"FLOWOPD_WEIGHTS_DIR": str(empty_weights)})
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    for name in ZOO + ["mini_geneval", "mini_ocr", "mini_preference", "mini_quality"]:
        assert name in rows, name
        assert rows[name]["version"], name
    for name in ("mini_ocr", "ocr"):  # no download needed: the mini world, rapidocr's bundled models
        assert rows[name]["available"] is True, rows[name]
    for name in set(ZOO) - {"ocr"}:
        row = rows[name]
        assert row["available"] is False and row["reason"], row
        if name in SERVED:
            assert "URL" in row["reason"], row["reason"]
        elif name != "geneval":  # geneval first says mmdet is missing
            assert "flowopd weights download" in row["reason"], row["reason"]
    assert "geneval-mmdet" in rows["geneval"]["reason"]


def test_weights_status_lists_files_and_where_they_were_looked_for(empty_weights, run_cli, tmp_path):
    env = {"FLOWOPD_WEIGHTS_DIR": str(empty_weights), env_var("clip-vit-large-patch14"): str(tmp_path / "clip")}
    res = run_cli("weights", "status", "clipscore", "--format", "json", env=env)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["files"]
    assert {r["file"] for r in rows} == set(WEIGHT_SETS["clip-vit-large-patch14"].files)
    assert all(r["path"].startswith(str(tmp_path / "clip")) and not r["found"] for r in rows)
    assert all(r["chosen_by"] == "$FLOWOPD_WEIGHTS_CLIP_VIT_LARGE_PATCH14" for r in rows)
    res = run_cli("weights", "status", env=env)
    assert res.returncode == 0 and "imagereward_v1" in res.stdout and "no weight files needed:" in res.stdout
    assert "mini_ocr" in res.stdout.split("no weight files needed:")[1]
    rows = json.loads(run_cli("weights", "status", "--format", "json", env=env).stdout)["files"]
    for row in rows:  # every row belongs to a set its reward uses; a reward without weights has no rows
        assert row["set"] in get_reward_class(row["reward"]).weight_sets, row
    assert not [r for r in rows if r["reward"] == "mini_ocr"]


def test_weights_download_offline_fails_fast_with_one_line(empty_weights, run_cli):
    from test_cli import one_line_error

    env = {"FLOWOPD_WEIGHTS_DIR": str(empty_weights), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    line = one_line_error(run_cli("weights", "download", "pickscore_v1", env=env), "cannot download", "unreachable")
    assert "FLOWOPD_WEIGHTS_" in line
    one_line_error(run_cli("weights", "download", "clipscore", env={**env, "HF_HUB_OFFLINE": "1"}), "HF_HUB_OFFLINE")
    one_line_error(run_cli("weights", "download", "pickscor", env=env), "did you mean")
    assert not any(empty_weights.rglob("*.safetensors"))
    res = run_cli("weights", "download", "mini_ocr", env=env)
    assert res.returncode == 0 and "needs no weight files" in res.stdout


# ------------------------------------------------------------------ failed scores


@register_reward("test_flaky")
class Flaky(RewardModel):
    """Fails every image whose prompt contains 'fail' (as a judge with an unparseable reply would)."""

    version = "1"

    def _score(self, images, prompts, metadata):
        raws = [None if "fail" in p else float(img.mean() / 255) for img, p in zip(images, prompts)]
        return raws, [{"error": "unparseable reply"} if r is None else {} for r in raws]


def test_failed_images_are_nan_never_zero():
    images = torch.rand(3, 3, 8, 8)
    scores = load_reward("test_flaky").score(images, ["ok", "fail", "ok"])
    assert scores.failed.tolist() == [False, True, False]
    assert math.isnan(scores.raw[1]) and math.isnan(scores.normalized[1])
    rec = scores.to_records()[1]
    assert rec["raw"] is None and rec["failed"] is True and rec["details"]["error"] == "unparseable reply"
    json.dumps(scores.to_records())  # valid JSON: no NaN literals


def test_weighted_reward_and_advantages_leave_failed_images_out():
    from flowopd.objectives.grpo import group_advantages
    from flowopd.reward_models.weighted import WeightedReward

    mix = WeightedReward({"test_flaky": 1.0, "mini_quality": 1.0})
    images = torch.rand(4, 3, 16, 16)
    total, per = mix(images, ["a", "fail", "b", "c"], [None] * 4, [None] * 4)
    assert torch.isnan(total).tolist() == [False, True, False, False]
    assert not torch.isnan(per["mini_quality"]).any()
    rewards = torch.tensor([1.0, math.nan, 0.0, 2.0, 5.0, 5.0])
    adv = group_advantages(rewards, torch.tensor([0, 0, 0, 1, 1, 1]), "group", clip=100)
    assert adv[1] == 0
    expected = (torch.tensor([1.0, 0.0]) - 0.5) / (0.5 + 1e-4)
    assert torch.allclose(adv[[0, 2]], expected)


# ------------------------------------------------------------------ agreement


@register_reward("test_brightness")
class Brightness(RewardModel):
    """Mean brightness: a reward whose preferences are known exactly."""

    version = "1"

    def _score(self, images, prompts, metadata):
        return [float(img.mean()) for img in images], [{} for _ in images]


def _pair_file(tmp_path):
    from PIL import Image

    levels = [10, 60, 120, 200]
    for v in levels:
        Image.fromarray(np.full((8, 8, 3), v, dtype=np.uint8)).save(tmp_path / f"g{v}.png")
    lines = [
        {"prompt": "p1", "images": ["g200.png", "g10.png"], "preferred": 0},  # brightness agrees
        {"prompt": "p2", "images": ["g60.png", "g120.png"], "preferred": 0},  # disagrees
        {"prompt": "p3", "images": ["g10.png", "g60.png"], "label": 0},  # Pick-a-Pic label: second preferred, agrees
        {"prompt": "p4", "images": ["g10.png", "g60.png"], "preferred": None},  # tie: no comparison
        {"prompt": "p5", "images": ["g200.png", "g120.png", "g10.png"], "rank": [1, 2, 3]},  # 3 comparisons, all agree
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_agreement_accuracy_and_bootstrap_interval(tmp_path):
    from flowopd.benchmarks.agreement import load_pairs, run_agreement

    records = load_pairs(_pair_file(tmp_path))
    assert [len(r.comparisons) for r in records] == [1, 1, 1, 0, 3]
    (row,) = run_agreement(records, ["test_brightness"])
    assert row["n"] == 6 and row["mean"] == pytest.approx(5 / 6)
    assert 0 <= row["lo"] <= row["mean"] <= row["hi"] <= 1 and row["lo"] < row["hi"]
    assert row["dropped_failed"] == 0
    assert run_agreement(records, ["test_brightness"], chunk_images=3) == [row]  # chunk boundaries change nothing


def test_agreement_input_errors_name_file_and_line(tmp_path):
    from flowopd.benchmarks.agreement import load_pairs
    from flowopd.errors import InputError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "images": ["a.png", "b.png"], "preferred": 0}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:1: image .*a.png not found"):
        load_pairs(bad)
    _pair_file(tmp_path)
    bad.write_text('{"prompt": "x", "images": ["g10.png", "g60.png"], "preferred": 0}\n{"prompt": "y", "images": ["g10.png"]}\n')
    with pytest.raises(InputError, match="bad.jsonl:2: 'images' must be a list of at least two"):
        load_pairs(bad)
    bad.write_text('{"prompt": "x", "images": ["g10.png", "g60.png"], "preferred": 2}\n')
    with pytest.raises(InputError, match="bad.jsonl:1: 'preferred' must be 0, 1 or null"):
        load_pairs(bad)


def test_agreement_cli_on_mini_rewards(tmp_path, run_cli):
    pairs = _pair_file(tmp_path)
    out = tmp_path / "agreement.json"
    res = run_cli("rewards", "agreement", "--pairs", str(pairs), "-r", "mini_quality", "-r", "mini_preference", "--out", str(out))
    assert res.returncode == 0, res.stderr
    result = json.loads(out.read_text())
    assert result["comparisons"] == 6 and [r["reward"] for r in result["rewards"]] == ["mini_quality", "mini_preference"]
    assert all(0 <= r["mean"] <= 1 and r["n"] == 6 for r in result["rewards"])
    assert "agreement with human preference" in res.stdout


def test_download_of_url_and_archive_sets_from_a_local_server(tmp_path, monkeypatch):
    """`download` end to end against a real HTTP server on 127.0.0.1: single files, and tars unpacked by base name only."""
    import functools
    import http.server
    import io
    import tarfile
    import threading

    from flowopd.errors import FlowOPDError
    from flowopd.reward_models.weights import WeightSet, download

    served = tmp_path / "served"
    (served / "v1").mkdir(parents=True)
    (served / "v1" / "model.pth").write_bytes(b"weights")
    with tarfile.open(served / "v1" / "det.tar", "w") as tar:
        for name, data in (("en_det_infer/inference.pdmodel", b"graph"), ("../evil/inference.pdiparams", b"params")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/v1"
    monkeypatch.setenv("FLOWOPD_WEIGHTS_DIR", str(tmp_path / "weights"))
    try:
        single = WeightSet("test-single", base, ("model.pth",))
        assert download(single) == tmp_path / "weights" / "test-single"
        assert (tmp_path / "weights" / "test-single" / "model.pth").read_bytes() == b"weights"
        packed = WeightSet("test-packed", base, ("det/inference.pdmodel", "det/inference.pdiparams"), archives=(("det", "det.tar"),))
        root = download(packed)
        assert sorted(p.name for p in (root / "det").iterdir()) == ["inference.pdiparams", "inference.pdmodel"]
        assert not (tmp_path / "weights" / "evil").exists() and not list(root.glob(".*"))
        broken = WeightSet("test-broken", base, ("missing.pth",))
        with pytest.raises(FlowOPDError, match="cannot download 'test-broken' from .*: 404"):
            download(broken)
        assert not list((tmp_path / "weights" / "test-broken").iterdir())  # no partial file left behind
    finally:
        server.shutdown()


@register_reward("test_first_fails")
class FirstFails(RewardModel):
    """Fails the first image of every call (``everything=True``: all of them), as a judge server with a bad moment would."""

    version = "1"
    everything = False

    def _score(self, images, prompts, metadata):
        raws = [None if (k == 0 or self.everything) else float(img.mean() / 255) for k, img in enumerate(images)]
        return raws, [{"error": "server said 500"} if r is None else {} for r in raws]


def test_the_trainer_leaves_failed_images_out_and_stops_when_all_fail(tiny_policy_dir, tmp_path, monkeypatch):
    from test_trainer import tiny_config

    from flowopd.errors import FlowOPDError
    from flowopd.trainer import Trainer

    trainer = Trainer(tiny_config(tiny_policy_dir, steps=1, rewards={"test_first_fails": 1.0}), tmp_path / "run")
    metrics = trainer.train_step()
    rewards, adv = trainer.objective.last_batch["rewards"], trainer.objective.last_batch["advantages"]
    assert torch.isnan(rewards).sum() == 1 and metrics["reward_failed"] == 1
    assert adv[torch.isnan(rewards)].item() == 0 and math.isfinite(metrics["reward"]) and math.isfinite(metrics["loss"])
    monkeypatch.setattr(FirstFails, "everything", True)
    with pytest.raises(FlowOPDError, match="every image of step 2 failed to score"):
        trainer.train_step()


def test_rewards_score_cli_shows_a_failed_judge_reply(tmp_path, run_cli):
    """`flowopd rewards score` against a local chat-completions server whose judge answers without a score."""
    import http.server
    import threading

    from PIL import Image

    class Judge(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "A lovely image, I would say."}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Image.new("RGB", (16, 16), "white").save(tmp_path / "a.png")
    env = {"FLOWOPD_UNIFIEDREWARD_URL": f"http://127.0.0.1:{server.server_address[1]}/v1", "FLOWOPD_UNIFIEDREWARD_MODEL": "judge"}
    try:
        res = run_cli("rewards", "score", "unifiedreward", str(tmp_path / "a.png"), "-p", "a cat", env=env)
        assert res.returncode == 1, res.stderr  # the table is shown, and no image scored is a failure (issue 15 #5)
        assert "failed" in res.stdout and "no score found" in res.stdout
        assert "every image failed to score with unifiedreward" in res.stderr
        res = run_cli("rewards", "score", "unifiedreward", str(tmp_path / "a.png"), "-p", "a cat", "--format", "json", env=env)
        assert res.returncode == 1
        (rec,) = json.loads(res.stdout)
        assert rec["raw"] is None and rec["failed"] is True and "A lovely image" in rec["details"]["error"]
    finally:
        server.shutdown()
