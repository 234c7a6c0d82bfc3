"""Rate limits and adaptive concurrency.

* ``TokenBucket``: a continuously refilled bucket (requests or tokens per second) with a burst size.
* ``RateGate``: the run-wide gate every request passes: the RPM and TPM buckets plus a run-wide
  pause set by ``Retry-After``. Waiters queue in order and each sleeps for the exact time it
  needs; nothing polls.
* ``RateProbe``: the request rate to keep when a provider throttles without saying its limit (no
  ``x-ratelimit-*`` headers): multiplicative decrease on a 429, exponential growth while answers
  succeed, the same AIMD idea as the window but in requests per second.
* ``Window``: the number of requests allowed in flight, adjusted AIMD-style: slow start, additive
  increase per success, multiplicative decrease on 429 / 503 / overload or a latency blow-up,
  at most once per round trip.
* header parsing: ``Retry-After`` (seconds or HTTP date), ``retry-after-ms``, ``x-ratelimit-*``.

Every class takes ``clock`` (default ``time.monotonic``) so tests can move time by hand. The gate
and the window wait on the event loop (``asyncio.sleep``, futures), so a test that moves time runs
the loop on the same clock.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# -- headers -------------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str | None) -> float | None:
    """OpenAI's reset format ("1s", "6m0s", "120ms", "1h2m3.5s") or plain seconds, in seconds."""
    if not text:
        return None
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total, pos = 0.0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        pos = m.end()
        value, unit = float(m.group(1)), m.group(2)
        total += value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    return total if pos == len(text) and pos else None


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            seconds = float(ms) / 1000.0
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds):
            return max(0.0, seconds)
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "NaN" and "inf" parse as floats but say nothing usable
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


