"""``bm.BatchTask``: a run going on in the background, as ``bm.submit`` returns it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from . import _loop
from ._progress import Snapshot

if TYPE_CHECKING:
    from ._run import Run


class BatchTask:
    """A run in the background (in the style of Qianfan's ``batch_do``).

    ``finished_count()`` / ``task_count()`` count rows; ``wait()`` returns the result frame;
    ``results()`` lists each row's output, or its exception, in input order; iterating yields one
    ``concurrent.futures.Future`` per row in input order; ``pause()``, ``resume()``, ``cancel()``
    control the run; ``frame`` is the result frame as it stands now.
    """

    def __init__(self, run: Run):
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

    @property
    def state(self) -> str:
        """planned, running, done, cancelled or aborted."""
        return self._run.state

    def __repr__(self) -> str:
        return (f"<BatchTask {self._run.id} {self.finished_count()}/{self.task_count()} rows, "
                f"{self._run.state}>")
