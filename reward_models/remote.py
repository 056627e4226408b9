"""A reward scored by a ``flowopd rewards serve`` server: the same interface as the local reward, over HTTP.

``load_reward("remote:NAME")``, or ``load_reward("NAME")`` while ``$FLOWOPD_<NAME>_URL`` is set (the naming rule of
:func:`flowopd.reward_models.chat_client.env_prefix`), returns a :class:`RemoteReward`. Rewards that already read that
variable as a chat-completions server (the served judges, ``deqa``, ``geneval2_soft_tifa``: ``reads_url_env``) keep
that meaning. The transport is :class:`~flowopd.reward_models.chat_client.ChatEndpoint`'s: timeouts, retries with
backoff and jitter on timeouts, dropped or refused connections, HTTP 429/5xx and (here) replies that are not the
expected JSON; the bearer token comes from ``$FLOWOPD_REWARD_TOKEN``. On first use the client asks ``GET /health``
and refuses, in one line, a server that serves another reward or another version of it. Failed images come back as
NaN (never 0); a request whose retries ran out fails the whole call in one line. Several servers of one reward
(comma-separated URLs) are used round-robin; one whose retries ran out is tried only after the others for
``REVIVE_AFTER`` seconds, then sent work again only once one quick ``GET /health`` says it is ready and serves what it
served at first (one serving another version is refused in one line); the call fails only when every server has failed it.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from flowopd.errors import FlowOPDError
from flowopd.reward_models.base import ImageBatch, RewardModel, Scores
from flowopd.reward_models.chat_client import ChatEndpoint, _BadReply, env_prefix

logger = logging.getLogger(__name__)

REMOTE_PREFIX = "remote:"
REVIVE_AFTER = 30.0  # seconds a server that failed is tried only after the others (then only once a probe says it is back)
PROBE_TIMEOUT = 5.0  # seconds for that probe's one GET /health
TOKEN_ENV = "FLOWOPD_REWARD_TOKEN"  # the same variable `rewards serve` reads
PROTOCOL = "flowopd-reward/1"
DEFAULT_TIMEOUT = 300.0  # one /score request; a big batch on a busy GPU takes a while
_CLASSES: dict[tuple[str, type[RewardModel] | None], type[RemoteReward]] = {}


def url_env(name: str) -> str:
    """``FLOWOPD_<NAME>_URL``: where the server of reward ``name`` is."""
    return env_prefix(name) + "_URL"


def served_url(name: str, local: type[RewardModel] | None) -> str | None:
    """The reward server's URL when ``$FLOWOPD_<NAME>_URL`` points at one (not for rewards that read it themselves)."""
    if local is not None and local.reads_url_env:
        return None
    return os.environ.get(url_env(name)) or None


