"""Streamed requests, on both wires, against a real server on 127.0.0.1 that answers with
server-sent events the way OpenAI-compatible servers do (chunked, ``data: {chunk}`` events,
``data: [DONE]``), and misbehaves on request: streams cut midway, a malformed chunk, a stream that
goes quiet, an error event inside the stream."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from conftest import Server, run

import batchmagic as bm
from batchmagic._backend import OK, RATE_LIMIT, TRANSIENT, Outcome, Unit
from batchmagic._dispatch import Dispatcher, RetryPolicy
from batchmagic._kinds import build_body, encode_body
from batchmagic._limits import RateGate, Window
from batchmagic._progress import Progress
from batchmagic._secrets import Secret
from batchmagic.providers._openai import OpenAICompatible, streamed_body
from batchmagic.providers._sse import SSEDecoder, StreamAssembler
from batchmagic.providers._wire import make_wire

WIRES = ["aiohttp", "httpx"]
KEY = "sk-SENTINEL-stream-0123456789"
FIRST_TOKEN_DELAY = 0.2


def _chunk(delta: dict | None = None, *, index: int = 0, finish: str | None = None,
           **extra: Any) -> dict:
    choice: dict[str, Any] = {"index": index, "delta": delta or {}, "finish_reason": finish}
    choice.update(extra)
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [choice]}


USAGE = {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}


class SSEServer:
    """Answers ``/v1/chat/completions`` with an event stream chosen by the user text.

    ``bodies`` keeps every request body; ``release`` lets a stalled stream end at teardown."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.peers: list[Any] = []  # the client's address per request: a reused connection repeats
        self.attempts: dict[str, int] = {}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    # -- what each prompt gets -----------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.peers.append(request.transport.get_extra_info("peername"))
        text = body["messages"][-1]["content"]
        self.attempts[text] = self.attempts.get(text, 0) + 1
        if text == "too long":  # an HTTP error before any stream: handled as a whole answer
            return web.json_response({"error": {
                "message": "This model's maximum context length is 8192 tokens",
                "type": "invalid_request_error", "code": "context_length_exceeded"}}, status=400)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        script = getattr(self, "_" + text.replace(" ", "_").replace("-", "_"))
        await script(request, resp, self.attempts[text])
        return resp

    async def _send(self, resp: web.StreamResponse, *events: Any) -> None:
        for event in events:
            data = event if isinstance(event, bytes) else b"data: " + orjson.dumps(event)
            await resp.write(data + b"\n\n")

    async def _done(self, resp: web.StreamResponse) -> None:
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()

    async def _hello(self, request, resp, attempt) -> None:
        await self._send(resp, _chunk({"role": "assistant", "content": ""}))
        await resp.write(b": keep-alive\n\n")
        await asyncio.sleep(FIRST_TOKEN_DELAY)  # the model "thinks": ttft must include this
        # one event split across writes, CRLF line ends: the decoder must not care
        raw = b"data: " + orjson.dumps(_chunk({"content": "Hel"}))
        await resp.write(raw[:9])
        await resp.write(raw[9:] + b"\r")
        await resp.write(b"\n\r\n")
        await self._send(resp, _chunk({"content": "lo"}), _chunk({"content": " world"}),
                         _chunk({}, finish="stop"), USAGE)
        await self._done(resp)

    async def _think(self, request, resp, attempt) -> None:
        await self._send(resp, _chunk({"role": "assistant", "reasoning_content": "two "}),
                         _chunk({"reasoning_content": "and two"}), _chunk({"content": "4"}),
                         _chunk({}, finish="stop"), USAGE)
        await self._done(resp)

    async def _tool(self, request, resp, attempt) -> None:
        def call(index: int, **fields: Any) -> dict:
            return _chunk({"tool_calls": [{"index": index, **fields}]})

        await self._send(
            resp, _chunk({"role": "assistant", "content": None}),
            call(0, id="call_a", type="function",
                 function={"name": "get_weather", "arguments": ""}),
            call(0, function={"arguments": '{"ci'}),
            call(1, id="call_b", type="function", function={"name": "get_time", "arguments": ""}),
            call(0, function={"arguments": 'ty": "Paris"}'}),
            call(1, function={"arguments": '{"tz": "CET"}'}),
            _chunk({}, finish="tool_calls"), USAGE)
        await self._done(resp)

    async def _bad_tool(self, request, resp, attempt) -> None:
        await self._send(resp, _chunk({"tool_calls": [
            {"index": 0, "id": "c", "function": {"name": "f", "arguments": '{"a": '}}]}),
            _chunk({}, finish="tool_calls"), USAGE)
        await self._done(resp)

    async def _choices(self, request, resp, attempt) -> None:
        """As many choices as the body's n asks for, their pieces interleaved."""
        n = self.bodies[-1].get("n", 1)
        for word in ("draw", " number"):
            await self._send(resp, *(_chunk({"content": word}, index=i) for i in reversed(range(n))))
        await self._send(resp, *(_chunk({"content": f" {i}"}, index=i, finish="stop")
                                 for i in range(n)),
                         {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7}})
        await self._done(resp)

    async def _logprobs(self, request, resp, attempt) -> None:
        def token(t: str) -> dict:
            return {"token": t, "logprob": -0.5, "bytes": list(t.encode()), "top_logprobs": []}

        await self._send(
            resp, _chunk({"content": "a"}, logprobs={"content": [token("a")], "refusal": None}),
            _chunk({"content": "b"}, logprobs={"content": [token("b")], "refusal": None}),
            _chunk({}, finish="stop"), USAGE)
        await self._done(resp)

    async def _done_and_hold(self, request, resp, attempt) -> None:
        """[DONE], and then the body is never ended."""
        await self._send(resp, _chunk({"content": "kept"}), _chunk({}, finish="stop"), USAGE)
        await resp.write(b"data: [DONE]\n\n")
        await self._release.wait()

    async def _cut(self, request, resp, attempt) -> None:
        """Cut midway: no terminating chunk, the connection closed."""
        await self._send(resp, _chunk({"content": "partial"}))
        request.transport.close()

    async def _cut_once(self, request, resp, attempt) -> None:
        if attempt == 1:
            await self._cut(request, resp, attempt)
            return
        await self._send(resp, _chunk({"content": "whole"}), _chunk({}, finish="stop"), USAGE)
        await self._done(resp)

    async def _no_done(self, request, resp, attempt) -> None:
        """A body that ends cleanly, but the stream never said [DONE]."""
        await self._send(resp, _chunk({"content": "partial"}), _chunk({}, finish="stop"))
        await resp.write_eof()

    async def _malformed(self, request, resp, attempt) -> None:
        await self._send(resp, _chunk({"content": "x"}), b'data: {"choices": [{"delta": ')
        await self._done(resp)

    async def _wrong_shape(self, request, resp, attempt) -> None:
        await self._send(resp, {"choices": [{"index": 0, "delta": "text"}]})
        await self._done(resp)

    async def _stall(self, request, resp, attempt) -> None:
        await self._send(resp, _chunk({"content": "I was saying"}))
        await self._release.wait()  # quiet until the test ends

    async def _trickle(self, request, resp, attempt) -> None:
        await self._send(resp, _chunk({"content": "and so"}))
        while not self._release.is_set():
            await resp.write(b": still thinking\n\n")
            await asyncio.sleep(0.05)

    async def _error_event(self, request, resp, attempt) -> None:
        await self._send(resp, _chunk({"content": "some"}),
                         {"error": {"message": "Rate limit reached for requests",
                                    "type": "requests", "code": "rate_limit_exceeded"}})
        await self._done(resp)

    async def _odd_error_event(self, request, resp, attempt) -> None:
        await self._send(resp, _chunk({"content": "so far"}))
        await resp.write(b'event: error\ndata: {"error": {}}\n\n')
        await self._done(resp)

    async def _server_error_event(self, request, resp, attempt) -> None:
        await resp.write(b'event: error\ndata: {"message": "The server had an error", '
                         b'"type": "server_error"}\n\n')
        await self._done(resp)

    # -- the server ----------------------------------------------------------------------------

    def _serve(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        runner = web.AppRunner(app, shutdown_timeout=1)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]
        self.root = f"http://127.0.0.1:{port}"
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    def __enter__(self) -> SSEServer:
        self._thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.loop.call_soon_threadsafe(self._release.set)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


