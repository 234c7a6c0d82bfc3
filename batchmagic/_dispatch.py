"""The scheduler: a sliding window of requests in flight, limits, retries, cancel / pause / resume.

One feeder coroutine hands units to the backend: it takes the next ready unit (retries first),
waits for a slot in the window and for the rate gate, and starts the attempt as a task. A slot
frees the moment an answer arrives, so the window stays full (no chunks waiting for their slowest
row). Retries sleep off the window: a unit that must wait is parked with ``call_later`` and comes
back through the ready queue.

What happens after an attempt depends on its outcome's category:

    ok          results recorded, the window grows (AIMD)
    rate_limit  the row waits out Retry-After (capped) or a backoff, the window halves; when a tenth
                of recent answers were throttled the whole run pauses for it (not for a stray 429)
    transient   retry with exponential backoff and full jitter; overload also cuts the window;
                a possibly billed failure is retried at most ``billed_retries`` times
    context/row this row's error, no retry
    fatal       the run stops dispatching; finished rows are kept, the rest become NotSentError

Every failure is also shown to the circuit breaker (``_breaker.py``), which stops the run the
same way when the failures say the rest would fail too (a dead server, a daily quota, a wrong
URL). A Retry-After of 0, negative or NaN is no hint at all: the row backs off as if none came.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._backend import FATAL, OK, RATE_LIMIT, ROW, TRANSIENT, Backend, Outcome, Unit
from ._breaker import CircuitBreaker
from ._cost import BudgetGuard, Price
from ._errors import (
    BudgetExceededError,
    CancelledRowError,
    CircuitOpenError,
    NotSentError,
    RowError,
    SchemaError,
)
from ._item_results import ItemResults
from ._limits import RateGate, Window
from ._progress import Progress
from ._schema import InvalidAnswer

log = logging.getLogger("batchmagic")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries (nothing retries forever)."""

    retries: int = 5  # transient failures (5xx, connection, deadline, bad answers)
    parse_retries: int = 1  # re-asks of an answer that does not fit schema=
    rate_limit_retries: int = 30  # 429s are expected while riding a limit
    billed_retries: int = 1  # failures that may already have been billed
    backoff_base: float = 0.5
    rate_limit_base: float = 1.0  # first backoff of a 429 that gives no usable Retry-After
    backoff_max: float = 30.0
    max_wait: float = 120.0  # cap on any one Retry-After the provider asks for


