"""Served rewards (unifiedreward, qwenvl_judge, deqa served) against a real local chat-completions server.

The server is a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 (port 0) speaking the
OpenAI chat-completions protocol. What it does with a request is scripted per
*marker*: a ``case:<name>`` string inside the request's text (the reward prompt
carries it), or, for prompt-free rewards (DeQA), a marker registered for the
pixels of the request's image. Each marker has a list of actions, one per attempt (the last one
repeats), so retries can be scripted: reply, reply with logprobs, HTTP status,
sleep past the client timeout, drop the connection.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re
import socket
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from flowopd.errors import FlowOPDError
from flowopd.reward_models import get_reward_class
from flowopd.reward_models.chat_client import ChatEndpoint, ChatRequest
from flowopd.reward_models.deqa import DeQA, deqa_from_logprobs
from flowopd.reward_models.judges import QWENVL_JUDGE_PROMPT, UNIFIEDREWARD_PROMPT, QwenVLJudge, UnifiedReward

SERVED_MODEL = "fake-vlm"
ENV_VARS = [f"FLOWOPD_{r}_{k}" for r in ("UNIFIEDREWARD", "QWENVL_JUDGE", "DEQA") for k in ("URL", "MODEL", "API_KEY")]


# ---------------------------------------------------------------- the scripted server


class FakeChatServer:
    """A chat-completions server whose answer to each request is scripted by the marker in the request text."""

    def __init__(self):
        self.scripts: dict[str, list[tuple]] = {}
        self.image_markers: dict[bytes, str] = {}  # pixel bytes -> marker
        self.requests: list[dict] = []  # {"marker", "payload", "headers", "t"}
        self.get_requests: list[dict] = []
        self.counts: Counter[str] = Counter()
        self.times: dict[str, list[float]] = defaultdict(list)
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _leave(self) -> None:
                """This request stops counting as in flight: before its answer is written, so a client that sends
                its next request as soon as it reads the answer never finds this one still counted."""
                if getattr(self, "_counted", False):
                    self._counted = False
                    with fake.lock:
                        fake.in_flight -= 1

            def _json(self, status: int, obj) -> None:
                self._leave()
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                fake.get_requests.append({"path": self.path, "headers": dict(self.headers)})
                if self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": SERVED_MODEL, "object": "model"}]})
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    self._json(404, {"error": f"no route {self.path}"})
                    return
                text = " ".join(
                    part.get("text", "")
                    for msg in payload["messages"]
                    if isinstance(msg["content"], list)
                    for part in msg["content"]
                    if part.get("type") == "text"
                )
                m = re.search(r"case:([\w.-]+)", text)
                marker = m.group(1) if m else fake.image_marker(payload)
                with fake.lock:
                    attempt = fake.counts[marker]
                    fake.counts[marker] += 1
                    fake.times[marker].append(time.monotonic())
                    fake.requests.append({"marker": marker, "payload": payload, "headers": dict(self.headers)})
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    self._counted = True
                try:
                    script = fake.scripts.get(marker, [("reply", "Final Score: 3")])
                    self._act(script[min(attempt, len(script) - 1)], payload)
                except OSError:  # the client gave up (timeout) and closed the socket
                    pass
                finally:
                    self._leave()

            def _act(self, action: tuple, payload: dict) -> None:
                kind = action[0]
                if kind == "sleep":  # ("sleep", seconds, next action)
                    time.sleep(action[1])
                    self._act(action[2], payload)
                elif kind == "reply":
                    text = action[1].replace("{auth}", self.headers.get("Authorization", ""))
                    self._json(200, _completion(text))
                elif kind == "logprobs":  # ("logprobs", [(token, logprob), ...])
                    top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in action[1]]
                    first = max(top, key=lambda e: e["logprob"]) if top else {"token": "x", "logprob": 0.0}
                    content = [{"token": first["token"], "logprob": first["logprob"], "bytes": None, "top_logprobs": top}]
                    self._json(200, _completion(first["token"], {"content": content}))
                elif kind == "status":  # ("status", code, body); "{auth}" echoes the Authorization header
                    body = action[2] if len(action) > 2 else f"scripted {action[1]}"
                    self._json(action[1], {"error": {"message": body.replace("{auth}", self.headers.get("Authorization", ""))}})
                elif kind == "close":  # drop the connection without an answer
                    self.close_connection = True
                else:
                    raise AssertionError(f"unknown action {action}")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def mark_image(self, image: np.ndarray, marker: str) -> None:
        """Requests carrying these pixels follow ``marker``'s script."""
        self.image_markers[np.ascontiguousarray(image).tobytes()] = marker

    def image_marker(self, payload: dict) -> str:
        for msg in payload["messages"]:
            for part in msg["content"] if isinstance(msg["content"], list) else []:
                if part.get("type") == "image_url":
                    return self.image_markers.get(_decode_data_url(part["image_url"]["url"]).tobytes(), "")
        return ""

    def script(self, marker: str, *actions: tuple) -> None:
        self.scripts[marker] = list(actions)

    def payloads(self, marker: str) -> list[dict]:
        return [r["payload"] for r in self.requests if r["marker"] == marker]


