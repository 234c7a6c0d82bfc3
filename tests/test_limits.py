"""Rate-limit headers, token buckets, the rate gate and the concurrency window."""

from __future__ import annotations

import asyncio
import email.utils
import time

import httpx
import pytest
from virtual_time import VirtualClock, run_virtual

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
    # against the real clock: the wait is the date less the time it was read at
    when = int(time.time()) + 60  # HTTP dates have whole seconds
    header = {"retry-after": email.utils.formatdate(when, usegmt=True)}
    before = time.time()
    wait = parse_retry_after(header)
    after = time.time()
    assert when - after <= wait <= when - before


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


def test_token_bucket_set_rate_refills_at_the_old_rate_first():
    clock = VirtualClock()
    b = TokenBucket(10.0, 10.0, clock=clock)
    b.take(10)
    clock.advance(0.5)  # 5 units earned at the old rate, before the change
    b.set_rate(1.0, 2.0)
    assert b.rate == 1.0 and b.capacity == 2.0
    assert b.level == pytest.approx(2.0)  # the 5 earned, capped at the new capacity
    b.take(2)
    clock.advance(0.5)  # then the new rate: 0.5 units
    assert b.wait_time(1, clock()) == pytest.approx(0.5)


def test_token_bucket_refills_by_its_clock():
    clock = VirtualClock()
    b = TokenBucket(4.0, 2.0, full=False, clock=clock)
    assert b.stamp == clock() and b.level == 0.0
    assert b.wait_time(1, clock()) == pytest.approx(0.25)
    clock.advance(0.25)
    assert b.wait_time(1, clock()) == pytest.approx(0.0, abs=1e-9)


# -- rate gate --------------------------------------------------------------------------------------------
# The gate sleeps on the event loop; on virtual time those sleeps take no wall time and end exactly
# when asked, so the pacing is checked to the millisecond however loaded the machine is.


def _acquisition_times(n: int, tokens: float = 0, **gate_kw) -> tuple[list[float], RateGate]:
    """When each of ``n`` acquisitions in a row got through a new gate, in seconds from the start."""

    async def main(clock):
        gate = RateGate(clock=clock, **gate_kw)
        times = []
        for _ in range(n):
            await gate.acquire(tokens)
            times.append(clock.elapsed())
        return times, gate

    return run_virtual(main)


def test_rate_gate_unlimited_does_not_wait():
    times, gate = _acquisition_times(1000, rpm=None, tpm=None)
    assert times == pytest.approx([0.0] * 1000, abs=1e-6)
    assert gate.rpm is None and gate.tpm is None and gate.waits == 0


def test_rate_gate_rpm_pacing():
    # 600 rpm = 10/s; a burst of 2 (0.2 s) goes at once, the other 5 come 0.1 s apart
    times, gate = _acquisition_times(7, rpm=600, tpm=None, burst_seconds=0.2)
    assert times == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5], abs=1e-6)
    assert gate.rpm == pytest.approx(600)
    assert gate.waits >= 5


def test_rate_gate_default_burst_is_one_second():
    times, _ = _acquisition_times(24, rpm=1200, tpm=None)  # 20/s, burst of 20
    assert times == pytest.approx([0.0] * 20 + [0.05, 0.1, 0.15, 0.2], abs=1e-6)


def test_rate_gate_tpm_pacing():
    # 100 tokens/s, burst 100: three requests of 50 tokens, the third waits for 50 more
    times, _ = _acquisition_times(3, tokens=50, rpm=None, tpm=6000, burst_seconds=1.0)
    assert times == pytest.approx([0.0, 0.0, 0.5], abs=1e-6)


def test_rate_gate_concurrent_waiters_are_fifo_and_paced():
    async def main(clock):
        gate = RateGate(600, None, burst_seconds=0.1, clock=clock)  # capacity 1, 10/s
        passed = []

        async def one(i):
            await gate.acquire(0)
            passed.append((i, clock.elapsed()))

        await asyncio.gather(*(one(i) for i in range(5)))
        return passed

    passed = run_virtual(main)
    assert [i for i, _ in passed] == [0, 1, 2, 3, 4]
    assert [t for _, t in passed] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4], abs=1e-6)


def test_rate_gate_pause_for():
    async def main(clock):
        gate = RateGate(None, None, clock=clock)
        gate.pause_for(0.2)
        gate.pause_for(0.05)  # a shorter pause does not shorten the longer one
        await gate.acquire(0)
        first = clock.elapsed()
        await gate.acquire(0)  # the pause is over: no more waiting
        return first, clock.elapsed(), gate.waits

    first, second, waits = run_virtual(main)
    assert first == pytest.approx(0.2) and second == first
    assert waits == 1


def test_rate_gate_pause_holds_requests_already_queued():
    """A pause set while requests wait for the bucket delays them too, in order."""

    async def main(clock):
        gate = RateGate(600, None, burst_seconds=0.1, clock=clock)  # capacity 1, 10/s
        passed = []

        async def one(i):
            await gate.acquire(0)
            passed.append((i, clock.elapsed()))

        tasks = [asyncio.ensure_future(one(i)) for i in range(3)]
        await asyncio.sleep(0.05)  # the first went through; the second waits until 0.1
        gate.pause_for(1.0)  # a Retry-After of a second arrives
        await asyncio.gather(*tasks)
        return passed

    passed = run_virtual(main)
    assert [i for i, _ in passed] == [0, 1, 2]
    assert [t for _, t in passed] == pytest.approx([0.0, 1.05, 1.15], abs=1e-6)


