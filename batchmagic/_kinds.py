"""Per kind: the endpoint path, the request body for one row, and how to read the answer.

One row becomes one *item* body. The dispatcher sends *units*: for chat, completion and image a unit
is one item; for embeddings many items are packed into one request (``input: [...]``) and the
answer is mapped back by each vector's ``index``, never by position.

``parse`` raises ``ShapeError`` when a 2xx answer does not have the shape the kind expects; the
backend turns that into a retryable, possibly billed ``ResponseError``. Tool calls come back with
their arguments parsed from JSON; arguments that are not JSON are a ``ToolArgumentsError`` (a
``ShapeError``: the model wrote them, so one more attempt may well fix them).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

KINDS = ("chat", "completion", "embedding", "image")


class ShapeError(Exception):
    """A successful HTTP answer whose JSON is not what the kind expects."""


class ToolArgumentsError(ShapeError):
    """A tool call whose arguments are not JSON."""


@dataclass(slots=True)
class Parsed:
    output: Any
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    image_url: str | None = None  # image answers given as a URL: fetched by the dispatcher
    reasoning: str | None = None
    metrics: dict | None = None  # offline engines' per-request timings (queue_s, ttft_s), if any
    tool_calls: list | None = None  # [{"id", "name", "arguments"}], arguments parsed from JSON
    logprobs: Any = None  # the choice's logprobs, as the provider gave them
    ttft: float | None = None  # seconds to the first token of a streamed answer


def path_for(kind: str) -> str:
    return {
        "chat": "/chat/completions",
        "completion": "/completions",
        "embedding": "/embeddings",
        "image": "/images/generations",
    }[kind]


# -- building ------------------------------------------------------------------------------------


def chat_messages(prompt: str | list, system: str | None, images: list[str] | None = None) -> list:
    if isinstance(prompt, list):  # already a message list
        messages = list(prompt)
        if system and not (messages and messages[0].get("role") in ("system", "developer")):
            messages.insert(0, {"role": "system", "content": system})
        return messages
    messages = [{"role": "system", "content": system}] if system else []
    if images:
        content: Any = [{"type": "text", "text": prompt}]
        content += [{"type": "image_url", "image_url": {"url": url}} for url in images]
    else:
        content = prompt
    messages.append({"role": "user", "content": content})
    return messages


def build_body(kind: str, prompt: Any, model: str | None, params: dict, system: str | None,
               images: list[str] | None = None) -> dict:
    """The request body of one row. ``prompt`` is text, or a message list for chat."""
    body: dict[str, Any] = {}
    if model:
        body["model"] = model
    if kind == "chat":
        body["messages"] = chat_messages(prompt, system, images)
    elif kind == "completion":
        body["prompt"] = prompt
    elif kind == "embedding":
        body["input"] = prompt
    elif kind == "image":
        body["prompt"] = prompt
        body["n"] = 1
    for k, v in params.items():
        body.setdefault(k, v)
    if kind == "image":
        body.setdefault("response_format", "b64_json")
    return body


def encode_body(body: dict) -> bytes:
    """The bytes a request sends, sized exactly: ``orjson.dumps`` hands back its whole working
    buffer (about 4 KB even for a 60-byte body), which a million queued requests would keep."""
    return bytes(memoryview(orjson.dumps(body)))


def pack_embeddings(bodies: list[dict], base64_ok: bool) -> dict:
    """One request body for many embedding items that share model and parameters."""
    packed = {k: v for k, v in bodies[0].items() if k != "input"}
    packed["input"] = [b["input"] for b in bodies]
    if base64_ok and "encoding_format" not in packed:
        packed["encoding_format"] = "base64"  # 4x smaller and far cheaper to decode than JSON floats
    return packed


def pack_signature(body: dict) -> tuple:
    """Items can share one embeddings request only when everything but the input is equal."""
    return tuple(sorted((k, repr(v)) for k, v in body.items() if k != "input"))


# -- parsing -------------------------------------------------------------------------------------


def _usage(payload: dict) -> tuple[int | None, int | None]:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None, None
    inp = usage.get("prompt_tokens", usage.get("input_tokens"))
    out = usage.get("completion_tokens", usage.get("output_tokens"))
    return (inp if isinstance(inp, int) else None, out if isinstance(out, int) else None)


def share(total: int | None, n: int) -> list[int | None]:
    """Split a request's token count over the ``n`` answers it holds (exact in sum)."""
    if total is None:
        return [None] * n
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


