"""executor="ray" on a real local Ray cluster (2 CPUs, a small object store, one per module),
the simulator on 127.0.0.1 as the provider."""

from __future__ import annotations

import collections
import io
import math
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from conftest import wait_until  # noqa: E402

import batchmagic as bm  # noqa: E402
from batchmagic.executors.ray import start_ray  # noqa: E402
from batchmagic.simulator import SimulatorProcess  # noqa: E402

SENTINEL = "sk-SENTINEL-DO-NOT-LEAK-ray-0123456789"


@pytest.fixture(scope="module")
def cluster():
    start_ray(num_cpus=2, object_store_memory=80 * 1024 * 1024, include_dashboard=False,
              log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess(api_key=SENTINEL) as s:
        yield s


@pytest.fixture
def fresh(sim, cluster):
    sim.reset()
    sim.configure(faults={}, fault_attempts=1, latency=0.0, rpm=None, tpm=None,
                  ratelimit_headers=True)
    yield sim
    sim.configure(faults={}, rpm=None, tpm=None, latency=0.0)


def run(sim, inputs, prompt="{text}", **kw):
    kw.setdefault("model", "sim-chat")
    kw.setdefault("progress", False)
    kw.setdefault("cache", False)
    kw.setdefault("ray_options", {"workers": 2})
    return bm.batch(inputs, prompt, provider="simulator", base_url=sim.base_url,
                    api_key=SENTINEL, executor="ray", **kw)


def texts(n: int, tag: str = "row") -> pd.DataFrame:
    return pd.DataFrame({"text": [f"{tag} {i}" for i in range(n)], "n": range(n)})


def test_frame_in_input_order_with_row_errors(fresh, capfd):
    """2,000 rows through 2 workers: each answer on its own row, in order; a row the server
    refuses is that row's error, never a failed block."""
    fresh.configure(faults={"400_context": 0.03})
    df = texts(2000).set_index(pd.Index([f"id{i}" for i in range(2000)]))
    out = run(fresh, df, concurrency=32)
    assert list(out.index) == list(df.index)
    failed = out["error"].notna()
    assert 0 < failed.sum() < 200
    assert all(isinstance(e, bm.ContextLengthError) for e in out["error"][failed])
    assert out["output"][~failed].tolist() == [f"echo: {t}" for t in df["text"][~failed]]
    facts = out.attrs["batchmagic"]
    assert facts["executor"] == "ray" and facts["ray_workers"] == 2
    assert (facts["ok"], facts["failed"]) == (2000 - failed.sum(), failed.sum())
    assert len(fresh.calls()) == 2000
    seen = capfd.readouterr()
    assert SENTINEL not in seen.out + seen.err + repr(facts)


def test_one_limit_for_every_worker(fresh):
    """The server allows 6,000 requests a minute and says so in its headers; no rpm= given.
    Two workers that each learned the limit for themselves would send twice that: through the
    shared limit they stay within it, and no row fails."""
    rpm, n = 6000, 300
    fresh.configure(rpm=rpm, latency=0.05)
    out = run(fresh, texts(n), concurrency=16)
    assert out["error"].isna().all()
    calls = fresh.calls()
    statuses = collections.Counter(c["status"] for c in calls)
    assert statuses[200] == n
    assert statuses[429] <= 8  # at most the first moments, before the limit is known
    assert out.attrs["batchmagic"]["learned_rpm"] == rpm
    ok = sorted(c["t"] for c in calls if c["status"] == 200)
    # the server lets a second's worth through at once; beyond that, at most its rate
    assert ok[-1] - ok[0] >= (n - rpm / 60) / (rpm / 60) * 0.95


def test_throttling_without_headers_slows_every_worker(fresh):
    """No rate headers: a 429 seen by one worker lowers the one probed rate for all; every row
    is answered and the 429s stay a small share of the requests."""
    fresh.configure(rpm=6000, ratelimit_headers=False, latency=0.05)
    out = run(fresh, texts(300), concurrency=16)
    assert out["error"].isna().all()
    statuses = collections.Counter(c["status"] for c in fresh.calls())
    assert statuses[200] == 300
    assert statuses[429] < 75
    assert out.attrs["batchmagic"]["rate_limited"] == statuses[429]


def test_budget_holds_across_the_cluster(fresh):
    """One budget for every worker: the run stops before it could pass it."""
    fresh.configure(latency=0.01)
    budget = 0.0010
    df = pd.DataFrame({"text": [f"budget row {i} " + "words " * 20 for i in range(300)]})
    out = run(fresh, df, params={"max_tokens": 32}, budget=budget,
              prices={"input": 1.0, "output": 1.0}, concurrency=8)
    facts = out.attrs["batchmagic"]
    assert facts["cost"] <= budget
    assert facts["state"] == "aborted" and "budget" in facts["stopped_by"].lower()
    done = out["error"].isna()
    assert 0 < done.sum() < 300
    assert all(isinstance(e, bm.NotSentError) for e in out["error"][~done])
    assert math.isclose(float(out["cost"][done].sum()), facts["cost"])


def test_files_to_output_path_then_resume(fresh, tmp_path):
    """Parquet files in, result Parquet out (written by the workers), a summary on the driver.
    A re-run with the same output_path sends only the rows no file holds (here: those of a
    file deleted in between)."""
    fresh.configure(faults={"400_context": 0.05})
    data = tmp_path / "in"
    data.mkdir()
    texts(350).to_parquet(data / "a.parquet")
    texts(250, "more").to_parquet(data / "b.parquet")
    out_dir = tmp_path / "out"
    opts = {"workers": 2, "block_rows": 150}
    summary = run(fresh, str(data), output_path=out_dir, ray_options=opts)
    facts = summary.attrs["batchmagic"]
    assert (facts["rows"], facts["written"], facts["not_sent"]) == (600, 600, 0)
    assert summary["rows"].sum() == 600 and summary.index.name == "block"
    written = pd.read_parquet(out_dir)
    assert len(written) == 600 and written["_bm_key"].is_unique
    assert set(written.columns) >= {"text", "n", "output", "error", "error_type", "_bm_key"}
    failed = written["error"].notna()
    assert 0 < failed.sum() < 80 and set(written["error_type"][failed]) == {"ContextLengthError"}
    ok = written[~failed]
    assert (ok["output"] == "echo: " + ok["text"]).all()
    assert len(fresh.calls()) == 600

    lost = sorted(out_dir.glob("part-*.parquet"))[0]
    lost_rows = len(pd.read_parquet(lost))
    lost.unlink()
    again = run(fresh, str(data), output_path=out_dir, ray_options=opts)
    assert again["written"].sum() == lost_rows
    assert again["already"].sum() == 600 - lost_rows
    assert len(fresh.calls()) == 600 + lost_rows  # the rows still written were not sent
    final = pd.read_parquet(out_dir)
    assert len(final) == 600 and final["_bm_key"].is_unique


def test_an_output_path_run_keeps_its_rows_off_the_driver(fresh, tmp_path):
    """The driver's memory on an output_path run does not grow with the rows: the workers read
    the input and write the results; the driver keeps one summary row per block. Traced on the
    driver (so the machine's load does not change it) for 3,000 and 30,000 rows: here ~1.6 MB
    and ~1.7 MB at their peaks, about 0.1 MB apart, while the results as a frame are ~4.8 MB.
    At 1,000,000 rows the driver's peak RSS grew by 18 MB (benchmarks/ray_memory.py)."""
    import tracemalloc

    opts = {"workers": 2, "block_rows": 3_000}

    def traced_peak(n: int) -> tuple[int, pd.DataFrame]:
        src, out_dir = tmp_path / f"in{n}.parquet", tmp_path / f"out{n}"
        texts(n).to_parquet(src)
        tracemalloc.start()
        try:
            summary = run(fresh, str(src), output_path=out_dir, ray_options=opts)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert summary["written"].sum() == n and summary["failed"].sum() == 0
        return peak, pd.read_parquet(out_dir)

    texts(300).to_parquet(tmp_path / "warm.parquet")  # Ray Data's and pyarrow's own set-up
    run(fresh, str(tmp_path / "warm.parquet"), output_path=tmp_path / "warm", ray_options=opts)
    small, _ = traced_peak(3_000)
    large, written = traced_peak(30_000)
    frame = int(written.memory_usage(deep=True).sum())
    assert large - small < frame / 20, (small, large, frame)  # ten times the rows, ~flat
    assert large < frame / 2, (large, frame)


def test_progress_shows_the_clusters_totals(fresh, tmp_path):
    """An output_path run's panel reads the cluster: while it runs and at the end, its rows
    done, ok and failed are the sum over both workers, its errors are by class, and its title
    names the limit every worker shares (learned here from the server's headers). The tqdm bar
    says the same."""
    from batchmagic._display import TextDisplay
    from batchmagic._widget import render_text

    n, rpm = 3000, 60000
    fresh.configure(faults={"400_context": 0.05}, rpm=rpm, latency=0.05)
    texts(n).to_parquet(tmp_path / "in.parquet")
    task = bm.submit(str(tmp_path / "in.parquet"), "{text}", provider="simulator",
                     base_url=fresh.base_url, api_key=SENTINEL, model="sim-chat",
                     executor="ray", progress=False, cache=False, concurrency=8,
                     output_path=tmp_path / "out", ray_options={"workers": 2, "block_rows": 500})

    def midway():
        s = task.progress
        seen = s.errors.get("ContextLengthError", 0) and "shared limit" in s.title
        return s if seen and s.done >= 100 else None

    live = wait_until(midway, "the cluster's counts, errors and limit on the panel")
    assert live.rows == n and live.done <= n
    assert live.done == live.ok + live.failed + live.skipped
    assert live.failed >= live.errors["ContextLengthError"] > 0
    assert f"ray x2 · shared limit {rpm:,} rpm" in live.title
    text = render_text(live)
    assert "errors:" in text and "ContextLengthError x" in text and "shared limit" in text

    summary = task.wait(timeout=240)
    end = task.progress
    written = pd.read_parquet(tmp_path / "out")
    failed = int(written["error"].notna().sum())
    assert 0 < failed < n * 0.15
    workers = {name.split("-")[2] for files in summary["files"] for name in files}
    assert len(workers) == 2  # both workers answered rows: the totals are the cluster's
    assert (end.state, end.rows, end.done, end.ok, end.failed) == ("done", n, n, n - failed,
                                                                    failed)
    assert end.errors == {"ContextLengthError": failed}
    assert f"shared limit {rpm:,} rpm" in end.title
    text = render_text(end)
    assert f"{n - failed:,}" in text and f"ContextLengthError x{failed}" in text
    bar = io.StringIO()
    display = TextDisplay(live, file=bar)
    display.update(end)
    display.close(end)
    shown = bar.getvalue()
    assert f"shared limit {rpm:,} rpm" in shown and f"ok={n - failed}" in shown
    assert f"ContextLengthError x{failed}" in shown and SENTINEL not in shown + text


def test_jsonl_and_a_dataset_to_a_frame(fresh, tmp_path):
    """Without output_path= a JSONL path and a ray.data.Dataset come back as the usual frame."""
    df = texts(60, "file")
    df.to_json(tmp_path / "rows.jsonl", orient="records", lines=True)
    frame = run(fresh, str(tmp_path / "rows.jsonl"))
    assert frame["output"].tolist() == [f"echo: {t}" for t in df["text"]]
    frame = run(fresh, ray.data.from_pandas(df))
    assert frame["output"].tolist() == [f"echo: {t}" for t in df["text"]]


def test_cli_csv_to_output_path(fresh, tmp_path):
    """batchmagic run --executor ray --output-path: Ray Data reads the CSV, the rows go to the
    folder, -o gets the summary by block (here joining the test's cluster: RAY_ADDRESS)."""
    df = texts(60, "cli")
    df.to_csv(tmp_path / "rows.csv", index=False)
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address,
               BATCHMAGIC_SIM_API_KEY=SENTINEL,
               PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(),
                                                        os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [sys.executable, "-m", "batchmagic.cli", "run", str(tmp_path / "rows.csv"), "-p",
         "{text}", "-o", str(tmp_path / "summary.csv"), "--provider", "simulator",
         "--base-url", fresh.base_url, "-m", "sim-chat",
         "--executor", "ray", "--ray-options", '{"workers": 2}',
         "--output-path", str(tmp_path / "out"), "-q", "--no-cache"],
        capture_output=True, text=True, env=env, timeout=280)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wrote 60 rows to" in done.stderr and SENTINEL not in done.stdout + done.stderr
    assert pd.read_csv(tmp_path / "summary.csv")["written"].sum() == 60
    written = pd.read_parquet(tmp_path / "out").sort_values("n")
    assert written["output"].tolist() == [f"echo: {t}" for t in df["text"]]