def _completion(text: str, logprobs: dict | None = None) -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": SERVED_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs, "finish_reason": "stop"}],
    }


@pytest.fixture
def server():
    fake = FakeChatServer()
    fake.thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def _images(n: int, seed: int = 0, size: int = 8) -> tuple[np.ndarray, torch.Tensor]:
    arr = np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    return arr, torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def _make(cls, server: FakeChatServer, **kw):
    opts = {"base_url": server.url, "timeout": 0.3, "max_retries": 2, "backoff": 0.01, "concurrency": 4, **kw}
    return cls(**opts)


def _decode_data_url(url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :]))).convert("RGB"))


# ---------------------------------------------------------------- tests


def test_registered_names_and_status(monkeypatch, tmp_path):
    for name, cls in (("unifiedreward", UnifiedReward), ("qwenvl_judge", QwenVLJudge), ("deqa", DeQA)):
        assert get_reward_class(name) is cls and cls.name == name
    ok, reason = UnifiedReward.weights_status()
    assert not ok and "FLOWOPD_UNIFIEDREWARD_URL" in reason and "vLLM/SGLang" in reason and "OpenAI-compatible" in reason
    ok, reason = QwenVLJudge.weights_status()
    assert not ok and "FLOWOPD_QWENVL_JUDGE_URL" in reason
    monkeypatch.setenv("FLOWOPD_UNIFIEDREWARD_URL", "http://127.0.0.1:1/v1")
    assert UnifiedReward.weights_status() == (True, None)
    # DeQA: available with local weights present or a URL, else says both ways
    monkeypatch.setenv("FLOWOPD_WEIGHTS_DEQA_SCORE_MIX3", str(tmp_path))
    ok, reason = DeQA.weights_status()
    assert not ok and "FLOWOPD_DEQA_URL" in reason and "flowopd weights download deqa" in reason
    (tmp_path / "config.json").write_text("{}")
    assert DeQA.weights_status() == (True, None)
    (tmp_path / "config.json").unlink()
    monkeypatch.setenv("FLOWOPD_DEQA_URL", "http://127.0.0.1:1/v1")
    assert DeQA.weights_status() == (True, None)
    assert DeQA().backend == "served" and DeQA(backend="local").backend == "local"
    monkeypatch.delenv("FLOWOPD_DEQA_URL")
    assert DeQA().backend == "local"


def test_not_configured_is_one_clear_error():
    reward = UnifiedReward()
    with pytest.raises(FlowOPDError, match=r"FLOWOPD_UNIFIEDREWARD_URL.*vLLM/SGLang"):
        reward.score(_images(1)[1], ["a cat"])


