"""Server-side rate limits: OpenAI-style token buckets for requests and tokens per minute."""

from __future__ import annotations

import math
import time
from email.utils import formatdate


class TokenBucket:
    """Refills continuously at ``per_minute / 60`` per second up to ``burst`` seconds' worth.

    Starts full. A request larger than the whole bucket is let through when the bucket is full
    and drives it negative (debt), so a large request is slowed, never refused forever.
    """

    __slots__ = ("per_minute", "rate", "capacity", "level", "stamp")

    def __init__(self, per_minute: float, burst: float, now: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = self.rate * burst
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` can be taken (0 = now); call :meth:`refill` first."""
        need = min(amount, self.capacity)
        if self.level >= need:
            return 0.0
        return (need - self.level) / self.rate

    def until_full(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)

    def set_rate(self, per_minute: float, burst: float, now: float) -> None:
        """Move the limit live, keeping the current level clamped to the new capacity."""
        self.refill(now)
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = self.rate * burst
        self.level = min(self.level, self.capacity)

    def fill(self, now: float) -> None:
        self.level = self.capacity
        self.stamp = now


class RateLimiter:
    """The rpm and tpm buckets of one server (either may be absent = unlimited)."""

    __slots__ = ("requests", "tokens")

    def __init__(self) -> None:
        self.requests: TokenBucket | None = None
        self.tokens: TokenBucket | None = None

    @property
    def active(self) -> bool:
        return self.requests is not None or self.tokens is not None

    def configure(self, rpm: float | None, tpm: float | None, burst: float,
                  now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.requests = _moved(self.requests, rpm, burst, now)
        self.tokens = _moved(self.tokens, tpm, burst, now)

    def refill_all(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for b in (self.requests, self.tokens):
            if b is not None:
                b.fill(now)

    def acquire(self, tokens: int, now: float) -> tuple[str, float] | None:
        """Take one request and ``tokens`` tokens, or return ``(kind, wait_s)`` of the refusal.

        Nothing is taken from either bucket when the request is refused.
        """
        rq, tk = self.requests, self.tokens
        wait_r = wait_t = 0.0
        if rq is not None:
            rq.refill(now)
            wait_r = rq.wait_for(1.0)
        if tk is not None:
            tk.refill(now)
            wait_t = tk.wait_for(tokens)
        if wait_r > 0.0 or wait_t > 0.0:
            if wait_r >= wait_t:
                return "requests", wait_r
            return "tokens", wait_t
        if rq is not None:
            rq.level -= 1.0
        if tk is not None:
            tk.level -= tokens
        return None

    def headers(self, out: dict[str, str]) -> None:
        """Add OpenAI's ``x-ratelimit-*`` headers describing the buckets now."""
        rq, tk = self.requests, self.tokens
        if rq is not None:
            out["x-ratelimit-limit-requests"] = _num(rq.per_minute)
            out["x-ratelimit-remaining-requests"] = str(max(0, math.floor(rq.level)))
            out["x-ratelimit-reset-requests"] = format_duration(rq.until_full())
        if tk is not None:
            out["x-ratelimit-limit-tokens"] = _num(tk.per_minute)
            out["x-ratelimit-remaining-tokens"] = str(max(0, math.floor(tk.level)))
            out["x-ratelimit-reset-tokens"] = format_duration(tk.until_full())


def _moved(bucket: TokenBucket | None, per_minute: float | None, burst: float,
           now: float) -> TokenBucket | None:
    if per_minute is None:
        return None
    if bucket is None:
        return TokenBucket(per_minute, burst, now)
    bucket.set_rate(per_minute, burst, now)
    return bucket


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def format_duration(seconds: float) -> str:
    """OpenAI's reset format (Go durations): ``"120ms"``, ``"1s"``, ``"2.5s"``, ``"6m0s"``."""
    total_ms = math.ceil(seconds * 1000 - 1e-6) if seconds > 0 else 0
    if total_ms <= 0:
        return "0s"
    if total_ms < 1000:
        return f"{total_ms}ms"
    hours, rem = divmod(total_ms, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    secs = f"{rem / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def retry_after_headers(fmt: str, wait: float, out: dict[str, str],
                        verbatim: str | None = None) -> None:
    """Add the retry hint for a wait of ``wait`` seconds in the configured format, or the
    ``verbatim`` text when one is configured (a misbehaving server)."""
    if verbatim is not None:
        out["retry-after"] = verbatim
        return
    if fmt == "none":
        return
    secs = max(1, math.ceil(wait - 1e-9))
    if fmt == "seconds":
        out["retry-after"] = str(secs)
    elif fmt == "ms":
        out["retry-after-ms"] = str(max(1, math.ceil(wait * 1000 - 1e-6)))
        out["retry-after"] = str(secs)
    elif fmt == "http-date":
        # A date has whole-second resolution: round the instant up so it is never too early.
        out["retry-after"] = formatdate(math.ceil(time.time() + wait), usegmt=True)
