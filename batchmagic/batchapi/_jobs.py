"""One Batch API job: recorded, submitted (in shards), polled, harvested into the journal.

The order of events is what makes a crash cheap:

1. ``JobEngine.create`` writes the job, its shards (each with a fresh *nonce*) and its rows to
   the journal before any provider call. The inputs go in too, so the frame can be rebuilt in a
   new kernel.
2. For each shard: count the attempt, upload the file (its id is saved), create the batch with
   the nonce in its metadata (Ark: name and tags), save the batch id. A process that dies between
   "created" and "saved" leaves a shard with attempts but no id; the next run looks the nonce up
   among the provider's batches and adopts the one it finds instead of creating (and paying for)
   a second one.
3. Poll every unfinished shard, with an interval that grows (and backs off on errors).
4. Harvest each finished shard: download its output and error files, join them by
   ``custom_id``, write every answer to the journal's rows (``encode_result``, keyed by row key,
   exactly as an online run would) and every row's outcome to ``job_rows``. Then the job is
   ``finished``. Expired and cancelled shards are harvested the same way: finished rows are kept,
   the rest are marked unprocessed, ready to be resubmitted or finished online.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from .. import _kinds
from .._cost import Price
from .._errors import (
    BadRequestError,
    ConfigError,
    FatalProviderError,
    NotSentError,
    RateLimitError,
    ResponseError,
    RowError,
    ServerError,
    TransportError,
)
from .._journal import Journal, encode_result
from .._progress import Snapshot
from .._secrets import Secret
from ..providers._target import resolve_target
from ..providers._wire import make_wire
from ._client import TERMINAL, OpenAIBatch, RemoteBatch
from ._files import custom_id_for, request_line, shard_lines, validate_lines
from ._lease import Lease, job_names
from ._modes import SECRET_OPTIONS
from ._results import FileReport, Unprocessed, read_file
from ._store import dump_plan, error_from_json, error_json, load_plan

#: test hook: exit the process right after a batch is created, before its id is saved
EXIT_AFTER_CREATE_ENV = "BATCHMAGIC_TEST_EXIT_AFTER_CREATE"
DEFAULT_POLL = 5.0  # seconds before the first status check
DEFAULT_MAX_POLL = 60.0  # the interval grows to this (jobs take minutes to a day)
#: per file, where the provider documents no limit (OpenAI's figures)
DEFAULT_MAX_REQUESTS = 50_000
DEFAULT_MAX_BYTES = 200_000_000
ARK_MAX_BYTES = 5_000_000_000  # "单文件最大 5 GB" (Ark batch inference guide)
CREATE_ATTEMPTS = 3


@dataclass
class Access:
    """What a job needs at run time and the journal never holds: keys, headers, a transport."""

    api_key: Any = field(default=None, repr=False)  # str | Secret | None
    options: dict = field(default_factory=dict, repr=False)  # secret batch options (Ark keys)
    headers: dict | None = field(default=None, repr=False)
    transport: Any = None
    http: str = "aiohttp"


def job_config(target: Any, o: Any, price: Price | None) -> dict:
    """Everything needed to talk about a job later, without a secret in it."""
    preset = target.preset
    options = dict(o.batch_options or {})
    ark = preset is not None and preset.name == "ark"
    prefix = preset.batch_endpoint_prefix if preset is not None else "/v1"
    windows = preset.batch_completion_windows if preset is not None else ()
    max_requests = options.get("max_requests") or (
        preset.batch_max_requests if preset is not None and preset.batch_max_requests
        else DEFAULT_MAX_REQUESTS)
    max_bytes = options.get("max_bytes") or (
        ARK_MAX_BYTES if ark else preset.batch_max_bytes
        if preset is not None and preset.batch_max_bytes else DEFAULT_MAX_BYTES)
    return {
        "provider": preset.name if preset is not None else None,
        "name": target.name,
        "base_url": target.base_url,
        "dialect": target.dialect,
        "kind": o.kind,
        "model": o.model,
        "endpoint": prefix + _kinds.path_for(o.kind),
        "format": "ark" if ark else "openai",
        "window": options.get("completion_window") or (windows[0] if windows else "24h"),
        "max_requests": int(max_requests),
        "max_bytes": int(max_bytes),
        "options": {k: v for k, v in options.items() if k not in SECRET_OPTIONS},
        "price": [price.input, price.output, price.source, price.batch_share] if price else None,
        "http": o.http,
    }


def client_for(config: dict, access: Access):
    wire = make_wire(access.http or config.get("http") or "aiohttp", 4, access.transport)
    if config["format"] == "ark":
        from ._ark import ArkBatch

        return ArkBatch(name=config["name"], options={**config["options"], **access.options},
                        wire=wire, model=config["model"])
    key = access.api_key if isinstance(access.api_key, Secret) else None
    if key is None:
        target = resolve_target(config["provider"], config["base_url"], access.api_key,
                                config["kind"])
        key = target.api_key
    return OpenAIBatch(name=config["name"], base_url=config["base_url"], api_key=key,
                       dialect=config["dialect"], wire=wire, headers=access.headers,
                       dashscope=config["dialect"] == "dashscope")


def price_of(config: dict) -> tuple[Price | None, float]:
    p = config.get("price")
    if not p:
        return None, 1.0
    price = Price(float(p[0]), float(p[1]), str(p[2]), p[3])
    return price, float(p[3]) if p[3] is not None else 1.0  # no documented discount: full price


def _after_create_hook() -> None:
    code = os.environ.get(EXIT_AFTER_CREATE_ENV, "").strip()
    if code:
        os._exit(int(code) if code.isdigit() else 17)


@dataclass
class JobStatus:
    """A job's state as batchmagic and the provider see it."""

    job_id: str
    state: str  # submitting | running | finished
    provider: str
    status: str  # the provider's status words, e.g. "in_progress" or "completed x2, expired"
    total: int
    completed: int
    failed: int
    batches: list[dict]

    def __str__(self) -> str:
        return (f"job {self.job_id} at {self.provider}: {self.state}; provider status "
                f"{self.status or 'not created yet'}, {self.completed:,}/{self.total:,} done, "
                f"{self.failed:,} failed ({len(self.batches)} batch"
                f"{'es' if len(self.batches) != 1 else ''})")

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(str(self))

    def snapshot(self) -> Snapshot:
        """The job as a progress panel draws it, from these counts."""
        return Snapshot(title=f"batch-api job {self.job_id}", requests=self.total,
                        done=self.completed + self.failed, ok=self.completed, failed=self.failed,
                        state="done" if self.state == "finished" else "running",
                        message=str(self))


