"""Retries, error classes, stops, deadlines (through MockTransport) and the scheduler itself
(through a fake backend, with fast backoff)."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest
from conftest import AsyncServer, Server, chat_answer, echo_chat, run
from virtual_time import run_virtual

import batchmagic as bm
from batchmagic._backend import OK, RATE_LIMIT, TRANSIENT, Outcome, Unit
from batchmagic._cost import BudgetGuard, Price
from batchmagic._dispatch import Dispatcher, RetryPolicy
from batchmagic._errors import RateLimitError, RowError, ServerError
from batchmagic._kinds import Parsed
from batchmagic._limits import RateGate, Window
from batchmagic._progress import Progress

# -- through the httpx wire -------------------------------------------------------------------------


def _sequence(*responses):
    """A handler answering with ``responses`` in turn (callables get the request), then echo."""
    queue = list(responses)

    def answer(req, body):
        if queue:
            item = queue.pop(0)
            if isinstance(item, BaseException):
                raise item
            return item
        return echo_chat(req, body)

    return answer


def test_400_is_a_bad_request_error_without_retry():
    s = Server(lambda req, body: httpx.Response(
        400, json={"error": {"message": "temperature must be <= 2", "type": "invalid_request_error",
                             "param": "temperature", "code": None}}))
    df = run(["a"], server=s, retries=3)
    err = df["error"][0]
    assert isinstance(err, bm.BadRequestError)
    assert s.count == 1
    assert err.status == 400 and err.attempts == 1 and not err.possibly_billed
    assert "temperature must be <= 2" in str(err)
    assert err.provider == "test"
    assert df["attempts"][0] == 1


def test_400_context_length_exceeded():
    s = Server(lambda req, body: httpx.Response(400, json={"error": {
        "message": "This model's maximum context length is 8192 tokens.",
        "type": "invalid_request_error", "code": "context_length_exceeded"}}))
    df = run(["a"], server=s, retries=3)
    err = df["error"][0]
    assert isinstance(err, bm.ContextLengthError)
    assert err.code == "context_length_exceeded"
    assert s.count == 1


def test_500_then_200_succeeds_on_the_second_attempt():
    s = Server(_sequence(httpx.Response(500, json={"error": {"message": "boom"}})))
    df = run(["a"], server=s, retries=2)
    assert df["output"][0] == "echo:a"
    assert df["error"][0] is None
    assert df["attempts"][0] == 2
    assert s.count == 2
    assert df.attrs["batchmagic"]["retries"] == 1


def test_500_every_time_is_a_server_error_after_retries():
    s = Server(lambda req, body: httpx.Response(502, text="bad gateway"))
    df = run(["a"], server=s, retries=1)
    err = df["error"][0]
    assert isinstance(err, bm.ServerError)
    assert err.status == 502 and err.attempts == 2
    assert s.count == 2


def test_429_with_retry_after_ms_then_200():
    """The retry waits what retry-after-ms says. The hint (1.2 s) is longer than any backoff a
    first 429 gets without one (0.5 to 1 s), so a gap of at least 1.2 s shows it was read; how
    much longer a loaded machine takes does not matter. (That the hint is honoured exactly, not
    more, is checked on virtual time below.)"""
    arrived: list[float] = []

    def stamped(handler):
        def answer(req, body):
            arrived.append(time.monotonic())
            return handler(req, body)
        return answer

    s = Server(stamped(_sequence(httpx.Response(
        429, json={"error": {"message": "Rate limit reached"}}, headers={"retry-after-ms": "1200"}))))
    df = run(["a"], server=s)
    assert df["output"][0] == "echo:a"
    assert df["attempts"][0] == 2
    assert s.count == 2
    assert df.attrs["batchmagic"]["rate_limited"] == 1
    gap = arrived[1] - arrived[0]
    assert 1.2 <= gap < 12.0, gap  # at least what it was told; the upper bound only catches a hang


def test_401_stops_the_run():
    s = Server(lambda req, body: httpx.Response(401, json={"error": {
        "message": "Incorrect API key provided", "type": "invalid_request_error",
        "code": "invalid_api_key"}}))
    rows = [f"r{i}" for i in range(10)]
    df = run(rows, server=s, concurrency=1, retries=3)
    assert s.count < len(rows)
    assert s.count == 1
    errors = list(df["error"])
    fatal = [e for e in errors if isinstance(e, bm.FatalProviderError)]
    unsent = [e for e in errors if isinstance(e, bm.NotSentError)]
    assert len(fatal) == s.count
    assert len(fatal) + len(unsent) == len(rows)
    for e in unsent:
        assert e.attempts == 0 and not e.possibly_billed
        assert "FatalProviderError" in str(e)
    assert [e.row for e in errors] == list(range(10))
    attrs = df.attrs["batchmagic"]
    assert attrs["stopped_by"] and "Incorrect API key" in attrs["stopped_by"]
    assert attrs["state"] == "aborted"
    assert df["output"].isna().all()


def test_429_insufficient_quota_is_fatal_without_retry():
    s = Server(lambda req, body: httpx.Response(429, json={"error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota", "code": "insufficient_quota"}}))
    df = run(["a", "b", "c"], server=s, concurrency=1)
    assert s.count == 1
    assert isinstance(df["error"][0], bm.FatalProviderError)
    assert all(isinstance(e, bm.NotSentError) for e in df["error"][1:])
    assert df.attrs["batchmagic"]["rate_limited"] == 0


def test_qianfan_error_inside_http_200_is_a_rate_limit_and_retried():
    throttled = httpx.Response(200, json={"error_code": 336501,
                                          "error_msg": "Rate limit reached for RPM"},
                               headers={"retry-after-ms": "20"})
    s = Server(_sequence(throttled))
    df = run(["a"], server=s, provider="qianfan", api_key="k")
    assert s.count == 2
    assert df["output"][0] == "echo:a"
    assert df.attrs["batchmagic"]["rate_limited"] == 1
    assert df.attrs["batchmagic"]["provider"] == "qianfan"


def test_qianfan_rate_limit_every_time_is_a_rate_limit_error():
    s = Server(lambda req, body: httpx.Response(
        200, json={"error_code": 336502, "error_msg": "Rate limit reached for TPM"},
        headers={"retry-after-ms": "1"}))
    df = asyncio.run(_abatch_rl(s))
    err = df["error"][0]
    assert isinstance(err, bm.RateLimitError)
    assert err.code == "336502"


async def _abatch_rl(s):
    # an always-throttled row ends: its waits grow however small the Retry-After, and the
    # breaker stops a run where nothing gets through (here after a short quiet spell)
    return await bm.abatch(["a"], base_url="http://test/v1", model="m", provider="qianfan",
                           api_key="k", transport=s.transport, progress=False,
                           breaker=bm.Breaker(failures=4, quiet=0.5))


def test_read_timeout_is_possibly_billed_and_retried_once():
    s = Server(lambda req, body: (_ for _ in ()).throw(httpx.ReadTimeout("read timed out")))
    df = run(["a", "b"], server=s, retries=4)
    assert s.count == 4  # two rows, two attempts each
    for err in df["error"]:
        assert isinstance(err, bm.TransportError)
        assert isinstance(err, bm.DeadlineError)
        assert err.possibly_billed is True
        assert err.attempts == 2
    assert df.attrs["batchmagic"]["possibly_billed"] == 4


def test_connect_error_is_retried_and_not_billed():
    s = Server(lambda req, body: (_ for _ in ()).throw(httpx.ConnectError("refused")))
    df = run(["a"], server=s, retries=2)
    err = df["error"][0]
    assert isinstance(err, bm.ConnectError)
    assert err.possibly_billed is False
    assert s.count == 3
    assert err.attempts == 3
    assert df.attrs["batchmagic"]["possibly_billed"] == 0


def test_connect_error_then_success():
    s = Server(_sequence(httpx.ConnectError("refused")))
    df = run(["a"], server=s, retries=1)
    assert df["output"][0] == "echo:a" and df["attempts"][0] == 2


def test_remote_protocol_error_is_connection_lost():
    s = Server(lambda req, body: (_ for _ in ()).throw(httpx.RemoteProtocolError("dropped")))
    df = run(["a"], server=s, retries=0)
    err = df["error"][0]
    assert isinstance(err, bm.ConnectionLostError) and err.possibly_billed


def test_hard_deadline():
    """A server that would answer after a minute: the attempt ends at its deadline (0.2 s), not
    at the answer. The bound on the wall time is 50 times the deadline: it tells "ended at the
    deadline" from "waited for the answer" on any machine."""
    async def slow(req, body):
        await asyncio.sleep(60)
        return httpx.Response(200, json=chat_answer("late"))

    s = AsyncServer(slow)
    t0 = time.monotonic()
    df = run(["a"], server=s, timeout=0.2, retries=0)
    elapsed = time.monotonic() - t0
    err = df["error"][0]
    assert isinstance(err, bm.DeadlineError)
    assert err.possibly_billed
    assert "0.2" in str(err)
    assert 0.2 <= elapsed < 10.0, elapsed


