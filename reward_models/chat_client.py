"""A small client for OpenAI-compatible chat-completions servers (what vLLM and SGLang serve).

Served rewards (``unifiedreward``, ``qwenvl_judge``, ``deqa`` with the served
backend) send one request per image to ``POST {base_url}/chat/completions``
with the protocol of the OpenAI chat-completions API
(https://platform.openai.com/docs/api-reference/chat/create):

- the image goes in a user message as an ``image_url`` content part holding a
  base64 PNG *data URL* (``data:image/png;base64,...``), next to a ``text`` part;
- ``logprobs: true`` with ``top_logprobs: k`` asks for the ``k`` most likely
  tokens at each generated position; the reply carries them in
  ``choices[0].logprobs.content[i].top_logprobs`` as ``{"token", "logprob"}``;
- vLLM's extra parameters ``add_generation_prompt: false`` +
  ``continue_final_message: true`` make the model continue a final assistant
  message (an answer prefix), which DeQA's served backend uses.

Requests run concurrently in a thread pool (``concurrency`` in flight at
most), each with a socket timeout, and are retried with exponential backoff
and jitter on timeouts, dropped or refused connections, HTTP 429 and 5xx.
Other 4xx answers are not retried. Every image gets a :class:`ChatResult`:
the reply text (and logprobs when asked) or an error string. When no request
ever reached the server (connection refused on every attempt of every
request) one :class:`~flowopd.errors.FlowOPDError` names the URL and the
variable to set.

Configuration per reward ``<REWARD>`` (the reward name upper-cased, other
characters turned into ``_``, e.g. ``QWENVL_JUDGE``):

- ``FLOWOPD_<REWARD>_URL``: the base URL, up to and including ``/v1``
  (e.g. ``http://127.0.0.1:8000/v1``);
- ``FLOWOPD_<REWARD>_MODEL``: the served model name; when unset the client asks
  ``GET {base_url}/models`` and uses the one model served there;
- ``FLOWOPD_<REWARD>_API_KEY``: the API key (the default ``api_key_env``), sent
  as ``Authorization: Bearer <key>``.

Constructor keyword arguments override each of these. The API key is read
from the environment when a request is sent and is never stored on the
endpoint; it is redacted from every error message, log record and result.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import errno
import http.client
import io
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from flowopd.config import env_var_name
from flowopd.errors import FlowOPDError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_BACKOFF = 1.0
DEFAULT_CONCURRENCY = 16
MAX_BACKOFF = 30.0
REDACTED = "***"
_EXCERPT = 300


def env_prefix(reward: str) -> str:
    """``FLOWOPD_<REWARD>``: the prefix of a reward's server variables (``qwenvl_judge`` -> ``FLOWOPD_QWENVL_JUDGE``)."""
    return env_var_name("FLOWOPD_", reward)


def served_status(reward: str, serves: str) -> tuple[bool, str | None]:
    """``weights_status`` of a served reward: available only when its URL variable is set."""
    url_env = env_prefix(reward) + "_URL"
    if os.environ.get(url_env):
        return True, None
    return False, (
        f"set ${url_env} to the base URL (ending in /v1) of an OpenAI-compatible chat-completions server (vLLM/SGLang) serving {serves}"
    )


