"""Streamed answers (``stream: true``): OpenAI's server-sent events for chat and completions.

Chat: a first chunk per choice with ``delta.role``, one chunk per token (``delta.content``, or
``delta.tool_calls`` pieces: the call's id and name first, then its arguments), a last chunk
per choice with ``finish_reason``; with ``stream_options.include_usage`` every chunk carries
``"usage": null`` and a final chunk with ``choices: []`` carries the usage; then
``data: [DONE]``. Completions: the same with ``text`` pieces.

Timing: the first token leaves after the request's latency (so time to first token is the
configured latency), each later token ``per_token_latency`` after the one before (one token of
every choice per step).

Faults (only on streamed requests): ``stream_cut`` closes the connection halfway, without the
end of the chunked body or ``[DONE]``; ``stream_eof`` ends the body cleanly halfway, without a
``finish_reason`` or ``[DONE]``; ``malformed_chunk`` sends one event of broken JSON halfway and
then the rest; ``stream_stall`` goes quiet halfway for ``hang_seconds``, then finishes.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ._answers import split_tokens
from ._extras import Choice, Extras, completion_logprobs, content_logprobs

if TYPE_CHECKING:
    from ._app import SimState
    from ._endpoints import Job

SSE_CT = "text/event-stream"
DONE = b"data: [DONE]\n\n"
FINGERPRINT = "fp_batchmagic_sim"
_MALFORMED = b'data: {"id":"chatcmpl-sim","object":"chat.completion.chunk","choices":[{"ind\n\n'


def stream_steps(st: SimState, job: Job) -> list[list[bytes]]:
    """The events of a streamed answer in steps: step 0 (role chunks and first tokens) goes out
    after the latency, each later step after the per-token spacing; the last step ends with the
    finish chunks, the usage chunk and ``[DONE]``."""
    ex = job.extra
    assert ex is not None
    chat = job.kind == "chat"
    prefix = "chatcmpl" if chat else "cmpl"
    head: dict[str, Any] = {
        "id": f"{prefix}-sim{next(st.ids)}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()), "model": job.model,
    }
    if chat:
        head["system_fingerprint"] = FINGERPRINT

    def event(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        obj = {**head, "choices": choices}
        if ex.include_usage:
            obj["usage"] = usage
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    pieces = [(_chat_pieces if chat else _text_pieces)(ex, i, c)
              for i, c in enumerate(ex.choices)]
    steps: list[list[bytes]] = [[] for _ in range(max(1, *map(len, pieces)))]
    if chat:
        steps[0] = [event([{"index": i, "delta": _role(c), "logprobs": None,
                            "finish_reason": None}]) for i, c in enumerate(ex.choices)]
    for choice_pieces in pieces:
        for k, piece in enumerate(choice_pieces):
            steps[k].append(event([piece]))
    last = steps[-1]
    for i, c in enumerate(ex.choices):
        last.append(event([_finish(chat, i, c.finish)]))
    if ex.include_usage:
        usage = {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.ctoks,
                 "total_tokens": job.prompt_tokens + job.ctoks}
        last.append(event([], usage))
    last.append(DONE)
    return steps


def _role(c: Choice) -> dict[str, Any]:
    return {"role": "assistant", "content": "" if c.calls is None else None, "refusal": None}


def _finish(chat: bool, i: int, reason: str) -> dict[str, Any]:
    if chat:
        return {"index": i, "delta": {}, "logprobs": None, "finish_reason": reason}
    return {"text": "", "index": i, "logprobs": None, "finish_reason": reason}


def _chat_pieces(ex: Extras, i: int, c: Choice) -> list[dict[str, Any]]:
    """One chunk choice per token: content pieces, or each call's header then its arguments."""
    if c.calls:
        out = []
        for j, (cid, name, args, _) in enumerate(c.calls):
            out.append({"index": i, "delta": {"tool_calls": [{
                "index": j, "id": cid, "type": "function",
                "function": {"name": name, "arguments": ""}}]},
                "logprobs": None, "finish_reason": None})
            out += [{"index": i, "delta": {"tool_calls": [{
                "index": j, "function": {"arguments": piece}}]},
                "logprobs": None, "finish_reason": None} for piece in split_tokens(args)]
        return out
    text = c.text or ""
    if ex.top is None:
        return [{"index": i, "delta": {"content": tok}, "logprobs": None, "finish_reason": None}
                for tok in split_tokens(text)]
    entries = content_logprobs(text, ex.prompt, i, ex.top)
    return [{"index": i, "delta": {"content": e["token"]},
             "logprobs": {"content": [e], "refusal": None}, "finish_reason": None}
            for e in entries]


def _text_pieces(ex: Extras, i: int, c: Choice) -> list[dict[str, Any]]:
    text = c.text or ""
    if ex.top is None:
        return [{"text": tok, "index": i, "logprobs": None, "finish_reason": None}
                for tok in split_tokens(text)]
    lp = completion_logprobs(text, ex.prompt, i, ex.top)
    return [{"text": tok, "index": i, "finish_reason": None,
             "logprobs": {key: [lp[key][k]] for key in lp}}
            for k, tok in enumerate(lp["tokens"])]


def stream_bytes(steps: list[list[bytes]]) -> bytes:
    """The whole stream as one body (what the trickle and truncated faults spoil)."""
    return b"".join(b"".join(step) for step in steps)


async def send_stream(request: web.BaseRequest, steps: list[list[bytes]], spacing: float,
                      headers: dict[str, str], fault: str | None, stall: float
                      ) -> web.StreamResponse:
    """Send the steps as ``text/event-stream``, spaced, spoiled by a stream fault if any."""
    timed = _timed(steps, spacing)
    mid = max(1, len(timed) // 2)
    if fault == "malformed_chunk":
        timed.insert(mid, (0.0, _MALFORMED))
    elif fault == "stream_stall":
        timed[mid] = (stall, timed[mid][1])
    elif fault in ("stream_cut", "stream_eof"):
        timed = timed[:mid]
    resp = web.StreamResponse(status=200, headers={
        **headers, "Content-Type": SSE_CT, "Cache-Control": "no-cache"})
    try:
        await resp.prepare(request)
        batch: list[bytes] = []
        for wait, data in timed:
            if wait > 0:
                if batch:
                    await resp.write(b"".join(batch))
                    batch = []
                await asyncio.sleep(wait)
            batch.append(data)
        if batch:
            await resp.write(b"".join(batch))
        if fault == "stream_cut":
            _close_midway(request)
            return resp  # aiohttp finds the transport closing and drops the response
        await resp.write_eof()
    except ConnectionError:
        pass  # the client left
    return resp


def _timed(steps: list[list[bytes]], spacing: float) -> list[tuple[float, bytes]]:
    """(seconds to wait before it, event) for every event."""
    out = []
    for k, step in enumerate(steps):
        for j, data in enumerate(step):
            out.append((spacing if k and not j else 0.0, data))
    return out


def _close_midway(request: web.BaseRequest) -> None:
    """Close the connection (FIN) with the chunked body unfinished."""
    transport = request.transport
    if transport is not None:
        transport.close()