def test_a_killed_worker_costs_at_most_its_window(fresh):
    """SIGKILL one worker process mid-run: Ray restarts it, its unanswered rows go to a worker
    again, every row is answered, and what was sent twice is at most what it had in flight."""
    fresh.configure(latency=0.2)
    n, window = 600, 16
    task = bm.submit(texts(n), "{text}", provider="simulator", base_url=fresh.base_url,
                     api_key=SENTINEL, model="sim-chat", executor="ray", progress=False,
                     cache=False, concurrency=window, ray_options={"workers": 2})
    run_ = task._run
    wait_until(lambda: task.finished_count() >= 100, "the first answers")
    workers = wait_until(lambda: getattr(run_.executor, "_row_workers", None), "the workers")
    pid = ray.get(workers[0].pid.remote())
    os.kill(pid, signal.SIGKILL)
    out = task.wait(timeout=240)
    assert out["error"].isna().all()
    assert out["output"].tolist() == [f"echo: row {i}" for i in range(n)]
    sent = len(fresh.calls())
    facts = out.attrs["batchmagic"]
    assert facts["resent_after_worker_loss"] > 0
    # a worker holds two chunks of at most max_window units each
    assert n <= sent <= n + 2 * run_.max_window


def test_cancel_stops_every_worker(fresh):
    """task.cancel() stops both workers: the rows not sent are NotSentError and the finished
    rows keep their answers."""
    fresh.configure(latency=0.2)
    n = 2000
    task = bm.submit(texts(n), "{text}", provider="simulator", base_url=fresh.base_url,
                     api_key=SENTINEL, model="sim-chat", executor="ray", progress=False,
                     cache=False, concurrency=8, ray_options={"workers": 2})
    wait_until(lambda: task.finished_count() >= 50, "the first answers")
    task.cancel()
    out = task.wait(timeout=120)
    assert out.attrs["batchmagic"]["state"] == "cancelled"
    done = out["error"].isna()
    assert 50 <= done.sum() < n
    assert (out["output"][done] == "echo: " + out["text"][done]).all()
    assert any(isinstance(e, bm.NotSentError) for e in out["error"][~done])
    assert len(fresh.calls()) < n


