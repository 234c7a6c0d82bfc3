"""One table maps each failure category to its row error, one maps each wire failure: the online
backend, the Batch API's management calls and its result files all read them, so the same
provider answer or the same broken connection is the same error class everywhere."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import httpx
import pytest

import batchmagic as bm
from batchmagic._backend import (
    CONTEXT,
    ERROR_TYPES,
    FATAL,
    RATE_LIMIT,
    ROW,
    TRANSIENT,
    Outcome,
    Unit,
    error_type,
)
from batchmagic._secrets import Secret
from batchmagic.batchapi._client import ApiCaller
from batchmagic.batchapi._results import parse_line
from batchmagic.providers._openai import OpenAICompatible
from batchmagic.providers._wire import WIRE_ERROR_TYPES, AiohttpWire, HttpxWire, WireFailure

pytestmark = pytest.mark.timeout(60)
SENTINEL = "sk-sentinel-error-tables-0123456789"

#: (HTTP status, error body) a provider sends, and the category the openai dialect reads in it
PROVIDER_ERRORS = [
    (401, {"error": {"message": "bad key", "code": "invalid_api_key"}}, FATAL),
    (429, {"error": {"message": "slow down", "code": "rate_limit_exceeded"}}, RATE_LIMIT),
    (503, {"error": {"message": "busy"}}, TRANSIENT),
    (400, {"error": {"message": "too long", "code": "context_length_exceeded"}}, CONTEXT),
    (400, {"error": {"message": "bad value", "code": "invalid_value"}}, ROW),
]


def test_every_failure_category_has_one_row_error():
    assert ERROR_TYPES == {FATAL: bm.FatalProviderError, RATE_LIMIT: bm.RateLimitError,
                           TRANSIENT: bm.ServerError, CONTEXT: bm.ContextLengthError,
                           ROW: bm.BadRequestError}
    assert error_type("a category from the future") is bm.BadRequestError  # never a crash
    failed = Outcome.failure(CONTEXT, "the prompt is too long", status=400)
    assert failed.error_type is bm.ContextLengthError and failed.status == 400


def test_every_wire_failure_has_one_row_error():
    assert set(WIRE_ERROR_TYPES) == {"connect", "deadline", "lost", "protocol"}
    assert WireFailure("lost", "dropped", True).error_type is bm.ConnectionLostError
    assert all(issubclass(cls, bm.TransportError | bm.ResponseError)
               for cls in WIRE_ERROR_TYPES.values())


def _answering(status: int, payload: dict) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, json=payload))


async def _online(transport: httpx.BaseTransport) -> Outcome:
    backend = OpenAICompatible(name="p", base_url="http://test/v1", kind="chat",
                               api_key=Secret(SENTINEL), dialect="openai",
                               wire=HttpxWire(2, transport=transport), timeout=10.0)
    try:
        return await backend.call(Unit([0], b'{"model": "m", "messages": []}', 1))
    finally:
        await backend.aclose()


async def _management_call(wire) -> Exception:
    caller = ApiCaller("p", wire, "openai", [Secret(SENTINEL)])
    try:
        await caller.call("GET", "http://test/v1/batches/b1", None,
                          {"Authorization": f"Bearer {SENTINEL}"}, deadline=10.0, retry=False)
    except bm.RowError as exc:
        return exc
    finally:
        await wire.aclose()
    raise AssertionError("the call did not fail")


@pytest.mark.parametrize(("status", "payload", "category"), PROVIDER_ERRORS,
                         ids=[case[2] for case in PROVIDER_ERRORS])
def test_online_batch_calls_and_batch_results_read_a_provider_error_alike(status, payload,
                                                                          category):
    expected = ERROR_TYPES[category]
    online = asyncio.run(_online(_answering(status, payload)))
    assert online.category == category and online.error_type is expected
    raised = asyncio.run(_management_call(HttpxWire(2, transport=_answering(status, payload))))
    assert type(raised) is expected and raised.status == status
    line = {"custom_id": "r1", "error": None,
            "response": {"status_code": status, "body": payload}}
    from_file = parse_line(line, "chat", "openai", "p")
    assert type(from_file) is expected
    for text in (online.message, str(raised), str(from_file)):
        assert SENTINEL not in text


# -- wire failures, from real sockets on loopback ------------------------------------------------


async def _silent(reader, writer):  # reads the request and never answers
    await reader.read(65536)
    await asyncio.Event().wait()


async def _hangs_up(reader, writer):  # reads the request and closes without a word
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def _speaks_nonsense(reader, writer):  # not HTTP at all
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"THIS IS NOT HTTP\r\n\r\n")
    await writer.drain()
    writer.close()


SERVERS = {"deadline": _silent, "lost": _hangs_up, "protocol": _speaks_nonsense}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket is closed


@contextlib.asynccontextmanager
async def _server_for(kind: str):
    if kind == "connect":
        yield f"http://127.0.0.1:{_closed_port()}"
        return
    server = await asyncio.start_server(SERVERS[kind], "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def _both_over_the_wire(kind: str) -> tuple[Outcome, Exception]:
    deadline = 0.5  # only the silent server waits this long; nothing is timed
    async with _server_for(kind) as base:
        online = OpenAICompatible(name="p", base_url=base + "/v1", kind="chat",
                                  api_key=Secret(SENTINEL), dialect="openai",
                                  wire=AiohttpWire(2), timeout=deadline)
        try:
            outcome = await online.call(Unit([0], b'{"model": "m", "messages": []}', 1))
        finally:
            await online.aclose()
        caller = ApiCaller("p", AiohttpWire(2), "openai", [Secret(SENTINEL)])
        try:
            await caller.call("GET", base + "/v1/batches/b1", None, {}, deadline=deadline,
                              retry=False)
            raised: Exception = AssertionError("the call did not fail")
        except bm.RowError as exc:
            raised = exc
        finally:
            await caller.wire.aclose()
    return outcome, raised


@pytest.mark.parametrize("kind", ["connect", "deadline", "lost", "protocol"])
def test_a_broken_connection_is_the_same_error_online_and_in_batch_calls(kind):
    outcome, raised = asyncio.run(_both_over_the_wire(kind))
    expected = WIRE_ERROR_TYPES[kind]
    assert outcome.category == TRANSIENT and outcome.error_type is expected, outcome.message
    assert type(raised) is expected, raised
    assert SENTINEL not in outcome.message and SENTINEL not in str(raised)