def test_probed_rate_paces_the_gate_and_grows_with_answers():
    """No stated limit: after general throttling the gate keeps the pace that was succeeding
    (8 answers in the last second: 8/s, starting empty), and each answer adds 0.1/s."""

    async def main(clock):
        gate = RateGate(None, None, clock=clock)
        for _ in range(8):
            clock.advance(0.1)
            gate.answered()
        gate.throttled()
        rate_after_cut = gate.rpm / 60
        start = clock()
        times = []
        for _ in range(3):
            await gate.acquire(0)
            times.append(clock() - start)
        gate.answered()
        return rate_after_cut, times, gate.rpm / 60

    rate, times, grown = run_virtual(main)
    assert rate == pytest.approx(10.0)  # 8 answers in the run's first 0.8 s: 10 a second
    assert times == pytest.approx([1 / 10, 2 / 10, 3 / 10], abs=1e-6)
    assert grown == pytest.approx(10.1)


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
# Waiting for a slot is checked on virtual time: a short virtual sleep lets every ready task run, so
# "the waiter is still waiting" is a fact, not a guess about how fast the machine is.


def test_window_acquire_and_release():
    async def main(clock):
        w = Window(2, 4, adaptive=False, clock=clock)
        await w.acquire()
        await w.acquire()
        assert w.active == 2
        third = asyncio.ensure_future(w.acquire())
        await asyncio.sleep(1)
        assert not third.done()
        w.release()
        await third
        assert w.active == 2
        w.release()
        w.release()
        assert w.active == 0

    run_virtual(main)


def test_window_limits():
    w = Window(0, 5, adaptive=False)
    assert w.current == 1  # never below one
    w = Window(50, 5, adaptive=False)
    assert w.current == 5  # never above the maximum
    w = Window(3, 0, adaptive=True)
    assert w.maximum == 1 and w.current == 1


def test_non_adaptive_window_does_not_move():
    clock = VirtualClock()
    w = Window(3, 10, adaptive=False, clock=clock)
    w.on_success(0.01)
    clock.advance(1)
    assert not w.on_congestion(clock(), 0.5)
    assert w.limit == 3 and w.cuts == 0


def test_adaptive_window_slow_start_and_additive_increase():
    clock = VirtualClock()
    w = Window(2, 100, adaptive=True, clock=clock)
    w.on_success(0.01)  # slow start: +1 per answer (doubles per round trip)
    assert w.limit == 3.0
    w.on_success(0.01)
    assert w.limit == 4.0
    # a congestion signal cuts the window and sets the threshold; growth is then additive
    w.active = 8
    assert w.on_congestion(clock(), 0.5)
    assert w.limit == 2.0
    assert w.ssthresh == 2.0
    w.on_success(0.01)
    assert w.limit == pytest.approx(2.5)  # +1/limit
    w.on_success(0.01)
    assert w.limit == pytest.approx(2.9)
    for _ in range(2000):
        w.on_success(0.01)
    assert 2.9 < w.limit <= 100


def test_window_grows_fast_again_after_a_quiet_spell():
    """After a cut, growth is additive; once no cut has come for max(1 s, 10 latencies), the cut
    was an isolated signal and slow start (+1 per answer) resumes."""
    clock = VirtualClock()
    w = Window(10, 100, adaptive=True, clock=clock)
    w.active = 9
    assert w.on_congestion(clock(), 0.5)
    assert w.limit == 5.0
    clock.advance(0.5)  # not yet quiet for a second
    w.on_success(0.01)
    assert w.limit == pytest.approx(5.2)
    clock.advance(0.6)
    w.on_success(0.01)
    assert w.ssthresh == 100 and w.limit == pytest.approx(6.2)


def test_window_cut_is_once_per_round_trip():
    clock = VirtualClock()
    w = Window(16, 16, adaptive=True, clock=clock)
    w.active = 10
    sent = clock()
    clock.advance(0.2)  # the answer comes back a round trip later: the cut is made then
    assert w.on_congestion(sent, 0.5)
    first = w.limit
    assert first == 5.5  # min(limit, in flight + the failing request) * factor
    assert w.cuts == 1
    clock.advance(0.05)
    assert not w.on_congestion(sent, 0.5)  # sent before the cut: news of the same overload
    assert w.limit == first and w.cuts == 1
    sent_after_cut = clock()
    clock.advance(0.2)
    assert w.on_congestion(sent_after_cut, 0.5)  # sent after the cut: a new signal
    assert w.limit < first and w.cuts == 2


def test_growing_window_wakes_waiters():
    async def main(clock):
        w = Window(1, 4, adaptive=True, clock=clock)
        await w.acquire()
        waiter = asyncio.ensure_future(w.acquire())
        await asyncio.sleep(1)
        assert not waiter.done()
        w.on_success(0.01)  # limit 2: a slot opens without any release
        await waiter
        assert w.active == 2

    run_virtual(main)


def test_shrinking_window_holds_new_acquires_until_enough_release():
    async def main(clock):
        w = Window(4, 4, adaptive=True, clock=clock)
        for _ in range(4):
            await w.acquire()
        assert w.on_congestion(clock(), 0.5)
        assert w.current == 2
        waiter = asyncio.ensure_future(w.acquire())
        w.release()
        w.release()  # 2 in flight: still at the limit
        await asyncio.sleep(1)
        assert not waiter.done()
        w.release()
        await waiter
        assert w.active == 2

    run_virtual(main)


def test_cancelled_waiter_leaves_the_queue():
    async def main(clock):
        w = Window(1, 1, adaptive=False, clock=clock)
        await w.acquire()
        waiter = asyncio.ensure_future(w.acquire())
        await asyncio.sleep(1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        w.release()
        assert w.active == 0
        await w.acquire()  # the slot is free, not leaked
        assert w.active == 1

    run_virtual(main)
