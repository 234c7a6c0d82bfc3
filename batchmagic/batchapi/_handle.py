"""``bm.BatchJob`` and ``bm.jobs()``: Batch API jobs as handles, in this kernel or the next.

A handle is either the one ``bm.submit(..., mode="batch-api")`` returns (its run polls in the
background, on batchmagic's own loop, so the kernel stays free) or one rebuilt from the journal
by ``bm.jobs()`` after a restart. Both answer ``status()`` (a provider round trip), ``wait()`` /
``result()`` (the frame, the same shape as an online run's), ``cancel()``, and, once a job has
ended with rows unanswered (expired, cancelled, failed rows), ``resubmit()`` or
``finish_online()`` for the rest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

import pandas as pd

from .. import _loop
from .._dispatch import ItemResults
from .._errors import ConfigError
from .._frame import build_frame
from .._journal import Journal, default_folder, folder_for, open_journal
from .._progress import Progress, Snapshot
from ._jobs import Access, JobEngine, JobStatus, fill_results
from ._modes import SECRET_OPTIONS, check_options
from ._run import RunDriver

STATUS_TIMEOUT = 120.0


def _on_loop(coro, timeout: float | None = STATUS_TIMEOUT):
    """Run ``coro`` on batchmagic's loop and wait for it; an interrupt or timeout cancels it."""
    fut = _loop.submit(coro)
    try:
        return fut.result(timeout)
    except (concurrent.futures.TimeoutError, KeyboardInterrupt):
        fut.cancel()
        raise


def _merge(statuses: list[JobStatus]) -> JobStatus:
    if len(statuses) == 1:
        return statuses[0]
    return JobStatus(
        ", ".join(s.job_id for s in statuses),
        "finished" if all(s.state == "finished" for s in statuses) else
        "submitting" if any(s.state == "submitting" for s in statuses) else "running",
        statuses[0].provider, "; ".join(s.status for s in statuses if s.status),
        sum(s.total for s in statuses), sum(s.completed for s in statuses),
        sum(s.failed for s in statuses), [b for s in statuses for b in s.batches])


