"""The wire: send one HTTP request under a hard deadline and return status, headers and body.

Two implementations meet one small contract (``post``, ``get``, ``stream``, ``aclose``):

* ``AiohttpWire`` (the default): aiohttp's connector does constant work per request, so 200+ requests
  in flight cost little client CPU (see ``benchmarks/http_stack.py``).
* ``HttpxWire``: the httpx API over any httpx transport (``httpx.MockTransport`` in tests, a custom
  transport, a proxy) or over httpx2, Pydantic's maintained fork with the same API.

``post`` and ``get`` read the whole answer. ``stream`` opens a streamed answer (server-sent events)
and hands its bytes on as they arrive, under the same hard deadline for the whole attempt and a
shorter one for each silence between chunks; an error answer, or a server that answers the
streamed request in one piece, is read whole as ``post`` reads it.

Foreign exceptions are translated here, in one place per library, into ``WireFailure`` with a plain
message and whether the request may have reached the server (``possibly_billed``). They are never
chained: aiohttp and httpx exceptions can hold the request, and the request holds the API key.
"""

from __future__ import annotations

import abc
import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

from .._errors import (
    ConnectError,
    ConnectionLostError,
    DeadlineError,
    ResponseError,
    TransportError,
)

MAX_BODY_BYTES = 256 * 1024 * 1024


@dataclass(slots=True)
class WireResponse:
    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes | None  # None when the body could not be read completely
    body_problem: str | None = None


@dataclass(slots=True)
class WireStream:
    """A 2xx streamed answer being read. Iterating ``chunks`` yields its bytes as they arrive and
    raises ``WireFailure``: ``lost`` when the connection drops or the body is cut off,
    ``deadline`` when no byte came for the idle limit."""

    status: int
    headers: Mapping[str, str]  # case-insensitive
    chunks: AsyncIterator[bytes]


def is_event_stream(status: int, headers: Mapping[str, str]) -> bool:
    """A 2xx answer sent as server-sent events (anything else is read whole)."""
    content_type = headers.get("content-type") or ""
    return 200 <= status < 300 and content_type.lower().startswith("text/event-stream")


#: the row error each kind of wire failure becomes
WIRE_ERROR_TYPES: dict[str, type[TransportError | ResponseError]] = {
    "connect": ConnectError,
    "deadline": DeadlineError,
    "lost": ConnectionLostError,
    "protocol": ResponseError,
}


class WireFailure(Exception):
    """No HTTP answer arrived. ``kind`` is connect | deadline | lost | protocol."""

    def __init__(self, kind: str, message: str, possibly_billed: bool):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.possibly_billed = possibly_billed

    @property
    def error_type(self) -> type[TransportError | ResponseError]:
        return WIRE_ERROR_TYPES[self.kind]


if sys.version_info >= (3, 11):
    _deadline = asyncio.timeout
else:  # pragma: no cover - Python 3.10
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def _deadline(seconds: float):
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        fired = False

        def fire():
            nonlocal fired
            fired = True
            task.cancel()

        handle = loop.call_later(seconds, fire)
        try:
            yield
        except asyncio.CancelledError:
            if fired:
                raise TimeoutError from None
            raise
        finally:
            handle.cancel()


class _Wire(abc.ABC):
    """``post`` a JSON body, ``get`` a download; subclasses implement ``_request``."""

    # post, get and request hand back ``_request``'s coroutine rather than awaiting it in one
    # of their own: a coroutine level less to resume at every wait of every request

    def post(self, url: str, body: bytes, headers: Mapping[str, str],
             deadline: float) -> Awaitable[WireResponse]:
        return self._request("POST", url, body, headers, deadline, MAX_BODY_BYTES)

    def get(self, url: str, deadline: float, max_bytes: int,
            headers: Mapping[str, str] | None = None) -> Awaitable[WireResponse]:
        return self._request("GET", url, None, headers or {}, deadline, max_bytes)

    def request(self, method: str, url: str, body: bytes | None,
                headers: Mapping[str, str], deadline: float,
                max_bytes: int = MAX_BODY_BYTES) -> Awaitable[WireResponse]:
        """Any method (the Batch API clients PUT objects and GET with credentials)."""
        return self._request(method, url, body, headers, deadline, max_bytes)

    @asynccontextmanager
    async def stream(self, url: str, body: bytes, headers: Mapping[str, str], deadline: float,
                     idle: float) -> AsyncIterator[WireResponse | WireStream]:
        """POST a streamed request. Yields a ``WireStream`` for a 2xx event stream, else the
        whole answer as a ``WireResponse``. ``deadline`` bounds everything done inside the block
        (reading and assembling alike); ``idle`` bounds each wait for the next bytes, the wait
        for the answer's headers included."""
        try:
            async with _deadline(deadline):
                async with self._open_stream(url, body, headers, deadline, idle) as opened:
                    yield opened
        except TimeoutError:  # only the whole-attempt deadline gets here: the rest is translated
            raise WireFailure("deadline", f"no complete answer within {deadline:g} s", True) from None

    @abc.abstractmethod
    async def _request(self, method, url, body, headers, deadline, max_bytes) -> WireResponse:
        """Send one request and read the whole answer under ``deadline`` seconds."""

    @abc.abstractmethod
    def _open_stream(self, url, body, headers, deadline, idle):
        """An async context manager: send a streamed request, yield what ``stream`` yields."""


