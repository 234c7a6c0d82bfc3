"""What a chat or completion request asks beyond one plain text answer.

* ``n``: n choices, each different (seeded by its index); usage counts all of them.
* ``response_format``: ``json_schema`` answers JSON valid for the schema (strict mode refuses
  the schemas OpenAI refuses); ``json_object`` answers an object, shaped by a JSON Schema
  written after ``"JSON Schema:"`` in a message when there is one, else ``{"answer": <reply>}``.
* ``tools``: the answer is a call when the request is last from the user and its last user
  message says ``call <tool name>`` (each tool named so, in order; one unless
  ``parallel_tool_calls``), or ``tool_choice`` names a function, or is ``"required"`` (then the
  tool named in the prompt, else the first). Arguments are JSON valid for the tool's
  ``parameters``; ``content`` is null and ``finish_reason`` is ``"tool_calls"``.
* ``logprobs`` (chat: ``true`` with ``top_logprobs`` 0-20; completion: an integer 0-5):
  deterministic log-probabilities, one entry per token of :func:`split_tokens`.
* ``stream`` (with ``stream_options.include_usage``): answered as server-sent events (_sse).

A plain request carries none of these keys and never comes here (the fast path).
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

import orjson

from ._answers import _VOCAB, count_tokens, sample_text, split_tokens, truncate_tokens
from ._http import ApiError
from ._structured import schema_in_text, strict_problem, structured_answer, tool_arguments

#: any of these keys in a request body takes it off the plain path
EXTRA_KEYS = frozenset({
    "n", "stream", "stream_options", "response_format", "tools", "tool_choice",
    "parallel_tool_calls", "logprobs", "top_logprobs",
})
#: faults that spoil the JSON of an answer (content under response_format, or tool arguments)
JSON_FAULTS = frozenset({"invalid_json", "schema_mismatch"})
#: faults that spoil a streamed answer
STREAM_FAULTS = frozenset({"stream_cut", "stream_eof", "malformed_chunk", "stream_stall"})
MAX_CHOICES = 128
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
_NAME_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")


class Choice:
    """One answer: text (None for tool calls), its finish reason and tokens; the JSON value
    behind a structured text; the calls as (id, name, arguments text, arguments value)."""

    __slots__ = ("text", "finish", "ctoks", "value", "calls")

    def __init__(self, text: str | None, finish: str, ctoks: int, value: Any = None,
                 calls: list[tuple[str, str, str, Any]] | None = None) -> None:
        self.text = text
        self.finish = finish
        self.ctoks = ctoks
        self.value = value
        self.calls = calls


class Extras:
    """The parsed extras of one request and its choices."""

    __slots__ = ("prompt", "stream", "include_usage", "fmt", "schema", "tools", "top",
                 "max_tokens", "choices")

    def __init__(self, prompt: str) -> None:
        self.prompt = prompt
        self.stream = False
        self.include_usage = False
        self.fmt: str | None = None  # "json_schema" | "json_object" | None (text)
        self.schema: dict | None = None  # what structured content is valid for
        self.tools: dict[str, dict] = {}  # name -> parameters schema
        self.top: int | None = None  # None: no logprobs; else the number of alternatives
        self.max_tokens: int | None = None
        self.choices: list[Choice] = []

    @property
    def ctoks(self) -> int:
        return sum(c.ctoks for c in self.choices)

    def summary(self) -> dict[str, Any] | None:
        """What the call log records of the extras (None when there is nothing to say)."""
        out: dict[str, Any] = {}
        if len(self.choices) > 1:
            out["n"] = len(self.choices)
        if self.stream:
            out["stream"] = True
        if self.fmt is not None:
            out["format"] = self.fmt
        calls = self.choices[0].calls if self.choices else None
        if calls:
            out["tool_calls"] = [name for _, name, _, _ in calls]
        if self.top is not None:
            out["logprobs"] = self.top
        return out or None


# ---------------------------------------------------------------------- reading a request
def read_extras(kind: str, p: dict[str, Any], reply: str, prompt: str, texts: list[str],
                messages: list | None, max_tokens: int | None) -> Extras:
    """Parse and check the extras of a chat (``messages``) or completion request, and make its
    choices. ``texts``: the text of every message (or the prompt). Raises ApiError."""
    ex = Extras(prompt)
    n = _choices_wanted(p)
    ex.stream, ex.include_usage = _stream(p)
    ex.fmt, ex.schema = _response_format(p, texts)
    ex.top = _logprobs(kind, p)
    ex.max_tokens = max_tokens
    calls: list[str] = []
    if kind == "chat":
        ex.tools = _tools(p)
        calls = _calls_wanted(p, ex.tools, messages or [], prompt)
    elif "tools" in p or "tool_choice" in p:
        raise ApiError(400, "'tools' are only supported by chat completions", param="tools")
    for i in range(n):
        ex.choices.append(_call_choice(ex, calls, i) if calls else _text_choice(ex, reply, i))
    return ex


def _choices_wanted(p: dict[str, Any]) -> int:
    n = p.get("n")
    if n is None:
        return 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CHOICES:
        raise ApiError(400, f"'n' must be an integer in [1, {MAX_CHOICES}]", param="n")
    return n


def _stream(p: dict[str, Any]) -> tuple[bool, bool]:
    stream = p.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean", param="stream")
    options = p.get("stream_options")
    if options is None:
        return bool(stream), False
    if not stream:
        raise ApiError(400, "The 'stream_options' parameter is only allowed when 'stream' is"
                       " enabled.", param="stream_options")
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options")
    usage = options.get("include_usage")
    if usage is not None and not isinstance(usage, bool):
        raise ApiError(400, "'stream_options.include_usage' must be a boolean",
                       param="stream_options")
    return True, bool(usage)


def _response_format(p: dict[str, Any], texts: list[str]) -> tuple[str | None, dict | None]:
    rf = p.get("response_format")
    if rf is None:
        return None, None
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "text":
        return None, None
    if kind == "json_object":
        if not any("json" in t.lower() for t in texts):
            raise ApiError(400, "'messages' must contain the word 'json' in some form, to use"
                           " 'response_format' of type 'json_object'.", param="messages")
        for text in texts:
            schema = schema_in_text(text)
            if schema is not None:
                return "json_object", schema
        return "json_object", None
    if kind == "json_schema":
        return "json_schema", _json_schema(rf.get("json_schema"))
    raise ApiError(400, "'response_format.type' must be 'text', 'json_object' or "
                   "'json_schema'", param="response_format")


def _json_schema(spec: Any) -> dict:
    if not isinstance(spec, dict):
        raise ApiError(400, "Missing required parameter: 'response_format.json_schema'.",
                       param="response_format.json_schema", code="missing_required_parameter")
    name = spec.get("name")
    if not isinstance(name, str):
        raise ApiError(400, "Missing required parameter: 'response_format.json_schema.name'.",
                       param="response_format.json_schema.name",
                       code="missing_required_parameter")
    if not _NAME_RE.fullmatch(name):
        raise ApiError(400, "Invalid 'response_format.json_schema.name': string does not match"
                       " pattern. Expected a string that matches the pattern "
                       "'^[a-zA-Z0-9_-]+$' of at most 64 characters.",
                       param="response_format.json_schema.name", code="invalid_value")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise ApiError(400, "'response_format.json_schema.schema' must be a JSON Schema object",
                       param="response_format.json_schema.schema")
    if spec.get("strict") is True:
        problem = strict_problem(schema)
        if problem is not None:
            raise ApiError(400, f"Invalid schema for response_format '{name}': {problem}.",
                           param="response_format", code="invalid_json_schema")
    return schema


def _logprobs(kind: str, p: dict[str, Any]) -> int | None:
    asked = p.get("logprobs")
    if kind == "completion":
        if asked is None:
            return None
        if not isinstance(asked, int) or isinstance(asked, bool) or \
                not 0 <= asked <= MAX_COMPLETION_LOGPROBS:
            raise ApiError(400, f"'logprobs' must be an integer in [0, "
                           f"{MAX_COMPLETION_LOGPROBS}]", param="logprobs")
        return asked
    if asked is not None and not isinstance(asked, bool):
        raise ApiError(400, "'logprobs' must be a boolean", param="logprobs")
    top = p.get("top_logprobs")
    if top is not None:
        if not isinstance(top, int) or isinstance(top, bool) or \
                not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ApiError(400, f"'top_logprobs' must be an integer in [0, "
                           f"{MAX_TOP_LOGPROBS}]", param="top_logprobs")
        if not asked:
            raise ApiError(400, "'logprobs' must be true to use 'top_logprobs'.",
                           param="top_logprobs")
    return (top or 0) if asked else None


def _tools(p: dict[str, Any]) -> dict[str, dict]:
    tools = p.get("tools")
    if tools is None:
        if p.get("tool_choice") is not None:
            raise ApiError(400, "'tool_choice' is only allowed when 'tools' are specified.",
                           param="tool_choice")
        return {}
    if not isinstance(tools, list) or not tools:
        raise ApiError(400, "'tools' must be a non-empty array", param="tools")
    out: dict[str, dict] = {}
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type") != "function":
            raise ApiError(400, "each tool must be {'type': 'function', 'function': {...}}",
                           param="tools")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ApiError(400, "a tool's 'function.name' must match '^[a-zA-Z0-9_-]+$' (at "
                           "most 64 characters)", param="tools")
        params = fn.get("parameters", {})
        if not isinstance(params, dict):
            raise ApiError(400, f"tool {name!r}: 'parameters' must be a JSON Schema object",
                           param="tools")
        out[name] = params
    return out


def _calls_wanted(p: dict[str, Any], tools: dict[str, dict], messages: list,
                  prompt: str) -> list[str]:
    """The tools this answer calls, by the rule in the module docstring."""
    if not tools:
        return []
    choice = p.get("tool_choice")
    if choice is None:
        choice = "auto"
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if choice.get("type") != "function" or name not in tools:
            raise ApiError(400, "'tool_choice' must name a function given in 'tools'",
                           param="tool_choice")
        return [name]
    if choice not in ("none", "auto", "required"):
        raise ApiError(400, "'tool_choice' must be 'none', 'auto', 'required' or "
                       "{'type': 'function', 'function': {'name': ...}}", param="tool_choice")
    if choice == "none":
        return []
    last = messages[-1] if messages else None
    named = _named_in(prompt, tools) if isinstance(last, dict) and \
        last.get("role") == "user" else []
    if p.get("parallel_tool_calls") is False:
        named = named[:1]
    if choice == "required" and not named:
        named = [next(iter(tools))]
    return named


def _named_in(text: str, tools: dict[str, dict]) -> list[str]:
    """Tools the text asks for with ``call <name>``, in the order they are asked."""
    found = []
    for name in tools:
        m = re.search(rf"\bcall\s+{re.escape(name)}(?![\w-])", text, re.IGNORECASE)
        if m:
            found.append((m.start(), name))
    return [name for _, name in sorted(found)]


# ---------------------------------------------------------------------- making choices
def _text_choice(ex: Extras, reply: str, i: int) -> Choice:
    value: Any = None
    if ex.fmt is None:
        text = sample_text(reply, ex.prompt, i)
    else:
        if ex.schema is not None:
            value = structured_answer(ex.schema, ex.prompt, i)
        else:
            value = {"answer": sample_text(reply, ex.prompt, i)}
        text = orjson.dumps(value).decode()
    return _fitted(text, ex.max_tokens, value)


def _fitted(text: str, max_tokens: int | None, value: Any = None) -> Choice:
    if max_tokens is None:
        return Choice(text, "stop", count_tokens(text), value)
    text, ctoks, cut = truncate_tokens(text, max_tokens)
    return Choice(text, "length" if cut else "stop", ctoks, value)


def _call_choice(ex: Extras, names: list[str], i: int) -> Choice:
    calls = []
    for j, name in enumerate(names):
        args = tool_arguments(ex.tools[name], ex.prompt, name, i)
        calls.append((call_id(ex.prompt, name, i, j), name, orjson.dumps(args).decode(), args))
    return Choice(None, "tool_calls", _call_tokens(calls), calls=calls)


def _call_tokens(calls: list[tuple[str, str, str, Any]]) -> int:
    return sum(count_tokens(name) + count_tokens(args) for _, name, args, _ in calls)


def call_id(prompt: str, name: str, index: int, position: int) -> str:
    """A tool call's id: deterministic, so a repeated request gets the same ids."""
    digest = hashlib.sha256(f"{prompt}\x00{name}\x00{index}\x00{position}".encode(
        "utf-8", "surrogatepass")).hexdigest()
    return "call_" + digest[:24]


