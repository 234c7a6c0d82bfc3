"""The JupyterLab extension's server side, without a browser: the journal read read-only, the
live record a run keeps while it runs, and the REST endpoints in a real Jupyter server (auth,
paths inside the root only, no key in any answer, the job actions against the simulator)."""

from __future__ import annotations

import time

import pandas as pd

import batchmagic as bm
from batchmagic.simulator import SimulatorThread

SENTINEL = "sk-sentinel-7c1e9a2b5d3f"


def _wait_until(condition, what: str, timeout: float = 60.0):
    """The condition's first truthy value, polled; fails after ``timeout`` s (a hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_running_run_is_in_the_journal_while_it_runs(tmp_path):
    """Readers in other processes (the sidebar, the status bar) see a run while it runs, with
    its counts moving, and its final state once it ends."""
    folder = tmp_path / "journal"
    rows = pd.DataFrame({"text": [f"row {i}" for i in range(40)]})
    with SimulatorThread(latency=0.5) as sim:  # 10 s unless cancelled
        task = bm.submit(rows, "Say something about {text}", provider="simulator",
                         base_url=sim.base_url, api_key=SENTINEL, model="qwen-plus",
                         concurrency=2, cache=folder, progress=False)
        try:
            def running() -> dict | None:
                runs = bm.runs(cache=folder)
                mine = runs[runs["run_id"] == task.run_id].to_dict("records")
                return mine[0] if mine and mine[0]["state"] == "running" else None

            live = _wait_until(running, "the run's live record")
            assert live["rows"] == 40 and pd.isna(live["finished"])
            assert live["kind"] == "chat" and live["model"] == "qwen-plus"
            # the counts move while it runs (written every couple of seconds)
            _wait_until(lambda: (r := running()) is not None and 0 < r["ok"] < 40,
                        "counts of a running run")
        finally:
            task.cancel()
            task.wait(60)
    final = bm.runs(cache=folder)
    final = final[final["run_id"] == task.run_id].iloc[0]
    assert final["state"] == "cancelled" and not pd.isna(final["finished"])
    assert SENTINEL not in (folder / "journal.sqlite3").read_bytes().decode("latin-1")
