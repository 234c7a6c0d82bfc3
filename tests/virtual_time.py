"""Virtual time for tests of the limits and the dispatcher: a clock that moves only when told to,
and a real asyncio event loop that runs on it.

``VirtualClock`` is what the limits and the dispatcher take as ``clock=``. ``run_virtual`` runs a
coroutine on a selector event loop whose ``time()`` is that clock: when every task is waiting on a
timer (``asyncio.sleep``, ``call_later``, ``wait_for``), the clock jumps straight to the next timer
instead of sleeping. So a test can say "the retry started 0.3 s after the 429" to the microsecond
(each reading of the clock adds a hundredth of a nanosecond, see ``VirtualTimeLoop``), takes no
wall time for it, and cannot be made late by a loaded machine; and everything that could happen
before a timer fires has happened before the clock moves, so "nothing started during the pause"
is checked exactly too.

Only for code that waits on timers and other tasks: real I/O (sockets, threads) has no virtual
duration, and the clock would jump past it while it is pending.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class VirtualClock:
    """Seconds that pass only through ``advance``. It starts far from zero, as a monotonic clock
    does, so no "never happened" default of 0.0 looks like a moment ago."""

    def __init__(self, start: float = 1000.0) -> None:
        self.start = start
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "time does not run backwards"
        self.now += seconds

    def elapsed(self) -> float:
        """Seconds since the clock was made: what a test compares."""
        return self.now - self.start


class _JumpingSelector(selectors.DefaultSelector):
    """Instead of blocking until the loop's next timer, move the clock to it."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None):
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer pending: only a real event (another thread) can come
            return super().select(None)
        self._clock.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """Each reading of the loop's clock is a little later than the one before, as on a real
    clock: timers set one after another fire in that order (equal deadlines would fire in
    whatever order the timer heap gives), and a wait that is only a rounding residue (1e-13 s on
    a clock near 1000) ends instead of coming due again and again."""

    TICK = 1e-11  # far below anything a test asserts, far above the clock's rounding

    def __init__(self, clock: VirtualClock) -> None:
        self._virtual_clock = clock
        super().__init__(selector=_JumpingSelector(clock))

    def time(self) -> float:
        self._virtual_clock.advance(self.TICK)
        return self._virtual_clock()


def run_virtual(main: Callable[[VirtualClock], Awaitable[T]], clock: VirtualClock | None = None) -> T:
    """``asyncio.run`` on virtual time: ``main(clock)`` is awaited on a loop that runs on ``clock``."""
    clock = clock or VirtualClock()
    loop = VirtualTimeLoop(clock)
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main(clock))
    finally:
        try:
            _cancel_leftovers(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """As ``asyncio.run`` does: tasks still pending at the end are cancelled and awaited."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
