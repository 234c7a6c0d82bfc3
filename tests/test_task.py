"""Background runs (``bm.submit`` / ``BatchTask``) and the async and nested-loop entry points."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import httpx
import pandas as pd
import pytest
from conftest import BASE_URL, AsyncServer, Server, echo_chat, run, user_text

import batchmagic as bm


def _submit(inputs, prompt=None, *, server, **kw):
    kw.setdefault("base_url", BASE_URL)
    kw.setdefault("model", "m")
    kw.setdefault("progress", False)
    return bm.submit(inputs, prompt, transport=server.transport, **kw)


def _gated_server(release: threading.Event, fast=("a", "b")) -> AsyncServer:
    """Rows in ``fast`` answer at once; the others wait for ``release`` (or 10 s)."""

    async def answer(req, body):
        text = user_text(body)
        if text == "bad":
            return httpx.Response(400, json={"error": {"message": "refused"}})
        if text not in fast:
            for _ in range(1000):
                if release.is_set():
                    break
                await asyncio.sleep(0.01)
        return echo_chat(req, body)

    return AsyncServer(answer)


def _wait_for(cond, timeout=30.0):
    """Wait until ``cond()`` holds; the deadline only ends a test that would hang."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def test_submit_returns_at_once_and_wait_returns_the_frame():
    release = threading.Event()
    s = _gated_server(release)
    task = _submit(["a", "b", "c", "d"], server=s, concurrency=4)
    assert isinstance(task, bm.BatchTask)
    assert task.task_count() == 4 and len(task) == 4
    assert not task.done()  # the server holds two answers until released: it returned without them
    _wait_for(lambda: task.finished_count() == 2)
    assert not task.done()
    assert task.finished_count() == 2
    assert "2/4 rows" in repr(task)
    release.set()
    df = task.wait(5)
    assert task.done()
    assert task.finished_count() == 4
    assert list(df["output"]) == ["echo:a", "echo:b", "echo:c", "echo:d"]
    assert task.result(1) is df
    assert task.frame is df
    assert "4/4 rows, done" in repr(task)
    assert isinstance(task.run_id, str) and task.run_id == df.attrs["batchmagic"]["run_id"]
    assert task.progress.ok == 4


def test_wait_timeout():
    release = threading.Event()
    task = _submit(["slow"], server=_gated_server(release))
    with pytest.raises(concurrent.futures.TimeoutError):
        task.wait(0.05)
    release.set()
    assert task.wait(5)["output"][0] == "echo:slow"


def test_results_are_outputs_and_exceptions_in_input_order():
    s = Server(lambda req, body: (httpx.Response(400, json={"error": {"message": "refused"}})
                                  if user_text(body) == "bad" else echo_chat(req, body)))
    task = _submit(["a", "bad", None, "d"], server=s)
    res = task.results(5)
    assert res[0] == "echo:a"
    assert isinstance(res[1], bm.BadRequestError) and res[1].row == 1
    assert isinstance(res[2], bm.InputError) and res[2].row == 2
    assert res[3] == "echo:d"


def test_iterating_yields_one_future_per_row_in_order():
    release = threading.Event()
    s = _gated_server(release, fast=("a", "bad"))
    frame = pd.DataFrame({"t": ["c", "a", "bad", None, "e"]}, index=["v", "w", "x", "y", "z"])
    task = _submit(frame, "{t}", server=s, concurrency=5)
    futures = list(task)  # taken while the run is going
    assert len(futures) == 5
    assert all(isinstance(f, concurrent.futures.Future) for f in futures)
    assert futures[1].result(5) == "echo:a"
    assert isinstance(futures[2].exception(5), bm.BadRequestError)
    assert futures[2].exception().row == "x"
    assert isinstance(futures[3].exception(5), bm.InputError)
    assert not futures[0].done()
    release.set()
    assert futures[0].result(5) == "echo:c"
    assert futures[4].result(5) == "echo:e"
    df = task.wait(5)
    for fut, out, err in zip(futures, df["output"], df["error"]):
        if err is None:
            assert fut.result() == out
        else:
            assert type(fut.exception()) is type(err) and fut.exception().row == err.row
    assert list(task) == futures  # the same futures every time


def test_futures_taken_after_the_run():
    task = _submit(["a", "b"], server=Server(echo_chat))
    task.wait(5)
    assert [f.result(1) for f in task] == ["echo:a", "echo:b"]


def test_skipped_rows_futures_resolve_to_none():
    task = _submit(["a", None], server=Server(echo_chat), on_missing="skip")
    assert [f.result(5) for f in task] == ["echo:a", None]


def test_frame_while_running_has_the_final_shape():
    release = threading.Event()
    s = _gated_server(release)
    frame = pd.DataFrame({"t": ["a", "c", "b"]}, index=[7, 8, 9])
    task = _submit(frame, "{t}", server=s, concurrency=3)
    _wait_for(lambda: task.finished_count() == 2)
    partial = task.frame
    # the live frame fills in from the run's refresh timer (a few times a second), not per row
    _wait_for(lambda: partial.loc[9, "output"] is not None)
    assert partial.loc[7, "output"] == "echo:a" and partial.loc[9, "output"] == "echo:b"
    assert partial.loc[8, "output"] is None and partial.loc[8, "error"] is None
    assert task.frame is partial  # one object, bound once, filled in place
    release.set()
    final = task.wait(5)
    assert final is partial
    assert list(final.index) == [7, 8, 9]
    assert final.loc[8, "output"] == "echo:c"
    assert final.attrs["batchmagic"]["state"] == "done"


