"""Serving: bind the application, announce readiness, stop cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable

from aiohttp import web

from ._config import SimConfig, is_loopback
from ._routes import SimServer

READY_PREFIX = "batchmagic simulator listening on "
#: seconds in-flight requests (e.g. a ``hang`` fault) get to finish when the server stops
SHUTDOWN_TIMEOUT = 0.5


def check_host(cfg: SimConfig) -> None:
    if not cfg.allow_remote and not is_loopback(cfg.host):
        raise ValueError(
            f"refusing to bind non-loopback host {cfg.host!r}: pass --allow-remote "
            "(allow_remote=True) to expose the simulator on the network")


def _base_url(addresses: list) -> str:
    host, port = addresses[0][0], addresses[0][1]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/v1"


async def serve(
    cfg: SimConfig,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``cfg`` until ``stop`` is set (or the task is cancelled).

    ``on_ready`` receives the base URL (``http://127.0.0.1:<port>/v1``) once listening.
    """
    check_host(cfg)
    # No access log (speed, and no header ever reaches a log); handlers whose client left are
    # cancelled (see SimServer).
    server = SimServer(cfg)
    runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    server.state.start_schedule()
    try:
        site = web.TCPSite(runner, cfg.host, cfg.port, backlog=4096, reuse_address=True)
        await site.start()
        url = _base_url(runner.addresses)
        if on_ready is not None:
            on_ready(url)
        if stop is None:
            stop = asyncio.Event()
        await stop.wait()
    finally:
        await runner.cleanup()
        await server.state.close()


def run_server(
    cfg: SimConfig,
    *,
    ready_file: str | None = None,
    announce: bool = True,
    exit_with_stdin: bool = False,
) -> None:
    """Blocking serve until SIGINT/SIGTERM; prints the ready line and writes ``ready_file``.
    With ``exit_with_stdin`` it also stops when stdin closes: a parent holding the other end of
    the pipe closes it when it exits, even when it is killed, so the server never outlives it."""

    def ready(url: str) -> None:
        if ready_file:
            tmp = f"{ready_file}.tmp{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(url + "\n")
            os.replace(tmp, ready_file)  # atomic: a watcher never reads half a URL
        if announce:
            sys.stdout.write(f"{READY_PREFIX}{url}\n")
            sys.stdout.flush()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        if exit_with_stdin:
            _stop_at_stdin_eof(loop, stop)
        await serve(cfg, on_ready=ready, stop=stop)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def _stop_at_stdin_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set ``stop`` once stdin reaches end of file (read on a daemon thread: portable)."""

    def watch() -> None:
        # os.read on the raw descriptor: a daemon thread blocked inside sys.stdin's buffered
        # reader would abort the interpreter at exit (it holds the buffer's lock)
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch, name="batchmagic-sim-parent-watch", daemon=True).start()
