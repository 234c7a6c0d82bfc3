"""Rows answered by an OpenAI-compatible HTTP endpoint: many requests in flight on one wire,
the adaptive window, the rate gate (given, learned from headers, or probed) and the circuit
breaker."""

from __future__ import annotations

from typing import Any

from .._breaker import CircuitBreaker
from .._limits import RateGate, Window
from ..providers._openai import OpenAICompatible
from ..providers._wire import make_wire
from ._dispatching import DispatchExecutor

DEFAULT_TIMEOUT = {"chat": 300.0, "completion": 300.0, "embedding": 60.0, "image": 300.0}
#: the adaptive window starts here when no concurrency is given (then slow-starts upward)
INITIAL_WINDOW = 8


class OnlineExecutor(DispatchExecutor):
    async def connect(self) -> tuple[Any, Window, RateGate, Any]:
        run = self._run
        o, target = run.options, run.target
        backend, window, breaker = http_side(
            name=target.name, url=run.send_url or target.base_url, kind=o.kind,
            api_key=target.api_key, dialect=target.dialect,
            wire=make_wire(o.http, run.max_window, o.transport), timeout=o.timeout,
            headers=o.headers, stream=_streams(o, target), concurrency=o.concurrency,
            max_window=run.max_window, breaker=run.breaker)
        return backend, window, RateGate(o.rpm, o.tpm), breaker


def http_side(*, name: str, url: str, kind: str, api_key: Any, dialect: Any, wire: Any,
              timeout: float | None, headers: Any, stream: bool, concurrency: int | None,
              max_window: int, breaker: Any) -> tuple[Any, Window, Any]:
    """The backend, the adaptive window and the circuit breaker of an HTTP run: this process's
    (``OnlineExecutor``) and each Ray worker's are made the same way."""
    backend = OpenAICompatible(name=name, base_url=url, kind=kind, api_key=api_key,
                               dialect=dialect, wire=wire, timeout=timeout or DEFAULT_TIMEOUT[kind],
                               headers=headers, stream=stream)
    window = Window(concurrency or INITIAL_WINDOW, max_window, adaptive=True)
    if concurrency:
        window.ssthresh = float(concurrency)
    if breaker is not None:
        breaker = CircuitBreaker(breaker, provider=name, url=backend.url,
                                 deadline=backend.timeout)
    return backend, window, breaker


def _streams(o: Any, target: Any) -> bool:
    """stream= as given; unset, on for the models a preset says only answer streamed requests
    (and only for the kinds that stream)."""
    if o.kind not in ("chat", "completion"):
        return False
    if o.stream is not None:
        return o.stream
    preset = target.preset
    return bool(preset is not None and o.model and preset.streams_only(o.model))