class JobEngine:
    def __init__(self, journal: Journal, job_id: str, config: dict, access: Access, *,
                 plan: Any = None, plan_text: str | None = None, created: float | None = None,
                 state: str = "submitting"):
        self.journal = journal
        self.job_id = job_id
        self.config = config
        self.access = access
        self._plan = plan
        self._plan_text = plan_text
        self.created = created if created is not None else time.time()
        self.state = state
        self.shards: dict[int, dict] = {s["shard"]: s for s in journal.job_shards(job_id)}
        self._rows: list[dict] | None = None
        self.cancel_requested = False
        self._cancel_sent: set[int] = set()
        self.last_error = ""
        self.unreadable_lines = 0
        self.fatal: RowError | None = None  # why submitting stopped (a bad key, no quota)
        self._summary: str | None = None

    def __repr__(self) -> str:
        return f"<JobEngine {self.job_id} {self.config['name']} {self.state}>"

    # -- building ---------------------------------------------------------------------------------

    @classmethod
    def create(cls, journal: Journal, plan: Any, items: list[int], config: dict,
               access: Access) -> tuple[JobEngine | None, list[int]]:
        """Record a new job for ``plan.items[i] for i in items``. Returns the engine (None when
        nothing can be sent) and the items whose line is too large for any file."""
        url, fmt = config["endpoint"], config["format"]
        lines = [request_line(custom_id_for(plan.items[i].key), plan.items[i].body, url, fmt)
                 for i in items]
        sharding = shard_lines([len(line) for line in lines], config["max_requests"],
                               config["max_bytes"])
        too_large = [items[p] for p in sharding.too_large]
        if not sharding.shards:
            return None, too_large
        for shard in sharding.shards:  # the checks a provider would make, before spending
            validate_lines(b"".join(lines[p] for p in shard), fmt,
                           url=url if fmt == "openai" else None)
        job_id = uuid.uuid4().hex[:12]
        shards = [(n, uuid.uuid4().hex, len(pos)) for n, pos in enumerate(sharding.shards)]
        rows = [(custom_id_for(plan.items[items[p]].key), plan.items[items[p]].key, n)
                for n, pos in enumerate(sharding.shards) for p in pos]
        journal.add_job({"job_id": job_id, "state": "submitting", "provider": config["name"],
                         "model": config["model"], "config": orjson.dumps(config).decode(),
                         "plan": dump_plan(plan), "summary": None}, shards, rows)
        return cls(journal, job_id, config, access, plan=plan), too_large

    @classmethod
    def load(cls, journal: Journal, job_id: str, access: Access) -> JobEngine:
        rec = journal.job(job_id)
        if rec is None:
            raise ConfigError(f"no Batch API job {job_id!r} in the journal {journal.path}")
        return cls(journal, job_id, orjson.loads(rec["config"]), access, plan_text=rec["plan"],
                   created=rec["created"], state=rec["state"])

    @property
    def plan(self):
        if self._plan is None:
            self._plan = load_plan(self._plan_text)
            self._plan_text = None
        return self._plan

    def rows(self) -> list[dict]:
        if self._rows is None:
            self._rows = self.journal.job_rows(self.job_id)
        return self._rows

    # -- shard bookkeeping ------------------------------------------------------------------------

    def info(self, n: int) -> dict:
        raw = self.shards[n].get("info")
        return orjson.loads(raw) if raw else {}

    def shard_state(self, n: int) -> str | None:
        return self.info(n).get("state")

    def terminal(self, n: int) -> bool:
        return self.shard_state(n) in TERMINAL

    def _update_shard(self, n: int, **fields: Any) -> None:
        shard = self.shards[n]
        changed = {k: v for k, v in fields.items() if shard.get(k) != v}
        if changed:
            self.journal.update_shard(self.job_id, n, **changed)
            shard.update(changed)

    def _save(self, n: int, rb: RemoteBatch) -> None:
        info = {"state": rb.state, "total": rb.total, "completed": rb.completed,
                "failed": rb.failed}
        self._update_shard(n, batch_id=rb.id, status=rb.status,
                           info=orjson.dumps(info).decode(), output_ref=rb.output_ref,
                           error_ref=rb.error_ref, message=rb.message)

    def _close_locally(self, n: int, state: str, status: str, message: str) -> None:
        """A shard that ends without a provider batch (never created, or refused)."""
        self._update_shard(n, status=status, info=orjson.dumps({"state": state}).decode(),
                           message=message)

    def _set_state(self, state: str | None = None) -> None:
        if state is None:
            state = "submitting" if any(
                not s.get("batch_id") and not self.terminal(n) for n, s in self.shards.items()
            ) else "running"
        status = self.status()
        summary = orjson.dumps({"status": status.status, "total": status.total,
                                "completed": status.completed, "failed": status.failed}).decode()
        if state != self.state or summary != self._summary:
            self.journal.update_job(self.job_id, state=state, summary=summary)
            self.state = state
            self._summary = summary

    def status(self) -> JobStatus:
        batches, words = [], []
        total = completed = failed = 0
        for n, shard in sorted(self.shards.items()):
            info = self.info(n)
            requests = shard.get("requests") or 0
            t = info.get("total") or requests
            c, f = info.get("completed") or 0, info.get("failed") or 0
            total += t or requests
            completed += c
            failed += f
            if shard.get("status"):
                words.append(shard["status"])
            batches.append({"shard": n, "batch_id": shard.get("batch_id"),
                            "status": shard.get("status"), "state": info.get("state"),
                            "requests": requests, "completed": c, "failed": f,
                            "message": shard.get("message") or ""})
        counted = {w: words.count(w) for w in dict.fromkeys(words)}
        status = ", ".join(w if k == 1 else f"{w} x{k}" for w, k in counted.items())
        return JobStatus(self.job_id, self.state, self.config["name"], status, total, completed,
                         failed, batches)

    # -- the life of a job ------------------------------------------------------------------------

    async def run(self, on_update=None, detach: asyncio.Event | None = None) -> bool:
        """Submit what is not submitted, poll to the end, harvest. True when the job is finished,
        False when ``detach`` was set first (the job goes on at the provider)."""
        if self.state == "finished":
            return True
        client = client_for(self.config, self.access)
        try:
            await self._submit_all(client, detach)
            self._set_state()
            if on_update is not None:
                on_update()
            if not await self._poll(client, on_update, detach):
                return False
            for n in sorted(self.shards):
                if not self.shards[n].get("harvested"):
                    await self._harvest(client, n)
            self._set_state("finished")
            if on_update is not None:
                on_update()
            return True
        finally:
            await client.aclose()

    async def submit(self) -> None:
        """Create every batch not created yet (and return; ``run`` follows them up)."""
        client = client_for(self.config, self.access)
        try:
            await self._submit_all(client, None)
        finally:
            await client.aclose()
        self._set_state()

    async def _submit_all(self, client, detach: asyncio.Event | None) -> None:
        if not self._unsubmitted():
            return
        # one process creates a job's batches at a time; another one driving the same job waits
        # here, then reads the batch ids the first one saved instead of creating its own
        lease = Lease(self.journal, job_names(self.job_id))
        def stopping() -> bool:
            return self.cancel_requested or (detach is not None and detach.is_set())

        if not await lease.take_async(stopping):
            return
        try:
            self.shards = {s["shard"]: s for s in self.journal.job_shards(self.job_id)}
            await self._submit_shards(client, detach)
        finally:
            await asyncio.to_thread(lease.release)

    def _unsubmitted(self) -> list[int]:
        return [n for n, s in sorted(self.shards.items())
                if not s.get("batch_id") and not self.terminal(n)]

    async def _submit_shards(self, client, detach: asyncio.Event | None) -> None:
        for n in sorted(self.shards):
            shard = self.shards[n]
            if shard.get("batch_id") or self.terminal(n):
                continue
            if self.cancel_requested or (detach is not None and detach.is_set()):
                continue  # a cancel is settled by _send_cancels (which adopts crash leftovers)
            try:
                await self._submit(client, n)
            except FatalProviderError as exc:  # applies to every shard: stop here
                self.fatal = exc
                for m in sorted(self.shards):
                    if not self.shards[m].get("batch_id") and not self.terminal(m):
                        self._close_locally(m, "failed", "not_created", f"not submitted: {exc}")
                return
            except (BadRequestError, ConfigError) as exc:  # this file was refused
                self._close_locally(n, "failed", "not_created", f"not submitted: {exc}")

    async def _submit(self, client, n: int) -> None:
        shard = self.shards[n]
        attempts = shard.get("attempts") or 0
        self._update_shard(n, attempts=attempts + 1)  # before talking to the provider
        nonce = shard["nonce"]
        if attempts:  # an earlier process got this far: the batch may exist already
            found = await client.find(nonce, self.created)
            if found is not None:
                self._save(n, found)
                return
        file_ref = shard.get("file_ref")
        if not file_ref:
            data = self._shard_data(n)
            file_ref = await client.upload(data, f"batchmagic-{self.job_id}-{n}-{nonce[:8]}.jsonl")
            self._update_shard(n, file_ref=file_ref)
        kwargs = dict(endpoint=self.config["endpoint"], window=self.config["window"],
                      model=self.config["model"], nonce=nonce, job_id=self.job_id, shard=n)
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                rb = await client.create(file_ref, **kwargs)
                break
            except (TransportError, ResponseError, ServerError, RateLimitError) as exc:
                if attempt == CREATE_ATTEMPTS:
                    raise
                if exc.possibly_billed or isinstance(exc, (ResponseError, ServerError)):
                    # the answer was lost: the batch may exist, look before creating another
                    found = await client.find(nonce, self.created)
                    if found is not None:
                        rb = found
                        break
                await asyncio.sleep(min(30.0, 2.0 ** attempt))
        _after_create_hook()
        self._save(n, rb)

    def _shard_data(self, n: int) -> bytes:
        keys = {r["key"] for r in self.rows() if r["shard"] == n}
        url, fmt = self.config["endpoint"], self.config["format"]
        return b"".join(request_line(custom_id_for(item.key), item.body, url, fmt)
                        for item in self.plan.items if item.key in keys)

    async def _poll(self, client, on_update, detach: asyncio.Event | None) -> bool:
        options = self.config.get("options") or {}
        interval = float(options.get("poll_interval") or DEFAULT_POLL)
        cap = float(options.get("max_poll_interval") or max(DEFAULT_MAX_POLL, interval))
        while True:
            if self.cancel_requested:
                await self._send_cancels(client)
            open_shards = [n for n in sorted(self.shards) if not self.terminal(n)]
            if not open_shards:
                return True
            failures = 0
            for n in open_shards:
                batch_id = self.shards[n].get("batch_id")
                if not batch_id:
                    continue
                try:
                    rb = await client.retrieve(batch_id)
                except BadRequestError as exc:
                    if exc.status != 404:
                        raise
                    self._close_locally(n, "failed", "missing",
                                        f"the provider no longer knows batch {batch_id}")
                    continue
                except (TransportError, ServerError, RateLimitError, ResponseError) as exc:
                    failures += 1  # the job goes on at the provider: try again later
                    self.last_error = str(exc)
                    continue
                self._save(n, rb)
            self._set_state()
            if on_update is not None:
                on_update()
            if all(self.terminal(n) for n in self.shards):
                return True
            if detach is not None:
                try:
                    await asyncio.wait_for(detach.wait(), interval)
                    return False
                except asyncio.TimeoutError:
                    pass
            else:
                await asyncio.sleep(interval)
            interval = min(cap, interval * (3.0 if failures else 1.5))

    async def _send_cancels(self, client) -> None:
        if not self._unsubmitted():
            await self._cancel_shards(client)
            return
        # a shard without a batch id may be being created by another process right now: wait
        # for it (the lease), so its batch is cancelled rather than withdrawn here and left
        # running there
        lease = Lease(self.journal, job_names(self.job_id))
        await lease.take_async()
        try:
            self.shards = {s["shard"]: s for s in self.journal.job_shards(self.job_id)}
            await self._cancel_shards(client)
        finally:
            await asyncio.to_thread(lease.release)

    async def _cancel_shards(self, client) -> None:
        for n in sorted(self.shards):
            if n in self._cancel_sent or self.terminal(n):
                continue
            shard = self.shards[n]
            batch_id = shard.get("batch_id")
            if not batch_id and shard.get("attempts"):  # made before a crash? adopt, then cancel
                found = await client.find(shard["nonce"], self.created)
                if found is not None:
                    self._save(n, found)
                    batch_id = found.id
            if not batch_id:
                self._close_locally(n, "cancelled", "withdrawn", "cancelled before it was submitted")
                continue
            self._cancel_sent.add(n)
            try:
                self._save(n, await client.cancel(batch_id))
            except BadRequestError:  # already finishing: nothing to cancel
                pass

    async def cancel(self) -> None:
        """Ask the provider to stop every unfinished batch (finished rows are kept)."""
        self.cancel_requested = True
        client = client_for(self.config, self.access)
        try:
            await self._send_cancels(client)
        finally:
            await client.aclose()
        self._set_state()

    async def refresh(self) -> JobStatus:
        """One status check of every unfinished batch."""
        if self.state != "finished":
            client = client_for(self.config, self.access)
            try:
                for n in sorted(self.shards):
                    batch_id = self.shards[n].get("batch_id")
                    if batch_id and not self.terminal(n):
                        self._save(n, await client.retrieve(batch_id))
            finally:
                await client.aclose()
            self._set_state()
        return self.status()

    # -- harvest ----------------------------------------------------------------------------------

    async def _harvest(self, client, n: int) -> None:
        shard = self.shards[n]
        config = self.config
        rows = [r for r in self.rows() if r["shard"] == n]
        known = {r["custom_id"] for r in rows}
        report = FileReport({})
        clean = getattr(client, "caller", None)
        clean = clean.clean if clean is not None else (lambda s: s)
        for ref in (shard.get("output_ref"), shard.get("error_ref")):
            if ref:  # parsed off the loop: a file can hold 50,000 answers
                data = await client.download(ref)
                await asyncio.to_thread(read_file, data, known, config["kind"],
                                        config["dialect"], config["name"], report, clean)
        self.unreadable_lines += report.unreadable
        state = self.shard_state(n)
        price, share = price_of(config)
        kind, model, name = config["kind"], config["model"], config["name"]
        records: list[tuple] = []
        outcomes: list[tuple[str, str, str | None]] = []
        for r in rows:
            cid, key = r["custom_id"], r["key"]
            out = report.outcomes.get(cid)
            if isinstance(out, _kinds.Parsed):
                cost = price.cost(out.input_tokens, out.output_tokens) * share if price else None
                result = encode_result(out.output, out.finish_reason, out.reasoning,
                                       {"tool_calls": out.tool_calls,
                                        "logprobs": out.logprobs}).decode()
                records.append((key, "ok", kind, model, result, out.input_tokens,
                                out.output_tokens, cost, None, 1, None, None, None, None, 0,
                                self.job_id))
                outcomes.append((cid, "ok", None))
                continue
            if out is None and state == "completed":
                out = ResponseError("the batch completed without an answer for this request "
                                    "(it is in neither its output nor its error file)",
                                    attempts=1, provider=name, possibly_billed=True)
            if isinstance(out, RowError):
                records.append((key, "error", kind, model, None, None, None, None, None, 1,
                                type(out).__name__, out.message[:2000], out.status, out.code,
                                int(out.possibly_billed), self.job_id))
                outcomes.append((cid, "error", error_json(out)))
                continue
            reason = out.reason if isinstance(out, Unprocessed) else ""
            err = NotSentError(self._unprocessed(n, state, reason), provider=name)
            outcomes.append((cid, "unprocessed", error_json(err)))
        if records:
            await asyncio.to_thread(self.journal.write_rows, records)
        await asyncio.to_thread(self.journal.set_job_rows, self.job_id, outcomes)
        self._rows = None
        self._update_shard(n, harvested=1)

    def _unprocessed(self, n: int, state: str | None, reason: str) -> str:
        batch = self.shards[n].get("batch_id") or "(not created)"
        why = {
            "expired": f"batch {batch} expired (its completion window ran out) before this "
                       "request ran",
            "cancelled": f"batch {batch} was cancelled before this request ran",
            "failed": f"batch {batch} failed: {self.shards[n].get('message') or reason or 'no reason given'}",
        }.get(state or "", f"batch {batch} ended ({state}) without running this request")
        return (f"not processed: {why}; job.resubmit() or job.finish_online() sends the rest")


