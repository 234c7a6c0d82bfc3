"""Batches made elsewhere (the provider's console, another tool, another machine): adopted by id
and listed from the provider.

``bm.job("batch_abc", provider="openai")`` finds a batch the journal does not know by asking the
provider; ``bm.jobs(provider="openai", status="completed")`` lists the provider's own batches
(OpenAI-compatible ``GET /batches``; Ark's ``ListBatchInferenceJobs``). Either way the handle is
a ``BatchJob`` whose source is an ``AdoptedBatch``: it answers ``status()``, ``wait()`` /
``result()``, ``cancel()`` and ``done()`` by asking the provider each time. Nothing about it is
written to the journal, and its inputs are unknown here, so ``resubmit()`` and
``finish_online()`` (which need them) say so.

The frame of an adopted batch. Its inputs are not known (they are in the provider's input file),
so its rows are the requests its output and error files name, one row per ``custom_id``:

* ``custom_id``, then the usual result columns: ``output``, ``error``, ``finish_reason``,
  ``input_tokens``, ``output_tokens``, ``cost`` (always missing: the price is not known here),
  ``latency`` (missing: hours in a queue are not a latency), ``attempts`` (1), and
  ``reasoning`` when a model gave one;
* rows ordered by ``custom_id``, numbers in it compared as numbers ("q-2" before "q-10"), on a
  ``RangeIndex``; a request the batch never ran (expired, cancelled) is a row whose error is a
  ``NotSentError``;
* ``df.attrs["batchmagic"]``: ``mode`` "batch-api", ``adopted`` True, ``jobs`` [the id],
  ``provider``, ``state`` / ``status`` (batchmagic's word and the provider's), ``rows``, ``ok``,
  ``failed``, and ``unreadable`` (lines that were not JSON or had no custom_id).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .. import _kinds, _loop
from .._dispatch import ItemResults
from .._errors import BadRequestError, ConfigError, NotSentError, RowError
from .._frame import build_frame
from .._inputs import Item, Plan
from .._progress import Snapshot
from ..providers._presets import get_preset
from ..providers._target import resolve_target
from ..providers._wire import make_wire
from ._client import OpenAIBatch, RemoteBatch
from ._jobs import DEFAULT_MAX_POLL, DEFAULT_POLL, JobStatus
from ._modes import check_options
from ._results import FileReport, Unprocessed, read_file

#: the kind of answer each batch endpoint gives (its lines are parsed as that kind)
KIND_OF_ENDPOINT = {"/chat/completions": "chat", "/completions": "completion",
                    "/embeddings": "embedding"}


@dataclass
class ProviderAccess:
    """Where a provider's Batch API is and how to sign in; the key is never shown."""

    provider: str | None = None
    base_url: str | None = None
    api_key: Any = field(default=None, repr=False)
    options: dict = field(default_factory=dict, repr=False)
    transport: Any = None
    http: str = "aiohttp"
    headers: dict | None = field(default=None, repr=False)

    def __post_init__(self) -> None:  # every check before a request goes out
        self.options = check_options(self.options)
        if self.provider is None and self.base_url is None:
            raise ConfigError("say which provider to ask: provider='openai' (dashscope, ark, "
                              "qianfan, ...) or base_url='https://host/v1'")
        self._client(wire=None)

    def client(self):
        return self._client(make_wire(self.http, 4, self.transport))

    @property
    def ark(self) -> bool:
        return self.provider is not None and self.provider.lower() == "ark"

    def _client(self, wire: Any):
        if self.ark:
            from ._ark import ArkBatch

            return ArkBatch(name="ark", options=self.options, wire=wire, model=None,
                            creating=False)
        if self.provider is not None:
            try:
                preset = get_preset(self.provider)
            except KeyError as exc:
                raise ConfigError(str(exc.args[0])) from None
            if not preset.batch_api and preset.needs_key:
                raise ConfigError(f"{preset.name} has no Batch API")
        target = resolve_target(self.provider, self.base_url, self.api_key, "chat")
        return OpenAIBatch(name=target.name, base_url=target.base_url, api_key=target.api_key,
                           dialect=target.dialect, wire=wire, headers=self.headers,
                           dashscope=target.dialect == "dashscope")


async def _with_client(access: ProviderAccess, call):
    client = access.client()
    try:
        return await call(client)
    finally:
        await client.aclose()


async def retrieve(access: ProviderAccess, batch_id: str) -> RemoteBatch:
    """The provider's batch ``batch_id``; a ConfigError when it has none by that id."""
    async def ask(client) -> RemoteBatch:
        try:
            return await client.retrieve(batch_id)
        except BadRequestError as exc:
            if exc.status == 404 or (exc.code or "").startswith("NotFound"):
                raise ConfigError(f"{client.name} has no batch {batch_id!r} (and the journal has "
                                  "no job by that id)") from None
            raise

    return await _with_client(access, ask)


async def list_batches(access: ProviderAccess, status: str | None,
                       limit: int) -> list[RemoteBatch]:
    return await _with_client(access, lambda c: c.list_batches(status=status, limit=limit))


