"""Seeded, deterministic fault injection.

The fault of a request is a pure function of ``(fault_seed, sha256(body), attempt)`` where
``attempt`` is how many times this exact body arrived before. A retry of the same body therefore
gets a fresh, independent draw, and a test sees the same faults whatever the arrival order.

Precedence: a wrong API key (401) and an unparsable JSON body (400) come first; IMMEDIATE faults
are answered at once (no latency, no validation, no rate limit); DELAYED faults need a valid
request (a real 400/404 wins), skip rate limits and capacity, and act after the latency.

Some DELAYED faults only spoil requests that can show them, and are dropped (answered and logged
as no fault) on others: ``invalid_json`` and ``schema_mismatch`` a 200 whose JSON content
(``response_format``) or tool-call arguments do not parse / do not fit the schema (see
_extras.spoil); ``stream_cut``, ``stream_eof``, ``malformed_chunk`` and ``stream_stall`` a
streamed answer (see _sse).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from aiohttp import web

from ._config import SimConfig
from ._http import error_obj, json_response
from ._limits import retry_after_headers

#: faults answered as soon as the request is read (before latency, limits and validation)
IMMEDIATE = frozenset({
    "500", "502", "503", "504", "529", "429", "insufficient_quota", "401", "403", "404_model",
    "400_context", "reset_before",
})
#: faults that need the normal answer (or its latency) first
DELAYED = frozenset({
    "reset_after", "hang", "trickle", "truncated", "non_json", "invalid_utf8", "wrong_shape",
    "error_200", "invalid_json", "schema_mismatch", "stream_cut", "stream_eof",
    "malformed_chunk", "stream_stall",
})

_ERROR_200_MESSAGES = {
    336501: "Rpm limit reached",
    336502: "Tpm limit reached",
    18: "Open api qps request limit reached",
}


def fault_table(faults: Mapping[str, float]) -> tuple[tuple[float, str], ...]:
    """Cumulative probabilities in name order (independent of the dict's order)."""
    out = []
    cum = 0.0
    for name in sorted(faults):
        cum += faults[name]
        out.append((cum, name))
    return tuple(out)


def draw(fault_seed: int, table: tuple[tuple[float, str], ...], digest: bytes,
         attempt: int) -> str | None:
    """The fault (or None) of the ``attempt``-th arrival of a body with sha256 ``digest``."""
    h = hashlib.sha256(
        (fault_seed & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big") + digest + attempt.to_bytes(4, "big")
    ).digest()
    u = int.from_bytes(h[:8], "big") / 18446744073709551616.0  # 2**64
    for cum, name in table:
        if u < cum:
            return name
    return None


def fault_for(body: bytes, attempt: int, faults: Mapping[str, float], fault_seed: int = 0,
              fault_attempts: int = 1) -> str | None:
    """Predict the simulator's fault for the ``attempt``-th arrival (0-based) of ``body``."""
    if attempt >= fault_attempts or not faults:
        return None
    return draw(fault_seed, fault_table(faults), hashlib.sha256(body).digest(), attempt)


class FaultPicker:
    """Holds the per-body arrival counts; counting only happens while faults are configured."""

    __slots__ = ("table", "seed", "attempts", "seen")

    def __init__(self) -> None:
        self.table: tuple[tuple[float, str], ...] = ()
        self.seed = 0
        self.attempts = 1
        self.seen: dict[bytes, int] = {}

    def configure(self, cfg: SimConfig) -> None:
        self.table = fault_table(cfg.faults)
        self.seed = cfg.fault_seed
        self.attempts = cfg.fault_attempts

    def pick(self, digest: bytes) -> tuple[int, str | None]:
        """Count this arrival and return ``(attempt, fault)``."""
        seen = self.seen
        attempt = seen.get(digest, 0)
        seen[digest] = attempt + 1
        if attempt >= self.attempts:
            return attempt, None
        return attempt, draw(self.seed, self.table, digest, attempt)


_GATEWAY_HTML = {
    502: b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
         b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
         b"</body>\r\n</html>\r\n",
    504: b"<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n"
         b"<center><h1>504 Gateway Time-out</h1></center>\r\n<hr><center>nginx</center>\r\n"
         b"</body>\r\n</html>\r\n",
}


def immediate_response(name: str, model: str | None, cfg: SimConfig,
                       headers: dict[str, str]) -> web.Response:
    """The response of an IMMEDIATE fault other than ``reset_before``; ``headers`` is extended."""
    if name in ("502", "504"):
        headers["Content-Type"] = "text/html"
        return web.Response(status=int(name), body=_GATEWAY_HTML[int(name)], headers=headers)
    if name == "500":
        body = error_obj("The server had an error while processing your request. Sorry about "
                         "that!", "server_error")
        return json_response(500, body, headers)
    if name == "503":
        body = error_obj("The engine is currently overloaded, please try again later.",
                         "server_error")
        return json_response(503, body, headers)
    if name == "529":
        return json_response(529, error_obj("Overloaded", "overloaded_error"), headers)
    if name == "429":
        retry_after_headers(cfg.retry_after_format, 1.0, headers, cfg.retry_after_value)
        body = error_obj("Rate limit reached for requests. Please try again in 1s.", "requests",
                         "rate_limit_exceeded")
        return json_response(429, body, headers)
    if name == "insufficient_quota":
        body = error_obj("You exceeded your current quota, please check your plan and billing "
                         "details.", "insufficient_quota", "insufficient_quota")
        return json_response(429, body, headers)
    if name == "401":
        body = error_obj("Incorrect API key provided.", "invalid_request_error",
                         "invalid_api_key")
        return json_response(401, body, headers)
    if name == "403":
        body = error_obj("You are not allowed to access this resource.",
                         "invalid_request_error", "permission_denied")
        return json_response(403, body, headers)
    if name == "404_model":
        return json_response(404, model_not_found(model), headers)
    if name == "400_context":
        body = error_obj(
            f"This model's maximum context length is {cfg.context_window} tokens. However, your "
            "messages resulted in more tokens. Please reduce the length of the messages.",
            "invalid_request_error", "context_length_exceeded", "messages")
        return json_response(400, body, headers)
    raise AssertionError(name)


def model_not_found(model: str | None) -> dict:
    return error_obj(f"The model `{model}` does not exist", "invalid_request_error",
                     "model_not_found", "model")


def body_fault_response(name: str, kind: str, cfg: SimConfig) -> web.Response:
    """200 responses with a bad body: non_json, invalid_utf8, wrong_shape, error_200."""
    if name == "non_json":
        return web.Response(status=200, body=b"<html>Bad Gateway</html>",
                            headers={"Content-Type": "text/html"})
    if name == "invalid_utf8":
        body = (b'{"id":"sim-bad-utf8","object":"chat.completion","choices":[{"index":0,'
                b'"message":{"role":"assistant","content":"bad \xff\xfe bytes"},'
                b'"finish_reason":"stop"}],"data":[{"index":0,"text":"\xff\xfe"}]}')
        return web.Response(status=200, body=body, headers={"Content-Type": "application/json"})
    if name == "wrong_shape":
        obj = {"choices": []} if kind in ("chat", "completion") else {"data": None}
        return json_response(200, obj)
    if name == "error_200":
        code = cfg.error_200_code
        return json_response(200, {"error_code": code, "error_msg": _ERROR_200_MESSAGES[code]})
    raise AssertionError(name)