class Dispatcher:
    def __init__(self, units: list[Unit], n_items: int, backend: Backend, *, window: Window,
                 gate: RateGate, policy: RetryPolicy, progress: Progress,
                 on_item: Callable[[int], None] | None = None, results: ItemResults | None = None,
                 price: Price | None = None, budget: BudgetGuard | None = None,
                 breaker: CircuitBreaker | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 check: Callable[[Any], Any] | None = None):
        self.units = units
        self.backend = backend
        self.window = window
        self.gate = gate
        self.policy = policy
        self.progress = progress
        self.results = results if results is not None else ItemResults(n_items)
        self.on_item = on_item  # called with the item index as each item finishes
        self.price = price  # per-row cost from real usage, when the price is known
        self.budget = budget
        self.breaker = breaker
        self.check = check  # schema=: text -> validated value, or InvalidAnswer
        # latencies and congestion times; the limits carry their own. Parked retries are the
        # event loop's timers: a test that moves time runs the loop on this clock too
        self.clock = clock
        self.spent = 0.0  # cost of the answers received in this run
        self.aborted: BaseException | None = None  # what stopped the run (fatal error, budget, ...)
        self.cancelled = False
        self.possibly_billed = 0  # attempts that failed after the provider may have charged
        self._ready: collections.deque[Unit] = collections.deque(units)
        self._retry_ready: collections.deque[Unit] = collections.deque()
        self._parked: set[asyncio.TimerHandle] = set()
        self._parked_units: set[Unit] = set()
        self._tasks: set[asyncio.Task] = set()
        self._outstanding = len(units)
        self._wake = asyncio.Event()
        self._running = asyncio.Event()
        self._running.set()
        self._stop = False
        self._rng = random.Random()
        self._recent: collections.deque[bool] = collections.deque(maxlen=32)  # throttled or not
        self._feeder: asyncio.Task | None = None
        self._not_added: Callable[[], list[Unit]] | None = None  # see expect()

    # -- control (call on the loop thread) ----------------------------------------------------

    def pause(self) -> None:
        self._running.clear()
        self.progress.state = "paused"

    def resume(self) -> None:
        self._running.set()
        if self.progress.state == "paused":
            self.progress.state = "running"

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        self._halt()
        for task in list(self._tasks):
            task.cancel()
        if self._feeder is not None:
            self._feeder.cancel()  # it may be asleep in the rate gate

    def stop(self, reason: BaseException) -> None:
        """Stop dispatching (fatal error, budget, unwritable journal): finished rows are kept,
        in-flight requests finish, the rest become NotSentError."""
        if self.aborted is None:
            self.aborted = reason
            self.progress.message = f"stopped: {reason}"
            self._halt()

    def hold(self, n: int) -> None:
        """Count ``n`` units that another run is answering: the run is not done until they are
        released (found in the journal) or added back (their owner died)."""
        self._outstanding += n

    def release(self, n: int) -> None:
        self._outstanding -= n
        self.progress.version += 1
        if self._outstanding == 0:
            self._wake.set()

    def add(self, units: list[Unit]) -> None:
        """Send more units in this run (previously held or expected ones)."""
        self._ready.extend(units)
        self._wake.set()

    def expect(self, n: int, not_added: Callable[[], list[Unit]]) -> None:
        """Count ``n`` units that will be ``add``-ed while the run goes (claimed a stage at a
        time); if the run stops first, ``not_added()`` hands over those never added, and they
        are settled as not sent with the rest."""
        self._outstanding += n
        self._not_added = not_added

    def _halt(self) -> None:
        self._stop = True
        self._running.set()
        self._wake.set()

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> ItemResults:
        self.progress.state = "running"
        self.progress.concurrency = self.window.current
        self._feeder = asyncio.ensure_future(self._feed())
        try:
            await asyncio.wait({self._feeder})  # returns when the feeder ends, cancelled or not
            if not self._feeder.cancelled() and self._feeder.exception() is not None:
                raise self._feeder.exception()
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        except asyncio.CancelledError:
            self.cancel()
            if self._feeder is not None and not self._feeder.done():
                await asyncio.wait({self._feeder})
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            self._finish_unsent()
            raise
        self._finish_unsent()
        return self.results

    async def _feed(self) -> None:
        window, gate, loop = self.window, self.gate, asyncio.get_running_loop()
        while not self._stop:
            unit = self._next()
            if unit is None:
                if self._outstanding == 0:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            reserved = False
            try:
                if not self._running.is_set():
                    await self._running.wait()
                if self.budget is not None:
                    reserved = await self._reserve(unit)
                    if not reserved:
                        self._ready.appendleft(unit)
                        return
                if not window.try_acquire():
                    await window.acquire()
            except BaseException:  # cancelled while waiting: the unit goes back, never lost
                if reserved:
                    self._unreserve(unit)
                self._ready.appendleft(unit)
                raise
            try:
                if not gate.free():
                    await gate.acquire(unit.tokens)
            except BaseException:
                window.release()
                self._unreserve(unit)
                self._ready.appendleft(unit)
                raise
            if self._stop:
                window.release()
                self._unreserve(unit)
                self._ready.appendleft(unit)
                return
            task = loop.create_task(self._attempt(unit))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._task_done, unit))

    async def _reserve(self, unit: Unit) -> bool:
        """Reserve the unit's worst case. While answers in flight may free budget, wait; when
        even with nothing in flight the next request could overspend, stop the run."""
        budget = self.budget
        while not budget.try_reserve(unit.worst_cost):
            # a finished task may still sit in _tasks until its done-callback runs, and a new
            # one may not have started yet: count the tasks that are not done
            if not any(not t.done() for t in self._tasks):
                self.stop(BudgetExceededError(budget.message(unit.worst_cost)))
                return False
            budget.changed.clear()
            await budget.changed.wait()
            if self._stop:
                return False
        unit.reserved = True
        return True

    def _unreserve(self, unit: Unit, actual: float = 0.0) -> None:
        if self.budget is not None and unit.reserved:  # once per reservation, whatever path
            unit.reserved = False
            self.budget.settle(unit.worst_cost, actual)

    def _next(self) -> Unit | None:
        if self._retry_ready:
            return self._retry_ready.popleft()
        if self._ready:
            return self._ready.popleft()
        return None

    def _task_done(self, unit: Unit, task: asyncio.Task) -> None:
        """A request's task ended (one callback per request: the hot path). A task cancelled
        before its first step never ran ``_attempt``'s own cancel handling: its unit was taken
        from the queue but never sent, so settle it as not sent here."""
        self._tasks.discard(task)
        if not task.cancelled() or all(self.results.done[i] for i in unit.items):
            return
        self.window.release()
        self._unreserve(unit)
        self._settle_unsent(unit, "the run was cancelled")

    async def _attempt(self, unit: Unit) -> None:
        progress = self.progress
        unit.attempts += 1
        progress.in_flight += 1  # (the window's size is shown as _handle sets it: it changes there)
        sent_at = self.clock()
        try:
            outcome = await self.backend.call(unit)
        except asyncio.CancelledError:
            self.window.release()
            progress.in_flight -= 1
            self._unreserve(unit, unit.worst_cost)  # it may have been billed
            self._fail(unit, CancelledRowError(
                "the run was cancelled while this row was in flight", attempts=unit.attempts,
                provider=self.backend.name, possibly_billed=True))
            raise
        except Exception as exc:  # a backend bug must not kill the run: it is this row's error
            log.debug("backend raised", exc_info=True)
            outcome = Outcome(ROW, error_type=RowError,
                              message=f"internal error in {self.backend.name}: {type(exc).__name__}: {exc}")
        latency = self.clock() - sent_at
        self.window.release()
        progress.in_flight -= 1
        try:
            self._handle(unit, outcome, latency, sent_at)
        except Exception as exc:  # a bug handling an answer: the row's error, not a run that
            log.debug("handling an answer raised", exc_info=True)  # waits for it forever
            if not unit.settled and unit not in self._parked_units:
                self._unreserve(unit, unit.worst_cost)  # answered, so billed: count the worst
                self._fail(unit, RowError(
                    f"internal error handling the answer from {self.backend.name}: "
                    f"{type(exc).__name__}: {exc}", attempts=unit.attempts,
                    provider=self.backend.name))

    def _handle(self, unit: Unit, outcome: Outcome, latency: float, sent_at: float) -> None:
        """What an attempt's outcome does: the answer kept or asked again, or the failure
        retried or kept, and what the limits learn from it."""
        progress = self.progress
        if outcome.rate_info is not None:
            self.gate.learn(outcome.rate_info)
        self._recent.append(outcome.category == RATE_LIMIT)
        if outcome.category == OK:
            self.gate.answered()
            if self.breaker is not None:
                self.breaker.success()
            checks = self._check(outcome)
            if checks is None or not self._reask(unit, outcome, checks):
                self._succeed(unit, outcome, latency, checks)
        else:
            if self.breaker is not None and not self._stop:
                reason = self.breaker.failure(outcome)
                if reason is not None:
                    self.stop(CircuitOpenError(reason))
            self._failed(unit, outcome, sent_at)
        progress.concurrency = self.window.current
        progress.rate_waits = self.gate.waits

    def _check(self, outcome: Outcome) -> list[tuple[Any, str | None]] | None:
        """With schema=: each answer's (validated value, None) or (None, what did not fit)."""
        if self.check is None or not outcome.results:
            return None
        checks: list[tuple[Any, str | None]] = []
        for parsed in outcome.results:
            if parsed.tool_calls and not (parsed.output or "").strip():
                checks.append((None, None))  # the model called a tool instead of answering
                continue
            try:
                checks.append((self.check(parsed.output), None))
            except InvalidAnswer as exc:
                cut = "it was cut off at max_tokens (finish_reason 'length'): " \
                    if parsed.finish_reason == "length" else ""
                checks.append((None, f"{cut}{exc}"))
        return checks

    def _reask(self, unit: Unit, outcome: Outcome, checks: list) -> bool:
        """An answer that does not fit the schema is asked again (its cost stays spent), up to
        ``parse_retries`` times; then it is the row's SchemaError (``_succeed``)."""
        if all(why is None for _, why in checks) or self._stop \
                or unit.reasks >= self.policy.parse_retries:
            return False
        spent, _, _ = self._charge(unit, outcome)
        self._unreserve(unit, spent)
        unit.reasks += 1
        progress = self.progress
        progress.retries += 1
        progress.reasked += 1
        progress.retrying += 1
        self._park(unit, 0.0)
        return True

    def _charge(self, unit: Unit, outcome: Outcome) -> tuple[float, list, int]:
        """Count an answer's tokens and cost (paid for, whether it is kept or asked again):
        (the total spent, each result's cost, the output tokens). One pass: it runs per answer."""
        progress, price = self.progress, self.price
        costs: list = []
        spent = 0.0
        inp = out = 0
        for p in outcome.results or ():
            cost = price.cost(p.input_tokens, p.output_tokens) if price is not None else None
            costs.append(cost)
            if cost is not None:
                spent += cost
            inp += p.input_tokens or 0
            out += p.output_tokens or 0
        progress.input_tokens += inp
        progress.output_tokens += out
        self.gate.settle_tokens(unit.tokens, inp + out or unit.tokens)
        self.spent += spent
        progress.cost = self.spent
        return spent, costs, out

    def _succeed(self, unit: Unit, outcome: Outcome, latency: float,
                 checks: list | None = None) -> None:
        r, progress = self.results, self.progress
        spent, costs, out_tokens = self._charge(unit, outcome)
        failed: list[tuple[int, RowError]] = []
        answers = outcome.results or ()
        if checks is None and len(unit.items) > 1 and all(
                p.reasoning is None and p.tool_calls is None and p.logprobs is None
                and p.ttft is None for p in answers):  # a packed request: one step per column
            r.answer_many(unit.items, [p.output for p in answers],
                          [p.finish_reason for p in answers], [p.input_tokens for p in answers],
                          [p.output_tokens for p in answers], costs, latency, unit.attempts)
            answers = ()
        for k, (item, parsed) in enumerate(zip(unit.items, answers)):
            value, why = checks[k] if checks is not None else (None, None)
            r.answer(item, parsed.output, parsed.finish_reason, parsed.reasoning,
                     parsed.input_tokens, parsed.output_tokens, cost=costs[k], latency=latency,
                     attempts=unit.attempts, value=value, tool_calls=parsed.tool_calls,
                     logprobs=parsed.logprobs, ttft=parsed.ttft)
            if why is not None:
                err = SchemaError(f"the answer does not fit the schema: {why}",
                                  raw=parsed.output, attempts=unit.attempts,
                                  provider=self.backend.name)
                r.error[item], r.output[item] = err, None
                failed.append((item, err))
        self._unreserve(unit, spent)
        # queueing shows as latency per answer; normalise by output length so long answers are not
        # mistaken for a congested server
        norm = latency / (1.0 + out_tokens / max(1, len(unit.items)) / 32.0)
        self.window.on_success(norm)
        self.window.latency_congested(self.clock() - latency)
        if failed:
            bad = {item for item, _ in failed}
            progress.finish([i for i in unit.items if i not in bad])
            for item, err in failed:
                progress.finish([item], err)
        else:
            progress.finish(unit.items)
        self._finished(unit)

    def _failed(self, unit: Unit, outcome: Outcome, sent_at: float) -> None:
        policy, progress = self.policy, self.progress
        unit.last = outcome
        if outcome.possibly_billed:
            unit.billed_failures += 1
            self.possibly_billed += 1
        # a possibly billed failure keeps its worst case as spent; other failures cost nothing
        self._unreserve(unit, unit.worst_cost if outcome.possibly_billed else 0.0)
        category = outcome.category
        if outcome.overloaded:
            # throttling halves the window; a 503 / 529 "overloaded" trims it
            self.window.on_congestion(sent_at, 0.5 if category == RATE_LIMIT else 0.8)
        if category == FATAL:
            err = self._error(unit, outcome)
            self.stop(err)
            self._fail(unit, err)
            return
        retry = False
        delay = 0.0
        if not self._stop:
            if category == RATE_LIMIT:
                unit.rate_limited += 1
                progress.rate_limited += 1
                if unit.rate_limited <= policy.rate_limit_retries:
                    retry = True
                    delay = self._rate_limit_wait(unit, outcome)
                    if self._storm():
                        self.gate.pause_for(delay)  # many are throttled: the whole run waits
                        if outcome.rate_info is None:
                            self.gate.throttled()  # and no stated limit: probe for the rate
            elif category == TRANSIENT:
                transient_tries = unit.attempts - unit.rate_limited
                if outcome.possibly_billed and unit.billed_failures > policy.billed_retries:
                    retry = False
                elif transient_tries <= policy.retries:
                    retry = True
                    delay = self._backoff(transient_tries)
                    if outcome.retry_after is not None and outcome.retry_after > 0:
                        delay = max(delay, min(outcome.retry_after, policy.max_wait))
        if retry:
            progress.retries += 1
            progress.retrying += 1
            self._park(unit, delay)
            return
        self._fail(unit, self._error(unit, outcome))

    def _storm(self) -> bool:
        """Throttling is general, not a stray 429: a tenth of the recent answers were throttled.
        Then the whole run waits out the Retry-After; a stray 429 only delays its own row."""
        recent = self._recent
        return len(recent) >= 4 and sum(recent) >= max(2, len(recent) // 10)

    def _rate_limit_wait(self, unit: Unit, outcome: Outcome) -> float:
        """Retry-After when the provider gives a usable one, else an exponential backoff. A hint
        of 0 or less is no hint (it would turn backoff off: a thousand calls a second), and a row
        throttled again and again waits at least a quarter of its backoff, whatever the hint."""
        backoff = self._backoff(unit.rate_limited, base=self.policy.rate_limit_base)
        hint = outcome.retry_after
        if hint is None or not hint > 0:
            return backoff
        floor = backoff / 4 if unit.rate_limited > 1 else 0.0
        return min(max(hint, floor), self.policy.max_wait)

    def _backoff(self, attempt: int, base: float | None = None) -> float:
        base = self.policy.backoff_base if base is None else base
        cap = min(self.policy.backoff_max, base * (2 ** (attempt - 1)))
        return cap / 2 + self._rng.uniform(0, cap / 2)  # "equal jitter": never a zero wait

    def _park(self, unit: Unit, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._parked_units.add(unit)

        def ready() -> None:
            self._parked.discard(handle)
            self._parked_units.discard(unit)
            self.progress.retrying -= 1
            self._retry_ready.append(unit)
            self._wake.set()

        handle = loop.call_later(delay, ready)
        self._parked.add(handle)

    def _error(self, unit: Unit, outcome: Outcome) -> RowError:
        cls = outcome.error_type or RowError
        return cls(outcome.message or outcome.category, attempts=unit.attempts, status=outcome.status,
                   provider=self.backend.name, code=outcome.code,
                   possibly_billed=unit.billed_failures > 0)

    def _fail(self, unit: Unit, err: RowError, *, sent: bool = True) -> None:
        r = self.results
        for item in unit.items:
            if not r.done[item]:
                r.fail(item, err, unit.attempts)
        self.progress.finish(unit.items, err, sent=sent)
        self._finished(unit)

    def _finished(self, unit: Unit) -> None:
        unit.settled = True
        self._outstanding -= 1
        unit.body = None  # settled, never sent again: a million chat requests hold ~200 MB
        if self._outstanding == 0:
            self._wake.set()  # first: the feeder must learn the run is over whatever follows
        if self.on_item is not None:
            for item in unit.items:
                self.on_item(item)

    def _unsent_error(self, unit: Unit, stop: str) -> RowError:
        """A unit never sent is a NotSentError; one that was sent and waited for a retry keeps
        what its last attempt got, and says why it was not tried again."""
        if unit.last is None:
            return NotSentError(f"not sent: {stop}", attempts=unit.attempts,
                                provider=self.backend.name,
                                possibly_billed=unit.billed_failures > 0)
        last = unit.last
        cls = last.error_type or RowError
        return cls(f"{last.message or last.category}; not retried: {stop}",
                   attempts=unit.attempts, status=last.status, provider=self.backend.name,
                   code=last.code, possibly_billed=unit.billed_failures > 0)

    def _finish_unsent(self) -> None:
        """After a stop: every unit not yet finished becomes NotSentError (parked ones too)."""
        for handle in self._parked:
            handle.cancel()
        self._parked.clear()
        pending = list(self._parked_units) + list(self._retry_ready) + list(self._ready)
        if self._not_added is not None:
            pending += self._not_added()
        self.progress.retrying = 0
        self._parked_units.clear()
        self._retry_ready.clear()
        self._ready.clear()
        if not pending:
            return
        if self.aborted is not None:
            reason = getattr(self.aborted, "message", None) or str(self.aborted)
            stop = f"the run stopped after {type(self.aborted).__name__}: {reason}"
        else:
            stop = "the run was cancelled"
        for unit in pending:
            self._settle_unsent(unit, stop)

    def _settle_unsent(self, unit: Unit, stop: str) -> None:
        self._fail(unit, self._unsent_error(unit, stop), sent=unit.attempts > 0)