def _natural(custom_id: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", custom_id) if part]


class AdoptedBatch:
    """Where a ``BatchJob`` adopted from elsewhere gets its answers: the provider, asked each
    time (see the module docstring for its frame). Nothing about it is in the journal."""

    def __init__(self, batch: RemoteBatch, access: ProviderAccess):
        self.id = batch.id
        self.access = access
        self._remote = batch

    def inputs(self) -> None:
        """None: its inputs are in the provider's input file, not in the journal."""
        return None

    def live_row_futures(self) -> None:
        return None  # no run of this process follows it

    # -- asking the provider --------------------------------------------------------------------

    def _ask(self, call, timeout: float | None = None):
        return _loop.wait_for(_with_client(self.access, call), timeout)

    def _status_of(self, rb: RemoteBatch) -> JobStatus:
        batch = {"shard": 0, "batch_id": rb.id, "status": rb.status, "state": rb.state,
                 "requests": rb.total or 0, "completed": rb.completed or 0,
                 "failed": rb.failed or 0, "message": rb.message}
        return JobStatus(rb.id, "finished" if rb.terminal else "running", self.provider or "",
                         rb.status, rb.total or 0, rb.completed or 0, rb.failed or 0, [batch])

    def status(self) -> JobStatus:
        self._remote = self._ask(lambda c: c.retrieve(self.id))
        return self._status_of(self._remote)

    def done(self) -> bool:
        return self._remote.terminal or self.status().state == "finished"

    def cancel(self) -> None:
        """Ask the provider to stop the batch (requests it finished stay in its output)."""
        if not self._remote.terminal:
            self._remote = self._ask(lambda c: c.cancel(self.id))

    def wait(self, timeout: float | None, progress: bool) -> pd.DataFrame:
        """Wait for the batch to end, then read its output and error files into a frame."""
        return self._ask(lambda c: self._collect(c, progress), timeout)

    def task_count(self) -> int:
        return self._remote.total or 0

    def finished_count(self) -> int:
        return (self._remote.completed or 0) + (self._remote.failed or 0)

    @property
    def frame(self) -> pd.DataFrame:
        """The batch's rows if it has ended; no rows while it runs (its files come at the end)."""
        if self.status().state == "finished":
            return self.wait(None, progress=False)
        return self._frame_of(FileReport({}), self._remote)

    @property
    def progress(self) -> Snapshot:
        return self._status_of(self._remote).snapshot()

    @property
    def provider(self) -> str | None:
        return self.access.provider or self.access.base_url

    def describe(self) -> str:
        rb = self._remote
        counts = f", {rb.completed or 0}/{rb.total or 0} requests done" if rb.total else ""
        when = (f", created {time.strftime('%Y-%m-%d %H:%M', time.localtime(rb.created))}"
                if rb.created else "")
        name = f" {rb.name!r}" if rb.name else ""
        return (f"{rb.id} {self.provider}{name}: {rb.status or rb.state}{counts}{when} "
                "(made elsewhere)")

    # -- collecting -----------------------------------------------------------------------------

    async def _collect(self, client, show: bool) -> pd.DataFrame:
        from .._display import make_display

        display = make_display(show, self.progress) if show else None
        interval = float(self.access.options.get("poll_interval") or DEFAULT_POLL)
        cap = float(self.access.options.get("max_poll_interval")
                    or max(DEFAULT_MAX_POLL, interval))
        try:
            while True:
                self._remote = await client.retrieve(self.id)
                if display is not None:
                    display.update(self.progress)
                if self._remote.terminal:
                    break
                await asyncio.sleep(interval)
                interval = min(cap, interval * 1.5)
            frame = await self._harvest(client, self._remote)
        finally:
            if display is not None:
                display.close(self.progress)
        return frame

    async def _harvest(self, client, rb: RemoteBatch) -> pd.DataFrame:
        kind = next((k for suffix, k in KIND_OF_ENDPOINT.items()
                     if (rb.endpoint or "").endswith(suffix)), "chat")
        dialect = "ark" if self.access.ark else client.caller.dialect
        report = FileReport({})
        for ref in (rb.output_ref, rb.error_ref):
            if ref:  # a download cut short raises: never a partial harvest
                data = await client.download(ref)
                await asyncio.to_thread(read_file, data, None, kind, dialect, client.name,
                                        report, client.caller.clean)
        return self._frame_of(report, rb, kind)

    def _frame_of(self, report: FileReport, rb: RemoteBatch, kind: str = "chat") -> pd.DataFrame:
        ids = sorted(report.outcomes, key=_natural)
        n = len(ids)
        plan = Plan(kind, rb.endpoint or "", pd.RangeIndex(n), pd.DataFrame({"custom_id": ids}),
                    [Item(cid, {}, 0, 0, [i]) for i, cid in enumerate(ids)], list(range(n)),
                    {}, set())
        results = ItemResults(n)
        for i, cid in enumerate(ids):
            _fill(results, i, report.outcomes[cid], rb, self.provider)
        failed = sum(1 for e in results.error if e is not None)
        attrs = {"run_id": None, "mode": "batch-api", "adopted": True, "jobs": [rb.id],
                 "kind": kind, "provider": self.provider, "state": rb.state,
                 "status": rb.status, "rows": n, "requests": n, "ok": n - failed,
                 "failed": failed, "unreadable": report.unreadable, "cost": None}
        return build_frame(plan, results, attrs=attrs)


def _fill(results: ItemResults, i: int, outcome: Any, rb: RemoteBatch, provider: Any) -> None:
    results.done[i] = 1
    results.attempts[i] = 1
    if isinstance(outcome, _kinds.Parsed):
        results.output[i] = outcome.output
        results.finish_reason[i] = outcome.finish_reason
        results.reasoning[i] = outcome.reasoning
        results.input_tokens[i] = outcome.input_tokens
        results.output_tokens[i] = outcome.output_tokens
    elif isinstance(outcome, RowError):
        results.error[i] = outcome
    else:
        reason = outcome.reason if isinstance(outcome, Unprocessed) else ""
        results.error[i] = NotSentError(f"not processed: batch {rb.id} ended ({rb.status or rb.state}) "
                                        f"before this request ran{': ' + reason if reason else ''}",
                                        provider=str(provider or ""))
        results.attempts[i] = 0
