"""``batch`` / ``abatch`` / ``submit`` / ``estimate``: plan -> run -> frame.

Everything that can fail before spending (arguments, provider, key, template, columns) fails in
the caller's thread, before the run starts. The run itself executes on the private loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as _dt
import math
import numbers
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from . import _kinds, _loop
from ._backend import Unit
from ._breaker import CircuitBreaker, breaker_for
from ._cost import BudgetGuard, resolve_price
from ._dispatch import Dispatcher, ItemResults, RetryPolicy
from ._display import make_display, quiet_logs, summary_line
from ._durable import Durable
from ._errors import ConfigError, NotSentError
from ._frame import LiveFrame, build_frame, check_clash
from ._inputs import Plan, make_plan
from ._journal import folder_for, open_journal
from ._limits import RateGate, Window
from ._progress import Progress, Snapshot
from ._secrets import check_headers
from .providers._openai import OpenAICompatible
from .providers._target import Target, resolve_target
from .providers._wire import make_wire

DEFAULT_TIMEOUT = {"chat": 300.0, "completion": 300.0, "embedding": 60.0, "image": 300.0}
#: servers known to accept ``encoding_format="base64"`` for embeddings
_BASE64_EMBEDDINGS = {"openai", "simulator", "vllm"}
#: the adaptive window starts here when no concurrency is given (then slow-starts upward)
INITIAL_WINDOW = 8
_REGISTRY_SIZE = 50
# recent runs in this process, for listing and cancelling; a finished one is kept only as a
# _Retired summary, so its rows and frame are freed once the caller lets go of them
_recent: list[Any] = []


@dataclass
class _Options:
    kind: str = "chat"
    model: str | None = None
    provider: str | None = None
    base_url: str | None = None
    api_key: Any = field(default=None, repr=False)  # the raw key: never shown
    engine: str | None = None
    engine_options: dict | None = None
    mode: str | None = None
    system: str | None = None
    params: dict | None = None
    concurrency: int | None = None
    rpm: float | None = None
    tpm: float | None = None
    retries: int | None = None
    timeout: float | None = None
    budget: float | None = None
    cache: Any = True
    prices: dict | None = None
    progress: bool = True
    on_missing: str = "error"
    images: str | None = None
    allow_private_urls: bool = False
    http: str = "aiohttp"
    transport: Any = None
    headers: dict | None = field(default=None, repr=False)
    batch_options: dict | None = field(default=None, repr=False)  # may hold Ark's key pair
    breaker: Any = True


def _positive(name: str, value: Any, *, integer: bool = False, zero_ok: bool = False) -> Any:
    """``value`` as a plain int / float (numpy scalars welcome), or a ConfigError naming the
    option. NaN compares false with every limit, so it would silently mean "no limit" (a budget
    that never stops); inf overflows deadlines; ``True`` is not a count."""
    if value is None:
        return None
    wanted = numbers.Integral if integer else numbers.Real
    number = None
    if isinstance(value, wanted) and not isinstance(value, bool):
        number = int(value) if integer else value if type(value) in (int, float) else float(value)
    if number is None or not math.isfinite(number) or number < 0 or (number == 0 and not zero_ok):
        kind = "a positive number"
        if integer:
            kind = "a whole number >= 0" if zero_ok else "a positive integer"
        raise ConfigError(f"{name} must be {kind} (finite), got {value!r}")
    return number


def _validate(o: _Options) -> None:
    if o.kind not in _kinds.KINDS:
        raise ConfigError(f"kind must be one of {', '.join(_kinds.KINDS)}; got {o.kind!r}")
    if o.mode not in (None, "online", "batch-api", "batch-chat"):
        raise ConfigError(f"mode must be 'online', 'batch-api' or 'batch-chat'; got {o.mode!r}")
    if o.batch_options is not None and o.mode != "batch-api":
        raise ConfigError("batch_options= applies to mode='batch-api'")
    if o.engine is not None:
        if o.provider is not None or o.base_url is not None:
            raise ConfigError("engine= runs the model on this machine; drop provider= / base_url= "
                              "(or drop engine= to send the rows to a server)")
        if o.engine_options is not None and not isinstance(o.engine_options, dict):
            raise ConfigError("engine_options must be a dict of load options, e.g. {'n_ctx': 8192}")
    elif o.engine_options is not None:
        raise ConfigError("engine_options= applies to engine= runs only")
    o.budget = _positive("budget", o.budget)
    check_headers(o.headers)
    if o.http not in ("aiohttp", "httpx", "httpx2"):
        raise ConfigError(f"http must be 'aiohttp', 'httpx' or 'httpx2'; got {o.http!r}")
    o.concurrency = _positive("concurrency", o.concurrency, integer=True)
    o.rpm = _positive("rpm", o.rpm)
    o.tpm = _positive("tpm", o.tpm)
    o.timeout = _positive("timeout", o.timeout)
    o.retries = _positive("retries", o.retries, integer=True, zero_ok=True)
    # Ark's Batch Chat asks for the longest client deadline we know of (72 h); beyond a week it
    # is a unit slip (milliseconds for seconds), and a request would hold its slot for good
    if o.timeout is not None and o.timeout > 7 * 24 * 3600:
        raise ConfigError(f"timeout is in seconds, at most 604800 (a week); got {o.timeout!r}")
    if isinstance(o.prices, dict):  # a NaN price makes every cost NaN, and that disarms budget=
        o.prices = {k: _positive(f"prices[{k!r}]", v, zero_ok=True)
                    if isinstance(v, numbers.Real) and not isinstance(v, bool) else v
                    for k, v in o.prices.items()}
    if isinstance(o.batch_options, dict):  # its numbers (poll intervals, sizes) are all > 0
        o.batch_options = {k: _positive(f"batch_options[{k!r}]", v,
                                        integer=isinstance(v, numbers.Integral))
                           if isinstance(v, numbers.Real) and not isinstance(v, bool) else v
                           for k, v in o.batch_options.items()}
    if o.params is not None and not isinstance(o.params, dict):
        raise ConfigError(f"params must be a dict of generation parameters, got {type(o.params).__name__}")
    if o.concurrency is not None and o.concurrency > 10_000:
        raise ConfigError("concurrency above 10,000 would exhaust sockets; use at most 10,000")


class _Run:
    """One planned run. Built in the caller's thread; executed on the loop thread."""

    def __init__(self, inputs: Any, prompt: str | None, o: _Options):
        _validate(o)
        self.breaker = breaker_for(o.breaker)
        self.options = o
        self.id = uuid.uuid4().hex[:12]
        self.engine = None  # an offline engine's EngineSpec, when engine= is given
        self.send_url: str | None = None  # batch-chat: where requests go, if not target.base_url
        if o.engine is not None:
            from . import engines

            self.engine = engines.resolve(o.engine, o.model, o.kind, o.engine_options)
            self.target: Target = Target(self.engine.engine, self.engine.endpoint, None, None,
                                         "engine")
        elif o.mode in ("batch-api", "batch-chat"):
            from .batchapi._modes import target_for

            self.target, self.send_url = target_for(o)
        else:
            self.target = resolve_target(o.provider, o.base_url, o.api_key, o.kind)
        o.api_key = None  # the Secret in the target is the only copy kept
        endpoint = self.target.base_url + _kinds.path_for(o.kind)
        self.plan: Plan = make_plan(
            inputs, prompt, kind=o.kind, endpoint=endpoint, model=o.model, params=o.params,
            system=o.system, on_missing=o.on_missing, images=o.images,
            allow_private_urls=o.allow_private_urls,
        )
        check_clash(self.plan.frame)
        if o.kind == "image":
            from ._image import register_html_formatter

            register_html_formatter()
        if self.engine is not None:
            from .engines import check_bodies

            check_bodies(self.engine, self.plan.items)
        elif any("model" not in item.body for item in self.plan.items):
            raise ConfigError(f"model= is required: which {self.target.name} model should answer?")
        preset = self.target.preset
        self.max_window = o.concurrency or (
            self.engine.default_concurrency if self.engine is not None
            else preset.default_max_concurrency if preset else 64)
        self.results = ItemResults(len(self.plan.items))
        self.price = resolve_price(o.model, self.target.name, o.prices)
        if o.budget is not None and self.price is None:
            raise ConfigError(
                f"budget= needs the price of {o.model!r} at {self.target.name}, which is not known: "
                "pass prices={'input': USD per 1M tokens, 'output': USD per 1M tokens}")
        self.durable: Durable | None = None
        cached_rows = 0
        try:
            folder = folder_for(o.cache)
        except TypeError as exc:
            raise ConfigError(str(exc)) from None
        if folder is not None and self.plan.items:
            self.durable = Durable(open_journal(folder), self.id, self.plan, self.results,
                                   model=o.model)
            cached_rows = self.durable.fill_from_journal()
        self.units = self._units()
        if self.engine is None and o.mode in (None, "online", "batch-chat"):
            # the units hold the bytes each request sends: the dicts behind them are not needed
            # again (the first stays, for showing), and a million of them cost hundreds of MB
            for item in self.plan.items[1:]:
                item.body = None
        plan = self.plan
        self.progress = Progress(
            title=f"{o.kind} {o.model or ''} @ {self.target.name}".replace("  ", " "),
            rows=plan.n_rows, requests=sum(len(u.items) for u in self.units),
            done=len(plan.row_errors) + len(plan.skipped) + cached_rows,
            ok=cached_rows, cached=cached_rows, failed=len(plan.row_errors),
            skipped=len(plan.skipped), item_rows=_ItemRows(plan.items),
        )
        for err in plan.row_errors.values():  # pre-flight failures are failed rows too
            self.progress.error(err)
        self.dispatcher: Dispatcher | None = None
        self.state = "planned"
        self.frame: pd.DataFrame | None = None
        self.started = time.time()
        self._row_done = len(self.plan.row_errors) + len(self.plan.skipped) + cached_rows
        self._row_futures: list[concurrent.futures.Future] | None = None
        self._lock = threading.Lock()
        self._pending_control: list[str] = []
        self.display = None
        self._display_open = False
        self.live: LiveFrame | None = None  # the frame a background run fills in, once asked for
        _recent.append(self)
        del _recent[:-_REGISTRY_SIZE]

    def _units(self) -> list[Unit]:
        units = self._build_units()
        if self.price is not None:
            for u in units:
                items = [self.plan.items[i] for i in u.items]
                u.worst_cost = self.price.cost(sum(i.prompt_tokens for i in items),
                                               sum(i.max_output for i in items))
        return units

    def _build_units(self) -> list[Unit]:
        plan = self.plan
        todo = [i for i in range(len(plan.items)) if not self.results.done[i]]
        if self.engine is not None:  # engines take the body dicts themselves
            from .engines import engine_units

            return engine_units(plan.items, todo)
        if plan.kind != "embedding":
            return [Unit([i], _kinds.encode_body(plan.items[i].body),
                         plan.items[i].prompt_tokens + plan.items[i].max_output) for i in todo]
        preset = self.target.preset
        max_inputs = preset.embedding_max_inputs if preset else 256
        max_tokens = (preset.embedding_max_tokens if preset else None) or 250_000
        base64_ok = preset is not None and preset.name in _BASE64_EMBEDDINGS
        groups: dict[tuple, list[int]] = {}
        for i in todo:
            groups.setdefault(_kinds.pack_signature(plan.items[i].body), []).append(i)
        units = []
        for idxs in groups.values():
            chunk: list[int] = []
            tokens = 0
            for i in idxs:
                t = plan.items[i].prompt_tokens
                if chunk and (len(chunk) >= max_inputs or tokens + t > max_tokens):
                    units.append(self._pack(chunk, tokens, base64_ok))
                    chunk, tokens = [], 0
                chunk.append(i)
                tokens += t
            if chunk:
                units.append(self._pack(chunk, tokens, base64_ok))
        return units

    def _pack(self, chunk: list[int], tokens: int, base64_ok: bool) -> Unit:
        body = _kinds.pack_embeddings([self.plan.items[i].body for i in chunk], base64_ok)
        return Unit(chunk, _kinds.encode_body(body), tokens)

    # -- execution (loop thread) ------------------------------------------------------------------

    async def execute(self) -> pd.DataFrame:
        try:
            return await self._execute()
        finally:
            _retire(self)

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

    async def _execute(self) -> pd.DataFrame:
        o = self.options
        if o.mode == "batch-api":  # jobs, not requests: batchapi runs them
            from .batchapi._run import execute

            return await execute(self)
        self.state = "running"
        breaker = None  # an engine on this machine has no server to give up on
        if self.engine is not None:  # an offline engine: loaded (or reused), then pre-flight
            backend = await self._engine_backend()
            window = Window(self.max_window, self.max_window, adaptive=False)
            gate = RateGate(None, None)  # rpm / tpm mean nothing on one's own machine
        else:
            wire = make_wire(o.http, self.max_window, o.transport)
            backend = OpenAICompatible(
                name=self.target.name, base_url=self.send_url or self.target.base_url, kind=o.kind,
                api_key=self.target.api_key, dialect=self.target.dialect, wire=wire,
                timeout=o.timeout or DEFAULT_TIMEOUT[o.kind], headers=o.headers,
            )
            window = Window(o.concurrency or INITIAL_WINDOW, self.max_window, adaptive=True)
            if o.concurrency:
                window.ssthresh = float(o.concurrency)
            gate = RateGate(o.rpm, o.tpm)
            if self.breaker is not None:
                breaker = CircuitBreaker(self.breaker, provider=self.target.name,
                                         url=backend.url, deadline=backend.timeout)
        policy = RetryPolicy() if o.retries is None else RetryPolicy(retries=o.retries)
        units, held = self.units, []
        if self.durable is not None:
            units, held = await self.durable.claim(units)
        budget = None
        if o.budget is not None:
            budget = BudgetGuard(o.budget, self.price, assumed_output=_assumed_output(o))
        self.dispatcher = d = Dispatcher(units, len(self.plan.items), backend, window=window,
                                         gate=gate, policy=policy, progress=self.progress,
                                         on_item=self._on_item, results=self.results,
                                         price=self.price, budget=budget, breaker=breaker)
        if self.durable is not None:
            self.durable.start_writes(self._on_saved, d.stop)
            self.durable.watch_held(held, d, self.progress, self._on_cached)
        for action in self._pending_control:
            getattr(d, action)()
        display = self.open_display()
        refresher = asyncio.ensure_future(self._refresh(display))
        t0 = time.monotonic()
        try:
            with quiet_logs():
                await d.run()
        finally:
            if self.durable is not None:
                self._not_sent(self.durable.held_not_sent())
                await self.durable.drain()  # a failed write can still stop the run
            if refresher is not None:
                refresher.cancel()
            await backend.aclose()
            self.progress.finished = time.monotonic()
            if d.cancelled:
                self.state = "cancelled"
            elif d.aborted is not None:
                self.state = "aborted"
            else:
                self.state = "done"
            self.progress.state = self.state
            if self.durable is not None:
                await self.durable.finish(self._run_record())
            snap = self.progress.snapshot()
            if display is not None:
                display.close(snap)
            elif self.state != "done" and summary_line(snap):  # a stop is said once, even unasked
                import sys

                print(summary_line(snap), file=sys.stderr)
        frame = self._frame(time.monotonic() - t0)
        with self._lock:
            if self.live is not None:  # the frame handed out while running becomes the result
                self.live.finish(frame)
                frame = self.live.frame
            self.frame = frame
        return self.frame

    async def _engine_backend(self):
        """Load the engine (or reuse the loaded one), then the pre-flight: rows with nothing to
        read become InputErrors, rows whose prompt and output budget do not fit the context
        window ContextLengthErrors, before any row runs; the rest run."""
        from . import engines

        try:
            backend = await asyncio.to_thread(engines.backend_for, self.engine)
            done = {i for i in range(len(self.plan.items)) if self.results.done[i]}
            failures = await asyncio.to_thread(engines.preflight, backend, self.plan.items, done)
        except BaseException:  # the engine would not load: nothing ran
            self.state = self.progress.state = "aborted"
            raise
        for i, err in failures.items():
            self.results.error[i] = err
            self.results.done[i] = 1
            self.progress.finish([i], err)
        if failures:  # never sent, so not journaled (the next run checks them again)
            self._on_saved(list(failures))
            self.units = self._units()
        return backend

    async def _refresh(self, display) -> None:
        """The run's one timer: the display and the live frame change here, never per row."""
        from ._display import MAX_UPDATES_PER_S

        while True:
            await asyncio.sleep(1.0 / MAX_UPDATES_PER_S)
            if self.live is not None:
                self.live.sync(self._attrs(None))
            if display is not None:
                display.update(self.progress.snapshot())

    def open_display(self, background: bool = False):
        """Create the display, once. Called in the thread that starts the run: in a kernel that
        ties the panel to the cell that started it (the loop thread has no cell of its own)."""
        if not self._display_open:
            self._display_open = True
            self.display = make_display(self.options.progress and self.plan.n_rows > 0,
                                        self.progress.snapshot(), control=self.control,
                                        background=background)
        return self.display

    def live_frame(self) -> pd.DataFrame:
        """ONE frame of the final shape, filled in from the refresh timer as rows finish; when
        the run ends it holds exactly the result (and is the frame ``wait()`` returns)."""
        with self._lock:
            if self.frame is not None:
                return self.frame
            if self.live is None:
                self.live = LiveFrame(self.plan, self.results, costs=self.results.cost,
                                      attrs=self._attrs(None))
            return self.live.frame

    def _attrs(self, wall: float | None) -> dict:
        p, d = self.progress, self.dispatcher
        return {
            "run_id": self.id,
            "kind": self.options.kind,
            "model": self.options.model,
            "provider": self.target.name,
            "state": self.state,
            "rows": self.plan.n_rows,
            "requests": len(self.plan.items),
            "http_requests": len(self.units),
            # counts are rows; "cached" rows (answered by the journal) are part of "ok"
            "ok": p.ok,
            "failed": p.failed,
            "skipped": p.skipped,
            "cached": p.cached,
            "journal": str(self.durable.journal.path) if self.durable is not None else None,
            "price": (f"${self.price.input:g} / ${self.price.output:g} per 1M tokens "
                      f"({self.price.source})") if self.price is not None else None,
            "cost_saved": self._cost_saved(),
            "retries": p.retries,
            "rate_limited": p.rate_limited,
            "possibly_billed": d.possibly_billed if d else 0,
            "input_tokens": p.input_tokens,
            "output_tokens": p.output_tokens,
            "cost": d.spent if d is not None and self.price is not None else None,
            "stopped_by": str(d.aborted) if d is not None and d.aborted is not None else None,
            "started": _dt.datetime.fromtimestamp(self.started, _dt.timezone.utc).isoformat(),
            "wall_s": wall,
            "learned_rpm": d.gate.rpm if d else None,
            "learned_tpm": d.gate.tpm if d else None,
            "final_concurrency": d.window.current if d else None,
        }

    def _cost_saved(self) -> float | None:
        if self.durable is None or not self.durable.cached_items:
            return None
        costs = [self.results.cost[i] for i in self.durable.cached_items]
        return None if any(c is None for c in costs) else float(sum(costs))

    def _frame(self, wall: float | None = None) -> pd.DataFrame:
        return build_frame(self.plan, self.results, costs=self.results.cost,
                           attrs=self._attrs(wall))

    # -- per-row completion and control (thread-safe) ----------------------------------------------

    def _on_item(self, item: int) -> None:
        if self.durable is not None:
            self.durable.answered(item)  # counts as finished once committed
        else:
            self._on_saved([item])

    def _on_saved(self, items: list[int]) -> None:
        for item in items:
            rows = self.plan.items[item].rows
            self._row_done += len(rows)
            if self._row_futures is not None:
                with self._lock:
                    for pos in rows:
                        self._settle(pos)

    def _on_cached(self, items: list[int]) -> None:
        """Items another run answered while this one waited for them."""
        self.progress.finish(items, cached=True)
        self._on_saved(items)

    def _not_sent(self, units: list[Unit]) -> None:
        for u in units:
            err = NotSentError("not sent: another run was answering it when this run stopped",
                               provider=self.target.name)
            todo = [i for i in u.items if not self.results.done[i]]
            for i in todo:
                self.results.error[i] = err
                self.results.done[i] = 1
            if todo:
                self.progress.finish(todo, err)
            self._on_saved(u.items)

    def _run_record(self) -> dict:
        p = self.progress
        return dict(started=self.started, finished=time.time(), state=self.state,
                    kind=self.options.kind, model=self.options.model, provider=self.target.name,
                    endpoint=self.plan.endpoint, template=self.plan.template, rows=self.plan.n_rows,
                    requests=len(self.plan.items), cached=p.cached, ok=p.ok, failed=p.failed,
                    cost=self.dispatcher.spent if self.price is not None and self.dispatcher else None)

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

    def row_futures(self) -> list[concurrent.futures.Future]:
        with self._lock:
            if self._row_futures is None:
                self._row_futures = [concurrent.futures.Future() for _ in range(self.plan.n_rows)]
                for pos in range(self.plan.n_rows):
                    self._settle(pos)
        return self._row_futures

    def control(self, action: str) -> None:
        def apply() -> None:
            driver = getattr(self, "_batch_driver", None)  # a batch-api run follows jobs
            if driver is not None:
                driver.control(action)
            elif self.dispatcher is None:
                self._pending_control.append(action)
            else:
                getattr(self.dispatcher, action)()

        _loop.call(apply)

    @property
    def finished_rows(self) -> int:
        return self._row_done