def png_base64(image: np.ndarray) -> str:
    """A uint8 ``[H, W, 3]`` image as base64 PNG (lossless: the server scores the very pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def remote_class(name: str, local: type[RewardModel] | None) -> type[RemoteReward]:
    """The :class:`RemoteReward` subclass for reward ``name`` (``local``: the class this install has for it, if any)."""
    key = (name, local)
    if key not in _CLASSES:
        attrs = {"name": name, "target": name, "local": local, "__module__": __name__}
        if local is not None:
            attrs.update({k: getattr(local, k) for k in ("version", "higher_is_better", "description", "needs_metadata", "raw_range")})
        else:
            attrs.update(version="?", description="served reward (not installed here)")
        _CLASSES[key] = type(f"Remote[{name}]", (RemoteReward,), attrs)
    return _CLASSES[key]


class RemoteReward(RewardModel):
    """The client of one served reward. ``url``: the server (default ``$FLOWOPD_<NAME>_URL``); ``timeout``, ``max_retries``,
    ``backoff``, ``concurrency``: as :class:`ChatEndpoint`'s; ``batch_size``: images per request; ``identity``: the
    served identity required (``None``: any)."""

    target: ClassVar[str] = ""
    local: ClassVar[type[RewardModel] | None] = None

    def __init__(
        self,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        weights: Mapping[str, str | Path] | None = None,
        *,
        url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int | None = None,
        backoff: float | None = None,
        concurrency: int = 4,
        identity: str | None = None,
    ):
        super().__init__(device=device, batch_size=batch_size, weights=weights)
        retries = {} if max_retries is None else {"max_retries": max_retries}
        retries |= {} if backoff is None else {"backoff": backoff}
        urls = [u.strip() for u in (url or os.environ.get(url_env(self.target)) or "").split(",") if u.strip()] or [None]
        self.endpoints = [
            ChatEndpoint(u, api_key_env=TOKEN_ENV, timeout=timeout, concurrency=concurrency, name=f"remote {self.target}", **retries)
            for u in urls
        ]
        for ep in self.endpoints:
            ep.not_found_hint = "is it a `flowopd rewards serve` server?"
        self.endpoint = self.endpoints[0]
        self._dead: dict[int, float] = {}  # endpoint index -> when it last failed (skipped for REVIVE_AFTER seconds)
        self._turn = itertools.count()
        self._shadow = self._local_instance()
        self._served: dict[str, Any] | None = None
        self._want_identity = identity

    def _local_instance(self) -> RewardModel | None:
        """The local class, never loaded: its ``applies_to`` and ``normalize`` run here without a request."""
        if self.local is None:
            return None
        try:
            return self.local()
        except Exception:  # a constructor that needs what only the server has: ask the server instead
            return None

    @classmethod
    def weights_status(cls) -> tuple[bool, str | None]:
        """Available when the server's URL is set (nothing is contacted): no local packages or weights are needed."""
        if os.environ.get(url_env(cls.target)):
            return True, None
        return False, f"set ${url_env(cls.target)} to the URL of a `flowopd rewards serve {cls.target}` server"

    @classmethod
    def listing(cls) -> tuple[str | None, str, str | None]:
        """``(served version, description, why unavailable)`` for ``flowopd rewards list``: one quick ``GET /health`` each."""
        client = cls(timeout=2.0, max_retries=0)
        where = f"served at {os.environ.get(url_env(cls.target))}"
        try:
            client.load()
        except FlowOPDError as exc:
            return None, where, str(exc)
        return client.version, f"{where} (identity {client.identity()!r}); no local weights needed", None

    @property
    def url(self) -> str:
        """The server's base URL (several: comma-separated), or a one-line error naming the variable to set."""
        for ep in self.endpoints:
            if not ep.base_url or not ep.base_url.startswith(("http://", "https://")):
                raise FlowOPDError(
                    f"{self.target}: ${url_env(self.target)} is {ep.base_url or 'unset'}; set it to the URL of a `flowopd rewards "
                    f"serve {self.target}` server, e.g. http://127.0.0.1:8765 (several: comma-separated)"
                )
        return ",".join(str(ep.base_url) for ep in self.endpoints)

    # ------------------------------------------------------------------ first use

    def load(self) -> None:
        """Ask each server ``GET /health`` once; refuse one serving another reward or another version of it."""
        self.url  # noqa: B018 (a missing or malformed URL is one line before any request)
        served = None
        for k, ep in enumerate(self.endpoints):
            try:
                health = self._call(ep, "GET", "/health", None, _health_reply)
            except _Down as exc:
                self._mark_dead(k, exc.result)
                if k == len(self.endpoints) - 1 and served is None:
                    raise self._down_error("GET", "/health", exc.result, ep) from None
                continue
            self._check_health(str(ep.base_url), health)
            if served is not None and (health["version"], health["identity"]) != (served["version"], served["identity"]):
                raise FlowOPDError(f"the servers of {self.target} disagree: {served['identity']!r} and {health['identity']!r}")
            served = served or health
        self._served = served
        self.version = str(served["version"])  # the served version (the class's, checked above, when this install has one)

    def _check_health(self, url: str, health: dict[str, Any]) -> None:
        if health["name"] != self.target:
            raise FlowOPDError(
                f"{url} serves the reward {health['name']!r}, not {self.target!r}; point ${url_env(self.target)} at the right server"
            )
        if self.local is not None and str(health["version"]) != self.local.version:
            raise FlowOPDError(
                f"{url} serves {self.target} version {health['version']}, but this install has version {self.local.version}; "
                "serve it from the same flowopd version (scores of two versions are not one measurement)"
            )
        if self._want_identity is not None and str(health["identity"]) != self._want_identity:
            raise FlowOPDError(f"{url} serves {self.target} as {health['identity']!r}, not the {self._want_identity!r} asked for")
        if not health.get("ready", False):
            raise FlowOPDError(f"{url} serves {self.target} but says it is not ready; wait for it to load, then retry")

    def identity(self) -> str:
        """The served reward's own identity (so its scores share cache entries with the same reward run in process)."""
        self._ensure_loaded()
        return str(self._served["identity"])

    def applies_to(self, prompt: str, metadata: dict[str, Any] | None) -> bool:
        return True if self._shadow is None else self._shadow.applies_to(prompt, metadata)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        if self._shadow is not None:
            return self._shadow.normalize(raw)
        body = json.dumps({"raw": [None if math.isnan(r) else r for r in raw.float().tolist()]}).encode()
        reply = self._request("POST", "/normalize", body, _normalize_reply(len(raw)))
        return torch.tensor([math.nan if v is None else v for v in reply], dtype=torch.float32)

    # ------------------------------------------------------------------ scoring

    def _call(self, ep: ChatEndpoint, method: str, path: str, body: bytes | None, validate: Any) -> Any:
        """One request to one server with its retries: the validated reply, :class:`_Down`, or a one-line refusal."""
        result, reply = ep._with_retries(method, f"{ep.base_url}{path}", body, validate)
        if result.error is None:
            return reply
        if result.reason is not None:  # timeouts, connections, 5xx, bad replies: the retries ran out
            raise _Down(result)
        raise FlowOPDError(f"{self.target}: {method} {path}: {result.error}")  # a 4xx: the server refused the request

    def _mark_dead(self, k: int, result: Any) -> None:
        if len(self.endpoints) > 1:
            logger.warning("%s: %s is down (%s); skipped for %.0f s", self.target, self.endpoints[k].base_url, result.error, REVIVE_AFTER)
        self._dead[k] = time.monotonic()

    def _down_error(self, method: str, path: str, result: Any, ep: ChatEndpoint) -> FlowOPDError:
        if result.refused:
            return FlowOPDError(
                f"{self.target}: cannot reach the reward server at {ep.base_url} ({result.reason}, {result.attempts} attempt(s)); "
                f"start `flowopd rewards serve {self.target}` there or set ${url_env(self.target)}"
            )
        return FlowOPDError(f"{self.target}: {method} {path}: {result.error}")

    def _request(self, method: str, path: str, body: bytes | None, validate: Any) -> Any:
        """One request, round-robin over the servers (the ones down lately last); one line when every server failed."""
        n = len(self.endpoints)
        start = next(self._turn) % n
        ring = [(start + i) % n for i in range(n)]
        now = time.monotonic()
        up = [k for k in ring if now - self._dead.get(k, -math.inf) > REVIVE_AFTER and self._back_up(k)]
        last = None
        for k in up + [k for k in ring if k not in up]:
            try:
                reply = self._call(self.endpoints[k], method, path, body, validate)
            except _Down as exc:
                self._mark_dead(k, exc.result)
                last = (exc.result, self.endpoints[k])
                continue
            self._dead.pop(k, None)
            return reply
        raise self._down_error(method, path, *last)

    def _back_up(self, k: int) -> bool:
        """Whether server ``k`` may be sent work: yes unless marked dead; a dead one only once a quick ``GET /health``
        (no retries) says it is ready, serving what it served at first (else a one-line refusal: another version)."""
        if k not in self._dead:
            return True
        ep = self.endpoints[k]
        probe = ChatEndpoint(ep.base_url, api_key_env=TOKEN_ENV, timeout=PROBE_TIMEOUT, max_retries=0, name=ep.name)
        result, health = probe._with_retries("GET", f"{ep.base_url}/health", None, _health_reply)
        if result.error is not None or not health.get("ready", False):
            self._dead[k] = time.monotonic()  # still down (or still loading): skipped for another REVIVE_AFTER
            return False
        served = self._served or health
        if (health["name"], str(health["version"]), health["identity"]) != (served["name"], str(served["version"]), served["identity"]):
            raise FlowOPDError(
                f"{ep.base_url} came back serving {health['name']} version {health['version']} ({health['identity']!r}), not the "
                f"{served['name']} version {served['version']} ({served['identity']!r}) it served at first: restart it with that one"
            )
        logger.info("%s: %s is back; sending it work again", self.target, ep.base_url)
        self._dead.pop(k, None)
        return True

    def _check_size(self, size: int, n: int) -> None:
        """Refuse, before sending, a request over the server's body limit (it would only be cut off with a 413)."""
        limit = float(self._served.get("max_body_mb") or math.inf) * 2**20
        if size > limit:
            raise FlowOPDError(
                f"{self.target}: a request of {n} images is {size / 2**20:.1f} MB, over the server's --max-body-mb "
                f"{limit / 2**20:g}; lower batch_size (now {self.batch_size}) or serve with a larger --max-body-mb"
            )

    def score(self, images: ImageBatch, prompts: Sequence[str], metadata: Sequence[dict[str, Any] | None] | None = None) -> Scores:
        """Score a batch on the server, ``batch_size`` images per request, ``concurrency`` requests in flight."""
        arrays, prompts, meta = self.checked_inputs(images, prompts, metadata)
        self._ensure_loaded()
        starts = list(range(0, len(arrays), self.batch_size))

        def one(start: int) -> list[dict[str, Any]]:
            end = start + self.batch_size
            body = {"images": [png_base64(a) for a in arrays[start:end]], "prompts": prompts[start:end], "metadata": meta[start:end]}
            data = json.dumps(body).encode()
            self._check_size(len(data), len(body["prompts"]))
            return self._request("POST", "/score", data, _score_reply(len(body["prompts"]), self._served))

        workers = max(1, min(self.endpoint.concurrency * len(self.endpoints), len(starts)))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"remote-{self.target}") as pool:
            records = [r for chunk in pool.map(one, starts) for r in chunk]
        raw = torch.tensor([math.nan if r["failed"] or r["raw"] is None else float(r["raw"]) for r in records], dtype=torch.float32)
        normalized = torch.tensor(
            [math.nan if r["failed"] or r["normalized"] is None else float(r["normalized"]) for r in records], dtype=torch.float32
        )
        return Scores(raw=raw, normalized=normalized, details=[dict(r.get("details") or {}) for r in records])


