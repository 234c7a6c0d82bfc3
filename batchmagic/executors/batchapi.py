"""Rows answered by the provider's Batch API (``mode="batch-api"``): about half the online
price, answers within the job's completion window.

``prepare`` records the job in the journal before anything is sent (``submit`` does it in the
caller's thread, so the job is on disk when it returns); rows an unfinished job already holds are
joined, not sent again. ``run`` submits and polls; ``close`` collects every answered row into the
run's results and the journal, whatever happened. A foreground run stops *waiting* on Ctrl-C
(the job goes on at the provider and ``bm.jobs()`` finds it); a background one treats cancel as
"cancel the provider batches".
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..batchapi._jobs import fill_results
from ..batchapi._run import RunDriver, count_rows


class BatchApiExecutor:
    def __init__(self, run: Any):
        self._run = run
        self.driver = RunDriver(run)
        self.cancelled = False
        self.stopped_by: BaseException | None = None

    def prepare(self) -> None:
        self.driver.prepare()
        self.stopped_by = self.driver.stopped_by

    async def run(self) -> None:
        driver = self.driver
        if self.stopped_by is not None or not driver.engines:
            return
        try:
            self.cancelled = not await driver.run_all()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        except Exception as exc:  # the job could not be submitted or followed
            self.stopped_by = exc

    async def close(self) -> None:
        run, driver = self._run, self.driver
        fatal = [e.fatal for e in driver.engines if e.fatal is not None]
        if self.stopped_by is None and fatal:
            self.stopped_by = fatal[0]  # as online: a bad key or no quota stops the run
        pending = self._pending_text()
        filled = fill_results(run.durable.journal, run.plan, run.results, driver.engines,
                              pending=pending)
        run.check_answers(filled)
        count_rows(run, filled)
        run.items_saved(filled)
        progress = run.progress
        if self.stopped_by is not None:
            progress.message = f"stopped: {self.stopped_by}"
        elif self.cancelled:
            progress.message = pending
        else:
            jobs = ", ".join(driver.job_ids)
            progress.message = (f"{run.target.name} Batch API job {jobs} finished"
                                if jobs else "")

    def _pending_text(self) -> str:
        """What rows not collected say: where their answers are, and how to get them."""
        driver, error = self.driver, self.stopped_by
        jobs = ", ".join(driver.job_ids)
        if error is not None and driver.created():
            # the batches exist and may be billed: their rows are still to be collected
            return (f"not collected: following job {jobs} failed: {error}; it is in the "
                    "journal: bm.jobs() finds it (wait() collects the rows, nothing is sent "
                    "again)")
        if error is not None:
            text = f"not sent: the Batch API job stopped: {error}"
            return text + (f" (job {jobs} is in the journal: bm.jobs() to follow it up)"
                           if jobs else "")
        return (f"not finished: job {jobs} goes on at {self._run.target.name}; bm.jobs() finds "
                "it (wait() / result() collect the rows)")

    def control(self, action: str) -> None:
        self.driver.control(action)

    def facts(self) -> dict:
        run = self._run
        r = run.results
        spent = [r.cost[i] for i in range(len(run.plan.items))
                 if r.done[i] and not r.cached[i] and r.error[i] is None]
        return {
            "mode": "batch-api", "jobs": self.driver.job_ids,
            "cost": float(sum(spent)) if run.price is not None and None not in spent else None,
            "stopped_by": str(self.stopped_by) if self.stopped_by is not None else None,
        }

    def handle(self, task: Any) -> Any:
        """``bm.submit`` returns a ``BatchJob`` for a Batch API run."""
        from ..batchapi._handle import BatchJob

        self.driver.background = True
        return BatchJob.for_task(task, self.driver)