def test_llama_cpp_engine_actors_answer_as_one_process(cluster):
    """engine= with executor="ray": each worker loads the model once and holds it; at
    temperature 0 the answers are those of the single-process engine run (an empty row is
    that row's error in both)."""
    pytest.importorskip("llama_cpp")
    df = pd.DataFrame({"q": ["What is the capital of France?", "Name a colour.",
                             "What is 2+2?", "Say hello.", "Name a fruit."]})
    kw = dict(engine="llama.cpp", params={"max_tokens": 12, "temperature": 0},
              progress=False, cache=False)
    try:
        here = bm.batch(df, "Answer briefly: {q}", **kw)
    finally:
        bm.unload()
    there = bm.batch(df, "Answer briefly: {q}", executor="ray", ray_options={"workers": 2},
                     **kw)
    assert there["error"].isna().all()
    assert there["output"].tolist() == here["output"].tolist()
    assert "Paris" in there["output"].iloc[0]


def test_options_are_checked_before_anything_runs(cluster):
    with pytest.raises(bm.ConfigError, match="ray_options has no 'worker'"):
        bm.batch(["x"], model="m", base_url="http://127.0.0.1:9/v1", executor="ray",
                 ray_options={"worker": 2})
    with pytest.raises(bm.ConfigError, match="cannot count an output_path= run"):
        bm.estimate(texts(3), "{text}", model="m", base_url="http://127.0.0.1:9/v1",
                    executor="ray", output_path="out")
    with pytest.raises(bm.ConfigError, match="applies to executor='ray'"):
        bm.batch(["x"], model="m", base_url="http://127.0.0.1:9/v1", output_path="out")
