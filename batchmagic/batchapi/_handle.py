"""``bm.BatchJob`` and ``bm.jobs()``: Batch API jobs as handles, in this kernel or the next.

A ``BatchJob`` is one class whatever made the job; it asks a *source* chosen when it is built:

* ``JournalJob``: a job of this journal, its ``JobEngine`` objects; when this process runs it
  (``bm.submit(..., mode="batch-api")``: its run polls in the background, on batchmagic's own
  loop, so the kernel stays free), also the ``BatchTask`` following it and the ``RunDriver``
  submitting it. ``bm.jobs()`` rebuilds one after a restart.
* ``AdoptedBatch`` (``_adopt``): a provider batch made elsewhere, asked about at the provider.

Every job answers ``status()`` (a provider round trip), ``wait()`` / ``result()`` (the frame,
the same shape as an online run's), ``cancel()``; a job whose inputs the journal holds, once it
has ended with rows unanswered (expired, cancelled, failed rows), also ``resubmit()`` or
``finish_online()`` for the rest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any, Protocol

import pandas as pd

from .. import _loop
from .._dispatch import ItemResults
from .._errors import ConfigError
from .._frame import build_frame
from .._journal import Journal, default_folder, folder_for, open_journal
from .._progress import Progress, Snapshot
from ._adopt import AdoptedBatch, ProviderAccess, list_batches, retrieve
from ._jobs import Access, JobEngine, JobStatus, fill_results
from ._modes import SECRET_OPTIONS, check_options
from ._run import RunDriver

STATUS_TIMEOUT = 120.0


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


def _settled(frame: pd.DataFrame) -> list[concurrent.futures.Future]:
    """One done future per row of an ended job's frame: its output, or its error raised."""
    futures = []
    for out, err in zip(frame["output"], frame["error"]):
        fut: concurrent.futures.Future = concurrent.futures.Future()
        if err is not None:
            fut.set_exception(err)
        else:
            fut.set_result(out)
        futures.append(fut)
    return futures


class JobSource(Protocol):
    """What a ``BatchJob`` asks of its source (``JournalJob`` or ``AdoptedBatch``)."""

    id: str | None
    access: Any  # how to sign in at the provider (never shown)

    def status(self) -> JobStatus: ...
    def done(self) -> bool: ...
    def cancel(self) -> None: ...
    def wait(self, timeout: float | None, progress: bool) -> pd.DataFrame: ...
    def task_count(self) -> int: ...
    def finished_count(self) -> int: ...
    @property
    def frame(self) -> pd.DataFrame: ...
    @property
    def progress(self) -> Snapshot: ...
    @property
    def provider(self) -> str | None: ...

    def describe(self) -> str:
        """One line for the handle's repr."""
        ...

    def inputs(self) -> JournalJob | None:
        """The job as the journal holds it, inputs and all; None when they are not known."""
        ...

    def live_row_futures(self) -> list[concurrent.futures.Future] | None:
        """The rows' futures of a run of this process following the job, settled as rows
        finish; None when no run here follows it."""
        ...