class AiohttpWire(_Wire):
    name = "aiohttp"

    def __init__(self, pool_size: int, *, connect_timeout: float = 15.0):
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self._session: Any = None
        self._timeouts: dict[float, Any] = {}

    def _get_session(self):
        if self._session is None:
            import aiohttp

            connector = aiohttp.TCPConnector(
                limit=self.pool_size, limit_per_host=0, ttl_dns_cache=300,
                keepalive_timeout=15,  # below common server idle timeouts: fewer idle-close races
                enable_cleanup_closed=sys.version_info < (3, 12, 7),
            )
            self._session = aiohttp.ClientSession(
                # trust_env makes aiohttp read netrc in a worker thread on every request: only
                # pay for it when a proxy is configured
                connector=connector, auto_decompress=True, trust_env=_proxy_configured(),
                skip_auto_headers=("User-Agent",),
                headers={"User-Agent": "batchmagic"},
            )
        return self._session

    def _timeout(self, deadline: float, idle: float | None = None):
        t = self._timeouts.get((deadline, idle))
        if t is None:
            import aiohttp

            if idle is None:  # a whole answer: aiohttp keeps the deadline
                t = aiohttp.ClientTimeout(total=deadline, connect=min(deadline, self.connect_timeout))
            else:  # a stream: the caller keeps the deadline, aiohttp times each silence
                t = aiohttp.ClientTimeout(total=None, connect=min(deadline, self.connect_timeout),
                                          sock_read=idle)
            self._timeouts[(deadline, idle)] = t
        return t

    async def _request(self, method, url, body, headers, deadline, max_bytes) -> WireResponse:
        session = self._get_session()
        with _aiohttp_failures(deadline):
            async with session.request(method, url, data=body, headers=headers,
                                       timeout=self._timeout(deadline), allow_redirects=False) as resp:
                return await _aiohttp_whole(resp, max_bytes)

    @asynccontextmanager
    async def _open_stream(self, url, body, headers, deadline, idle):
        session = self._get_session()
        with _aiohttp_failures(deadline, idle):
            resp = await session.request("POST", url, data=body, headers=headers,
                                         timeout=self._timeout(deadline, idle),
                                         allow_redirects=False)
        async with resp:
            if not is_event_stream(resp.status, resp.headers):
                with _aiohttp_failures(deadline, idle):
                    whole = await _aiohttp_whole(resp, MAX_BODY_BYTES)
                yield whole
                return
            chunks = _aiohttp_chunks(resp.content, idle)
            try:
                yield WireStream(resp.status, resp.headers, chunks)
            finally:
                await chunks.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


async def _aiohttp_whole(resp: Any, max_bytes: int) -> WireResponse:
    import aiohttp

    status = resp.status
    length = resp.content_length
    if length is not None and length > max_bytes:
        return WireResponse(status, resp.headers, None,
                            f"the answer is {length:,} bytes, over the {max_bytes:,} cap")
    try:
        data = await _read_whole(resp.content, max_bytes)
    except aiohttp.ClientPayloadError as exc:
        return WireResponse(status, resp.headers, None, f"the answer body was cut off ({_short(exc)})")
    if data is None:
        return WireResponse(status, resp.headers, None, f"the answer is over the {max_bytes:,} byte cap")
    return WireResponse(status, resp.headers, data)


async def _aiohttp_chunks(content: Any, idle: float) -> AsyncIterator[bytes]:
    """An aiohttp body's bytes as they arrive; a clean end of the body ends the iteration."""
    import aiohttp

    while True:
        try:
            chunk = await content.readany()
        except aiohttp.ServerTimeoutError:
            raise WireFailure("deadline", _quiet(idle), True) from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError) as exc:
            raise WireFailure("lost", f"the stream was cut off ({_short(exc)})", True) from None
        except aiohttp.ClientError as exc:
            raise WireFailure("protocol", f"{type(exc).__name__}: {_short(exc)}", True) from None
        if not chunk:  # EOF: aiohttp has checked the framing
            return
        yield chunk