def png_data_url(image: np.ndarray) -> str:
    """A uint8 ``[H, W, 3]`` image as a base64 PNG data URL (lossless, unlike the JPEG some scorers send)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclasses.dataclass
class ChatRequest:
    """One image + text turn. ``assistant_prefix`` is an answer the model must continue (vLLM/SGLang extension)."""

    image: np.ndarray | None
    text: str
    image_first: bool = True  # order of the content parts in the user message
    assistant_prefix: str | None = None


@dataclasses.dataclass
class ChatResult:
    """What came back for one request: ``text`` (and ``logprobs``) or ``error``; ``attempts`` made."""

    text: str | None = None
    logprobs: list[dict[str, Any]] | None = None  # choices[0].logprobs.content
    error: str | None = None
    attempts: int = 0
    refused: bool = False  # no attempt ever connected (refused, unknown host, no route): the server was never reached
    reason: str | None = None  # the last transport error, without the URL

    @property
    def ok(self) -> bool:
        return self.error is None


class _Retryable(Exception):
    """A transient failure: a timeout, a dropped connection, HTTP 429 or 5xx."""

    def __init__(self, reason: str, url: str, refused: bool = False, retry_after: float | None = None):
        super().__init__(f"{reason} ({url})")
        self.reason = reason
        self.refused = refused
        self.retry_after = retry_after


class _Fatal(Exception):
    """A failure a retry cannot fix: another 4xx, a reply that is not chat-completions JSON."""


class _BadReply(_Fatal):
    """A reply that is not the JSON asked for: fatal for a chat server, retried where a ``validate`` is given (a reward
    server that answered garbage may be restarting)."""


class ChatEndpoint:
    """One OpenAI-compatible chat-completions server.

    ``base_url`` ends in ``/v1`` (requests go to ``{base_url}/chat/completions``);
    ``model`` is the served model name (``None``: asked of ``GET {base_url}/models``);
    ``api_key_env`` names the variable holding the key (read per request, never stored);
    ``timeout`` is the socket timeout of one attempt in seconds; ``max_retries`` the
    retries after the first attempt; ``backoff`` the first retry delay (doubled per
    retry, times a random factor in [0.5, 1.5), capped at 30 s); ``concurrency`` the
    number of requests in flight. ``url_env`` and ``name`` only make error messages
    say which reward and which variable.
    """

    def __init__(
        self,
        base_url: str | None,
        model: str | None = None,
        api_key_env: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        concurrency: int = DEFAULT_CONCURRENCY,
        *,
        url_env: str | None = None,
        model_env: str | None = None,
        name: str = "chat",
    ):
        if max_retries < 0 or concurrency < 1 or timeout <= 0 or backoff < 0:
            raise ValueError("ChatEndpoint needs timeout > 0, max_retries >= 0, backoff >= 0 and concurrency >= 1")
        self.base_url = base_url.rstrip("/") if base_url else None
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.concurrency = int(concurrency)
        self.url_env = url_env
        self.model_env = model_env
        self.name = name
        self.not_found_hint = "is the base URL missing '/v1'?"  # said after an HTTP 404
        self._model_lock = threading.Lock()

    @classmethod
    def from_env(
        cls,
        reward: str,
        *,
        base_url: str | None = None,
        model: str | None = None,
        api_key_env: str | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        backoff: float | None = None,
        concurrency: int | None = None,
    ) -> ChatEndpoint:
        """The endpoint of ``reward`` from ``FLOWOPD_<REWARD>_URL/_MODEL/_API_KEY``, keyword arguments taking precedence."""
        prefix = env_prefix(reward)
        return cls(
            base_url or os.environ.get(prefix + "_URL") or None,
            model or os.environ.get(prefix + "_MODEL") or None,
            api_key_env or prefix + "_API_KEY",
            DEFAULT_TIMEOUT if timeout is None else timeout,
            DEFAULT_MAX_RETRIES if max_retries is None else max_retries,
            DEFAULT_BACKOFF if backoff is None else backoff,
            DEFAULT_CONCURRENCY if concurrency is None else concurrency,
            url_env=prefix + "_URL",
            model_env=prefix + "_MODEL",
            name=reward,
        )

    # ------------------------------------------------------------------ secrets

    def _api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None

    def redact(self, text: str) -> str:
        """``text`` with the API key (if any) replaced by ``***``."""
        key = self._api_key()
        return text.replace(key, REDACTED) if key and text else text

    def __repr__(self) -> str:
        key = "unset" if self._api_key() is None else "set"
        return (
            f"ChatEndpoint(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r} ({key}), "
            f"timeout={self.timeout}, max_retries={self.max_retries}, concurrency={self.concurrency})"
        )

    # ------------------------------------------------------------------ configuration

    def require_url(self) -> str:
        """The base URL, or a one-line error naming the variable to set."""
        if not self.base_url:
            var = f"${self.url_env}" if self.url_env else "base_url="
            raise FlowOPDError(
                f"{self.name}: no server configured; set {var} to the base URL (ending in /v1) of an "
                f"OpenAI-compatible chat-completions server (vLLM/SGLang), e.g. http://127.0.0.1:8000/v1"
            )
        from urllib.parse import urlsplit

        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            var = f"${self.url_env}" if self.url_env else "base_url="
            raise FlowOPDError(f"{self.name}: {var} is {self.base_url!r}, not an http(s) URL; set it like http://127.0.0.1:8000/v1")
        return self.base_url

    def _unreachable(self, result: ChatResult) -> FlowOPDError:
        var = f"${self.url_env}" if self.url_env else "base_url="
        return FlowOPDError(
            f"{self.name}: cannot reach the chat-completions server at {self.base_url} ({result.reason or 'no connection'}, "
            f"{result.attempts} attempt(s)); start an OpenAI-compatible server (vLLM/SGLang) there or set {var} to its base URL"
        )

    def resolve_model(self) -> str:
        """The model name: the configured one, else the single model listed by ``GET {base_url}/models``."""
        if self.model:
            return self.model
        with self._model_lock:
            if self.model:
                return self.model
            url = self.require_url() + "/models"
            result, body = self._with_retries("GET", url, None)
            if result.refused:
                raise self._unreachable(result)
            if result.error is not None:
                raise FlowOPDError(f"{self.name}: cannot list the served models ({result.error}); set ${self.model_env} to the model name")
            ids = [m.get("id") for m in (body or {}).get("data", []) if isinstance(m, dict) and m.get("id")]
            if len(ids) != 1:
                raise FlowOPDError(
                    f"{self.name}: the server at {self.base_url} serves {len(ids)} models ({', '.join(map(str, ids[:5])) or 'none'}); "
                    f"set ${self.model_env} to the one to use"
                )
            self.model = str(ids[0])
            return self.model

    # ------------------------------------------------------------------ payloads

    def build_payload(
        self,
        request: ChatRequest,
        *,
        max_tokens: int = 1024,
        temperature: float = 0.0,
        top_logprobs: int | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The JSON body of one chat-completions request."""
        parts: list[dict[str, Any]] = [{"type": "text", "text": request.text}]
        if request.image is not None:
            image_part = {"type": "image_url", "image_url": {"url": png_data_url(request.image)}}
            parts = [image_part, *parts] if request.image_first else [*parts, image_part]
        messages: list[dict[str, Any]] = [{"role": "user", "content": parts}]
        payload: dict[str, Any] = {
            "model": self.resolve_model(),
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if request.assistant_prefix is not None:
            messages.append({"role": "assistant", "content": request.assistant_prefix})
            payload["add_generation_prompt"] = False
            payload["continue_final_message"] = True
        if top_logprobs is not None:
            payload["logprobs"] = True
            payload["top_logprobs"] = int(top_logprobs)
        if extra_body:
            payload.update(extra_body)
        return payload

    # ------------------------------------------------------------------ transport

    def _opener(self, url: str) -> urllib.request.OpenerDirector:
        host = urllib.parse.urlparse(url).hostname or ""
        if host in ("127.0.0.1", "localhost", "::1"):  # never send loopback traffic through an environment proxy
            return urllib.request.build_opener(urllib.request.ProxyHandler({}))
        return urllib.request.build_opener()

    def _send(self, method: str, url: str, body: bytes | None) -> Any:
        """One attempt: the decoded JSON reply, or :class:`_Retryable` / :class:`_Fatal`."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with self._opener(url).open(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            try:
                text = exc.read().decode("utf-8", "replace")
            except Exception:  # the body may be cut off with the connection
                text = ""
            excerpt = self.redact(text.strip())[:_EXCERPT]
            if status == 429 or status >= 500:
                raise _Retryable(f"HTTP {status}: {excerpt}", url, retry_after=_retry_after(exc.headers)) from None
            msg = f"HTTP {status} from {url}: {excerpt}"
            if status == 404 and self.not_found_hint:
                msg += f" ({self.not_found_hint})"
            raise _Fatal(msg) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, OSError):
                raise _Retryable(_describe(reason), url, refused=_never_connected(reason)) from None
            raise _Fatal(self.redact(f"cannot request {url}: {reason}")) from None
        except TimeoutError as exc:
            raise _Retryable(_describe(exc), url) from None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise _Retryable(_describe(exc), url, refused=_never_connected(exc)) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise _BadReply(f"reply from {url} is not JSON: {self.redact(raw[:_EXCERPT].decode('utf-8', 'replace'))!r}") from None

    def _delay(self, retry: int, retry_after: float | None) -> float:
        delay = min(MAX_BACKOFF, self.backoff * (2 ** (retry - 1)) * random.uniform(0.5, 1.5))
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_BACKOFF))
        return delay

    def _attempt(self, method: str, url: str, body: bytes | None, validate: Callable[[Any], Any] | None) -> Any:
        """One attempt through :meth:`_send`, then ``validate`` (which raises :class:`_BadReply` for a reply to retry)."""
        if validate is None:
            return self._send(method, url, body)
        try:
            return validate(self._send(method, url, body))
        except _BadReply as exc:
            raise _Retryable(self.redact(str(exc)), url) from None

    def _with_retries(
        self, method: str, url: str, body: bytes | None, validate: Callable[[Any], Any] | None = None
    ) -> tuple[ChatResult, Any]:
        """Send with retries; a :class:`ChatResult` carrying the error or attempts, and the JSON reply (``validate``'s result
        where given: a reply it refuses with :class:`_BadReply`, or one that is not JSON, is retried like an HTTP 5xx)."""
        refused_every_time = True
        last = reason = ""
        for attempt in range(1, self.max_retries + 2):
            try:
                return ChatResult(attempts=attempt), self._attempt(method, url, body, validate)
            except _Fatal as exc:
                return ChatResult(error=self.redact(str(exc)), attempts=attempt), None
            except _Retryable as exc:
                refused_every_time &= exc.refused
                last, reason = self.redact(str(exc)), exc.reason
                if attempt > self.max_retries:
                    break
                delay = self._delay(attempt, exc.retry_after)
                logger.debug("%s: attempt %d failed (%s); retrying in %.2fs", self.name, attempt, last, delay)
                time.sleep(delay)
        attempts = self.max_retries + 1
        error = f"failed after {attempts} attempt(s): {last}"
        return ChatResult(error=error, attempts=attempts, refused=refused_every_time, reason=reason), None

    def chat(self, request: ChatRequest, **kwargs: Any) -> ChatResult:
        """Send one request (with retries); the reply text and logprobs, or an error string."""
        url = self.require_url() + "/chat/completions"
        body = json.dumps(self.build_payload(request, **kwargs)).encode("utf-8")
        result, reply = self._with_retries("POST", url, body)
        if reply is None:
            return result
        try:
            choice = reply["choices"][0]
            content = choice["message"].get("content")
            logprobs = (choice.get("logprobs") or {}).get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            result.error = f"reply is not a chat completion: {self.redact(json.dumps(reply)[:_EXCERPT])}"
            return result
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        result.text = self.redact(content) if isinstance(content, str) else ""
        result.logprobs = logprobs if isinstance(logprobs, list) else None
        return result

    def chat_many(self, requests: Sequence[ChatRequest], **kwargs: Any) -> list[ChatResult]:
        """Send every request, ``concurrency`` at a time; one :class:`ChatResult` per request, in order.

        Raises one :class:`FlowOPDError` when the server was never reached (every
        attempt of every request refused); other failures stay per request.
        """
        if not requests:
            return []
        self.require_url()
        self.resolve_model()
        workers = min(self.concurrency, len(requests))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{self.name}-chat") as pool:
            results = list(pool.map(lambda r: self.chat(r, **kwargs), requests))
        if all(r.refused for r in results):
            raise self._unreachable(results[0])
        for r in results:
            if r.error is not None:
                logger.debug("%s: request failed: %s", self.name, r.error)
        return results


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("Retry-After") if headers is not None else None
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def _never_connected(exc: BaseException) -> bool:
    """Whether the error means no connection was ever made (refused, unknown host, no route), not a failure mid-request."""
    if isinstance(exc, (ConnectionRefusedError, socket.gaierror)):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    return f"{type(exc).__name__}: {exc}"