class JournalJob:
    """A job of this journal: its ``JobEngine`` objects, read from the journal; when this process
    runs it, also the ``BatchTask`` following it (it answers for the rows) and the ``RunDriver``
    (it holds the engines while it records and submits them)."""

    def __init__(self, job_id: str | None, journal: Journal, access: Access, *,
                 record: dict | None = None, task: Any = None, driver: RunDriver | None = None):
        self.id = job_id
        self.journal = journal
        self.access = access
        self._record = record or {}
        self._task = task
        self._driver = driver
        self._engine: JobEngine | None = None

    @classmethod
    def of_run(cls, task: Any, driver: RunDriver) -> JournalJob:
        """The job a run of this process submitted (already in the journal) or joined."""
        job_id = driver.new_job.job_id if driver.new_job is not None else (
            driver.job_ids[0] if driver.job_ids else None)
        return cls(job_id, driver.run.durable.journal, driver.access, task=task, driver=driver,
                   record={"provider": driver.run.target.name})  # the record's word for it

    def inputs(self) -> JournalJob:
        return self

    def engines(self) -> list[JobEngine]:
        if self._driver is not None:
            return list(self._driver.engines)  # the run adds them as it records or joins jobs
        if self.id is None:
            return []
        if self._engine is None:
            self._engine = JobEngine.load(self.journal, self.id, self.access)
        return [self._engine]

    @property
    def run_id(self) -> str | None:
        return self._task.run_id if self._task is not None else None

    # -- the source protocol --------------------------------------------------------------------

    def status(self) -> JobStatus:
        return self._status(ask_provider=True)

    def _status(self, ask_provider: bool) -> JobStatus:
        """The provider's status of each batch, asked now or as the journal last saw it."""
        engines = self.engines()
        if not engines:
            return JobStatus("", "finished", self.provider or "", "nothing to send: every row "
                             "was already answered", 0, 0, 0, [])
        return _merge([_loop.wait_for(e.refresh(), STATUS_TIMEOUT) if ask_provider
                       else e.status() for e in engines])

    def done(self) -> bool:
        if self._task is not None:
            return self._task.done()
        return all(e.state == "finished" for e in self.engines())

    def cancel(self) -> None:
        if self._driver is not None:
            _loop.call(self._driver.request_cancel)
        for engine in self.engines():
            if engine.state != "finished":
                _loop.wait_for(engine.cancel(), STATUS_TIMEOUT)

    def wait(self, timeout: float | None, progress: bool) -> pd.DataFrame:
        if self._task is not None:
            return self._task.wait(timeout)
        return _loop.wait_for(self._collect(progress), timeout)

    def task_count(self) -> int:
        if self._task is not None:
            return self._task.task_count()
        engines = self.engines()
        return engines[0].plan.n_rows if engines else 0

    def finished_count(self) -> int:
        if self._task is not None:
            return self._task.finished_count()
        frame = self.frame
        return int(frame["error"].notna().sum() + frame["output"].notna().sum())

    @property
    def frame(self) -> pd.DataFrame:
        if self._task is not None:
            return self._task.frame
        engines = self.engines()
        if not engines:
            raise ConfigError("this job has no rows")
        return journal_frame(self.journal, engines[0], pending=None)

    @property
    def progress(self) -> Snapshot:
        if self._task is not None:
            return self._task.progress
        return self._status(ask_provider=False).snapshot()

    @property
    def provider(self) -> str | None:
        engines = self.engines()
        return self._record.get("provider") or (engines[0].config["name"] if engines else None)

    def describe(self) -> str:
        state, rows = self._state_and_rows()
        when = self._record.get("created")
        age = f", created {time.strftime('%Y-%m-%d %H:%M', time.localtime(when))}" if when else ""
        model = self._record.get("model")
        model = f" {model}" if model else ""
        return f"{self.id} {self.provider}{model}: {state}{', ' + rows if rows else ''}{age}"

    def _state_and_rows(self) -> tuple[str, str]:
        """The job's state, and how far it is: the run's rows, or the provider's requests as
        the journal last saw them."""
        if self._task is not None:
            return self._task.state, f"{self.finished_count()}/{self.task_count()} rows"
        engines = self.engines()
        state = self._record.get("state") or (engines[0].state if engines else "?")
        summary = self._record.get("summary")
        if not summary:
            return state, ""
        import orjson

        s = orjson.loads(summary)
        return state, (f"{s.get('completed', 0)}/{s.get('total', 0)} requests done"
                       f"{', provider status ' + s['status'] if s.get('status') else ''}")

    def live_row_futures(self) -> list[concurrent.futures.Future] | None:
        return list(self._task) if self._task is not None else None

    # -- what resubmit() and finish_online() need -----------------------------------------------

    def wait_submitted(self, timeout: float) -> None:
        """Until every batch of a job this process submits exists at the provider."""
        if self._driver is None:
            return
        deadline = time.monotonic() + timeout
        while not self._driver.submitted.wait(0.2):
            if self._task.done():
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} was not submitted within {timeout:g} s")
        if self._task.done():
            self._task.wait(0)  # a submission error surfaces here

    def ended(self, what: str) -> JobEngine:
        """The job's engine once every batch of it has ended (one ended at the provider but not
        yet harvested is harvested now); a ConfigError while it runs."""
        if self._task is not None and not self._task.done():
            raise ConfigError(f"job {self.id} is still running; wait() for it or cancel() it "
                              f"(finished rows are kept) before {what}")
        engines = self.engines()
        if not engines:
            raise ConfigError("this job had nothing to send")
        for engine in engines:
            if engine.state == "finished":
                continue
            if not all(engine.terminal(n) for n in engine.shards):
                raise ConfigError(f"job {engine.job_id} is still running at "
                                  f"{engine.config['name']}; wait() for it or cancel() it "
                                  f"(finished rows are kept) before {what}")
            _loop.wait_for(engine.run(), None)  # ended at the provider: harvest it
        return engines[0]

    def unanswered(self, engine: JobEngine) -> list[int]:
        """The engine's items the journal holds no answer for."""
        items = engine.plan.items
        answered = self.journal.lookup(item.key for item in items)
        return [i for i, item in enumerate(items) if item.key not in answered]

    # -- collecting -----------------------------------------------------------------------------

    async def _collect(self, show: bool) -> pd.DataFrame:
        engine = self.engines()[0]
        if engine.state != "finished":  # else nothing to wait for: the journal has it all
            await _follow(engine, show)
        return journal_frame(self.journal, engine, pending="not finished")


