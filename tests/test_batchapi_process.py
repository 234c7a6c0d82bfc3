"""Batch API jobs across processes (a crash right after ``create``, a kernel restart), the
``batchmagic jobs`` command, and Volcengine Ark's signed job API over the TOS stand-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import batchmagic as bm
from batchmagic.batchapi._jobs import EXIT_AFTER_CREATE_ENV
from batchmagic.cli import main
from batchmagic.simulator import SimulatorProcess

pytestmark = pytest.mark.timeout(120)

FAST = {"poll_interval": 0.05, "max_poll_interval": 0.2}
ROOT = Path(__file__).resolve().parents[1]
AK = "AKLTsentinelaccesskey"
SK = "SK-SENTINEL-DO-NOT-LEAK-9f8e7d6c5b4a"


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess(batch_seconds=0.3, ark_access_key=AK, ark_secret_key=SK) as s:
        yield s


def batches(sim) -> dict:
    return sim._admin("GET", "/_sim/batches")


def child(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (a new kernel, as far as batchmagic can tell)."""
    full = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=90, env=full, cwd=ROOT)


SCRIPT = """
    import pandas as pd, batchmagic as bm
    df = pd.DataFrame({{"text": [f"row {{i}}" for i in range(9)]}})
    out = bm.{fn}(df, "Say: {{text}}", model="sim-chat", provider="simulator",
                  base_url="{url}", mode="batch-api", progress=False,
                  batch_options={{"poll_interval": 0.05, "max_poll_interval": 0.2,
                                 "max_requests": 5}})
    {after}
"""


def test_a_crash_right_after_create_adopts_the_batch_instead_of_paying_twice(sim):
    created = batches(sim)["created"]
    proc = child(SCRIPT.format(fn="batch", url=sim.base_url, after=""),
                 **{EXIT_AFTER_CREATE_ENV: "17"})
    assert proc.returncode == 17, proc.stderr
    assert batches(sim)["created"] == created + 1  # the first of two shards exists, unsaved
    [job] = bm.jobs()
    assert job.status().state == "submitting"
    # the same call again (the cell re-run after a restart) adopts it and creates the other
    df = pd.DataFrame({"text": [f"row {i}" for i in range(9)]})
    out = bm.batch(df, "Say: {text}", model="sim-chat", provider="simulator",
                   base_url=sim.base_url, mode="batch-api", progress=False,
                   batch_options={**FAST, "max_requests": 5})
    assert batches(sim)["created"] == created + 2  # exactly one batch per shard
    assert out.attrs["batchmagic"]["jobs"] == [job.id]
    assert out["output"].tolist() == [f"echo: Say: row {i}" for i in range(9)]
    nonces = [b["nonce"] for b in batches(sim)["batches"][-2:]]
    assert len(set(nonces)) == 2


def test_a_crash_after_create_then_jobs_wait(sim):
    created = batches(sim)["created"]
    proc = child(SCRIPT.format(fn="batch", url=sim.base_url, after=""),
                 **{EXIT_AFTER_CREATE_ENV: "17"})
    assert proc.returncode == 17, proc.stderr
    out = bm.jobs()[-1].wait(60, progress=False)
    assert batches(sim)["created"] == created + 2
    assert out["error"].isna().all() and len(out) == 9


def test_a_job_submitted_in_one_process_is_collected_in_the_next(sim):
    proc = child(SCRIPT.format(fn="submit", url=sim.base_url,
                               after="out._wait_submitted(); print(out.id)"))
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().splitlines()[-1]
    [job] = bm.jobs()
    assert job.id == job_id
    status = job.status()
    assert status.total == 9 and status.state in ("running", "finished")
    out = job.result(60, progress=False)
    assert out["output"].tolist() == [f"echo: Say: row {i}" for i in range(9)]
    assert list(out["text"]) == [f"row {i}" for i in range(9)]


# --------------------------------------------------------------------------- the command line


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def request(cid: str, text: str) -> dict:
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": text}], "max_tokens": 20}}


def test_jobs_create_wait_list_status_results(sim, tmp_path, capsys):
    src = write_lines(tmp_path / "prompts.jsonl",
                      [request(f"q-{i}", f"question {i}") for i in range(6)])
    out = tmp_path / "out.jsonl"
    opts = ["--option", "poll_interval=0.05", "--option", "max_poll_interval=0.2"]
    code = main(["jobs", "create", "--input", str(src), "--provider", "simulator", "--base-url",
                 sim.base_url, "--model", "sim-chat", "--wait", "-o", str(out), "-q", *opts])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["custom_id"] for r in rows] == [f"q-{i}" for i in range(6)]
    assert [r["output"] for r in rows] == [f"echo: question {i}" for i in range(6)]
    capsys.readouterr()
    assert main(["jobs", "list"]) == 0
    listing = capsys.readouterr().out
    job_id = listing.split()[1]
    assert "finished" in listing
    assert main(["jobs", "status", job_id[:6]]) == 0
    assert "completed" in capsys.readouterr().out
    again = tmp_path / "again.csv"
    assert main(["jobs", "results", job_id, "-o", str(again), "--no-wait"]) == 0
    table = pd.read_csv(again)
    assert table["custom_id"].tolist() == [f"q-{i}" for i in range(6)]
    assert table["output"].tolist() == [f"echo: question {i}" for i in range(6)]