# ------------------------------------------------------------------ reply checks (a bad reply is retried)


class _Down(Exception):
    """A server whose retries ran out (timeouts, connections, 5xx, bad replies): the next one is tried."""

    def __init__(self, result: Any):
        super().__init__(result.error)
        self.result = result


def _health_reply(reply: Any) -> dict[str, Any]:
    if not isinstance(reply, dict) or not {"name", "version", "identity"} <= set(reply):
        raise _BadReply(f"GET /health answered {json.dumps(reply)[:200]}, not a flowopd reward server's health")
    if reply.get("protocol", PROTOCOL) != PROTOCOL:
        raise FlowOPDError(f"the server speaks {reply.get('protocol')!r}; this client speaks {PROTOCOL!r}: use the same flowopd version")
    return reply


def _score_reply(n: int, served: Mapping[str, Any]) -> Any:
    def check(reply: Any) -> list[dict[str, Any]]:
        if isinstance(reply, dict) and (reply.get("version"), reply.get("identity")) != (served["version"], served["identity"]):
            raise FlowOPDError(
                f"the server of {served['name']} now serves version {reply.get('version')} ({reply.get('identity')!r}), not the "
                f"{served['version']} ({served['identity']!r}) it answered at first: it was restarted with another version; stop here"
            )
        scores = reply.get("scores") if isinstance(reply, dict) else None
        if not isinstance(scores, list) or not all(isinstance(s, dict) and "raw" in s for s in scores):
            raise _BadReply(f"POST /score answered {json.dumps(reply)[:200]}, not {{scores: [...]}}")
        if len(scores) != n:
            raise _BadReply(f"POST /score answered {len(scores)} scores for {n} images")
        return [{"failed": bool(s.get("failed")) or s["raw"] is None, **{k: v for k, v in s.items() if k != "failed"}} for s in scores]

    return check


def _normalize_reply(n: int) -> Any:
    def check(reply: Any) -> list[float | None]:
        values = reply.get("normalized") if isinstance(reply, dict) else None
        if not isinstance(values, list) or len(values) != n:
            raise _BadReply(f"POST /normalize answered {json.dumps(reply)[:200]} for {n} values")
        return values

    return check