class BatchJob:
    """A provider Batch API job (about half the online price; answers within its completion
    window, typically 24 hours).

    ``status()`` asks the provider (status and request counts); ``wait(timeout=None)`` /
    ``result()`` wait for it and return the result frame (the same shape as an online run's);
    ``cancel()`` stops it at the provider (finished rows are kept); ``resubmit()`` sends the rows
    still unanswered as a new job, ``finish_online()`` sends them through the online API. Jobs
    live in the journal: ``bm.jobs()`` lists them after a kernel restart. A provider's queue
    cannot be paused, so there is no ``pause()``.
    """

    def __init__(self, job_id: str | None, journal: Journal, *, access: Access | None = None,
                 record: dict | None = None, task: Any = None, driver: RunDriver | None = None):
        self.id = job_id
        self._journal = journal
        self._access = access or Access()
        self._record = record or {}
        self._task = task  # the run following this job in this process (bm.submit), if any
        self._driver = driver
        self._engine: JobEngine | None = None

    @classmethod
    def for_task(cls, task: Any, driver: RunDriver) -> BatchJob:
        """The handle of a job ``bm.submit`` started in this process (already in the journal)."""
        job = driver.new_job.job_id if driver.new_job is not None else (
            driver.job_ids[0] if driver.job_ids else None)
        return cls(job, driver.run.durable.journal, access=driver.access, task=task,
                   driver=driver)

    # -- engines --------------------------------------------------------------------------------

    def _engines(self) -> list[JobEngine]:
        if self._driver is not None:
            return list(self._driver.engines)
        if self.id is None:
            return []
        if self._engine is None:
            self._engine = JobEngine.load(self._journal, self.id, self._access)
        return [self._engine]

    def _on_loop(self, coro, timeout: float | None = STATUS_TIMEOUT):
        return _on_loop(coro, timeout)

    # -- the contract ---------------------------------------------------------------------------

    def status(self) -> JobStatus:
        """The provider's status and request counts (one round trip per batch)."""
        engines = self._engines()
        if not engines:
            return JobStatus("", "finished", self.provider or "", "nothing to send: every row "
                             "was already answered", 0, 0, 0, [])
        return _merge([self._on_loop(e.refresh()) for e in engines])

    def wait(self, timeout: float | None = None, *, progress: bool = True) -> pd.DataFrame:
        """Wait for the job to end and return the result frame. ``TimeoutError`` after
        ``timeout`` seconds (the job goes on at the provider)."""
        if self._task is not None:
            return self._task.wait(timeout)
        return self._on_loop(self._collect(progress), timeout)

    result = wait

    def done(self) -> bool:
        if self._task is not None:
            return self._task.done()
        return all(e.state == "finished" for e in self._engines())

    def _wait_submitted(self, timeout: float = 900.0) -> None:
        """Until every batch of a submitted job exists at the provider. A script that exits right
        after ``submit()`` would otherwise leave the job to be created by the next ``wait()``
        (recorded, so never paid twice, but not running meanwhile)."""
        if self._driver is None:
            return
        deadline = time.monotonic() + timeout
        while not self._driver.submitted.wait(0.2):
            if self._task is not None and self._task.done():
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} was not submitted within {timeout:g} s")
        if self._task is not None and self._task.done():
            self._task.wait(0)  # a submission error surfaces here

    def cancel(self) -> None:
        """Cancel the provider batches. Rows they finished are kept (``wait()`` collects them);
        ``resubmit()`` / ``finish_online()`` send the rest later."""
        if self._driver is not None:
            _loop.call(self._driver.request_cancel)
        for engine in self._engines():
            if engine.state != "finished":
                self._on_loop(engine.cancel())

    def task_count(self) -> int:
        if self._task is not None:
            return self._task.task_count()
        engines = self._engines()
        return engines[0].plan.n_rows if engines else 0

    total_count = task_count  # the name Qianfan's batch_do users know

    def finished_count(self) -> int:
        if self._task is not None:
            return self._task.finished_count()
        frame = self.frame
        return int(frame["error"].notna().sum() + frame["output"].notna().sum())

    def __iter__(self):
        if self._task is not None:
            return iter(self._task)
        frame = self.result()
        futures = []
        for out, err in zip(frame["output"], frame["error"]):
            fut: concurrent.futures.Future = concurrent.futures.Future()
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(out)
            futures.append(fut)
        return iter(futures)

    @property
    def frame(self) -> pd.DataFrame:
        """The result frame as the journal has it now (rows still at the provider are empty)."""
        if self._task is not None:
            return self._task.frame
        engines = self._engines()
        if not engines:
            raise ConfigError("this job has no rows")
        return self._frame(engines[0], pending=None)

    @property
    def progress(self) -> Snapshot:
        if self._task is not None:
            return self._task.progress
        s = _merge([e.status() for e in self._engines()]) if self._engines() else None
        return Snapshot(title=f"batch-api job {self.id}", requests=s.total if s else 0,
                        done=(s.completed + s.failed) if s else 0,
                        ok=s.completed if s else 0, failed=s.failed if s else 0,
                        state="done" if s is None or s.state == "finished" else "running",
                        message=str(s) if s else "")

    @property
    def run_id(self) -> str | None:
        return self._task.run_id if self._task is not None else None

    @property
    def provider(self) -> str | None:
        if self._driver is not None:
            return self._driver.run.target.name
        return self._record.get("provider") or (self._engines()[0].config["name"]
                                                if self._engines() else None)

    def __repr__(self) -> str:
        if self._task is not None:
            state = self._task.state
            rows = f"{self.finished_count()}/{self.task_count()} rows"
        else:
            state = self._record.get("state") or (self._engines()[0].state
                                                  if self._engines() else "?")
            rows = ""
        when = self._record.get("created")
        age = f", created {time.strftime('%Y-%m-%d %H:%M', time.localtime(when))}" if when else ""
        summary = self._record.get("summary")
        if summary:
            import orjson

            s = orjson.loads(summary)
            rows = (f"{s.get('completed', 0)}/{s.get('total', 0)} requests done"
                    f"{', provider status ' + s['status'] if s.get('status') else ''}")
        model = self._record.get("model")
        model = f" {model}" if model else ""
        return f"<BatchJob {self.id} {self.provider}{model}: {state}{', ' + rows if rows else ''}{age}>"

    # -- collecting -----------------------------------------------------------------------------

    async def _collect(self, show: bool) -> pd.DataFrame:
        from .._display import MAX_UPDATES_PER_S, make_display, quiet_logs

        engine = self._engines()[0]
        if engine.state == "finished":  # nothing to wait for: the journal has it all
            return self._frame(engine, pending="not finished")
        total = sum(s.get("requests") or 0 for s in engine.shards.values())
        progress = Progress(title=f"batch-api job {engine.job_id} @ {engine.config['name']}",
                            rows=engine.plan.n_rows, requests=total)
        progress.state = "running"
        display = make_display(show, progress.snapshot())

        per_request = engine.plan.n_rows / max(1, total)  # rows, estimated from requests

        def update() -> None:
            s = engine.status()
            progress.requests_done = min(total, s.completed + s.failed)
            progress.done = round(progress.requests_done * per_request)
            progress.failed = round(min(s.failed, progress.requests_done) * per_request)
            progress.ok = max(0, progress.done - progress.failed)
            progress.message = f"{s.provider} job {s.job_id} {s.status or s.state}"

        async def refresh() -> None:
            while True:
                await asyncio.sleep(1.0 / MAX_UPDATES_PER_S)
                if display is not None:
                    display.update(progress.snapshot())

        ticker = asyncio.ensure_future(refresh())
        try:
            with quiet_logs():
                await engine.run(update)
        finally:
            ticker.cancel()
            update()
            progress.state = "done" if engine.state == "finished" else "cancelled"
            progress.finished = time.monotonic()
            if display is not None:
                display.close(progress.snapshot())
        return self._frame(engine, pending="not finished")

    def _frame(self, engine: JobEngine, pending: str | None, results: ItemResults | None = None,
               extra: dict | None = None) -> pd.DataFrame:
        plan = engine.plan
        if results is None:
            results = ItemResults(len(plan.items))
        fill_results(self._journal, plan, results, [engine], pending=pending)
        ok = sum(1 for i in range(len(plan.items)) if results.done[i] and results.error[i] is None)
        failed = sum(1 for i in range(len(plan.items)) if results.error[i] is not None)
        costs = [results.cost[i] for i in range(len(plan.items))
                 if results.done[i] and results.error[i] is None and not results.cached[i]]
        attrs = {
            "run_id": None, "mode": "batch-api", "jobs": [engine.job_id],
            "kind": plan.kind, "model": engine.config.get("model"),
            "provider": engine.config["name"], "state": engine.state,
            "rows": plan.n_rows, "requests": len(plan.items), "ok": ok,
            "failed": failed + len(plan.row_errors), "skipped": len(plan.skipped),
            "cached": sum(len(plan.items[i].rows) for i in range(len(plan.items))
                          if results.cached[i]),
            "journal": str(self._journal.path),
            "cost": float(sum(costs)) if engine.config.get("price") and None not in costs
            else None,
        }
        attrs.update(extra or {})
        return build_frame(plan, results, costs=results.cost, attrs=attrs)

    # -- the rest of an ended job ---------------------------------------------------------------

    def _ended(self, what: str) -> JobEngine:
        if self._task is not None and not self._task.done():
            raise ConfigError(f"job {self.id} is still running; wait() for it or cancel() it "
                              f"(finished rows are kept) before {what}")
        engines = self._engines()
        if not engines:
            raise ConfigError("this job had nothing to send")
        for engine in engines:
            if engine.state != "finished":
                if all(engine.terminal(n) for n in engine.shards):
                    self._on_loop(engine.run(), None)  # ended at the provider: harvest it
                else:
                    raise ConfigError(f"job {engine.job_id} is still running at "
                                      f"{engine.config['name']}; wait() for it or cancel() it "
                                      f"(finished rows are kept) before {what}")
        return engines[0]

    def resubmit(self, *, completion_window: str | None = None) -> BatchJob:
        """Send the rows this job left unanswered (expired, cancelled or failed) as a new job,
        and return its handle (``wait()`` on it collects every row, the old answers included)."""
        engine = self._ended("resubmitting")
        plan = engine.plan
        answered = self._journal.lookup(item.key for item in plan.items)
        todo = [i for i, item in enumerate(plan.items) if item.key not in answered]
        if not todo:
            raise ConfigError(f"every row of job {engine.job_id} is answered; nothing to resubmit")
        config = dict(engine.config)
        if completion_window is not None:
            config["window"] = completion_window
        new, _ = JobEngine.create(self._journal, plan, todo, config, self._access)
        if new is None:
            raise ConfigError("none of the remaining requests fits in a batch file")
        self._on_loop(new.submit(), None)
        return BatchJob(new.job_id, self._journal, access=self._access,
                        record=self._journal.job(new.job_id))

    def finish_online(self, **kwargs: Any) -> pd.DataFrame:
        """Send the rows this job left unanswered through the online API (at the online price)
        and return the whole frame. ``kwargs`` go to ``bm.batch`` (concurrency, rpm, ...)."""
        from .._api import batch

        engine = self._ended("finishing online")
        plan, config = engine.plan, engine.config
        answered = self._journal.lookup(item.key for item in plan.items)
        missing = [item for item in plan.items if item.key not in answered]
        errors: dict[str, Any] = {}
        if missing:
            kwargs.setdefault("api_key", self._access.api_key)
            kwargs.setdefault("transport", self._access.transport)
            kwargs.setdefault("headers", self._access.headers)
            online = batch([item.body for item in missing], kind=config["kind"],
                           provider=config["provider"], base_url=config["base_url"],
                           cache=self._journal.folder, **kwargs)
            for item, err in zip(missing, online["error"]):
                if err is not None:
                    errors[item.key] = err
        results = ItemResults(len(plan.items))
        fill_results(self._journal, plan, results, [], pending=None)  # answers, old and new
        for i, item in enumerate(plan.items):
            if not results.done[i] and item.key in errors:
                results.error[i] = errors[item.key]
                results.attempts[i] = errors[item.key].attempts
                results.done[i] = 1
        return self._frame(engine, pending="not answered", results=results,
                           extra={"mode": "batch-api+online", "online": len(missing)})


