"""Rows answered across a Ray cluster: ``executor="ray"``.

Every worker runs batchmagic's own dispatcher (``_ray_worker.Pump``: aiohttp, the adaptive
window, retries, error dialects, the breaker; or an engine it loads once and holds). One actor,
``_ray_shared.RunCoordinator`` on the driver's node, holds what the cluster shares: the rate
limit (given, learned from any worker's headers, or probed; a 429 storm anywhere pauses every
worker), the budget, the control state, the key, and the counters the panel shows.

Two ways through, chosen by where the result goes (``_ray_inputs`` says how planning splits):

* **a frame** (no ``output_path``): the run is planned on the driver as in one process. Units
  go out in chunks, two per worker at a time; each chunk is a streaming call whose answers come
  back as they finish and are journaled on the driver at once. A worker that dies (killed,
  its node lost) is restarted by Ray, and its unanswered units go to the next free worker: what
  is paid twice is at most what it had in flight.
* **files** (``output_path``): Ray Data reads the input in blocks and an actor pool of
  ``_ray_blocks.BlockWorker`` plans, answers and writes each block; the driver only sees one
  summary row per block, and its result is the summary frame (one row per block).

``ray_options``: ``address`` (join a running cluster; without it, and without ``RAY_ADDRESS``,
a local one is started and kept for the next run of this process), ``workers`` (default 2),
``num_cpus`` / ``num_gpus`` per worker (defaults: 0.5 CPU for HTTP, which mostly waits; 1 CPU
for an engine), ``runtime_env``, ``block_rows`` (rows per block, default 1,000).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
from typing import Any

import pandas as pd

from .._backend import Unit
from .._errors import CancelledRowError, ConfigError, NotSentError, RowError
from ._ray_shared import RunCoordinator, SealedSecrets, error_from
from ._ray_worker import ANSWER_FIELDS, RowWorker, WorkerSpec

DEFAULT_WORKERS = 2
DEFAULT_BLOCK_ROWS = 1_000
#: chunks a worker holds at once (one answering, one ready): its window never runs dry
LANES = 2
#: times a unit may be lost with its worker before it is the row's error
MAX_LOSSES = 3
#: seconds between reads of the cluster's counters (the panel refreshes about this often)
POLL_SECONDS = 0.25
#: after a cancel or a stop: seconds to wait for workers to hand back what they hold
STOP_GRACE = 30.0


def _require_ray() -> None:
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("executor='ray' needs Ray: pip install 'batchmagic[ray]'",
                          option="executor")


class RayExecutor:
    def __init__(self, run: Any):
        _require_ray()
        self._run = run
        self._opts = dict(run.options.ray_options or {})
        self._blocks = getattr(run.plan, "blocks", None)
        #: an output_path run's result is its summary (the rows are in the files)
        self.frame = self._summary_frame if self._blocks is not None else None
        self.cancelled = False
        self.stopped_by: BaseException | None = None
        self._coordinator: Any = None
        self._actors: list[Any] = []
        self._controls: list[str] = []
        self._totals: dict = {}
        self._summaries: list[dict] = []
        self._feed: _Feed | None = None
        self._spent = 0.0
        self._resent = 0
        self._losses: dict[int, int] = {}  # id(unit) -> times its worker was lost
        self._workers = int(self._opts.get("workers", DEFAULT_WORKERS))
        self._address: str | None = None
        self._title = run.progress.title

    # -- the protocol --------------------------------------------------------------------------

    def prepare(self) -> None:
        """Nothing to record before the run: the cluster is joined when it runs."""

    async def run(self) -> None:
        if self._blocks is None and not self._run.units:
            return  # the journal had every row: no cluster needed
        self._address = await asyncio.to_thread(connect, self._opts)
        self._coordinator = await self._start_coordinator()
        for action in self._controls:
            self._coordinator.control.remote(action)
        if self._blocks is not None:
            await self._run_blocks()
        else:
            await self._run_rows()

    async def close(self) -> None:
        run = self._run
        if run.durable is not None:
            run.not_sent(run.durable.held_not_sent())
            await run.durable.drain()
        if self._actors or self._coordinator is not None:
            await asyncio.to_thread(self._let_go)

    def control(self, action: str) -> None:
        if action == "cancel":
            self.cancelled = True
            if self._feed is not None:
                self._feed.stop(None)
        if self._coordinator is None:
            self._controls.append(action)
        else:
            self._coordinator.control.remote(action)
        if action in ("pause", "resume") and not self.cancelled:
            self._run.progress.state = "paused" if action == "pause" else "running"

    def facts(self) -> dict:
        t = self._totals
        facts: dict[str, Any] = {
            "executor": "ray", "ray_workers": self._workers, "ray_address": self._address,
            "possibly_billed": t.get("possibly_billed", 0),
            "cost": self._spent if self._run.price is not None else None,
            "stopped_by": str(self.stopped_by) if self.stopped_by is not None else None,
            "learned_rpm": t.get("rpm"), "learned_tpm": t.get("tpm"),
            "resent_after_worker_loss": self._resent,
        }
        if self._blocks is not None:
            facts.update(self._block_facts())
        return facts

    def handle(self, task: Any) -> Any:
        return task

    # -- the cluster ---------------------------------------------------------------------------

    async def _start_coordinator(self) -> Any:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from ._dispatching import _assumed_output

        run, o = self._run, self._run.options
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        # named: workers find it by name, so no actor handle is among their constructor
        # arguments (Ray warns that a restart may not get those back)
        self._coordinator_name = f"batchmagic-run-{run.id}"
        coordinator = ray.remote(RunCoordinator).options(
            name=self._coordinator_name, num_cpus=0, scheduling_strategy=here).remote(
            o.rpm, o.tpm, o.budget, run.price, _assumed_output(o))
        self._actors.append(coordinator)
        await coordinator.hold_secrets.remote(SealedSecrets(run.target.api_key, o.headers))
        return coordinator

    def _spec(self) -> WorkerSpec:
        from .online import _streams

        run, o, target = self._run, self._run.options, self._run.target
        engine = run.engine
        return WorkerSpec(
            kind=o.kind, name=target.name,
            url=None if engine is not None else (run.send_url or target.base_url),
            dialect=target.dialect, engine=engine, http=o.http, timeout=o.timeout,
            stream=False if engine is not None else _streams(o, target),
            window=run.max_window, concurrency=o.concurrency, retries=o.retries,
            parse_retries=o.parse_retries, breaker=run.breaker, schema=run.schema,
            price=run.price, budget=o.budget is not None)

    def _worker_options(self) -> dict:
        engine = self._run.engine is not None
        options: dict[str, Any] = {
            "num_cpus": self._opts.get("num_cpus", 1 if engine else 0.5),
            "num_gpus": self._opts.get("num_gpus", 0),
        }
        if self._opts.get("runtime_env"):
            options["runtime_env"] = self._opts["runtime_env"]
        return options

    def _let_go(self) -> None:
        import ray

        for actor in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self._actors.clear()

    async def _poll(self) -> None:
        """The cluster's counters into the run's progress, a few times a second."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            with contextlib.suppress(Exception):
                await self._read_totals()

    async def _read_totals(self) -> None:
        t = self._totals = await self._coordinator.totals.remote()
        p = self._run.progress
        for name in ("retries", "reasked", "rate_limited", "in_flight", "retrying",
                     "concurrency", "rate_waits"):
            setattr(p, name, t[name])
        if self._blocks is not None:
            self._block_progress(t)
        limit = f" · shared limit {t['rpm']:,.0f} rpm" if t.get("rpm") else ""
        p.title = f"{self._title} · ray x{self._workers}{limit}"
        p.version += 1
        if t["stop"] is not None and self.stopped_by is None and not self.cancelled:
            self.stopped_by = error_from(*t["stop"])
            p.message = f"stopped: {self.stopped_by}"
            if self._feed is not None:
                self._feed.stop(self.stopped_by, tell=False)

    # -- a frame: planned on the driver, answered by RowWorkers --------------------------------

    async def _run_rows(self) -> None:
        import ray

        run = self._run
        units, held = run.units, []
        if run.durable is not None:
            units, held = await run.durable.claim(units)
        feed = self._feed = _Feed(units, self._coordinator)
        if run.durable is not None:
            run.durable.start_writes(run.items_saved, feed.stop)
            run.durable.watch_held(held, feed, run.progress, run.items_cached)
        cls = ray.remote(RowWorker).options(max_restarts=MAX_LOSSES, max_task_retries=0,
                                            **self._worker_options())
        spec = self._spec()
        workers = [cls.remote(spec, self._coordinator_name) for _ in range(self._workers)]
        self._actors.extend(workers)
        self._row_workers = workers
        poller = asyncio.ensure_future(self._poll())
        lanes = [asyncio.ensure_future(self._lane(w)) for w in workers for _ in range(LANES)]
        try:
            await self._until_done(lanes, feed)
            await self._close_workers(workers)
            await self._read_totals()
        finally:
            poller.cancel()
            for lane in lanes:
                lane.cancel()
        self._not_sent(feed.left(), feed)
        self._left_behind(units)

    def _left_behind(self, units: list[Unit]) -> None:
        """Units a worker still held when the run gave up waiting after a stop."""
        r = self._run.results
        err = None
        for u in units:
            for i in u.items:
                if not r.done[i]:
                    err = err or CancelledRowError(
                        "in flight on a Ray worker that did not answer after the run stopped",
                        provider=self._run.target.name, possibly_billed=True)
                    self._take(i, _failure(err))

    async def _until_done(self, lanes: list[asyncio.Task], feed: _Feed) -> None:
        """Wait for the lanes; after a cancel or a stop, at most ``STOP_GRACE`` seconds more
        (a worker that does not answer by then is left behind)."""
        loop = asyncio.get_running_loop()
        pending, deadline = set(lanes), None
        while pending:
            done, pending = await asyncio.wait(pending, timeout=1.0)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()
            if feed.stopped:
                deadline = deadline or loop.time() + STOP_GRACE
                if loop.time() > deadline:
                    return

    async def _close_workers(self, workers: list[Any]) -> None:
        calls = [w.close.remote() for w in workers]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10.0)

    async def _lane(self, worker: Any) -> None:
        """Feed one worker one chunk at a time (it has ``LANES`` of these)."""
        feed, losses_in_a_row = self._feed, 0
        chunk_size = max(1, self._run.max_window)
        while not feed.stopped:
            chunk = feed.take(chunk_size)
            if not chunk:
                if feed.outstanding <= 0:
                    return
                await feed.changed()
                continue
            if await self._stream(worker, chunk):
                losses_in_a_row = 0
            else:
                losses_in_a_row += 1
                if losses_in_a_row >= MAX_LOSSES:
                    return  # this worker is gone for good; the others carry on

    async def _stream(self, worker: Any, chunk: list[Unit]) -> bool:
        """Send a chunk; take its answers as they come. False when the worker was lost (its
        unanswered units go back to the queue)."""
        import ray

        plan = self._run.plan
        waiting = {i: u for u in chunk for i in u.items}
        payload = [(u.items, u.body, u.tokens, u.worst_cost) for u in chunk]
        rows = {i: len(plan.items[i].rows) for i in waiting}
        try:
            stream = worker.answer.options(num_returns="streaming").remote(payload, rows)
            async for ref in stream:
                for item, answer in await ref:
                    unit = waiting.pop(item, None)
                    if unit is not None:
                        self._take(item, answer)
                        if not any(i in waiting for i in unit.items):
                            self._feed.finished(1)
            return True
        except ray.exceptions.RayError as exc:
            self._lost(chunk, waiting, exc)
            return False

    def _lost(self, chunk: list[Unit], waiting: dict[int, Unit], exc: BaseException) -> None:
        """A worker died with these units: send them again elsewhere, at most MAX_LOSSES
        times each (then they are the rows' error)."""
        lost = [u for u in chunk if any(i in waiting for i in u.items)]
        again = []
        for u in lost:
            losses = self._losses[id(u)] = self._losses.get(id(u), 0) + 1
            if losses > MAX_LOSSES:
                err = RowError(f"the Ray worker answering it was lost {MAX_LOSSES} times "
                               f"({type(exc).__name__})", attempts=losses,
                               provider=self._run.target.name, possibly_billed=True)
                for i in u.items:
                    if i in waiting:
                        self._take(i, _failure(err))
                self._feed.finished(1)
            else:
                again.append(u)
        self._resent += len(again)
        self._feed.put_back(again)

    def _take(self, item: int, answer: tuple) -> None:
        """One item's answer from a worker: into the results, the progress and the journal."""
        run = self._run
        r, progress = run.results, run.progress
        if r.done[item]:
            return
        a = dict(zip(ANSWER_FIELDS, answer))
        err = a["error"]
        if err is None:
            r.answer(item, a["output"], a["finish_reason"], a["reasoning"], a["input_tokens"],
                     a["output_tokens"], cost=a["cost"], latency=a["latency"],
                     attempts=a["attempts"], value=a["value"], tool_calls=a["tool_calls"],
                     logprobs=a["logprobs"], ttft=a["ttft"])
            progress.finish([item])
        else:
            r.attempts[item] = a["attempts"] or 0
            run.fail_items([item], err, sent=not isinstance(err, NotSentError))
        progress.input_tokens += a["input_tokens"] or 0
        progress.output_tokens += a["output_tokens"] or 0
        if a["cost"]:
            self._spent += a["cost"]
            progress.cost = self._spent
        run.item_done(item)

    def _not_sent(self, units: list[Unit], feed: _Feed) -> None:
        """Units the run never sent (a cancel, a stop, every worker lost)."""
        if not units:
            return
        if self.cancelled:
            reason = "the run was cancelled"
        elif feed.reason is not None:
            reason = f"the run stopped after {type(feed.reason).__name__}: {feed.reason}"
        else:
            reason = "every Ray worker was lost"
        err = NotSentError(f"not sent: {reason}", provider=self._run.target.name)
        for u in units:
            for i in u.items:
                self._take(i, _failure(err))

    # -- files: planned, answered and written per block by the workers ---------------------------

    async def _run_blocks(self) -> None:
        from ._ray_blocks import Folder

        src = self._blocks
        previous = await asyncio.to_thread(lambda: Folder(src.output_path).parts())
        self._previous = len(previous)
        dataset = self._mapped(self._dataset(src), src, previous)
        poller = asyncio.ensure_future(self._poll())
        self._drained = False
        try:
            await asyncio.to_thread(self._consume, dataset)
            await self._read_totals()
        finally:
            poller.cancel()
        self._block_progress(self._totals, final=True)

    def _dataset(self, src: Any) -> Any:
        import ray.data

        if src.kind == "frame":
            return ray.data.from_pandas(src.data)
        if src.kind == "dataset":
            return src.data
        read = {"parquet": ray.data.read_parquet, "csv": ray.data.read_csv,
                "json": lambda paths: ray.data.read_json(paths, lines=True)}[src.fmt]
        return read(src.data)

    def _mapped(self, dataset: Any, src: Any, previous: list[str]) -> Any:
        import ray.data

        from ._ray_blocks import BlockWorker

        light = dataclasses.replace(src, data=None)  # the rows travel as blocks, not with this
        options = self._worker_options()
        block_rows = int(self._opts.get("block_rows", DEFAULT_BLOCK_ROWS))
        # one actor task answers a whole input block, its batches one after another: a file
        # read as one block would keep every worker but one idle. Streamed, no shuffle.
        dataset = dataset.repartition(target_num_rows_per_block=block_rows)
        return dataset.map_batches(
            BlockWorker, batch_size=block_rows,
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=self._workers,
                                               max_tasks_in_flight_per_actor=LANES),
            fn_constructor_kwargs=dict(spec=self._spec(), coordinator=self._coordinator_name,
                                       source=light, preset=self._run.target.preset,
                                       previous=previous),
            num_cpus=options["num_cpus"], num_gpus=options["num_gpus"] or None,
            runtime_env=options.get("runtime_env"))

    def _consume(self, dataset: Any) -> None:
        """Drive Ray Data (on a thread: its iterator blocks) and keep each block's summary.
        After a cancel or a stop it lets go once no block is in progress, so every block's
        answered rows are written first."""
        with _quiet_ray_data():
            for batch in dataset.iter_batches(batch_size=None, batch_format="pandas"):
                self._summaries.extend(batch.to_dict("records"))
                if self._drained:
                    break

    def _block_progress(self, t: dict, *, final: bool = False) -> None:
        p, src = self._run.progress, self._blocks
        if final and self._summaries:
            s = pd.DataFrame(self._summaries)
            p.done = int(s["rows"].sum())
            p.ok = int(s["ok"].sum() + s["already"].sum())
            p.cached = int(s["already"].sum())
            p.failed = int(s["failed"].sum() + s["not_sent"].sum())
            p.skipped = int(s["skipped"].sum())
            p.input_tokens, p.output_tokens = (int(s["input_tokens"].sum()),
                                               int(s["output_tokens"].sum()))
            self._spent = float(s["cost"].sum())
            # errors by class from the blocks' own counts: a worker's last report may predate
            # its last block (Ray Data does not close its actors before the run returns)
            errors: dict[str, int] = {}
            for block in s["errors"]:
                for name, count in json.loads(block).items():
                    errors[name] = errors.get(name, 0) + count
            if p.failed > sum(errors.values()):
                errors["NotSentError"] = errors.get("NotSentError", 0) + int(s["not_sent"].sum())
            p.errors = errors
        else:
            for name in ("done", "ok", "failed", "cached", "skipped", "input_tokens",
                         "output_tokens", "requests", "requests_done"):
                setattr(p, name, t.get(name, 0))
            self._spent = t.get("cost", 0.0) or 0.0
            p.errors = dict(t.get("errors", {}))  # a new dict: a snapshot copies either
            p.first_errors = list(t.get("first_errors", []))
        p.cost = self._spent
        p.rows = max(src.total or 0, t.get("rows_seen", 0), p.done)
        stopping = self.cancelled or self.stopped_by is not None
        if stopping and not t.get("blocks_active"):
            self._drained = True

    def _block_facts(self) -> dict:
        s = pd.DataFrame(self._summaries) if self._summaries else None

        def total(name: str) -> int:
            return int(s[name].sum()) if s is not None else 0

        return {
            "rows": total("rows"), "ok": total("ok") + total("already"),
            "failed": total("failed"), "skipped": total("skipped"), "cached": total("already"),
            "not_sent": total("not_sent"), "written": total("written"),
            "output_path": self._blocks.output_path,
            "files": sum(len(json.loads(f)) for f in s["files"]) if s is not None else 0,
            "files_before": getattr(self, "_previous", 0), "requests": None,
            "http_requests": None,
        }

    def _summary_frame(self, attrs: dict) -> pd.DataFrame:
        """One row per block: its rows, what was already written, written now (ok, failed,
        skipped), not sent, tokens, cost, errors by class and the files written."""
        frame = pd.DataFrame(self._summaries, columns=[
            "rows", "already", "written", "ok", "failed", "skipped", "not_sent",
            "input_tokens", "output_tokens", "cost", "errors", "files", "problem", "wall_s"])
        frame["errors"] = [json.loads(e) for e in frame["errors"]]
        frame["files"] = [json.loads(f) for f in frame["files"]]
        frame.index.name = "block"
        frame.attrs["batchmagic"] = dict(attrs)
        return frame