def _assumed_output(o: _Options) -> int | None:
    """The output tokens a budget reserves per request when the call gives no max_tokens."""
    from ._tokens import DEFAULT_MAX_OUTPUT

    if o.kind not in ("chat", "completion"):
        return None
    given = ("max_completion_tokens", "max_tokens", "max_new_tokens")
    return None if any(name in (o.params or {}) for name in given) else DEFAULT_MAX_OUTPUT


class _ItemRows:
    """How many input rows each request answers, read from the plan (no copy for 1M rows)."""

    __slots__ = ("items",)

    def __init__(self, items: list):
        self.items = items

    def __getitem__(self, i: int) -> int:
        return len(self.items[i].rows)

    def __len__(self) -> int:
        return len(self.items)


def _options(kw: dict) -> _Options:
    return _Options(**kw)


def batch(inputs: Any, prompt: str | None = None, *, kind: str = "chat", model: str | None = None,
          provider: str | None = None, base_url: str | None = None, api_key: str | None = None,
          engine: str | None = None, engine_options: dict | None = None,
          mode: str | None = None, system: str | None = None,
          params: dict | None = None, concurrency: int | None = None, rpm: float | None = None,
          tpm: float | None = None, retries: int | None = None, timeout: float | None = None,
          budget: float | None = None, cache: Any = True, progress: bool = True,
          prices: dict | None = None,
          on_missing: str = "error", images: str | None = None, allow_private_urls: bool = False,
          http: str = "aiohttp", transport: Any = None,
          headers: dict | None = None, batch_options: dict | None = None,
          breaker: Any = True) -> pd.DataFrame:
    """Run every row through a model and return the rows with the answers, in input order.

    ``inputs`` is a DataFrame (``prompt`` is a template over its columns, ``{column}``), a Series
    or list of texts (each is the prompt, or fills the template's one field), a list of chat
    message lists, or a list of whole request bodies (dicts). Where to send: ``provider=`` (a
    preset: openai, dashscope, ark, qianfan, deepseek, vllm, ollama, llamacpp, simulator) or
    ``base_url=`` (any OpenAI-compatible server), or ``engine=`` to run offline on this machine
    ("llama.cpp", "transformers", "vllm", "fastdeploy"; ``model=None`` is the engine's default
    model, ``engine_options`` its load options; the engine stays loaded until ``bm.unload()``).
    ``params`` pass through to the request (temperature, max_tokens, ...). ``concurrency`` caps requests in flight (adaptive below it),
    ``rpm`` / ``tpm`` cap requests and tokens per minute (learned from the provider's
    ``x-ratelimit-*`` headers when not given). ``on_missing`` decides rows with a missing value:
    "error" (default), "skip", or "empty". ``images`` names a column of image URLs or paths for
    vision chat. ``http`` picks the wire ("aiohttp", "httpx", "httpx2"); ``transport`` takes any
    httpx transport (e.g. ``httpx.MockTransport``). ``mode="batch-api"`` sends the rows through
    the provider's Batch API (about half the price; ``batch_options`` sets its completion window,
    polling and, for Ark, the TOS bucket) and ``mode="batch-chat"`` through its Batch Chat endpoint.
    ``breaker`` (a ``bm.Breaker``; ``False`` turns it off) stops a run whose attempts keep failing
    the same way: a server that never answers, a daily quota, a wrong URL.

    Failed rows stay in the frame with their exception in ``error``; ``bm.raise_for_errors(df)``
    escalates. Ctrl-C stops the run and returns the rows finished so far.
    """
    run = _Run(inputs, prompt, _options(_locals(locals())))
    run.open_display()
    return _loop.run_sync(run.execute(), on_interrupt=lambda: run.control("cancel"))


