"""`flowopd rewards serve NAME`: one registered reward behind a small HTTP server, in the environment it needs.

FastAPI on uvicorn (the ``serve`` extra). The protocol is JSON only (no pickle):

- ``GET /health``: ``{"protocol", "name", "version", "identity", "device", "ready", "max_batch", "max_body_mb"}``;
- ``GET /info``: the same plus ``higher_is_better``, ``description``, ``needs_metadata``, ``raw_range``;
- ``POST /score``: ``{"images": [base64 PNG, ...], "prompts": [str, ...], "metadata": [dict | null, ...] | null}``,
  answered ``{"name", "version", "identity", "scores": [{"raw", "normalized", "failed", "details"}, ...]}``
  (``raw``/``normalized`` are ``null`` where ``failed``);
- ``POST /normalize``: ``{"raw": [float | null, ...]}`` -> ``{"normalized": [...]}`` (for clients without the class).

A refused request is a 4xx (a 5xx for a reward that crashed) whose body is one line of plain text. Concurrent
``/score`` requests queue up and one worker scores them together, up to ``max_batch`` images per call, in a thread
(the event loop keeps answering). The reward loads once, before the first request is accepted. The bearer token
(``$FLOWOPD_REWARD_TOKEN``, read at start) guards ``/score``, ``/normalize`` and ``/info``; ``/health`` stays open for
probes. Logs carry counts and timings, never image payloads or the token.
"""

import asyncio
import base64
import binascii
import dataclasses
import hmac
import io
import json
import logging
import os
import threading
import time
from typing import Any

import numpy as np

from flowopd.errors import FlowOPDError
from flowopd.reward_models.base import RewardModel, Scores

logger = logging.getLogger(__name__)

PROTOCOL = "flowopd-reward/1"
TOKEN_ENV = "FLOWOPD_REWARD_TOKEN"
MAX_PIXELS = 64 * 1024 * 1024  # per image: a decompression bomb is refused before it is decoded
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC: the last 8 bytes of every complete PNG


@dataclasses.dataclass
class ServeSettings:
    """How one reward is served."""

    name: str
    host: str = "127.0.0.1"
    port: int = 8765
    device: str = "cpu"
    max_batch: int = 64
    max_body_mb: float = 64.0

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_body_mb <= 0 or not 0 <= self.port < 65536:
            raise FlowOPDError("rewards serve needs --max-batch >= 1, --max-body-mb > 0 and a --port in [0, 65535]")