class _aiohttp_failures:  # noqa: N801  (used as a function: ``with _aiohttp_failures(...)``)
    """aiohttp's exceptions, translated (never chained: they can hold the request). A class,
    not a generator context manager: it is entered once per request."""

    __slots__ = ("deadline", "idle")

    def __init__(self, deadline: float, idle: float | None = None):
        self.deadline, self.idle = deadline, idle

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, Exception):
            failure = _aiohttp_failure(exc, self.deadline, self.idle)
            if failure is not None:
                raise failure from None


def _aiohttp_failure(exc: Exception, deadline: float, idle: float | None) -> WireFailure | None:
    """The ``WireFailure`` an aiohttp (or timeout) exception stands for; None for any other."""
    import aiohttp

    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return WireFailure("connect", "timed out connecting", False)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return WireFailure("connect", f"could not connect: {_short(exc.os_error)}", False)
    if isinstance(exc, aiohttp.ServerTimeoutError):  # a read went quiet for the idle limit
        return WireFailure("deadline", _quiet(idle), True)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return WireFailure("deadline", f"no complete answer within {deadline:g} s", True)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return WireFailure("lost", "the server closed the connection without answering", True)
    if isinstance(exc, aiohttp.ClientOSError):
        return WireFailure("lost", f"the connection failed: {_short(exc)}", True)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return WireFailure("protocol", f"the answer body was cut off ({_short(exc)})", True)
    if isinstance(exc, aiohttp.ClientResponseError):
        return WireFailure("protocol", f"malformed HTTP answer: {exc.message}", True)
    if isinstance(exc, aiohttp.InvalidURL):
        return WireFailure("connect", "invalid URL", False)
    if isinstance(exc, aiohttp.ClientError):
        return WireFailure("protocol", f"{type(exc).__name__}: {_short(exc)}", True)
    return None


def _quiet(idle: float | None) -> str:
    if idle is None:
        return "the server stopped sending"
    return f"the server sent nothing for {idle:g} s"


class HttpxWire(_Wire):
    """The httpx API. ``module`` is ``httpx`` or ``httpx2``; ``transport`` any of its transports."""

    def __init__(self, pool_size: int, *, module: Any = None, transport: Any = None,
                 connect_timeout: float = 15.0):
        if module is None:
            import httpx as module  # noqa: N813
        self.mod = module
        self.name = module.__name__
        self.pool_size = pool_size
        self.transport = transport
        self.connect_timeout = connect_timeout
        self._client: Any = None

    def _get_client(self):
        if self._client is None:
            mod = self.mod
            self._client = mod.AsyncClient(
                transport=self.transport,
                limits=mod.Limits(max_connections=self.pool_size,
                                  max_keepalive_connections=self.pool_size),
                timeout=mod.Timeout(None, connect=self.connect_timeout),
                headers={"User-Agent": "batchmagic"},
                follow_redirects=False,
            )
        return self._client

    async def _request(self, method, url, body, headers, deadline, max_bytes) -> WireResponse:
        client = self._get_client()
        try:
            async with _deadline(deadline):
                with _httpx_failures(self.mod):
                    request = client.build_request(method, url, content=body, headers=headers)
                    resp = await client.send(request, stream=True)
                    try:
                        return await _httpx_whole(self.mod, resp, max_bytes)
                    finally:
                        await resp.aclose()
        except TimeoutError:
            raise WireFailure("deadline", f"no complete answer within {deadline:g} s", True) from None

    @asynccontextmanager
    async def _open_stream(self, url, body, headers, deadline, idle):
        mod = self.mod
        client = self._get_client()
        # httpx's read timeout is per read: exactly the idle limit (the caller keeps the deadline)
        timeout = mod.Timeout(None, connect=min(deadline, self.connect_timeout), read=idle)
        with _httpx_failures(mod, idle):
            request = client.build_request("POST", url, content=body, headers=headers,
                                           timeout=timeout)
            resp = await client.send(request, stream=True)
        try:
            if not is_event_stream(resp.status_code, resp.headers):
                with _httpx_failures(mod, idle):
                    whole = await _httpx_whole(mod, resp, MAX_BODY_BYTES)
                yield whole
                return
            chunks = _httpx_chunks(mod, resp, idle)
            try:
                yield WireStream(resp.status_code, resp.headers, chunks)
            finally:
                await chunks.aclose()
        finally:
            await resp.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