def jobs(cache: Any = True, limit: int | None = 50, *, provider: str | None = None,
         base_url: str | None = None, status: str | None = None, api_key: str | None = None,
         batch_options: dict | None = None, transport: Any = None, http: str = "aiohttp",
         headers: dict | None = None) -> list[BatchJob]:
    """Batch API jobs, oldest first (``bm.jobs()[-1]`` is the newest). Each is a ``BatchJob``:
    ``status()``, ``wait()``, ``result()``, ``cancel()``, and for jobs of the journal
    ``resubmit()`` and ``finish_online()``.

    Without ``provider=`` / ``base_url=``: the jobs recorded in the journal, across kernel
    restarts (``status`` filters on their state: submitting, running or finished). With them:
    the provider's own batches, newest ``limit`` of them, wherever they were made (OpenAI-
    compatible ``GET /batches``, Ark's ``ListBatchInferenceJobs``); ``status`` is the
    provider's word ("in_progress", "Running") or batchmagic's ("running", "completed",
    "expired", ...). A batch the journal knows comes back as the journal's job; the others are
    adopted (see ``bm.job``).

    Keys come from the provider's usual environment variable (or ``api_key=``; Ark's Access Key
    pair from ``VOLC_ACCESSKEY`` / ``VOLC_SECRETKEY`` or ``batch_options``); the journal never
    holds one."""
    journal = _journal_for(cache)
    options = check_options(batch_options)
    keys = Access(api_key=api_key, options={k: v for k, v in options.items()
                                            if k in SECRET_OPTIONS},
                  transport=transport, http=http, headers=headers)
    if provider is not None or base_url is not None:
        from ._adopt import ProviderAccess

        where = ProviderAccess(provider, base_url, api_key, options, transport, http, headers)
        return _provider_jobs(journal, where, keys, status, limit)
    found = [BatchJob(rec["job_id"], journal, access=keys, record=rec)
             for rec in journal.jobs(None if status is not None else limit)]
    if status is not None:
        if status not in JOB_STATES:
            raise ConfigError(f"a journal job's state is one of {', '.join(JOB_STATES)}, not "
                              f"{status!r}; pass provider= to filter on the provider's status")
        found = [j for j in found if j._record.get("state") == status]
        found = found[-limit:] if limit else found
    return found


