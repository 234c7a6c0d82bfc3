"""One attempt at one unit against an OpenAI-compatible endpoint, classified into an ``Outcome``.

This is the only place that reads HTTP answers. It never raises for a request problem: a failure
becomes an ``Outcome`` with a category (see ``_backend``) and whether the provider may have billed
it. A 2xx answer whose body is cut off, not JSON, not UTF-8 or the wrong shape was probably
processed (and billed), so it is marked ``possibly_billed``; errors the provider reports are not.

Streamed requests (``stream=True``, chat and completion) are assembled from their server-sent
events into the same answers, plus the time to the first token (``ttft``). The attempt's deadline
bounds the whole stream, and a shorter idle limit each silence between chunks (a stalled stream
is a ``DeadlineError``). A stream that ends before ``[DONE]`` is a ``ConnectionLostError``, a chunk
that is not JSON or has the wrong shape a ``ResponseError`` (both retryable, possibly billed), and
an error event inside the stream is judged by the provider's dialect like an error answer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from .. import _kinds
from .._backend import FATAL, OK, RATE_LIMIT, ROW, TRANSIENT, Outcome, Unit
from .._errors import ConnectionLostError, ResponseError
from .._limits import RateInfo, parse_retry_after
from .._secrets import Secret
from ._dialects import Classified, classify
from ._sse import DONE, SSEDecoder, StreamAssembler, StreamError
from ._wire import (
    MAX_BODY_BYTES,
    WireFailure,
    WireResponse,
    WireStream,
    _deadline,
    is_event_stream,
)

MAX_IMAGE_DOWNLOAD = 50 * 1024 * 1024
#: the kinds whose answers can be streamed
STREAMED_KINDS = ("chat", "completion")
#: the longest silence a stream may keep (or the attempt's timeout, if shorter). Tokens come
#: tens of milliseconds apart and servers send keep-alives while a long prompt is read: a minute
#: with no byte at all is a stalled server, and waiting out a 300 s deadline only wastes a slot.
IDLE_TIMEOUT = 60.0
#: how long the end of a body may take to arrive after [DONE] (read so the connection is reused)
DRAIN_SECONDS = 1.0
_STREAM_OPTIONS = b'{"stream":true,"stream_options":{"include_usage":true}'


class OpenAICompatible:
    """A backend for any OpenAI-compatible HTTP endpoint."""

    def __init__(self, *, name: str, base_url: str, kind: str, api_key: Secret | None,
                 dialect: str, wire: Any, timeout: float, headers: dict[str, str] | None = None,
                 stream: bool = False, idle_timeout: float | None = None):
        self.name = name
        self.kind = kind
        self.dialect = dialect
        self.wire = wire
        self.timeout = timeout
        self.stream = stream and kind in STREAMED_KINDS
        self.idle_timeout = min(timeout, IDLE_TIMEOUT) if idle_timeout is None else idle_timeout
        self.url = base_url.rstrip("/") + _kinds.path_for(kind)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if headers:
            self._headers.update(headers)
        if self.stream:
            self._headers["Accept"] = "text/event-stream"
        if api_key is not None:
            self._headers["Authorization"] = f"Bearer {api_key.reveal()}"
        self._secret = api_key
        self._parse = _kinds.PARSERS.get(kind)

    def __repr__(self) -> str:  # the headers hold the key: never show them
        return f"<OpenAICompatible {self.name} {self.kind}>"

    async def call(self, unit: Unit) -> Outcome:
        if self.stream:
            return await self._call_streamed(unit)
        try:
            resp = await self.wire.post(self.url, unit.body, self._headers, self.timeout)
        except WireFailure as f:
            return self._wire_failure(f)
        return await self._answer(resp, unit)

    def _wire_failure(self, f: WireFailure) -> Outcome:
        return Outcome(TRANSIENT, error_type=f.error_type, message=self._clean(f.message),
                       possibly_billed=f.possibly_billed)

    async def _answer(self, resp: WireResponse, unit: Unit) -> Outcome:
        """A whole HTTP answer, classified."""
        headers = resp.headers
        info = RateInfo.from_headers(headers)
        status = resp.status
        if resp.body is not None and is_event_stream(status, headers):
            return await self._read_events(resp, unit)  # streamed though not asked to be
        payload: Any = None
        not_json = None
        if resp.body is not None:
            try:
                payload = orjson.loads(resp.body)
            except orjson.JSONDecodeError as exc:
                not_json = _describe_bad_body(resp.body, exc)

        if 200 <= status < 300:
            if resp.body is None:
                return Outcome(TRANSIENT, error_type=ResponseError, status=status, rate_info=info,
                               message=resp.body_problem or "the answer was incomplete",
                               possibly_billed=True)
            if not_json:
                return Outcome(TRANSIENT, error_type=ResponseError, status=status, rate_info=info,
                               message=not_json, possibly_billed=True)
            found = classify(self.dialect, status, payload)
            if found is not None:  # an error envelope inside HTTP 200 (Qianfan style)
                return self._error(found, status, headers, info)
            try:
                results = self._results(payload, len(unit.items))
                if results[0].image_url is not None:  # (a coroutine only for image answers)
                    results[0].output = await self._download(results[0].image_url)
            except _kinds.ShapeError as exc:
                return self._bad_answer(_shape_message(exc), status, info)
            except WireFailure as f:
                return self._bad_answer(f"could not download the image: {f.message}", status, info)
            return Outcome(OK, results=results, status=status, rate_info=info)

        if 300 <= status < 400:  # applies to every row: never re-send paid requests elsewhere
            return Outcome.failure(FATAL, self._redirect_message(status, headers.get("location")),
                                   status=status, rate_info=info)
        found = classify(self.dialect, status, payload if isinstance(payload, dict) else None)
        if found is None:  # the dialect saw no error in a non-2xx answer: judge by the status
            found = Classified(TRANSIENT if status >= 500 or status in (408, 409) else ROW, None,
                               f"HTTP {status}")
        return self._error(found, status, headers, info)

    def _bad_answer(self, message: str, status: int, info: Any) -> Outcome:
        """A 2xx answer we cannot use: retryable, and the provider probably billed it."""
        return Outcome(TRANSIENT, error_type=ResponseError, status=status, rate_info=info,
                       message=self._clean(message), possibly_billed=True)

    # -- streamed answers ------------------------------------------------------------------------

    async def _call_streamed(self, unit: Unit) -> Outcome:
        clock = asyncio.get_running_loop().time
        sent = clock()
        try:
            async with self.wire.stream(self.url, streamed_body(unit.body), self._headers,
                                        self.timeout, self.idle_timeout) as resp:
                if not isinstance(resp, WireStream):  # an error, or an answer sent whole
                    return await self._answer(resp, unit)
                assembler = StreamAssembler(self.kind, sent=sent, clock=clock,
                                            max_bytes=MAX_BODY_BYTES)
                return await self._assemble(resp.status, resp.headers, resp.chunks, assembler,
                                            len(unit.items))
        except WireFailure as f:
            return self._wire_failure(f)

    async def _assemble(self, status: int, headers: Any, chunks: Any,
                        assembler: StreamAssembler, n: int) -> Outcome:
        """Read the events until ``[DONE]``; the first problem ends the attempt. ``n`` is the
        number of items the unit holds (the choices of an ``n=K`` request)."""
        info = RateInfo.from_headers(headers)
        decoder = SSEDecoder(MAX_BODY_BYTES)
        try:
            async for chunk in chunks:
                for event in decoder.feed(chunk):
                    if event.data == DONE:
                        results = _per_item(assembler.finish(), n)
                        await _drain(chunks)
                        return Outcome(OK, results=results, status=status, rate_info=info)
                    failed = self._event(event, assembler, status, headers, info)
                    if failed is not None:
                        return failed
            if decoder.ends_with_done():
                return Outcome(OK, results=_per_item(assembler.finish(), n), status=status,
                               rate_info=info)
        except StreamError as exc:
            return self._bad_answer(str(exc), status, info)
        except _kinds.ShapeError as exc:
            return self._bad_answer(_shape_message(exc), status, info)
        return Outcome(TRANSIENT, error_type=ConnectionLostError, status=status, rate_info=info,
                       message="the stream ended before it was complete (no [DONE])",
                       possibly_billed=True)

    def _event(self, event: Any, assembler: StreamAssembler, status: int, headers: Any,
               info: Any) -> Outcome | None:
        """Add one event's chunk to the answer; an error event ends the attempt."""
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return self._bad_answer(f"a stream chunk is not JSON: {event.data[:60]!r}", status, info)
        if event.name == "error" or not (isinstance(chunk, dict) and "choices" in chunk):
            if event.name == "error" and isinstance(chunk, dict) and "error" not in chunk:
                chunk = {"error": chunk}
            found = classify(self.dialect, status, chunk)
            if found is None and (event.name == "error" or _names_error(chunk)):
                # an error, in no words the dialect knows
                found = Classified(TRANSIENT, None,
                                   f"the stream reported an error: {event.data[:200]}")
            if found is not None:
                outcome = self._error(found, status, headers, info)
                outcome.possibly_billed = assembler.started  # tokens came before the error
                return outcome
        assembler.add(chunk)
        return None

    async def _read_events(self, resp: WireResponse, unit: Unit) -> Outcome:
        """A whole 2xx body that is an event stream (a server that streams unasked)."""
        assembler = StreamAssembler(self.kind, sent=0.0, clock=lambda: 0.0,
                                    max_bytes=MAX_BODY_BYTES)
        outcome = await self._assemble(resp.status, resp.headers, _once(resp.body), assembler,
                                       len(unit.items))
        for parsed in outcome.results or ():
            parsed.ttft = None  # not read as it streamed: no first-token time
        return outcome

    def _redirect_message(self, status: int, location: str | None) -> str:
        where = f" to {self._clean(location)[:200]}" if location else ""
        return (f"HTTP {status}: {self.url} redirects{where}. batchmagic does not follow "
                "redirects of paid requests: set base_url to the address the server names "
                "(http:// to https://? a missing or extra /v1?)")

    def _error(self, found, status: int, headers, info) -> Outcome:
        category = found.category
        message = self._clean(found.message) or f"HTTP {status}"
        retry_after = parse_retry_after(headers) if category in (RATE_LIMIT, TRANSIENT) else None
        overloaded = status in (503, 529) or category == RATE_LIMIT
        return Outcome.failure(category, message, status=status,
                               code=self._clean(found.code) if found.code else None,
                               retry_after=retry_after, overloaded=overloaded, rate_info=info)

    def _results(self, payload: Any, n: int) -> list:
        if self.kind == "embedding":
            vectors, prompt_tokens = _kinds.parse_embeddings(payload, n)
            shares = _kinds.share(prompt_tokens, n)
            return [_kinds.Parsed(v, None, s, 0) for v, s in zip(vectors, shares)]
        if n > 1 and self.kind in ("chat", "completion"):  # n=K draws in one request
            return _per_item(_kinds.parse_choices(payload, self.kind), n)
        return [self._parse(payload)]

    async def _download(self, url: str):
        from .._image import GeneratedImage

        if not url.startswith(("http://", "https://")):
            raise _kinds.ShapeError("the image URL is not http(s)")
        resp = await self.wire.get(url, self.timeout, MAX_IMAGE_DOWNLOAD)
        if resp.status != 200 or resp.body is None:
            raise WireFailure("protocol", resp.body_problem or f"HTTP {resp.status}", True)
        return GeneratedImage(resp.body, url=url)

    def _clean(self, text: str) -> str:
        return self._secret.redact(text) if self._secret is not None else text

    async def aclose(self) -> None:
        await self.wire.aclose()