def test_env_configuration_and_kwarg_override(server, monkeypatch):
    monkeypatch.setenv("FLOWOPD_QWENVL_JUDGE_URL", server.url)
    monkeypatch.setenv("FLOWOPD_QWENVL_JUDGE_MODEL", "from-env")
    judge = QwenVLJudge()
    assert judge.endpoint.base_url == server.url and judge.endpoint.model == "from-env"
    assert judge.endpoint.api_key_env == "FLOWOPD_QWENVL_JUDGE_API_KEY"
    judge = QwenVLJudge(base_url="http://example.invalid/v1", model="kw", api_key_env="MY_KEY", timeout=5, max_retries=7, concurrency=3)
    ep = judge.endpoint
    assert (ep.base_url, ep.model, ep.api_key_env, ep.timeout, ep.max_retries, ep.concurrency) == (
        "http://example.invalid/v1",
        "kw",
        "MY_KEY",
        5.0,
        7,
        3,
    )


def test_unifiedreward_good_reply_and_payload_shape(server):
    server.script("good", ("reply", "The image matches the caption well.\nFinal Score: 4"))
    arr, images = _images(1, seed=1)
    reward = _make(UnifiedReward, server)  # no model given: learned from GET /v1/models
    scores = reward.score(images, ["a red cube case:good"])
    assert scores.raw.tolist() == [4.0] and scores.normalized.tolist() == pytest.approx([0.8])
    assert not scores.failed.any()
    d = scores.details[0]
    assert d["score"] == 4.0 and "Final Score: 4" in d["reply"] and d["model"] == SERVED_MODEL and d["attempts"] == 1
    assert [g["path"] for g in server.get_requests] == ["/v1/models"]

    (payload,) = server.payloads("good")
    assert payload["model"] == SERVED_MODEL and payload["temperature"] == 0
    (msg,) = payload["messages"]
    assert msg["role"] == "user"
    image_part, text_part = msg["content"]
    assert image_part["type"] == "image_url" and text_part["type"] == "text"
    np.testing.assert_array_equal(_decode_data_url(image_part["image_url"]["url"]), arr[0])
    assert text_part["text"] == UNIFIEDREWARD_PROMPT.replace("{prompt}", "a red cube case:good")
    assert "logprobs" not in payload


def test_qwenvl_judge_parses_overall_score(server):
    reply = (
        "<Thought> red: yes; cube: yes. Output uses <OverallScore>Z</OverallScore>. </Thought>\n"
        "<QualityScore>3</QualityScore>\n<InstructionScore>5</InstructionScore>\n<OverallScore>4.5</OverallScore>"
    )
    server.script("q", ("reply", reply))
    reward = _make(QwenVLJudge, server, model="qwen-vl")
    scores = reward.score(_images(1)[1], ["a red cube case:q"])
    assert scores.raw.tolist() == [4.5] and scores.normalized.tolist() == pytest.approx([0.9])
    d = scores.details[0]
    assert (d["score"], d["quality_score"], d["instruction_score"]) == (4.5, 3.0, 5.0)
    (payload,) = server.payloads("q")
    assert payload["model"] == "qwen-vl" and not server.get_requests
    assert payload["messages"][0]["content"][1]["text"] == QWENVL_JUDGE_PROMPT.replace("{prompt}", "a red cube case:q")
    assert "Instruction: a red cube case:q" in payload["messages"][0]["content"][1]["text"]


