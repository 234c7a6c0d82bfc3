"""Runs end in bounded time: the circuit breaker, Retry-After hints that say nothing, servers
that are gone or wrong, gateways passing another provider's throttle through, and what a row
that was sent but never retried says. Against the simulator on 127.0.0.1 and small loopback
servers; the breaker's own rules with a hand-moved clock."""

from __future__ import annotations

import asyncio
import threading

import pytest
from aiohttp import web

import batchmagic as bm
from batchmagic._backend import RATE_LIMIT, ROW, TRANSIENT, Outcome
from batchmagic._breaker import Breaker, CircuitBreaker
from batchmagic._errors import ConnectError, DeadlineError, RateLimitError, ServerError
from batchmagic._limits import RateGate, RateProbe, parse_retry_after
from batchmagic.simulator import SimulatorProcess


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess() as s:
        yield s


@pytest.fixture
def fresh(sim):
    sim.reset()
    sim.configure(faults={}, fault_attempts=1, latency=0.0, rpm=None, tpm=None, burst=1.0,
                  retry_after_format="seconds", retry_after_value=None, ratelimit_headers=True,
                  hang_seconds=3600.0)
    yield sim
    sim.configure(faults={}, rpm=None, tpm=None, latency=0.0, retry_after_value=None,
                  ratelimit_headers=True, retry_after_format="seconds")


def run(sim, inputs, **kw):
    kw.setdefault("model", "sim-chat")
    kw.setdefault("progress", False)
    kw.setdefault("cache", False)
    return bm.batch(inputs, provider="simulator", base_url=sim.base_url, **kw)