async def abatch(inputs: Any, prompt: str | None = None, **kwargs: Any) -> pd.DataFrame:
    """``batch`` for async code: ``df = await bm.abatch(...)``. Cancelling the await cancels the run."""
    run = _Run(inputs, prompt, _options(kwargs))
    run.open_display()
    fut = _loop.submit(run.execute())
    try:
        return await asyncio.wrap_future(fut)
    except asyncio.CancelledError:
        run.control("cancel")
        raise


def submit(inputs: Any, prompt: str | None = None, **kwargs: Any) -> BatchTask:
    """Start a run in the background and return a ``BatchTask`` at once. With
    ``mode="batch-api"`` it is a ``BatchJob`` (a ``BatchTask`` with ``status()``, ``resubmit()``,
    ``finish_online()``), recorded in the journal before this returns."""
    run = _Run(inputs, prompt, _options(kwargs))
    if run.options.mode == "batch-api":
        from .batchapi._handle import BatchJob

        return BatchJob._submit(run)
    return BatchTask(run)


def _locals(scope: dict) -> dict:
    return {k: v for k, v in scope.items() if k not in ("inputs", "prompt")}


class BatchTask:
    """A run in the background (in the style of Qianfan's ``batch_do``).

    ``finished_count()`` / ``task_count()`` count rows; ``wait()`` returns the result frame;
    ``results()`` lists each row's output, or its exception, in input order; iterating yields one
    ``concurrent.futures.Future`` per row in input order; ``pause()``, ``resume()``, ``cancel()``
    control the run; ``frame`` is the result frame as it stands now.
    """

    def __init__(self, run: _Run):
        self._run = run
        run.open_display(background=True)
        self._future = _loop.submit(run.execute())

    def task_count(self) -> int:
        return self._run.plan.n_rows

    total_count = task_count  # the name Qianfan's batch_do users know

    def finished_count(self) -> int:
        return self._run.finished_rows

    def done(self) -> bool:
        return self._future.done()

    def wait(self, timeout: float | None = None) -> pd.DataFrame:
        """Wait for the run to finish and return the result frame (``TimeoutError`` on timeout)."""
        return self._future.result(timeout)

    result = wait

    def results(self, timeout: float | None = None) -> list:
        df = self.wait(timeout)
        return [err if err is not None else out for out, err in zip(df["output"], df["error"])]

    def __iter__(self):
        return iter(self._run.row_futures())

    def __len__(self) -> int:
        return self.task_count()

    def cancel(self) -> None:
        self._run.control("cancel")

    def pause(self) -> None:
        self._run.control("pause")

    def resume(self) -> None:
        self._run.control("resume")

    @property
    def frame(self) -> pd.DataFrame:
        """ONE DataFrame of the final shape whose rows fill in as they finish (a few times a
        second); after the run it holds the final values and is the frame ``wait()`` returns."""
        return self._run.live_frame()

    @property
    def progress(self) -> Snapshot:
        return self._run.progress.snapshot()

    @property
    def run_id(self) -> str:
        return self._run.id

    def __repr__(self) -> str:
        return (f"<BatchTask {self._run.id} {self.finished_count()}/{self.task_count()} rows, "
                f"{self._run.state}>")


