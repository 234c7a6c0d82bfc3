"""The journal side of one run: cache lookup before it, batched durable writes during it, leases
so that two runs do not pay for the same row, and the run's record after it.

A row counts as finished (its future resolves, ``finished_count`` moves) only once its answer is
committed. Writes go to one worker thread as group commits: an answer is written at once when the
writer is idle, and answers that arrive during a write are written together next. A crash loses
the requests in flight and at most the one write under way; the journal's cost stays small
because batches grow with the load.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import itertools
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ._backend import Unit
from ._errors import CancelledRowError, NotSentError, RowError
from ._journal import AnswerBatch, Journal, JournalError, encode_result

HELD_POLL_SECONDS = 1.0
RENEW_SECONDS = 20.0
#: requests claimed before the first is sent; later stages grow fourfold up to STAGE_ITEMS
FIRST_STAGE_ITEMS = 4096
STAGE_ITEMS = 1 << 16


class Durable:
    def __init__(self, journal: Journal, run_id: str, plan: Any, results: Any, *,
                 model: str | None, check: Callable[[Any], Any] | None = None):
        self.journal = journal
        self.check = check  # schema=: a stored answer must still fit it to count
        self.run_id = run_id
        self.plan = plan
        self.results = results
        self.model = model
        self.cached_items: set[int] = set()
        self._pending: list[int] = []
        self._flush_handle: asyncio.Handle | None = None
        self._writing: concurrent.futures.Future | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._noting: concurrent.futures.Future | None = None
        self._on_saved: Callable[[list[int]], None] | None = None
        self._on_error: Callable[[BaseException], None] | None = None
        self._held: list[Unit] = []
        self._watcher: asyncio.Task | None = None
        self._claimer: asyncio.Task | None = None  # claim_later's stages
        self._more_held = asyncio.Event()  # a stage found keys another run holds
        self.write_error: BaseException | None = None
        # the items this run has committed, and the journal file (generation) they are in: if
        # the file is replaced (deleted, or damaged and moved aside) they are written again
        self._saved: list[np.ndarray] = []  # per write (a Python int per row is ~36 bytes)
        self._generation = journal.generation

    # -- before: the cache --------------------------------------------------------------------

    def fill_from_journal(self) -> int:
        """Answer every item the journal already has. Returns the number of rows answered."""
        plan = self.plan
        if not self.journal.has_answers(plan.endpoint):  # then no key needs hashing yet
            return 0
        found = self.journal.find(plan.keys, scope=plan.endpoint)
        if not len(found):
            return 0
        taken = []
        for j, idx in enumerate(found.at.tolist()):
            output, finish, reasoning, extra = found.answer(j)
            if self._take(idx, output, finish, reasoning, extra, found.usage(j)):
                taken.append(idx)
        return int(plan.item_rows()[taken].sum()) if taken else 0

    def _fill(self, idx: int, rec) -> bool:
        """Take a stored answer (a journal ``Record``)."""
        return self._take(idx, rec.output, rec.finish_reason, rec.reasoning, rec.extra,
                          (rec.input_tokens, rec.output_tokens, rec.cost, rec.latency,
                           rec.attempts))

    def _take(self, idx: int, output: Any, finish: str | None, reasoning: str | None,
              extra: dict, usage: tuple) -> bool:
        """Take a stored answer; with a schema, only one that still fits it (a model's
        validators may have changed since: such an answer is asked again)."""
        value = None
        if self.check is not None:
            try:
                value = self.check(output)
            except ValueError:
                return False
        input_tokens, output_tokens, cost = usage[:3]
        self.results.answer(idx, output, finish, reasoning, input_tokens, output_tokens,
                            cost=cost, cached=True, value=value,
                            tool_calls=extra.get("tool_calls"), logprobs=extra.get("logprobs"))
        self.cached_items.add(idx)
        return True

    # -- during: leases and writes ------------------------------------------------------------

    async def claim(self, units: list[Unit]) -> tuple[list[Unit], list[Unit]]:
        """Split ``units`` into those to send now and those another live run is answering."""
        if not units:
            return units, []
        plan, run_id = self.plan, self.run_id
        items = np.fromiter(itertools.chain.from_iterable(u.items for u in units), np.int64)
        # the keys are hashed on the journal's thread, as far as these units go (a table's
        # keys are made when first asked for)
        held = await asyncio.get_running_loop().run_in_executor(
            self._pool(), lambda: self.journal.claim(_keys_of(plan, items), run_id))
        if not held:
            return units, []
        now, later = [], []
        key = plan.key
        for u in units:
            (later if any(key(i) in held for i in u.items) else now).append(u)
        return now, later

    async def claim_first(self, units: list[Unit]) -> tuple[list[Unit], list[Unit], list[Unit]]:
        """(to send now, held by another run, to claim later with ``claim_later``): the first
        ``FIRST_STAGE_ITEMS`` requests are claimed before anything is sent, the rest while
        those are."""
        first = _stage(units, FIRST_STAGE_ITEMS)
        now, held = await self.claim(first)
        return now, held, units[len(first):]

    def claim_later(self, units: list[Unit], dispatcher, progress) -> None:
        """Claim ``units`` a stage at a time while the first ones are sent, handing each
        stage's to ``dispatcher`` as it is claimed (those another run is answering are
        waited for as ``watch_held`` waits). Claiming a million keys (and hashing them) takes
        a second or more; the first requests need not wait for it."""
        rest = collections.deque(units)

        def not_added() -> list[Unit]:  # the run stopped: these are settled as not sent
            left = list(rest)
            rest.clear()
            return left

        dispatcher.expect(len(units), not_added)
        self._claimer = asyncio.ensure_future(self._claim_stages(rest, dispatcher, progress))

    async def _claim_stages(self, rest: collections.deque, dispatcher, progress) -> None:
        size = FIRST_STAGE_ITEMS
        while rest and not dispatcher._stop:
            size = min(size * 4, STAGE_ITEMS)
            stage = _stage(rest, size)  # left in ``rest`` until claimed
            try:
                now, held = await self.claim(stage)
            except Exception as exc:  # an unwritable journal stops the run as a write would
                self._failed(exc)
                return
            if dispatcher._stop or not rest:  # stopped meanwhile: left to be settled unsent
                return
            for _ in stage:
                rest.popleft()
            dispatcher.add(now)
            if held:
                self._held.extend(held)
                self._more_held.set()
                _say_held(progress, self._held)

    def watch_held(self, held: list[Unit], dispatcher, progress, on_cached: Callable) -> None:
        """Wait for units another run is answering: take their answers from the journal, or send
        them if that run dies. Also keeps this run's own leases fresh."""
        self._held = list(held)
        if held:
            dispatcher.hold(len(held))
            _say_held(progress, held)
        self._watcher = asyncio.ensure_future(self._watch(dispatcher, progress, on_cached))

    async def _watch(self, dispatcher, progress, on_cached) -> None:
        try:
            await self._watching(dispatcher, progress, on_cached)
        except Exception as exc:  # the journal failed: stop the run as a failed write does
            self._failed(exc)  # (held rows would otherwise be waited for forever)

    async def _watching(self, dispatcher, progress, on_cached) -> None:
        loop = asyncio.get_running_loop()
        last_renew = time.monotonic()
        while True:
            with contextlib.suppress(asyncio.TimeoutError):  # a later stage's held units wake it
                await asyncio.wait_for(self._more_held.wait(),
                                       HELD_POLL_SECONDS if self._held else RENEW_SECONDS)
            self._more_held.clear()
            if time.monotonic() - last_renew >= RENEW_SECONDS:
                await loop.run_in_executor(self._pool(), self.journal.renew, self.run_id)
                last_renew = time.monotonic()
            if not self._held or dispatcher._stop:
                continue
            key = self.plan.key
            watching = list(self._held)  # a claim stage may add more while this one waits
            keys = [key(i) for u in watching for i in u.items]
            found = await loop.run_in_executor(
                self._pool(), functools.partial(self.journal.lookup, keys,
                                                scope=self.plan.endpoint))
            if dispatcher._stop:  # stopped meanwhile: the held rows are reported not sent
                continue
            still: list[Unit] = []
            retry: list[Unit] = []
            for u in watching:
                if all(key(i) in found for i in u.items):
                    for i in u.items:
                        self._fill(i, found[key(i)])
                    on_cached(u.items)
                    dispatcher.release(1)
                else:
                    retry.append(u)
            if retry:
                again = await loop.run_in_executor(
                    self._pool(), self.journal.claim,
                    [key(i) for u in retry for i in u.items], self.run_id)
                for u in retry:
                    if dispatcher._stop or any(key(i) in again for i in u.items):
                        still.append(u)
                    else:
                        dispatcher.add([u])  # its owner died or gave up: send it ourselves
            seen = set(watching)
            self._held = still + [u for u in self._held if u not in seen]
            if not self._held:
                progress.message = ""

    def held_not_sent(self) -> list[Unit]:
        """The rows still held by other runs when this run stopped; nothing watches or claims
        for it any more."""
        for task in (self._watcher, self._claimer):
            if task is not None:
                task.cancel()
        held, self._held = self._held, []
        return held

    def note_run(self, fields: dict) -> None:
        """The run's record while it runs (the JupyterLab sidebar and status bar read it), on
        the writer thread, never waited for; skipped while the last one is being written. The
        final record goes through the same thread after it, so it is the one that stays."""
        if self._noting is not None and not self._noting.done():
            return
        self._noting = self._pool().submit(self._note_run, fields)

    def _note_run(self, fields: dict) -> None:
        try:
            self.journal.record_run(run_id=self.run_id, pid=os.getpid(), **fields)
        except Exception:
            pass  # cosmetic, as the final record is

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:  # one writer thread: SQLite writes are serial anyway
            self._executor = concurrent.futures.ThreadPoolExecutor(1, "batchmagic-journal")
        return self._executor

    def start_writes(self, on_saved: Callable[[list[int]], None],
                     on_error: Callable[[BaseException], None]) -> None:
        self._on_saved, self._on_error = on_saved, on_error

    def answered(self, item: int) -> None:
        """Called on the loop thread as each item finishes. Group commit: when no write is in
        progress the answer is written at once (with whatever else finished in the same loop
        turn); answers that arrive during a write go into the next one, so batches grow with the
        load and a crash loses at most one write's worth beyond the requests in flight."""
        self._pending.append(item)
        if self._flush_handle is None and self._writing is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._writing is not None or not self._pending:
            return  # the write in progress flushes again when it is done
        batch, self._pending = self._pending, []
        loop = asyncio.get_running_loop()
        self._writing = fut = loop.run_in_executor(self._pool(), self._write, batch)
        fut.add_done_callback(lambda f: self._written(f, batch))

    def _write(self, batch: list[int]) -> None:
        self._commit(batch)
        self._saved.append(np.array(batch, dtype=np.int64))

    def _commit(self, batch: list[int]) -> None:
        """Write ``batch``. If the journal file was replaced since this run's last write, the
        answers this run wrote before went with the old file: write them again with it."""
        for _ in range(3):
            generation = self.journal.generation
            items = batch if generation == self._generation else \
                np.concatenate([*self._saved, np.zeros(0, np.int64)]).tolist() + batch
            answers, failed = self._records(items)
            if answers is not None or failed:
                self.journal.write_answers(answers, failed)
            if self.journal.generation == generation:  # no new file under the write
                self._generation = generation
                return
        raise JournalError(f"the journal {self.journal.path} was replaced again at each write")

    def _confirm(self) -> None:
        """After the last write: the journal file is still the one written to, or this run's
        answers are written again into the one now at its path."""
        self.journal.check()
        if self.journal.generation != self._generation:
            self._commit([])

    def _written(self, fut, batch: list[int]) -> None:
        self._writing = None
        exc = fut.exception()
        if exc is not None:
            self._failed(exc)
        if self._on_saved is not None:
            # rows whose write failed are still returned (they are in memory), but the run stops
            self._on_saved(batch)
        if self._pending:
            self._flush()

    def _failed(self, exc: BaseException) -> None:
        self.write_error = exc
        if self._on_error is not None:
            self._on_error(exc if isinstance(exc, JournalError)
                           else JournalError(f"cannot write the journal: {exc}"))

    def _records(self, items: list[int]) -> tuple[AnswerBatch | None, list[tuple]]:
        """What to write for ``items``: the answers, many to one row, and a row per failure
        (rows never answered, cut off or not sent, are not written)."""
        errors = self.results.error[np.asarray(items, dtype=np.int64)].tolist()
        ok: list[int] = items
        failed: list[tuple] = []
        if any(errors):  # (errors are objects, never falsy; the usual batch has none)
            ok = []
            for i, err in zip(items, errors):
                if err is None:
                    ok.append(i)
                elif not isinstance(err, (NotSentError, CancelledRowError)):
                    failed.append(self._failure(i, err))
        return (self._answers(ok) if ok else None), failed

    def _answers(self, ok: list[int]) -> AnswerBatch:
        r = self.results
        at = np.asarray(ok, dtype=np.int64)
        outputs = r.output[at].tolist()
        vectors = _one_block(outputs) if self.plan.kind == "embedding" else None
        encoded = None
        if vectors is None:
            finish = r.finish_reason[at].tolist()
            if r.reasoning or r.tool_calls or r.logprobs:
                encoded = [encode_result(out, f, r.reasoning[i],
                                         {"tool_calls": r.tool_calls[i], "logprobs": r.logprobs[i]})
                           for i, out, f in zip(ok, outputs, finish)]
            else:  # no answer of the run has more than its text (most runs): nothing to look up
                encoded = [encode_result(out, f, None) for out, f in zip(outputs, finish)]
        return AnswerBatch(
            self.plan.endpoint, self.plan.kind, self.model, self.run_id,
            _keys_of(self.plan, ok), r.input_tokens.take(ok), r.output_tokens.take(ok),
            r.cost.take(ok), r.latency.take(ok), r.attempts.take(ok),
            vectors=vectors, outputs=encoded)

    def _failure(self, i: int, err: BaseException) -> tuple:
        """A failed row as the journal's ``rows`` table keeps it (one per key)."""
        r = self.results
        assert isinstance(err, RowError)
        return (self.plan.key(i), "error", self.plan.kind, self.model, None,
                r.input_tokens[i], r.output_tokens[i], r.cost[i], r.latency[i], r.attempts[i],
                type(err).__name__, err.message[:2000], err.status, err.code,
                int(err.possibly_billed), self.run_id)

    async def drain(self) -> None:
        """Wait until every answer so far is committed, and is still in the journal file at the
        journal's path (never report as kept what went with a deleted file)."""
        while self._pending or self._writing is not None:
            if self._writing is None:
                self._flush()
            writing = self._writing
            if writing is not None:
                await asyncio.wait({writing})
            await asyncio.sleep(0)  # let the write's done-callback run
        if self._saved and self.write_error is None:
            try:
                await asyncio.get_running_loop().run_in_executor(self._pool(), self._confirm)
            except Exception as exc:
                self._failed(exc)

    # -- after --------------------------------------------------------------------------------

    async def finish(self, run_fields: dict) -> None:
        for task in (self._watcher, self._claimer):
            if task is not None:
                task.cancel()
        try:
            await self.drain()
        except Exception:  # already reported through on_error
            pass
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._pool(), self.journal.release, self.run_id)
            await loop.run_in_executor(self._pool(), lambda: self.journal.record_run(
                run_id=self.run_id, pid=os.getpid(), **run_fields))
        except Exception:
            pass  # the rows are what matters; a missing run record is cosmetic
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


