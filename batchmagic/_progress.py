"""Progress state of one run: plain counters, written on the run's loop thread, read anywhere.

No display code lives here (``_display.py`` draws it). ``snapshot()`` returns a consistent copy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

#: error classes of rows a stop left undone: cut off in flight, and never sent
STOP_ERRORS = ("CancelledRowError", "NotSentError")


@dataclass
class Snapshot:
    title: str = ""
    # what users count is rows: identical rows share one request, and a journal answers rows
    # without any; requests are counted apart
    rows: int = 0  # input rows
    done: int = 0  # rows finished: answered, failed, skipped, or from the journal
    ok: int = 0  # rows answered, the journal's included
    failed: int = 0  # rows failed, pre-flight errors included
    cached: int = 0  # rows answered from the journal without a request (part of ``ok``)
    skipped: int = 0  # rows skipped for a missing value (on_missing="skip")
    requests: int = 0  # unique requests to answer in this run (after de-duplication and cache)
    requests_done: int = 0  # of those, finished (answered or failed)
    in_flight: int = 0
    retrying: int = 0  # waiting for a retry
    retries: int = 0  # retries made so far (re-asks included)
    reasked: int = 0  # answers that did not fit schema= and were asked again
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
    errors: dict[str, int] = field(default_factory=dict)  # error class name -> rows
    first_errors: list[str] = field(default_factory=list)  # a few messages, for the display

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def stop_kinds(self) -> tuple[str, ...]:
        """After a cancel or a stop, the error classes that are what the stop left undone (cut
        off in flight, never sent), not failures of their own."""
        return STOP_ERRORS if self.state in ("cancelled", "aborted") else ()

    @property
    def cut_off(self) -> int:
        """Rows a stop cut off in flight (possibly billed): not failures of their own."""
        return self.errors.get(STOP_ERRORS[0], 0) if self.stop_kinds else 0

    @property
    def not_started(self) -> int:
        """Rows a stop left unsent."""
        return self.errors.get(STOP_ERRORS[1], 0) if self.stop_kinds else 0

    @property
    def failures(self) -> int:
        """Rows that failed on their own: a stop's cut-off and unsent rows are counted apart."""
        return self.failed - self.cut_off - self.not_started

    @property
    def stop_reason(self) -> str:
        """Why a stopped run stopped (the run's message says it once), else ""."""
        prefix = "stopped: "
        if self.state == "aborted" and self.message.startswith(prefix):
            return self.message[len(prefix):]
        return ""

    @property
    def queued(self) -> int:
        return max(0, self.requests - self.requests_done - self.in_flight - self.retrying)

    @property
    def rate(self) -> float:
        """Requests finished per second."""
        e = self.elapsed
        return self.requests_done / e if e > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        e = self.elapsed
        return (self.input_tokens + self.output_tokens) / e if e > 0 else 0.0

    @property
    def eta(self) -> float | None:
        r = self.rate
        remaining = self.requests - self.requests_done
        return remaining / r if r > 0 and remaining > 0 else None


class Progress(Snapshot):
    """The live counters. Mutated only on the run's loop thread.

    ``item_rows[i]`` is how many input rows request ``i`` answers (identical rows share one);
    without it every request is one row. ``finish`` turns finished requests into row counts.
    """

    MAX_MESSAGES = 5

    def __init__(self, *, item_rows: Sequence[int] | None = None, **kw):
        super().__init__(**kw)
        self._lock = threading.Lock()
        self._item_rows = item_rows
        self.version = 0  # bumped on every change so a display can skip idle refreshes

    def rows_of(self, items: Sequence[int]) -> int:
        weights = self._item_rows
        return len(items) if weights is None else int(sum(weights[i] for i in items))

    def finish(self, items: Sequence[int], error: BaseException | None = None,
               *, cached: bool = False, sent: bool = True) -> None:
        """Requests ``items`` finished: answered (``error`` None), failed, or answered by the
        journal while this run waited for them (``cached``). A request never sent (``sent``
        False: the run stopped first) finishes its rows but is no request done."""
        rows = self.rows_of(items)
        self.requests_done += len(items) if sent else 0
        self.done += rows
        if error is None:
            self.ok += rows
            if cached:
                self.cached += rows
        else:
            self.failed += rows
            self.error(error, rows)
        self.version += 1

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
