"""Small response helpers shared by the handlers and the fault injector."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import orjson
from aiohttp import web

JSON_CT = "application/json"


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> web.Response:
    # Passing the header directly skips aiohttp's content_type parsing (hot path).
    h = {"Content-Type": JSON_CT}
    if headers:
        h.update(headers)
    return web.Response(status=status, body=orjson.dumps(obj), headers=h)


def error_obj(message: str, type_: str, code: str | int | None = None,
              param: str | None = None) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class ApiError(Exception):
    """Raised by request parsing to answer an OpenAI-style error at once."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_obj(message, type_, code, param)


def abort_connection(request: web.BaseRequest) -> None:
    """Reset the TCP connection: SO_LINGER 0 makes close() send RST instead of FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def raw_head(status: int, reason: str, content_type: str, length: int) -> bytes:
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode("ascii")


async def send_truncated(request: web.BaseRequest, body: bytes,
                         content_type: str = JSON_CT) -> None:
    """Headers announcing the full Content-Length, half the body, then a clean close (FIN)."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    transport.write(raw_head(200, "OK", content_type, len(body)) + body[: len(body) // 2])
    await asyncio.sleep(0)  # let the bytes leave before the FIN
    transport.close()


async def send_trickle(request: web.BaseRequest, body: bytes, interval: float,
                       content_type: str = JSON_CT) -> web.StreamResponse:
    """A valid 200 whose body arrives one byte every ``interval`` seconds."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": content_type})
    resp.content_length = len(body)
    try:
        await resp.prepare(request)
        for i in range(len(body)):
            await resp.write(body[i:i + 1])
            await asyncio.sleep(interval)
        await resp.write_eof()
    except ConnectionError:
        pass  # the client gave up; aiohttp ignores the finished response
    return resp