def rows(n: int) -> list[str]:
    return [f"row {i}" for i in range(n)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the breaker's rules, with a hand-moved clock -----------------------------------------------


def _breaker(clock: Clock, **kw) -> CircuitBreaker:
    return CircuitBreaker(Breaker(**kw), provider="p", url="http://h/v1/chat/completions",
                          deadline=300.0, clock=clock)


def test_a_streak_trips_only_after_a_quiet_spell() -> None:
    clock = Clock()
    b = _breaker(clock, failures=3, quiet=60)
    fail = Outcome(TRANSIENT, error_type=ServerError, status=503, message="overloaded")
    assert [b.failure(fail) for _ in range(5)] == [None] * 5  # busy, but only seconds in
    clock.now += 61
    reason = b.failure(fail)
    assert reason is not None and "the last 6 attempts" in reason and "overloaded" in reason


def test_a_success_or_a_different_failure_restarts_the_streak() -> None:
    clock = Clock()
    b = _breaker(clock, failures=3, quiet=10)
    clock.now += 100
    a = Outcome(TRANSIENT, error_type=ServerError, status=503, message="x")
    c = Outcome(TRANSIENT, error_type=ServerError, status=502, message="y")
    assert b.failure(a) is None and b.failure(a) is None
    b.success()
    clock.now += 100
    assert b.failure(a) is None and b.failure(c) is None and b.failure(a) is None
    assert b.failure(a) is None
    assert b.failure(a) is not None  # three of a kind in a row, nothing succeeded for 100 s


def test_row_errors_show_the_server_is_alive() -> None:
    clock = Clock()
    b = _breaker(clock, failures=2, quiet=1)
    clock.now += 100
    bad = Outcome(ROW, error_type=bm.BadRequestError, status=400, message="content filter")
    assert all(b.failure(bad) is None for _ in range(20))


def test_no_answer_trips_after_two_deadlines_of_silence() -> None:
    clock = Clock()
    b = CircuitBreaker(Breaker(failures=3, quiet=600), provider="p", url="http://h/v1/x",
                       deadline=1.0, clock=clock)
    hang = Outcome(TRANSIENT, error_type=DeadlineError, message="no complete answer within 1 s")
    assert b.failure(hang) is None and b.failure(hang) is None
    clock.now += 2.0
    reason = b.failure(hang)
    assert reason is not None and "sends no answer" in reason and "timeout=" in reason


def test_a_long_retry_after_is_a_quota_and_stops_at_once() -> None:
    b = _breaker(Clock(), max_retry_after=600)
    reason = b.failure(Outcome(RATE_LIMIT, error_type=RateLimitError, status=429,
                               retry_after=99999.0, message="daily limit"))
    assert reason is not None and "27.8 h" in reason and "quota" in reason and "UTC" in reason


def test_connection_refused_says_nothing_answers() -> None:
    clock = Clock()
    b = _breaker(clock, failures=2, quiet=5)
    refused = Outcome(TRANSIENT, error_type=ConnectError, message="could not connect")
    b.failure(refused)
    clock.now += 6
    assert "nothing answers at" in b.failure(refused)


def test_breaker_settings_are_checked() -> None:
    for bad in ({"failures": 0}, {"quiet": float("nan")}, {"max_retry_after": -1},
                {"failures": True}):
        with pytest.raises(bm.ConfigError):
            Breaker(**bad)
    with pytest.raises(bm.ConfigError, match="breaker must be"):
        bm.estimate(["a"], base_url="http://127.0.0.1:9/v1", model="m", api_key="k",
                    breaker="yes")


# -- Retry-After hints that say nothing --------------------------------------------------------


@pytest.mark.parametrize("text", ["0", "-5", "NaN", "nan", "inf", "-inf"])
def test_retry_after_that_says_nothing_is_no_hint(text: str) -> None:
    value = parse_retry_after({"retry-after": text})
    assert value is None or value == 0.0
    assert parse_retry_after({"retry-after-ms": text}) in (None, 0.0)


@pytest.mark.parametrize("value", ["0", "-1", "NaN"])
def test_retry_after_zero_negative_or_nan_keeps_backing_off(fresh, value: str) -> None:
    """A 5/s limit that answers 429 with a useless Retry-After: before, the rows retried at
    once, 1,000 calls in 2 s, and most rows failed after 30 throttled attempts."""
    fresh.configure(rpm=300, burst=1.0, retry_after_value=value)
    df = run(fresh, rows(40))
    assert df["error"].isna().all(), df["error"].dropna().head(3).tolist()
    calls = len(fresh.calls())
    assert calls < 200, f"{calls} calls for 40 rows: the backoff was switched off"


def test_no_rate_limit_headers_still_finds_the_limit(fresh) -> None:
    """No x-ratelimit-* headers and no Retry-After: the run probes for the rate instead of
    crawling on per-row backoff, and no row fails."""
    fresh.configure(rpm=300, burst=1.0, ratelimit_headers=False, retry_after_format="none")
    df = run(fresh, rows(60))
    assert df["error"].isna().all()
    facts = df.attrs["batchmagic"]
    assert facts["learned_rpm"] is not None  # the probed rate, in requests per minute
    calls = fresh.calls()
    throttled = sum(1 for c in calls if c["status"] == 429)
    assert throttled < len(calls) / 2, f"{throttled} of {len(calls)} calls were throttled"


def test_the_rate_probe_cuts_at_most_once_a_second_and_grows_back() -> None:
    clock = Clock()
    probe = RateProbe(clock)
    clock.now += 5.0  # a run well under way
    for _ in range(8):
        probe.success()
    assert probe.throttled() == 8.0  # the pace that was succeeding in the last second
    assert probe.throttled() == 8.0  # in-flight news of the same overload: no second cut
    clock.now += 1.0
    assert probe.throttled() == pytest.approx(5.6)
    for _ in range(10):
        probe.success()
    assert probe.rate == pytest.approx(6.6)


def test_throttling_in_the_first_moments_measures_the_pace_over_the_time_there_was() -> None:
    """Throttled 0.4 s into a run after 6 answers: the pace is measured over half a second (the
    shortest span that says more than a startup burst), not over a full second, which would
    make a run throttled early crawl well below its limit."""
    clock = Clock()
    probe = RateProbe(clock)
    clock.now += 0.4
    for _ in range(6):
        probe.success()
    assert probe.throttled() == pytest.approx(12.0)


def test_throttling_before_any_success_installs_no_rate() -> None:
    probe = RateProbe(Clock())
    assert probe.throttled() is None and probe.rate is None  # no pace to start from


def test_a_stray_429_installs_no_rate() -> None:
    gate = RateGate(None, None, clock=Clock())
    gate.answered()
    assert gate.requests is None  # only general throttling (the dispatcher's storm) probes


# -- servers that never answer, quotas, wrong URLs ---------------------------------------------


def test_a_server_that_never_answers_stops_the_run(fresh) -> None:
    """Before: 64 rows at timeout=1 sent 128 requests and took 16.8 s (84 minutes at the
    default timeout). Now the breaker stops the run after a few silent attempts."""
    fresh.configure(faults={"hang": 1.0}, fault_attempts=1000, hang_seconds=3600.0)
    df = run(fresh, rows(64), timeout=1, concurrency=8)
    facts = df.attrs["batchmagic"]
    assert "sends no answer" in facts["stopped_by"]
    assert facts["state"] == "aborted"
    assert len(df) == 64 and df["error"].notna().all()
    assert sum(isinstance(e, bm.NotSentError) for e in df["error"]) > 32
    assert len(fresh.calls()) < 40


def test_a_daily_quota_stops_the_run_and_keeps_finished_rows(fresh) -> None:
    """Retry-After: 99999 used to mean 30 waits of 120 s per row."""
    # a burst of 5, then 429s; no x-ratelimit headers, so nothing paces the run below the limit
    fresh.configure(rpm=600, burst=0.5, retry_after_value="99999", ratelimit_headers=False)
    df = run(fresh, rows(30), concurrency=4)
    facts = df.attrs["batchmagic"]
    assert "asks to wait 27.8 h" in facts["stopped_by"]
    ok = df["error"].isna().sum()
    assert 1 <= ok < 30
    assert all(isinstance(e, (bm.NotSentError, bm.RateLimitError)) for e in df["error"].dropna())


class _WrongServer:
    """Answers every POST with one fixed status (a redirect, a 404), like a server that moved
    or a base_url without /v1."""

    def __init__(self, status: int, location: str | None = None):
        self.status, self.location, self.calls = status, location, 0
        self._ready = threading.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        headers = {"Location": self.location} if self.location else {}
        return web.Response(status=self.status, text="<html>nope</html>", headers=headers,
                            content_type="text/html")

    def __enter__(self) -> _WrongServer:
        def serve() -> None:
            self.loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self.handle)
            self.runner = web.AppRunner(app)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.root = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
            self._ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self.runner.cleanup())

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def test_a_404_on_every_row_stops_the_run_and_asks_about_v1() -> None:
    with _WrongServer(404) as server:
        df = bm.batch(rows(200), base_url=server.root, model="m", api_key="k", progress=False,
                      cache=False, concurrency=2)
        facts = df.attrs["batchmagic"]
        assert "HTTP 404" in facts["stopped_by"] and "missing /v1" in facts["stopped_by"]
        assert server.calls <= 5  # not 200 rows failing one by one
        assert len(df) == 200 and df["error"].notna().all()