def streamed_body(body: bytes) -> bytes:
    """The planned body with ``stream`` and ``stream_options.include_usage`` set. The planned
    bytes are the row key's source and stay as they are: the fields are spliced into a copy, or,
    when the body already names ``stream`` (or its options), set on a re-encoded copy."""
    if b'"stream' not in body:
        return _STREAM_OPTIONS + (b"}" if body == b"{}" else b"," + body[1:])
    data = orjson.loads(body)
    options = data.get("stream_options")
    data["stream"] = True
    data["stream_options"] = {**(options if isinstance(options, dict) else {}),
                              "include_usage": True}
    return orjson.dumps(data)


def _per_item(choices: list, n: int) -> list:
    """One answer per item: the first choice, or each of the ``n`` an ``n=K`` request asked for."""
    if n == 1:
        return choices[:1]
    if len(choices) != n:
        raise _kinds.ShapeError(f"asked for {n} choices, got {len(choices)}")
    return choices


def _names_error(chunk: Any) -> bool:
    return isinstance(chunk, dict) and chunk.get("error") is not None


async def _drain(chunks: Any) -> None:
    """Read the body to its end after ``[DONE]``, so its connection can carry the next request
    (a connection left mid-body is closed, and the next request pays for a new one, TLS and all).
    A server that keeps the body open only costs the connection, never the answer."""
    try:
        async with _deadline(DRAIN_SECONDS):
            async for _ in chunks:
                pass
    except (TimeoutError, WireFailure):
        pass


async def _once(body: bytes):
    yield body


def _shape_message(exc: _kinds.ShapeError) -> str:
    if isinstance(exc, _kinds.ToolArgumentsError):
        return str(exc)
    return f"the answer has the wrong shape: {exc}"


def _describe_bad_body(body: bytes, exc: Exception) -> str:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as ue:
        return f"the answer is not valid UTF-8 (byte {ue.start})"
    head = body[:60].decode("utf-8", "replace").strip()
    if head.startswith("<"):
        return "the answer is HTML, not JSON (a proxy or gateway error page?)"
    return f"the answer is not JSON ({str(exc)[:80]})"
