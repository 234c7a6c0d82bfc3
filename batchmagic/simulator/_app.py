"""SimState: the per-server state and the POST /v1 request flow (limits, faults, latency, log).

Handlers stay lean (one sha256, one orjson parse/dump, no per-request logging) so one core
serves thousands of requests per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import os
import random
import time
from collections import OrderedDict
from typing import Any

import orjson
from aiohttp import web

from ._config import SimConfig
from ._endpoints import BUILD, PATHS, PREPARE, call_tag
from ._extras import JSON_FAULTS, STREAM_FAULTS, applies, spoil
from ._faults import (
    IMMEDIATE,
    FaultPicker,
    body_fault_response,
    immediate_response,
)
from ._http import (
    JSON_CT,
    ApiError,
    abort_connection,
    error_obj,
    json_response,
    send_trickle,
    send_truncated,
)
from ._limits import RateLimiter, retry_after_headers
from ._sse import SSE_CT, send_stream, stream_bytes, stream_steps

DEFAULT_MODELS = ("sim-chat", "sim-embed", "sim-image")
#: faults that spoil an answer only when the request asks for JSON, tool calls or a stream
CONDITIONAL = JSON_FAULTS | STREAM_FAULTS
#: faults after which the answer is still sent the normal way (spoiled, or late)
ANSWERED = CONDITIONAL | {"hang"}


def draw_latency(cfg: SimConfig, rng: random.Random) -> float:
    """Base latency of one request.

    * fixed: ``latency``;
    * uniform: ``latency`` +/- ``latency_jitter`` (uniform, floored at 0);
    * exponential: ``latency`` + an exponential draw of mean ``latency_jitter``;
    * lognormal: ``latency`` x lognormal(mu=0, sigma=``latency_jitter``) (median ``latency``).
    """
    base, jitter, dist = cfg.latency, cfg.latency_jitter, cfg.latency_dist
    if dist == "fixed" or jitter <= 0:
        return base
    if dist == "uniform":
        return max(0.0, base + rng.uniform(-jitter, jitter))
    if dist == "exponential":
        return base + rng.expovariate(1.0 / jitter)
    return base * rng.lognormvariate(0.0, jitter)


class SimState:
    """Everything the simulator keeps between requests (one per application)."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.t0 = time.monotonic()
        self.limiter = RateLimiter()
        self.limiter.configure(cfg.rpm, cfg.tpm, cfg.burst, self.t0)
        self.faults = FaultPicker()
        self.faults.configure(cfg)
        self.rng = random.Random(cfg.seed)
        self.missing = frozenset(cfg.missing_models)
        self.calls: list[dict[str, Any]] = []
        self.by_status: dict[Any, int] = {}
        self.by_fault: dict[str, int] = {}
        self.by_path: dict[str, int] = {}
        self.total = 0
        self.first_at: float | None = None  # wall clock of the first request since a reset
        self.in_flight = 0
        self.max_in_flight = 0
        self._rps_stamps = [-1] * 20
        self._rps_counts = [0] * 20
        self.models: dict[str, None] = dict.fromkeys(DEFAULT_MODELS)
        self.images: OrderedDict[str, bytes] = OrderedDict()
        self.ids = itertools.count(1)
        self._log_fh: Any = None
        self._log_path: str | None = None
        self._schedule_task: asyncio.Task[None] | None = None
        self._auth: tuple[bytes, bytes] | None = None
        self._set_auth(cfg.api_key)
        self._open_log(cfg.call_log_path)

    # ------------------------------------------------------------------ config
    def _set_auth(self, key: str | None) -> None:
        if key is None:
            self._auth = None
        else:
            k = key.encode("utf-8", "surrogateescape")
            self._auth = (b"Bearer " + k, k)

    def _open_log(self, path: str | None) -> None:
        if path == self._log_path:
            return
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        self._log_path = path
        if path:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with contextlib.suppress(OSError, AttributeError):
                os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
            self._log_fh = os.fdopen(fd, "ab", buffering=0)  # unbuffered: one write per line

    def apply_patch(self, patch: dict[str, Any]) -> SimConfig:
        """Apply a live config change (raises ValueError on a bad patch)."""
        old = self.cfg
        new = old.patched(patch)
        self.cfg = new
        now = time.monotonic()
        if (new.rpm, new.tpm, new.burst) != (old.rpm, old.tpm, old.burst):
            self.limiter.configure(new.rpm, new.tpm, new.burst, now)
        self.faults.configure(new)
        if new.seed != old.seed:
            self.rng = random.Random(new.seed)
        self.missing = frozenset(new.missing_models)
        self._set_auth(new.api_key)
        self._open_log(new.call_log_path)
        if "schedule" in patch:
            self.start_schedule()
        return new

    def start_schedule(self) -> None:
        if self._schedule_task is not None:
            self._schedule_task.cancel()
            self._schedule_task = None
        if self.cfg.schedule:
            self._schedule_task = asyncio.get_running_loop().create_task(
                self._run_schedule(list(self.cfg.schedule)))

    async def _run_schedule(self, entries: list[tuple[float, dict[str, Any]]]) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for at, update in entries:
            delay = start + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.apply_patch(update)

    def reset(self) -> None:
        self.calls = []
        self.by_status.clear()
        self.by_fault.clear()
        self.by_path.clear()
        self.total = 0
        self.first_at = None
        self.max_in_flight = self.in_flight
        self._rps_stamps = [-1] * 20
        self._rps_counts = [0] * 20
        self.faults.seen.clear()
        self.limiter.refill_all()

    async def close(self) -> None:
        if self._schedule_task is not None:
            self._schedule_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._schedule_task
            self._schedule_task = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    # ------------------------------------------------------------------ bookkeeping
    def stats(self) -> dict[str, Any]:
        slot = int(time.monotonic() * 10)
        pairs = zip(self._rps_stamps, self._rps_counts, strict=True)
        rps = sum(c for s, c in pairs if slot - 10 < s <= slot)
        return {
            "total": self.total,
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "by_fault": dict(self.by_fault),
            "by_path": dict(self.by_path),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "rps_last_second": rps,
            "uptime_s": round(time.monotonic() - self.t0, 3),
            "calls_logged": len(self.calls),
            "first_request_at": self.first_at,
        }

    def _record(self, now: float, path: str, model: str | None, digest: bytes, tag: str | None,
                n_inputs: int | None, status: int | None, fault: str | None,
                prompt_tokens: int | None, attempt: int | None,
                extras: dict[str, Any] | None = None) -> None:
        """Count and log one request once its outcome is decided (before any latency).

        ``status`` is None when no response is sent (resets, hang); ``attempt`` is None while
        no faults are configured (arrivals are only counted then); ``extras`` says what a chat
        or completion asked beyond one text answer (``n``, ``stream``, ``format``,
        ``tool_calls`` answered, ``logprobs``), None for a plain request.
        """
        key: Any = status if status is not None else "none"
        self.by_status[key] = self.by_status.get(key, 0) + 1
        if fault is not None:
            self.by_fault[fault] = self.by_fault.get(fault, 0) + 1
        cfg = self.cfg
        if not cfg.log_calls and self._log_fh is None:
            return
        rec = {
            "t": round(now - self.t0, 6), "path": path, "model": model,
            "hash": digest[:8].hex(), "tag": tag, "n_inputs": n_inputs, "status": status,
            "fault": fault, "prompt_tokens": prompt_tokens, "attempt": attempt,
            "extras": extras,
        }
        if cfg.log_calls:
            self.calls.append(rec)
        if self._log_fh is not None:
            self._log_fh.write(orjson.dumps(rec) + b"\n")

    def authorized(self, request: web.BaseRequest) -> bool:
        auth = self._auth
        if auth is None:
            return True
        got = request.headers.get("Authorization")
        if got is not None:
            return hmac.compare_digest(got.encode("utf-8", "surrogateescape"), auth[0])
        got = request.headers.get("api-key")  # Azure-style clients
        return got is not None and hmac.compare_digest(
            got.encode("utf-8", "surrogateescape"), auth[1])

    # ------------------------------------------------------------------ /v1 POST handlers
    async def handle(self, request: web.BaseRequest, kind: str) -> web.StreamResponse:
        now = time.monotonic()
        self.in_flight += 1
        inflight = self.in_flight
        if inflight > self.max_in_flight:
            self.max_in_flight = inflight
        self.total += 1
        if self.first_at is None:  # for a client's time to its first request (benchmarks)
            self.first_at = time.time()
        slot = int(now * 10)
        i = slot % 20
        if self._rps_stamps[i] != slot:
            self._rps_stamps[i] = slot
            self._rps_counts[i] = 0
        self._rps_counts[i] += 1
        try:
            return await self._serve(request, kind, now, inflight)
        finally:
            self.in_flight -= 1

    async def _serve(self, request: web.BaseRequest, kind: str, now: float,
                     inflight: int) -> web.StreamResponse:
        """One API request: read and check it, then a fault, a limit, or the answer after its
        latency. Every outcome is recorded in the call log."""
        path = PATHS[kind]
        self.by_path[path] = self.by_path.get(path, 0) + 1
        body = await request.read()
        digest = hashlib.sha256(body).digest()
        attempt, fault = self.faults.pick(digest) if self.faults.table else (None, None)
        extras = None  # set once the request is parsed

        def log(model, tag, n_inputs, status, fault, prompt_tokens) -> None:
            self._record(now, path, model, digest, tag, n_inputs, status, fault, prompt_tokens,
                         attempt, extras)

        refused, payload = self._refuse_unreadable(request, body, log)
        if refused is not None:
            return refused
        model = payload.get("model")
        model = model if isinstance(model, str) else None
        if fault is not None and fault in IMMEDIATE:
            return self._immediate(request, fault, model, kind, payload, log)
        try:
            job = PREPARE[kind](self, payload, self.cfg)
        except ApiError as e:
            log(model, call_tag(kind, payload), None, e.status, None, None)
            return json_response(e.status, e.body)
        if job.extra is not None:
            extras = job.extra.summary()
        if fault is not None and fault in CONDITIONAL:
            fault = self._spoil(job, fault)
        headers: dict[str, str] = {}
        if fault is None:
            refused = self._admit(job, now, inflight, headers, log)
            if refused is not None:
                return refused
        status = None if fault in ("reset_after", "hang") else 200
        log(job.model, job.tag, job.n_inputs, status, fault, job.prompt_tokens)
        delay = self._delay(fault, job, inflight)
        if delay > 0:
            await asyncio.sleep(delay)
        return await self._answer(request, kind, job, fault, headers, inflight)

    @staticmethod
    def _spoil(job: Any, fault: str) -> str | None:
        """Apply a JSON or stream fault; None when it cannot spoil this request (a plain
        text answer, a request not streamed): then the request is answered normally."""
        if not applies(job.extra, fault):
            return None
        if fault in JSON_FAULTS:
            spoil(job.extra, fault)
            job.ctoks = job.extra.ctoks
        return fault

    def _refuse_unreadable(self, request: web.BaseRequest, body: bytes, log
                           ) -> tuple[web.StreamResponse | None, dict]:
        """(a 401 or 400 answer, or None; the parsed body)."""
        if self._auth is not None and not self.authorized(request):
            log(None, None, None, 401, None, None)
            return json_response(401, error_obj("Incorrect API key provided.",
                                                "invalid_request_error", "invalid_api_key")), {}
        try:
            payload = orjson.loads(body)
            if not isinstance(payload, dict):
                raise ValueError
        except ValueError:
            log(None, None, None, 400, None, None)
            return json_response(400, error_obj(
                "We could not parse the JSON body of your request. (HINT: This likely means you"
                " aren't using your HTTP library correctly.)", "invalid_request_error")), {}
        return None, payload

    def _immediate(self, request: web.BaseRequest, fault: str, model: str | None, kind: str,
                   payload: dict, log) -> web.StreamResponse:
        """A fault answered at once: no latency, no validation, no rate limit."""
        if fault == "reset_before":
            log(model, call_tag(kind, payload), None, None, fault, None)
            abort_connection(request)
            return web.Response()  # aiohttp finds the transport closed and drops it
        headers: dict[str, str] = {}
        if self.cfg.ratelimit_headers and self.limiter.active:
            self.limiter.headers(headers)
        resp = immediate_response(fault, model, self.cfg, headers)
        log(model, call_tag(kind, payload), None, resp.status, fault, None)
        return resp

    def _admit(self, job: Any, now: float, inflight: int, headers: dict[str, str], log
               ) -> web.StreamResponse | None:
        """A 429 past the rate limit or a 503 past the overload point; None when admitted.
        ``headers`` gets the x-ratelimit-* headers either way."""
        cfg, limiter = self.cfg, self.limiter
        if limiter.active:
            refusal = limiter.acquire(job.charge, now)
            if cfg.ratelimit_headers:
                limiter.headers(headers)
            if refusal is not None:
                what, wait = refusal
                retry_after_headers(cfg.retry_after_format, wait, headers, cfg.retry_after_value)
                log(job.model, job.tag, job.n_inputs, 429, None, job.prompt_tokens)
                return json_response(429, _rate_limit_body(what, limiter, job.charge, wait),
                                     headers)
        over = cfg.effective_overload
        if over is not None and inflight > over:
            log(job.model, job.tag, job.n_inputs, 503, None, job.prompt_tokens)
            return json_response(503, error_obj("server overloaded", "server_error"), headers)
        return None

    def _delay(self, fault: str | None, job: Any, inflight: int) -> float:
        cfg = self.cfg
        if fault == "hang":
            return cfg.hang_seconds
        delay = draw_latency(cfg, self.rng) if cfg.latency or cfg.latency_jitter else 0.0
        if cfg.per_token_latency and not _streamed(job):  # a stream spaces its tokens itself
            delay += cfg.per_token_latency * job.ctoks
        if cfg.capacity is not None and inflight > cfg.capacity:
            delay *= inflight / cfg.capacity
        return delay

    def _spacing(self, inflight: int) -> float:
        """Seconds between the tokens of a stream (scaled like the latency past capacity)."""
        cfg = self.cfg
        if cfg.capacity is not None and inflight > cfg.capacity:
            return cfg.per_token_latency * inflight / cfg.capacity
        return cfg.per_token_latency

    async def _answer(self, request: web.BaseRequest, kind: str, job: Any, fault: str | None,
                      headers: dict[str, str], inflight: int) -> web.StreamResponse:
        """The answer, or the delayed fault that spoils it."""
        if fault is None or fault in ANSWERED:
            extra = job.extra
            if extra is not None and extra.stream:
                return await send_stream(
                    request, stream_steps(self, job), self._spacing(inflight), headers,
                    fault if fault in STREAM_FAULTS else None, self.cfg.hang_seconds)
            return json_response(200, BUILD[kind](self, job, request), headers)
        if fault == "reset_after":
            abort_connection(request)
            return web.Response()
        if fault == "trickle":
            body_out, content_type = self._whole_body(kind, job, request)
            return await send_trickle(request, body_out, self.cfg.trickle_interval,
                                      content_type)
        if fault == "truncated":
            await send_truncated(request, *self._whole_body(kind, job, request))
            return web.Response()  # the transport is closing: aiohttp drops this
        return body_fault_response(fault, kind, self.cfg)

    def _whole_body(self, kind: str, job: Any, request: web.BaseRequest) -> tuple[bytes, str]:
        """The answer as one body and its content type (a stream's events, or the JSON)."""
        if _streamed(job):
            return stream_bytes(stream_steps(self, job)), SSE_CT
        return orjson.dumps(BUILD[kind](self, job, request)), JSON_CT


def _streamed(job: Any) -> bool:
    return job.extra is not None and job.extra.stream


def _rate_limit_body(what: str, limiter: RateLimiter, charge: int, wait: float) -> dict:
    bucket = limiter.requests if what == "requests" else limiter.tokens
    assert bucket is not None
    unit = "RPM" if what == "requests" else "TPM"
    used = max(0, int(bucket.capacity - bucket.level))
    asked = 1 if what == "requests" else charge
    return error_obj(
        f"Rate limit reached for {what} per min ({unit}) on the batchmagic simulator: Limit "
        f"{int(bucket.per_minute)}, Used {used}, Requested {asked}. Please try again in "
        f"{wait:.3f}s.", what, "rate_limit_exceeded")