def test_a_redirect_is_fatal_and_names_where_it_points() -> None:
    with _WrongServer(301, location="https://api.example.com/v1/chat/completions") as server:
        df = bm.batch(rows(50), base_url=server.root + "/v1", model="m", api_key="k",
                      progress=False, cache=False, concurrency=2)
        facts = df.attrs["batchmagic"]
        assert "redirects to https://api.example.com/v1/chat/completions" in facts["stopped_by"]
        assert server.calls <= 2
        assert isinstance(df["error"].iloc[0], bm.FatalProviderError)


def test_breaker_false_turns_it_off(fresh) -> None:
    fresh.configure(faults={"hang": 1.0}, fault_attempts=1000, hang_seconds=3600.0)
    df = run(fresh, rows(3), timeout=0.5, retries=0, breaker=False)
    assert df.attrs["batchmagic"]["stopped_by"] is None
    assert all(isinstance(e, bm.DeadlineError) for e in df["error"])


# -- a gateway passing another provider's throttle through --------------------------------------


def test_a_qianfan_throttle_inside_http_200_is_retried_on_a_bare_base_url(fresh) -> None:
    """error_code 336501 inside HTTP 200 from a server reached by base_url= (the generic
    dialect) was a BadRequestError, and the row failed."""
    fresh.configure(faults={"error_200": 1.0}, fault_attempts=1, error_200_code=336501)
    df = bm.batch(rows(5), base_url=fresh.base_url, model="sim-chat", progress=False,
                  cache=False, api_key="k")
    assert df["error"].isna().all(), df["error"].tolist()
    assert (df["attempts"] == 2).all()


# -- what a row that was sent, then stopped, says ---------------------------------------------


def test_a_row_sent_then_stopped_says_what_happened(fresh) -> None:
    """It said "NotSentError: not sent ... (2 attempts)" though it had been sent twice."""
    fresh.configure(faults={"503": 1.0}, fault_attempts=1000)
    df = run(fresh, rows(3), retries=5, concurrency=3, breaker=Breaker(failures=3, quiet=0.01))
    errors = df["error"].tolist()
    assert not any(isinstance(e, bm.NotSentError) and e.attempts for e in errors), errors
    retried = [e for e in errors if "not retried" in str(e)]
    assert retried and all(isinstance(e, bm.ServerError) for e in retried)