def test_async_handler_success():
    async def answer(req, body):
        await asyncio.sleep(0.01)
        return echo_chat(req, body)

    df = run(["a", "b"], server=AsyncServer(answer))
    assert list(df["output"]) == ["echo:a", "echo:b"]


def test_bad_arguments_are_config_errors():
    s = Server()
    for kw in ({"concurrency": 0}, {"concurrency": 1.5}, {"rpm": -1}, {"timeout": 0},
               {"retries": -1}, {"retries": True}, {"params": ["x"]}, {"mode": "later"},
               {"mode": "batch-api", "cache": False}, {"mode": "batch-api", "kind": "image"},
               {"engine": "vllm"}, {"budget": 1.0}):
        with pytest.raises(bm.ConfigError):
            run(["a"], server=s, **kw)
    assert s.count == 0


def test_raise_for_errors():
    df = run(["a", "b"], server=Server(echo_chat))
    assert bm.raise_for_errors(df) is df

    def answer(req, body):
        text = body["messages"][-1]["content"]
        if text == "bad":
            return httpx.Response(400, json={"error": {"message": "nope"}})
        return echo_chat(req, body)

    df = run(["a", "bad", "bad2", None], server=Server(answer))
    # "bad2" succeeds; "bad" is a BadRequestError; None is an InputError
    with pytest.raises(bm.RunError) as info:
        bm.raise_for_errors(df)
    msg = str(info.value)
    assert "2 of 4 rows failed" in msg
    assert "BadRequestError x1" in msg and "InputError x1" in msg
    assert len(info.value.errors) == 2
    with pytest.raises(TypeError):
        bm.raise_for_errors(df.drop(columns=["error"]))


