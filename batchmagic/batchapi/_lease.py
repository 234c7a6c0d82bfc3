"""Leases on Batch API job creation, so two processes never pay for the same rows twice.

The journal's lease table already stops two online runs sending the same row: a run claims the
keys it is about to send, and a key another live run holds is not sent (``Journal.claim``). Jobs
take the same kind of lease, on their own names so that they never block an online run:

* ``rows:<row key>`` while a run looks for an unfinished job holding its rows and, finding none,
  records a new one. A second process submitting the same rows at the same instant waits, then
  finds the first one's job and joins it instead of recording (and paying for) another.
* ``job:<job id>`` while a process creates a job's provider batches. A second process driving
  the same job (it joined it, or ``bm.jobs()[i].wait()`` in another kernel) waits, then reads the
  batch ids the first one saved.

A lease dies with its process (same host) or when it is not renewed for ``LEASE_SECONDS``; while
held it is renewed from a small thread, so a slow upload of a large file cannot outlive it.
The wait polls the journal: another process holds the lease, and no event crosses processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from .._errors import JournalError
from .._journal import LEASE_SECONDS, Journal

FIRST_WAIT = 0.02  # seconds: the usual holder records a job in milliseconds
LONGEST_WAIT = 1.0  # a holder creating batches takes seconds: check about once a second
RENEW_EVERY = LEASE_SECONDS / 4


def row_names(keys: Iterable[str]) -> list[str]:
    return [f"rows:{key}" for key in keys]


def job_names(job_id: str) -> list[str]:
    return [f"job:{job_id}"]


class Lease:
    """One holder's claim on ``names`` in the journal's lease table."""

    def __init__(self, journal: Journal, names: list[str]):
        self.journal = journal
        self.names = names
        self.holder = f"batchapi-{uuid.uuid4().hex[:12]}"
        self._stop_renewing: threading.Event | None = None

    def try_take(self) -> bool:
        """Take every name, or none: a partial claim is given back so two holders of
        overlapping sets cannot each wait for the other."""
        if not self.names:
            return True
        held = self.journal.claim(self.names, self.holder)
        if held:
            self.journal.release(self.holder)
            return False
        self._renew_in_background()
        return True

    def take(self) -> None:
        """Wait (in this thread) until the lease is ours."""
        wait = FIRST_WAIT
        while not self.try_take():
            time.sleep(wait)
            wait = min(LONGEST_WAIT, wait * 1.5)

    async def take_async(self, give_up: Callable[[], bool] | None = None) -> bool:
        """Wait (on the loop) until the lease is ours: True; False once ``give_up()`` says so."""
        wait = FIRST_WAIT
        while not await asyncio.to_thread(self.try_take):
            if give_up is not None and give_up():
                return False
            await asyncio.sleep(wait)
            wait = min(LONGEST_WAIT, wait * 1.5)
        return True

    def release(self) -> None:
        if self._stop_renewing is not None:
            self._stop_renewing.set()
            self._stop_renewing = None
        self.journal.release(self.holder)

    def _renew_in_background(self) -> None:
        stop = self._stop_renewing = threading.Event()

        def renew() -> None:
            while not stop.wait(RENEW_EVERY):
                # a failed renewal only shortens the lease; the work it guards goes on
                with contextlib.suppress(JournalError, sqlite3.Error):
                    self.journal.renew(self.holder)

        threading.Thread(target=renew, name="batchmagic-lease", daemon=True).start()

    def __enter__(self) -> Lease:
        self.take()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