def test_cancel():
    release = threading.Event()
    s = _gated_server(release)
    task = _submit(list("abcdefgh"), server=s, concurrency=2)
    futures = list(task)
    _wait_for(lambda: task.finished_count() == 2 and s.count == 4)
    task.cancel()
    df = task.wait(5)
    try:
        assert list(df["output"][:2]) == ["echo:a", "echo:b"]
        errors = list(df["error"])
        assert errors[:2] == [None, None]
        assert all(isinstance(e, bm.CancelledRowError) for e in errors[2:4])
        assert all(e.possibly_billed for e in errors[2:4])
        assert all(isinstance(e, bm.NotSentError) for e in errors[4:])
        # no row is left without an output or an error
        assert all((o is not None) or (e is not None) for o, e in zip(df["output"], errors))
        assert df.attrs["batchmagic"]["state"] == "cancelled"
        assert task.finished_count() == 8
        assert "cancelled" in repr(task)
        # every row's future settles, the never-sent ones too
        done, pending = concurrent.futures.wait(futures, timeout=2)
        assert not pending
        assert isinstance(futures[7].exception(), bm.NotSentError)
        assert s.count == 4
    finally:
        release.set()


def test_cancel_before_the_run_starts_is_applied():
    release = threading.Event()
    s = _gated_server(release, fast=())
    task = _submit(["x", "y"], server=s, concurrency=1)
    task.cancel()
    df = task.wait(5)
    release.set()
    assert all(isinstance(e, bm.CancelledRowError | bm.NotSentError) for e in df["error"])
    assert s.count <= 1


def test_pause_and_resume_a_task():
    release = threading.Event()
    s = _gated_server(release, fast=())
    task = _submit([f"r{i}" for i in range(30)], server=s, concurrency=1)
    # the first request is held at the server; the sender has taken the next row and waits for
    # the one slot
    _wait_for(lambda: s.count == 1)
    task.pause()
    _wait_for(lambda: task.progress.state == "paused")
    release.set()
    # the first answers; the row taken before the pause still goes, and nothing after it
    _wait_for(lambda: task.finished_count() == 2)
    time.sleep(0.3)  # a paused run sends nothing, however long it is watched
    assert s.count == 2
    assert not task.done() and task.progress.state == "paused"
    task.resume()
    df = task.wait(30)
    assert df["error"].isna().all()
    assert s.count == 30


async def _slowish_echo(req, body):
    await asyncio.sleep(0.005)
    return echo_chat(req, body)


def test_abatch_inside_asyncio_run():
    s = Server(echo_chat)

    async def main():
        df = await bm.abatch(["a", "b"], "<{}>", base_url=BASE_URL, model="m",
                             transport=s.transport, progress=False)
        # the caller's loop stays responsive while awaiting
        return df

    df = asyncio.run(main())
    assert list(df["output"]) == ["echo:<a>", "echo:<b>"]


def test_abatch_runs_concurrently_with_other_coroutines():
    s = AsyncServer(_slowish_echo)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        t = asyncio.ensure_future(ticker())
        df = await bm.abatch([f"r{i}" for i in range(20)], base_url=BASE_URL, model="m",
                             transport=s.transport, progress=False, concurrency=1)
        t.cancel()
        return df, ticks

    df, ticks = asyncio.run(main())
    assert df["error"].isna().all()
    assert ticks > 5


def test_cancelling_abatch_cancels_the_run():
    s = AsyncServer(_slowish_echo)

    async def main():
        task = asyncio.ensure_future(bm.abatch(
            [f"r{i}" for i in range(500)], base_url=BASE_URL, model="m", transport=s.transport,
            progress=False, concurrency=1))
        while s.count < 3:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the run stops on batchmagic's own loop: wait until the journal says it has ended
        deadline = time.monotonic() + 30
        while _latest_run_state() != "cancelled":
            assert time.monotonic() < deadline, _latest_run_state()
            await asyncio.sleep(0.01)
        after = s.count
        await asyncio.sleep(0.2)  # an ended run sends nothing, however long it is watched
        return after, s.count

    after, later = asyncio.run(main())
    assert after == later < 500


def _latest_run_state() -> str | None:
    runs = bm.runs(limit=1)
    return None if runs.empty else runs["state"].iloc[0]


def test_abatch_config_errors_raise_in_the_caller():
    async def main():
        with pytest.raises(bm.ConfigError):
            await bm.abatch(["a"], base_url=BASE_URL, transport=Server().transport, progress=False)

    asyncio.run(main())


def test_sync_batch_from_inside_a_running_loop():
    s = Server(echo_chat)

    async def main():
        return run(["a", "b"], server=s)

    df = asyncio.run(main())
    assert list(df["output"]) == ["echo:a", "echo:b"]


def test_sync_batch_from_another_thread():
    s = Server(echo_chat)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        frames = list(pool.map(lambda i: run([f"t{i}"], server=s), range(4)))
    assert [f["output"][0] for f in frames] == [f"echo:t{i}" for i in range(4)]


def test_estimate_sends_nothing():
    s = Server(lambda req, body: pytest.fail("estimate must not send"))
    est = bm.estimate(["a", "b", "a", None], "Q: {}", base_url=BASE_URL, model="m",
                      transport=s.transport, rpm=60, dedupe=True)
    assert est.rows == 4 and est.requests == 2 and est.http_requests == 2
    assert est.input_errors == 1
    assert est.first_request["messages"][0]["content"] == "Q: a"
    assert est.eta_s == pytest.approx(2.0)
    assert "4 rows" in str(est)
    assert s.count == 0
