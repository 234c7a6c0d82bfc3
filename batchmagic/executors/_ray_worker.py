"""The worker side of a Ray run: batchmagic's own dispatcher, one per worker process.

What crosses from the driver to a worker is a ``WorkerSpec`` (the backend's settings, the retry
policy, the schema, the price: no key, no rows) and, later, units. The key and headers come from
the run's coordinator (``_ray_shared.RunCoordinator.secrets``) when the worker opens.

``Pump`` is a worker's dispatcher over its whole life: one backend (one aiohttp session, or one
loaded engine), one adaptive window, the shared rate limit (``ClusterGate``), the breaker and the
retry policy, fed units as they arrive (from the driver, or from each block a worker plans), so
the window stays full across chunks and blocks. Each unit's items are handed back one by one as
they finish (``on_item``). The budget is reserved from the coordinator before a unit goes in;
every ``REPORT_SECONDS`` the pump reports its counters and reads the control state (pause,
cancel, a stop anywhere in the cluster).

``RowWorker`` is the Ray actor for runs planned on the driver: ``answer(units)`` is a streaming
generator that yields answers as they come, so the driver journals each one moments after it
arrives and a killed worker costs at most the requests it had in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from .._backend import Unit
from .._dispatch import Dispatcher, RetryPolicy
from .._errors import NotSentError, RowError
from .._limits import Window
from .._progress import Progress
from ._ray_shared import COUNTERS, ClusterGate, error_from

#: seconds between a worker's reports to the coordinator (its counters, the control state)
REPORT_SECONDS = 0.2
#: units reserved from the shared budget in one call
RESERVE_BATCH = 64
#: what each finished item carries back, in this order
ANSWER_FIELDS = ("output", "error", "finish_reason", "input_tokens", "output_tokens", "cost",
                 "latency", "attempts", "reasoning", "value", "tool_calls", "logprobs", "ttft")


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to answer units: picklable, and holding no secret."""

    kind: str
    name: str  # the provider's or the engine's name, as errors show it
    url: str | None  # where HTTP requests go (None for an engine)
    dialect: str | None
    engine: Any  # engines.EngineSpec, or None for HTTP
    http: str
    timeout: float | None
    stream: bool
    window: int  # most requests in flight per worker
    concurrency: int | None  # the window's start, when given
    retries: int | None
    parse_retries: int
    breaker: Any  # _breaker.Breaker or None
    schema: Any  # _schema.Schema or None
    price: Any  # _cost.Price or None
    budget: bool  # the coordinator holds a budget: reserve before sending


class _Column(dict):
    """One result column keyed by item id; an item not there reads as the default."""

    __slots__ = ("default",)

    def __init__(self, default: Any = None):
        super().__init__()
        self.default = default

    def __missing__(self, key: int) -> Any:
        return self.default


class SparseResults:
    """``ItemResults`` for a stream of items with ids from anywhere: what the dispatcher
    writes, kept only until the item is handed back (``take``)."""

    def __init__(self):
        for name in ANSWER_FIELDS:
            setattr(self, name, _Column(0 if name == "attempts" else None))
        self.cached = _Column(0)
        self.done = _Column(0)

    def answer(self, i: int, output: Any, finish_reason: str | None, reasoning: str | None,
               input_tokens: int | None, output_tokens: int | None, *, cost: float | None = None,
               latency: float | None = None, attempts: int = 0, cached: bool = False,
               value: Any = None, tool_calls: list | None = None, logprobs: Any = None,
               ttft: float | None = None) -> None:
        for name, v in (("output", output), ("finish_reason", finish_reason),
                        ("reasoning", reasoning), ("input_tokens", input_tokens),
                        ("output_tokens", output_tokens), ("cost", cost), ("latency", latency),
                        ("attempts", attempts), ("value", value), ("tool_calls", tool_calls),
                        ("logprobs", logprobs), ("ttft", ttft)):
            getattr(self, name)[i] = v
        self.done[i] = 1

    def answer_many(self, items: Any, outputs: list, finish_reasons: list, input_tokens: list,
                    output_tokens: list, costs: list, latency: float, attempts: int) -> None:
        for k, i in enumerate(items):
            self.answer(i, outputs[k], finish_reasons[k], None, input_tokens[k], output_tokens[k],
                        cost=costs[k], latency=latency, attempts=attempts)

    def fail(self, i: int, err: RowError, attempts: int) -> None:
        self.error[i] = err
        self.attempts[i] = attempts
        self.done[i] = 1

    def take(self, i: int) -> tuple:
        """Item ``i``'s answer (``ANSWER_FIELDS``), forgotten here."""
        answer = tuple(getattr(self, name).pop(i, getattr(self, name).default)
                       for name in ANSWER_FIELDS)
        self.done.pop(i, None)
        self.cached.pop(i, None)
        return answer