# -- the dispatcher with a fake backend ----------------------------------------------------------------
# On virtual time (tests/virtual_time.py): the dispatcher, its window and its gate share one clock
# with the event loop, so the backend's latencies, the parked retries and the gate's waits take no
# wall time and happen when due. Timings are asserted to the microsecond; a loaded machine
# cannot move them.

FAST = RetryPolicy(retries=3, rate_limit_retries=5, billed_retries=1, backoff_base=0.01,
                   rate_limit_base=0.01, backoff_max=0.05, max_wait=1.0)


def ok(unit: Unit, prefix: str = "out") -> Outcome:
    return Outcome(OK, results=[Parsed(f"{prefix}{i}", "stop", 1, 1) for i in unit.items])


class FakeBackend:
    """``script(unit, n_call) -> Outcome`` after ``latency(unit)`` seconds; tracks concurrency and
    when each call started (by ``clock``)."""

    name = "fake"

    def __init__(self, script=None, latency=None, clock=time.monotonic):
        self.script = script or (lambda unit, n: ok(unit))
        self.latency = latency or (lambda unit: 0)
        self.clock = clock
        self.calls: list[tuple[float, Unit]] = []
        self.active = 0
        self.max_active = 0
        self.closed = False

    async def call(self, unit: Unit) -> Outcome:
        self.calls.append((self.clock(), unit))
        n = len(self.calls)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.latency(unit))
            return self.script(unit, n)
        finally:
            self.active -= 1

    async def aclose(self) -> None:
        self.closed = True


