"""Rate-limit headers, token buckets, the rate gate and the concurrency window."""

from __future__ import annotations

import asyncio
import email.utils
import time

import httpx
import pytest

from batchmagic._limits import (
    RateGate,
    RateInfo,
    TokenBucket,
    Window,
    parse_duration,
    parse_retry_after,
)

# -- header parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize("text,seconds", [
    ("1s", 1.0),
    ("6m0s", 360.0),
    ("120ms", 0.12),
    ("1h2m3.5s", 3723.5),
    ("0.5", 0.5),
    ("17", 17.0),
    ("2m", 120.0),
    ("1m30s", 90.0),
    ("  3s ", 3.0),
    ("0s", 0.0),
    ("-5", 0.0),  # plain seconds are clamped at zero
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "garbage", "1x", "s", "1s garbage", "garbage1s", "1 s",
                                  "ms", "1.2.3s", "1s-2s"])
def test_parse_duration_garbage(text):
    assert parse_duration(text) is None


def test_parse_retry_after_seconds_and_ms():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "50"}) == pytest.approx(0.05)
    # retry-after-ms is the more precise and wins
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == pytest.approx(0.25)
    # an unreadable retry-after-ms falls back to retry-after
    assert parse_retry_after({"retry-after-ms": "soon", "retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "-4"}) == 0.0
    assert parse_retry_after({}) is None


def test_parse_retry_after_case_insensitive_headers():
    headers = httpx.Headers({"Retry-After": "7", "X-Other": "1"})
    assert parse_retry_after(headers) == 7.0
    assert parse_retry_after(httpx.Headers({"Retry-After-Ms": "20"})) == pytest.approx(0.02)


def test_parse_retry_after_http_date():
    now = 1_700_000_000.0
    future = email.utils.formatdate(now + 30, usegmt=True)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after({"retry-after": future}, now=now) == pytest.approx(30.0, abs=1.0)
    assert parse_retry_after({"retry-after": past}, now=now) == 0.0
    # against the real clock: a date in the future is a positive wait
    real_future = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= parse_retry_after({"retry-after": real_future}) <= 61


@pytest.mark.parametrize("value", ["garbage", "Wed, 99 Foo 2015", "", "   "])
def test_parse_retry_after_garbage(value):
    assert parse_retry_after({"retry-after": value}) is None


def test_rate_info_from_headers():
    headers = httpx.Headers({
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-tokens": "29000.0",
        "x-ratelimit-reset-tokens": "6m0s",
    })
    info = RateInfo.from_headers(headers)
    assert info == RateInfo(500, 499, pytest.approx(0.12), 30000, 29000, 360.0)


def test_rate_info_partial_and_absent():
    assert RateInfo.from_headers({}) is None
    assert RateInfo.from_headers({"x-ratelimit-remaining-requests": "3"}) is None
    info = RateInfo.from_headers({"x-ratelimit-limit-tokens": "1000", "x-ratelimit-reset-tokens": "?"})
    assert info.limit_tokens == 1000
    assert info.limit_requests is None and info.remaining_requests is None
    assert info.reset_tokens is None
    bad = RateInfo.from_headers({"x-ratelimit-limit-requests": "lots"})
    assert bad is not None and bad.limit_requests is None


# -- token bucket ---------------------------------------------------------------------------------------


def test_token_bucket_wait_time_math():
    b = TokenBucket(10.0, 5.0)  # 10 per second, burst of 5
    t = b.stamp
    assert b.level == 5.0
    assert b.wait_time(1, t) == 0.0
    b.take(5)
    assert b.wait_time(1, t) == pytest.approx(0.1)
    assert b.wait_time(3, t) == pytest.approx(0.3)
    # refills with time, never above capacity
    assert b.wait_time(1, t + 0.1) == pytest.approx(0.0, abs=1e-9)  # t + 0.1 - t is not exactly 0.1
    assert b.level == pytest.approx(1.0)
    assert b.wait_time(1, t + 100) == 0.0
    assert b.level == 5.0
    # asking for more than the bucket holds waits for a full bucket, not forever
    b.take(5)
    assert b.wait_time(50, t + 100) == pytest.approx(0.5)


def test_token_bucket_can_go_negative_and_give_back():
    b = TokenBucket(2.0, 4.0)
    t = b.stamp
    b.take(6)  # an under-estimate paid back by waiting
    assert b.level == -2.0
    assert b.wait_time(1, t) == pytest.approx(1.5)
    b.give_back(10)
    assert b.level == 4.0


def test_token_bucket_empty_start_and_default_capacity():
    b = TokenBucket(0.5, full=False)
    assert b.capacity == 1.0  # at least one unit
    assert b.wait_time(1, b.stamp) == pytest.approx(2.0)


def test_token_bucket_set_rate():
    b = TokenBucket(10.0, 10.0)
    b.set_rate(1.0, 2.0)
    assert b.rate == 1.0 and b.capacity == 2.0 and b.level <= 2.0


# -- rate gate --------------------------------------------------------------------------------------------


def _time_acquisitions(gate: RateGate, n: int, tokens: float = 0) -> float:
    async def main():
        t0 = time.monotonic()
        for _ in range(n):
            await gate.acquire(tokens)
        return time.monotonic() - t0

    return asyncio.run(main())


def test_rate_gate_unlimited_does_not_wait():
    gate = RateGate(None, None)
    assert _time_acquisitions(gate, 1000) < 0.5
    assert gate.rpm is None and gate.tpm is None and gate.waits == 0


def test_rate_gate_rpm_pacing():
    # 600 rpm = 10/s; a burst of 2 (0.2 s) goes at once, the other 5 come 0.1 s apart
    gate = RateGate(600, None, burst_seconds=0.2)
    elapsed = _time_acquisitions(gate, 7)
    assert elapsed == pytest.approx(0.5, abs=0.12)
    assert gate.rpm == pytest.approx(600)
    assert gate.waits >= 5


def test_rate_gate_default_burst_is_one_second():
    gate = RateGate(1200, None)  # 20/s, burst of 20
    elapsed = _time_acquisitions(gate, 24)
    assert elapsed == pytest.approx(0.2, abs=0.1)


def test_rate_gate_tpm_pacing():
    gate = RateGate(None, 6000, burst_seconds=1.0)  # 100 tokens/s, burst 100
    elapsed = _time_acquisitions(gate, 3, tokens=50)  # 150 tokens: 50 beyond the burst
    assert elapsed == pytest.approx(0.5, abs=0.12)


def test_rate_gate_concurrent_waiters_are_fifo_and_paced():
    gate = RateGate(600, None, burst_seconds=0.1)  # capacity 1, 10/s

    async def main():
        order = []
        t0 = time.monotonic()

        async def one(i):
            await gate.acquire(0)
            order.append(i)

        await asyncio.gather(*(one(i) for i in range(5)))
        return order, time.monotonic() - t0

    order, elapsed = asyncio.run(main())
    assert order == [0, 1, 2, 3, 4]
    assert 0.28 <= elapsed < 1.0  # about 0.4 s; a loaded machine only adds to it


def test_rate_gate_pause_for():
    gate = RateGate(None, None)
    gate.pause_for(0.2)
    gate.pause_for(0.05)  # a shorter pause does not shorten the longer one
    elapsed = _time_acquisitions(gate, 1)
    assert 0.17 <= elapsed < 0.5


def test_rate_gate_settle_tokens():
    gate = RateGate(None, 6000)  # capacity 100
    asyncio.run(gate.acquire(80))
    level = gate.tokens.level
    gate.settle_tokens(80, 30)  # charged 80, used 30: refund 50
    assert gate.tokens.level == pytest.approx(min(100, level + 50))
    gate.settle_tokens(10, 60)  # under-estimate: pay 50 more
    assert gate.tokens.level == pytest.approx(min(100, level + 50) - 50)


def test_learn_seeds_limits_from_headers_when_the_user_gave_none():
    gate = RateGate(None, None)
    gate.learn(RateInfo(limit_requests=600, limit_tokens=60_000))
    assert gate.rpm == pytest.approx(600)
    assert gate.tpm == pytest.approx(60_000)
    assert gate.requests.level == 0.0  # seeded empty: the provider's window may be spent already
    # and follows later changes
    gate.learn(RateInfo(limit_requests=1200))
    assert gate.rpm == pytest.approx(1200)


def test_learn_keeps_the_users_limits():
    gate = RateGate(100, 5000)
    gate.learn(RateInfo(limit_requests=600, limit_tokens=60_000))
    assert gate.rpm == pytest.approx(100)
    assert gate.tpm == pytest.approx(5000)


def test_learn_ignores_missing_numbers():
    gate = RateGate(None, None)
    gate.learn(RateInfo())
    gate.learn(RateInfo(limit_requests=0))
    assert gate.rpm is None and gate.tpm is None


def test_learned_rpm_reported_in_attrs():
    from conftest import Server, echo_chat, run

    def answer(req, body):
        resp = echo_chat(req, body)
        resp.headers["x-ratelimit-limit-requests"] = "6000"
        resp.headers["x-ratelimit-limit-tokens"] = "600000"
        return resp

    df = run(["a"], server=Server(answer))
    attrs = df.attrs["batchmagic"]
    assert attrs["learned_rpm"] == pytest.approx(6000)
    assert attrs["learned_tpm"] == pytest.approx(600000)
    df = run(["a"], server=Server(answer), rpm=60)
    assert df.attrs["batchmagic"]["learned_rpm"] == pytest.approx(60)


# -- window -----------------------------------------------------------------------------------------------


def test_window_acquire_and_release():
    async def main():
        w = Window(2, 4, adaptive=False)
        await w.acquire()
        await w.acquire()
        assert w.active == 2
        third = asyncio.ensure_future(w.acquire())
        await asyncio.sleep(0.01)
        assert not third.done()
        w.release()
        await asyncio.wait_for(third, 1)
        assert w.active == 2
        w.release()
        w.release()
        assert w.active == 0

    asyncio.run(main())


def test_window_limits():
    w = Window(0, 5, adaptive=False)
    assert w.current == 1  # never below one
    w = Window(50, 5, adaptive=False)
    assert w.current == 5  # never above the maximum
    w = Window(3, 0, adaptive=True)
    assert w.maximum == 1 and w.current == 1


def test_non_adaptive_window_does_not_move():
    w = Window(3, 10, adaptive=False)
    w.on_success(0.01)
    assert not w.on_congestion(time.monotonic(), 0.5)
    assert w.limit == 3


def test_adaptive_window_slow_start_and_additive_increase():
    w = Window(2, 100, adaptive=True)
    w.on_success(0.01)  # slow start: +1 per answer (doubles per round trip)
    assert w.limit == 3.0
    w.on_success(0.01)
    assert w.limit == 4.0
    # a congestion signal cuts the window and sets the threshold; growth is then additive
    w.active = 8
    assert w.on_congestion(time.monotonic(), 0.5)
    assert w.limit == 2.0
    assert w.ssthresh == 2.0
    w.on_success(0.01)
    assert w.limit == pytest.approx(2.5)  # +1/limit
    w.on_success(0.01)
    assert w.limit == pytest.approx(2.9)
    for _ in range(2000):
        w.on_success(0.01)
    assert 2.9 < w.limit <= 100


def test_growing_window_wakes_waiters():
    async def main():
        w = Window(1, 4, adaptive=True)
        await w.acquire()
        waiter = asyncio.ensure_future(w.acquire())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        w.on_success(0.01)  # limit 2: a slot opens without any release
        await asyncio.wait_for(waiter, 1)
        assert w.active == 2

    asyncio.run(main())


def test_shrinking_window_holds_new_acquires_until_enough_release():
    async def main():
        w = Window(4, 4, adaptive=True)
        for _ in range(4):
            await w.acquire()
        assert w.on_congestion(time.monotonic(), 0.5)
        assert w.current == 2
        waiter = asyncio.ensure_future(w.acquire())
        w.release()
        w.release()  # 2 in flight: still at the limit
        await asyncio.sleep(0.01)
        assert not waiter.done()
        w.release()
        await asyncio.wait_for(waiter, 1)
        assert w.active == 2

    asyncio.run(main())


def test_cancelled_waiter_leaves_the_queue():
    async def main():
        w = Window(1, 1, adaptive=False)
        await w.acquire()
        waiter = asyncio.ensure_future(w.acquire())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        w.release()
        assert w.active == 0
        await asyncio.wait_for(w.acquire(), 1)  # the slot is free, not leaked
        assert w.active == 1

    asyncio.run(main())