async def _follow(engine: JobEngine, show: bool) -> None:
    """Run ``engine`` to its end (polling the provider, harvesting), drawing its progress."""
    from .._display import MAX_UPDATES_PER_S, make_display, quiet_logs

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


def journal_frame(journal: Journal, engine: JobEngine, pending: str | None,
                  results: ItemResults | None = None, extra: dict | None = None) -> pd.DataFrame:
    """The frame of a journal's job as the journal has it (``pending``: the error message of a
    row still unanswered, None to leave it empty)."""
    plan = engine.plan
    if results is None:
        results = ItemResults(len(plan.items))
    fill_results(journal, plan, results, [engine], pending=pending)
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
        "journal": str(journal.path),
        "cost": float(sum(costs)) if engine.config.get("price") and None not in costs
        else None,
    }
    attrs.update(extra or {})
    return build_frame(plan, results, attrs=attrs)


class BatchJob:
    """A provider Batch API job (about half the online price; answers within its completion
    window, typically 24 hours).

    ``status()`` asks the provider (status and request counts); ``wait(timeout=None)`` /
    ``result()`` wait for it and return the result frame (the same shape as an online run's);
    ``cancel()`` stops it at the provider (finished rows are kept); ``resubmit()`` sends the rows
    still unanswered as a new job, ``finish_online()`` sends them through the online API. Jobs
    live in the journal: ``bm.jobs()`` lists them after a kernel restart. A provider's queue
    cannot be paused, so there is no ``pause()``.

    One class for every job: a job of this journal (submitted by this process or read back from
    the journal) and a batch adopted from elsewhere differ only in the source it asks.
    """

    def __init__(self, source: JobSource):
        self._source = source

    @classmethod
    def for_task(cls, task: Any, driver: RunDriver) -> BatchJob:
        """The handle of a job ``bm.submit`` started in this process (already in the journal)."""
        return cls(JournalJob.of_run(task, driver))

    @property
    def id(self) -> str | None:
        return self._source.id

    def status(self) -> JobStatus:
        """The provider's status and request counts (one round trip per batch)."""
        return self._source.status()

    def wait(self, timeout: float | None = None, *, progress: bool = True) -> pd.DataFrame:
        """Wait for the job to end and return the result frame. ``TimeoutError`` after
        ``timeout`` seconds (the job goes on at the provider)."""
        return self._source.wait(timeout, progress)

    result = wait

    def done(self) -> bool:
        return self._source.done()

    def cancel(self) -> None:
        """Cancel the job at the provider. Rows it finished are kept (``wait()`` collects them);
        ``resubmit()`` / ``finish_online()`` send the rest later."""
        self._source.cancel()

    def task_count(self) -> int:
        return self._source.task_count()

    total_count = task_count  # the name Qianfan's batch_do users know

    def finished_count(self) -> int:
        return self._source.finished_count()

    def __iter__(self):
        """One ``concurrent.futures.Future`` per row, in input order: settled as rows finish
        when this process runs the job, else once it has ended."""
        live = self._source.live_row_futures()
        return iter(live if live is not None else _settled(self.result()))

    @property
    def frame(self) -> pd.DataFrame:
        """The result frame as it stands now (rows still at the provider are empty)."""
        return self._source.frame

    @property
    def progress(self) -> Snapshot:
        return self._source.progress

    @property
    def run_id(self) -> str | None:
        inputs = self._source.inputs()
        return inputs.run_id if inputs is not None else None

    @property
    def provider(self) -> str | None:
        return self._source.provider

    def __repr__(self) -> str:
        return f"<BatchJob {self._source.describe()}>"

    # -- the rest of an ended job ---------------------------------------------------------------

    def _known_inputs(self, why: str) -> JournalJob:
        """The precondition of ``resubmit()`` and ``finish_online()``: a job whose inputs the
        journal holds (a batch made elsewhere has them in the provider's input file only)."""
        inputs = self._source.inputs()
        if inputs is None:
            raise ConfigError(f"batch {self.id} was made elsewhere: its inputs are not in the "
                              f"journal, so {why}")
        return inputs

    def resubmit(self, *, completion_window: str | None = None) -> BatchJob:
        """Send the rows this job left unanswered (expired, cancelled or failed) as a new job,
        and return its handle (``wait()`` on it collects every row, the old answers included).

        Needs a job whose inputs batchmagic knows (one of the journal's); for a batch adopted
        from elsewhere it raises ``ConfigError``."""
        job = self._known_inputs("there is nothing to resubmit from here")
        engine = job.ended("resubmitting")
        todo = job.unanswered(engine)
        if not todo:
            raise ConfigError(f"every row of job {engine.job_id} is answered; nothing to resubmit")
        config = dict(engine.config)
        if completion_window is not None:
            config["window"] = completion_window
        new, _ = JobEngine.create(job.journal, engine.plan, todo, config, job.access)
        if new is None:
            raise ConfigError("none of the remaining requests fits in a batch file")
        _loop.wait_for(new.submit(), None)
        return BatchJob(JournalJob(new.job_id, job.journal, job.access,
                                   record=job.journal.job(new.job_id)))

    def finish_online(self, **kwargs: Any) -> pd.DataFrame:
        """Send the rows this job left unanswered through the online API (at the online price)
        and return the whole frame. ``kwargs`` go to ``bm.batch`` (concurrency, rpm, ...).

        Needs a job whose inputs batchmagic knows (one of the journal's); for a batch adopted
        from elsewhere it raises ``ConfigError``."""
        job = self._known_inputs("its unanswered rows cannot be sent online from here")
        engine = job.ended("finishing online")
        missing = [engine.plan.items[i] for i in job.unanswered(engine)]
        errors = _send_online(job, engine.config, missing, kwargs) if missing else {}
        plan = engine.plan
        results = ItemResults(len(plan.items))
        fill_results(job.journal, plan, results, [], pending=None)  # answers, old and new
        for i, item in enumerate(plan.items):
            if not results.done[i] and item.key in errors:
                results.error[i] = errors[item.key]
                results.attempts[i] = errors[item.key].attempts
                results.done[i] = 1
        return journal_frame(job.journal, engine, pending="not answered", results=results,
                             extra={"mode": "batch-api+online", "online": len(missing)})

    # -- for tests and the command line ---------------------------------------------------------

    @property
    def _access(self) -> Any:
        return self._source.access

    def _engines(self) -> list[JobEngine]:
        inputs = self._source.inputs()
        return inputs.engines() if inputs is not None else []

    def _on_loop(self, coro, timeout: float | None = STATUS_TIMEOUT):
        return _loop.wait_for(coro, timeout)

    def _wait_submitted(self, timeout: float = 900.0) -> None:
        """Until every batch of a job this process submits exists at the provider. A script that
        exits right after ``submit()`` would otherwise leave the job to be created by the next
        ``wait()`` (recorded, so never paid twice, but not running meanwhile)."""
        inputs = self._source.inputs()
        if inputs is not None:
            inputs.wait_submitted(timeout)


