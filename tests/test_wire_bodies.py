"""Bodies are read whole or the attempt fails: chunked answers, cut-short chunked answers, and
chunked image downloads, on every wire, against a real server on 127.0.0.1 that sends its
answers the way proxies do (``Transfer-Encoding: chunked``, no Content-Length, chunks a few
milliseconds apart)."""

from __future__ import annotations

import asyncio
import threading

import orjson
import pytest
from aiohttp import web

import batchmagic as bm
from batchmagic.simulator._answers import solid_png

WIRES = ["aiohttp", "httpx"]
PNG = solid_png((200, 30, 30), 16, 16)


def _pieces(data: bytes, n: int) -> list[bytes]:
    step = max(1, len(data) // n)
    return [data[i:i + step] for i in range(0, len(data), step)]


class ChunkingServer:
    """An OpenAI-shaped server on loopback whose every answer is chunked and trickled.

    ``cut`` makes JSON answers (``cut_images`` image downloads) stop after their first half,
    the connection closed with no final chunk: a body cut short. ``calls`` counts the chat and
    image requests that arrived."""

    def __init__(self, *, cut: bool = False, cut_images: bool = False, gap: float = 0.005):
        self.cut = cut
        self.cut_images = cut_images
        self.gap = gap
        self.calls = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _send_chunked(self, request: web.Request, data: bytes, content_type: str,
                            cut: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        pieces = _pieces(data, 6)
        if cut:
            pieces = pieces[: len(pieces) // 2]
        for piece in pieces:
            await resp.write(piece)
            await asyncio.sleep(self.gap)
        if cut:
            request.transport.close()  # no terminating chunk: the body is incomplete
            return resp
        await resp.write_eof()
        return resp

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        body = await request.json()
        text = body["messages"][-1]["content"]
        answer = {"choices": [{"index": 0, "finish_reason": "stop",
                               "message": {"role": "assistant", "content": "echo:" + text * 50}}],
                  "usage": {"prompt_tokens": 3, "completion_tokens": 50}}
        return await self._send_chunked(request, orjson.dumps(answer), "application/json",
                                        self.cut)

    async def image(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        answer = {"created": 1, "data": [{"url": f"{self.root}/files/img.png"}]}
        return await self._send_chunked(request, orjson.dumps(answer), "application/json",
                                        self.cut)

    async def png(self, request: web.Request) -> web.StreamResponse:
        return await self._send_chunked(request, PNG, "image/png", self.cut_images)

    def _serve(self) -> None:
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/images/generations", self.image)
        app.router.add_get("/files/img.png", self.png)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]
        self.root = f"http://127.0.0.1:{port}"
        self._runner = runner
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> ChunkingServer:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


def _run(server: ChunkingServer, inputs, wire: str, **kw):
    return bm.batch(inputs, base_url=server.root + "/v1", model="m", progress=False,
                    cache=False, http=wire, **kw)


@pytest.mark.parametrize("wire", WIRES)
def test_a_chunked_answer_is_read_whole(wire: str) -> None:
    with ChunkingServer() as server:
        df = _run(server, ["a", "b", "c"], wire)
        assert df["error"].isna().all(), list(df["error"])
        assert list(df["output"]) == ["echo:" + t * 50 for t in "abc"]
        assert server.calls == 3  # each row paid once: nothing re-sent after a partial read


@pytest.mark.parametrize("wire", WIRES)
def test_a_chunked_answer_cut_short_is_an_error_never_a_success(wire: str) -> None:
    with ChunkingServer(cut=True) as server:
        df = _run(server, ["a"], wire, retries=1)
        err = df["error"].iloc[0]
        assert isinstance(err, bm.RowError), err
        assert df["output"].iloc[0] is None
        assert err.possibly_billed  # the server may have charged for the answer it began


@pytest.mark.parametrize("wire", WIRES)
def test_a_chunked_image_download_is_read_whole(wire: str) -> None:
    with ChunkingServer() as server:
        df = _run(server, ["a red square"], wire, kind="image", allow_private_urls=True)
        assert df["error"].iloc[0] is None, df["error"].iloc[0]
        assert bytes(df["output"].iloc[0].data) == PNG


@pytest.mark.parametrize("wire", WIRES)
def test_a_cut_short_image_download_is_an_error(wire: str) -> None:
    with ChunkingServer(cut_images=True) as server:
        df = _run(server, ["a red square"], wire, kind="image", allow_private_urls=True,
                  retries=1)
        assert isinstance(df["error"].iloc[0], bm.RowError)
        assert df["output"].iloc[0] is None
