"""The run lifecycle, written once: journal, progress, display, the refresh timer, per-row
futures, the live frame and the result frame, whatever answers the rows.

``Run(run_plan)`` is built in the caller's thread: it opens the journal, takes the rows it
already answers, builds the units still to send, and makes the executor that will send them
(``executors.EXECUTORS``). ``execute()`` runs on batchmagic's loop thread::

    prepare (once) -> executor.run() -> executor.close() -> state -> journal record -> frame

What an executor may use is the public surface below: ``options``, ``plan``, ``target``,
``engine``, ``price``, ``results``, ``progress``, ``durable``, ``units`` / ``rebuild_units()``,
and the hooks ``item_done``, ``items_saved``, ``items_cached``, ``not_sent``, ``preflight_failed``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as _dt
import sys
import threading
import time
import uuid
from typing import Any

import numpy as np
import pandas as pd

from . import _loop
from ._backend import Unit
from ._dispatch import ItemResults
from ._display import make_display, quiet_logs, summary_line
from ._durable import Durable
from ._errors import ConfigError, NotSentError, RowError, SchemaError
from ._frame import LiveFrame, build_frame
from ._heap import frozen_heap
from ._journal import folder_for, open_journal
from ._planning import RunPlan, build_units
from ._progress import Progress, Snapshot

_REGISTRY_SIZE = 50
RECORD_EVERY_S = 2.0  # a running run's counts in the journal, for readers in other processes
# recent runs in this process, for listing and cancelling; a finished one is kept only as a
# _Retired summary, so its rows and frame are freed once the caller lets go of them
_recent: list[Any] = []


class Run:
    """One run: planned, then executed once."""

    def __init__(self, rp: RunPlan):
        from .executors import executor_for

        self.id = uuid.uuid4().hex[:12]
        self.options, self.target, self.engine = rp.options, rp.target, rp.engine
        self.plan, self.price, self.breaker = rp.plan, rp.price, rp.breaker
        self.schema = rp.options.schema  # a _schema.Schema, or None
        self.send_url, self.max_window = rp.send_url, rp.max_window
        self._rp = rp
        self.results = ItemResults(self.plan.n_items)
        self.durable = self._open_journal()
        cached = self.durable.fill_from_journal() if self.durable is not None else 0
        self.units = self.rebuild_units()
        if rp.executor == "online" and self.plan.table is None:  # (a table holds no dicts)
            # the units hold the bytes each request sends: the dicts behind them are not needed
            # again (the first stays, for showing), and a million of them cost hundreds of MB
            for item in self.plan.items[1:]:
                item.body = None
        self.progress = self._new_progress(cached)
        self.state = "planned"
        self.started = time.time()
        self.frame: pd.DataFrame | None = None
        self.live: LiveFrame | None = None  # the frame a background run fills in, once asked for
        self.display = None
        self._display_open = False
        self._prepared = False
        self._row_done = self.progress.done
        self._row_futures: list[concurrent.futures.Future] | None = None
        self._lock = threading.Lock()
        if self.options.kind == "image":
            from ._image import register_html_formatter

            register_html_formatter()
        self.executor = executor_for(rp.executor, self)
        _recent.append(self)
        del _recent[:-_REGISTRY_SIZE]

    def _open_journal(self) -> Durable | None:
        try:
            folder = folder_for(self.options.cache)
        except TypeError as exc:
            raise ConfigError(str(exc), option="cache") from None
        if folder is None or not self.plan.n_items:
            return None
        return Durable(open_journal(folder), self.id, self.plan, self.results,
                       model=self.options.model,
                       check=self.schema.parse if self.schema is not None else None)

    def _new_progress(self, cached: int) -> Progress:
        plan, o = self.plan, self.options
        progress = Progress(
            title=f"{o.kind} {o.model or self.engine_model()} @ {self.target.name}",
            rows=plan.n_rows, requests=sum(len(u.items) for u in self.units),
            done=len(plan.row_errors) + len(plan.skipped) + cached,
            ok=cached, cached=cached, failed=len(plan.row_errors), skipped=len(plan.skipped),
            item_rows=_item_rows(plan),
        )
        for err in plan.row_errors.values():  # pre-flight failures are failed rows too
            progress.error(err)
        return progress

    def engine_model(self) -> str:
        """The model an engine runs when none was named (its file's name), else ""."""
        if self.engine is None:
            return ""
        import os

        return os.path.basename(str(self.engine.model)) or str(self.engine.model)

    # -- what executors use ------------------------------------------------------------------------

    def rebuild_units(self) -> list[Unit]:
        """The units for the items not done yet (after pre-flight or the journal took some)."""
        todo = np.flatnonzero(np.frombuffer(self.results.done, dtype=np.uint8) == 0).tolist()
        self.units = build_units(self._rp, todo)
        return self.units

    def item_done(self, item: int) -> None:
        """An item got its result: it counts as finished once the journal has it."""
        if self.durable is not None:
            self.durable.answered(item)
        else:
            self.items_saved([item])

    def items_saved(self, items: list[int]) -> None:
        """Items are final (committed to the journal, or there is none): settle their rows."""
        if self.plan.identity:  # request i answers row i: nothing to look up
            self._row_done += len(items)
            if self._row_futures is not None:
                with self._lock:
                    for pos in items:
                        self._settle(pos)
            return
        rows_of = self.plan.rows_of
        for item in items:
            rows = rows_of(item)
            self._row_done += len(rows)
            if self._row_futures is not None:
                with self._lock:
                    for pos in rows:
                        self._settle(pos)

    def items_cached(self, items: list[int]) -> None:
        """Items another run answered while this one waited for them."""
        self.progress.finish(items, cached=True)
        self.items_saved(items)

    def not_sent(self, units: list[Unit]) -> None:
        """Units another run was answering when this one stopped: never sent by this run."""
        for u in units:
            err = NotSentError("not sent: another run was answering it when this run stopped",
                               provider=self.target.name)
            self.fail_items([i for i in u.items if not self.results.done[i]], err, sent=False)
            self.items_saved(u.items)

    def preflight_failed(self, errors: dict[int, RowError]) -> None:
        """Items an executor refused before sending (an engine's context window): row errors,
        never journaled (the next run checks them again)."""
        for i, err in errors.items():
            self.fail_items([i], err)
        if errors:
            self.items_saved(list(errors))
            self.rebuild_units()

    def check_answers(self, items: list[int]) -> None:
        """With schema=: answers that came without the dispatcher (a Batch API job's output)
        get their validated value, or become the row's SchemaError (no re-ask: the job is
        over; ``finish_online`` can ask those rows again)."""
        if self.schema is None:
            return
        r = self.results
        for i in items:
            if r.error[i] is not None or not r.done[i]:
                continue
            try:
                r.value[i] = self.schema.parse(r.output[i])
            except ValueError as exc:
                r.error[i] = SchemaError(f"the answer does not fit the schema: {exc}",
                                         raw=r.output[i], attempts=r.attempts[i],
                                         provider=self.target.name)
                r.output[i] = None

    def fail_items(self, items: list[int], err: RowError, *, sent: bool = True) -> None:
        for i in items:
            self.results.error[i] = err
            self.results.done[i] = 1
        if items:
            self.progress.finish(items, err, sent=sent)

    # -- the lifecycle (loop thread) -----------------------------------------------------------------

    def prepare(self) -> None:
        """The executor's work before anything runs (a Batch API job recorded in the journal).
        ``submit`` calls it in the caller's thread, so it has happened when ``submit`` returns."""
        if not self._prepared:
            self._prepared = True
            self.executor.prepare()

    async def execute(self) -> pd.DataFrame:
        try:
            return await self._execute()
        except BaseException:
            if self.state == "planned":  # stopped before it ran (a refused Batch API file):
                self.state = self.progress.state = "aborted"  # not a run still to come
            raise
        finally:
            _retire(self)

    async def _execute(self) -> pd.DataFrame:
        if not self._prepared:
            await asyncio.to_thread(self.prepare)
        executor = self.executor
        self.state = self.progress.state = "running"
        if self.durable is not None:
            self.durable.note_run(self.record(live=True))
        display = self.open_display()
        refresher = asyncio.ensure_future(self._refresh(display))
        t0 = time.monotonic()
        failure: BaseException | None = None
        try:
            with quiet_logs(), frozen_heap():
                await executor.run()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            refresher.cancel()
            await executor.close()
            self.progress.finished = time.monotonic()
            self.state = self._final_state(failure)
            self.progress.state = self.state
            if self.durable is not None:
                await self.durable.finish(self.record())
            self._close_display(display)
        return self._hand_over(self._frame(time.monotonic() - t0))

    def _final_state(self, failure: BaseException | None) -> str:
        executor = self.executor
        if executor.cancelled or isinstance(failure, asyncio.CancelledError):
            return "cancelled"
        if executor.stopped_by is not None or failure is not None:
            return "aborted"
        return "done"

    def _close_display(self, display) -> None:
        snap = self.progress.snapshot()
        if display is not None:
            display.close(snap)
        elif self.state != "done" and summary_line(snap):  # a stop is said once, even unasked
            print(summary_line(snap), file=sys.stderr)

    def _hand_over(self, frame: pd.DataFrame) -> pd.DataFrame:
        with self._lock:
            if self.live is not None:  # the frame handed out while running becomes the result
                self.live.finish(frame)
                frame = self.live.frame
            self.frame = frame
        return frame

    async def _refresh(self, display) -> None:
        """The run's one timer: the display and the live frame change here, never per row."""
        from ._display import MAX_UPDATES_PER_S

        noted = time.monotonic()
        while True:
            await asyncio.sleep(1.0 / MAX_UPDATES_PER_S)
            if self.live is not None:
                self.live.sync(self.attrs(None))
            if display is not None:
                display.update(self.progress.snapshot())
            if self.durable is not None and time.monotonic() - noted >= RECORD_EVERY_S:
                noted = time.monotonic()
                self.durable.note_run(self.record(live=True))

    def open_display(self, background: bool = False):
        """Create the display, once. Called in the thread that starts the run: in a kernel that
        ties the panel to the cell that started it (the loop thread has no cell of its own)."""
        if not self._display_open:
            self._display_open = True
            # an output_path Ray run plans its rows per block, where they are read
            rows = self.plan.n_rows > 0 or getattr(self.plan, "blocks", None) is not None
            self.display = make_display(self.options.progress and rows,
                                        self.progress.snapshot(), control=self.control,
                                        background=background)
        return self.display

    def control(self, action: str) -> None:
        """"pause", "resume" or "cancel", from any thread."""
        _loop.call(lambda: self.executor.control(action))

    # -- what the run says: frames, attrs, records -------------------------------------------------

    def live_frame(self) -> pd.DataFrame:
        """ONE frame of the final shape, filled in from the refresh timer as rows finish; when
        the run ends it holds exactly the result (and is the frame ``wait()`` returns)."""
        with self._lock:
            if self.frame is not None:
                return self.frame
            if getattr(self.executor, "frame", None) is not None:
                return self.executor.frame(self.attrs(None))  # its rows are not here
            if self.live is None:
                self.live = LiveFrame(self.plan, self.results, attrs=self.attrs(None),
                                      schema=self.schema)
            return self.live.frame

    def _frame(self, wall: float | None = None) -> pd.DataFrame:
        if getattr(self.executor, "frame", None) is not None:
            return self.executor.frame(self.attrs(wall))  # its rows are not here
        return build_frame(self.plan, self.results, attrs=self.attrs(wall), schema=self.schema)

    def attrs(self, wall: float | None) -> dict:
        """``df.attrs["batchmagic"]``: counts in rows, then what the executor adds."""
        p = self.progress
        facts = {
            "run_id": self.id, "kind": self.options.kind, "model": self.options.model,
            "provider": self.target.name, "state": self.state,
            "rows": self.plan.n_rows, "requests": len(self.plan.items),
            "http_requests": len(self.units),
            # counts are rows; "cached" rows (answered by the journal) are part of "ok"
            "ok": p.ok, "failed": p.failed, "skipped": p.skipped, "cached": p.cached,
            "journal": str(self.durable.journal.path) if self.durable is not None else None,
            "price": (f"${self.price.input:g} / ${self.price.output:g} per 1M tokens "
                      f"({self.price.source})") if self.price is not None else None,
            "cost_saved": self._cost_saved(),
            "retries": p.retries, "rate_limited": p.rate_limited, "possibly_billed": 0,
            "input_tokens": p.input_tokens, "output_tokens": p.output_tokens, "cost": None,
            "stopped_by": None,
            "started": _dt.datetime.fromtimestamp(self.started, _dt.timezone.utc).isoformat(),
            "wall_s": wall,
        }
        facts.update(self.executor.facts())
        return facts

    def _cost_saved(self) -> float | None:
        if self.durable is None or not self.durable.cached_items:
            return None
        costs = [self.results.cost[i] for i in self.durable.cached_items]
        return None if any(c is None for c in costs) else float(sum(costs))

    def record(self, live: bool = False) -> dict:
        """The run as the journal's runs table keeps it (``live``: while it runs, unfinished)."""
        p = self.progress
        return dict(started=self.started, finished=None if live else time.time(),
                    state=self.state,
                    kind=self.options.kind, model=self.options.model, provider=self.target.name,
                    endpoint=self.plan.endpoint, template=self.plan.template,
                    rows=self.plan.n_rows, requests=len(self.plan.items), cached=p.cached,
                    ok=p.ok, failed=p.failed, cost=self.executor.facts().get("cost"))

    def summary(self) -> dict:
        """What ``%batch_runs`` lists: counts in rows."""
        s = self.progress.snapshot()
        return {
            "run_id": self.id, "state": self.state, "kind": self.options.kind,
            "model": self.options.model, "where": self.target.name, "rows": self.plan.n_rows,
            "finished": self.finished_rows, "ok": s.ok, "failed": s.failed, "cached": s.cached,
            "started": time.strftime("%H:%M:%S", time.localtime(self.started)),
            "elapsed_s": round(s.elapsed, 1) if self.state != "planned" else None,
        }

    # -- per-row futures (thread-safe) ---------------------------------------------------------------

    @property
    def finished_rows(self) -> int:
        return self._row_done

    def row_futures(self) -> list[concurrent.futures.Future]:
        with self._lock:
            if self._row_futures is None:
                self._row_futures = [concurrent.futures.Future() for _ in range(self.plan.n_rows)]
                for pos in range(self.plan.n_rows):
                    self._settle(pos)
        return self._row_futures

    def _settle(self, pos: int) -> None:
        fut = self._row_futures[pos]  # type: ignore[index]
        if fut.done():
            return
        item = self.plan.row_item[pos]
        if pos in self.plan.row_errors:
            fut.set_exception(self.plan.row_errors[pos])
        elif pos in self.plan.skipped:
            fut.set_result(None)
        elif item >= 0 and self.results.done[item]:
            err = self.results.error[item]
            if err is not None:
                fut.set_exception(err.for_row(self.plan.index[pos]))
            else:
                fut.set_result(self.results.output[item])


def _item_rows(plan: Any) -> Any:
    """How many rows each request answers, for the progress counters: None when each answers
    one (request i is row i), the plan's counts for a table, else read from its items."""
    if plan.identity:
        return None
    return plan.item_rows() if plan.table is not None else _ItemRows(plan.items)


class _ItemRows:
    """How many input rows each request answers, read from the plan (no copy for 1M rows)."""

    __slots__ = ("items",)

    def __init__(self, items: list):
        self.items = items

    def __getitem__(self, i: int) -> int:
        return len(self.items[i].rows)

    def __len__(self) -> int:
        return len(self.items)


class _Retired:
    """A finished run as the registry keeps it: its summary, final counters and display (a
    few kilobytes), none of its inputs, plan or frame."""

    __slots__ = ("id", "state", "started", "progress", "display", "_summary")

    def __init__(self, run: Run):
        self.id, self.state, self.started = run.id, run.state, run.started
        self._summary = run.summary()
        self.progress = Progress(**{k: getattr(run.progress, k)
                                    for k in Snapshot.__dataclass_fields__})
        self.display = run.display

    def summary(self) -> dict:
        return dict(self._summary)

    def control(self, action: str) -> None:
        """A finished run has nothing left to pause, resume or cancel."""


def _retire(run: Run) -> None:
    for i, entry in enumerate(_recent):
        if entry is run:
            _recent[i] = _Retired(run)
            return


def recent_runs() -> list:
    """Runs of this process, oldest first: live ``Run`` objects and ``_Retired`` summaries."""
    return list(_recent)