def test_jobs_create_without_wait_then_cancel(sim, tmp_path, capsys):
    sim.configure(batch_seconds=5.0)
    try:
        src = write_lines(tmp_path / "p.jsonl", [request(f"c{i}", f"c {i}") for i in range(5)])
        assert main(["jobs", "create", "--input", str(src), "--provider", "simulator",
                     "--base-url", sim.base_url, "--model", "sim-chat", "-q",
                     "--option", "poll_interval=0.05"]) == 0
        said = capsys.readouterr().out
        assert "submitted" in said
        job_id = said.split()[1]
        assert main(["jobs", "cancel", job_id]) == 0
        assert "cancel" in capsys.readouterr().out
        out = tmp_path / "r.jsonl"
        assert main(["jobs", "results", job_id, "-o", str(out), "-q"]) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert all("NotSentError" in (r["error"] or "") for r in rows if r["output"] is None)
    finally:
        sim.configure(batch_seconds=0.3)


def test_jobs_create_refuses_a_bad_file_before_sending(sim, tmp_path, capsys):
    src = write_lines(tmp_path / "bad.jsonl", [request("same", "a"), request("same", "b")])
    created = batches(sim)["created"]
    assert main(["jobs", "create", "--input", str(src), "--provider", "simulator",
                 "--base-url", sim.base_url, "--model", "sim-chat", "--wait"]) == 2
    assert "repeats an earlier line" in capsys.readouterr().err
    assert batches(sim)["created"] == created


def test_run_with_mode_batch_api(sim, tmp_path):
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": ["a", "b", "c"]}).to_csv(src, index=False)
    out = tmp_path / "out.csv"
    assert main(["run", str(src), "-p", "Say: {text}", "-o", str(out), "-m", "sim-chat",
                 "--provider", "simulator", "--base-url", sim.base_url, "--mode", "batch-api",
                 "--option", "poll_interval=0.05", "-q"]) == 0
    assert pd.read_csv(out)["output"].tolist() == ["echo: Say: a", "echo: Say: b", "echo: Say: c"]


# --------------------------------------------------------------------------- Volcengine Ark


def ark(sim, df, **options):
    return bm.batch(df, "Say: {text}", model="doubao-seed-1-6-250615", provider="ark",
                    mode="batch-api", progress=False,
                    batch_options={"bucket": "bm-bucket", "openapi_url": sim.root_url,
                                   "tos_endpoint": sim.root_url, **FAST, **options})


def test_an_ark_job_through_the_signed_api_and_tos(sim, monkeypatch, capfd, tmp_path):
    monkeypatch.setenv("VOLC_ACCESSKEY", AK)
    monkeypatch.setenv("VOLC_SECRETKEY", SK)
    monkeypatch.delenv("ARK_API_KEY", raising=False)  # the job API does not use it
    sim.configure(batch_fault_rate=0.25)
    try:
        df = pd.DataFrame({"text": [f"row {i}" for i in range(12)]})
        out = ark(sim, df)
    finally:
        sim.configure(batch_fault_rate=0.0)
    ok = out["error"].isna()
    assert 0 < ok.sum() < 12
    assert out.loc[ok, "output"].tolist() == [f"echo: Say: row {i}" for i in df.index[ok]]
    assert all(isinstance(e, bm.ServerError) for e in out.loc[~ok, "error"])
    last = batches(sim)["batches"][-1]
    assert last["shape"] == "ark" and last["status"] == "completed"
    assert last["nonce"].startswith("batchmagic-")
    [job] = bm.jobs()
    assert job.status().status == "Completed"
    # a wrong secret: the simulator checks the signature and refuses; nothing leaks
    monkeypatch.setenv("VOLC_SECRETKEY", SK + "-wrong")
    bad = ark(sim, pd.DataFrame({"text": ["x", "y"]}))
    assert bad.attrs["batchmagic"]["state"] == "aborted"
    assert all(isinstance(e, bm.NotSentError) for e in bad["error"])
    assert "SignatureDoesNotMatch" in str(bad["error"].iloc[0])
    blob = repr(out) + repr(bad) + str(bad["error"].tolist()) + repr(bm.jobs())
    captured = capfd.readouterr()
    for secret in (SK, SK + "-wrong"):
        assert secret not in blob + captured.out + captured.err
        for path in Path(os.environ["BATCHMAGIC_JOURNAL_DIR"]).iterdir():
            assert secret.encode() not in path.read_bytes()


def test_an_ark_job_stopped_and_resumed_after_a_crash(sim, monkeypatch):
    monkeypatch.setenv("VOLC_ACCESSKEY", AK)
    monkeypatch.setenv("VOLC_SECRETKEY", SK)
    created = batches(sim)["created"]
    code = f"""
        import pandas as pd, batchmagic as bm
        bm.batch(pd.DataFrame({{"text": ["a", "b", "c"]}}), "Say: {{text}}",
                 model="doubao-seed-1-6-250615", provider="ark", mode="batch-api", progress=False,
                 batch_options={{"bucket": "bm-bucket", "openapi_url": "{sim.root_url}",
                                "tos_endpoint": "{sim.root_url}", "poll_interval": 0.05}})
    """
    proc = child(code, **{EXIT_AFTER_CREATE_ENV: "17"})
    assert proc.returncode == 17, proc.stderr
    sim.configure(batch_seconds=3.0)
    try:
        job = bm.jobs()[-1]
        job.cancel()  # adopts nothing yet: the unsaved job is found by its nonce on wait()
        out = job.wait(60, progress=False)
    finally:
        sim.configure(batch_seconds=0.3)
    assert batches(sim)["created"] == created + 1
    last = batches(sim)["batches"][-1]
    assert last["shape"] == "ark" and last["cancelled"] and last["status"] == "cancelled"
    assert job.status().status == "Terminated"
    assert len(out) == 3 and all(e is None or isinstance(e, bm.NotSentError)
                                 for e in out["error"])
