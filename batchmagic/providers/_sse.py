"""Streamed answers: server-sent events decoded from bytes as they arrive, and the chunks of an
OpenAI-style stream assembled into the same ``Parsed`` answers a whole response gives.

A chat stream is a run of ``data: {chunk}`` events ended by ``data: [DONE]``. Each chunk holds
``choices[i].delta`` pieces (content, reasoning, tool-call fragments keyed by their index), maybe
``logprobs`` for those tokens and a ``finish_reason``; with ``stream_options.include_usage`` the
last chunk carries the usage and no choices. Completion streams carry ``choices[i].text``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._kinds import Parsed, ShapeError, chat_text, tool_arguments, with_usage

DONE = "[DONE]"


class StreamError(Exception):
    """The stream cannot be read as server-sent events (bad UTF-8, an event over the cap)."""


@dataclass(slots=True)
class Event:
    name: str  # "message" unless the server named it (``event: error``)
    data: str


class SSEDecoder:
    """Server-sent events from bytes, fed as they arrive (the WHATWG rules): lines end with
    ``\\n``, ``\\r\\n`` or ``\\r``; the ``data:`` lines of one event are joined with ``\\n``; a
    blank line ends the event; comments (``:``, often keep-alives) and other fields are skipped.
    ``max_bytes`` bounds what one event may hold, so a server cannot fill memory."""

    def __init__(self, max_bytes: int):
        self._max = max_bytes
        self._tail = b""  # an unfinished line
        self._skip_lf = False  # the last line ended with \r: a \n starting the next chunk is its end
        self._name = ""
        self._data: list[str] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[Event]:
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = False
        lines = (self._tail + chunk).splitlines(keepends=True)
        self._tail = b""
        if lines and not lines[-1].endswith((b"\n", b"\r")):
            self._tail = lines.pop()
            if len(self._tail) > self._max:
                raise StreamError(f"a stream line is over the {self._max:,} byte cap")
        if lines and lines[-1].endswith(b"\r"):
            self._skip_lf = True
        events: list[Event] = []
        for line in lines:
            self._line(line.rstrip(b"\r\n"), events)
        return events

    def ends_with_done(self) -> bool:
        """At the end of the body: whether an unterminated last event is ``[DONE]`` (a server
        that closed right after it, without the blank line)."""
        pending = list(self._data)
        name, _, value = self._tail.partition(b":")
        if name == b"data":
            pending.append(value.removeprefix(b" ").decode("utf-8", "replace"))
        return "\n".join(pending) == DONE

    def _line(self, line: bytes, events: list[Event]) -> None:
        if not line:
            if self._data:
                events.append(Event(self._name or "message", "\n".join(self._data)))
            self._name, self._data, self._size = "", [], 0
            return
        if line.startswith(b":"):
            return
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._size += len(value)
            if self._size > self._max:
                raise StreamError(f"a stream event is over the {self._max:,} byte cap")
            self._data.append(_decode(value))
        elif name == b"event":
            self._name = _decode(value)


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StreamError(f"a stream event is not valid UTF-8 (byte {exc.start})") from None


@dataclass(slots=True)
class _ToolCall:
    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Choice:
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)
    logprobs: dict | None = None
    finish_reason: str | None = None


class StreamAssembler:
    """Chunks of one streamed answer in, one ``Parsed`` per choice out (ordered by index).

    ``clock`` is the clock the request's send time ``sent`` was read on; ``ttft`` is the time
    from then to the first generated piece (content, reasoning, refusal or a tool call).
    ``max_bytes`` caps what is kept (text, tool arguments, logprobs), as a whole body is capped.
    Chunks of the wrong shape raise ``ShapeError``."""

    def __init__(self, kind: str, *, sent: float, clock: Callable[[], float], max_bytes: int):
        self.kind = kind
        self._sent = sent
        self._clock = clock
        self._max = max_bytes
        self._kept = 0
        self._choices: dict[int, _Choice] = {}
        self._usage: dict | None = None
        self.ttft: float | None = None

    @property
    def started(self) -> bool:
        """Whether the model began answering (so an error now may already be billed)."""
        return self.ttft is not None

    def add(self, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            raise ShapeError(f"a stream chunk is {type(chunk).__name__}, not an object")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        choices = chunk.get("choices")
        if choices is None:
            return
        if not isinstance(choices, list):
            raise ShapeError("a stream chunk's choices are not a list")
        for pos, piece in enumerate(choices):
            if not isinstance(piece, dict):
                raise ShapeError("a stream chunk's choice is not an object")
            index = piece.get("index", pos)
            if not isinstance(index, int):
                raise ShapeError(f"a stream chunk's choice index is {index!r}")
            self._add_choice(self._choices.setdefault(index, _Choice()), piece)

    def finish(self) -> list[Parsed]:
        """The assembled answers, once the stream said ``[DONE]``."""
        if not self._choices:
            raise ShapeError("the stream ended without an answer")
        parsed = [self._parsed(self._choices[i]) for i in sorted(self._choices)]
        usage = self._usage or {}
        inp = usage.get("prompt_tokens", usage.get("input_tokens"))
        out = usage.get("completion_tokens", usage.get("output_tokens"))
        return with_usage(parsed, inp if isinstance(inp, int) else None,
                          out if isinstance(out, int) else None)

    # -- one choice's piece --------------------------------------------------------------------

    def _add_choice(self, choice: _Choice, piece: dict) -> None:
        if piece.get("finish_reason") is not None:
            choice.finish_reason = piece["finish_reason"]
        logprobs = piece.get("logprobs")
        if logprobs is not None:
            choice.logprobs = self._merge_logprobs(choice.logprobs, logprobs)
        if self.kind == "completion":
            self._text(choice.content, piece.get("text"), "text")
            return
        delta = piece.get("delta")
        if delta is None:
            return
        if not isinstance(delta, dict):
            raise ShapeError("a stream chunk's delta is not an object")
        self._text(choice.content, chat_text(delta.get("content")), "content")
        self._text(choice.reasoning, delta.get("reasoning_content") or delta.get("reasoning"),
                   "reasoning")
        self._text(choice.refusal, delta.get("refusal"), "refusal")
        calls = delta.get("tool_calls")
        if calls:
            if not isinstance(calls, list):
                raise ShapeError("a stream chunk's tool_calls are not a list")
            for pos, call in enumerate(calls):
                self._tool_call(choice, pos, call)

    def _text(self, parts: list[str], text: Any, what: str) -> None:
        if text is None or text == "":
            return
        if not isinstance(text, str):
            raise ShapeError(f"a stream chunk's {what} is {type(text).__name__}, not text")
        self._keep(len(text))
        parts.append(text)
        self._first_token()

    def _tool_call(self, choice: _Choice, pos: int, call: Any) -> None:
        if not isinstance(call, dict):
            raise ShapeError("a streamed tool call is not an object")
        index = call.get("index", pos)
        if not isinstance(index, int):
            raise ShapeError(f"a streamed tool call's index is {index!r}")
        merged = choice.tool_calls.setdefault(index, _ToolCall())
        if call.get("id"):
            merged.id = call["id"]
        function = call.get("function") or {}
        if not isinstance(function, dict):
            raise ShapeError("a streamed tool call's function is not an object")
        name = function.get("name")
        if name and not merged.name:  # some servers repeat the whole name in every fragment
            merged.name = str(name)
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # already parsed by the server
            arguments = _dumps(arguments)
        self._text(merged.arguments, arguments, "tool call arguments")
        self._first_token()

    def _merge_logprobs(self, kept: dict | None, piece: Any) -> dict:
        """Lists (``content``, ``tokens``, ``token_logprobs``, ...) are appended, the rest kept
        as last given: the merged value has the shape a whole answer's logprobs have."""
        if not isinstance(piece, dict):
            raise ShapeError("a stream chunk's logprobs are not an object")
        merged = kept if kept is not None else {}
        for key, value in piece.items():
            if isinstance(value, list):
                self._keep(len(value) * 64)  # a rough size: a token entry is tens of bytes
                merged.setdefault(key, [])
                if isinstance(merged[key], list):
                    merged[key].extend(value)
                else:
                    merged[key] = list(value)
            elif value is not None or key not in merged:
                merged[key] = value
        return merged

    def _keep(self, size: int) -> None:
        self._kept += size
        if self._kept > self._max:
            raise StreamError(f"the streamed answer is over the {self._max:,} byte cap")

    def _first_token(self) -> None:
        if self.ttft is None:
            self.ttft = max(0.0, self._clock() - self._sent)

    def _parsed(self, choice: _Choice) -> Parsed:
        content = "".join(choice.content)
        if not content and choice.refusal:
            content = "".join(choice.refusal)
        tool_calls = None
        if choice.tool_calls:
            tool_calls = [self._tool_call_out(choice.tool_calls[i]) for i in sorted(choice.tool_calls)]
        return Parsed(content, choice.finish_reason,
                      reasoning="".join(choice.reasoning) or None,
                      tool_calls=tool_calls, logprobs=choice.logprobs, ttft=self.ttft)

    @staticmethod
    def _tool_call_out(call: _ToolCall) -> dict:
        if not call.name:
            raise ShapeError("a streamed tool call has no function name")
        return {"id": call.id, "name": call.name,
                "arguments": tool_arguments(call.name, "".join(call.arguments))}


def _dumps(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()