@dataclass
class Estimate:
    """What a run would send and cost, before sending anything.

    Token counts are tokenizer-free estimates (see ``_tokens``); costs are ranges from "every
    answer is empty" to "every answer uses all of max_tokens", ``None`` where the price is unknown.
    """

    rows: int
    requests: int  # unique requests after de-duplication
    cached_rows: int  # rows the journal already answers (free)
    to_send: int  # requests still to send
    http_requests: int  # calls on the wire (embeddings are packed)
    input_errors: int  # rows that fail pre-flight
    skipped: int
    input_tokens: int  # estimated, of the requests to send
    max_output_tokens: int  # worst case, of the requests to send
    endpoint: str
    model: str | None
    first_request: dict | None
    price: str | None = None  # where the price came from
    cost_online: tuple[float, float] | None = None  # USD (low, high)
    cost_batch_api: tuple[float, float] | None = None  # USD, where a Batch API discount is known
    cost_local: float = 0.0  # an engine on your own machine has no per-token fee
    eta_s: float | None = None  # lower bound from the given limits

    def __str__(self) -> str:
        lines = [
            f"{self.rows} rows -> {self.requests} unique requests to {self.endpoint} ({self.model})",
            f"journal: {self.cached_rows} rows already answered; {self.to_send} requests to send "
            f"({self.http_requests} HTTP calls)",
            f"tokens: input ~{self.input_tokens:,}, output at most {self.max_output_tokens:,}",
        ]
        if self.cost_online is None:
            lines.append("cost: unknown (no price for this model: pass prices=)")
        else:
            lines.append(f"cost online: ${self.cost_online[0]:,.4f} - ${self.cost_online[1]:,.4f} "
                         f"({self.price})")
            if self.cost_batch_api is not None:
                lines.append(f"cost via Batch API: ${self.cost_batch_api[0]:,.4f} - "
                             f"${self.cost_batch_api[1]:,.4f}")
            lines.append("cost on a local engine: $0 in API fees")
        if self.input_errors or self.skipped:
            lines.append(f"{self.input_errors} rows fail pre-flight, {self.skipped} skipped")
        if self.eta_s is not None:
            lines.append(f"time: at least {self.eta_s:,.0f} s at the given limits")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(str(self))