@dataclass(slots=True)
class RateInfo:
    """What ``x-ratelimit-*`` headers say. OpenAI's limits are per minute."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateInfo | None:
        if "x-ratelimit-limit-requests" not in headers and "x-ratelimit-limit-tokens" not in headers:
            return None
        return cls(
            _int(headers, "x-ratelimit-limit-requests"),
            _int(headers, "x-ratelimit-remaining-requests"),
            parse_duration(headers.get("x-ratelimit-reset-requests")),
            _int(headers, "x-ratelimit-limit-tokens"),
            _int(headers, "x-ratelimit-remaining-tokens"),
            parse_duration(headers.get("x-ratelimit-reset-tokens")),
        )


# -- buckets and the gate --------------------------------------------------------------------------


class TokenBucket:
    """``rate`` units per second, holding at most ``capacity``; may go negative after a refund
    correction so that an under-estimate is paid back by waiting."""

    __slots__ = ("rate", "capacity", "level", "stamp", "clock")

    def __init__(self, rate: float, capacity: float | None = None, *, full: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self.rate = float(rate)
        self.capacity = float(capacity if capacity is not None else max(1.0, rate))
        self.level = self.capacity if full else 0.0
        self.clock = clock
        self.stamp = clock()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_time(self, amount: float, now: float) -> float:
        self._refill(now)
        need = min(amount, self.capacity)  # a request bigger than the bucket waits for a full one
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)

    def set_rate(self, rate: float, capacity: float | None = None) -> None:
        self._refill(self.clock())
        self.rate = float(rate)
        self.capacity = float(capacity if capacity is not None else max(1.0, rate))
        self.level = min(self.level, self.capacity)


class RateGate:
    """Requests per minute, tokens per minute and a run-wide pause, for one run."""

    def __init__(self, rpm: float | None, tpm: float | None, *, burst_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.burst = burst_seconds
        self.clock = clock
        self.user_rpm, self.user_tpm = rpm, tpm
        self.requests = self._bucket(rpm)
        self.tokens = self._bucket(tpm)
        self.pause_until = 0.0
        self.waits = 0  # how many times a request had to wait for the gate
        self.headers_seen = False  # the provider states its limits: no need to probe for them
        # probing only when nobody gave or stated a request limit
        self.probe: RateProbe | None = RateProbe(clock) if rpm is None else None
        self._lock = asyncio.Lock()

    def _bucket(self, per_minute: float | None) -> TokenBucket | None:
        if not per_minute:
            return None
        rate = per_minute / 60.0
        return TokenBucket(rate, max(1.0, rate * self.burst), clock=self.clock)

    @property
    def rpm(self) -> float | None:
        return self.requests.rate * 60 if self.requests else None

    @property
    def tpm(self) -> float | None:
        return self.tokens.rate * 60 if self.tokens else None

    def _wait_time(self, tokens: float, now: float) -> float:
        wait = self.pause_until - now
        if self.requests is not None:
            wait = max(wait, self.requests.wait_time(1, now))
        if self.tokens is not None and tokens:
            wait = max(wait, self.tokens.wait_time(tokens, now))
        return wait

    def free(self) -> bool:
        """No limit and no pause: a request may go now without ``acquire`` (the common case,
        checked without making a coroutine per request)."""
        return self.requests is None and self.tokens is None and not self._lock.locked() \
            and self.pause_until <= self.clock()

    async def acquire(self, tokens: float) -> None:
        if self.free():
            return
        async with self._lock:  # FIFO: the head of the queue sleeps exactly as long as it must
            while True:
                now = self.clock()
                wait = self._wait_time(tokens, now)
                if wait <= 0:
                    break
                self.waits += 1
                await asyncio.sleep(wait)
            if self.requests is not None:
                self.requests.take(1)
            if self.tokens is not None and tokens:
                self.tokens.take(tokens)

    def settle_tokens(self, charged: float, actual: float) -> None:
        """Correct a TPM charge with the real usage (refund, or pay the difference)."""
        if self.tokens is not None and charged:
            self.tokens.level = min(self.tokens.capacity, self.tokens.level + charged - actual)

    def pause_for(self, seconds: float) -> None:
        self.pause_until = max(self.pause_until, self.clock() + seconds)

    def learn(self, info: RateInfo) -> None:
        """Seed or follow the provider's limits when the user gave none."""
        self.headers_seen = True
        self.probe = None  # stated limits beat guessed ones
        if self.user_rpm is None and info.limit_requests:
            self._follow("requests", info.limit_requests)
        if self.user_tpm is None and info.limit_tokens:
            self._follow("tokens", info.limit_tokens)

    def answered(self) -> None:
        """A request succeeded: a probed rate may grow."""
        if self.probe is not None:
            rate = self.probe.success()
            if rate is not None:
                self._set_probed(rate)

    def throttled(self) -> None:
        """A 429 without limit headers: start or tighten the probed request rate."""
        if self.probe is not None:
            rate = self.probe.throttled()
            if rate is not None:
                self._set_probed(rate)

    def _set_probed(self, rate: float) -> None:
        capacity = max(1.0, rate * self.burst)
        if self.requests is None:
            self.requests = TokenBucket(rate, capacity, full=False, clock=self.clock)
        elif abs(self.requests.rate - rate) > 1e-9:
            self.requests.set_rate(rate, capacity)

    def _follow(self, which: str, per_minute: int) -> None:
        bucket = getattr(self, which)
        rate = per_minute / 60.0
        if bucket is None:
            setattr(self, which, TokenBucket(rate, max(1.0, rate * self.burst), full=False,
                                             clock=self.clock))
        elif abs(bucket.rate - rate) > 1e-9:
            bucket.set_rate(rate, max(1.0, rate * self.burst))