def _choices(payload: Any) -> list[dict]:
    """The answer's choices, ordered by their ``index`` (position when a server leaves it out)."""
    if not isinstance(payload, dict):
        raise ShapeError(f"expected a JSON object, got {type(payload).__name__}")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ShapeError("the answer has no choices")
    by_index: dict[int, dict] = {}
    for pos, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise ShapeError("a choice is not an object")
        index = choice.get("index", pos)
        if not isinstance(index, int) or index in by_index:
            raise ShapeError(f"choice index {index!r} is not a number or is repeated")
        by_index[index] = choice
    # a single choice (the common answer) has nothing to order
    return choices if len(choices) == 1 else [by_index[i] for i in sorted(by_index)]


def _first_choice(payload: Any) -> dict:
    return _choices(payload)[0]


def chat_text(content: Any) -> Any:
    """A message's text: some servers answer with a list of content parts."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content


def _chat_choice(choice: dict) -> Parsed:
    """One chat choice, without usage (the caller shares it out)."""
    message = choice.get("message")
    if not isinstance(message, dict):
        raise ShapeError("a choice has no message")
    tool_calls = parse_tool_calls(message)
    content = chat_text(message.get("content"))
    if content is None and not tool_calls and not message.get("refusal"):
        raise ShapeError("the message has no content")
    if content is None:
        content = message.get("refusal") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    return Parsed(content, choice.get("finish_reason"),
                  reasoning=reasoning if isinstance(reasoning, str) else None,
                  tool_calls=tool_calls, logprobs=choice.get("logprobs"))


def parse_tool_calls(message: dict) -> list[dict] | None:
    """``[{"id", "name", "arguments"}]`` from a message's ``tool_calls`` (or the older single
    ``function_call``), arguments parsed from their JSON text; None when it has none."""
    calls = message.get("tool_calls")
    if not calls:
        legacy = message.get("function_call")
        if not legacy:
            return None
        calls = [{"id": None, "function": legacy}]
    if not isinstance(calls, list):
        raise ShapeError("tool_calls is not a list")
    return [_tool_call(call) for call in calls]


def _tool_call(call: Any) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise ShapeError("a tool call has no function")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ShapeError("a tool call has no function name")
    return {"id": call.get("id"), "name": name,
            "arguments": tool_arguments(name, function.get("arguments"))}


def tool_arguments(name: str, raw: Any) -> Any:
    """A tool call's arguments from their JSON text. Some servers send them already parsed, and
    a function without parameters may come with no text at all."""
    if isinstance(raw, (dict, list)):
        return raw
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if not isinstance(raw, str):
        raise ToolArgumentsError(f"the arguments of tool call {name!r} are not JSON text")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ToolArgumentsError(f"the arguments of tool call {name!r} are not valid JSON: "
                                 f"{raw[:80]!r}") from None


def _completion_choice(choice: dict) -> Parsed:
    text = choice.get("text")
    if not isinstance(text, str):
        raise ShapeError("a choice has no text")
    return Parsed(text, choice.get("finish_reason"), logprobs=choice.get("logprobs"))


def parse_choices(payload: Any, kind: str = "chat") -> list[Parsed]:
    """One ``Parsed`` per choice of a chat (or completion) answer, ordered by ``index``. Usage
    is the request's: its tokens are shared out over the choices, so the sum is exact."""
    read = _completion_choice if kind == "completion" else _chat_choice
    parsed = [read(choice) for choice in _choices(payload)]
    with_usage(parsed, *_usage(payload))
    return parsed


def with_usage(parsed: list[Parsed], input_tokens: int | None,
               output_tokens: int | None) -> list[Parsed]:
    """Share a request's usage over its answers."""
    n = len(parsed)
    for p, inp, out in zip(parsed, share(input_tokens, n), share(output_tokens, n)):
        p.input_tokens, p.output_tokens = inp, out
    return parsed


