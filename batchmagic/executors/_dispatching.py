"""What the online and engine executors share: the dispatcher over a backend, with the journal's
claims, the budget guard and group-committed writes around it. They differ only in the backend
and the limits they give it (``connect``)."""

from __future__ import annotations

import abc
from typing import Any

from .._cost import BudgetGuard
from .._dispatch import Dispatcher, RetryPolicy
from .._limits import RateGate, Window
from .._tokens import DEFAULT_MAX_OUTPUT

_MAX_TOKEN_PARAMS = ("max_completion_tokens", "max_tokens", "max_new_tokens")


class DispatchExecutor(abc.ABC):
    def __init__(self, run: Any):
        self._run = run
        self.dispatcher: Dispatcher | None = None
        self.backend: Any = None
        self._pending: list[str] = []  # controls that arrived before the dispatcher existed

    @abc.abstractmethod
    async def connect(self) -> tuple[Any, Window, RateGate, Any]:
        """(backend, window, gate, circuit breaker or None) for this run."""

    def prepare(self) -> None:  # noqa: B027 (a hook: nothing to record before these runs)
        """Nothing to record before the run: requests are only sent once it runs."""

    async def run(self) -> None:
        run = self._run
        self.backend, window, gate, breaker = await self.connect()
        o = run.options
        units, held, later = run.units, [], []
        if run.durable is not None:
            units, held, later = await run.durable.claim_first(units)
        budget = None
        if o.budget is not None:
            budget = BudgetGuard(o.budget, run.price, assumed_output=_assumed_output(o))
        self.dispatcher = d = Dispatcher(
            units, len(run.plan.items), self.backend, window=window, gate=gate,
            policy=_policy(o), progress=run.progress, on_item=run.item_done,
            results=run.results, price=run.price, budget=budget, breaker=breaker,
            check=run.schema.parse if run.schema is not None else None)
        if run.durable is not None:
            run.durable.start_writes(run.items_saved, d.stop)
            run.durable.watch_held(held, d, run.progress, run.items_cached)
            if later:
                run.durable.claim_later(later, d, run.progress)
        for action in self._pending:
            getattr(d, action)()
        await d.run()

    async def close(self) -> None:
        run = self._run
        if run.durable is not None:
            run.not_sent(run.durable.held_not_sent())
            await run.durable.drain()  # a failed write can still stop the run
        if self.backend is not None:
            await self.backend.aclose()

    def control(self, action: str) -> None:
        if self.dispatcher is None:
            self._pending.append(action)
        else:
            getattr(self.dispatcher, action)()

    @property
    def cancelled(self) -> bool:
        return self.dispatcher is not None and self.dispatcher.cancelled

    @property
    def stopped_by(self) -> BaseException | None:
        return self.dispatcher.aborted if self.dispatcher is not None else None

    def facts(self) -> dict:
        d = self.dispatcher
        if d is None:
            return {}
        return {
            "possibly_billed": d.possibly_billed,
            "cost": d.spent if self._run.price is not None else None,
            "stopped_by": str(d.aborted) if d.aborted is not None else None,
            "learned_rpm": d.gate.rpm, "learned_tpm": d.gate.tpm,
            "final_concurrency": d.window.current,
        }

    def handle(self, task: Any) -> Any:
        return task


def _policy(o: Any) -> RetryPolicy:
    given = {"parse_retries": o.parse_retries}
    if o.retries is not None:
        given["retries"] = o.retries
    return RetryPolicy(**given)


def _assumed_output(o: Any) -> int | None:
    """The output tokens a budget reserves per request when the call gives no max_tokens."""
    if o.kind not in ("chat", "completion"):
        return None
    return None if any(name in (o.params or {}) for name in _MAX_TOKEN_PARAMS) \
        else DEFAULT_MAX_OUTPUT