@pytest.fixture(scope="module")
def server():
    with SSEServer() as s:
        yield s


def _backend(server: SSEServer, wire: str, **kw: Any) -> OpenAICompatible:
    kw.setdefault("timeout", 30.0)
    return OpenAICompatible(name="local", base_url=server.root + "/v1", kind="chat",
                            api_key=Secret(KEY), dialect="openai", wire=make_wire(wire, 4),
                            stream=True, **kw)


def _unit(text: str) -> Unit:
    body = build_body("chat", text, "m", {"temperature": 0}, None)
    return Unit([0], encode_body(body), tokens=10)


def _call(server: SSEServer, wire: str, text: str, **kw: Any) -> Outcome:
    async def main() -> Outcome:
        backend = _backend(server, wire, **kw)
        try:
            return await backend.call(_unit(text))
        finally:
            await backend.aclose()

    return asyncio.run(main())


def _timed_call(server: SSEServer, wire: str, text: str) -> tuple[Outcome, float]:
    """The outcome and how long the call took, on the loop's clock (the one ttft is read on)."""
    async def main() -> tuple[Outcome, float]:
        backend = _backend(server, wire)
        clock = asyncio.get_running_loop().time
        try:
            start = clock()
            outcome = await backend.call(_unit(text))
            return outcome, clock() - start
        finally:
            await backend.aclose()

    return asyncio.run(main())


