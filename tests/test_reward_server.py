"""`flowopd rewards serve` and the remote client: same scores as in process, bad input refused, faults retried."""

from __future__ import annotations

import base64
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from flowopd.errors import FlowOPDError  # noqa: E402
from flowopd.mini import world  # noqa: E402
from flowopd.mini.rewards import MiniOCR  # noqa: E402
from flowopd.reward_models import get_reward_class, load_reward  # noqa: E402
from flowopd.reward_models.remote import RemoteReward, png_base64  # noqa: E402
from flowopd.reward_models.serve import ServeSettings, serve_in_thread  # noqa: E402

FAST = {"max_retries": 2, "backoff": 0.01, "timeout": 10.0}


def text_batch(n: int, seed: int = 0, task: str = "text") -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    records = world.make_prompts(task, n, seed=seed, unique=False)
    return np.stack([world.render(r, rng) for r in records]), [r.prompt for r in records]


@pytest.fixture(scope="module")
def ocr_server():
    url, server = serve_in_thread(ServeSettings("mini_ocr", port=0, max_body_mb=1.0))
    yield url, server
    server.should_exit = True


def post(url: str, body: bytes, token: str | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def score_body(images: np.ndarray, prompts: list[str], metadata=None) -> bytes:
    return json.dumps({"images": [png_base64(a) for a in images], "prompts": prompts, "metadata": metadata}).encode()


# ------------------------------------------------------------------ same scores


@pytest.mark.parametrize("name", ["mini_ocr", "mini_preference"])
def test_remote_scores_equal_in_process(name):
    images, prompts = text_batch(11, seed=3, task="text" if name == "mini_ocr" else "preference")
    url, server = serve_in_thread(ServeSettings(name, port=0, max_batch=4))
    try:
        remote = load_reward(f"remote:{name}", url=url, batch_size=3, **FAST)  # 4 requests, in flight together
        assert isinstance(remote, RemoteReward) and remote.name == name
        got, want = remote.score(images, prompts), load_reward(name).score(images, prompts)
        assert torch.equal(got.raw, want.raw) and torch.equal(got.normalized, want.normalized)
        assert got.details == json.loads(json.dumps(want.details))
        assert remote.version == get_reward_class(name).version and remote.identity() == load_reward(name).identity()
        assert torch.equal(remote.normalize(want.raw), want.normalized)
        assert remote.applies_to(prompts[0], None) == load_reward(name).applies_to(prompts[0], None)
    finally:
        server.should_exit = True


def test_url_variable_makes_load_reward_remote(ocr_server, monkeypatch, tmp_path):
    from flowopd.benchmarks.score_cache import ScoreCache

    url, _ = ocr_server
    monkeypatch.setenv("FLOWOPD_MINI_OCR_URL", url)
    cls = get_reward_class("mini_ocr")
    assert issubclass(cls, RemoteReward) and cls.weights_status() == (True, None) and cls.version == MiniOCR.version
    images, prompts = text_batch(6, seed=1)
    with ScoreCache(tmp_path / "s.sqlite") as cache:
        first = cache.score(load_reward("mini_ocr"), images, prompts)
        again = cache.score(MiniOCR(), images, prompts)  # the same reward, in process: every score is a cache hit
        assert cache.hits == 6
    assert torch.equal(first.raw, again.raw) and torch.equal(first.raw, MiniOCR().score(images, prompts).raw)
    monkeypatch.setenv("FLOWOPD_UNIFIEDREWARD_URL", url)  # a chat judge keeps reading its variable as its own server
    assert not issubclass(get_reward_class("unifiedreward"), RemoteReward)


def test_concurrent_requests_are_batched():
    class SlowOCR(MiniOCR):
        def _score(self, images, prompts, metadata):
            time.sleep(0.15)
            return super()._score(images, prompts, metadata)

    url, server = serve_in_thread(ServeSettings("mini_ocr", port=0, max_batch=16), reward=SlowOCR())
    try:
        images, prompts = text_batch(16, seed=2)
        want = MiniOCR().score(images, prompts).raw
        remote = load_reward("remote:mini_ocr", url=url, batch_size=2, concurrency=8, **FAST)
        got = remote.score(images, prompts).raw
        assert torch.equal(got, want)
        assert server.config.app.state.scorer.batches < 8  # 8 requests of 2, scored in fewer calls
    finally:
        server.should_exit = True


def test_several_servers_round_robin_and_a_dead_one_is_skipped():
    (url_a, a), (url_b, b) = (serve_in_thread(ServeSettings("mini_ocr", port=0)) for _ in range(2))
    dead = f"http://127.0.0.1:{_free_port()}"
    try:
        images, prompts = text_batch(12, seed=5)
        want = MiniOCR().score(images, prompts)
        remote = load_reward("remote:mini_ocr", url=f"{url_a},{dead},{url_b}", batch_size=2, concurrency=1, **FAST)
        assert torch.equal(remote.score(images, prompts).raw, want.raw)
        assert a.config.app.state.scorer.batches > 0 and b.config.app.state.scorer.batches > 0  # both took a share
        assert 1 in remote._dead  # the dead one was found out and is skipped until REVIVE_AFTER
        a.should_exit = True
        a.thread.join(timeout=10)
        assert torch.equal(remote.score(images, prompts).raw, want.raw)  # the one left answers everything
    finally:
        a.should_exit = b.should_exit = True


# ------------------------------------------------------------------ bad input


def test_bad_inputs_are_refused_in_one_line_and_the_server_keeps_serving(ocr_server):
    url, _ = ocr_server
    images, prompts = text_batch(2)
    png = base64.b64decode(png_base64(images[0]))
    cases = {
        "not json": (b"{images", 400),
        "not an image": (json.dumps({"images": [base64.b64encode(b"hello").decode()], "prompts": ["x"]}).encode(), 400),
        "not base64": (json.dumps({"images": ["***"], "prompts": ["x"]}).encode(), 400),
        "truncated png": (json.dumps({"images": [base64.b64encode(png[: len(png) // 2]).decode()], "prompts": ["x"]}).encode(), 400),
        "png cut after its pixels": (json.dumps({"images": [base64.b64encode(png[:-12]).decode()], "prompts": ["x"]}).encode(), 400),
        "lengths": (score_body(images, prompts[:1]), 400),
        "metadata lengths": (score_body(images, prompts, [None]), 400),
    }
    for what, (body, status) in cases.items():
        code, text = post(url + "/score", body)
        assert code == status, (what, code, text)
        assert text.strip() and "\n" not in text.strip() and "Traceback" not in text, what
        code, ok = post(url + "/score", score_body(images, prompts))
        assert code == 200 and len(json.loads(ok)["scores"]) == 2, what
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:  # a 2 GB body: refused by its header, none of it read
        s.sendall(f"POST /score HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {2 * 2**30}\r\n\r\n".encode())
        reply = ""
        while "--max-body-mb" not in reply and (chunk := s.recv(4096)):
            reply += chunk.decode()
    assert reply.startswith("HTTP/1.1 413") and "--max-body-mb" in reply, reply
    assert post(url + "/score", score_body(images, prompts))[0] == 200
    remote = load_reward("remote:mini_ocr", url=url, batch_size=4000, **FAST)  # the client knows the limit: one line, nothing sent
    many = np.random.default_rng(0).integers(0, 256, (40, 128, 128, 3), dtype=np.uint8)
    with pytest.raises(FlowOPDError, match="max-body-mb") as err:
        remote.score(many, ["x"] * 40)
    assert "\n" not in str(err.value)


def test_a_reward_refusing_its_metadata_is_a_422(ocr_server):
    url, server = serve_in_thread(ServeSettings("mini_geneval", port=0))
    try:
        images, prompts = text_batch(1, task="compose")
        code, text = post(url + "/score", score_body(images, prompts, [{"include": "not a list"}]))
        assert code in (400, 422) and "\n" not in text.strip(), text
        remote = load_reward("remote:mini_geneval", url=url, **FAST)
        with pytest.raises(FlowOPDError, match="HTTP 4") as err:
            remote.score(images, prompts, [{"include": "not a list"}])
        assert "\n" not in str(err.value)
        assert torch.equal(remote.score(images, prompts).raw, load_reward("mini_geneval").score(images, prompts).raw)
    finally:
        server.should_exit = True


def test_missing_geneval_metadata_is_a_one_line_422_and_not_retried():
    url, server = serve_in_thread(ServeSettings("mini_geneval", port=0))
    scorer = server.config.app.state.scorer
    try:
        images, prompts = text_batch(2, task="compose")
        for prompts_sent, meta in [(prompts, [None, {"tag": "two_object"}]), (["a photo of a dog"] * 2, None)]:
            code, text = post(url + "/score", score_body(images, prompts_sent, meta))
            assert code == 422 and "\n" not in text.strip() and "'include'" in text and "image" in text, text
            assert post(url + "/score", score_body(images, prompts))[0] == 200  # the server keeps serving
        remote = load_reward("remote:mini_geneval", url=url, **FAST)  # FAST retries twice: a retried 422 would be 3 calls
        before = scorer.batches
        with pytest.raises(FlowOPDError, match="HTTP 422.*image 1: no GenEval metadata: 'include' is missing") as err:
            remote.score(images, prompts, [None, {"tag": "two_object"}])
        assert "\n" not in str(err.value) and scorer.batches == before + 1
        meta = [world.parse_prompt(p).metadata for p in prompts]
        extra = [{**m, "unknown_key": [1, 2]} for m in meta]  # keys the reward does not read are ignored
        assert torch.equal(remote.score(images, prompts, extra).raw, load_reward("mini_geneval").score(images, prompts, meta).raw)
    finally:
        server.should_exit = True


def test_geneval_metadata_errors_name_the_image_and_the_key_in_process():
    from flowopd.reward_models.geneval_mmdet import GenEvalMMDet

    images, prompts = text_batch(2, task="compose")
    good = {"include": [{"class": "square", "count": 1}]}
    cases = [
        (None, "no metadata, and 'a photo of a dog' is not a mini-world prompt .*'include'"),
        ({"tag": "two_object"}, "no GenEval metadata: 'include' is missing; send a dict"),
        ({"include": [{"count": 1}]}, "GenEval clause 0 of 'include' needs 'class' and 'count'"),
        ({"include": [{"class": "square", "count": "two"}]}, "GenEval clause 0 of 'include': 'count' must be an integer >= 1, got 'two'"),
        ({**good, "exclude": "circle"}, "GenEval metadata: 'exclude' must be a list of clauses"),
    ]
    for meta, needle in cases:
        with pytest.raises(ValueError, match=f"^mini_geneval: image 1: {needle}") as err:
            load_reward("mini_geneval").score(images, [prompts[0], "a photo of a dog"], [good, meta])
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="^mini_preference: image 0: GenEval clause 0 of 'include' needs 'class'"):
        load_reward("mini_preference").score(images[:1], prompts[:1], [{"include": [{"color": "red"}]}])
    for meta, needle in [
        ({"color": ["red"]}, "'color' is \\['red'\\]; send a string"),
        ({"size": "huge"}, "'size' is 'huge'; send one of"),
    ]:
        with pytest.raises(ValueError, match=f"^mini_preference: image 0: metadata {needle}"):
            load_reward("mini_preference").score(images[:1], prompts[:1], [meta])
    geneval = GenEvalMMDet()  # the real reward's metadata is checked before its detector runs: no mmdet needed
    geneval._loaded, geneval._detect = True, lambda images: pytest.fail("the detector ran on bad metadata")
    with pytest.raises(ValueError, match="^geneval: image 0: no GenEval metadata: 'include' is missing"):
        geneval.score(images[:1], prompts[:1], [{"tag": "single_object"}])


# ------------------------------------------------------------------ token, version


def test_wrong_token_is_401_and_one_line(monkeypatch):
    monkeypatch.setenv("FLOWOPD_REWARD_TOKEN", "s3cret-token")
    url, server = serve_in_thread(ServeSettings("mini_ocr", port=0))
    try:
        images, prompts = text_batch(2)
        monkeypatch.setenv("FLOWOPD_REWARD_TOKEN", "wrong-one")
        with pytest.raises(FlowOPDError, match="HTTP 401") as err:
            load_reward("remote:mini_ocr", url=url, **FAST).score(images, prompts)
        assert "\n" not in str(err.value) and "s3cret" not in str(err.value) and "wrong-one" not in str(err.value)
        assert post(url + "/score", score_body(images, prompts))[0] == 401
        monkeypatch.setenv("FLOWOPD_REWARD_TOKEN", "s3cret-token")
        assert len(load_reward("remote:mini_ocr", url=url, **FAST).score(images, prompts)) == 2
    finally:
        server.should_exit = True


def test_another_version_or_reward_is_refused():
    class OtherOCR(MiniOCR):
        version = "99"

    url, server = serve_in_thread(ServeSettings("mini_ocr", port=0), reward=OtherOCR())
    try:
        images, prompts = text_batch(1)
        with pytest.raises(FlowOPDError, match="version 99, but this install has version 1") as err:
            load_reward("remote:mini_ocr", url=url, **FAST).score(images, prompts)
        assert "\n" not in str(err.value)
        with pytest.raises(FlowOPDError, match="serves the reward 'mini_ocr', not 'mini_preference'"):
            load_reward("remote:mini_preference", url=url, **FAST).score(images, prompts)
    finally:
        server.should_exit = True


def test_unreachable_server_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    images, prompts = text_batch(1)
    with pytest.raises(FlowOPDError, match="cannot reach the reward server") as err:
        load_reward("remote:mini_ocr", url=f"http://127.0.0.1:{port}", **FAST).score(images, prompts)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ faults


class _Stub(http.server.BaseHTTPRequestHandler):
    """A reward server that misbehaves on /score as ``server.mode`` says (after ``server.bad`` bad answers it answers well)."""

    def log_message(self, *args):
        pass

    def _answer(self, code: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        health = {"protocol": "flowopd-reward/1", "name": "mini_ocr", "version": "1", "identity": "", "ready": True, "max_body_mb": 64}
        self._answer(200, json.dumps({**health, **getattr(self.server, "health", {})}).encode())

    def do_POST(self):
        n = len(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["prompts"])
        self.server.calls += 1
        good = {"name": "mini_ocr", "version": "1", "identity": "", "scores": [{"raw": 0.5, "normalized": 0.5, "details": {}}] * n}
        if self.server.calls > self.server.bad:
            self._answer(200, json.dumps(good).encode())
        elif self.server.mode == "500":
            self._answer(500, b"boom\n", "text/plain")
        elif self.server.mode == "malformed":
            self._answer(200, b'{"scores": [')
        elif self.server.mode == "count":
            self._answer(200, json.dumps({**good, "scores": good["scores"][:-1]}).encode())
        elif self.server.mode == "hang":
            time.sleep(1.5)
            self._answer(200, json.dumps(good).encode())


@pytest.mark.parametrize("mode", ["500", "malformed", "count", "hang"])
def test_a_misbehaving_server_is_retried_then_one_line(mode):
    stub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    stub.mode, stub.calls, stub.bad = mode, 0, 10**6
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{stub.server_address[1]}"
    images, prompts = text_batch(2)
    opts = {**FAST, "timeout": 0.5}
    try:
        with pytest.raises(FlowOPDError, match="failed after 3 attempt") as err:
            load_reward("remote:mini_ocr", url=url, **opts).score(images, prompts)
        assert "\n" not in str(err.value) and stub.calls == 3
        stub.calls, stub.bad = 0, 1  # one bad answer, then a good one: the retry scores every image
        scores = load_reward("remote:mini_ocr", url=url, **opts).score(images, prompts)
        assert scores.raw.tolist() == [0.5, 0.5] and stub.calls == 2
    finally:
        stub.shutdown()
        stub.server_close()


def _stub(**health) -> tuple[str, http.server.ThreadingHTTPServer]:
    stub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    stub.mode, stub.calls, stub.bad, stub.health = "500", 0, 0, health
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{stub.server_address[1]}", stub


def test_a_dead_server_gets_work_again_only_once_its_health_probe_says_so(monkeypatch):
    from flowopd.reward_models import remote as remote_module

    monkeypatch.setattr(remote_module, "REVIVE_AFTER", 0.2)
    (url_a, a), (url_b, b) = _stub(), _stub()
    images, prompts = text_batch(4)
    try:
        remote = load_reward("remote:mini_ocr", url=f"{url_a},{url_b}", batch_size=1, concurrency=1, **FAST)
        b.bad = 10**6  # b answers HTTP 500 until its retries run out: marked dead, a scores everything
        assert remote.score(images, prompts).raw.tolist() == [0.5] * 4 and 1 in remote._dead
        b.calls, b.bad, b.health = 0, 0, {"ready": False}  # it answers /score again, but its probe says it is loading
        time.sleep(0.3)
        assert len(remote.score(images, prompts)) == 4 and b.calls == 0 and 1 in remote._dead
        b.health = {}  # ready: after REVIVE_AFTER its probe passes and it shares the work again
        time.sleep(0.3)
        assert len(remote.score(images, prompts)) == 4 and b.calls == 2 and 1 not in remote._dead
        b.calls, b.bad = 0, 10**6
        remote.score(images, prompts)  # down again, then back serving another identity: refused in one line, sent nothing
        b.calls, b.bad, b.health = 0, 0, {"identity": "another-model"}
        time.sleep(0.3)
        with pytest.raises(FlowOPDError, match="came back serving mini_ocr version 1 \\('another-model'\\)") as err:
            remote.score(images, prompts)
        assert "\n" not in str(err.value) and b.calls == 0
    finally:
        for stub in (a, b):
            stub.shutdown()
            stub.server_close()


def test_a_killed_server_restarted_on_its_port_gets_work_again(monkeypatch):
    from flowopd.reward_models import remote as remote_module

    monkeypatch.setattr(remote_module, "REVIVE_AFTER", 0.2)
    (url_a, a), (url_b, b) = (serve_in_thread(ServeSettings("mini_ocr", port=0)) for _ in range(2))
    images, prompts = text_batch(8, seed=6)
    want = MiniOCR().score(images, prompts).raw
    try:
        remote = load_reward("remote:mini_ocr", url=f"{url_a},{url_b}", batch_size=2, concurrency=1, **FAST)
        remote.load()
        b.should_exit = True
        b.thread.join(timeout=10)
        assert torch.equal(remote.score(images, prompts).raw, want) and 1 in remote._dead  # a answered everything
        _, b = serve_in_thread(ServeSettings("mini_ocr", port=int(url_b.rsplit(":", 1)[1])))
        time.sleep(0.3)
        assert torch.equal(remote.score(images, prompts).raw, want) and 1 not in remote._dead
        assert b.config.app.state.scorer.batches > 0  # the restarted server took its share
    finally:
        a.should_exit = b.should_exit = True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_process(port: int, name: str = "mini_ocr") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "flowopd.cli.main", "rewards", "serve", name, "--port", str(port)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited: {proc.stderr.read()[-2000:]}") from None
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not start in 60 s")


def test_a_killed_and_restarted_server_is_retried():
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    images, prompts = text_batch(6, seed=4)
    want = MiniOCR().score(images, prompts)
    proc = _serve_process(port)
    restarted: list[subprocess.Popen] = []
    try:
        remote = load_reward("remote:mini_ocr", url=url, max_retries=8, backoff=0.5, timeout=30.0)
        assert torch.equal(remote.score(images[:2], prompts[:2]).raw, want.raw[:2])
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        threading.Timer(0.5, lambda: restarted.append(_serve_process(port))).start()
        got = remote.score(images, prompts)  # refused while it is down, then answered by the new process
        assert torch.equal(got.raw, want.raw) and torch.equal(got.normalized, want.normalized)
    finally:
        for p in [proc, *restarted]:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=10)


@pytest.mark.slow  # two 2-step runs of the tiny policy: ~80 s on 2 busy cores
def test_a_grpo_step_with_served_rewards_trains_the_same_lora(tiny_policy_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from flowopd.train_config import TrainConfig
    from flowopd.trainer import Trainer

    def one_step(out):
        cfg = TrainConfig.model_validate(
            dict(
                name="tiny", model=str(tiny_policy_dir), steps=2, tasks={"compose": 1.0, "text": 1.0}, updates_per_rollout=2,
                rewards={"mini_geneval": 1.0, "mini_ocr": 1.0, "mini_preference": 0.5},
                batch_size=8, group_size=4, micro_batch=4, grpo={"beta": 0.04}, lora={"rank": 4, "alpha": 8}, optim={"lr": 1e-2},
                sampler={"steps": 4, "cfg": 2.0, "shift": 1.0, "kind": "sde", "noise_level": 0.7, "window_size": 2, "window_start_max": 1},
                checkpoint_every=1, trackers=[],
            )
        )  # fmt: skip
        return load_file(Trainer(cfg, out).train() / "pytorch_lora_weights.safetensors")

    local = one_step(tmp_path / "local")
    ports = {name: _free_port() for name in ("mini_geneval", "mini_ocr", "mini_preference")}
    procs = [_serve_process(port, name) for name, port in ports.items()]  # before the variables: the servers score in process
    try:
        for name, port in ports.items():
            monkeypatch.setenv(f"FLOWOPD_{name.upper()}_URL", f"http://127.0.0.1:{port}")
        assert issubclass(get_reward_class("mini_ocr"), RemoteReward)
        served = one_step(tmp_path / "served")
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
    assert local.keys() == served.keys()
    assert all(torch.equal(local[k], served[k]) for k in local), "the served rewards trained another LoRA"
    assert any(float(v.abs().max()) > 0 for k, v in local.items() if "lora_B" in k)


def test_rewards_list_shows_a_served_reward_with_its_url_and_version(ocr_server, monkeypatch):
    from flowopd.reward_models import list_rewards

    monkeypatch.setenv("FLOWOPD_MINI_OCR_URL", ocr_server[0])
    monkeypatch.setenv("FLOWOPD_MINI_QUALITY_URL", f"http://127.0.0.1:{_free_port()}")
    infos = {i.name: i for i in list_rewards() if i.name in ("mini_ocr", "mini_quality")}
    assert infos["mini_ocr"].available and infos["mini_ocr"].version == "1" and ocr_server[0] in infos["mini_ocr"].description
    assert not infos["mini_quality"].available and "cannot reach" in infos["mini_quality"].reason


def test_serve_cli_refuses_bad_settings_in_one_line(run_cli, ocr_server):
    for args, env, needle in [
        (["--max-batch", "0"], {}, "--max-batch >= 1"),
        ([], {"FLOWOPD_MINI_OCR_URL": ocr_server[0]}, "is a remote reward here"),
        (["--port", str(int(ocr_server[0].rsplit(":", 1)[1]))], {}, ""),  # the port is taken: uvicorn says so and exits
    ]:
        res = run_cli("rewards", "serve", "mini_ocr", *args, env={"OMP_NUM_THREADS": "1", **env})
        assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
        if needle:
            lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
            assert len(lines) == 1 and needle in lines[0], res.stderr
