"""The Batch API side of ``bm.batch(..., mode="batch-api")`` (``executors/batchapi.py`` is its
executor): the jobs that answer a run's rows.

The run is planned as any other (row keys, journal lookup: rows already answered cost nothing).
Then ``RunDriver.prepare`` records the job before anything is sent. Rows that an unfinished job
of an earlier run already holds (a kernel restarted under a 24-hour job, the same cell run
again) are not sent twice: the run attaches to that job and waits for it. The rest go into a new
job. The run's frame is then filled from the journal, exactly like an online run's.

Foreground runs stop *waiting* on Ctrl-C (the job goes on at the provider and ``bm.jobs()``
finds it); background runs (``bm.submit``) treat cancel as "cancel the provider batches".
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from .._errors import BudgetExceededError, InputError
from ._jobs import Access, JobEngine, job_config, price_of
from ._lease import Lease, row_names


class RunDriver:
    def __init__(self, run: Any):
        self.run = run
        o = run.options
        self.config = job_config(run.target, o, run.price)
        secret = {k: v for k, v in (o.batch_options or {}).items()
                  if k in ("access_key", "secret_key")}
        self.access = Access(api_key=run.target.api_key, options=secret, headers=o.headers,
                             transport=o.transport, http=o.http)
        self.engines: list[JobEngine] = []
        self.new_job: JobEngine | None = None
        self.background = False
        self.prepared = False
        self.stopped_by: BaseException | None = None
        self._detach: asyncio.Event | None = None
        self._cancel = False
        self.submitted = threading.Event()  # every batch exists at the provider (or never will)

    @property
    def job_ids(self) -> list[str]:
        return [e.job_id for e in self.engines]

    def created(self) -> bool:
        """Whether any of the run's batches exists at the provider."""
        return any(shard.get("batch_id") for e in self.engines for shard in e.shards.values())

    def prepare(self) -> None:
        """Record the job (or find the jobs already holding these rows). Synchronous: called in
        the caller's thread by ``submit`` so the job is on disk when it returns."""
        if self.prepared:
            return
        self.prepared = True
        run = self.run
        plan, results = run.plan, run.results
        todo = [i for i in range(len(plan.items)) if not results.done[i]]
        if not todo:
            return
        journal = run.durable.journal
        # another process may be recording a job for these rows right now: one at a time, so
        # the second one finds the first one's job and joins it instead of paying again
        with Lease(journal, row_names(plan.items[i].key for i in todo)):
            self._join_or_record(journal, todo)

    def _join_or_record(self, journal: Any, todo: list[int]) -> None:
        plan, results = self.run.plan, self.run.results
        answered = journal.lookup(plan.items[i].key for i in todo)  # since the run was planned
        todo = [i for i in todo if plan.items[i].key not in answered]  # (filled at the end)
        holding = journal.active_jobs_for(plan.items[i].key for i in todo)
        for job_id in dict.fromkeys(holding.values()):
            self.engines.append(JobEngine.load(journal, job_id, self.access))
        new = [i for i in todo if plan.items[i].key not in holding]
        if not new:
            return
        run = self.run
        if run.options.budget is not None and run.price is not None:
            price, share = price_of(self.config)
            worst = sum(price.cost(plan.items[i].prompt_tokens, plan.items[i].max_output)
                        for i in new) * share
            if worst > run.options.budget:
                self.stopped_by = BudgetExceededError(
                    f"the budget of ${run.options.budget:,.4f} could be exceeded: the job's "
                    f"worst case is ${worst:,.4f} at the batch price")
                return
        engine, too_large = JobEngine.create(journal, plan, new, self.config, self.access)
        for i in too_large:
            results.error[i] = InputError(
                f"the request is larger than a {self.config['name']} batch file may be "
                f"({self.config['max_bytes']:,} bytes)", provider=self.config["name"])
            results.done[i] = 1
        if engine is not None:
            self.engines.append(engine)
            self.new_job = engine

    def control(self, action: str) -> None:
        """On the loop thread. "cancel": a background job cancels its provider batches; a
        foreground wait just stops waiting (the job goes on and ``bm.jobs()`` lists it)."""
        if action != "cancel":
            return  # pause / resume mean nothing to a provider's queue
        if self.background:
            self.request_cancel()
        elif self._detach is not None:
            self._detach.set()

    def request_cancel(self) -> None:
        self._cancel = True
        for engine in self.engines:
            engine.cancel_requested = True

    async def run_all(self) -> bool:
        self._detach = asyncio.Event()
        if self._cancel:
            self.request_cancel()
        progress = self.run.progress
        progress.requests = sum(e.shards[n].get("requests") or 0
                                for e in self.engines for n in e.shards) or progress.requests
        # the provider counts requests; rows are estimated from them until the harvest counts
        # them exactly (identical rows share a request)
        base_done, base_ok, base_failed = progress.done, progress.ok, progress.failed
        per_request = (progress.rows - base_done) / max(1, progress.requests)

        def update() -> None:
            statuses = [e.status() for e in self.engines]
            done = sum(s.completed + s.failed for s in statuses)
            failed = sum(s.failed for s in statuses)
            progress.requests_done = min(done, progress.requests)
            progress.done = base_done + round(progress.requests_done * per_request)
            progress.failed = base_failed + round(min(failed, done) * per_request)
            progress.ok = base_ok + max(0, progress.done - base_done
                                        - (progress.failed - base_failed))
            words = "; ".join(f"{s.provider} job {s.job_id} {s.status or s.state}"
                              for s in statuses)
            progress.message = f"{words}: {done:,}/{progress.requests:,} requests done"
            progress.version += 1
            if all(s.state != "submitting" for s in statuses):
                self.submitted.set()

        try:
            outcomes = await asyncio.gather(*(e.run(update, self._detach) for e in self.engines))
        finally:
            self.submitted.set()
        return all(outcomes)


def count_rows(run: Any, filled: list[int]) -> None:
    p, r, items = run.progress, run.results, run.plan.items
    # the provider's counts were estimates while polling; the results are exact. Counts are
    # rows (a request answers every identical row); requests are counted apart.
    ok = failed = requests_done = 0
    for i, item in enumerate(items):
        if not r.done[i]:
            continue
        if r.error[i] is None:
            ok += len(item.rows)
            requests_done += not r.cached[i]
        else:
            failed += len(item.rows)
            requests_done += 1
    p.ok = ok
    p.failed = failed + len(run.plan.row_errors)
    p.done = p.ok + p.failed + p.skipped
    p.requests_done = requests_done
    p.requests = max(p.requests, requests_done)
    p.input_tokens = sum(r.input_tokens[i] or 0 for i in filled if r.error[i] is None)
    p.output_tokens = sum(r.output_tokens[i] or 0 for i in filled if r.error[i] is None)
    for i in filled:
        if r.error[i] is not None:
            p.error(r.error[i], len(items[i].rows))
    costs = [r.cost[i] for i in filled if r.error[i] is None and r.cost[i] is not None]
    p.cost = float(sum(costs))
