"""Tests of batchmagic.simulator against real clients (raw aiohttp, sockets, urllib).

All traffic stays on 127.0.0.1. Most tests run the server in a thread (SimulatorThread); the
process tests start ``python -m batchmagic.simulator`` for real.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import math
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import time
import zlib
from array import array
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from batchmagic.simulator import (
    SimConfig,
    SimulatorError,
    SimulatorProcess,
    SimulatorThread,
    count_tokens,
    embedding_vector,
    fault_for,
    image_color,
)

pytestmark = pytest.mark.timeout(30)

SENTINEL = "sk-SENTINEL-DO-NOT-LEAK-0123456789"
# the directory holding the batchmagic package under test (source checkout or site-packages)
PKG_ROOT = Path(sys.modules["batchmagic.simulator"].__file__).resolve().parents[2]


# ---------------------------------------------------------------------- helpers
class Resp:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


async def _post(session: aiohttp.ClientSession, url: str, payload: Any = None, *,
                data: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 10.0) -> Resp:
    body = data if data is not None else json.dumps(payload).encode()
    h = {"Content-Type": "application/json", **(headers or {})}
    async with session.post(url, data=body, headers=h,
                            timeout=aiohttp.ClientTimeout(total=timeout)) as r:
        return Resp(r.status, r.headers, await r.read())


def post(url: str, payload: Any = None, **kw: Any) -> Resp:
    async def go() -> Resp:
        async with aiohttp.ClientSession() as s:
            return await _post(s, url, payload, **kw)

    return asyncio.run(go())


def post_many(url: str, payloads: list[Any], **kw: Any) -> list[Resp]:
    """Send concurrently on one session; answers in payload order."""
    async def go() -> list[Resp]:
        async with aiohttp.ClientSession() as s:
            return list(await asyncio.gather(*(_post(s, url, p, **kw) for p in payloads)))

    return asyncio.run(go())


def get(url: str) -> Resp:
    async def go() -> Resp:
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            return Resp(r.status, r.headers, await r.read())

    return asyncio.run(go())


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "sim-chat", "messages": [{"role": "user", "content": text}], **extra}


def raw_exchange(base_url: str, path: str, payload: Any, read_timeout: float = 5.0
                 ) -> tuple[bytes, BaseException | None]:
    """POST over a bare socket; returns every byte received and the error that ended it."""
    u = urlsplit(base_url)
    body = json.dumps(payload).encode()
    head = (f"POST {u.path}{path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    got = b""
    err: BaseException | None = None
    with socket.create_connection((u.hostname, u.port), timeout=read_timeout) as sock:
        sock.sendall(head + body)
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        except OSError as e:
            err = e
    return got, err


def raw_send(base_url: str, data: bytes, read_timeout: float = 5.0) -> bytes:
    u = urlsplit(base_url)
    got = b""
    with socket.create_connection((u.hostname, u.port), timeout=read_timeout) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except OSError:
            pass
    return got


def parse_png(data: bytes) -> tuple[int, int, tuple[int, int, int]]:
    """(width, height, first pixel RGB) of an 8-bit RGB PNG, parsed by hand."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        chunk = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + chunk) & 0xFFFFFFFF
        if kind == b"IHDR":
            width, height, depth, color_type = struct.unpack(">IIBB", chunk[:10])
            assert (depth, color_type) == (8, 2)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    assert len(raw) == height * (1 + 3 * width)
    return width, height, (raw[1], raw[2], raw[3])


# ---------------------------------------------------------------------- tokens + config
def test_count_tokens_rule() -> None:
    assert count_tokens("") == 0
    assert count_tokens("hello") == 2  # ceil(5 / 4)
    assert count_tokens("Hello, world!") == 6  # 2 + 1 + 2 + 1
    assert count_tokens("你好世界") == 4  # one per CJK character
    assert count_tokens("abc你好") == 3
    assert count_tokens("こんにちは 안녕") == 7


