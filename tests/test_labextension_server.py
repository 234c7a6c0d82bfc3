"""The JupyterLab extension's server side, without a browser: the journal read read-only, the
live record a run keeps while it runs, and the REST endpoints in a real Jupyter server (auth,
paths inside the root only, no key in any answer, the job actions against the simulator)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.parse

import pandas as pd
import pytest
from conftest import wait_until
from lab_servers import jupyter

import batchmagic as bm
from batchmagic.simulator import SimulatorThread

SENTINEL = "sk-sentinel-7c1e9a2b5d3f"


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

            live = wait_until(running, "the run's live record")
            assert live["rows"] == 40 and pd.isna(live["finished"])
            assert live["kind"] == "chat" and live["model"] == "qwen-plus"
            # the counts move while it runs (written every couple of seconds)
            wait_until(lambda: (r := running()) is not None and 0 < r["ok"] < 40,
                        "counts of a running run")
        finally:
            task.cancel()
            task.wait(60)
    final = bm.runs(cache=folder)
    final = final[final["run_id"] == task.run_id].iloc[0]
    assert final["state"] == "cancelled" and not pd.isna(final["finished"])
    assert SENTINEL not in (folder / "journal.sqlite3").read_bytes().decode("latin-1")


# -- the REST API in a real Jupyter server -------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A bare Jupyter server with the extension, a token, and a sentinel key in its
    environment (as a provider's key would be)."""
    tmp = tmp_path_factory.mktemp("jupyter")
    with jupyter("server", tmp, env={"BATCHMAGIC_SIM_API_KEY": SENTINEL}) as s:
        yield s


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(latency=0.01) as s:
        yield s


def _runs(server, path: str) -> dict:
    return server.json(f"batchmagic/api/runs?path={urllib.parse.quote(path)}")


def test_the_api_needs_jupyters_authentication(server):
    (server.root / "p").mkdir(exist_ok=True)
    for method, path in (("GET", "runs?path=p"), ("GET", "kernel?kernel_id=x&path=p"),
                         ("POST", "jobs/abc123/cancel?path=p"),
                         ("POST", "jobs/abc123/refresh?path=p"),
                         ("GET", "jobs/abc123/result.csv?path=p")):
        status, body = server.request(f"batchmagic/api/{path}", method=method, token=False)
        assert status == 403, (method, path, status, body)
    assert server.request("batchmagic/api/runs?path=p")[0] == 200


def test_paths_outside_the_root_are_refused(server, sim, tmp_path):
    outside = tmp_path / "outside"
    bm.batch(["a", "b"], provider="simulator", base_url=sim.base_url, api_key=SENTINEL,
             model="qwen-plus", cache=outside / ".batchmagic", progress=False)
    root = server.root
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "linked" / ".batchmagic").parent.mkdir()
    (root / "linked" / ".batchmagic").symlink_to(outside / ".batchmagic")
    (root / "filelink" / ".batchmagic").mkdir(parents=True)
    (root / "filelink" / ".batchmagic" / "journal.sqlite3").symlink_to(
        outside / ".batchmagic" / "journal.sqlite3")
    for path in ("..", "../outside", "/etc", str(outside), "escape", "escape/.batchmagic",
                 "linked", "filelink", "filelink/.batchmagic", "a/../..", "linked/..\\.."):
        for api in (f"runs?path={urllib.parse.quote(path)}",
                    f"jobs/abc123/result.csv?path={urllib.parse.quote(path)}"):
            status, body = server.request(f"batchmagic/api/{api}")
            assert status == 403, (path, status, body)
            assert str(outside).encode() not in body
    status, body = server.request("batchmagic/api/jobs/abc123/cancel?path=escape", method="POST")
    assert status == 403
    assert server.request("batchmagic/api/runs?path=nowhere")[0] == 404


def test_the_sidebar_lists_runs_read_only(server, sim):
    folder = server.root / "proj"
    rows = pd.DataFrame({"text": [f"row {i}" for i in range(12)]})
    bm.batch(rows, "Say: {text}", provider="simulator", base_url=sim.base_url,
             api_key=SENTINEL, model="qwen-plus", cache=folder / ".batchmagic", progress=False)
    journal = folder / ".batchmagic"
    before = {p.name: p.read_bytes() for p in journal.iterdir() if not p.name.endswith("-shm")}
    status, body = server.request("batchmagic/api/runs?path=proj")
    assert status == 200 and SENTINEL.encode() not in body
    view = json.loads(body)
    assert view["exists"] and view["folder"] == "proj" and view["journal"] == "proj/.batchmagic"
    [run] = view["runs"]
    assert (run["state"], run["rows"], run["ok"], run["failed"]) == ("done", 12, 12, 0)
    assert run["model"] == "qwen-plus" and run["kind"] == "chat" and not run["live"]
    assert run["template"] == "Say: {text}" and view["jobs"] == []
    after = {p.name: p.read_bytes() for p in journal.iterdir() if not p.name.endswith("-shm")}
    assert after == before  # read-only: not a byte of the journal changed
    # a folder with no journal: none is created by looking
    (server.root / "empty").mkdir()
    assert _runs(server, "empty") == {"exists": False, "runs": [], "jobs": [], "folder": "empty",
                                      "journal": "empty/.batchmagic"}
    assert not (server.root / "empty" / ".batchmagic").exists()
    # a journal folder picked directly
    assert _runs(server, "proj/.batchmagic")["runs"][0]["run_id"] == run["run_id"]