def make_dispatcher(n: int, backend: FakeBackend, *, window: int = 4, maximum: int | None = None,
                    adaptive: bool = False, policy: RetryPolicy = FAST, rpm=None,
                    clock=time.monotonic) -> Dispatcher:
    units = [Unit([i], body=i, tokens=1) for i in range(n)]
    return Dispatcher(units, n, backend,
                      window=Window(window, maximum or window, adaptive=adaptive, clock=clock),
                      gate=RateGate(rpm, None, clock=clock), policy=policy,
                      progress=Progress(requests=n), clock=clock)


def test_results_land_on_their_items_whatever_the_completion_order():
    rng = random.Random(7)
    delays = {i: rng.uniform(0, 0.02) for i in range(60)}
    done_order: list[int] = []

    async def main(clock):
        backend = FakeBackend(latency=lambda unit: delays[unit.items[0]], clock=clock)
        d = make_dispatcher(60, backend, window=16, clock=clock)
        d.on_item = done_order.append
        return await d.run()

    results = run_virtual(main)
    assert list(results.output) == [f"out{i}" for i in range(60)]
    assert all(results.done)
    assert all(e is None for e in results.error)
    assert sorted(done_order) == list(range(60))
    assert done_order != list(range(60))  # they really did finish out of order


def test_a_bug_handling_one_answer_is_that_rows_error_not_a_run_that_never_ends():
    """An answer the dispatcher's own handling fails on (here a validator with a bug, raising
    what no validator should) settles its row as an error; the run goes on and ends."""
    def check(text):
        if text == "out3":
            raise TypeError("validator bug")
        return text

    guard = BudgetGuard(1.0, Price(1.0, 1.0, "test"))

    async def main(clock):
        d = make_dispatcher(8, FakeBackend(clock=clock), clock=clock)
        d.check, d.budget = check, guard
        for u in d._ready:
            u.worst_cost = 0.01
        return await d.run()

    results = run_virtual(main)
    assert all(results.done)
    assert guard.reserved == 0  # that row's reservation is settled too (at its worst case)
    assert type(results.error[3]) is RowError
    assert "TypeError: validator bug" in str(results.error[3])
    assert [results.output[i] for i in range(8) if i != 3] == \
        [f"out{i}" for i in range(8) if i != 3]
    assert all(results.error[i] is None for i in range(8) if i != 3)


def test_packed_units_map_each_item():
    units = [Unit([0, 2, 4], body="a", tokens=3), Unit([1, 3], body="b", tokens=2)]

    async def main(clock):
        d = Dispatcher(units, 5, FakeBackend(clock=clock),
                       window=Window(2, 2, adaptive=False, clock=clock),
                       gate=RateGate(None, None, clock=clock), policy=FAST, progress=Progress(),
                       clock=clock)
        return await d.run()

    assert list(run_virtual(main).output) == [f"out{i}" for i in range(5)]


@pytest.mark.parametrize("limit", [1, 3, 8])
def test_window_never_exceeds_its_limit(limit):
    rng = random.Random(limit)

    async def main(clock):
        backend = FakeBackend(latency=lambda unit: rng.uniform(0, 0.01), clock=clock)
        d = make_dispatcher(50, backend, window=limit, clock=clock)
        await d.run()
        return d, backend

    d, backend = run_virtual(main)
    assert backend.max_active <= limit
    assert backend.max_active == limit  # and it is used in full
    assert d.window.active == 0
    assert len(backend.calls) == 50