def test_config_cli_roundtrip_and_validation() -> None:
    cfg = SimConfig.from_args(["--latency", "0.1", "--rpm", "1200", "--fault", "500=0.05",
                               "--fault", "reset_after=0.01", "--no-shuffle-embeddings",
                               "--missing-model", "gone", "--capacity", "8",
                               "--schedule", '[[1, {"rpm": 600}]]'], env={})
    assert cfg.latency == 0.1 and cfg.rpm == 1200 and not cfg.shuffle_embeddings
    assert cfg.faults == {"500": 0.05, "reset_after": 0.01}
    assert cfg.missing_models == ["gone"] and cfg.capacity == 8
    assert cfg.schedule == [(1.0, {"rpm": 600})]
    assert SimConfig.from_args(cfg.to_args(), env={}) == cfg
    keyed = SimConfig.from_args([], env={"BATCHMAGIC_SIM_API_KEY": SENTINEL})
    assert keyed.api_key == SENTINEL
    assert SENTINEL not in repr(keyed) and SENTINEL not in " ".join(keyed.to_args())
    for bad in ({"faults": {"nope": 0.1}}, {"faults": {"500": 0.7, "503": 0.5}},
                {"latency_dist": "gauss"}, {"reply": "length:x"}, {"rpm": 0}):
        with pytest.raises(ValueError):
            SimConfig().patched(bad)
    with pytest.raises(ValueError):
        SimConfig().patched({"port": 1})


def test_cli_refuses_remote_host() -> None:
    env = {**os.environ, "PYTHONPATH": str(PKG_ROOT)}
    r = subprocess.run([sys.executable, "-m", "batchmagic.simulator", "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=20, env=env)
    assert r.returncode == 2 and "allow-remote" in r.stderr and r.stdout == ""


# ---------------------------------------------------------------------- endpoints
def test_chat_shape_determinism_and_usage() -> None:
    with SimulatorThread() as sim:
        url = sim.base_url + "/chat/completions"
        r1, r2 = post(url, chat("Hello, world!")), post(url, chat("Hello, world!"))
        assert r1.status == 200 and r1.headers["Content-Type"].startswith("application/json")
        b = r1.json()
        assert set(b) >= {"id", "object", "created", "model", "choices", "usage"}
        assert b["object"] == "chat.completion" and b["model"] == "sim-chat"
        choice = b["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": "echo: Hello, world!",
                                     "refusal": None}
        assert choice["finish_reason"] == "stop"
        assert b["usage"] == {"prompt_tokens": 6 + 3 + 3, "completion_tokens": 2 + 6,
                              "total_tokens": 20}
        assert r2.json()["choices"] == b["choices"] and r2.json()["id"] != b["id"]
        # list content: text parts joined, image parts 85 tokens; the LAST user message echoes
        parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}},
                 {"type": "text", "text": "here"}]
        body = {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                           {"role": "user", "content": "first"},
                                           {"role": "assistant", "content": "ok"},
                                           {"role": "user", "content": parts}]}
        b = post(url, body).json()
        assert b["choices"][0]["message"]["content"] == "echo: look here"
        assert b["usage"]["prompt_tokens"] == 3 + (3 + 3) + (3 + 2) + (3 + 1) + (3 + 2 + 85)
        assert post(url, chat("x", stream="yes")).status == 400  # streaming: see *_structured
        assert post(url, data=b"{not json").status == 400
        assert post(url, {"messages": []}).status == 400


def test_max_tokens_truncation_and_reply_modes() -> None:
    with SimulatorThread() as sim:
        url = sim.base_url + "/chat/completions"
        # "echo: abcdefgh ijkl" = echo(1) :(1) abcdefgh(2) ijkl(1) = 5 tokens
        b = post(url, chat("abcdefgh ijkl", max_tokens=3)).json()
        assert b["choices"][0]["message"]["content"] == "echo: abcd"  # cut inside a word
        assert b["choices"][0]["finish_reason"] == "length"
        assert b["usage"]["completion_tokens"] == 3
        b = post(url, chat("abcdefgh ijkl", max_tokens=4)).json()
        assert b["choices"][0]["message"]["content"] == "echo: abcdefgh"
        b = post(url, chat("abcdefgh ijkl", max_completion_tokens=5)).json()
        assert b["choices"][0]["finish_reason"] == "stop"  # exactly 5 tokens fit
        assert b["usage"]["completion_tokens"] == 5
        assert post(url, chat("x", max_tokens=0)).status == 400
        sim.configure(reply="fixed:constant answer")
        assert post(url, chat("x")).json()["choices"][0]["message"]["content"] == \
            "constant answer"
        sim.configure(reply="length:50")
        a = post(url, chat("seed me")).json()
        assert a["usage"]["completion_tokens"] == 50
        assert post(url, chat("seed me")).json()["choices"] == a["choices"]
        assert post(url, chat("other")).json()["choices"] != a["choices"]
        assert post(url, chat("x", max_tokens=10)).json()["usage"]["completion_tokens"] == 10


