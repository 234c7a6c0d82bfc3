"""What the workers of a Ray run share, held by one actor per run.

``RunCoordinator`` runs as a Ray actor with no CPU of its own, placed on the driver's node. It
holds what must be one for the whole cluster:

* the rate limit: one ``RateGate`` (RPM and TPM buckets, given, or learned from any worker's
  ``x-ratelimit-*`` headers, or probed when the provider throttles without saying) and the
  run-wide pause a 429 storm sets. A 429 seen by one worker slows every worker;
* the budget: one ``BudgetGuard`` that workers reserve each request's worst case from before they
  send it, so N workers together never pass ``budget=``;
* the run's control state (paused, cancelled, why it stopped): workers read it with each report,
  a few times a second;
* the key and headers, which each worker fetches once (``secrets``) instead of carrying them in
  its own arguments (Ray keeps actor arguments for restarts);
* the counters each worker reports (its own ``Progress``), which the driver sums for the panel.

``ClusterGate`` is what a worker's dispatcher uses in place of its own ``RateGate`` (the same
methods). It draws requests and tokens from the coordinator in batches, a twentieth of a second
of the shared rate per draw, so a draw is not a round trip per request; while no limit is known
anywhere it holds a short lease to send freely, renewed twice a second, which is how a limit
learned by one worker reaches the others.

Both classes are plain Python: the Ray executor wraps the coordinator with ``ray.remote`` and
hands each worker a handle, and a worker calls it through two functions (``call``: await an
answer, ``tell``: send and go on), so the logic here is testable without a cluster.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .. import _errors
from .._cost import BudgetGuard, Price
from .._limits import RateGate, RateInfo
from .._secrets import Secret

#: seconds a worker may send freely while no limit is known anywhere in the cluster
LEASE_SECONDS = 0.5
#: seconds of the shared rate one draw takes (at 1,200 RPM: one request; at 60,000: fifty)
DRAW_SECONDS = 0.05
#: a worker silent this long no longer counts as in flight (its gauges read zero)
GAUGE_STALE_SECONDS = 3.0
#: a worker silent this long is gone: its budget reservations count as spent (worst case)
RESERVATION_STALE_SECONDS = 30.0
#: counters summed over workers (a worker's ``Progress`` fields); the gauges among them are what
#: is true now (in flight, waiting), the rest only grow
COUNTERS = ("done", "ok", "failed", "cached", "skipped", "requests", "requests_done", "retries",
            "reasked", "rate_limited", "input_tokens", "output_tokens", "cost", "rate_waits",
            "in_flight", "retrying", "concurrency", "possibly_billed", "blocks_active",
            "blocks_done", "rows_written", "rows_seen", "files_written")
GAUGES = ("in_flight", "retrying", "concurrency", "blocks_active")


class SealedSecrets:
    """The key and extra headers on their way to the workers. ``Secret`` refuses pickling so
    that a key never lands in a file by accident; this is the one deliberate crossing, into
    Ray's memory, held by the coordinator and fetched by each worker once. Never shown."""

    __slots__ = ("_key", "headers")

    def __init__(self, key: Secret | str | None, headers: dict | None):
        self._key = key.reveal() if isinstance(key, Secret) else key
        self.headers = dict(headers) if headers else None

    def key(self) -> Secret | None:
        return Secret(self._key) if self._key is not None else None

    def __reduce__(self):
        return SealedSecrets, (self._key, self.headers)

    def __repr__(self) -> str:
        return "SealedSecrets('***')"


def error_from(name: str, message: str) -> BaseException:
    """A stop reason that crossed from a worker (its class name and text) as its exception."""
    cls = getattr(_errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, _errors.BatchError)):
        cls = _errors.BatchError
    return cls(message)