class _Feed:
    """The driver's queue of units for a frame run; it also stands in for the dispatcher where
    the journal waits for rows another run is answering (``hold`` / ``release`` / ``add``)."""

    def __init__(self, units: list[Unit], coordinator: Any):
        self._queue: collections.deque[Unit] = collections.deque(units)
        self._coordinator = coordinator
        self.outstanding = len(units)
        self._event = asyncio.Event()
        self._stop = False
        self.reason: BaseException | None = None

    @property
    def stopped(self) -> bool:
        return self._stop

    def take(self, n: int) -> list[Unit]:
        chunk = []
        while self._queue and len(chunk) < n:
            chunk.append(self._queue.popleft())
        return chunk

    def left(self) -> list[Unit]:
        units, self._queue = list(self._queue), collections.deque()
        return units

    async def changed(self) -> None:
        self._event.clear()
        await self._event.wait()

    def _wake(self) -> None:
        self._event.set()

    def finished(self, n: int) -> None:
        self.outstanding -= n
        if self.outstanding <= 0:
            self._wake()

    def put_back(self, units: list[Unit]) -> None:
        self._queue.extendleft(reversed(units))
        self._wake()

    # what the journal's watcher calls (as on a Dispatcher)
    def hold(self, n: int) -> None:
        self.outstanding += n

    def release(self, n: int) -> None:
        self.finished(n)

    def add(self, units: list[Unit]) -> None:
        self._queue.extend(units)
        self._wake()

    def stop(self, reason: BaseException | None, *, tell: bool = True) -> None:
        """Send no more (a cancel, a stop anywhere, an unwritable journal)."""
        if not self._stop:
            self._stop = True
            self.reason = reason
            if tell and reason is not None:
                self._coordinator.stop.remote(type(reason).__name__, str(reason))
        self._wake()


def _failure(err: RowError) -> tuple:
    return tuple(err if n == "error" else None for n in ANSWER_FIELDS)


def connect(options: dict) -> str:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), or start a local one; quietly.
    A cluster this process already joined is used as it is."""
    import ray

    if not ray.is_initialized():
        address = options.get("address") or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.WARNING,
                                      ignore_reinit_error=True)
        if address is None:
            kwargs["include_dashboard"] = False
        start_ray(address=address, **kwargs)
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:
        return "local"


def start_ray(**init_kwargs: Any) -> None:
    """``ray.init`` that tries again when a local node is slow to start: Ray gives its raylet a
    fixed 30 s, which a busy machine can need more than."""
    import ray

    for attempt in range(3):
        try:
            ray.init(**init_kwargs)
            return
        except Exception as exc:
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise


@contextlib.contextmanager
def _quiet_ray_data():
    """No progress bars or INFO lines from Ray Data in a notebook (bounded output)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = {name: getattr(ctx, name) for name in
             ("enable_progress_bars", "enable_operator_progress_bars", "print_on_execution_start")
             if hasattr(ctx, name)}
    for name in saved:
        setattr(ctx, name, False)
    logger = logging.getLogger("ray.data")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(ctx, name, value)
        logger.setLevel(level)