def test_completions_endpoint() -> None:
    with SimulatorThread() as sim:
        url = sim.base_url + "/completions"
        for prompt in ("tell me", ["tell me"]):
            b = post(url, {"model": "m", "prompt": prompt}).json()
            assert b["object"] == "text_completion"
            assert b["choices"][0]["text"] == "echo: tell me"
            assert b["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
        assert post(url, {"model": "m", "prompt": ["a", "b"]}).status == 400


def test_embeddings_shuffled_by_index_and_deterministic() -> None:
    with SimulatorThread() as sim:
        url = sim.base_url + "/embeddings"
        texts = [f"text number {i}" for i in range(6)]
        b = post(url, {"model": "sim-embed", "input": texts}).json()
        assert b["object"] == "list" and b["model"] == "sim-embed"
        assert [d["index"] for d in b["data"]] != list(range(6))  # shuffled...
        assert sorted(d["index"] for d in b["data"]) == list(range(6))  # ...but complete
        for d in b["data"]:
            assert d["object"] == "embedding" and len(d["embedding"]) == 16
            assert d["embedding"] == embedding_vector(texts[d["index"]], 16)
            assert math.isclose(math.fsum(x * x for x in d["embedding"]), 1.0, rel_tol=1e-5)
        assert post(url, {"model": "e", "input": texts}).json()["data"] == b["data"]
        assert b["usage"] == {"prompt_tokens": sum(map(count_tokens, texts)),
                              "total_tokens": sum(map(count_tokens, texts))}
        # dimensions + base64 little-endian float32
        one = post(url, {"model": "e", "input": "hi", "dimensions": 8}).json()["data"][0]
        b64 = post(url, {"model": "e", "input": "hi", "dimensions": 8,
                         "encoding_format": "base64"}).json()["data"][0]["embedding"]
        floats = array("f")
        floats.frombytes(base64.b64decode(b64))
        if sys.byteorder != "little":
            floats.byteswap()
        assert floats.tolist() == one["embedding"] and len(floats) == 8
        # token-id inputs: one array, or a list of arrays
        t = post(url, {"model": "e", "input": [[1, 2, 3], [4, 5]]}).json()["data"]
        assert {d["index"]: d["embedding"] for d in t}[0] == embedding_vector("1 2 3", 16)
        assert post(url, {"model": "e", "input": [7, 8]}).json()["data"][0]["embedding"] == \
            embedding_vector("7 8", 16)
        sim.configure(max_embedding_inputs=3, shuffle_embeddings=False)
        r = post(url, {"model": "e", "input": texts})
        assert r.status == 400 and r.json()["error"]["type"] == "invalid_request_error"
        b = post(url, {"model": "e", "input": texts[:3]}).json()
        assert [d["index"] for d in b["data"]] == [0, 1, 2]


def test_images_b64_and_url() -> None:
    with SimulatorThread() as sim:
        url = sim.base_url + "/images/generations"
        b = post(url, {"prompt": "a red fox", "size": "32x48", "n": 2}).json()
        assert len(b["data"]) == 2 and "created" in b
        w, h, rgb = parse_png(base64.b64decode(b["data"][0]["b64_json"]))
        assert (w, h) == (32, 48) and rgb == image_color("a red fox")
        again = post(url, {"prompt": "a red fox", "size": "32x48"}).json()
        assert again["data"][0]["b64_json"] == b["data"][0]["b64_json"]
        _, _, other = parse_png(base64.b64decode(
            post(url, {"prompt": "a blue whale"}).json()["data"][0]["b64_json"]))
        assert other == image_color("a blue whale") != rgb
        u = post(url, {"prompt": "url please", "response_format": "url"}).json()["data"][0]["url"]
        assert u.startswith(sim.root_url + "/v1/sim-images/") and u.endswith(".png")
        png = get(u)
        assert png.status == 200 and png.headers["Content-Type"] == "image/png"
        assert parse_png(png.body) == (64, 64, image_color("url please"))
        assert post(url, {"prompt": "big", "size": "1024x1024"}).status == 400
        assert get(sim.base_url + "/sim-images/nope.png").status == 404


def test_models_missing_model_and_context_window() -> None:
    with SimulatorThread(missing_models=["gpt-gone"], context_window=50) as sim:
        post(sim.base_url + "/chat/completions", chat("hi") | {"model": "my-model"})
        ids = [m["id"] for m in get(sim.base_url + "/models").json()["data"]]
        assert {"sim-chat", "sim-embed", "sim-image", "my-model"} <= set(ids)
        r = post(sim.base_url + "/chat/completions", chat("hi") | {"model": "gpt-gone"})
        assert r.status == 404
        assert r.json()["error"] == {"message": "The model `gpt-gone` does not exist",
                                     "type": "invalid_request_error", "param": "model",
                                     "code": "model_not_found"}
        r = post(sim.base_url + "/chat/completions", chat("word " * 30, max_tokens=20))
        assert r.status == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert "maximum context length is 50 tokens" in r.json()["error"]["message"]
        assert post(sim.base_url + "/chat/completions", chat("word " * 30)).status == 200


# ---------------------------------------------------------------------- rate limits
def test_rpm_limit_retry_after_formats_and_headers() -> None:
    with SimulatorThread(rpm=60, burst=2) as sim:  # 1/s, bucket of 2, starts full
        url = sim.base_url + "/chat/completions"
        ok = post(url, chat("a"))
        assert ok.status == 200
        assert ok.headers["x-ratelimit-limit-requests"] == "60"
        assert ok.headers["x-ratelimit-remaining-requests"] == "1"
        assert re.fullmatch(r"\d+ms|1s", ok.headers["x-ratelimit-reset-requests"])  # to full
        assert "x-ratelimit-limit-tokens" not in ok.headers
        assert post(url, chat("b")).status == 200
        r = post(url, chat("c"))
        assert r.status == 429
        err = r.json()["error"]
        assert err["type"] == "requests" and err["code"] == "rate_limit_exceeded"
        assert err["message"].startswith("Rate limit reached for requests")
        assert r.headers["retry-after"] == "1"  # < 1 s, rounded up to whole seconds
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert re.fullmatch(r"1\.\d+s|2s", r.headers["x-ratelimit-reset-requests"])

        sim.configure(retry_after_format="ms")
        r = post(url, chat("d"))
        assert r.status == 429 and 1 <= int(r.headers["retry-after-ms"]) <= 1000
        assert r.headers["retry-after"] == "1"
        sim.configure(retry_after_format="http-date")
        r = post(url, chat("e"))
        when = email.utils.parsedate_to_datetime(r.headers["retry-after"]).timestamp()
        assert r.status == 429 and r.headers["retry-after"].endswith("GMT")
        assert time.time() - 1 <= when <= time.time() + 2
        sim.configure(retry_after_format="seconds", ratelimit_headers=False)
        r = post(url, chat("f"))
        assert r.status == 429 and "x-ratelimit-limit-requests" not in r.headers
        time.sleep(int(r.headers["retry-after"]) + 0.05)  # the hint is real: waiting works
        assert post(url, chat("g")).status == 200
        sim.configure(retry_after_format="none")
        r = post(url, chat("h"))
        assert r.status == 429 and "retry-after" not in r.headers


def test_tpm_limit_charges_prompt_plus_max_tokens() -> None:
    with SimulatorThread(tpm=600, burst=10) as sim:  # bucket of 100 tokens, 10 tokens/s
        url = sim.base_url + "/chat/completions"
        ok = post(url, chat("hi", max_tokens=60))  # 3 + 3 + 1 + 60 = 67 tokens
        assert ok.status == 200 and ok.headers["x-ratelimit-remaining-tokens"] == "33"
        assert ok.headers["x-ratelimit-limit-tokens"] == "600"
        r = post(url, chat("hi", max_tokens=60))
        assert r.status == 429 and r.json()["error"]["type"] == "tokens"
        assert r.json()["error"]["message"].startswith("Rate limit reached for tokens")
        assert int(r.headers["retry-after"]) == 4  # (67 - 33) / 10 per s, rounded up
        assert post(url, chat("hi")).status == 200  # 7 + 16 (default) fits in the 33 left


def test_live_limit_change_and_schedule() -> None:
    with SimulatorThread(rpm=6000) as sim:  # bucket of 100
        url = sim.base_url + "/chat/completions"
        assert all(r.status == 200 for r in post_many(url, [chat(str(i)) for i in range(20)]))
        sim.configure(rpm=60)  # bucket of 1: the level (80) is clamped to 1
        assert [r.status for r in post_many(url, [chat("x"), chat("y")])].count(429) == 1
        assert sim.live_config()["rpm"] == 60
        # a schedule moves the limit by itself: 60 -> 60000 after 0.2 s
        sim.configure(schedule=[[0.2, {"rpm": 60000}]])
        time.sleep(0.35)
        assert sim.live_config()["rpm"] == 60000
        assert all(r.status == 200 for r in post_many(url, [chat(f"z{i}") for i in range(20)]))


def test_capacity_scales_latency_and_overloads() -> None:
    with SimulatorThread(capacity=2, overload=4, latency=0.3) as sim:
        url = sim.base_url + "/chat/completions"
        t0 = time.monotonic()
        rs = post_many(url, [chat(str(i)) for i in range(10)])
        elapsed = time.monotonic() - t0
        statuses = [r.status for r in rs]
        assert statuses.count(200) == 4 and statuses.count(503) == 6
        assert all(r.json()["error"]["message"] == "server overloaded"
                   for r in rs if r.status == 503)
        assert elapsed >= 0.3 * 4 / 2 - 0.05  # the 4th in flight waited 0.3 x 4/2
        assert 5 <= sim.stats()["max_in_flight"] <= 10


def test_latency_is_applied() -> None:
    with SimulatorThread(latency=0.2, per_token_latency=0.01) as sim:
        t0 = time.monotonic()
        b = post(sim.base_url + "/chat/completions", chat("abc")).json()  # 3 completion tokens
        assert time.monotonic() - t0 >= 0.2 + 0.03 - 0.01
        assert b["usage"]["completion_tokens"] == 3


def test_latency_distributions_are_seeded() -> None:
    import random

    from batchmagic.simulator._app import draw_latency

    for dist in ("fixed", "uniform", "exponential", "lognormal"):
        cfg = SimConfig(latency=0.1, latency_dist=dist, latency_jitter=0.05)
        a = [draw_latency(cfg, random.Random(3)) for _ in range(3)]
        rng = random.Random(3)
        b = [draw_latency(cfg, rng) for _ in range(50)]
        assert a == [a[0]] * 3 and b[0] == a[0] and min(b) >= 0
        assert (len(set(b)) == 1) == (dist == "fixed")
    with SimulatorThread(latency_dist="exponential", latency_jitter=0.05) as sim:
        t0 = time.monotonic()
        for i in range(5):
            post(sim.base_url + "/completions", {"model": "m", "prompt": str(i)})
        assert time.monotonic() - t0 > 0.05  # mean 0.05 s each even with a 0 base
    with pytest.raises(SimulatorError, match="non-loopback"):
        SimulatorThread(host="0.0.0.0").start()


# ---------------------------------------------------------------------- faults
STATUS_FAULTS = {
    "500": (500, "json"), "502": (502, "html"), "503": (503, "json"), "504": (504, "html"),
    "529": (529, "json"), "429": (429, "json"), "insufficient_quota": (429, "json"),
    "401": (401, "json"), "403": (403, "json"), "404_model": (404, "json"),
    "400_context": (400, "json"),
}


def test_status_faults_and_retry_succeeds() -> None:
    with SimulatorThread() as sim:
        url = sim.base_url + "/chat/completions"
        for name, (status, kind) in STATUS_FAULTS.items():
            sim.configure(faults={name: 1.0})
            r = post(url, chat(f"fault {name}"))
            assert r.status == status, name
            if kind == "html":
                assert r.headers["Content-Type"].startswith("text/html") and b"<html>" in r.body
            else:
                assert "error" in r.json(), name
            assert post(url, chat(f"fault {name}")).status == 200, name  # fault_attempts=1
        sim.configure(faults={"429": 1.0})
        r = post(url, chat("t429"))
        assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "requests"
        sim.configure(faults={"insufficient_quota": 1.0})
        err = post(url, chat("quota")).json()["error"]
        assert err["code"] == err["type"] == "insufficient_quota"
        sim.configure(faults={"404_model": 1.0})
        assert post(url, chat("m404")).json()["error"]["code"] == "model_not_found"
        sim.configure(faults={"400_context": 1.0})
        assert post(url, chat("ctx")).json()["error"]["code"] == "context_length_exceeded"
        sim.configure(faults={"401": 1.0})
        assert post(url, chat("auth")).json()["error"]["code"] == "invalid_api_key"
        calls = sim.calls()
        assert [c["fault"] for c in calls[:2]] == ["500", None]
        assert [c["tag"] for c in calls[:2]] == ["fault 500", "fault 500"]
        assert calls[0]["status"] == 500 and calls[0]["attempt"] == 0
        assert calls[1]["attempt"] == 1
        assert sim.stats()["by_fault"]["500"] == 1


def test_body_faults() -> None:
    with SimulatorThread() as sim:
        url = sim.base_url + "/chat/completions"
        sim.configure(faults={"non_json": 1.0})
        r = post(url, chat("nj"))
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
        assert r.body == b"<html>Bad Gateway</html>"
        sim.configure(faults={"invalid_utf8": 1.0})
        r = post(url, chat("utf"))
        assert r.status == 200 and r.headers["Content-Type"] == "application/json"
        with pytest.raises(UnicodeDecodeError):
            r.body.decode("utf-8")
        sim.configure(faults={"wrong_shape": 1.0})
        assert post(url, chat("ws")).json() == {"choices": []}
        assert post(sim.base_url + "/embeddings", {"model": "e", "input": "ws"}).json() == \
            {"data": None}
        sim.configure(faults={"error_200": 1.0})
        assert post(url, chat("e200")).json() == {"error_code": 336501,
                                                   "error_msg": "Rpm limit reached"}
        sim.configure(error_200_code=18)
        assert post(url, chat("e200-qps")).json()["error_code"] == 18


def test_reset_before_and_after_really_reset() -> None:
    with SimulatorThread(latency=1.0, faults={"reset_before": 1.0}) as sim:
        t0 = time.monotonic()
        got, err = raw_exchange(sim.base_url, "/chat/completions", chat("rb"))
        assert got == b"" and time.monotonic() - t0 < 0.8  # before the latency
        assert err is None or isinstance(err, ConnectionResetError)
        with pytest.raises(aiohttp.ClientError):  # a real client sees a dropped connection
            post(sim.base_url + "/chat/completions", chat("rb2"))
        sim.configure(faults={"reset_after": 1.0})
        t0 = time.monotonic()
        got, err = raw_exchange(sim.base_url, "/chat/completions", chat("ra"))
        assert got == b"" and time.monotonic() - t0 >= 0.95  # after the latency
        assert err is None or isinstance(err, ConnectionResetError)
        assert [c["fault"] for c in sim.calls()] == ["reset_before", "reset_before",
                                                     "reset_after"]
        assert post(sim.base_url + "/chat/completions", chat("ra")).status == 200


def test_truncated_and_trickle() -> None:
    with SimulatorThread(faults={"truncated": 1.0}, trickle_interval=0.003) as sim:
        url = sim.base_url + "/chat/completions"
        got, _ = raw_exchange(sim.base_url, "/chat/completions", chat("tr"))
        head, _, body = got.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        assert head.startswith(b"HTTP/1.1 200") and 0 < len(body) < length
        with pytest.raises(aiohttp.ClientPayloadError):
            post(url, chat("tr2"))

        sim.configure(faults={"trickle": 1.0})

        async def trickle() -> tuple[int, float, bytes]:
            async with aiohttp.ClientSession() as s, s.post(url, json=chat("slow")) as r:
                t0, chunks, data = time.monotonic(), 0, b""
                async for chunk in r.content.iter_any():
                    chunks += 1
                    data += chunk
                return chunks, time.monotonic() - t0, data

        chunks, elapsed, data = asyncio.run(trickle())
        assert json.loads(data)["choices"][0]["message"]["content"] == "echo: slow"
        assert chunks >= 10 and elapsed >= len(data) * 0.003 * 0.8


def test_hang_until_client_deadline() -> None:
    with SimulatorThread(faults={"hang": 1.0}, hang_seconds=60) as sim:
        t0 = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            post(sim.base_url + "/chat/completions", chat("hang"), timeout=0.5)
        assert 0.45 <= time.monotonic() - t0 < 5
        assert sim.calls()[0]["fault"] == "hang" and sim.calls()[0]["status"] is None
        deadline = time.monotonic() + 30  # the handler is cancelled with its client
        while sim.stats()["in_flight"] != 0:
            assert time.monotonic() < deadline, "the hanging handler outlived its client"
            time.sleep(0.01)
    # leaving the context did not wait for the 60 s hang


def test_fault_determinism_across_runs_and_orders() -> None:
    faults = {"500": 0.3, "503": 0.2}
    bodies = [chat(f"row {i}") for i in range(40)]

    def run(order: list[int], attempts: int) -> dict[int, list[int]]:
        with SimulatorThread(faults=faults, fault_seed=7, fault_attempts=attempts) as sim:
            url = sim.base_url + "/chat/completions"
            out: dict[int, list[int]] = {}
            for i in order:  # first arrival, then one retry of every body
                out[i] = [post(url, bodies[i]).status]
            for i in order:
                out[i].append(post(url, bodies[i]).status)
            return out

    first = run(list(range(40)), 1)
    second = run(list(reversed(range(40))), 1)
    assert first == second
    expected = {"500": 500, "503": 503, None: 200}
    for i, (a, b) in first.items():
        data = json.dumps(bodies[i]).encode()
        assert a == expected[fault_for(data, 0, faults, 7)]
        assert b == 200  # a retry of a faulted body always succeeds with fault_attempts=1
    assert 5 < sum(a != 200 for a, _ in first.values()) < 35
    twice = run(list(range(40)), 2)
    for i, (_, b) in twice.items():
        assert b == expected[fault_for(json.dumps(bodies[i]).encode(), 1, faults, 7, 2)]
    assert any(b != 200 for _, b in twice.values())


# ---------------------------------------------------------------------- log, admin, auth, process
def test_call_log_admin_and_jsonl(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    with SimulatorThread(call_log_path=str(log)) as sim:
        post(sim.base_url + "/chat/completions", chat("first row " + "x" * 300))
        post(sim.base_url + "/embeddings", {"model": "e", "input": ["emb a", "emb b"]})
        post(sim.base_url + "/completions", {"model": "c", "prompt": "third"})
        calls = sim.calls()
        assert [c["tag"][:9] for c in calls] == ["first row", "emb a", "third"]
        assert len(calls[0]["tag"]) == 200 and calls[1]["n_inputs"] == 2
        assert calls[0]["path"] == "/v1/chat/completions" and calls[0]["status"] == 200
        assert len(calls[0]["hash"]) == 16 and calls[0]["prompt_tokens"] > 0
        assert calls[0]["t"] <= calls[1]["t"] <= calls[2]["t"]
        assert sim.calls(since=2) == calls[2:]
        lines = [json.loads(x) for x in log.read_text().splitlines()]
        assert lines == calls  # flushed per line
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
        st = sim.stats()
        assert st["total"] == 3 and st["by_status"] == {"200": 3} and st["in_flight"] == 0
        assert st["rps_last_second"] >= 1
        assert sim.health()["status"] == "ok"
        sim.reset()
        assert sim.calls() == [] and sim.stats()["total"] == 0
        sim.configure(log_calls=False)
        post(sim.base_url + "/completions", {"model": "c", "prompt": "unlogged"})
        assert sim.calls() == [] and sim.stats()["total"] == 1
        with pytest.raises(SimulatorError):
            sim.configure(no_such_field=1)


def test_auth_never_leaks_key_and_process_lifecycle(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    with SimulatorProcess(api_key=SENTINEL, call_log_path=str(log)) as sim:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", sim.base_url)
        cmdline = Path(f"/proc/{sim.pid}/cmdline").read_bytes() if sys.platform == "linux" \
            else b""
        assert SENTINEL.encode() not in cmdline
        url = sim.base_url + "/chat/completions"
        seen: list[bytes] = []
        good = {"Authorization": f"Bearer {SENTINEL}"}
        for headers in ({}, {"Authorization": f"Bearer {SENTINEL}x"},
                        {"Authorization": SENTINEL}, {"X-Echo": SENTINEL}):
            r = post(url, chat("who am i"), headers=headers)
            assert r.status == 401
            assert r.json() == {"error": {"message": "Incorrect API key provided.",
                                          "type": "invalid_request_error", "param": None,
                                          "code": "invalid_api_key"}}
            seen += [r.body, str(dict(r.headers)).encode()]
        r = post(url, chat(f"{SENTINEL} in the prompt is fine"), headers=good)
        assert r.status == 200
        r = post(url, data=b"{bad json", headers=good)
        assert r.status == 400
        seen += [r.body, str(dict(r.headers)).encode()]
        r = get(sim.base_url + "/models")
        assert r.status == 401
        seen.append(r.body)
        # malformed header lines: aiohttp's own 400 page and log would quote them
        for bad in (b"Authorization: Bearer " + SENTINEL.encode() + b"\x01",
                    b"Authorization Bearer " + SENTINEL.encode(),
                    b"Content-Length: " + SENTINEL.encode()):
            got = raw_send(sim.base_url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                           + bad + b"\r\nContent-Length: 2\r\n\r\n{}")
            assert got.startswith(b"HTTP/1.0 400") or got.startswith(b"HTTP/1.1 400")
            seen.append(got)
        calls = sim.calls()
        assert [c["status"] for c in calls] == [401, 401, 401, 401, 200, 400]
        calls[4]["tag"] = ""  # the one place the prompt itself (not a header) is echoed
        seen += [json.dumps(calls).encode(), json.dumps(sim.stats()).encode(),
                 json.dumps(sim.live_config()).encode()]
        assert sim.live_config()["api_key_set"] is True
        for blob in seen:
            assert SENTINEL.encode() not in blob
        lines = [json.loads(x) for x in log.read_text().splitlines()]
        lines[4]["tag"] = ""
        assert SENTINEL not in json.dumps(lines)
        code = sim.stop()
        assert code == 0  # SIGTERM -> clean exit
        out = sim.stdout_text()
        assert re.fullmatch(r"batchmagic simulator listening on http://127\.0\.0\.1:\d+/v1\n",
                            out)
        assert SENTINEL not in out and SENTINEL not in sim.last_stderr
        assert sim.last_stderr == ""  # nothing logged per request


def test_process_ready_file_and_startup_error(tmp_path: Path) -> None:
    ready = tmp_path / "ready.txt"
    with SimulatorProcess(extra_args=["--ready-file", str(ready)], latency=0.01) as sim:
        assert ready.read_text().strip() == sim.base_url
        assert post(sim.base_url + "/completions", {"model": "m", "prompt": "p"}).status == 200
        assert sim.live_config()["latency"] == 0.01
    with pytest.raises(SimulatorError, match="exited with code 2"):
        SimulatorProcess(extra_args=["--latency-dist", "nope"]).start()