def test_adaptive_window_never_exceeds_its_maximum():
    async def main(clock):
        backend = FakeBackend(latency=lambda unit: 0.002, clock=clock)
        d = make_dispatcher(200, backend, window=2, maximum=10, adaptive=True, clock=clock)
        await d.run()
        return d, backend

    d, backend = run_virtual(main)
    assert backend.max_active <= 10
    assert d.window.current <= 10
    assert backend.max_active > 2  # slow start grew it


def test_cancel_mid_run():
    """Four rows answer at once, four more are in flight for 5 s when the run is cancelled: the
    run ends without waiting for them."""

    async def main(clock):
        backend = FakeBackend(latency=lambda unit: 0.01 if unit.items[0] < 4 else 5.0,
                              clock=clock)
        d = make_dispatcher(20, backend, window=4, clock=clock)
        task = asyncio.ensure_future(d.run())
        while sum(d.results.done) < 4 or backend.active < 4:
            await asyncio.sleep(0.005)
        cancelled_at = clock()
        d.cancel()
        results = await task
        return d, backend, results, clock() - cancelled_at

    d, backend, r, took = run_virtual(main)
    assert took < 0.1  # not the 5 s the requests in flight would take
    assert d.cancelled
    finished = [i for i in range(20) if r.output[i] is not None]
    in_flight = [i for i in range(20) if isinstance(r.error[i], bm.CancelledRowError)]
    unsent = [i for i in range(20) if isinstance(r.error[i], bm.NotSentError)]
    assert finished == [0, 1, 2, 3]
    assert len(in_flight) == 4
    assert all(r.error[i].possibly_billed for i in in_flight)
    assert len(unsent) == 20 - 8
    assert not any(r.error[i].possibly_billed for i in unsent)
    assert sorted(finished + in_flight + unsent) == list(range(20))
    assert all(r.done)
    assert len(backend.calls) == 8


def test_cancel_just_after_a_request_task_is_made_settles_it_as_not_sent():
    """A cancel that lands after the feeder made a request's task but before the task's first
    step: the task never runs its own cancel handling, and its row was once left neither done
    nor counted (a loaded machine's CI run saw done=58 of 60)."""

    async def main(clock):
        loop = asyncio.get_running_loop()
        backend = FakeBackend(latency=lambda unit: 0.01 if unit.items[0] == 0 else 5.0,
                              clock=clock)
        d = make_dispatcher(6, backend, window=2, clock=clock)

        def after_first(item):
            # row 0's answer frees a window slot: the feeder's wake-up is queued first, so this
            # cancel runs right after it made the next task and before that task's first step
            if item == 0:
                loop.call_soon(d.cancel)

        d.on_item = after_first
        return await d.run(), backend, d

    r, backend, d = run_virtual(main)
    assert all(r.done)
    assert r.output[0] == "out0"
    assert isinstance(r.error[1], bm.CancelledRowError)  # in flight when cancelled
    unsent = [i for i in range(6) if isinstance(r.error[i], bm.NotSentError)]
    assert unsent == [2, 3, 4, 5]
    assert len(backend.calls) == 2  # row 2's task was made but never sent
    assert d.progress.done == 6 and d.progress.requests_done == 2
    assert d.window.active == 0


def test_cancel_while_a_retry_is_parked():
    slow = RetryPolicy(retries=3, backoff_base=5.0, backoff_max=5.0)

    async def main(clock):
        backend = FakeBackend(script=lambda unit, n: Outcome(TRANSIENT, error_type=ServerError,
                                                              message="503"), clock=clock)
        d = make_dispatcher(1, backend, window=1, policy=slow, clock=clock)
        task = asyncio.ensure_future(d.run())
        while d.progress.retrying == 0:  # the failed row is parked for its backoff (2.5-5 s)
            await asyncio.sleep(0.005)
        d.cancel()
        return await task, backend

    r, backend = run_virtual(main)
    assert len(backend.calls) == 1  # cancelled before the retry came due
    # it was sent once: the row keeps what that attempt got, and says why it was not retried
    err = r.error[0]
    assert isinstance(err, bm.ServerError) and not isinstance(err, bm.NotSentError)
    assert err.attempts == 1
    assert "503; not retried: the run was cancelled" in str(err)