class BadRequest(Exception):
    """A request the server refuses: ``status`` and one line saying why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def require_fastapi() -> None:
    """A one-line error naming the extra when FastAPI or uvicorn is missing."""
    import importlib.util

    for module in ("fastapi", "uvicorn"):
        if importlib.util.find_spec(module) is None:
            raise FlowOPDError(f"`flowopd rewards serve` needs {module}: pip install 'flowopd[serve]' in the reward's environment")


# ------------------------------------------------------------------ payloads


def decode_png(text: Any, index: int) -> np.ndarray:
    """One base64 PNG -> uint8 ``[H, W, 3]``, or :class:`BadRequest` naming the image."""
    from PIL import Image

    if not isinstance(text, str):
        raise BadRequest(400, f"image {index} is a {type(text).__name__}, not a base64 PNG string")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(400, f"image {index} is not valid base64") from None
    if data.startswith(PNG_SIGNATURE) and not data.endswith(PNG_END):  # PIL decodes a PNG cut after its pixel data
        raise BadRequest(400, f"image {index} is a truncated PNG (no IEND chunk at its end); send the whole file")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise BadRequest(400, f"image {index} is {im.size[0]}x{im.size[1]} pixels; at most {MAX_PIXELS} are taken")
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except BadRequest:
        raise
    except Exception as exc:  # PIL raises many types for a bad file: UnidentifiedImageError, OSError, SyntaxError...
        raise BadRequest(400, f"image {index} is not a readable PNG ({type(exc).__name__}: {str(exc)[:120]})") from None


def parse_score_request(body: bytes) -> tuple[list[np.ndarray], list[str], list[dict[str, Any] | None]]:
    """A ``/score`` body -> ``(images, prompts, metadata)``, or :class:`BadRequest` with one line."""
    try:
        payload = json.loads(body)
    except ValueError:
        raise BadRequest(400, "the body is not JSON; send {images: [base64 PNG], prompts: [str], metadata: [object|null]}") from None
    if not isinstance(payload, dict):
        raise BadRequest(400, "the body must be a JSON object with images, prompts and metadata")
    images, prompts, metadata = payload.get("images"), payload.get("prompts"), payload.get("metadata")
    if not isinstance(images, list) or not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise BadRequest(400, "images must be a list of base64 PNG strings and prompts a list of strings")
    if metadata is None:
        metadata = [None] * len(prompts)
    if not isinstance(metadata, list) or not all(m is None or isinstance(m, dict) for m in metadata):
        raise BadRequest(400, "metadata must be null or a list of objects (or nulls), one per image")
    if not len(images) == len(prompts) == len(metadata):
        raise BadRequest(
            400, f"got {len(images)} images, {len(prompts)} prompts and {len(metadata)} metadata entries; send one of each per image"
        )
    return [decode_png(t, k) for k, t in enumerate(images)], prompts, metadata


def _records(scores: Scores) -> list[dict[str, Any]]:
    return [{"failed": False, **r} if "failed" not in r else r for r in scores.to_records()]


# ------------------------------------------------------------------ dynamic batching


@dataclasses.dataclass
class _Job:
    images: list[np.ndarray]
    prompts: list[str]
    metadata: list[dict[str, Any] | None]
    future: asyncio.Future


class BatchScorer:
    """Concurrent requests queue up; one worker scores up to ``max_batch`` images per call of the reward, in a thread."""

    def __init__(self, reward: RewardModel, max_batch: int):
        self.reward = reward
        self.max_batch = max_batch
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.batches = 0  # calls of the reward (a test reads how many requests shared one)

    async def submit(self, images: list[np.ndarray], prompts: list[str], metadata: list[dict[str, Any] | None]) -> list[dict]:
        """The per-image records of one request, once the worker has scored it (a bad one raises its own error)."""
        job = _Job(images, prompts, metadata, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def run(self) -> None:
        """The worker: take a job, add queued ones while they fit in ``max_batch``, score them together."""
        pending: _Job | None = None
        while True:
            jobs = [pending or await self.queue.get()]
            pending = None
            size = len(jobs[0].images)
            while not self.queue.empty():
                job = self.queue.get_nowait()
                if size + len(job.images) > self.max_batch:
                    pending = job  # first in the next batch, so the order of arrival is kept
                    break
                jobs.append(job)
                size += len(job.images)
            try:
                results = await asyncio.to_thread(self._score_jobs, jobs)
            except Exception as exc:  # never expected (_score_jobs catches the reward's errors), but the worker must live on
                results = [_as_bad_request(exc)] * len(jobs)
            self.batches += 1
            for job, result in zip(jobs, results):
                if job.future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _score_jobs(self, jobs: list[_Job]) -> list[list[dict] | BaseException]:
        """Score several requests in one call; if that fails, each alone, so a bad request fails only itself."""
        if len(jobs) > 1:
            try:
                records = _records(self._score([im for j in jobs for im in j.images], jobs))
                out, start = [], 0
                for j in jobs:
                    out.append(records[start : start + len(j.images)])
                    start += len(j.images)
                return out
            except Exception:
                logger.debug("a batch of %d requests failed together; scoring them one by one", len(jobs))
        results: list[list[dict] | BaseException] = []
        for j in jobs:
            try:
                results.append(_records(self._score(j.images, [j])))
            except Exception as exc:
                results.append(_as_bad_request(exc))
        return results

    def _score(self, images: list[np.ndarray], jobs: list[_Job]) -> Scores:
        arrays: Any = np.stack(images) if images and len({a.shape for a in images}) == 1 else images
        return self.reward.score(arrays, [p for j in jobs for p in j.prompts], [m for j in jobs for m in j.metadata])


def _as_bad_request(exc: Exception) -> BadRequest:
    """A reward's error as the answer: its ``ValueError`` (bad metadata, bad input) is a 422, anything else a 500."""
    line = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (ValueError, TypeError)):
        return BadRequest(422, line[:500])
    logger.error("the reward failed while scoring: %s: %s", type(exc).__name__, line[:500])
    return BadRequest(500, f"the reward failed while scoring: {type(exc).__name__}: {line[:400]}")


# ------------------------------------------------------------------ the app