@pytest.mark.parametrize(
    "cls,reply,why",
    [
        (UnifiedReward, "A lovely picture, I would rate it highly.", "no score found"),
        (UnifiedReward, "Final Score: 7", "outside [1, 5]"),
        (QwenVLJudge, "<Thought>fine</Thought><OverallScore>great</OverallScore>", "no score found"),
        (QwenVLJudge, "<OverallScore>0</OverallScore>", "outside [1, 5]"),
    ],
)
def test_malformed_reply_fails_the_image_never_zero(server, cls, reply, why):
    server.script("bad", ("reply", reply))
    server.script("ok", ("reply", "Final Score: 2" if cls is UnifiedReward else "<OverallScore>2</OverallScore>"))
    scores = _make(cls, server, model="m").score(_images(2)[1], ["x case:bad", "y case:ok"])
    assert math.isnan(scores.raw[0]) and math.isnan(scores.normalized[0]) and scores.failed.tolist() == [True, False]
    assert scores.raw[1] == 2.0
    d = scores.details[0]
    assert why in d["error"] and reply[:20] in d["error"]  # an excerpt of the reply
    rec = scores.to_records()[0]
    assert rec["failed"] and rec["raw"] is None
    assert server.counts["bad"] == 1  # a bad reply is not retried


def test_timeout_is_retried_then_fails(server):
    server.script("slow", ("sleep", 1.0, ("reply", "Final Score: 5")))
    server.script("fast", ("reply", "Final Score: 5"))
    t0 = time.monotonic()
    scores = _make(UnifiedReward, server, model="m", timeout=0.3, max_retries=2).score(_images(2)[1], ["case:slow", "case:fast"])
    elapsed = time.monotonic() - t0
    assert scores.failed.tolist() == [True, False]
    assert server.counts["slow"] == 3 and server.counts["fast"] == 1  # 1 attempt + 2 retries
    assert "timed out" in scores.details[0]["error"] and scores.details[0]["attempts"] == 3
    assert elapsed < 3.0  # each attempt gave up at the client timeout, not the server's 1 s


def test_500_retried_with_backoff_then_succeeds(server):
    server.script("flaky", ("status", 500), ("status", 503), ("reply", "Final Score: 3"))
    scores = _make(UnifiedReward, server, model="m", max_retries=3, backoff=0.05).score(_images(1)[1], ["case:flaky"])
    assert scores.raw.tolist() == [3.0] and scores.details[0]["attempts"] == 3
    t = server.times["flaky"]
    assert len(t) == 3
    # delay before retry k is backoff * 2**(k-1) * U[0.5, 1.5): at least 0.025 s, then 0.05 s
    assert t[1] - t[0] >= 0.025 and t[2] - t[1] >= 0.05


def test_500_forever_fails_and_4xx_is_not_retried(server):
    server.script("down", ("status", 500, "internal error"))
    server.script("bad_request", ("status", 400, "image too large"))
    scores = _make(UnifiedReward, server, model="m", max_retries=2).score(_images(2)[1], ["case:down", "case:bad_request"])
    assert scores.failed.tolist() == [True, True]
    assert server.counts["down"] == 3 and "HTTP 500" in scores.details[0]["error"] and "internal error" in scores.details[0]["error"]
    assert server.counts["bad_request"] == 1 and "HTTP 400" in scores.details[1]["error"]


def test_429_and_dropped_connection_are_retried(server):
    server.script("limited", ("status", 429, "rate limited"), ("reply", "Final Score: 5"))
    server.script("reset", ("close",), ("reply", "Final Score: 1"))
    scores = _make(UnifiedReward, server, model="m").score(_images(2)[1], ["case:limited", "case:reset"])
    assert scores.raw.tolist() == [5.0, 1.0]
    assert server.counts["limited"] == 2 and server.counts["reset"] == 2
    assert [d["attempts"] for d in scores.details] == [2, 2]


def test_server_down_is_one_clear_error():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    for kw in ({"model": "m"}, {}):  # with a model (the chat calls fail) and without (GET /models fails)
        reward = UnifiedReward(base_url=url, timeout=0.3, max_retries=1, backoff=0.01, **kw)
        with pytest.raises(FlowOPDError) as info:
            reward.score(_images(3)[1], ["a", "b", "c"])
        msg = str(info.value)
        assert url in msg and "$FLOWOPD_UNIFIEDREWARD_URL" in msg and "connection refused" in msg and "\n" not in msg