def _stage(units: Iterable[Unit], items: int) -> list[Unit]:
    """The first units, until they hold ``items`` requests (at least one unit)."""
    stage, n = [], 0
    for u in units:
        if n >= items:
            break
        stage.append(u)
        n += len(u.items)
    return stage


def _say_held(progress: Any, held: list[Unit]) -> None:
    progress.message = f"waiting for {sum(len(u.items) for u in held)} requests another run " \
                       "is answering"


def _keys_of(plan: Any, items: list[int]) -> Any:
    """The keys of ``items``: a slice of a table's key array, else from the items."""
    if plan.table is not None:
        return plan.table.keys_of(np.asarray(items, dtype=np.int64))
    return [plan.key(i) for i in items]


def _one_block(outputs: list) -> np.ndarray | None:
    """Vectors of one length as one (n, dim) float32 block; None for anything else. Checked
    and joined in C (no Python step per vector): a run writes hundreds of thousands."""
    if set(map(type, outputs)) != {np.ndarray}:
        return None
    try:
        lengths = set(map(len, outputs))  # a 0-d array has no len
        flat = np.concatenate(outputs)
    except (TypeError, ValueError):
        return None
    if len(lengths) != 1 or flat.ndim != 1:
        return None
    return flat.reshape(len(outputs), lengths.pop()).astype(np.float32, copy=False)
