"""Batch API clients behind one small interface, and the OpenAI-compatible one.

    class BatchClient(Protocol):
        name: str                      # "openai", "dashscope", "ark", or the server's host
        line_format: str               # "openai" | "ark" (see _files)
        async def upload(self, data: bytes, filename: str) -> str            # a file reference
        async def create(self, file_ref, *, endpoint, window, model, nonce, job_id, shard) -> RemoteBatch
        async def retrieve(self, batch_id) -> RemoteBatch
        async def find(self, nonce, since) -> RemoteBatch | None             # adopt after a crash
        async def list_batches(self, *, status, limit) -> list[RemoteBatch]  # newest first
        async def cancel(self, batch_id) -> RemoteBatch
        async def download(self, file_ref) -> bytes | None                   # None: no such file
        async def aclose(self) -> None

``OpenAIBatch`` speaks the files + batches API of OpenAI (``/files`` with purpose ``batch``,
``/batches``, ``/batches/{id}/cancel``, ``/files/{id}/content``), which DashScope's
compatible mode, Qianfan v2, LiteLLM's proxy and other servers copy. Calls go through the
project's wire (aiohttp by default, any httpx transport in tests). Each call is retried on
throttling, 5xx and connection failures with a bounded backoff; ``create`` is never blindly
retried, because a create whose answer was lost may have made a batch: the engine looks for it
by its nonce first.

Every error is raised as the matching ``RowError`` subclass (``FatalProviderError`` for a bad
key, ``BadRequestError`` for a refused request, ...), its text scrubbed of the key.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from .._backend import RATE_LIMIT, ROW, TRANSIENT, error_type
from .._errors import ConfigError, ResponseError
from .._limits import parse_retry_after
from .._secrets import Secret
from ..providers._dialects import Classified, classify
from ..providers._wire import WireFailure, WireResponse

CALL_DEADLINE = 60.0  # seconds for one JSON call
FILE_DEADLINE = 900.0  # seconds for one upload or download (files reach hundreds of MB)
MAX_FILE_BYTES = 2 * 1024 ** 3
CALL_ATTEMPTS = 5
#: how far back (seconds) to look for a batch created before a crash
FIND_SLACK = 3600.0
FIND_PAGES = 10

#: provider status -> batchmagic's normalised state
OPENAI_STATES = {
    "validating": "pending", "in_progress": "running", "finalizing": "finalizing",
    "completed": "completed", "failed": "failed", "expired": "expired",
    "cancelling": "cancelling", "cancelled": "cancelled",
}
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
STATES = ("pending", "running", "finalizing", "completed", "failed", "expired", "cancelling",
          "cancelled")
#: GET /batches takes ``after`` and ``limit`` (1-100) and no status filter: a status is
#: filtered here, reading at most this many pages
LIST_PAGE_SIZE = 100
LIST_PAGES = 50
NONCE_KEY = "batchmagic_nonce"
#: DashScope documents two metadata keys, a batch's name and description (its list call can
#: filter by name); the nonce goes into the name there
DS_NAME = "ds_name"
NAME_PREFIX = "batchmagic-"


@dataclass
class RemoteBatch:
    """A provider batch, normalised."""

    id: str
    status: str  # the provider's own word ("in_progress", "Running", ...)
    state: str  # pending | running | finalizing | completed | failed | expired | cancelling | cancelled
    total: int | None = None
    completed: int | None = None
    failed: int | None = None
    output_ref: str | None = None
    error_ref: str | None = None
    message: str = ""
    nonce: str | None = None
    created: float | None = None
    endpoint: str | None = None  # the URL its lines were sent to ("/v1/chat/completions")
    name: str | None = None  # what the provider shows: Ark's Name, DashScope's ds_name

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def matches(self, status: str | None) -> bool:
        """``status`` is batchmagic's state ("completed") or the provider's own word."""
        return status is None or status.lower() in (self.state, self.status.lower())


def check_status(status: str | None, provider_words: Iterable[str]) -> str | None:
    """A status filter someone typed: one of the normalised states or the provider's words."""
    if status is None:
        return None
    words = {w.lower() for w in provider_words} | set(STATES)
    if not isinstance(status, str) or status.strip().lower() not in words:
        raise ConfigError(f"status {status!r} is not a batch status; one of: "
                          f"{', '.join(sorted(words))}")
    return status.strip().lower()


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class ApiCaller:
    """One management call with bounded retries, its failures as ``RowError`` subclasses."""

    def __init__(self, name: str, wire: Any, dialect: str, secrets: list[Secret]):
        self.name = name
        self.wire = wire
        self.dialect = dialect
        self._secrets = [s for s in secrets if s is not None]
        self._rng = random.Random()

    def clean(self, text: str | None) -> str:
        text = text or ""
        for secret in self._secrets:
            text = secret.redact(text)
        return text

    async def call(self, method: str, url: str, body: bytes | None, headers: dict,
                   *, deadline: float = CALL_DEADLINE, max_bytes: int = 64 * 1024 * 1024,
                   retry: bool = True, missing_ok: bool = False,
                   sign=None) -> WireResponse | None:
        """Send, retrying what is safe to retry. ``sign(headers)`` re-signs each attempt (a
        signature carries its time). Returns None for a 404 when ``missing_ok``."""
        attempt = 0
        while True:
            attempt += 1
            hdrs = dict(headers)
            if sign is not None:
                hdrs.update(sign())
            try:
                resp = await self.wire.request(method, url, body, hdrs, deadline, max_bytes)
            except WireFailure as f:
                err = f.error_type(self.clean(f.message), attempts=attempt, provider=self.name,
                                   possibly_billed=f.possibly_billed)
                if retry and attempt < CALL_ATTEMPTS:
                    await asyncio.sleep(self._backoff(attempt))
                    continue
                raise err from None
            if 200 <= resp.status < 300 and resp.body is not None:
                return resp
            if resp.status == 404 and missing_ok:
                return None
            payload = None
            if resp.body is not None:
                try:
                    payload = orjson.loads(resp.body)
                except orjson.JSONDecodeError:
                    payload = None
            found = self.classify(resp.status, payload)
            if 200 <= resp.status < 300:  # a 2xx whose body was cut off
                found = Classified(TRANSIENT, None, resp.body_problem or "the answer was incomplete")
            if retry and found.category in (TRANSIENT, RATE_LIMIT) and attempt < CALL_ATTEMPTS:
                wait = parse_retry_after(resp.headers) or self._backoff(attempt)
                await asyncio.sleep(min(wait, 30.0))
                continue
            raise error_type(found.category)(
                self.clean(found.message or f"HTTP {resp.status}"), attempts=attempt,
                status=resp.status, provider=self.name,
                code=self.clean(found.code) if found.code else None)

    def classify(self, status: int, payload: Any) -> Classified:
        if isinstance(payload, dict):
            # Volcengine's OpenAPI ({"ResponseMetadata": {"Error": {Code, Message}}}) and TOS
            # ({"Code", "Message"}) put errors where the OpenAI-style dialects do not look
            meta = payload.get("ResponseMetadata")
            error = meta.get("Error") if isinstance(meta, dict) else None
            if not isinstance(error, dict) and "Code" in payload:
                error = payload
            if isinstance(error, dict):
                payload = {"error": {"code": error.get("Code"), "message": error.get("Message")}}
        found = classify(self.dialect, status, payload if isinstance(payload, dict) else None)
        if found is None:
            found = Classified(TRANSIENT if status >= 500 else ROW, None, f"HTTP {status}")
        return found

    def _backoff(self, attempt: int) -> float:
        cap = min(8.0, 0.5 * 2 ** (attempt - 1))
        return cap / 2 + self._rng.uniform(0, cap / 2)