def test_concurrency_reaches_and_never_exceeds_the_limit(server):
    n, limit = 12, 4
    for i in range(n):
        server.script(f"c{i}", ("sleep", 0.1, ("reply", f"Final Score: {1 + i % 5}")))
    scores = _make(UnifiedReward, server, model="m", concurrency=limit, timeout=10.0).score(
        _images(n)[1], [f"p case:c{i}" for i in range(n)]
    )
    assert scores.raw.tolist() == [float(1 + i % 5) for i in range(n)]  # results in request order
    assert all(server.counts[f"c{i}"] == 1 for i in range(n))  # no retry: an abandoned request would still count
    assert server.max_in_flight == limit


def test_api_key_is_sent_and_never_leaks(server, monkeypatch, caplog):
    key = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("FLOWOPD_UNIFIEDREWARD_API_KEY", key)
    caplog.set_level(logging.DEBUG)
    server.script("echo", ("reply", "Final Score: 4 (you sent {auth})"))
    server.script("unauth", ("status", 401, "bad key {auth}"))
    server.script("err", ("status", 500, "trace: {auth}"))
    reward = _make(UnifiedReward, server)  # model from GET /models, also with the key
    scores = reward.score(_images(3)[1], ["case:echo", "case:unauth", "case:err"])
    assert scores.raw[0] == 4.0 and scores.failed.tolist() == [False, True, True]
    assert {r["headers"]["Authorization"] for r in server.requests} == {f"Bearer {key}"}
    assert server.get_requests[0]["headers"]["Authorization"] == f"Bearer {key}"
    assert "HTTP 401" in scores.details[1]["error"] and "***" in scores.details[1]["error"]
    leaks = [
        repr(reward),
        repr(reward.endpoint),
        str(vars(reward.endpoint)),
        json.dumps(scores.to_records()),
        caplog.text,
        *(r.getMessage() for r in caplog.records),
    ]
    assert caplog.records  # the retries were logged
    assert not [s for s in leaks if key in s]
    assert "FLOWOPD_UNIFIEDREWARD_API_KEY" in repr(reward.endpoint)
    # and not in the unreachable error either
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FlowOPDError) as info:
        UnifiedReward(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=0).score(_images(1)[1], ["x"])
    assert key not in str(info.value)


def test_no_key_sends_no_authorization(server):
    _make(UnifiedReward, server, model="m").score(_images(1)[1], ["case:x"])
    assert "Authorization" not in server.requests[0]["headers"]


def test_deqa_served_matches_the_hand_computation(server):
    # logprobs of the first answer token; "poor" is absent (-inf), "Good" is not a level token
    server.script(
        "d1",
        ("logprobs", [(" good", -0.7), (" excellent", -1.1), ("Good", -0.2), (" fair", -2.3), (" bad", -4.0), (" very", -1.5)]),
    )
    server.script("d2", ("logprobs", [(" great", -0.1), (" nice", -2.0)]))  # no level token at all
    arr, images = _images(2, seed=3)
    server.mark_image(arr[0], "d1")  # DeQA sends no prompt: the server tells the images apart by their pixels
    server.mark_image(arr[1], "d2")
    reward = _make(DeQA, server, model="deqa-served")
    assert reward.backend == "served"
    scores = reward.score(images, ["prompt ignored", "prompt ignored"])
    # by hand: p_i = exp(lp_i) / sum_j exp(lp_j) over the present levels, score = sum p_i * w_i
    e = {"excellent": math.exp(-1.1), "good": math.exp(-0.7), "fair": math.exp(-2.3), "bad": math.exp(-4.0)}
    z = sum(e.values())
    expected = (5 * e["excellent"] + 4 * e["good"] + 3 * e["fair"] + 1 * e["bad"]) / z
    assert scores.raw[0].item() == pytest.approx(expected, rel=1e-6)
    assert scores.normalized[0].item() == pytest.approx(expected / 5, rel=1e-6)
    assert scores.details[0]["missing_levels"] == ["poor"] and scores.details[0]["probs"]["poor"] == 0.0
    assert scores.failed.tolist() == [False, True] and "none of excellent" in scores.details[1]["error"]

    payload = server.payloads("d1")[0]
    assert payload["model"] == "deqa-served" and payload["max_tokens"] == 1 and payload["temperature"] == 0
    assert payload["logprobs"] is True and payload["top_logprobs"] == 20
    assert payload["add_generation_prompt"] is False and payload["continue_final_message"] is True
    user, assistant = payload["messages"]
    text_part, image_part = user["content"]  # the official prompt has the question before the image
    assert text_part["text"] == "How would you rate the quality of this image?"
    np.testing.assert_array_equal(_decode_data_url(image_part["image_url"]["url"]), arr[0])
    assert assistant == {"role": "assistant", "content": "The quality of the image is"}