# -- assembling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES)
def test_a_streamed_answer_is_assembled_with_usage_finish_reason_and_ttft(server, wire):
    outcome, elapsed = _timed_call(server, wire, "hello")
    assert outcome.category == OK, outcome.message
    [parsed] = outcome.results
    assert parsed.output == "Hello world"
    assert parsed.finish_reason == "stop"
    assert (parsed.input_tokens, parsed.output_tokens) == (7, 3)
    assert parsed.reasoning is None and parsed.tool_calls is None
    # the first token came after the server's pause, and before the answer was whole
    assert FIRST_TOKEN_DELAY <= parsed.ttft <= elapsed


@pytest.mark.parametrize("wire", WIRES)
def test_the_request_asks_for_a_stream_with_usage_and_the_planned_body_is_untouched(server, wire):
    unit = _unit("hello")
    planned = bytes(unit.body)

    async def main() -> Outcome:
        backend = _backend(server, wire)
        try:
            return await backend.call(unit)
        finally:
            await backend.aclose()

    assert asyncio.run(main()).category == OK
    sent = server.bodies[-1]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"][-1]["content"] == "hello" and sent["temperature"] == 0
    assert unit.body == planned  # the row key's source is what planning built


def test_streamed_body_splices_or_overrides_stream_fields():
    spliced = streamed_body(b'{"model":"m","messages":[]}')
    assert orjson.loads(spliced) == {"stream": True, "stream_options": {"include_usage": True},
                                     "model": "m", "messages": []}
    assert orjson.loads(streamed_body(b"{}")) == {"stream": True,
                                                  "stream_options": {"include_usage": True}}
    # a body that already names the fields gets them set, not repeated
    both = streamed_body(b'{"model":"m","stream":false,"stream_options":{"x":1}}')
    assert both.count(b'"stream"') == 1
    assert orjson.loads(both) == {"model": "m", "stream": True,
                                  "stream_options": {"x": 1, "include_usage": True}}


@pytest.mark.parametrize("wire", WIRES)
def test_reasoning_deltas_go_to_reasoning(server, wire):
    outcome = _call(server, wire, "think")
    assert outcome.category == OK, outcome.message
    [parsed] = outcome.results
    assert parsed.reasoning == "two and two"
    assert parsed.output == "4"
    assert parsed.ttft is not None and parsed.ttft >= 0


@pytest.mark.parametrize("wire", WIRES)
def test_tool_call_deltas_are_merged_by_index_and_their_arguments_parsed(server, wire):
    outcome = _call(server, wire, "tool")
    assert outcome.category == OK, outcome.message
    [parsed] = outcome.results
    assert parsed.output == ""
    assert parsed.finish_reason == "tool_calls"
    assert parsed.tool_calls == [
        {"id": "call_a", "name": "get_weather", "arguments": {"city": "Paris"}},
        {"id": "call_b", "name": "get_time", "arguments": {"tz": "CET"}},
    ]


@pytest.mark.parametrize("wire", WIRES)
def test_streamed_tool_arguments_that_are_not_json_are_a_retryable_response_error(server, wire):
    outcome = _call(server, wire, "bad tool")
    assert outcome.category == TRANSIENT
    assert outcome.error_type is bm.ResponseError
    assert outcome.possibly_billed
    assert "'f'" in outcome.message and "not valid JSON" in outcome.message