def test_cancelling_the_run_task_cancels_the_dispatcher():
    async def main(clock):
        backend = FakeBackend(latency=lambda unit: 5.0, clock=clock)
        d = make_dispatcher(5, backend, window=2, clock=clock)
        task = asyncio.ensure_future(d.run())
        while backend.active < 2:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return d

    d = run_virtual(main)
    assert d.cancelled
    assert all(d.results.done)
    assert sum(isinstance(e, bm.CancelledRowError) for e in d.results.error) == 2
    assert sum(isinstance(e, bm.NotSentError) for e in d.results.error) == 3


def test_pause_and_resume():
    async def main(clock):
        backend = FakeBackend(latency=lambda unit: 0.01, clock=clock)
        d = make_dispatcher(40, backend, window=2, clock=clock)
        task = asyncio.ensure_future(d.run())
        while len(backend.calls) < 5:
            await asyncio.sleep(0.002)
        d.pause()
        assert d.progress.state == "paused"
        await asyncio.sleep(0.05)  # what was already past the pause check finishes
        frozen = len(backend.calls)
        await asyncio.sleep(10)  # virtual: everything that could start has had its chance
        assert len(backend.calls) == frozen, "a call started while paused"
        assert backend.active == 0
        assert frozen < 40
        d.resume()
        assert d.progress.state == "running"
        return await task, backend

    r, backend = run_virtual(main)
    assert all(e is None for e in r.error)
    assert list(r.output) == [f"out{i}" for i in range(40)]
    assert len(backend.calls) == 40


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_retries_are_bounded(retries):
    policy = RetryPolicy(retries=retries, backoff_base=0.001, backoff_max=0.01)

    async def main(clock):
        backend = FakeBackend(script=lambda unit, n: Outcome(
            TRANSIENT, error_type=ServerError, message="overloaded", status=503), clock=clock)
        d = make_dispatcher(1, backend, window=1, policy=policy, clock=clock)
        return await d.run(), d, backend

    r, d, backend = run_virtual(main)
    assert len(backend.calls) == retries + 1
    err = r.error[0]
    assert isinstance(err, bm.ServerError)
    assert err.attempts == retries + 1
    assert d.progress.retries == retries


def test_transient_backoff_doubles_with_equal_jitter():
    """A retry waits between half and all of base * 2^(n-1), capped at backoff_max: never zero."""
    policy = RetryPolicy(retries=5, backoff_base=1.0, backoff_max=6.0)

    async def main(clock):
        backend = FakeBackend(script=lambda unit, n: Outcome(
            TRANSIENT, error_type=ServerError, message="503", status=503), clock=clock)
        d = make_dispatcher(1, backend, window=1, policy=policy, clock=clock)
        await d.run()
        return [t for t, _ in backend.calls]

    starts = run_virtual(main)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(gaps) == 5
    for gap, cap in zip(gaps, [1.0, 2.0, 4.0, 6.0, 6.0]):
        assert cap / 2 <= gap <= cap + 1e-6, (gaps, cap)


def test_possibly_billed_transient_failures_are_retried_once():
    async def main(clock):
        backend = FakeBackend(script=lambda unit, n: Outcome(
            TRANSIENT, error_type=bm.DeadlineError, message="late", possibly_billed=True),
            clock=clock)
        d = make_dispatcher(1, backend, window=1, clock=clock)
        return await d.run(), d, backend

    r, d, backend = run_virtual(main)
    assert len(backend.calls) == 2
    assert r.error[0].possibly_billed
    assert d.possibly_billed == 2


