"""Batch API jobs end to end against the simulator (its files + batches on a time scale: a "24h"
job ends in about a second), on loopback only."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from conftest import Server, echo_chat

import batchmagic as bm
from batchmagic.simulator import SimulatorProcess

pytestmark = pytest.mark.timeout(90)

SENTINEL = "sk-SENTINEL-DO-NOT-LEAK-0123456789"
FAST = {"poll_interval": 0.05, "max_poll_interval": 0.2}
DEFAULTS = dict(batch_seconds=0.3, batch_day_seconds=60.0, batch_error_rate=0.0,
                batch_fault_rate=0.0, batch_reverse=True, missing_models=[], api_key=None)


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess(**DEFAULTS) as s:
        yield s


@pytest.fixture
def fresh(sim):
    sim.configure(**DEFAULTS)
    sim.reset()
    yield sim
    sim.configure(**DEFAULTS)


def frame(n: int, tag: str = "row") -> pd.DataFrame:
    return pd.DataFrame({"text": [f"{tag} {i}" for i in range(n)]},
                        index=pd.Index([f"r{i}" for i in range(n)], name="rid"))


def run(sim, inputs, *, options=None, **kw):
    kw.setdefault("model", "sim-chat")
    kw.setdefault("progress", False)
    return bm.batch(inputs, "Say: {text}", provider="simulator", base_url=sim.base_url,
                    mode="batch-api", batch_options={**FAST, **(options or {})}, **kw)


def submit(sim, inputs, *, options=None, **kw):
    kw.setdefault("model", "sim-chat")
    kw.setdefault("progress", False)
    return bm.submit(inputs, "Say: {text}", provider="simulator", base_url=sim.base_url,
                     mode="batch-api", batch_options={**FAST, **(options or {})}, **kw)


def batches(sim) -> dict:
    return sim._admin("GET", "/_sim/batches")


def chat_calls(sim) -> int:
    return sim.stats()["by_path"].get("/v1/chat/completions", 0)


def kinds(df: pd.DataFrame) -> list[str]:
    return [type(e).__name__ if e is not None else "ok" for e in df["error"]]


# --------------------------------------------------------------------------- the happy path


def test_rows_come_back_on_their_rows_in_the_online_shape(fresh):
    df = frame(12)
    before = batches(fresh)["created"]
    out = run(fresh, df)
    assert batches(fresh)["created"] == before + 1
    # joined by custom_id (the simulator writes its output file in reverse)
    assert out["output"].tolist() == [f"echo: Say: row {i}" for i in range(12)]
    assert out["error"].isna().all() and (out["attempts"] == 1).all()
    assert out.attrs["batchmagic"]["mode"] == "batch-api"
    assert out.attrs["batchmagic"]["state"] == "done" and len(out.attrs["batchmagic"]["jobs"]) == 1
    # the same shape as an online run: index, columns, dtypes
    online = bm.batch(frame(12, "other"), "Say: {text}", model="sim-chat", provider="simulator",
                      base_url=fresh.base_url, progress=False)
    assert list(out.columns) == list(online.columns)
    assert out.dtypes.tolist() == online.dtypes.tolist()
    assert out.index.equals(df.index) and out.index.name == "rid"


def test_identical_requests_are_one_line(fresh):
    out = run(fresh, pd.DataFrame({"text": ["same"] * 5 + ["other"]}), dedupe=True)
    assert out["output"].tolist() == ["echo: Say: same"] * 5 + ["echo: Say: other"]
    assert batches(fresh)["batches"][-1]["requests"] == 2


def test_answers_enter_the_journal_and_a_later_online_run_sends_nothing(fresh):
    df = frame(10)
    run(fresh, df)
    calls = chat_calls(fresh)
    online = bm.batch(df, "Say: {text}", model="sim-chat", provider="simulator",
                      base_url=fresh.base_url, progress=False)
    assert chat_calls(fresh) == calls  # zero requests
    assert online.attrs["batchmagic"]["cached"] == 10
    assert online["output"].tolist() == [f"echo: Say: row {i}" for i in range(10)]
    # and a batch run of rows already answered submits nothing
    created = batches(fresh)["created"]
    again = run(fresh, df)
    assert batches(fresh)["created"] == created and again.attrs["batchmagic"]["jobs"] == []
    assert again["output"].tolist() == online["output"].tolist()


def test_the_batch_path_submits_only_rows_not_yet_answered(fresh):
    df = frame(10)
    bm.batch(df.iloc[:6], "Say: {text}", model="sim-chat", provider="simulator",
             base_url=fresh.base_url, progress=False)
    out = run(fresh, df)
    assert batches(fresh)["batches"][-1]["requests"] == 4
    assert out.attrs["batchmagic"]["cached"] == 6
    assert out["output"].tolist() == [f"echo: Say: row {i}" for i in range(10)]


def test_sharding_makes_one_batch_per_file(fresh):
    before = batches(fresh)["created"]
    out = run(fresh, frame(10), options={"max_requests": 4})
    assert batches(fresh)["created"] == before + 3
    assert [b["requests"] for b in batches(fresh)["batches"][-3:]] == [4, 4, 2]
    assert out["error"].isna().all()
    out = run(fresh, frame(6, "bytes"), options={"max_bytes": 400})
    assert all(b["requests"] <= 2 for b in batches(fresh)["batches"][-3:])
    assert out["error"].isna().all()


def test_a_request_larger_than_a_file_is_that_rows_error(fresh):
    df = pd.DataFrame({"text": ["short", "x" * 2000]})
    out = run(fresh, df, options={"max_bytes": 1000})
    assert out["output"].iloc[0] == "echo: Say: short"
    assert isinstance(out["error"].iloc[1], bm.InputError)
    assert "larger than" in str(out["error"].iloc[1])


# --------------------------------------------------------------------------- failures


def test_partial_failures_from_both_files(fresh):
    fresh.configure(batch_error_rate=0.3, batch_fault_rate=0.2)
    out = run(fresh, frame(40))
    got = kinds(out)
    assert {"ok", "BadRequestError", "ServerError"} <= set(got)
    for text, value, err in zip(out["text"], out["output"], out["error"]):
        if err is None:
            assert value == f"echo: Say: {text}"
        else:
            assert value is None and err.row is not None and not err.possibly_billed
    bad = [e for e in out["error"] if isinstance(e, bm.BadRequestError)]
    assert all(e.status == 400 for e in bad)  # "error": null, status 400 in the output file
    facts = out.attrs["batchmagic"]
    assert facts["ok"] == got.count("ok") and facts["failed"] == 40 - got.count("ok")


def test_a_completed_job_with_every_request_failed_and_no_output_file(fresh):
    fresh.configure(batch_fault_rate=1.0)
    job = submit(fresh, frame(6))
    out = job.wait(30)
    assert set(kinds(out)) == {"ServerError"}
    status = job.status()
    assert status.status == "completed" and status.failed == 6
    assert batches(fresh)["batches"][-1]["status"] == "completed"


def test_per_line_errors_from_the_model_come_back_per_row(fresh):
    fresh.configure(missing_models=["gone"])
    out = run(fresh, frame(3), model="gone")
    assert set(kinds(out)) == {"FatalProviderError"}  # each line's own 404, the job completed
    assert all(e.status == 404 for e in out["error"])


def test_a_batch_the_provider_refuses_fails_its_rows(fresh, monkeypatch):
    from batchmagic.batchapi import _jobs

    monkeypatch.setattr(_jobs, "validate_lines", lambda *a, **k: [])  # let a bad file through
    bodies = [{"model": "sim-chat", "messages": [{"role": "user", "content": "a"}]},
              {"model": "sim-other", "messages": [{"role": "user", "content": "b"}]}]
    out = bm.batch(bodies, provider="simulator", base_url=fresh.base_url, mode="batch-api",
                   batch_options=FAST, progress=False)
    assert set(kinds(out)) == {"NotSentError"}
    assert "same model" in str(out["error"].iloc[0])
    assert batches(fresh)["batches"][-1]["status"] == "failed"


def test_local_validation_refuses_a_mixed_model_file_before_anything_is_sent(fresh):
    bodies = [{"model": "a", "messages": [{"role": "user", "content": "a"}]},
              {"model": "b", "messages": [{"role": "user", "content": "b"}]}]
    created = batches(fresh)["created"]
    with pytest.raises(bm.ConfigError, match="one model"):
        bm.batch(bodies, provider="simulator", base_url=fresh.base_url, mode="batch-api",
                 batch_options=FAST, progress=False)
    assert batches(fresh)["created"] == created and bm.jobs() == []


# --------------------------------------------------------------------------- expiry, cancel


def test_an_expired_job_keeps_its_rows_and_resubmits_the_rest(fresh):
    # 24h lasts 1 s; the batch needs 2 s: it expires about 40% done
    fresh.configure(batch_seconds=2.0, batch_day_seconds=1.0)
    df = frame(20)
    job = submit(fresh, df)
    out = job.wait(30)
    got = kinds(out)
    assert 0 < got.count("ok") < 20 and set(got) == {"ok", "NotSentError"}
    assert "expired" in str(next(e for e in out["error"] if e is not None))
    assert job.status().status == "expired"
    answered = got.count("ok")
    fresh.configure(batch_seconds=0.3, batch_day_seconds=60.0)
    again = job.resubmit()
    assert again.id != job.id
    assert batches(fresh)["batches"][-1]["requests"] == 20 - answered
    full = again.wait(30)
    assert full["error"].isna().all()
    assert full["output"].tolist() == [f"echo: Say: row {i}" for i in range(20)]
    assert list(full.index) == list(df.index) and list(full["text"]) == list(df["text"])


def test_a_cancelled_job_is_harvested_and_finished_online(fresh):
    fresh.configure(batch_seconds=3.0)
    job = submit(fresh, frame(30))
    deadline = time.monotonic() + 10
    while job.status().completed < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    job.cancel()
    out = job.wait(30)
    got = kinds(out)
    assert got.count("ok") >= 3 and "NotSentError" in got
    assert "cancelled" in str(next(e for e in out["error"] if e is not None))
    assert job.status().status == "cancelled"
    calls = chat_calls(fresh)
    full = job.finish_online()
    assert chat_calls(fresh) - calls == got.count("NotSentError")  # only the rest, online
    assert full["error"].isna().all()
    assert full["output"].tolist() == [f"echo: Say: row {i}" for i in range(30)]
    assert full.attrs["batchmagic"]["online"] == got.count("NotSentError")
    # the online run is the job's model's run (its label, its online price), not a nameless one
    assert bm.runs(limit=1)["model"].tolist() == ["sim-chat"]


def test_resubmit_and_finish_online_wait_for_a_running_job(fresh):
    fresh.configure(batch_seconds=2.0)
    job = submit(fresh, frame(4))
    with pytest.raises(bm.ConfigError, match="still running"):
        job.resubmit()
    with pytest.raises(bm.ConfigError, match="still running"):
        job.finish_online()
    # a provider's queue cannot be paused: a job offers no pause() it would have to refuse
    assert not hasattr(job, "pause") and not hasattr(job, "resume")
    job.cancel()
    job.wait(30)


# --------------------------------------------------------------------------- background, jobs()


def test_submit_returns_at_once_and_shows_the_provider_status(fresh):
    fresh.configure(batch_seconds=1.5)
    t0 = time.monotonic()
    job = submit(fresh, frame(10))
    assert time.monotonic() - t0 < 1.0 and not job.done()
    assert isinstance(job, bm.BatchJob) and job.id in repr(bm.jobs())
    seen = set()
    while not job.done():
        seen.add(job.progress.message)
        time.sleep(0.05)
    assert any("in_progress" in m for m in seen), seen
    status = job.status()
    assert status.state == "finished" and status.completed == 10 and status.total == 10
    assert "completed" in str(status)
    assert job.wait()["error"].isna().all() and job.finished_count() == 10


def test_a_second_run_of_the_same_rows_joins_the_unfinished_job(fresh):
    fresh.configure(batch_seconds=1.0)
    df = frame(8)
    job = submit(fresh, df)
    job._wait_submitted()
    created = batches(fresh)["created"]
    out = run(fresh, df)  # e.g. the cell run again after a kernel restart
    assert batches(fresh)["created"] == created
    assert out.attrs["batchmagic"]["jobs"] == [job.id]
    assert out["error"].isna().all()
    job.wait(30)


def test_jobs_rebuild_the_frame_from_the_journal(fresh):
    df = frame(5)
    job = submit(fresh, df)
    job.wait(30)
    [again] = bm.jobs()
    assert again.id == job.id and again.done() and again.task_count() == 5
    out = again.result()
    assert out["output"].tolist() == [f"echo: Say: row {i}" for i in range(5)]
    assert list(out.index) == list(df.index) and out.index.name == "rid"
    assert out.attrs["batchmagic"]["jobs"] == [job.id]
    assert "finished" in repr(again) and "sim-chat" in repr(again)


def test_a_text_bar_shows_the_job_status(fresh, capsys):
    fresh.configure(batch_seconds=1.0)
    run(fresh, frame(6), progress=True)
    err = capsys.readouterr().err
    assert "job" in err and "ok=6" in err


# --------------------------------------------------------------------------- secrets


def test_no_key_in_journal_frames_reprs_or_output(tmp_path, capfd, monkeypatch):
    folder = tmp_path / "journal"
    monkeypatch.setenv("BATCHMAGIC_JOURNAL_DIR", str(folder))
    with SimulatorProcess(**{**DEFAULTS, "api_key": SENTINEL}) as s:
        kw = dict(model="sim-chat", provider="simulator", base_url=s.base_url,
                  mode="batch-api", batch_options=FAST)
        job = bm.submit(frame(5), "Say: {text}", api_key=SENTINEL, **kw)
        out = job.wait(30)
        assert out["error"].isna().all()
        wrong = bm.batch(frame(3, "w"), "Say: {text}", api_key=SENTINEL + "-wrong", **kw)
        assert out.attrs["batchmagic"]["state"] == "done"
        texts = [repr(out), repr(wrong), str(wrong["error"].tolist()), repr(job),
                 str(job.status()), repr(bm.jobs()), str(wrong.attrs), str(out.attrs),
                 repr(job._engines()), repr(job._access)]
        assert wrong.attrs["batchmagic"]["state"] == "aborted"
        assert all(isinstance(e, bm.NotSentError) for e in wrong["error"])
    blob = "\n".join(texts)
    assert SENTINEL not in blob
    captured = capfd.readouterr()
    assert SENTINEL not in captured.out + captured.err
    for path in Path(folder).iterdir():
        assert SENTINEL.encode() not in path.read_bytes(), path


# --------------------------------------------------------------------------- Batch Chat


def test_batch_chat_goes_to_the_batch_chat_endpoint_with_long_deadlines():
    server = Server(echo_chat)
    kw = dict(model="qwen-plus", provider="dashscope", api_key="k", progress=False,
              transport=server.transport)
    out = bm.batch(["a", "b", "c"], mode="batch-chat", **kw)
    assert out["output"].tolist() == ["echo:a", "echo:b", "echo:c"]
    urls = {str(r.url) for r in server.requests}
    assert urls == {"https://batch.dashscope.aliyuncs.com/compatible-mode/v1/chat/completions"}
    task = bm.submit(["d"], mode="batch-chat", **kw)
    task.wait()
    assert task._run.options.timeout >= 3600 and task._run.options.concurrency >= 1000
    # the same rows online cost nothing: the answers are the online endpoint's
    online = bm.batch(["a", "b", "c"], **kw)
    assert server.count == 4 and online.attrs["batchmagic"]["cached"] == 3


def test_batch_chat_retries_its_queue_like_any_online_call():
    attempts = {"n": 0}

    def flaky(request: httpx.Request, body):
        attempts["n"] += 1
        if attempts["n"] == 1:
            return httpx.Response(429, json={"error": {"code": "Throttling", "message": "queue"}},
                                  headers={"Retry-After": "0"})
        return echo_chat(request, body)

    server = Server(flaky)
    out = bm.batch(["a"], model="ep-bi-1", provider="ark", api_key="k", mode="batch-chat",
                   progress=False, transport=server.transport)
    assert out["output"].iloc[0] == "echo:a"
    assert str(server.requests[0].url) == \
        "https://ark.cn-beijing.volces.com/api/v3/batch/chat/completions"


# --------------------------------------------------------------------------- stopping a wait, budget


def test_interrupting_a_foreground_wait_leaves_the_job_running(fresh):
    import threading

    from batchmagic import _api

    fresh.configure(batch_seconds=2.0)
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=run(fresh, frame(6))))
    worker.start()
    deadline = time.monotonic() + 10
    while not bm.jobs() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    _api.recent_runs()[-1].control("cancel")  # what Ctrl-C does to a foreground batch() call
    worker.join(20)
    out = result["out"]
    assert out.attrs["batchmagic"]["state"] == "cancelled"
    assert all(isinstance(e, bm.NotSentError) and "goes on" in str(e) for e in out["error"])
    later = bm.jobs()[-1].wait(30, progress=False)  # the job itself was never cancelled
    assert later["error"].isna().all()
    assert batches(fresh)["batches"][-1]["status"] == "completed"


def test_a_budget_below_the_jobs_worst_case_sends_nothing(fresh):
    created = batches(fresh)["created"]
    out = run(fresh, frame(4), budget=1e-9, prices={"input": 1.0, "output": 1.0},
              params={"max_tokens": 100})
    assert batches(fresh)["created"] == created and bm.jobs() == []
    assert out.attrs["batchmagic"]["state"] == "aborted"
    assert "budget" in out.attrs["batchmagic"]["stopped_by"]
    assert all(isinstance(e, bm.NotSentError) for e in out["error"])


def test_costs_use_the_batch_price(fresh):
    out = run(fresh, frame(3), prices={"input": 2.0, "output": 4.0, "batch_share": 0.5})
    row = out.iloc[0]
    assert row["cost"] == pytest.approx((row["input_tokens"] * 2 + row["output_tokens"] * 4)
                                        / 1e6 * 0.5)
    assert out.attrs["batchmagic"]["cost"] == pytest.approx(float(out["cost"].sum()))


def test_dashscope_jobs_carry_the_nonce_in_ds_name(fresh, monkeypatch):
    """DashScope documents ``ds_name`` / ``ds_description`` metadata: the nonce rides in the name."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test")
    out = bm.batch(frame(3), "Say: {text}", model="sim-chat", provider="dashscope",
                   base_url=fresh.base_url, mode="batch-api", batch_options=FAST, progress=False)
    assert out["error"].isna().all()
    [job] = bm.jobs()
    [b] = job.status().batches
    data = fresh._admin("GET", f"/v1/batches/{b['batch_id']}")  # the public endpoint, as JSON
    assert data["metadata"]["ds_name"].startswith("batchmagic-")
    assert set(data["metadata"]) == {"ds_name", "ds_description"}