def multipart(fields: dict[str, str], file_field: str, filename: str, data: bytes,
              content_type: str = "application/jsonl") -> tuple[bytes, str]:
    """A multipart/form-data body (the files endpoint takes the JSONL file this way)."""
    boundary = f"batchmagic-{uuid.uuid4().hex}"
    out = bytearray()
    for name, value in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                f"{value}\r\n").encode()
    out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{file_field}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode()
    out += data
    out += f"\r\n--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


class OpenAIBatch:
    """Files + batches on any OpenAI-compatible server."""

    line_format = "openai"

    def __init__(self, *, name: str, base_url: str, api_key: Secret | None, dialect: str,
                 wire: Any, headers: dict | None = None, dashscope: bool = False):
        self.name = name
        self.dashscope = dashscope
        self.base = base_url.rstrip("/")
        self._auth: dict[str, str] = dict(headers or {})
        if api_key is not None:
            self._auth["Authorization"] = f"Bearer {api_key.reveal()}"
        self.caller = ApiCaller(name, wire, dialect, [api_key] if api_key else [])
        self.wire = wire

    def __repr__(self) -> str:  # the headers hold the key: never show them
        return f"<OpenAIBatch {self.name}>"

    def _json_headers(self) -> dict:
        return {**self._auth, "Content-Type": "application/json", "Accept": "application/json"}

    async def _json(self, method: str, path: str, payload: Any = None, *, retry: bool = True,
                    missing_ok: bool = False) -> Any:
        body = orjson.dumps(payload) if payload is not None else None
        headers = self._json_headers() if body is not None else {**self._auth,
                                                                 "Accept": "application/json"}
        resp = await self.caller.call(method, self.base + path, body, headers, retry=retry,
                                      missing_ok=missing_ok)
        if resp is None:
            return None
        try:
            return orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            raise ResponseError(f"{self.name}: the answer to {method} {path} is not JSON",
                                attempts=1, status=resp.status, provider=self.name) from None

    async def upload(self, data: bytes, filename: str) -> str:
        body, ctype = multipart({"purpose": "batch"}, "file", filename, data)
        headers = {**self._auth, "Content-Type": ctype, "Accept": "application/json"}
        resp = await self.caller.call("POST", self.base + "/files", body, headers,
                                      deadline=FILE_DEADLINE)
        file_id = _field(resp, "id")
        if not isinstance(file_id, str):
            raise ResponseError(f"{self.name}: the file upload answer has no id", attempts=1,
                                provider=self.name)
        return file_id

    async def create(self, file_ref: str, *, endpoint: str, window: str, model: str | None,
                     nonce: str, job_id: str, shard: int) -> RemoteBatch:
        if self.dashscope:
            meta = {DS_NAME: NAME_PREFIX + nonce,
                    "ds_description": f"batchmagic job {job_id}, part {shard + 1}"}
        else:
            meta = {NONCE_KEY: nonce, "batchmagic_job": f"{job_id}/{shard}"}
        payload = {"input_file_id": file_ref, "endpoint": endpoint, "completion_window": window,
                   "metadata": meta}
        # never retried blindly: a lost answer may hide a created batch (the engine adopts it)
        return self._batch(await self._json("POST", "/batches", payload, retry=False))

    async def retrieve(self, batch_id: str) -> RemoteBatch:
        return self._batch(await self._json("GET", f"/batches/{batch_id}"))

    async def find(self, nonce: str, since: float) -> RemoteBatch | None:
        after = None
        for _ in range(FIND_PAGES):
            query = "?limit=100" + (f"&after={after}" if after else "")
            page = await self._json("GET", "/batches" + query)
            data = page.get("data") if isinstance(page, dict) else None
            if not isinstance(data, list) or not data:
                return None
            oldest = None
            for item in data:
                if not isinstance(item, dict):
                    continue
                if _nonce(item) == nonce:
                    return self._batch(item)
                created = item.get("created_at")
                if isinstance(created, (int, float)):
                    oldest = created if oldest is None else min(oldest, created)
            # newest first: once past the intent's time there is nothing older to find
            if oldest is not None and oldest < since - FIND_SLACK:
                return None
            if not page.get("has_more"):
                return None
            after = page.get("last_id") or data[-1].get("id")
        return None

    async def list_batches(self, *, status: str | None = None, limit: int = 100,
                           page_size: int = LIST_PAGE_SIZE) -> list[RemoteBatch]:
        """The server's batches, newest first (as ``GET /batches`` returns them), up to
        ``limit``, following ``has_more`` / ``after`` across pages."""
        status = check_status(status, OPENAI_STATES)
        found: list[RemoteBatch] = []
        after = None
        for _ in range(LIST_PAGES):
            query = f"?limit={max(1, min(100, page_size))}" + (f"&after={after}" if after else "")
            page = await self._json("GET", "/batches" + query)
            data = page.get("data") if isinstance(page, dict) else None
            if not isinstance(data, list) or not data:
                break
            batches = [self._batch(item) for item in data if isinstance(item, dict)]
            found += [b for b in batches if b.matches(status)]
            if len(found) >= limit or not page.get("has_more"):
                break
            after = page.get("last_id") or batches[-1].id
        return found[:limit]

    async def cancel(self, batch_id: str) -> RemoteBatch:
        return self._batch(await self._json("POST", f"/batches/{batch_id}/cancel", {}))

    async def download(self, file_ref: str) -> bytes | None:
        resp = await self.caller.call("GET", f"{self.base}/files/{file_ref}/content", None,
                                      dict(self._auth), deadline=FILE_DEADLINE,
                                      max_bytes=MAX_FILE_BYTES, missing_ok=True)
        return None if resp is None else resp.body

    def _batch(self, item: Any) -> RemoteBatch:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise ResponseError(f"{self.name}: the batch answer has no id", attempts=1,
                                provider=self.name)
        status = str(item.get("status") or "")
        counts = item.get("request_counts") or {}
        counts = counts if isinstance(counts, dict) else {}
        message = ""
        errors = item.get("errors")
        if isinstance(errors, dict) and isinstance(errors.get("data"), list):
            parts = []
            for e in errors["data"][:3]:
                if isinstance(e, dict):
                    line = f" (line {e['line']})" if e.get("line") is not None else ""
                    parts.append(f"{e.get('code') or 'error'}: {e.get('message') or ''}{line}")
            message = "; ".join(parts)
        created = item.get("created_at")
        return RemoteBatch(
            id=item["id"], status=status, state=OPENAI_STATES.get(status, "running"),
            total=_int(counts.get("total")), completed=_int(counts.get("completed")),
            failed=_int(counts.get("failed")),
            output_ref=item.get("output_file_id") or None,
            error_ref=item.get("error_file_id") or None,
            message=self.caller.clean(message),
            nonce=_nonce(item),
            created=float(created) if isinstance(created, (int, float)) else None,
            endpoint=item.get("endpoint") if isinstance(item.get("endpoint"), str) else None,
            name=_name(item),
        )

    async def aclose(self) -> None:
        await self.wire.aclose()


def _nonce(item: dict) -> str | None:
    meta = item.get("metadata")
    if not isinstance(meta, dict):
        return None
    if isinstance(meta.get(NONCE_KEY), str):
        return meta[NONCE_KEY]
    name = meta.get(DS_NAME)
    if isinstance(name, str) and name.startswith(NAME_PREFIX):
        return name[len(NAME_PREFIX):]
    return None


def _name(item: dict) -> str | None:
    meta = item.get("metadata")
    name = meta.get(DS_NAME) if isinstance(meta, dict) else None
    return name if isinstance(name, str) else None


def _field(resp: WireResponse | None, name: str) -> Any:
    if resp is None or resp.body is None:
        return None
    try:
        data = orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        return None
    return data.get(name) if isinstance(data, dict) else None