@pytest.mark.parametrize("wire", WIRES)
def test_logprobs_deltas_are_appended(server, wire):
    outcome = _call(server, wire, "logprobs")
    assert outcome.category == OK, outcome.message
    [parsed] = outcome.results
    assert parsed.output == "ab"
    assert [t["token"] for t in parsed.logprobs["content"]] == ["a", "b"]
    assert parsed.logprobs["refusal"] is None


@pytest.mark.parametrize("wire", WIRES)
def test_the_connection_is_reused_after_a_stream(server, wire):
    async def main() -> list[str]:
        backend = _backend(server, wire)
        try:
            return [(await backend.call(_unit("think"))).category for _ in range(3)]
        finally:
            await backend.aclose()

    server.peers.clear()
    assert asyncio.run(main()) == [OK] * 3
    # the body was read to its end after [DONE], so one connection carried all three
    assert len(set(server.peers)) == 1, server.peers


@pytest.mark.parametrize("wire", WIRES)
def test_a_body_held_open_after_done_still_gives_the_answer(server, wire):
    outcome, elapsed = _timed_call(server, wire, "done and hold")
    assert outcome.category == OK, outcome.message
    assert outcome.results[0].output == "kept"
    assert elapsed < 30  # not held to the deadline


def _draws(server: SSEServer, wire: str, asked: int, items: int) -> Outcome:
    """A unit of ``items`` draws sent as one request for n=``asked`` choices."""
    body = encode_body(build_body("chat", "choices", "m", {"n": asked}, None))

    async def main() -> Outcome:
        backend = _backend(server, wire)
        try:
            return await backend.call(Unit(list(range(items)), body, tokens=10))
        finally:
            await backend.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize("wire", WIRES)
def test_an_n_request_streams_one_answer_per_draw(server, wire):
    outcome = _draws(server, wire, 3, 3)
    assert outcome.category == OK, outcome.message
    assert [p.output for p in outcome.results] == ["draw number 0", "draw number 1",
                                                   "draw number 2"]
    assert sum(p.input_tokens for p in outcome.results) == 9  # the request's usage, shared
    assert sum(p.output_tokens for p in outcome.results) == 7
    # fewer choices than draws asked for: the answer is unusable, never a row without its draw
    short = _draws(server, wire, 2, 3)
    assert short.error_type is bm.ResponseError and "asked for 3 choices, got 2" in short.message


# -- failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES)
def test_a_stream_cut_midway_is_a_possibly_billed_connection_lost(server, wire):
    outcome = _call(server, wire, "cut")
    assert outcome.category == TRANSIENT
    assert outcome.error_type is bm.ConnectionLostError, outcome.message
    assert outcome.possibly_billed


@pytest.mark.parametrize("wire", WIRES)
def test_a_stream_that_ends_without_done_is_a_possibly_billed_connection_lost(server, wire):
    outcome = _call(server, wire, "no done")
    assert outcome.error_type is bm.ConnectionLostError, outcome.message
    assert outcome.category == TRANSIENT and outcome.possibly_billed
    assert "[DONE]" in outcome.message


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("text", ["malformed", "wrong shape"])
def test_a_malformed_chunk_is_a_response_error(server, wire, text):
    outcome = _call(server, wire, text)
    assert outcome.category == TRANSIENT
    assert outcome.error_type is bm.ResponseError, outcome.message
    assert outcome.possibly_billed


@pytest.mark.parametrize("wire", WIRES)
def test_a_stream_that_goes_quiet_is_a_deadline_error_long_before_the_deadline(server, wire):
    outcome, elapsed = _timed_call_idle(server, wire, "stall", idle=0.3)
    assert outcome.category == TRANSIENT
    assert outcome.error_type is bm.DeadlineError, outcome.message
    assert outcome.possibly_billed
    assert "sent nothing for 0.3 s" in outcome.message
    assert 0.3 <= elapsed < 30  # the idle limit cut it, not the 30 s deadline


@pytest.mark.parametrize("wire", WIRES)
def test_the_whole_attempt_deadline_bounds_a_stream_that_keeps_trickling(server, wire):
    # keep-alives every 50 ms: the idle limit never fires, but the stream outlives the deadline
    outcome, elapsed = _timed_call_idle(server, wire, "trickle", idle=10, timeout=0.5)
    assert outcome.error_type is bm.DeadlineError, outcome.message
    assert "within 0.5 s" in outcome.message
    assert 0.5 <= elapsed < 10