def describe(reward: RewardModel, settings: ServeSettings) -> dict[str, Any]:
    """What ``GET /health`` answers."""
    return {
        "protocol": PROTOCOL,
        "name": reward.name,
        "version": reward.version,
        "identity": reward.identity(),
        "device": str(reward.device),
        "ready": reward._loaded,
        "max_batch": settings.max_batch,
        "max_body_mb": settings.max_body_mb,
    }


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, or a 413 as soon as it is known to be over ``limit`` bytes (by its header, else while reading)."""
    declared = request.headers.get("content-length")
    too_big = f"this server takes bodies of at most {limit / 2**20:g} MB (--max-body-mb); send fewer images per request"
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"the body is {int(declared) / 2**20:.1f} MB; {too_big}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"the body is over the limit; {too_big}")
        chunks.append(chunk)
    return b"".join(chunks)


def check_bearer(sent: str, token: str | None) -> None:
    """A 401 unless the ``Authorization`` header carries ``token`` (compared in constant time; neither is ever logged)."""
    if token is not None and not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
        raise BadRequest(401, f"missing or wrong bearer token; set ${TOKEN_ENV} to this server's token")


def json_response(obj: Any) -> Any:
    """A JSON reply (``default=str``: a reward's details may hold numpy scalars or paths)."""
    from fastapi.responses import Response

    return Response(json.dumps(obj, default=str).encode(), media_type="application/json")


def build_app(reward: RewardModel, settings: ServeSettings, token: str | None = None) -> Any:
    """The FastAPI app serving ``reward`` (loaded here, once); ``token``: the bearer token required, ``None`` for none."""
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.responses import PlainTextResponse, Response

    reward.batch_size = settings.max_batch
    reward._ensure_loaded()  # one load per process, before the first request is accepted
    scorer = BatchScorer(reward, settings.max_batch)
    limit = int(settings.max_body_mb * 2**20)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        worker = asyncio.create_task(scorer.run())
        logger.info("serving %s@%s (identity %r) on %s", reward.name, reward.version, reward.identity(), reward.device)
        yield
        worker.cancel()

    app = FastAPI(title=f"flowopd reward {reward.name}", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scorer = scorer

    def check_token(request: Request) -> None:
        check_bearer(request.headers.get("authorization", ""), token)

    @app.exception_handler(BadRequest)
    async def refuse(request: Request, exc: BadRequest) -> Response:
        if exc.status >= 500 or exc.status == 413:
            logger.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc)
        return PlainTextResponse(str(exc) + "\n", status_code=exc.status)

    @app.get("/health")
    async def health() -> Response:
        return json_response(describe(reward, settings))

    @app.get("/info")
    async def info(request: Request) -> Response:
        check_token(request)
        extra = {k: getattr(reward, k) for k in ("higher_is_better", "description", "needs_metadata", "raw_range")}
        return json_response({**describe(reward, settings), **extra})

    @app.post("/score")
    async def score(request: Request) -> Response:
        check_token(request)
        started = time.perf_counter()
        images, prompts, metadata = parse_score_request(await read_body(request, limit))
        records = await scorer.submit(images, prompts, metadata)
        logger.info("scored %d image(s) in %.1f ms", len(images), 1000 * (time.perf_counter() - started))
        return json_response({"name": reward.name, "version": reward.version, "identity": reward.identity(), "scores": records})

    @app.post("/normalize")
    async def normalize(request: Request) -> Response:
        check_token(request)
        return json_response({"normalized": normalize_values(reward, await read_body(request, limit))})

    return app


def normalize_values(reward: RewardModel, body: bytes) -> list[float | None]:
    """``/normalize``: raw scores (``null`` for failed) -> the training scale."""
    import math

    import torch

    try:
        raw = json.loads(body)["raw"]
        values = torch.tensor([math.nan if r is None else float(r) for r in raw], dtype=torch.float32)
    except (ValueError, KeyError, TypeError):
        raise BadRequest(400, 'send {"raw": [number or null, ...]}') from None
    return [None if math.isnan(v) else v for v in reward.normalize(values).tolist()]


# ------------------------------------------------------------------ running


def make_server(settings: ServeSettings, reward: RewardModel | None = None, log_level: str = "info") -> Any:
    """A uvicorn server for ``settings`` (the reward is loaded from the registry unless given); not started."""
    require_fastapi()
    import uvicorn

    from flowopd.reward_models.registry import load_reward

    if reward is None:
        reward = load_reward(settings.name, device=settings.device, batch_size=settings.max_batch)
    token = os.environ.get(TOKEN_ENV) or None
    app = build_app(reward, settings, token)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level, access_log=False, lifespan="on")
    return uvicorn.Server(config)


def bound_url(server: Any) -> str:
    """``http://host:port`` of a started uvicorn server (the real port when it was asked for port 0)."""
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return f"http://{host}:{port}"


def serve_in_thread(settings: ServeSettings, reward: RewardModel | None = None, timeout: float = 30.0) -> tuple[str, Any]:
    """Start a server in a daemon thread; ``(url, server)``, stopped with ``server.should_exit = True``."""
    server = make_server(settings, reward, log_level="warning")
    thread = threading.Thread(target=server.run, name=f"reward-serve-{settings.name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise FlowOPDError(f"the reward server for {settings.name} did not start on {settings.host}:{settings.port}")
        time.sleep(0.01)
    server.thread = thread
    return bound_url(server), server
