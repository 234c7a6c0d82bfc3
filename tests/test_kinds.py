"""Each kind end to end through the httpx wire: chat, completion, embeddings, images."""

from __future__ import annotations

import base64
import struct
import zlib

import httpx
import numpy as np
import pytest
from conftest import Server, chat_answer, run, user_text

import batchmagic as bm
from batchmagic._kinds import (
    ShapeError,
    ToolArgumentsError,
    parse_chat,
    parse_choices,
    parse_completion,
    parse_embeddings,
)

# -- chat -----------------------------------------------------------------------------------------------


def test_chat_content_finish_reason_and_usage():
    s = Server(lambda req, body: httpx.Response(200, json=chat_answer(
        "hello", finish_reason="length", prompt_tokens=11, completion_tokens=4)))
    df = run(["x"], server=s)
    assert df["output"][0] == "hello"
    assert df["finish_reason"][0] == "length"
    assert df["input_tokens"][0] == 11
    assert df["output_tokens"][0] == 4
    assert df["attempts"][0] == 1
    assert df["latency"][0] >= 0
    assert "reasoning" not in df.columns
    assert s.requests[0].url.path == "/v1/chat/completions"
    assert s.requests[0].method == "POST"
    attrs = df.attrs["batchmagic"]
    assert attrs["input_tokens"] == 11 and attrs["output_tokens"] == 4
    assert attrs["ok"] == 1 and attrs["failed"] == 0 and attrs["state"] == "done"


def test_chat_list_content_parts_are_joined():
    parts = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}, "junk",
             {"type": "image", "url": "x"}]
    s = Server(lambda req, body: httpx.Response(200, json=chat_answer(parts)))
    df = run(["x"], server=s)
    assert df["output"][0] == "Hello"


def test_chat_reasoning_content_goes_to_reasoning_column():
    def answer(req, body):
        text = user_text(body)
        if text == "think":
            return httpx.Response(200, json=chat_answer("42", reasoning_content="because"))
        return httpx.Response(200, json=chat_answer("plain"))

    df = run(["think", "no"], server=Server(answer))
    assert list(df["output"]) == ["42", "plain"]
    assert list(df["reasoning"]) == ["because", None]


def test_chat_reasoning_field_alias():
    s = Server(lambda req, body: httpx.Response(200, json=chat_answer("a", reasoning="r")))
    assert run(["x"], server=s)["reasoning"][0] == "r"