def _send_online(job: JournalJob, config: dict, missing: list, kwargs: dict) -> dict[str, Any]:
    """Send the ``missing`` items through the online API (their answers land in the journal);
    the row errors of those that failed, by item key."""
    from .._api import batch

    kwargs.setdefault("api_key", job.access.api_key)
    kwargs.setdefault("transport", job.access.transport)
    kwargs.setdefault("headers", job.access.headers)
    # the bodies name the model already; model= gives the run its label and its online price
    kwargs.setdefault("model", config.get("model"))
    online = batch([item.body for item in missing], kind=config["kind"],
                   provider=config["provider"], base_url=config["base_url"],
                   cache=job.journal.folder, **kwargs)
    return {item.key: err for item, err in zip(missing, online["error"]) if err is not None}

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
    keys = _journal_access(api_key, options, transport, http, headers)
    if provider is not None or base_url is not None:
        where = ProviderAccess(provider, base_url, api_key, options, transport, http, headers)
        return _provider_jobs(journal, where, keys, status, limit)
    records = journal.jobs(None if status is not None else limit)
    if status is not None:
        if status not in JOB_STATES:
            raise ConfigError(f"a journal job's state is one of {', '.join(JOB_STATES)}, not "
                              f"{status!r}; pass provider= to filter on the provider's status")
        records = [rec for rec in records if rec.get("state") == status]
        records = records[-limit:] if limit else records
    return [_recorded(rec, journal, keys) for rec in records]