def estimate(inputs: Any, prompt: str | None = None, **kwargs: Any) -> Estimate:
    """Plan a run and say what it would send and cost, without sending anything."""
    o = _options(kwargs)
    run = _Run(inputs, prompt, o)
    _recent.remove(run)
    items = [run.plan.items[i] for u in run.units for i in u.items]
    in_tok = sum(i.prompt_tokens for i in items)
    out_tok = sum(i.max_output for i in items)
    eta = None
    rpm = o.rpm
    if rpm:
        eta = len(run.units) / (rpm / 60)
    if o.tpm:
        eta = max(eta or 0, (in_tok + out_tok) / (o.tpm / 60))
    price = run.price
    online = batch_api = None
    if price is not None:
        online = (price.cost(in_tok, 0), price.cost(in_tok, out_tok))
        if price.batch_share is not None:
            batch_api = (online[0] * price.batch_share, online[1] * price.batch_share)
    return Estimate(
        rows=run.plan.n_rows, requests=len(run.plan.items), cached_rows=run.progress.cached,
        to_send=len(items), http_requests=len(run.units),
        input_errors=len(run.plan.row_errors), skipped=len(run.plan.skipped),
        input_tokens=in_tok, max_output_tokens=out_tok,
        endpoint=run.plan.endpoint, model=o.model,
        first_request=run.plan.items[0].body if run.plan.items else None,
        price=f"{price.source}: ${price.input:g} in / ${price.output:g} out per 1M tokens"
        if price else None,
        cost_online=online, cost_batch_api=batch_api, eta_s=eta,
    )


class _Retired:
    """A finished run as the registry keeps it: its summary, final counters and display (a
    few kilobytes), none of its inputs, plan or frame."""

    __slots__ = ("id", "state", "started", "progress", "display", "_summary")

    def __init__(self, run: _Run):
        self.id, self.state, self.started = run.id, run.state, run.started
        self._summary = run.summary()
        self.progress = Progress(**{k: getattr(run.progress, k)
                                    for k in Snapshot.__dataclass_fields__})
        self.display = run.display

    def summary(self) -> dict:
        return dict(self._summary)

    def control(self, action: str) -> None:
        """A finished run has nothing left to pause, resume or cancel."""


def _retire(run: _Run) -> None:
    for i, entry in enumerate(_recent):
        if entry is run:
            _recent[i] = _Retired(run)
            return


def recent_runs() -> list:
    """Runs of this process, oldest first: live ``_Run`` objects and ``_Retired`` summaries."""
    return list(_recent)