def failed_answer(err: RowError, attempts: int = 0) -> tuple:
    return tuple(err if n == "error" else attempts if n == "attempts" else None
                 for n in ANSWER_FIELDS)


class _RowsOf:
    """How many rows each item answers, for the worker's own ``Progress``."""

    __slots__ = ("rows",)

    def __init__(self, rows: dict[int, int]):
        self.rows = rows

    def __getitem__(self, item: int) -> int:
        return self.rows.get(item, 1)


OnItem = Callable[[int, tuple], None]


class Pump:
    """One worker's dispatcher over its life (see the module)."""

    def __init__(self, spec: WorkerSpec, coordinator: Any):
        """``coordinator``: the run's coordinator actor, or its name (looked up in Ray)."""
        self.spec = spec
        if isinstance(coordinator, str):
            import ray

            coordinator = ray.get_actor(coordinator)
        self.coordinator = coordinator
        self.worker = uuid.uuid4().hex[:12]
        self.backend: Any = None
        self.dispatcher: Dispatcher | None = None
        self.gate: ClusterGate | None = None
        self._rows: dict[int, int] = {}
        self.progress = Progress(item_rows=_RowsOf(self._rows))
        self.extra: dict[str, int] = {}  # counters of the caller's own (blocks, files)
        self._owners: dict[int, OnItem] = {}
        self._share: dict[int, float] = {}  # item -> its part of its unit's budget reservation
        self._settle = [0.0, 0.0]  # reserved, actual: sent with the next report
        self._waiting: list[Unit] = []  # units waiting for budget
        self._reserver: asyncio.Task | None = None  # feeds waiting units in as budget allows
        self._next_id = 0
        self._opened: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._reporter: asyncio.Task | None = None
        self._stop_told = False
        self._paused = False
        self.closed_by: BaseException | None = None  # why no new unit can be sent

    # -- talking to the coordinator ------------------------------------------------------------

    def _call(self, name: str, *args: Any) -> Any:
        return getattr(self.coordinator, name).remote(*args)

    def _tell(self, name: str, *args: Any) -> None:
        getattr(self.coordinator, name).remote(*args)

    # -- opening -------------------------------------------------------------------------------

    def new_ids(self, n: int) -> int:
        """Reserve ``n`` item ids for a caller's own items; returns the first."""
        first, self._next_id = self._next_id, self._next_id + n
        return first

    async def ensure_open(self) -> None:
        if self._opened is None:
            self._opened = asyncio.ensure_future(self._open())
        await asyncio.shield(self._opened)

    async def _open(self) -> None:
        sealed = await self._call("secrets")
        self.backend, window, breaker = await self._connect(sealed)
        self.gate = ClusterGate(self._call, self._tell)
        given = {"parse_retries": self.spec.parse_retries}
        if self.spec.retries is not None:
            given["retries"] = self.spec.retries
        schema = self.spec.schema
        self.results = SparseResults()
        d = self.dispatcher = Dispatcher(
            [], 0, self.backend, window=window, gate=self.gate, policy=RetryPolicy(**given),
            progress=self.progress, on_item=self._item_done, results=self.results,
            price=self.spec.price, breaker=breaker,
            check=schema.parse if schema is not None else None)
        d.hold(1)  # the pump's own: the dispatcher runs until close() lets go of it
        self._task = asyncio.ensure_future(d.run())
        self._task.add_done_callback(self._ended)
        self._reporter = asyncio.ensure_future(self._report_loop())

    async def _connect(self, sealed: Any) -> tuple[Any, Window, Any]:
        spec = self.spec
        if spec.engine is not None:
            from .. import engines

            backend = await asyncio.to_thread(engines.backend_for, spec.engine)
            return backend, Window(spec.window, spec.window, adaptive=False), None
        from ..providers._wire import make_wire
        from .online import http_side

        return http_side(
            name=spec.name, url=spec.url, kind=spec.kind, api_key=sealed.key(),
            dialect=spec.dialect, wire=make_wire(spec.http, spec.window), timeout=spec.timeout,
            headers=sealed.headers, stream=spec.stream, concurrency=spec.concurrency,
            max_window=spec.window, breaker=spec.breaker)

    def _ended(self, task: asyncio.Task) -> None:
        """The dispatcher stopped (closed, cancelled, or a stop): nothing more goes in."""
        if self.closed_by is None:
            d = self.dispatcher
            reason = d.aborted if d is not None and d.aborted is not None else None
            self.closed_by = reason or NotSentError("not sent: the run was cancelled")
        self._fail_waiting()

    # -- units in, answers out -----------------------------------------------------------------

    async def put(self, units: list[Unit], rows: dict[int, int], on_item: OnItem) -> None:
        """Send ``units`` (their items are ids unique in this pump); ``on_item(item, answer)``
        is called as each item finishes. ``rows``: how many rows each item answers."""
        await self.ensure_open()
        for u in units:
            share = u.worst_cost / max(1, len(u.items))
            for i in u.items:
                self._owners[i] = on_item
                self._rows[i] = rows.get(i, 1)
                if self.spec.budget:
                    self._share[i] = share
        self.progress.requests += sum(len(u.items) for u in units)
        units = await self.preflight(units)
        if self.closed_by is not None:
            self._fail_units(units, self._not_sent(self.closed_by))
        elif self.spec.budget:
            self._waiting.extend(units)
            if self._reserver is None or self._reserver.done():
                self._reserver = asyncio.ensure_future(self._reserve())
        else:
            self._send(units)

    def _send(self, units: list[Unit]) -> None:
        d = self.dispatcher
        d.hold(len(units))
        d.add(units)

    async def _reserve(self) -> None:
        """Units go in once the shared budget holds their worst case."""
        try:
            while self._waiting and self.closed_by is None:
                batch = self._waiting[:RESERVE_BATCH]
                granted = await self._call("reserve", self.worker,
                                           [u.worst_cost for u in batch])
                if granted < 0:  # the run stops: the coordinator says why in the next report
                    await self.report()
                    break
                del self._waiting[:granted]
                self._send(batch[:granted])
        finally:
            if self.closed_by is not None:
                self._fail_waiting()

    def fail_items(self, items: list[int], err: RowError, *, sent: bool = False) -> None:
        """Items this pump will not send (a pre-flight error, a stop): handed back as failed."""
        self.progress.finish(items, err, sent=sent)
        for i in items:
            self._hand_back(i, failed_answer(err))

    def _fail_units(self, units: list[Unit], err: RowError) -> None:
        self.fail_items([i for u in units for i in u.items], err)

    def _fail_waiting(self) -> None:
        if self._waiting:
            waiting, self._waiting = self._waiting, []
            self._fail_units(waiting, self._not_sent(self.closed_by))

    @staticmethod
    def _not_sent(reason: BaseException | None) -> RowError:
        if isinstance(reason, NotSentError):
            return reason
        text = f"{type(reason).__name__}: {reason}" if reason is not None else "it stopped"
        return NotSentError(f"not sent: the run stopped after {text}")

    def _item_done(self, item: int) -> None:
        self._hand_back(item, self.results.take(item))

    def _hand_back(self, item: int, answer: tuple) -> None:
        share = self._share.pop(item, 0.0)
        if share:
            err = answer[1]
            if err is None:
                actual = answer[5] or 0.0
            else:
                actual = share if getattr(err, "possibly_billed", False) else 0.0
            self._settle[0] += share
            self._settle[1] += actual
        self._rows.pop(item, None)
        owner = self._owners.pop(item, None)
        if owner is not None:
            owner(item, answer)

    # -- reports and control -------------------------------------------------------------------

    def counters(self) -> dict:
        snap = self.progress.snapshot()
        out = {name: getattr(snap, name) for name in COUNTERS if hasattr(snap, name)}
        d = self.dispatcher
        out["possibly_billed"] = d.possibly_billed if d is not None else 0
        out["rate_waits"] = self.gate.waits if self.gate is not None else 0
        out.update(self.extra, errors=snap.errors, first_errors=snap.first_errors)
        return out

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(REPORT_SECONDS)
            with contextlib.suppress(Exception):  # a missed report is made up by the next
                await self.report()

    async def report(self) -> None:
        d = self.dispatcher
        if d is not None and d.aborted is not None and not self._stop_told:
            self._stop_told = True  # this worker hit a fatal error, the breaker or the budget
            self._tell("stop", type(d.aborted).__name__, str(d.aborted))
        settle, self._settle = tuple(self._settle), [0.0, 0.0]
        paused, cancelled, stop = await self._call("report", self.worker, self.counters(),
                                                   settle)
        self._apply(paused, cancelled, stop)

    def _apply(self, paused: bool, cancelled: bool, stop: tuple[str, str] | None) -> None:
        d = self.dispatcher
        if d is None:
            return
        if cancelled:
            self.cancel()
        elif stop is not None and d.aborted is None:
            reason = error_from(*stop)
            self.closed_by = reason
            d.stop(reason)
            self._fail_waiting()
        elif paused != self._paused:
            self._paused = paused
            d.pause() if paused else d.resume()

    def cancel(self) -> None:
        d = self.dispatcher
        if d is not None and not d.cancelled:
            self.closed_by = NotSentError("not sent: the run was cancelled")
            d.cancel()
            self._fail_waiting()

    async def close(self) -> None:
        """Let the dispatcher finish what it holds, report a last time, hand back unused
        draws, close the backend."""
        d = self.dispatcher
        if d is None:
            return
        if self._reserver is not None:  # units waiting for budget go in (or fail) first
            await asyncio.wait({self._reserver})
        if self.closed_by is None:
            self.closed_by = NotSentError("not sent: the worker closed")
        d.release(1)
        if self._task is not None:
            await asyncio.wait({self._task})
        if self._reporter is not None:
            self._reporter.cancel()
        with contextlib.suppress(Exception):
            await self.report()
        if self.gate is not None:
            returned = self.gate.give_back()
            if returned[0] or returned[1]:
                self._tell("draw", 0, 0.0, returned)
        with contextlib.suppress(Exception):
            await self.backend.aclose()

    # -- engines: pre-flight on the worker, where the model is loaded ---------------------------

    async def preflight(self, units: list[Unit]) -> list[Unit]:
        """Engine rows whose prompt cannot run (empty, or over the context window) become row
        errors here, before any row runs; returns the units left to send."""
        if self.spec.engine is None:
            return units
        from .. import engines

        stand_ins, owners = [], []
        for u in units:
            bodies = u.body if isinstance(u.body, list) else [u.body]
            items = u.items if isinstance(u.body, list) else [u.items]
            for body, item in zip(bodies, items):
                stand_ins.append(SimpleNamespace(body=body, prompt_tokens=0))
                owners.append((u, item))
        failures = await asyncio.to_thread(engines.preflight, self.backend, stand_ins)
        if not failures:
            return units
        bad: dict[int, list[tuple[Any, RowError]]] = {}
        for k, err in failures.items():
            unit, item = owners[k]
            bad.setdefault(id(unit), []).append((item, err))
        keep = []
        for u in units:
            if id(u) not in bad:
                keep.append(u)
                continue
            for item, err in bad[id(u)]:
                self.fail_items(item if isinstance(item, list) else [item], err)
            if isinstance(u.body, list):
                gone = {item for item, _ in bad[id(u)]}
                pairs = [(i, b) for i, b in zip(u.items, u.body) if i not in gone]
                if pairs:
                    keep.append(Unit([i for i, _ in pairs], [b for _, b in pairs], u.tokens,
                                     worst_cost=u.worst_cost))
        return keep


class RowWorker:
    """The Ray actor of a run planned on the driver (wrapped with ``ray.remote`` by the
    executor): one ``Pump``; ``answer`` streams each chunk's answers back as they come."""

    def __init__(self, spec: WorkerSpec, coordinator: Any):
        self.pump = Pump(spec, coordinator)

    def pid(self) -> int:
        return os.getpid()

    async def answer(self, units: list[tuple], rows: dict[int, int]):
        """``units``: ``(items, body, tokens, worst_cost)``; yields lists of
        ``(item, answer)`` as items finish, until every item of the chunk is back."""
        queue: asyncio.Queue = asyncio.Queue()
        chunk = [Unit(list(items), body, tokens, worst_cost=cost)
                 for items, body, tokens, cost in units]
        left = sum(len(u.items) for u in chunk)
        await self.pump.put(chunk, rows, lambda item, answer: queue.put_nowait((item, answer)))
        while left:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            left -= len(batch)
            yield batch

    async def close(self) -> dict:
        await self.pump.close()
        return self.pump.counters()