def fill_results(journal: Journal, plan: Any, results: Any, engines: list[JobEngine], *,
                 pending: str | None) -> list[int]:
    """Fill every unfinished item of ``plan`` from the journal (answers) and the jobs (their
    rows' errors). Items still pending in a job become ``NotSentError(pending)``, or stay
    unfinished when ``pending`` is None. Returns the items filled."""
    todo = [i for i in range(len(plan.items)) if not results.done[i]]
    if not todo:
        return []
    found = journal.lookup(plan.items[i].key for i in todo)
    decided: dict[str, dict] = {}
    in_jobs: set[str] = set()
    for engine in engines:
        for r in engine.rows():
            in_jobs.add(r["key"])
            if r["outcome"] in ("error", "unprocessed"):
                decided.setdefault(r["key"], r)
    filled = []
    for i in todo:
        key = plan.items[i].key
        rec = found.get(key)
        if rec is not None:  # hours in a queue are not a latency: none is given
            results.answer(i, rec.output, rec.finish_reason, rec.reasoning, rec.input_tokens,
                           rec.output_tokens, cost=rec.cost, attempts=1 if key in in_jobs else 0,
                           cached=key not in in_jobs, tool_calls=rec.extra.get("tool_calls"),
                           logprobs=rec.extra.get("logprobs"))
        elif key in decided:
            results.error[i] = error_from_json(decided[key]["error"])
            results.attempts[i] = results.error[i].attempts
        elif pending is not None:
            results.error[i] = NotSentError(pending)
        else:
            continue
        results.done[i] = 1
        filled.append(i)
    return filled
