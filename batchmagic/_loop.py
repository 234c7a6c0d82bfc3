"""The private event loop on a daemon thread (the way IPython's ``%%script`` runs async work).

The kernel's own loop is never patched: sync callers hand a coroutine to this loop and wait on a
``concurrent.futures.Future`` (an interruptible wait), async callers await a wrapped future.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid: int | None = None

#: seconds a foreground run gets to wind down after Ctrl-C / a kernel interrupt
INTERRUPT_GRACE = 3.0


def get_loop() -> asyncio.AbstractEventLoop:
    global _loop, _pid
    with _lock:
        if _loop is None or _pid != os.getpid() or _loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=serve, name="batchmagic-loop", daemon=True).start()
            ready.wait()
            _loop, _pid = loop, os.getpid()
        return _loop


def submit(coro: Coroutine) -> concurrent.futures.Future:
    return asyncio.run_coroutine_threadsafe(coro, get_loop())


def wait_for(coro: Coroutine, timeout: float | None) -> Any:
    """Run ``coro`` on the loop and wait for its result; an interrupt or a timeout cancels it."""
    fut = submit(coro)
    try:
        return fut.result(timeout)
    except (concurrent.futures.TimeoutError, KeyboardInterrupt):
        fut.cancel()
        raise


def call(fn: Callable, *args: Any) -> None:
    """Run ``fn(*args)`` on the loop thread (thread-safe control: cancel, pause, resume)."""
    loop = get_loop()
    if _on_loop_thread():
        fn(*args)
    else:
        loop.call_soon_threadsafe(fn, *args)


def _on_loop_thread() -> bool:
    try:
        return asyncio.get_running_loop() is _loop
    except RuntimeError:
        return False


def run_sync(coro: Coroutine, on_interrupt: Callable[[], None]) -> Any:
    """Run ``coro`` on the private loop and wait for it. On KeyboardInterrupt, ``on_interrupt``
    asks the run to stop; the run's partial result is returned if it arrives within the grace
    period, otherwise the interrupt propagates."""
    if _on_loop_thread():
        coro.close()
        raise RuntimeError("batch() was called on batchmagic's own loop; use 'await abatch(...)'")
    fut = submit(coro)
    try:
        return fut.result()
    except KeyboardInterrupt:
        on_interrupt()
        try:
            return fut.result(timeout=INTERRUPT_GRACE)
        except concurrent.futures.TimeoutError:
            raise KeyboardInterrupt from None
