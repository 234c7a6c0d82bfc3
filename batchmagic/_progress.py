"""Progress state of one run: plain counters, written on the run's loop thread, read anywhere.

No display code lives here (``_display.py`` draws it). ``snapshot()`` returns a consistent copy.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field


@dataclass
class Snapshot:
    title: str = ""
    rows: int = 0  # input rows
    requests: int = 0  # unique requests to answer (after de-duplication and cache hits)
    done: int = 0  # requests finished (ok or failed)
    ok: int = 0
    failed: int = 0
    cached: int = 0  # rows answered from the journal without a request
    in_flight: int = 0
    retrying: int = 0  # waiting for a retry
    retries: int = 0  # retries made so far
    rate_limited: int = 0  # 429-like answers received
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    concurrency: int = 0
    rate_waits: int = 0
    state: str = "starting"  # starting | running | paused | done | cancelled | aborted
    message: str = ""
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    errors: dict[str, int] = field(default_factory=dict)  # error class name -> count
    first_errors: list[str] = field(default_factory=list)  # a few messages, for the display

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def queued(self) -> int:
        return max(0, self.requests - self.done - self.in_flight - self.retrying)

    @property
    def rate(self) -> float:
        e = self.elapsed
        return self.done / e if e > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        e = self.elapsed
        return (self.input_tokens + self.output_tokens) / e if e > 0 else 0.0

    @property
    def eta(self) -> float | None:
        r = self.rate
        remaining = self.requests - self.done
        return remaining / r if r > 0 and remaining > 0 else None

    def as_dict(self) -> dict:
        return asdict(self)


class Progress(Snapshot):
    """The live counters. Mutated only on the run's loop thread."""

    MAX_MESSAGES = 5

    def __init__(self, **kw):
        super().__init__(**kw)
        self._lock = threading.Lock()
        self.version = 0  # bumped on every change so a display can skip idle refreshes

    def error(self, err: BaseException, rows: int = 1) -> None:
        name = type(err).__name__
        with self._lock:
            self.errors[name] = self.errors.get(name, 0) + rows
            if len(self.first_errors) < self.MAX_MESSAGES:
                self.first_errors.append(f"{name}: {err}"[:300])

    def snapshot(self) -> Snapshot:
        with self._lock:
            data = {k: getattr(self, k) for k in Snapshot.__dataclass_fields__}
            data["errors"] = dict(self.errors)
            data["first_errors"] = list(self.first_errors)
        return Snapshot(**data)