def test_kernel_runs_of_an_unknown_kernel_are_refused(server):
    status, _ = server.request("batchmagic/api/kernel?kernel_id=nope&path=")
    assert status == 404


JOB_SCRIPT = """
import sys, pandas as pd, batchmagic as bm
rows = pd.DataFrame({"text": [f"row {i}" for i in range(6)]})
job = bm.submit(rows, "Say: {text}", model="qwen-plus", provider="simulator",
                base_url=sys.argv[1], cache=sys.argv[2], mode="batch-api", progress=False,
                batch_options={"poll_interval": 0.05, "max_poll_interval": 0.2})
job._wait_submitted()
print(job.id)
"""


def test_a_batch_api_job_is_refreshed_cancelled_and_downloaded_with_no_kernel(server):
    """A job submitted by a process that has gone (a kernel restarted, or none at all): the
    server asks the provider about it, cancels it, harvests it and hands out its frame."""
    journal = server.root / "jobs" / ".batchmagic"
    with SimulatorThread(batch_seconds=300.0) as sim:  # still running when it is cancelled
        made = subprocess.run([sys.executable, "-c", JOB_SCRIPT, sim.base_url, str(journal)],
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, BATCHMAGIC_SIM_API_KEY=SENTINEL))
        assert made.returncode == 0, made.stderr
        job_id = made.stdout.split()[-1]
        [job] = _runs(server, "jobs")["jobs"]
        assert job["job_id"] == job_id and job["live"] and job["requests"] == 6
        answers = []
        status, body = server.request(f"batchmagic/api/jobs/{job_id}/refresh?path=jobs",
                                      method="POST")
        answers.append(body)
        assert status == 200 and json.loads(body)["status"] == "in_progress"
        status, body = server.request(f"batchmagic/api/jobs/{job_id}/cancel?path=jobs",
                                      method="POST")
        answers.append(body)
        assert status == 200 and json.loads(body)["status"] in ("cancelling", "cancelled")
        [remote] = sim._admin("GET", "/_sim/batches")["batches"]
        assert remote["cancelled"]

        def harvested() -> bool:
            status, body = server.request(f"batchmagic/api/jobs/{job_id}/refresh?path=jobs",
                                          method="POST")
            answers.append(body)
            return status == 200 and json.loads(body)["state"] == "finished"

        wait_until(harvested, "the cancelled job harvested")
        [job] = _runs(server, "jobs")["jobs"]
        assert not job["live"] and job["status"] == "cancelled" and job["pending"] == 0
        for fmt in ("csv", "parquet"):
            status, body = server.request(f"batchmagic/api/jobs/{job_id}/result.{fmt}?path=jobs")
            answers.append(body)
            assert status == 200, body
            frame = (pd.read_csv(io.BytesIO(body)) if fmt == "csv"
                     else pd.read_parquet(io.BytesIO(body)))
            assert frame["text"].tolist() == [f"row {i}" for i in range(6)]
            assert frame["error"].str.contains("cancelled").all()
    assert all(SENTINEL.encode() not in body for body in answers)
    status, _ = server.request("batchmagic/api/jobs/ffffffffffff/cancel?path=jobs",
                               method="POST")
    assert status == 404


def test_the_editor_knows_the_magics_flags():
    """The editor styling (labextension/src/highlight.ts) tells a flag that takes no value from
    one that does, and knows the kinds: both lists match the magic's own parser."""
    import re
    from pathlib import Path

    from batchmagic._magic import KINDS, MAGIC_OPTIONS

    source = (Path(__file__).resolve().parents[1] / "labextension" / "src" /
              "highlight.ts").read_text()

    def ts_list(name: str) -> list[str]:
        body = re.search(rf"export const {name} = \[(.*?)\];", source, re.S).group(1)
        return re.findall(r"'([^']+)'", body)

    booleans = sorted(f for o in MAGIC_OPTIONS.values() if o.flags and o.text is bool
                      for f in o.flags)
    assert sorted(ts_list("BOOLEAN_FLAGS")) == booleans
    assert ts_list("KINDS") == list(KINDS)