def _provider_jobs(journal: Journal, where: Any, keys: Access, status: str | None,
                   limit: int | None) -> list[BatchJob]:
    """The provider's batches, oldest first: the journal's job for a batch it made (that job
    knows the inputs), an adopted handle for the others."""
    from ._adopt import AdoptedJob, list_batches

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError("limit must be a positive whole number of jobs")
    found = _on_loop(list_batches(where, status, limit or 1000))
    known = _jobs_by_batch(journal)
    return [BatchJob(known[rb.id]["job_id"], journal, access=keys, record=known[rb.id])
            if rb.id in known else AdoptedJob(rb, where) for rb in reversed(found)]


def job(job_id: str, cache: Any = True, *, provider: str | None = None,
        base_url: str | None = None, api_key: str | None = None,
        batch_options: dict | None = None, transport: Any = None, http: str = "aiohttp",
        headers: dict | None = None) -> BatchJob:
    """One Batch API job: from the journal by its job id (a unique prefix is enough) or by the
    id of one of its provider batches; else, given ``provider=`` (or ``base_url=``), the
    provider's batch ``job_id`` made elsewhere (its console, another tool), adopted: it
    answers ``status()``, ``wait()`` / ``result()`` (a frame of its answers, one row per
    ``custom_id``: see ``batchmagic.batchapi._adopt``) and ``cancel()``."""
    if not isinstance(job_id, str) or not job_id.strip():
        raise ConfigError("job_id must be a job or batch id (a string)")
    journal = _journal_for(cache)
    options = check_options(batch_options)
    access = Access(api_key=api_key, options={k: v for k, v in options.items()
                                              if k in SECRET_OPTIONS},
                    transport=transport, http=http, headers=headers)
    records = journal.jobs(None)
    found = [rec for rec in records if rec["job_id"].startswith(job_id)]
    if len(found) > 1:
        raise ConfigError(f"{job_id!r} matches {len(found)} jobs; give more of the id")
    if not found and job_id in (by_batch := _jobs_by_batch(journal)):
        found = [by_batch[job_id]]
    if found:
        return BatchJob(found[0]["job_id"], journal, access=access, record=found[0])
    if provider is None and base_url is None:
        raise ConfigError(f"no job {job_id!r} in the journal {journal.path}; for a batch made "
                          "elsewhere, say where it is: provider='openai' (or base_url=...)")
    from ._adopt import AdoptedJob, ProviderAccess, retrieve

    remote = ProviderAccess(provider, base_url, api_key, options, transport, http, headers)
    return AdoptedJob(_on_loop(retrieve(remote, job_id)), remote)


JOB_STATES = ("submitting", "running", "finished")


def _journal_for(cache: Any) -> Journal:
    try:
        folder = folder_for(cache) or default_folder()
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    return open_journal(folder)


def _batch_ids(journal: Journal, job_id: str) -> set[str]:
    return {s["batch_id"] for s in journal.job_shards(job_id) if s.get("batch_id")}


def _jobs_by_batch(journal: Journal) -> dict[str, dict]:
    """Provider batch id -> the journal's record of the job it belongs to."""
    return {batch_id: rec for rec in journal.jobs(None)
            for batch_id in _batch_ids(journal, rec["job_id"])}