def _timed_call_idle(server, wire, text, *, idle, timeout=30.0):
    async def main():
        backend = _backend(server, wire, idle_timeout=idle, timeout=timeout)
        clock = asyncio.get_running_loop().time
        try:
            start = clock()
            outcome = await backend.call(_unit(text))
            return outcome, clock() - start
        finally:
            await backend.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize("wire", WIRES)
def test_an_error_event_in_the_stream_is_classified_by_the_dialect(server, wire):
    outcome = _call(server, wire, "error event")
    assert outcome.category == RATE_LIMIT, outcome.message
    assert outcome.error_type is bm.RateLimitError
    assert outcome.possibly_billed  # tokens had arrived before the error
    outcome = _call(server, wire, "server error event")
    assert outcome.category == TRANSIENT
    assert outcome.error_type is bm.ServerError
    assert "server had an error" in outcome.message
    assert not outcome.possibly_billed  # nothing was generated
    # an error event in words no dialect knows is still an error, never a success
    outcome = _call(server, wire, "odd error event")
    assert outcome.category == TRANSIENT and outcome.error_type is bm.ServerError
    assert "reported an error" in outcome.message and outcome.possibly_billed


@pytest.mark.parametrize("wire", WIRES)
def test_an_http_error_before_the_stream_is_handled_as_today(server, wire):
    outcome = _call(server, wire, "too long")
    assert outcome.category == "context"
    assert outcome.status == 400
    assert outcome.error_type is bm.ContextLengthError


# -- through the dispatcher: one bad row stays one row -----------------------------------------


def _dispatch(server: SSEServer, wire: str, texts: list[str]) -> Any:
    async def main():
        backend = _backend(server, wire)
        units = [Unit([i], encode_body(build_body("chat", t, "m", {}, None)), tokens=10)
                 for i, t in enumerate(texts)]
        d = Dispatcher(units, len(texts), backend, window=Window(4, 4, adaptive=False), gate=RateGate(None, None),
                       policy=RetryPolicy(backoff_base=0.01, backoff_max=0.02),
                       progress=Progress(requests=len(texts)))
        try:
            return await d.run(), d
        finally:
            await backend.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize("wire", WIRES)
def test_the_dispatcher_retries_a_cut_stream_once_and_keeps_the_other_rows(server, wire):
    server.attempts.clear()
    texts = ["hello", "cut once", "cut", "malformed", "tool"]
    results, d = _dispatch(server, wire, texts)
    assert results.output[0] == "Hello world" and results.error[0] is None
    # cut once, whole the second time
    assert results.output[1] == "whole" and results.attempts[1] == 2
    # always cut: retried at most once (possibly billed), then a ConnectionLostError row
    assert isinstance(results.error[2], bm.ConnectionLostError)
    assert results.error[2].possibly_billed
    assert server.attempts["cut"] == 2
    # a malformed chunk: that row's ResponseError, the others unharmed
    assert isinstance(results.error[3], bm.ResponseError)
    assert server.attempts["malformed"] == 2
    assert results.error[4] is None and results.output[4] == ""
    for err in results.error:
        assert err is None or KEY not in str(err) and KEY not in repr(err)
    assert d.possibly_billed == 5  # three cut streams, two malformed answers


# -- the decoder and the assembler on their own ------------------------------------------------


def test_the_sse_decoder_handles_any_line_end_split_anywhere():
    stream = (b'event: message\r\ndata: {"a":\r\ndata: 1}\r\n\r\n: comment\n\n'
              b"data: x\rdata: y\r\rdata: [DONE]\n\n")
    for size in (1, 2, 3, 7, len(stream)):
        decoder = SSEDecoder(1 << 20)
        events = []
        for i in range(0, len(stream), size):
            events += decoder.feed(stream[i:i + size])
        assert [(e.name, e.data) for e in events] == [
            ("message", '{"a":\n1}'), ("message", "x\ny"), ("message", "[DONE]")]


def test_a_done_without_its_blank_line_still_ends_the_stream():
    decoder = SSEDecoder(1 << 20)
    assert [e.data for e in decoder.feed(b"data: {}\n\ndata: [DONE]")] == ["{}"]
    assert decoder.ends_with_done()
    other = SSEDecoder(1 << 20)
    other.feed(b"data: [DO")
    assert not other.ends_with_done()