async def _httpx_whole(mod: Any, resp: Any, max_bytes: int) -> WireResponse:
    length = resp.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        return WireResponse(resp.status_code, resp.headers, None,
                            f"the answer is {int(length):,} bytes, over the cap")
    chunks, size = [], 0
    try:
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                return WireResponse(resp.status_code, resp.headers, None,
                                    f"the answer is over the {max_bytes:,} byte cap")
            chunks.append(chunk)
    except (mod.RemoteProtocolError, mod.ReadError) as exc:
        return WireResponse(resp.status_code, resp.headers, None,
                            f"the answer body was cut off ({_short(exc)})")
    return WireResponse(resp.status_code, resp.headers, b"".join(chunks))


async def _httpx_chunks(mod: Any, resp: Any, idle: float) -> AsyncIterator[bytes]:
    """An httpx body's bytes as they arrive; a clean end of the body ends the iteration."""
    stream = resp.aiter_bytes()
    try:
        while True:
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                return
            except mod.ReadTimeout:
                raise WireFailure("deadline", _quiet(idle), True) from None
            except (mod.RemoteProtocolError, mod.ReadError) as exc:
                raise WireFailure("lost", f"the stream was cut off ({_short(exc)})", True) from None
            except mod.HTTPError as exc:
                raise WireFailure("protocol", f"{type(exc).__name__}: {_short(exc)}", True) from None
            if chunk:
                yield chunk
    finally:
        await stream.aclose()


@contextmanager
def _httpx_failures(mod: Any, idle: float | None = None) -> Iterator[None]:
    """httpx's (or httpx2's) exceptions, translated (never chained: they hold the request)."""
    try:
        yield
    except (mod.ConnectError, mod.ConnectTimeout) as exc:
        raise WireFailure("connect", f"could not connect: {_short(exc)}", False) from None
    except mod.PoolTimeout:
        raise WireFailure("connect", "no free connection in the pool", False) from None
    except mod.ReadTimeout:
        raise WireFailure("deadline", _quiet(idle) if idle is not None
                          else "timed out waiting for the answer", True) from None
    except mod.TimeoutException:
        raise WireFailure("deadline", "timed out waiting for the answer", True) from None
    except mod.WriteError as exc:
        raise WireFailure("lost", f"the connection failed while sending: {_short(exc)}", True) from None
    except (mod.RemoteProtocolError, mod.ReadError) as exc:
        raise WireFailure("lost", f"the connection dropped: {_short(exc)}", True) from None
    except mod.UnsupportedProtocol:
        raise WireFailure("connect", "unsupported URL scheme", False) from None
    except mod.HTTPError as exc:
        raise WireFailure("protocol", f"{type(exc).__name__}: {_short(exc)}", True) from None


async def _read_whole(stream: Any, max_bytes: int) -> bytes | None:
    """Read an aiohttp body to its end (Content-Length or chunked), or None past ``max_bytes``.

    ``StreamReader.read(n)`` returns whatever has arrived, which for a chunked answer is often
    only its first chunk: reading to EOF is the only way to know the body is whole. A body that
    ends early raises ``ClientPayloadError`` (aiohttp checks Content-Length and the final chunk).
    ``at_eof()`` says the same as an empty read without one more await per answer: aiohttp
    marks a body's end only once its framing checked out.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await stream.read(1 << 16)
        if not chunk:  # EOF: aiohttp has checked the framing
            break
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
        if stream.at_eof():
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _proxy_configured() -> bool:
    import os

    return any(os.environ.get(name) for name in
               ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"))


def _short(exc: object) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]


def make_wire(http: str, pool_size: int, transport: Any = None):
    """The wire for ``http=`` ("aiohttp", "httpx", "httpx2"); a transport forces httpx."""
    if transport is not None:
        module = None
        if http == "httpx2":
            import httpx2 as module  # noqa: N813
        return HttpxWire(pool_size, module=module, transport=transport)
    if http == "aiohttp":
        return AiohttpWire(pool_size)
    if http == "httpx":
        return HttpxWire(pool_size)
    if http == "httpx2":
        try:
            import httpx2
        except ImportError:
            from .._errors import ConfigError

            raise ConfigError("http='httpx2' needs the httpx2 package: pip install httpx2") from None
        return HttpxWire(pool_size, module=httpx2)
    from .._errors import ConfigError

    raise ConfigError(f"http must be 'aiohttp', 'httpx' or 'httpx2'; got {http!r}")
