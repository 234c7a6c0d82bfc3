"""Chooses how a run's progress is shown and throttles updates.

Renderers read ``Progress.snapshot()`` on a timer (at most ``MAX_UPDATES_PER_S``), so per-row work
never touches the display and a 100,000-row run prints no line per row. The text renderer is a
tqdm bar on stderr.
"""

from __future__ import annotations

import contextlib
import logging
import sys

from ._progress import Snapshot

MAX_UPDATES_PER_S = 5
_NOISY_LOGGERS = ("httpx", "httpcore", "httpx2", "httpcore2", "aiohttp", "openai", "urllib3")


class TextDisplay:
    """A tqdm bar: rows done, rows/s, ok / failed / retries, tokens/s."""

    def __init__(self, snap: Snapshot, file=None):
        from tqdm.std import tqdm

        self.bar = tqdm(total=snap.requests, desc=snap.title or "batch", unit="req",
                        file=file if file is not None else sys.stderr, dynamic_ncols=True,
                        mininterval=1.0 / MAX_UPDATES_PER_S, leave=True)
        self._last = -1

    def update(self, snap: Snapshot) -> None:
        if snap.done == self._last and snap.state == "running":
            return
        self._last = snap.done
        self.bar.n = snap.done
        self.bar.set_postfix_str(_postfix(snap), refresh=False)
        self.bar.refresh()

    def close(self, snap: Snapshot) -> None:
        self.bar.n = snap.done
        self.bar.set_postfix_str(_postfix(snap), refresh=False)
        self.bar.close()
        line = summary_line(snap)
        if line:
            print(line, file=self.bar.fp)


def _postfix(s: Snapshot) -> str:
    parts = [f"ok={s.ok}"]
    if s.failed:
        parts.append(f"failed={s.failed}")
    if s.retries:
        parts.append(f"retries={s.retries}")
    if s.rate_limited:
        parts.append(f"429s={s.rate_limited}")
    if s.cached:
        parts.append(f"cached={s.cached}")
    if s.input_tokens or s.output_tokens:
        parts.append(f"tok/s={s.tokens_per_s:,.0f}")
    if s.state == "paused":
        parts.append("PAUSED")
    return " ".join(parts)


def summary_line(s: Snapshot) -> str:
    """One line for the end of a run with failures or a stop; empty when all went well."""
    if not s.failed and s.state == "done":
        return ""
    errs = ", ".join(f"{k} x{v}" for k, v in sorted(s.errors.items(), key=lambda kv: -kv[1]))
    head = {"cancelled": "batch cancelled", "aborted": "batch stopped"}.get(s.state, "batch finished")
    text = f"{head}: {s.ok} ok, {s.failed} failed of {s.requests} requests"
    if errs:
        text += f" ({errs})"
    if s.message:
        text += f"; {s.message}"
    return text


def make_display(progress: bool, snap: Snapshot):
    if not progress:
        return None
    return TextDisplay(snap)


@contextlib.contextmanager
def quiet_logs():
    """Silence HTTP client INFO logs during a run (one line per request otherwise)."""
    saved = []
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)