def _provider_jobs(journal: Journal, where: Any, keys: Access, status: str | None,
                   limit: int | None) -> list[BatchJob]:
    """The provider's batches, oldest first: the journal's job for a batch it made (that job
    knows the inputs), an adopted handle for the others."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError("limit must be a positive whole number of jobs")
    found = _loop.wait_for(list_batches(where, status, limit or 1000), STATUS_TIMEOUT)
    known = _jobs_by_batch(journal)
    return [_recorded(known[rb.id], journal, keys) if rb.id in known
            else BatchJob(AdoptedBatch(rb, where)) for rb in reversed(found)]


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
    access = _journal_access(api_key, options, transport, http, headers)
    records = journal.jobs(None)
    found = [rec for rec in records if rec["job_id"].startswith(job_id)]
    if len(found) > 1:
        raise ConfigError(f"{job_id!r} matches {len(found)} jobs; give more of the id")
    if not found and job_id in (by_batch := _jobs_by_batch(journal)):
        found = [by_batch[job_id]]
    if found:
        return _recorded(found[0], journal, access)
    if provider is None and base_url is None:
        raise ConfigError(f"no job {job_id!r} in the journal {journal.path}; for a batch made "
                          "elsewhere, say where it is: provider='openai' (or base_url=...)")
    remote = ProviderAccess(provider, base_url, api_key, options, transport, http, headers)
    return BatchJob(AdoptedBatch(_loop.wait_for(retrieve(remote, job_id), STATUS_TIMEOUT), remote))


JOB_STATES = ("submitting", "running", "finished")


def _recorded(record: dict, journal: Journal, access: Access) -> BatchJob:
    return BatchJob(JournalJob(record["job_id"], journal, access, record=record))


def _journal_access(api_key: Any, options: dict, transport: Any, http: str,
            headers: dict | None) -> Access:
    """What the journal's jobs sign in with: the key and the secret batch options only."""
    secret = {k: v for k, v in options.items() if k in SECRET_OPTIONS}
    return Access(api_key=api_key, options=secret, transport=transport, http=http,
                  headers=headers)


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
