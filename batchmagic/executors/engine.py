"""Rows answered by an engine on this machine (llama.cpp, transformers, vLLM, FastDeploy): the
same dispatcher, a fixed window of the engine's own concurrency, no rate limits (they mean
nothing on one's own hardware) and no circuit breaker (there is no server to give up on)."""

from __future__ import annotations

import asyncio
from typing import Any

from .._limits import RateGate, Window
from ._dispatching import DispatchExecutor


class EngineExecutor(DispatchExecutor):
    async def connect(self) -> tuple[Any, Window, RateGate, Any]:
        """Load the engine (or reuse the loaded one), then its pre-flight: rows whose prompt
        and output budget cannot fit become row errors before any row runs; the rest run."""
        from .. import engines

        run = self._run
        backend = await asyncio.to_thread(engines.backend_for, run.engine)
        done = {i for i in range(len(run.plan.items)) if run.results.done[i]}
        failures = await asyncio.to_thread(engines.preflight, backend, run.plan.items, done)
        run.preflight_failed(failures)
        window = Window(run.max_window, run.max_window, adaptive=False)
        return backend, window, RateGate(None, None), None