class RunCoordinator:
    """The shared limit, budget, control state and counters of one Ray run (see the module)."""

    def __init__(self, rpm: float | None, tpm: float | None, budget: float | None = None,
                 price: Price | None = None, assumed_output: int | None = None, *,
                 clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.gate = RateGate(rpm, tpm, clock=clock)
        self.budget = BudgetGuard(budget, price, assumed_output=assumed_output) \
            if budget is not None and price is not None else None
        self.paused = False
        self.cancelled = False
        self.stop_reason: tuple[str, str] | None = None  # (class name, text)
        self._sealed: SealedSecrets | None = None
        self._reports: dict[str, tuple[float, dict]] = {}  # worker -> (when, counters)
        self._reserved_by: dict[str, float] = {}
        self.answered = 0
        self.draws = 0

    # -- the key -----------------------------------------------------------------------------

    def hold_secrets(self, sealed: SealedSecrets) -> None:
        self._sealed = sealed

    def secrets(self) -> SealedSecrets:
        return self._sealed if self._sealed is not None else SealedSecrets(None, None)

    # -- the shared rate limit ---------------------------------------------------------------

    def draw(self, want: int, tokens_each: float, returned: tuple[float, float] = (0, 0.0),
             answered: int = 0, refund: float = 0.0) -> tuple:
        """Requests (and their tokens) a worker may send now: ``(requests, tokens, wait,
        lease, pause, rpm, tpm)``. With no limit known, a lease of free sending; when nothing
        is available yet, how long to wait before asking again. ``returned`` is what the
        worker drew and did not use; ``answered`` its successes since its last draw (a probed
        rate grows with them); ``refund`` its token over-charges (TPM)."""
        g = self.gate
        self.draws += 1
        if returned[0] and g.requests is not None:
            g.requests.give_back(returned[0])
        if returned[1] and g.tokens is not None:
            g.tokens.give_back(returned[1])
        self._answered(answered)
        if refund:
            g.settle_tokens(refund, 0.0)
        now = g.clock()
        pause = max(0.0, g.pause_until - now)
        if g.requests is None and g.tokens is None:
            return 0, 0.0, pause, LEASE_SECONDS if pause == 0 else 0.0, pause, None, None
        wait = pause
        if g.requests is not None:
            wait = max(wait, g.requests.wait_time(1, now))
        if g.tokens is not None and tokens_each:
            wait = max(wait, g.tokens.wait_time(tokens_each, now))
        if wait > 0:
            return 0, 0.0, wait, 0.0, pause, g.rpm, g.tpm
        n = max(1, int(want))
        if g.requests is not None:
            n = max(1, min(n, int(g.requests.level)))
        if g.tokens is not None and tokens_each:
            n = max(1, min(n, int(g.tokens.level // tokens_each)))
        if g.requests is not None:
            g.requests.take(n)
        tokens = 0.0
        if g.tokens is not None and tokens_each:
            tokens = n * tokens_each
            g.tokens.take(tokens)
        return n, tokens, 0.0, 0.0, 0.0, g.rpm, g.tpm

    def _answered(self, n: int) -> None:
        self.answered += n
        for _ in range(n):
            self.gate.answered()

    def pause_for(self, seconds: float) -> None:
        """A worker saw throttling everywhere: every worker waits."""
        self.gate.pause_for(seconds)

    def learn(self, info: RateInfo) -> None:
        """A worker read the provider's limits from its headers: they are the cluster's."""
        self.gate.learn(info)

    def throttled(self) -> None:
        """A worker saw a 429 storm without stated limits: probe one rate for all."""
        self.gate.throttled()

    # -- the shared budget -------------------------------------------------------------------

    async def reserve(self, worker: str, amounts: list[float]) -> int:
        """Reserve the worst case of requests about to be sent, in order: how many fit now
        (at least one, after waiting for answers in flight to settle), or -1 when the run
        stops (the next request could pass the budget even with nothing in flight)."""
        budget = self.budget
        if budget is None:
            return len(amounts)
        granted = 0
        for amount in amounts:
            while not budget.try_reserve(amount):
                if granted or self.stop_reason is not None or self.cancelled:
                    return granted if granted else -1
                self._settle_stale()
                if budget.reserved <= 1e-12:
                    self.stop("BudgetExceededError", budget.message(amount))
                    return -1
                budget.changed.clear()
                try:
                    await asyncio.wait_for(budget.changed.wait(), GAUGE_STALE_SECONDS)
                except asyncio.TimeoutError:
                    pass
            self._reserved_by[worker] = self._reserved_by.get(worker, 0.0) + amount
            granted += 1
        return granted

    def _settle(self, worker: str, reserved: float, actual: float) -> None:
        if self.budget is None or (not reserved and not actual):
            return
        held = self._reserved_by.get(worker, 0.0)
        self._reserved_by[worker] = max(0.0, held - reserved)
        self.budget.settle(reserved, actual)

    def _settle_stale(self) -> None:
        """Reservations of a worker that stopped reporting (killed): spent at their worst."""
        now = self.clock()
        for worker, held in list(self._reserved_by.items()):
            seen = self._reports.get(worker, (now, None))[0]
            if held > 0 and now - seen > RESERVATION_STALE_SECONDS:
                self._settle(worker, held, held)

    # -- control and counters ------------------------------------------------------------------

    def control(self, action: str) -> None:
        if action == "pause":
            self.paused = True
        elif action == "resume":
            self.paused = False
        elif action == "cancel":
            self.cancelled = True
            self.paused = False
        if self.budget is not None:
            self.budget.changed.set()  # a reservation waiting for budget gives up on cancel

    def stop(self, name: str, text: str) -> None:
        """Why the whole run stops (a fatal error, the budget, the breaker); the first wins."""
        if self.stop_reason is None:
            self.stop_reason = (name, text)
            if self.budget is not None:
                self.budget.changed.set()

    def report(self, worker: str, counters: dict, settle: tuple[float, float] = (0.0, 0.0)
               ) -> tuple[bool, bool, tuple[str, str] | None]:
        """A worker's counters (its totals so far) and the budget its finished requests used;
        answers the control state: ``(paused, cancelled, stop reason)``."""
        self._reports[worker] = (self.clock(), counters)
        self._settle(worker, *settle)
        return self.paused, self.cancelled, self.stop_reason

    def totals(self) -> dict:
        """The cluster's counters: each worker's latest report summed (gauges only from the
        workers heard from lately), errors by class, the shared limit and the control state."""
        now = self.clock()
        out: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
        errors: dict[str, int] = {}
        first: list[str] = []
        live = 0
        for seen, counters in self._reports.values():
            fresh = now - seen <= GAUGE_STALE_SECONDS
            live += fresh
            for name in COUNTERS:
                if name in GAUGES and not fresh:
                    continue
                out[name] += counters.get(name, 0) or 0
            for name, count in (counters.get("errors") or {}).items():
                errors[name] = errors.get(name, 0) + count
            first.extend((counters.get("first_errors") or [])[:5 - len(first)])
        out.update(errors=errors, first_errors=first[:5], workers=live,
                   rpm=self.gate.rpm, tpm=self.gate.tpm, waits=self.draws,
                   paused=self.paused, cancelled=self.cancelled, stop=self.stop_reason,
                   spent=self.budget.spent if self.budget is not None else None)
        return out


Call = Callable[..., Awaitable[Any]]
Tell = Callable[..., None]


class ClusterGate:
    """A worker's side of the shared limit: ``RateGate``'s methods, backed by the coordinator.

    ``call(name, *args)`` awaits a coordinator method, ``tell(name, *args)`` sends one without
    waiting. Requests drawn and not used go back with the next draw, so a worker that goes idle
    holds at most one draw's worth."""

    def __init__(self, call: Call, tell: Tell, *, clock: Callable[[], float] = time.monotonic):
        self._call = call
        self._tell = tell
        self.clock = clock
        self._requests = 0
        self._tokens = 0.0
        self._lease_until = -math.inf
        self._pause_until = -math.inf
        self._answered = 0
        self._refund = 0.0
        self._limits_sent: tuple | None = None
        self._lock = asyncio.Lock()
        self.waits = 0
        self.draws = 0
        self.rpm: float | None = None  # the cluster's, as of the last draw
        self.tpm: float | None = None
        self.headers_seen = False

    def free(self) -> bool:
        """``RateGate.free``'s counterpart: a request may go now without ``acquire`` (the
        coordinator's lease says the cluster has no limit, and no pause is on)."""
        now = self.clock()
        return not self._lock.locked() and self._pause_until <= now < self._lease_until

    async def acquire(self, tokens: float) -> None:
        async with self._lock:
            while True:
                now = self.clock()
                if self._pause_until > now:
                    self.waits += 1
                    await asyncio.sleep(self._pause_until - now)
                    continue
                if self._lease_until > now:
                    return
                if self._requests >= 1 and (self.tpm is None or self._tokens >= tokens):
                    self._requests -= 1
                    if self.tpm is not None:
                        self._tokens -= tokens
                    return
                wait = await self._draw(tokens)
                if wait > 0:
                    self.waits += 1
                    await asyncio.sleep(wait)

    async def _draw(self, tokens: float) -> float:
        want = max(1, math.ceil((self.rpm or 0.0) / 60.0 * DRAW_SECONDS))
        returned = (self._requests, self._tokens)
        answered, refund = self._answered, self._refund
        self._requests, self._tokens, self._answered, self._refund = 0, 0.0, 0, 0.0
        self.draws += 1
        got, got_tokens, wait, lease, pause, self.rpm, self.tpm = await self._call(
            "draw", want, float(tokens or 0.0), returned, answered, refund)
        now = self.clock()
        self._requests += got
        self._tokens += got_tokens
        self._lease_until = now + lease if lease else -math.inf
        if pause:
            self._pause_until = max(self._pause_until, now + pause)
        return wait

    def give_back(self) -> tuple[int, float]:
        """What this worker drew and did not use (sent back when it closes)."""
        held = (self._requests, self._tokens)
        self._requests, self._tokens = 0, 0.0
        return held

    def settle_tokens(self, charged: float, actual: float) -> None:
        if charged:
            self._refund += charged - actual

    def pause_for(self, seconds: float) -> None:
        self._pause_until = max(self._pause_until, self.clock() + seconds)
        self._tell("pause_for", seconds)

    def learn(self, info: RateInfo) -> None:
        self.headers_seen = True
        limits = (info.limit_requests, info.limit_tokens)
        if limits != self._limits_sent:
            self._limits_sent = limits
            self._lease_until = -math.inf  # a limit is stated: draw from the shared buckets now
            self._tell("learn", info)

    def answered(self) -> None:
        self._answered += 1

    def throttled(self) -> None:
        self._lease_until = -math.inf
        self._tell("throttled")