def test_deqa_formula_edges():
    assert deqa_from_logprobs({}) == (None, {})
    score, probs = deqa_from_logprobs({"excellent": 0.0})
    assert score == 5.0 and probs["bad"] == 0.0
    score, _ = deqa_from_logprobs(dict.fromkeys(("excellent", "good", "fair", "poor", "bad"), -1.0))
    assert score == pytest.approx(3.0)


def test_endpoint_results_per_request(server):
    server.script("a", ("reply", "hello"))
    server.script("b", ("status", 404))
    ep = ChatEndpoint(server.url, "m", None, timeout=0.5, max_retries=1, backoff=0.01, concurrency=2)
    ra, rb = ep.chat_many([ChatRequest(None, "case:a"), ChatRequest(None, "case:b")])
    assert ra.ok and ra.text == "hello" and ra.error is None
    assert not rb.ok and "HTTP 404" in rb.error and server.counts["b"] == 1
    assert server.payloads("a")[0]["messages"][0]["content"] == [{"type": "text", "text": "case:a"}]


# A stand-in for DeQA-Score-Mix3's hub remote code (the real weights are ~16 GB and not on this machine):
# same loading route (trust_remote_code, auto_map) and the same ``score(list of PIL images) -> [B]`` method.
_FAKE_CONFIG = """
from transformers import PretrainedConfig


class FakeDeQAConfig(PretrainedConfig):
    model_type = "fake_deqa"
"""
_FAKE_MODELING = """
import numpy as np
import torch
from transformers import PreTrainedModel

from .configuration_fake import FakeDeQAConfig


class FakeDeQA(PreTrainedModel):
    config_class = FakeDeQAConfig

    def __init__(self, config):
        super().__init__(config)
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.post_init()

    def score(self, images):
        means = torch.tensor([float(np.asarray(im).mean()) / 255.0 for im in images], dtype=self.scale.dtype)
        return 1.0 + 4.0 * means * self.scale
"""


def test_deqa_local_backend_loads_remote_code_and_calls_score(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "configuration_fake.py").write_text(_FAKE_CONFIG)
    (tmp_path / "modeling_fake.py").write_text(_FAKE_MODELING)
    auto_map = {"AutoConfig": "configuration_fake.FakeDeQAConfig", "AutoModelForCausalLM": "modeling_fake.FakeDeQA"}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "fake_deqa", "architectures": ["FakeDeQA"], "auto_map": auto_map}))
    save_file({"scale": torch.ones(1)}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})

    reward = DeQA(backend="local", weights={"deqa-score-mix3": tmp_path})
    images = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])
    scores = reward.score(images, ["ignored", "ignored"])
    assert scores.raw.tolist() == pytest.approx([1.0, 5.0]) and scores.normalized.tolist() == pytest.approx([0.2, 1.0])
    assert scores.details == [{"backend": "local"}, {"backend": "local"}]


def test_deqa_local_backend_without_weights_says_how_to_get_them(tmp_path):
    reward = DeQA(backend="local", weights={"deqa-score-mix3": tmp_path / "missing"})
    with pytest.raises(FlowOPDError, match="flowopd weights download deqa"):
        reward.score(_images(1)[1], ["x"])