def test_rate_limit_retries_are_bounded_too():
    async def main(clock):
        backend = FakeBackend(script=lambda unit, n: Outcome(
            RATE_LIMIT, error_type=RateLimitError, message="429", retry_after=0.001), clock=clock)
        d = make_dispatcher(1, backend, window=1, clock=clock)
        return await d.run(), backend

    r, backend = run_virtual(main)
    assert len(backend.calls) == FAST.rate_limit_retries + 1
    assert isinstance(r.error[0], bm.RateLimitError)


def test_backend_exception_is_a_row_error_not_a_crash():
    def script(unit, n):
        if unit.items[0] == 1:
            raise KeyError("bug")
        return ok(unit)

    async def main(clock):
        return await make_dispatcher(3, FakeBackend(script=script, clock=clock),
                                     clock=clock).run()

    r = run_virtual(main)
    assert r.output[0] == "out0" and r.output[2] == "out2"
    assert isinstance(r.error[1], bm.RowError) and "KeyError" in str(r.error[1])


def test_a_stray_429_waits_its_retry_after_exactly_not_a_backoff():
    """One row is throttled with Retry-After 0.3 s while backoffs would be 5-10 s: only that row
    waits, exactly 0.3 s after its 429 came back; the others are not held up."""
    policy = RetryPolicy(rate_limit_base=10.0, backoff_base=10.0, backoff_max=10.0)

    def script(unit, n):
        if n == 1:
            return Outcome(RATE_LIMIT, error_type=RateLimitError, message="429", retry_after=0.3)
        return ok(unit)

    async def main(clock):
        backend = FakeBackend(script=script, latency=lambda unit: 0.1, clock=clock)
        d = make_dispatcher(3, backend, window=1, policy=policy, clock=clock)
        r = await d.run()
        return r, [(t - clock.start, u.items[0]) for t, u in backend.calls]

    r, calls = run_virtual(main)
    assert all(e is None for e in r.error)
    assert [i for _, i in calls] == [0, 1, 2, 0]  # the others went on; the row came back last
    # row 0's 429 came back at 0.1; rows 1 and 2 took 0.1 each; row 0 again at 0.1 + 0.3
    assert [t for t, _ in calls] == pytest.approx([0.0, 0.1, 0.2, 0.4], abs=1e-6)


def test_a_transient_retry_after_is_honoured_when_longer_than_the_backoff():
    policy = RetryPolicy(retries=2, backoff_base=0.01, backoff_max=0.01)

    def script(unit, n):
        if n == 1:
            return Outcome(TRANSIENT, error_type=ServerError, message="503", status=503,
                           retry_after=2.0)
        return ok(unit)

    async def main(clock):
        backend = FakeBackend(script=script, clock=clock)
        d = make_dispatcher(1, backend, window=1, policy=policy, clock=clock)
        r = await d.run()
        return r, [t - clock.start for t, _ in backend.calls]

    r, starts = run_virtual(main)
    assert list(r.output) == ["out0"]
    assert starts == pytest.approx([0.0, 2.0], abs=1e-6)


def test_rate_limit_storm_with_retry_after_pauses_the_whole_run():
    """When throttling is general (here: the first six answers), the whole run waits out the
    Retry-After: no call starts during the pause, not just no retry of the throttled row."""
    pause = 0.3
    returned: list[float] = []

    async def main(clock):
        def script(unit, n):
            if n <= 6:
                returned.append(clock())
                return Outcome(RATE_LIMIT, error_type=RateLimitError, message="429",
                               retry_after=pause, overloaded=True)
            return ok(unit)

        backend = FakeBackend(script=script, latency=lambda unit: 0.01, clock=clock)
        d = make_dispatcher(30, backend, window=4, clock=clock)
        return await d.run(), d, backend

    r, d, backend = run_virtual(main)
    assert all(e is None for e in r.error)
    assert d.progress.rate_limited == 6
    assert len(backend.calls) == 36
    # from the 4th throttled answer on (4 recent answers, 2 or more throttled) throttling is
    # general: after each such 429 nothing starts until its Retry-After has passed. (A request
    # that was past the gate when the 429 came back would start a few clock ticks later: 1e-6.)
    starts = [t for t, _ in backend.calls]
    general = returned[3:]
    for t in general:
        assert [s - t for s in starts if t + 1e-6 < s < t + pause - 1e-6] == []
    # and the run goes on the moment the pause is over
    assert min(s for s in starts if s > general[0]) == pytest.approx(general[0] + pause, abs=1e-6)