def parse_chat(payload: Any) -> Parsed:
    """The first choice of a chat answer, with the whole request's usage."""
    parsed = _chat_choice(_first_choice(payload))
    parsed.input_tokens, parsed.output_tokens = _usage(payload)
    return parsed


def parse_completion(payload: Any) -> Parsed:
    parsed = _completion_choice(_first_choice(payload))
    parsed.input_tokens, parsed.output_tokens = _usage(payload)
    return parsed


def _vector(item: dict) -> np.ndarray:
    emb = item.get("embedding")
    if isinstance(emb, str):
        try:
            raw = base64.b64decode(emb, validate=True)
        except ValueError as exc:
            raise ShapeError(f"an embedding is not valid base64: {exc}") from None
        if len(raw) % 4:
            raise ShapeError("a base64 embedding is not a whole number of float32 values")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if isinstance(emb, list) and emb and all(isinstance(x, (int, float)) for x in emb[:4]):
        try:
            return np.asarray(emb, dtype=np.float32)
        except (TypeError, ValueError):
            raise ShapeError("an embedding holds something other than numbers") from None
    raise ShapeError("an embedding is missing or empty")


def parse_embeddings(payload: Any, n: int) -> tuple[list[np.ndarray], int | None]:
    """The ``n`` vectors of a packed request in input order, and the request's prompt tokens."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ShapeError("the answer has no data list")
    data = payload["data"]
    if len(data) != n:
        raise ShapeError(f"asked for {n} embeddings, got {len(data)}")
    raw: list[Any] = [None] * n
    seen = bytearray(n)
    for pos, item in enumerate(data):
        if not isinstance(item, dict):
            raise ShapeError("an embedding entry is not an object")
        idx = item.get("index", pos)
        if not isinstance(idx, int) or not 0 <= idx < n or seen[idx]:
            raise ShapeError(f"embedding index {idx!r} is out of range or repeated")
        seen[idx] = 1
        raw[idx] = item.get("embedding")
    block = _block(raw)
    inp, _ = _usage(payload)
    if block is not None:  # rows of one array: no allocation of its own per vector
        return list(block), inp
    return [_vector({"embedding": e}) for e in raw], inp


def _block(raw: list[Any]) -> np.ndarray | None:
    """The vectors of a packed answer as one (n, dim) float32 array, when all are base64 or all
    lists of numbers, of one length; None otherwise (each is then read, and refused, alone)."""
    try:
        if all(isinstance(e, str) for e in raw):
            decoded = [base64.b64decode(e, validate=True) for e in raw]
            sizes = set(map(len, decoded))
            if len(sizes) != 1 or sizes == {0} or sizes.pop() % 4:
                return None
            return np.frombuffer(b"".join(decoded), dtype="<f4").astype(np.float32) \
                .reshape(len(raw), -1)
        if all(isinstance(e, list) for e in raw):
            arr = np.array(raw)
            if arr.ndim != 2 or not arr.shape[1] or arr.dtype.kind not in "iuf":
                return None
            return arr.astype(np.float32)
    except (TypeError, ValueError):  # not base64, ragged: read one by one
        return None
    return None


def parse_image(payload: Any) -> Parsed:
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list) or not payload["data"]:
        raise ShapeError("the answer has no image data")
    item = payload["data"][0]
    if not isinstance(item, dict):
        raise ShapeError("the image entry is not an object")
    inp, out = _usage(payload)
    if isinstance(item.get("b64_json"), str):
        try:
            data = base64.b64decode(item["b64_json"], validate=True)
        except ValueError as exc:
            raise ShapeError(f"the image is not valid base64: {exc}") from None
        from ._image import GeneratedImage

        return Parsed(GeneratedImage(data, prompt=item.get("revised_prompt")), "stop", inp, out)
    if isinstance(item.get("url"), str):
        return Parsed(None, "stop", inp, out, image_url=item["url"])
    raise ShapeError("the image entry has neither b64_json nor url")


PARSERS = {"chat": parse_chat, "completion": parse_completion, "image": parse_image}