def test_chat_refusal_and_tool_calls_without_content():
    def answer(req, body):
        if user_text(body) == "refuse":
            return httpx.Response(200, json=chat_answer(None, refusal="I can't"))
        call = {"id": "1", "type": "function",
                "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
        return httpx.Response(200, json=chat_answer(None, tool_calls=[call],
                                                    finish_reason="tool_calls"))

    df = run(["refuse", "tool"], server=Server(answer))
    assert df["output"][0] == "I can't"
    assert df["output"][1] == ""
    assert df["finish_reason"][1] == "tool_calls"


# -- tool calls, logprobs, several choices --------------------------------------------------------------


def _call(name: str, arguments, call_id: str = "call_1") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_parse_chat_keeps_tool_calls_with_parsed_arguments():
    payload = chat_answer(None, finish_reason="tool_calls", tool_calls=[
        _call("get_weather", '{"city": "Paris", "days": [1, 2]}'),
        _call("get_time", "", "call_2"),  # a function without parameters
        _call("lookup", {"q": "already parsed"}, "call_3"),  # some servers send an object
    ])
    parsed = parse_chat(payload)
    assert parsed.output == ""  # the content stays the output: none here
    assert parsed.finish_reason == "tool_calls"
    assert parsed.tool_calls == [
        {"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}},
        {"id": "call_2", "name": "get_time", "arguments": {}},
        {"id": "call_3", "name": "lookup", "arguments": {"q": "already parsed"}},
    ]


def test_parse_chat_keeps_content_next_to_tool_calls_and_reads_the_older_function_call():
    both = parse_chat(chat_answer("Let me look.", tool_calls=[_call("f", '{"a": 1}')]))
    assert both.output == "Let me look."
    assert both.tool_calls == [{"id": "call_1", "name": "f", "arguments": {"a": 1}}]
    legacy = parse_chat(chat_answer(None, function_call={"name": "g", "arguments": '{"b": 2}'}))
    assert legacy.tool_calls == [{"id": None, "name": "g", "arguments": {"b": 2}}]
    assert parse_chat(chat_answer("plain")).tool_calls is None


@pytest.mark.parametrize("tool_calls", [
    [{"id": "1"}],  # no function
    [{"id": "1", "function": {"arguments": "{}"}}],  # no name
    ["not an object"],
    {"not": "a list"},
])
def test_tool_calls_of_the_wrong_shape_are_a_shape_error(tool_calls):
    with pytest.raises(ShapeError):
        parse_chat(chat_answer(None, tool_calls=tool_calls))


def test_tool_arguments_that_are_not_json_are_a_tool_arguments_error():
    with pytest.raises(ToolArgumentsError, match="'get_weather'"):
        parse_chat(chat_answer(None, tool_calls=[_call("get_weather", '{"city": "Par')]))


def test_tool_arguments_that_are_not_json_are_retried_once_then_a_response_error():
    bad = chat_answer(None, finish_reason="tool_calls",
                      tool_calls=[_call("get_weather", '{"city": "Par')])
    s = Server(lambda req, body: httpx.Response(
        200, json=bad if user_text(body) == "bad" else chat_answer("fine")))
    df = run(["bad", "good"], server=s, retries=3)
    err = df["error"][0]
    assert isinstance(err, bm.ResponseError)
    assert "get_weather" in str(err) and "not valid JSON" in str(err)
    assert err.possibly_billed  # the model wrote them: paid for, and worth one more try
    assert err.attempts == 2  # retried once (a possibly billed failure), not `retries` times
    assert df["output"][1] == "fine" and df["error"][1] is None


def test_logprobs_are_kept_as_given():
    logprobs = {"content": [{"token": "hi", "logprob": -0.01, "bytes": [104, 105],
                             "top_logprobs": [{"token": "hi", "logprob": -0.01, "bytes": None}]}],
                "refusal": None}
    payload = chat_answer("hi")
    payload["choices"][0]["logprobs"] = logprobs
    assert parse_chat(payload).logprobs == logprobs
    assert parse_chat(chat_answer("hi")).logprobs is None
    completion = {"choices": [{"index": 0, "text": "x", "finish_reason": "stop",
                               "logprobs": {"tokens": ["x"], "token_logprobs": [-1.0]}}]}
    assert parse_completion(completion).logprobs == {"tokens": ["x"], "token_logprobs": [-1.0]}


def _choices_answer(*contents: str, order=None) -> dict:
    choices = [{"index": i, "message": {"role": "assistant", "content": c},
                "finish_reason": "stop"} for i, c in enumerate(contents)]
    if order:
        choices = [choices[i] for i in order]
    return {"choices": choices, "usage": {"prompt_tokens": 10, "completion_tokens": 7}}


def test_parse_choices_gives_one_answer_per_choice_in_index_order():
    parsed = parse_choices(_choices_answer("a", "b", "c", order=[2, 0, 1]))
    assert [p.output for p in parsed] == ["a", "b", "c"]
    # usage is the request's: shared out so the sums stay exact
    assert sum(p.input_tokens for p in parsed) == 10
    assert sum(p.output_tokens for p in parsed) == 7
    # parse_chat keeps giving the first choice (by index) with the whole usage
    first = parse_chat(_choices_answer("a", "b", order=[1, 0]))
    assert (first.output, first.input_tokens, first.output_tokens) == ("a", 10, 7)


def test_parse_choices_reads_completions_and_rejects_repeated_indexes():
    payload = {"choices": [{"index": 1, "text": "y"}, {"index": 0, "text": "x"}]}
    assert [p.output for p in parse_choices(payload, "completion")] == ["x", "y"]
    repeated = _choices_answer("a", "b")
    repeated["choices"][1]["index"] = 0
    with pytest.raises(ShapeError, match="repeated"):
        parse_choices(repeated)


# -- completion -----------------------------------------------------------------------------------------


def test_completion():
    def answer(req, body):
        assert req.url.path == "/v1/completions"
        assert "messages" not in body
        return httpx.Response(200, json={"choices": [{"text": body["prompt"][::-1],
                                                      "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 2, "completion_tokens": 1}})

    s = Server(answer)
    df = run(["abc", "xy"], "<{}>", server=s, kind="completion", params={"max_tokens": 3})
    assert list(df["output"]) == [">cba<", ">yx<"]
    assert list(df["finish_reason"]) == ["stop", "stop"]
    assert all(b["max_tokens"] == 3 for b in s.bodies)


def test_system_is_chat_only():
    with pytest.raises(bm.ConfigError):
        run(["a"], server=Server(), kind="completion", system="s")


def test_unknown_kind_is_a_config_error():
    with pytest.raises(bm.ConfigError):
        run(["a"], server=Server(), kind="audio")


# -- embeddings ---------------------------------------------------------------------------------------


def _vec_for(text: str) -> list[float]:
    return [float(len(text)), float(sum(map(ord, text)) % 1000), 0.5]


class EmbeddingServer(Server):
    """Answers /embeddings; records the size of each request; may answer in reverse order."""

    def __init__(self, *, reverse: bool = False, same: bool = False):
        super().__init__(self._answer)
        self.reverse = reverse
        self.same = same
        self.sizes: list[int] = []
        self.formats: list[str | None] = []

    def _answer(self, req, body):
        assert req.url.path.endswith("/embeddings")
        inputs = body["input"]
        self.sizes.append(len(inputs))
        fmt = body.get("encoding_format")
        self.formats.append(fmt)
        data = []
        for i, text in enumerate(inputs):
            vec = [0.25, -1.0, 3.0] if self.same else _vec_for(text)
            if fmt == "base64":
                emb = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
            else:
                emb = vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        if self.reverse:
            data.reverse()
        return httpx.Response(200, json={"object": "list", "data": data,
                                         "usage": {"prompt_tokens": 2 * len(inputs)}})


def _check_vectors(df, texts):
    for text, vec in zip(texts, df["output"]):
        assert isinstance(vec, np.ndarray)
        assert vec.dtype == np.float32
        assert vec.ndim == 1
        np.testing.assert_array_equal(vec, np.asarray(_vec_for(text), dtype=np.float32))


def test_embeddings_are_packed_within_the_preset_cap():
    texts = [f"t{i}" for i in range(5000)]
    s = EmbeddingServer()
    df = run(texts, server=s, kind="embedding", provider="simulator")
    assert sum(s.sizes) == 5000
    assert max(s.sizes) <= 2048  # the simulator preset's embedding_max_inputs
    assert len(s.sizes) == 3
    assert df["error"].isna().all()
    _check_vectors(df, texts)
    attrs = df.attrs["batchmagic"]
    assert attrs["http_requests"] == 3 and attrs["requests"] == 5000
    assert df["input_tokens"].sum() == 2 * 5000  # the packed usage is shared over the items


def test_embeddings_mapped_back_by_index_when_answered_in_reverse():
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    s = EmbeddingServer(reverse=True)
    df = run(texts, server=s, kind="embedding", provider="simulator")
    _check_vectors(df, texts)


@pytest.mark.parametrize("provider", ["simulator", "openai"])
def test_embeddings_request_base64_and_decode_float32(provider):
    texts = ["x", "yy"]
    s = EmbeddingServer()
    df = run(texts, server=s, kind="embedding", provider=provider, api_key="k")
    assert s.formats == ["base64"]
    _check_vectors(df, texts)


@pytest.mark.parametrize("encoded", [True, False])
def test_packed_vectors_are_rows_of_one_block(encoded):
    """A packed answer's vectors are rows of one float32 array (no allocation of their own per
    vector: a million rows keep ~46 MB less); values, order and errors as one by one."""
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4) / 7

    def entry(i):
        v = vectors[i]
        return base64.b64encode(v.astype("<f4").tobytes()).decode() if encoded else v.tolist()

    payload = {"data": [{"index": i, "embedding": entry(i)} for i in (2, 0, 1)],
               "usage": {"prompt_tokens": 9}}
    got, tokens = parse_embeddings(payload, 3)
    assert tokens == 9
    assert all(g.dtype == np.float32 and g.base is not None for g in got)
    assert all(g.base is got[0].base for g in got[1:])  # rows of one array
    np.testing.assert_array_equal(np.stack(got), vectors)
    # one vector of another length, or one that is not numbers: each read alone, as before
    ragged = {"data": [{"embedding": [1.0, 2.0]}, {"embedding": [3.0]}]}
    assert [len(v) for v in parse_embeddings(ragged, 2)[0]] == [2, 1]
    with pytest.raises(ShapeError, match="missing or empty"):
        parse_embeddings({"data": [{"embedding": ["1.0"]}, {"embedding": [2.0]}]}, 2)
    with pytest.raises(ShapeError, match="missing or empty"):
        parse_embeddings({"data": [{"embedding": []}, {"embedding": []}]}, 2)


def test_embeddings_plain_json_floats_for_other_servers():
    texts = ["x", "yy", "zzz"]
    s = EmbeddingServer(reverse=True)
    df = run(texts, server=s, kind="embedding")
    assert s.formats == [None]
    _check_vectors(df, texts)


def test_embeddings_user_encoding_format_is_kept():
    s = EmbeddingServer()
    df = run(["x"], server=s, kind="embedding", provider="simulator",
             params={"encoding_format": "float"})
    assert s.formats == ["float"]
    _check_vectors(df, ["x"])


def test_identical_vectors_do_not_collapse_into_a_2d_array():
    s = EmbeddingServer(same=True)
    df = run(["a", "b", "c"], server=s, kind="embedding", provider="simulator")
    assert df["output"].dtype == object
    assert len(df["output"]) == 3
    for vec in df["output"]:
        assert isinstance(vec, np.ndarray) and vec.shape == (3,) and vec.dtype == np.float32
        np.testing.assert_array_equal(vec, np.asarray([0.25, -1.0, 3.0], dtype=np.float32))


def test_embeddings_with_different_params_are_not_packed_together():
    s = EmbeddingServer()
    bodies = [{"input": "a", "dimensions": 3}, {"input": "b", "dimensions": 3},
              {"input": "c", "dimensions": 4}]
    df = run(bodies, server=s, kind="embedding", provider="simulator")
    assert sorted(s.sizes) == [1, 2]
    _check_vectors(df, ["a", "b", "c"])


def test_embeddings_wrong_count_is_a_response_error():
    s = Server(lambda req, body: httpx.Response(
        200, json={"data": [{"index": 0, "embedding": [1.0]}]}))
    df = run(["a", "b"], server=s, kind="embedding", retries=0)
    for err in df["error"]:
        assert isinstance(err, bm.ResponseError)
        assert err.possibly_billed


# -- images ---------------------------------------------------------------------------------------------


def _png(width: int = 3, height: int = 2) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + b"\x00\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def test_image_b64_json(tmp_path):
    png = _png()

    def answer(req, body):
        assert req.url.path == "/v1/images/generations"
        assert body["response_format"] == "b64_json" and body["n"] == 1
        return httpx.Response(200, json={"data": [{"b64_json": base64.b64encode(png).decode(),
                                                   "revised_prompt": "a red cat"}]})

    s = Server(answer)
    df = run(["a cat"], server=s, kind="image", params={"size": "256x256"})
    img = df["output"][0]
    assert isinstance(img, bm.GeneratedImage)
    assert img.data == png
    assert img.mime == "image/png"
    assert img.size == (3, 2)
    assert img.prompt == "a red cat"
    assert img._repr_png_() == png
    assert img._repr_jpeg_() is None
    assert "image/png" in repr(img)
    assert img.data_url().startswith("data:image/png;base64,")
    out = img.save(tmp_path / "cat.png")
    assert (tmp_path / "cat.png").read_bytes() == png
    assert out == str(tmp_path / "cat.png")
    assert s.bodies[0]["size"] == "256x256"
    assert df["finish_reason"][0] == "stop"


def test_image_url_answer_is_fetched_through_the_same_transport():
    png = _png(5, 7)

    def answer(req, body):
        if req.method == "GET":
            assert str(req.url) == "http://test/files/img.png"
            return httpx.Response(200, content=png, headers={"content-type": "image/png"})
        return httpx.Response(200, json={"data": [{"url": "http://test/files/img.png"}]})

    s = Server(answer)
    df = run(["a cat"], server=s, kind="image", params={"response_format": "url"})
    img = df["output"][0]
    assert isinstance(img, bm.GeneratedImage)
    assert img.data == png and img.size == (5, 7) and img.url == "http://test/files/img.png"
    assert [r.method for r in s.requests] == ["POST", "GET"]
    assert s.bodies[0]["response_format"] == "url"  # the user's choice is kept
    assert "GET" == s.requests[1].method and "authorization" not in s.requests[1].headers


def test_image_url_download_failure_is_a_response_error():
    def answer(req, body):
        if req.method == "GET":
            return httpx.Response(404)
        return httpx.Response(200, json={"data": [{"url": "http://test/files/gone.png"}]})

    df = run(["a cat"], server=Server(answer), kind="image", retries=0)
    err = df["error"][0]
    assert isinstance(err, bm.ResponseError)
    assert err.possibly_billed


# -- wrong-shape answers --------------------------------------------------------------------------------

WRONG_SHAPES = [
    {"choices": []},
    {"choices": [{"message": {}}]},
    {"choices": [{"nomessage": 1}]},
    {"something": "else"},
    [1, 2, 3],
    "a string",
]


@pytest.mark.parametrize("payload", WRONG_SHAPES)
def test_wrong_shape_200_is_retried_then_response_error(payload):
    s = Server(lambda req, body: httpx.Response(200, json=payload))
    df = run(["x"], server=s, retries=3)
    err = df["error"][0]
    assert isinstance(err, bm.ResponseError)
    assert err.possibly_billed is True
    assert err.status == 200
    # a possibly billed failure is retried once (RetryPolicy.billed_retries), not `retries` times
    assert s.count == 2
    assert err.attempts == 2
    assert df["output"][0] is None
    assert df.attrs["batchmagic"]["possibly_billed"] == 2


@pytest.mark.parametrize("body,what", [
    (b"<html>502 Bad Gateway</html>", "HTML"),
    (b"not json at all", "not JSON"),
    (b"\xff\xfe\x00garbage", "UTF-8"),
])
def test_unreadable_200_body_is_a_response_error(body, what):
    s = Server(lambda req, b: httpx.Response(200, content=body))
    df = run(["x"], server=s, retries=0)
    err = df["error"][0]
    assert isinstance(err, bm.ResponseError)
    assert what in str(err)
    assert err.possibly_billed
    assert s.count == 1


@pytest.mark.parametrize("kind,payload", [
    ("completion", {"choices": [{"text": None}]}),
    ("embedding", {"data": [{"index": 0, "embedding": "!!!not base64"}]}),
    ("embedding", {"data": [{"index": 5, "embedding": [1.0]}]}),
    ("embedding", {"data": [{"index": 0, "embedding": []}]}),
    ("image", {"data": [{"neither": 1}]}),
    ("image", {"data": []}),
])
def test_wrong_shapes_per_kind(kind, payload):
    s = Server(lambda req, body: httpx.Response(200, json=payload))
    df = run(["x"], server=s, kind=kind, retries=0)
    assert isinstance(df["error"][0], bm.ResponseError)
    assert s.count == 1