class RateProbe:
    """Find a request rate the provider accepts when it throttles without stating its limit.

    The dispatcher calls ``throttled`` only when throttling is general (a tenth of recent
    answers), never for a stray 429. The first call sets the rate to the pace that was
    succeeding just before (answers in the last second, or since the run started when that is
    shorter; with none yet there is nothing to start from, and the rows only back off); each later one cuts it by
    ``DECREASE``, at most once a second (requests already in flight when a cut happens carry no
    news). Every success adds ``GROWTH`` requests per second, and successes arrive at about the
    rate, so the rate grows about 10% a second: back to the limit within 4 s of a cut.
    """

    DECREASE = 0.7
    GROWTH = 0.1
    FLOOR = 0.1  # requests per second: even a very tight limit gets some traffic
    WINDOW = 1.0  # seconds of recent answers that say what pace was succeeding
    MIN_SPAN = 0.5  # a burst in the first moments says little about the sustained pace

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.born = clock()
        self.rate: float | None = None  # None until the first 429
        self._recent: collections.deque[float] = collections.deque(maxlen=4096)
        self._last_cut = -math.inf

    def success(self) -> float | None:
        now = self.clock()
        if self.rate is None:
            self._recent.append(now)
            return None
        self.rate += self.GROWTH
        return self.rate

    def throttled(self) -> float | None:
        now = self.clock()
        if self.rate is None:
            recent = self._recent
            while recent and recent[0] < now - self.WINDOW:
                recent.popleft()
            if not recent:  # no pace has succeeded yet: nothing to start from; back off only
                return None
            # a run throttled in its first second has had less than a second to succeed in
            span = min(self.WINDOW, max(self.MIN_SPAN, now - self.born))
            self.rate = max(self.FLOOR, len(recent) / span)
            self._recent.clear()
            self._last_cut = now
        elif now - self._last_cut >= self.WINDOW:
            self.rate = max(self.FLOOR, self.rate * self.DECREASE)
            self._last_cut = now
        return self.rate


# -- adaptive concurrency ------------------------------------------------------------------------


class Window:
    """How many requests may be in flight. ``adaptive`` turns AIMD on; ``maximum`` is the pool."""

    def __init__(self, start: int, maximum: int, *, adaptive: bool,
                 clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.maximum = max(1, maximum)
        self.limit = float(min(max(1, start), self.maximum))
        self.adaptive = adaptive
        self.ssthresh = float(self.maximum)
        self.active = 0
        self.cuts = 0
        self._last_cut = 0.0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._lat_fast = 0.0  # EWMA of latency over ~10 answers
        self._lat_base = math.inf  # the lowest smoothed latency seen: the uncongested round trip

    @property
    def current(self) -> int:
        return max(1, int(self.limit))

    def try_acquire(self) -> bool:
        """Take a slot if one is free now (no coroutine made per request when it is)."""
        if self.active < self.current and not self._waiters:
            self.active += 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # it was handed a slot just as it was cancelled
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.active < self.current:
            fut = self._waiters.popleft()
            if not fut.done():
                self.active += 1
                fut.set_result(None)

    def on_success(self, latency: float) -> None:
        if not self.adaptive:
            return
        if self._lat_fast == 0.0:
            self._lat_fast = latency
        else:
            self._lat_fast += 0.1 * (latency - self._lat_fast)
        self._lat_base = min(self._lat_base, self._lat_fast)
        if self.ssthresh < self.maximum and \
                self.clock() - self._last_cut > max(1.0, 10.0 * self._lat_fast):
            self.ssthresh = float(self.maximum)  # quiet for a while: an isolated signal, grow fast again
        if self.limit < self.ssthresh:
            self.limit = min(self.maximum, self.limit + 1.0)  # slow start: doubles per round trip
        else:
            self.limit = min(self.maximum, self.limit + 1.0 / self.limit)
        self._wake()

    def latency_congested(self, sent_at: float) -> bool:
        """Queueing at the server: smoothed latency far above the uncongested round trip."""
        return (self.adaptive and self._lat_base < math.inf and self._lat_base > 0.005
                and self._lat_fast > 3.0 * self._lat_base and self.on_congestion(sent_at, 0.8))

    def on_congestion(self, sent_at: float, factor: float) -> bool:
        """Cut the window, at most once per round trip (only for requests sent after the last cut)."""
        if not self.adaptive or sent_at < self._last_cut:
            return False
        # the failing request has already released its slot: count it as still in flight
        self.limit = max(1.0, min(self.limit, self.active + 1) * factor)
        self.ssthresh = max(2.0, self.limit)
        self._last_cut = self.clock()
        self.cuts += 1
        return True
