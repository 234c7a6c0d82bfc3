"""The simulator's structured answers over real HTTP: response_format (json_schema and
json_object), n choices, tool calls, logprobs and streamed answers (server-sent events), with
the faults that spoil each of them. Clients are raw aiohttp and sockets; all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import time
import uuid
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import aiohttp
import jsonschema
import pytest
from pydantic import BaseModel, Field, TypeAdapter
from typing_extensions import TypedDict

from batchmagic.simulator import (
    SimulatorProcess,
    SimulatorThread,
    count_tokens,
    split_tokens,
    structured_answer,
)

pytestmark = pytest.mark.timeout(60)

SENTINEL = "sk-SENTINEL-DO-NOT-LEAK-structured-42"


# ---------------------------------------------------------------------- helpers
class Resp:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def post(url: str, payload: Any, headers: dict[str, str] | None = None) -> Resp:
    async def go() -> Resp:
        async with aiohttp.ClientSession() as s, s.post(
                url, json=payload, headers=headers,
                timeout=aiohttp.ClientTimeout(total=20)) as r:
            return Resp(r.status, r.headers, await r.read())

    return asyncio.run(go())


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "sim-chat", "messages": [{"role": "user", "content": text}], **extra}


def json_schema(schema: dict, name: str = "answer", strict: bool = False) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema,
                                                   "strict": strict}}


def events(body: bytes) -> list[Any]:
    """The data of each server-sent event: a parsed chunk, or the text "[DONE]"."""
    out: list[Any] = []
    for block in body.decode().split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def assemble_chat(chunks: list[Any]) -> dict[int, dict[str, Any]]:
    """Per choice index: content, tool calls (merged by index), finish_reason, logprobs."""
    out: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        if chunk == "[DONE]":
            continue
        for c in chunk["choices"]:
            got = out.setdefault(c["index"], {"content": None, "calls": {}, "finish": None,
                                              "logprobs": [], "role": None})
            delta = c["delta"]
            got["role"] = delta.get("role", got["role"])
            if delta.get("content") is not None:
                got["content"] = (got["content"] or "") + delta["content"]
            for call in delta.get("tool_calls") or ():
                slot = got["calls"].setdefault(call["index"], {"id": None, "name": None,
                                                               "arguments": ""})
                slot["id"] = call.get("id") or slot["id"]
                fn = call.get("function") or {}
                slot["name"] = fn.get("name") or slot["name"]
                slot["arguments"] += fn.get("arguments") or ""
            if c.get("logprobs"):
                got["logprobs"] += c["logprobs"]["content"]
            if c["finish_reason"] is not None:
                got["finish"] = c["finish_reason"]
    return out


async def stream_arrivals(url: str, payload: Any) -> tuple[float, list[tuple[float, bytes]]]:
    """(when the request went, [(when each event line arrived, the line)])."""
    async with aiohttp.ClientSession() as s:
        t0 = time.monotonic()
        async with s.post(url, json=payload) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            lines = []
            async for line in r.content:
                if line.strip():
                    lines.append((time.monotonic(), line.strip()))
            return t0, lines


async def read_stream(url: str, payload: Any, headers: dict[str, str] | None = None,
                      **timeout: float) -> tuple[bytes, BaseException | None]:
    """Every byte of a streamed answer, and the client error that ended it (None if whole)."""
    got = b""
    async with aiohttp.ClientSession(headers=headers) as s:
        try:
            async with s.post(url, json=payload, timeout=aiohttp.ClientTimeout(**timeout)) as r:
                async for piece in r.content.iter_any():
                    got += piece
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            return got, e
    return got, None


def complete_events(body: bytes) -> list[Any]:
    """The events of a body that may end mid-event (the last partial one dropped)."""
    return events(body.rpartition(b"\n\n")[0])


def raw_post(base_url: str, path: str, payload: Any) -> bytes:
    """POST over a bare socket; every byte received until the server closes."""
    u = urlsplit(base_url)
    body = json.dumps(payload).encode()
    head = (f"POST {u.path}{path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nConnection: close"
            f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    got = b""
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        sock.sendall(head + body)
        while chunk := sock.recv(65536):
            got += chunk
    return got


class Mood(str, Enum):
    happy = "happy"
    sad = "sad"


class Address(BaseModel):
    city: str
    zip: str = Field(min_length=5, max_length=5)


class Review(BaseModel):
    label: Literal["positive", "negative", "mixed"]
    stars: int = Field(ge=1, le=5)
    score: float = Field(gt=0, lt=1, multiple_of=0.05)
    tags: list[str] = Field(min_length=1, max_length=3)
    mood: Mood
    where: Address
    previous: Address | None = None
    note: str | None = None


TREE = {  # recursive, with $ref, anyOf, allOf, formats, tuples and unique items
    "type": "object",
    "$defs": {"node": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12},
        "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
        "required": ["name", "kids"]}},
    "properties": {
        "root": {"$ref": "#/$defs/node"},
        "when": {"type": "string", "format": "date-time"},
        "id": {"type": "string", "format": "uuid"},
        "mail": {"type": "string", "format": "email"},
        "either": {"anyOf": [{"type": "integer", "minimum": 10}, {"type": "null"}]},
        "both": {"allOf": [{"properties": {"a": {"type": "boolean"}}, "required": ["a"]},
                           {"properties": {"b": {"const": "fixed"}}, "required": ["b"]}]},
        "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
                 "items": False, "minItems": 2},
        "picks": {"type": "array", "items": {"enum": [1, 2, 3]}, "uniqueItems": True,
                  "minItems": 3},
        "odd": {"type": ["number", "string"]},
        "big": {"type": "integer", "exclusiveMinimum": 1000, "multipleOf": 7},
    },
    "required": ["root", "when", "id", "mail", "either", "both", "pair", "picks", "odd", "big"],
}
CHECK = jsonschema.FormatChecker()


# ---------------------------------------------------------------------- response_format
def test_json_schema_answers_are_valid_deterministic_and_predictable() -> None:
    review = Review.model_json_schema()
    prompts = [f"Review {i}: great phone, poor battery, shipped to Lyon" for i in range(12)]
    with SimulatorThread() as sim:
        url = sim.base_url + "/chat/completions"
        for schema in (review, TREE):
            contents = []
            for prompt in prompts:
                b = post(url, chat(prompt, response_format=json_schema(schema))).json()
                content = b["choices"][0]["message"]["content"]
                value = json.loads(content)
                jsonschema.validate(value, schema, format_checker=CHECK)
                assert value == structured_answer(schema, prompt)  # a pure function
                assert b["choices"][0]["finish_reason"] == "stop"
                assert b["usage"]["completion_tokens"] == count_tokens(content)
                contents.append(content)
            again = post(url, chat(prompts[0], response_format=json_schema(schema))).json()
            assert again["choices"][0]["message"]["content"] == contents[0]
            assert len(set(contents)) > len(prompts) // 2  # derived from each prompt
        for prompt in prompts:  # pydantic reads every answer back as the model
            b = post(url, chat(prompt, response_format=json_schema(review))).json()
            Review.model_validate_json(b["choices"][0]["message"]["content"])
        # strings come from the prompt's words
        words = post(url, chat("zebra quokka", response_format=json_schema(
            {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]})))
        assert set(json.loads(words.json()["choices"][0]["message"]["content"])["s"].split()) \
            <= {"zebra", "quokka"}
        assert sim.calls()[0]["extras"] == {"format": "json_schema"}


class Level(IntEnum):
    low = 1
    high = 3


class Parts(TypedDict):
    a: int
    b: list[str]


@dataclass
class Dated:
    x: float
    when: datetime.date


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = 9


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Owner(BaseModel):
    pet: Cat | Dog = Field(discriminator="kind")
    pets: dict[str, int]
    pair: tuple[int, str]
    at: datetime.datetime
    id: uuid.UUID
    code: Annotated[str, Field(min_length=3, max_length=6)]
    n: Annotated[int, Field(ge=-5, lt=0)]


@pytest.mark.parametrize("kind", [
    int, bool, float, str, list[int], dict[str, float], tuple[int, str, bool], Mood, Level,
    Parts, Dated, Owner, Literal["yes", "no"], list[Literal["a", "b"]],
    Annotated[list[int], Field(min_length=4, max_length=4)], datetime.datetime, uuid.UUID,
    int | None, Annotated[float, Field(ge=2.5, le=2.5)], Review,
], ids=str)
def test_values_for_pydantic_types_validate_both_ways(kind: Any) -> None:
    adapter = TypeAdapter(kind)
    schema = adapter.json_schema()
    for i in range(30):
        value = structured_answer(schema, f"prompt {i} about cats and dogs", i % 3)
        jsonschema.validate(value, schema, format_checker=CHECK)
        adapter.validate_json(json.dumps(value))  # pydantic reads it back as the type


def test_generated_values_respect_required_and_sometimes_skip_optional_fields() -> None:
    schema = {"type": "object", "properties": {"need": {"type": "integer"},
                                               "maybe": {"type": "string"}},
              "required": ["need"]}
    values = [structured_answer(schema, f"prompt {i}") for i in range(60)]
    assert all("need" in v for v in values)
    assert 0 < sum("maybe" in v for v in values) < 60
    label = {"type": "object", "properties": {"value": {"enum": ["yes", "no", "maybe"]}},
             "required": ["value"], "additionalProperties": False}
    assert {structured_answer(label, f"p{i}")["value"] for i in range(40)} == \
        {"yes", "no", "maybe"}  # an enum is picked per prompt, every option in use
    assert structured_answer(label, "same") == structured_answer(label, "same")
    never = {"type": "object", "properties": {"x": False, "y": {"not": {}}}}
    assert {json.dumps(structured_answer(never, f"p{i}")) for i in range(20)} <= {"{}"}
    deep = {"$defs": {"n": {"type": "object", "properties": {"k": {"$ref": "#/$defs/n"}},
                            "required": ["k"]}}, "$ref": "#/$defs/n"}
    structured_answer(deep, "no finite instance")  # gives up instead of recursing forever


def test_strict_schemas_are_checked_like_openai_and_bad_formats_refused() -> None:
    loose = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    strict = {**loose, "additionalProperties": False}
    with SimulatorThread() as sim:
        url = sim.base_url + "/chat/completions"
        r = post(url, chat("x", response_format=json_schema(loose, strict=True)))
        assert r.status == 400 and r.json()["error"]["param"] == "response_format"
        assert "additionalProperties" in r.json()["error"]["message"]
        nested = {**strict, "properties": {"a": {"type": "object", "properties": {
            "b": {"type": "string"}}, "additionalProperties": False}}}
        r = post(url, chat("x", response_format=json_schema(nested, strict=True)))
        assert r.status == 400 and "'required'" in r.json()["error"]["message"]
        assert post(url, chat("x", response_format=json_schema(strict, strict=True))).status \
            == 200
        assert post(url, chat("x", response_format=json_schema(loose))).status == 200
        for bad in ({"type": "json_schema"}, {"type": "xml"}, "json",
                    {"type": "json_schema", "json_schema": {"schema": strict}},
                    {"type": "json_schema", "json_schema": {"name": "a b", "schema": strict}},
                    {"type": "json_schema", "json_schema": {"name": "a", "schema": [1]}}):
            r = post(url, chat("x", response_format=bad))
            assert r.status == 400 and r.json()["error"]["type"] == "invalid_request_error"
        text = post(url, chat("plain", response_format={"type": "text"})).json()
        assert text["choices"][0]["message"]["content"] == "echo: plain"


def test_json_object_mode_needs_the_word_and_follows_a_schema_in_the_system_message() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "rank": {"type": "integer", "minimum": 1}},
              "required": ["city", "rank"], "additionalProperties": False}
    system = ("Answer with JSON only, no other text, matching this JSON Schema:\n"
              + json.dumps(schema))
    with SimulatorThread() as sim:
        url = sim.base_url + "/chat/completions"
        r = post(url, chat("Paris", response_format={"type": "json_object"}))
        assert r.status == 400 and "json" in r.json()["error"]["message"]
        body = {"model": "m", "response_format": {"type": "json_object"},
                "messages": [{"role": "system", "content": system},
                             {"role": "user", "content": "Paris"}]}
        value = json.loads(post(url, body).json()["choices"][0]["message"]["content"])
        jsonschema.validate(value, schema)
        assert value == structured_answer(schema, "Paris")
        b = post(url, chat("give me json", response_format={"type": "json_object"})).json()
        assert json.loads(b["choices"][0]["message"]["content"]) == \
            {"answer": "echo: give me json"}
        assert sim.calls()[-1]["extras"] == {"format": "json_object"}


def test_invalid_json_and_schema_mismatch_faults_spoil_json_then_go_away() -> None:
    schema = {"type": "object", "properties": {"label": {"enum": ["a", "b"]},
                                               "n": {"type": "integer"}},
              "required": ["label", "n"], "additionalProperties": False}
    asked = chat("classify me", response_format=json_schema(schema, strict=True))
    with SimulatorThread(faults={"invalid_json": 1.0}) as sim:
        url = sim.base_url + "/chat/completions"
        bad = post(url, asked)
        assert bad.status == 200 and bad.headers["Content-Type"] == "application/json"
        content = bad.json()["choices"][0]["message"]["content"]
        with pytest.raises(json.JSONDecodeError):
            json.loads(content)
        assert bad.json()["usage"]["completion_tokens"] == count_tokens(content)
        good = post(url, asked).json()["choices"][0]["message"]["content"]  # a re-ask
        jsonschema.validate(json.loads(good), schema)
        assert good.startswith(content)  # the faulty answer was the real one, cut
        plain = post(url, chat("plain text rows are not spoiled"))
        assert plain.json()["choices"][0]["message"]["content"] == \
            "echo: plain text rows are not spoiled"
        assert [c["fault"] for c in sim.calls()] == ["invalid_json", None, None]
        assert sim.stats()["by_fault"] == {"invalid_json": 1}

        sim.configure(faults={"schema_mismatch": 1.0})
        asked2 = chat("classify me too", response_format=json_schema(schema, strict=True))
        value = json.loads(post(url, asked2).json()["choices"][0]["message"]["content"])
        with pytest.raises(jsonschema.ValidationError):  # JSON, but not of the schema
            jsonschema.validate(value, schema)
        jsonschema.validate(json.loads(
            post(url, asked2).json()["choices"][0]["message"]["content"]), schema)
        # with n, every choice is spoiled
        sim.configure(faults={"invalid_json": 1.0})
        many = post(url, chat("three of them", n=3, response_format=json_schema(schema)))
        for choice in many.json()["choices"]:
            with pytest.raises(json.JSONDecodeError):
                json.loads(choice["message"]["content"])


# ---------------------------------------------------------------------- n
def test_n_choices_differ_and_usage_counts_them_all() -> None:
    with SimulatorThread(tpm=60, burst=100) as sim:  # 100 tokens, refilled at 1 a second
        url = sim.base_url + "/chat/completions"
        # the TPM bucket is charged max_tokens for every choice: 7 + 3 x 30 = 97 ...
        assert post(url, chat("x", n=3, max_tokens=30)).status == 200
        r = post(url, chat("x", max_tokens=30))  # ... so 37 more do not fit (74 would)
        assert r.status == 429 and r.json()["error"]["type"] == "tokens"
    with SimulatorThread() as sim:
        url = sim.base_url + "/chat/completions"
        one = post(url, chat("hello there")).json()
        three = post(url, chat("hello there", n=3)).json()
        texts = [c["message"]["content"] for c in three["choices"]]
        assert [c["index"] for c in three["choices"]] == [0, 1, 2]
        assert texts[0] == one["choices"][0]["message"]["content"] == "echo: hello there"
        assert len(set(texts)) == 3
        assert three["usage"]["completion_tokens"] == sum(map(count_tokens, texts))
        assert three["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]
        assert post(url, chat("hello there", n=3)).json()["choices"] == three["choices"]
        cut = post(url, chat("abcdefgh ijkl", n=2, max_tokens=2)).json()
        assert all(c["finish_reason"] == "length" for c in cut["choices"])
        assert cut["usage"]["completion_tokens"] == 4
        for bad in (0, 129, True, "2"):
            assert post(url, chat("x", n=bad)).status == 400
        sim.configure(reply="length:5")
        words = post(url, chat("seed", n=4)).json()["choices"]
        assert len({c["message"]["content"] for c in words}) == 4
        comp = post(sim.base_url + "/completions", {"model": "m", "prompt": "p", "n": 2})
        assert [c["index"] for c in comp.json()["choices"]] == [0, 1]
        assert comp.json()["choices"][0]["text"] != comp.json()["choices"][1]["text"]
        logged = [c for c in sim.calls() if c["status"] == 200]
        assert logged[1]["extras"] == {"n": 3}


# ---------------------------------------------------------------------- tools
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "weather of a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"enum": ["C", "F"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get-time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}
NO_ARGS = {"type": "function", "function": {"name": "ping"}}


def test_tool_calls_follow_the_prompt_and_tool_choice() -> None:
    tools = [WEATHER, TIME, NO_ARGS]
    params = {t["function"]["name"]: t["function"].get("parameters", {}) for t in tools}
    with SimulatorThread() as sim:
        url = sim.base_url + "/chat/completions"
        b = post(url, chat("Please call get_weather for Lyon", tools=tools)).json()
        choice = b["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        (call,) = choice["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"]["name"] == "get_weather"
        args = json.loads(call["function"]["arguments"])
        jsonschema.validate(args, params["get_weather"])
        assert b["usage"]["completion_tokens"] == count_tokens("get_weather") + \
            count_tokens(call["function"]["arguments"])
        assert post(url, chat("Please call get_weather for Lyon", tools=tools)).json() \
            ["choices"][0]["message"]["tool_calls"] == [call]  # deterministic, ids too

        both = post(url, chat("first CALL get-time, then call get_weather", tools=tools)).json()
        calls = both["choices"][0]["message"]["tool_calls"]
        assert [c["function"]["name"] for c in calls] == ["get-time", "get_weather"]
        assert len({c["id"] for c in calls}) == 2
        for c in calls:
            jsonschema.validate(json.loads(c["function"]["arguments"]),
                                params[c["function"]["name"]])
        one = post(url, chat("call get-time and call ping", tools=tools,
                             parallel_tool_calls=False)).json()
        assert [c["function"]["name"] for c in one["choices"][0]["message"]["tool_calls"]] \
            == ["get-time"]
        ping = post(url, chat("call ping", tools=tools)).json()["choices"][0]["message"]
        assert ping["tool_calls"][0]["function"]["arguments"] == "{}"

        named = {"type": "function", "function": {"name": "get-time"}}
        forced = post(url, chat("what time is it", tools=tools, tool_choice=named)).json()
        assert forced["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == \
            "get-time"
        required = post(url, chat("no tool named", tools=tools, tool_choice="required")).json()
        assert required["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == \
            "get_weather"  # the first tool
        for text, extra in (("call get_weather", {"tool_choice": "none"}),
                            ("recall get_weathers", {}), ("what is the weather", {})):
            msg = post(url, chat(text, tools=tools, **extra)).json()["choices"][0]
            assert msg["message"]["content"] == f"echo: {text}"
            assert "tool_calls" not in msg["message"] and msg["finish_reason"] == "stop"
        # after the tool answered, the model answers in text
        history = {"model": "m", "tools": tools, "messages": [
            {"role": "user", "content": "call get_weather"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]}
        done = post(url, history).json()["choices"][0]
        assert done["finish_reason"] == "stop" and done["message"]["content"]
        two = post(url, chat("Please call get_weather for Lyon", tools=tools, n=2)).json() \
            ["choices"]
        assert [c["finish_reason"] for c in two] == ["tool_calls", "tool_calls"]
        assert two[0]["message"]["tool_calls"][0]["id"] == call["id"]
        assert two[1]["message"]["tool_calls"][0]["id"] != call["id"]
        for bad in ({"tools": []}, {"tools": [{"type": "function"}]},
                    {"tools": [{"type": "function", "function": {"name": "a b"}}]},
                    {"tool_choice": "auto"},
                    {"tools": tools, "tool_choice": {"type": "function",
                                                     "function": {"name": "nope"}}},
                    {"tools": tools, "tool_choice": "sometimes"}):
            assert post(url, chat("call ping", **bad)).status == 400, bad
        assert sim.calls()[0]["extras"] == {"tool_calls": ["get_weather"]}


def test_json_faults_spoil_tool_arguments() -> None:
    with SimulatorThread(faults={"invalid_json": 1.0}) as sim:
        url = sim.base_url + "/chat/completions"
        asked = chat("call get_weather in Oslo", tools=[WEATHER])
        call = post(url, asked).json()["choices"][0]["message"]["tool_calls"][0]
        with pytest.raises(json.JSONDecodeError):
            json.loads(call["function"]["arguments"])
        fine = post(url, asked).json()["choices"][0]["message"]["tool_calls"][0]
        jsonschema.validate(json.loads(fine["function"]["arguments"]),
                            WEATHER["function"]["parameters"])
        sim.configure(faults={"schema_mismatch": 1.0})
        asked = chat("call get_weather in Rome", tools=[WEATHER])
        args = json.loads(post(url, asked).json()["choices"][0]["message"]["tool_calls"][0]
                          ["function"]["arguments"])
        assert "city" not in args  # a required argument left out
        assert [c["fault"] for c in sim.calls()] == ["invalid_json", None, "schema_mismatch"]


# ---------------------------------------------------------------------- logprobs
def test_logprobs_in_openai_shape() -> None:
    with SimulatorThread() as sim:
        url = sim.base_url + "/chat/completions"
        b = post(url, chat("Hello, wonderful world", logprobs=True, top_logprobs=3)).json()
        choice = b["choices"][0]
        content = choice["message"]["content"]
        entries = choice["logprobs"]["content"]
        assert "".join(e["token"] for e in entries) == content
        assert [e["token"] for e in entries] == split_tokens(content)
        assert len(entries) == b["usage"]["completion_tokens"]
        for e in entries:
            assert e["logprob"] <= 0 and e["bytes"] == list(e["token"].encode())
            tops = e["top_logprobs"]
            assert len(tops) == 3 and tops[0]["token"] == e["token"]
            assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops),
                                                          reverse=True)
            assert len({t["token"] for t in tops}) == 3
            assert all(t["bytes"] == list(t["token"].encode()) for t in tops)
        assert post(url, chat("Hello, wonderful world", logprobs=True, top_logprobs=3)).json() \
            ["choices"][0]["logprobs"] == choice["logprobs"]
        bare = post(url, chat("Hello", logprobs=True)).json()["choices"][0]["logprobs"]
        assert bare["content"][0]["top_logprobs"] == []
        assert post(url, chat("Hello")).json()["choices"][0]["logprobs"] is None
        assert post(url, chat("Hello", logprobs=False)).json()["choices"][0]["logprobs"] is None
        assert post(url, chat("x", top_logprobs=2)).status == 400  # needs logprobs=true
        assert post(url, chat("x", logprobs=True, top_logprobs=21)).status == 400
        assert post(url, chat("x", logprobs="yes")).status == 400
        comp = post(sim.base_url + "/completions",
                    {"model": "m", "prompt": "Hello there", "logprobs": 2}).json()
        lp = comp["choices"][0]["logprobs"]
        assert "".join(lp["tokens"]) == comp["choices"][0]["text"]
        assert len(lp["token_logprobs"]) == len(lp["tokens"]) == len(lp["text_offset"])
        assert all(len(t) == 2 for t in lp["top_logprobs"])
        assert lp["text_offset"][1] == len(lp["tokens"][0])
        assert post(sim.base_url + "/completions",
                    {"model": "m", "prompt": "x", "logprobs": True}).status == 400
        assert sim.calls()[0]["extras"] == {"logprobs": 3}


# ---------------------------------------------------------------------- streaming
def test_streamed_chat_assembles_to_the_unstreamed_answer() -> None:
    with SimulatorThread() as sim:
        url = sim.base_url + "/chat/completions"
        whole = post(url, chat("Hello, streaming world", n=2)).json()
        r = post(url, chat("Hello, streaming world", n=2, stream=True,
                           stream_options={"include_usage": True}))
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        chunks = events(r.body)
        assert chunks[-1] == "[DONE]"
        usage_chunk = chunks[-2]
        assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]
        assert all(c["usage"] is None for c in chunks[:-2])
        assert {c["object"] for c in chunks[:-1]} == {"chat.completion.chunk"}
        assert len({c["id"] for c in chunks[:-1]}) == 1
        got = assemble_chat(chunks)
        for i, choice in enumerate(whole["choices"]):
            assert got[i]["role"] == "assistant"
            assert got[i]["content"] == choice["message"]["content"]
            assert got[i]["finish"] == "stop"
        # one token per chunk, the choices interleaved
        contents = [(c["choices"][0]["index"], c["choices"][0]["delta"].get("content"))
                    for c in chunks[2:6]]
        assert [i for i, _ in contents] == [0, 1, 0, 1]
        assert [t for i, t in contents if i == 0] == split_tokens("echo: Hello, streaming "
                                                                  "world")[:2]
        # no usage chunk unless asked; the finish reason of a cut answer
        plain = events(post(url, chat("abcdefgh ijkl", stream=True, max_tokens=3)).body)
        assert all("usage" not in c for c in plain[:-1])
        got = assemble_chat(plain)[0]
        assert got["content"] == "echo: abcd" and got["finish"] == "length"
        # tool calls and logprobs stream too
        tools = [WEATHER]
        call = post(url, chat("call get_weather", tools=tools)).json()["choices"][0]
        streamed = assemble_chat(events(post(url, chat("call get_weather", tools=tools,
                                                       stream=True)).body))[0]
        wanted = call["message"]["tool_calls"][0]
        assert streamed["calls"] == {0: {"id": wanted["id"],
                                         "name": wanted["function"]["name"],
                                         "arguments": wanted["function"]["arguments"]}}
        assert streamed["content"] is None and streamed["finish"] == "tool_calls"
        lp = post(url, chat("logprobs too", logprobs=True, top_logprobs=2)).json()
        streamed = assemble_chat(events(post(url, chat("logprobs too", logprobs=True,
                                                       top_logprobs=2, stream=True)).body))[0]
        assert streamed["logprobs"] == lp["choices"][0]["logprobs"]["content"]
        # a streamed json_schema answer is the same JSON
        schema = Review.model_json_schema()
        structured = post(url, chat("r", response_format=json_schema(schema))).json()
        streamed = assemble_chat(events(post(url, chat(
            "r", response_format=json_schema(schema), stream=True)).body))[0]
        assert streamed["content"] == structured["choices"][0]["message"]["content"]
        assert sim.calls()[1]["extras"] == {"n": 2, "stream": True}


def test_streamed_completion() -> None:
    with SimulatorThread() as sim:
        url = sim.base_url + "/completions"
        whole = post(url, {"model": "m", "prompt": "tell me"}).json()
        chunks = events(post(url, {"model": "m", "prompt": "tell me", "stream": True,
                                   "stream_options": {"include_usage": True}}).body)
        assert chunks[-1] == "[DONE]" and chunks[-2]["usage"] == whole["usage"]
        text = "".join(c["choices"][0]["text"] for c in chunks[:-2])
        assert text == whole["choices"][0]["text"] == "echo: tell me"
        assert chunks[-3]["choices"][0]["finish_reason"] == "stop"
        assert {c["object"] for c in chunks[:-1]} == {"text_completion"}


def test_stream_first_token_after_the_latency_then_spaced_tokens() -> None:
    latency, spacing = 0.3, 0.4
    with SimulatorThread(latency=latency, per_token_latency=spacing) as sim:
        url = sim.base_url + "/chat/completions"
        answer = "echo: one two six"  # 5 tokens
        t0, lines = asyncio.run(stream_arrivals(url, chat("one two six", stream=True)))
        chunks = [json.loads(line[len(b"data: "):]) for _, line in lines[:-1]]
        assert lines[-1][1] == b"data: [DONE]"
        token_times = [t for (t, _), c in zip(lines, chunks, strict=False)
                       if c["choices"][0]["delta"].get("content")]
        assert len(token_times) == len(split_tokens(answer)) == 5
        # each token leaves no earlier than the latency plus its place in the stream ...
        for k, arrived in enumerate(token_times):
            assert arrived - t0 >= latency + k * spacing - 0.02
        # ... and the first does not wait for the whole answer (4 x 0.4 s = 1.6 s later)
        assert token_times[0] < token_times[-1] - 3 * spacing
        # unstreamed, the same settings are one wait for the whole answer
        t = time.monotonic()
        post(url, chat("one two six"))
        assert time.monotonic() - t >= latency + 5 * spacing - 0.02


def test_stream_faults_cut_end_early_break_a_chunk_or_stall() -> None:
    asked = chat("a stream long enough to cut in the middle", stream=True)
    with SimulatorThread(faults={"stream_cut": 1.0}, hang_seconds=60) as sim:
        url = sim.base_url + "/chat/completions"
        # cut: the connection closes mid-body (no terminating chunk) and no [DONE]
        raw = raw_post(sim.base_url, "/chat/completions", asked)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()
        assert b"data: {" in body and b"[DONE]" not in body and not body.endswith(b"0\r\n\r\n")
        cut_short = chat("cut for a real client", stream=True)
        got, err = asyncio.run(read_stream(url, cut_short))
        assert isinstance(err, aiohttp.ClientPayloadError) and b"data: {" in got
        part = assemble_chat(complete_events(got))[0]
        full, err = asyncio.run(read_stream(url, cut_short))
        assert err is None and full.endswith(b"data: [DONE]\n\n")  # the retry is whole
        whole = assemble_chat(events(full))[0]
        assert part["finish"] is None and whole["finish"] == "stop"
        assert whole["content"] == "echo: cut for a real client"
        assert whole["content"].startswith(part["content"]) and part["content"] != \
            whole["content"]

        # eof: a clean end of the body, but no finish_reason and no [DONE]
        sim.configure(faults={"stream_eof": 1.0})
        got, err = asyncio.run(read_stream(url, chat("ends early", stream=True)))
        chunks = events(got)
        assert err is None and chunks and "[DONE]" not in chunks
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks)

        # malformed: one event is not JSON, the rest of the stream is fine
        sim.configure(faults={"malformed_chunk": 1.0})
        got, err = asyncio.run(read_stream(url, chat("one bad chunk", stream=True)))
        blocks = [b for b in got.decode().split("\n\n") if b]
        broken = []
        for block in blocks[:-1]:
            try:
                json.loads(block[len("data: "):])
            except json.JSONDecodeError:
                broken.append(block)
        assert err is None and len(broken) == 1 and blocks[-1] == "data: [DONE]"
        good = [json.loads(b[len("data: "):]) for b in blocks[:-1] if b not in broken]
        assert assemble_chat(good)[0]["content"] == "echo: one bad chunk"

        # stall: the stream goes quiet midway; an idle deadline trips, the server lets go
        sim.configure(faults={"stream_stall": 1.0})
        got, err = asyncio.run(read_stream(url, chat("goes quiet", stream=True),
                                            sock_read=0.5))
        assert isinstance(err, asyncio.TimeoutError) and b"data: {" in got
        assert b"[DONE]" not in got
        deadline = time.monotonic() + 30
        while sim.stats()["in_flight"] != 0:
            assert time.monotonic() < deadline, "the stalled handler outlived its client"
            time.sleep(0.01)

        # a request that is not streamed is answered whole (the fault does not apply)
        plain = post(url, chat("not streamed"))
        assert plain.json()["choices"][0]["message"]["content"] == "echo: not streamed"
        faults = [c["fault"] for c in sim.calls()]
        assert faults == ["stream_cut", "stream_cut", None, "stream_eof", "malformed_chunk",
                          "stream_stall", None]


def test_body_faults_on_a_streamed_request() -> None:
    with SimulatorThread(faults={"trickle": 1.0}, trickle_interval=0.0) as sim:
        url = sim.base_url + "/chat/completions"
        r = post(url, chat("slowly", stream=True))
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert assemble_chat(events(r.body))[0]["content"] == "echo: slowly"
        sim.configure(faults={"truncated": 1.0})
        raw = raw_post(sim.base_url, "/chat/completions", chat("half", stream=True))
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"text/event-stream" in head and b"[DONE]" not in body
        sim.configure(faults={"non_json": 1.0})  # a gateway answering a stream with HTML
        r = post(url, chat("html", stream=True))
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")


def test_stream_request_validation() -> None:
    with SimulatorThread() as sim:
        url = sim.base_url + "/chat/completions"
        for extra in ({"stream": "yes"}, {"stream_options": {"include_usage": True}},
                      {"stream": False, "stream_options": {"include_usage": True}},
                      {"stream": True, "stream_options": [1]},
                      {"stream": True, "stream_options": {"include_usage": "y"}}):
            r = post(url, chat("x", **extra))
            assert r.status == 400 and r.json()["error"]["type"] == "invalid_request_error"
        off = post(url, chat("x", stream=False))
        assert off.headers["Content-Type"] == "application/json"
        assert off.json()["choices"][0]["message"]["content"] == "echo: x"
        assert post(sim.base_url + "/completions",
                    {"model": "m", "prompt": "x", "tools": [NO_ARGS]}).status == 400


def test_streams_from_a_process_with_a_key_and_cli_faults() -> None:
    args = ["--fault", "stream_cut=1", "--per-token-latency", "0.001"]
    with SimulatorProcess(api_key=SENTINEL, extra_args=args) as sim:
        url = sim.base_url + "/chat/completions"
        good = {"Authorization": f"Bearer {SENTINEL}"}
        refused = post(url, chat("k", stream=True))
        assert refused.status == 401 and refused.headers["Content-Type"] == "application/json"
        asked = chat("answer me, streamed from a process", stream=True)
        cut, err = asyncio.run(read_stream(url, asked, good))
        assert isinstance(err, aiohttp.ClientPayloadError) and b"[DONE]" not in cut
        body, err = asyncio.run(read_stream(url, asked, good))
        assert err is None and events(body)[-1] == "[DONE]"
        assert assemble_chat(events(body))[0]["content"] == \
            "echo: answer me, streamed from a process"
        assert sim.live_config()["faults"] == {"stream_cut": 1.0}
        assert [c["fault"] for c in sim.calls()] == [None, "stream_cut", None]
        blob = json.dumps(sim.calls()) + json.dumps(sim.stats()) + (cut + body).decode()
        blob += json.dumps(sim.live_config()) + refused.body.decode()
        assert SENTINEL not in blob
        assert sim.stop() == 0
        assert SENTINEL not in sim.stdout_text() and sim.last_stderr == ""  # nothing logged


def test_batch_lines_answer_response_format_and_tools() -> None:
    schema = {"type": "object", "properties": {"label": {"enum": ["x", "y"]}},
              "required": ["label"], "additionalProperties": False}
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": chat(f"row {i}", response_format=json_schema(schema, strict=True))}
             for i in range(3)]
    lines.append({"custom_id": "tool", "method": "POST", "url": "/v1/chat/completions",
                  "body": chat("call get_weather", tools=[WEATHER])})
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()

    async def run(base: str) -> list[dict]:
        async with aiohttp.ClientSession() as s:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", data, filename="in.jsonl")
            async with s.post(base + "/files", data=form) as r:
                file_id = (await r.json())["id"]
            async with s.post(base + "/batches", json={
                    "input_file_id": file_id, "endpoint": "/v1/chat/completions",
                    "completion_window": "24h"}) as r:
                batch = await r.json()
            while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                await asyncio.sleep(0.02)
                async with s.get(f"{base}/batches/{batch['id']}") as r:
                    batch = await r.json()
            async with s.get(f"{base}/files/{batch['output_file_id']}/content") as r:
                return [json.loads(x) for x in (await r.read()).splitlines()]

    with SimulatorThread(batch_seconds=0.1) as sim:
        out = {x["custom_id"]: x["response"]["body"] for x in asyncio.run(run(sim.base_url))}
    for i in range(3):
        content = out[f"c{i}"]["choices"][0]["message"]["content"]
        assert json.loads(content) == structured_answer(schema, f"row {i}")
    call = out["tool"]["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