def test_aimd_window_drops_on_rate_limit_then_grows():
    seen: list[float] = []
    d_ref: list[Dispatcher] = []

    def script(unit, n):
        seen.append(d_ref[0].window.limit)
        if n == 20:
            return Outcome(RATE_LIMIT, error_type=RateLimitError, message="429", retry_after=0.01,
                           overloaded=True)
        return ok(unit)

    async def main(clock):
        backend = FakeBackend(script=script, latency=lambda unit: 0.001, clock=clock)
        d = make_dispatcher(120, backend, window=8, maximum=16, adaptive=True, clock=clock)
        d_ref.append(d)
        await d.run()
        return d

    d = run_virtual(main)
    assert d.window.cuts >= 1
    before = seen[19]
    after_cut = min(seen[20:])
    assert after_cut < before  # multiplicative decrease
    assert d.window.limit > after_cut  # additive increase afterwards
    assert d.window.limit <= 16


def test_a_latency_blow_up_cuts_the_window_once_per_round_trip():
    """Answers that suddenly take twenty times as long (queueing at the server) cut the adaptive
    window; while the queueing lasts it is cut again, but never twice within one round trip: the
    answers already in flight at a cut carry no news."""
    slow = 0.2
    cuts: list[float] = []

    class RecordingWindow(Window):
        def on_congestion(self, sent_at, factor):
            cut = super().on_congestion(sent_at, factor)
            if cut:
                cuts.append(self.clock())
            return cut

    async def main(clock):
        backend = FakeBackend(latency=lambda unit: 0.01 if unit.items[0] < 100 else slow,
                              clock=clock)
        units = [Unit([i], body=i, tokens=1) for i in range(160)]
        d = Dispatcher(units, 160, backend, window=RecordingWindow(4, 8, adaptive=True, clock=clock),
                       gate=RateGate(None, None, clock=clock), policy=FAST,
                       progress=Progress(requests=160), clock=clock)
        await d.run()
        return d

    d = run_virtual(main)
    assert all(e is None for e in d.results.error)
    assert len(cuts) >= 1 and d.window.cuts == len(cuts)
    assert d.window.current < 8  # it ended smaller than the pool it grew to
    gaps = [b - a for a, b in zip(cuts, cuts[1:])]
    assert all(gap >= slow - 1e-6 for gap in gaps), gaps


def test_fatal_outcome_stops_the_dispatcher():
    def script(unit, n):
        if n == 3:
            return Outcome("fatal", error_type=bm.FatalProviderError, message="no key", status=401)
        return ok(unit)

    async def main(clock):
        backend = FakeBackend(script=script, clock=clock)
        d = make_dispatcher(20, backend, window=1, clock=clock)
        await d.run()
        return d, backend

    d, backend = run_virtual(main)
    r = d.results
    assert isinstance(d.aborted, bm.FatalProviderError)
    assert list(r.output[:2]) == ["out0", "out1"]
    assert isinstance(r.error[2], bm.FatalProviderError)
    assert all(isinstance(e, bm.NotSentError) for e in r.error[3:])
    assert len(backend.calls) == 3


def test_rpm_gate_paces_the_dispatcher():
    # 600 rpm = 10/s with a burst of 10: the first 10 start at once, the next 4 come 0.1 s apart
    async def main(clock):
        backend = FakeBackend(clock=clock)
        d = make_dispatcher(14, backend, window=4, rpm=600, clock=clock)
        await d.run()
        return [t - clock.start for t, _ in backend.calls]

    starts = run_virtual(main)
    assert starts == pytest.approx([0.0] * 10 + [0.1, 0.2, 0.3, 0.4], abs=1e-6)