def test_the_assembler_keeps_every_choice_of_an_n_request_in_index_order():
    times = iter([1.25, 9.0])
    assembler = StreamAssembler("chat", sent=1.0, clock=lambda: next(times), max_bytes=1 << 20)
    for chunk in (_chunk({"content": "B1"}, index=1), _chunk({"content": "A1"}, index=0),
                  _chunk({"content": "A2"}, index=0, finish="stop"),
                  _chunk({"content": "B2"}, index=1, finish="length"),
                  {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 8}}):
        assembler.add(chunk)
    first, second = assembler.finish()
    assert (first.output, first.finish_reason) == ("A1A2", "stop")
    assert (second.output, second.finish_reason) == ("B1B2", "length")
    assert first.ttft == second.ttft == 0.25
    # the request's usage is shared out: the sums are exact
    assert first.input_tokens + second.input_tokens == 5
    assert first.output_tokens + second.output_tokens == 8


def test_the_assembler_caps_what_it_keeps():
    from batchmagic.providers._sse import StreamError

    assembler = StreamAssembler("chat", sent=0.0, clock=lambda: 0.0, max_bytes=10)
    assembler.add(_chunk({"content": "12345"}))
    with pytest.raises(StreamError, match="cap"):
        assembler.add(_chunk({"content": "678901"}))


def test_completion_streams_are_assembled_from_text():
    assembler = StreamAssembler("completion", sent=0.0, clock=lambda: 0.5, max_bytes=1 << 20)
    for chunk in ({"choices": [{"index": 0, "text": "Once", "finish_reason": None,
                                "logprobs": {"tokens": ["Once"], "token_logprobs": [-0.1]}}]},
                  {"choices": [{"index": 0, "text": " upon", "finish_reason": "length",
                                "logprobs": {"tokens": [" upon"], "token_logprobs": [-0.2]}}]}):
        assembler.add(chunk)
    [parsed] = assembler.finish()
    assert parsed.output == "Once upon" and parsed.finish_reason == "length"
    assert parsed.logprobs == {"tokens": ["Once", " upon"], "token_logprobs": [-0.1, -0.2]}
    assert parsed.ttft == 0.5



def test_an_answer_streamed_though_not_asked_to_be_is_still_read():
    events = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in (
        _chunk({"content": "Hi"}), _chunk({"content": "!"}, finish="stop"), USAGE))
    s = Server(lambda req, body: httpx.Response(
        200, content=events + b"data: [DONE]\n\n", headers={"content-type": "text/event-stream"}))
    df = run(["x"], server=s)
    assert df["error"][0] is None, df["error"][0]
    assert df["output"][0] == "Hi!"
    assert (df["input_tokens"][0], df["output_tokens"][0]) == (7, 3)


# -- whole runs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES)
def test_a_streamed_run_gives_every_row_its_answer_or_its_own_error(server, wire):
    server.attempts.clear()
    texts = ["hello", "tool", "cut once", "malformed", "think"]
    df = bm.batch(texts, base_url=server.root + "/v1", model="m", api_key=KEY, stream=True,
                  http=wire, progress=False)
    assert list(df["output"]) == ["Hello world", "", "whole", None, "4"]
    assert [type(e).__name__ if e is not None else None for e in df["error"]] == [
        None, None, None, "ResponseError", None]
    assert list(df["attempts"]) == [1, 1, 2, 2, 1]
    assert df["ttft"][0] >= FIRST_TOKEN_DELAY
    assert df["tool_calls"][1][0] == {"id": "call_a", "name": "get_weather",
                                      "arguments": {"city": "Paris"}}
    assert df["reasoning"][4] == "two and two"
    assert KEY not in repr(df) and KEY not in str(df["error"][3])
    # streaming does not change what a row is: the same rows asked again unstreamed are
    # answered from the journal, and nothing is sent
    sent = len(server.bodies)
    again = bm.batch(texts, base_url=server.root + "/v1", model="m", api_key=KEY,
                     stream=False, http=wire, progress=False)
    asked = {body["messages"][-1]["content"] for body in server.bodies[sent:]}
    assert asked == {"malformed"}  # only the failed row is asked again
    assert list(again["output"])[:3] == ["Hello world", "", "whole"]