# ---------------------------------------------------------------------- faults
def applies(ex: Extras | None, fault: str) -> bool:
    """Whether a JSON or stream fault can spoil this request (else it is answered normally)."""
    if ex is None:
        return False
    if fault in STREAM_FAULTS:
        return ex.stream
    if any(c.calls for c in ex.choices):
        return True
    if ex.fmt is None:
        return False
    return fault == "invalid_json" or ex.schema is not None


def spoil(ex: Extras, fault: str) -> None:
    """Apply a JSON fault to every choice: ``invalid_json`` cuts the JSON in half (it never
    parses); ``schema_mismatch`` answers JSON that breaks the schema (a required field left
    out, else a field of the wrong type, else an array where an object belongs)."""
    for k, c in enumerate(ex.choices):
        if c.calls:
            calls = [(cid, name, _spoiled(args, value, ex.tools[name], fault), value)
                     for cid, name, args, value in c.calls]
            ex.choices[k] = Choice(None, c.finish, _call_tokens(calls), calls=calls)
        elif c.text is not None and ex.fmt is not None:
            text = _spoiled(c.text, c.value, ex.schema, fault)
            ex.choices[k] = Choice(text, c.finish, count_tokens(text), c.value)


def _spoiled(text: str, value: Any, schema: dict | None, fault: str) -> str:
    if fault == "invalid_json":
        return text[:max(1, len(text) // 2)]
    return orjson.dumps(_mismatched(value, schema or {})).decode()


def _mismatched(value: Any, schema: dict) -> Any:
    if not isinstance(value, dict):
        return [value]
    required = [r for r in schema.get("required") or () if r in value]
    if required:
        return {k: v for k, v in value.items() if k != required[0]}
    if value:
        first = next(iter(value))
        wrong = 12345 if isinstance(value[first], str) else "schema_mismatch"
        return {**value, first: wrong}
    return [value]


# ---------------------------------------------------------------------- log-probabilities
def content_logprobs(text: str, prompt: str, index: int, top: int) -> list[dict[str, Any]]:
    """OpenAI's ``choices[i].logprobs.content`` for ``text``: one entry per token, each with
    ``top`` alternatives (the chosen token first, then lower ones)."""
    out = []
    for token, lp, alts in _token_draws(text, prompt, index, top):
        out.append({"token": token, "logprob": lp, "bytes": _bytes(token),
                    "top_logprobs": [{"token": t, "logprob": v, "bytes": _bytes(t)}
                                     for t, v in alts]})
    return out


def completion_logprobs(text: str, prompt: str, index: int, top: int,
                        offset: int = 0) -> dict[str, Any]:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens, lps, tops, offsets = [], [], [], []
    pos = offset
    for token, lp, alts in _token_draws(text, prompt, index, top):
        tokens.append(token)
        lps.append(lp)
        tops.append(dict(alts))
        offsets.append(pos)
        pos += len(token)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops,
            "text_offset": offsets}


def _token_draws(text: str, prompt: str, index: int, top: int
                 ) -> list[tuple[str, float, list[tuple[str, float]]]]:
    seed = hashlib.sha256(f"logprobs\x00{index}\x00{prompt}".encode(
        "utf-8", "surrogatepass")).digest()
    rng = random.Random(int.from_bytes(seed[:8], "big"))
    out = []
    for token in split_tokens(text):
        lp = -round(rng.random() ** 3 * 3, 6)  # mostly confident, now and then not
        alts = [(token, lp)] if top else []
        lower = lp
        for word in rng.sample(_VOCAB, min(len(_VOCAB), top + 1)):
            if len(alts) >= top:
                break
            if " " + word != token:
                lower = round(lower - rng.uniform(0.2, 2.0), 6)
                alts.append((" " + word, lower))
        out.append((token, lp, alts))
    return out


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", "surrogatepass"))


# ---------------------------------------------------------------------- answers
def chat_choices(ex: Extras) -> list[dict[str, Any]]:
    """``choices`` of a chat completion (not streamed)."""
    out = []
    for i, c in enumerate(ex.choices):
        message: dict[str, Any] = {"role": "assistant", "content": c.text, "refusal": None}
        if c.calls:
            message["tool_calls"] = [tool_call(cid, name, args) for cid, name, args, _ in c.calls]
        logprobs = None
        if ex.top is not None:
            content = None if c.text is None else content_logprobs(c.text, ex.prompt, i, ex.top)
            logprobs = {"content": content, "refusal": None}
        out.append({"index": i, "message": message, "logprobs": logprobs,
                    "finish_reason": c.finish})
    return out


def completion_choices(ex: Extras) -> list[dict[str, Any]]:
    """``choices`` of a text completion (not streamed)."""
    out = []
    for i, c in enumerate(ex.choices):
        text = c.text or ""
        logprobs = None if ex.top is None else completion_logprobs(text, ex.prompt, i, ex.top)
        out.append({"text": text, "index": i, "logprobs": logprobs, "finish_reason": c.finish})
    return out


def tool_call(cid: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}
