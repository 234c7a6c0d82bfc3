"""Batch API jobs beyond one process: a lease on job creation (two processes, one batch),
batches made elsewhere adopted by id, the provider's own list of batches (OpenAI-compatible and
Ark, with a status filter), job options checked before anything is sent, and output files read
whole (chunked, or cut short) on the default aiohttp wire."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import orjson
import pandas as pd
import pytest
from aiohttp import web
from conftest import wait_until

import batchmagic as bm
from batchmagic.batchapi._ark import ArkBatch
from batchmagic.batchapi._client import OpenAIBatch
from batchmagic.cli import main
from batchmagic.providers._wire import make_wire
from batchmagic.simulator import SimulatorProcess

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-sentinel-JOBS-DO-NOT-LEAK-0f9e8d7c"
AK = "AKLTsentineljobsaccesskey"
SK = "SK-SENTINEL-JOBS-DO-NOT-LEAK-5b4a3c2d"
FAST = {"poll_interval": 0.05, "max_poll_interval": 0.2}


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess(batch_seconds=0.3, api_key=KEY, ark_access_key=AK,
                          ark_secret_key=SK) as s:
        yield s


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("BATCHMAGIC_SIM_API_KEY", KEY)
    monkeypatch.setenv("VOLC_ACCESSKEY", AK)
    monkeypatch.setenv("VOLC_SECRETKEY", SK)


def created(sim) -> int:
    return sim._admin("GET", "/_sim/batches")["created"]


def sim_batches(sim) -> dict[str, dict]:
    return {b["id"]: b for b in sim._admin("GET", "/_sim/batches")["batches"]}


def chat_line(cid: str, text: str) -> dict:
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "sim-chat", "messages": [{"role": "user", "content": text}]}}


def made_elsewhere(sim, ids: list[str]) -> str:
    """A batch created with a plain HTTP client, as the console or another tool would."""
    auth = {"Authorization": f"Bearer {KEY}"}
    data = b"".join(orjson.dumps(chat_line(cid, f"hello {cid}")) + b"\n" for cid in ids)
    with httpx.Client(base_url=sim.base_url, headers=auth, trust_env=False) as http:
        upload = http.post("/files", data={"purpose": "batch"},
                           files={"file": ("mine.jsonl", data, "application/jsonl")})
        upload.raise_for_status()
        batch = http.post("/batches", json={"input_file_id": upload.json()["id"],
                                            "endpoint": "/v1/chat/completions",
                                            "completion_window": "24h"})
        batch.raise_for_status()
        return batch.json()["id"]


def ark_options(sim, **more) -> dict:
    return {"openapi_url": sim.root_url, "tos_endpoint": sim.root_url, **FAST, **more}


def ark_made_elsewhere(sim, ids: list[str]) -> str:
    """An Ark job created through the signed API by a client other than a batchmagic run."""
    async def make() -> str:
        client = ArkBatch(name="ark", options={**ark_options(sim), "bucket": "elsewhere"},
                          wire=make_wire("aiohttp", 2), model="doubao-seed-1-6-250615")
        try:
            lines = b"".join(orjson.dumps({"custom_id": cid, "body": {
                "messages": [{"role": "user", "content": f"hello {cid}"}]}}) + b"\n"
                for cid in ids)
            ref = await client.upload(lines, "theirs.jsonl")
            job = await client.create(ref, endpoint="/v1/chat/completions", window="1d",
                                      model=None, nonce="not-batchmagic", job_id="x", shard=0)
            return job.id
        finally:
            await client.aclose()

    return asyncio.run(make())


def assert_no_secret(*texts: str) -> None:
    blob = "\n".join(texts)
    for secret in (KEY, SK):
        assert secret not in blob


# --------------------------------------------------------------------------- options up front


def test_an_ark_completion_window_outside_1d_to_28d_is_refused_before_anything_is_sent(sim):
    before = created(sim)
    for window in ("30d", "12h", "soon"):
        with pytest.raises(bm.ConfigError, match="completion_window"):
            bm.batch(pd.DataFrame({"text": ["a", "b"]}), "Say: {text}",
                     model="doubao-seed-1-6-250615", provider="ark", mode="batch-api",
                     progress=False,
                     batch_options={**ark_options(sim), "bucket": "b", "completion_window": window})
    assert created(sim) == before
    assert bm.jobs() == []  # not even recorded


def test_other_checkable_job_options_are_config_errors_up_front():
    kw = dict(model="sim-chat", provider="simulator", base_url="http://127.0.0.1:9/v1",
              mode="batch-api")
    bad = {
        "completion_window": [5, "24 hours", "0h"],
        "poll_interval": [float("nan"), float("inf"), -1],
        "max_requests": [60_000],  # over the simulator's (and OpenAI's) 50,000 per file
        "max_bytes": [300_000_000],  # over 200 MB
        "bucket": ["b"],  # an Ark option: another provider would silently ignore it
        "openapi_url": ["ftp://x"],
    }
    for name, values in bad.items():
        for value in values:
            with pytest.raises(bm.ConfigError, match=name):
                bm.estimate(["x"], batch_options={name: value}, **kw)
    with pytest.raises(bm.ConfigError, match="bucket"):
        bm.estimate(["x"], model="doubao-seed-1-6-250615", provider="ark", mode="batch-api",
                    batch_options={"bucket": 7})
    # and the good ones still pass
    bm.estimate(["x"], batch_options={"completion_window": "24h", "max_requests": 100,
                                      "poll_interval": 0.5}, **kw)


# --------------------------------------------------------------------------- the creation lease

RACER = """
    import fcntl, json, sys
    import pandas as pd, batchmagic as bm
    df = pd.DataFrame({{"text": [f"race {{i}}" for i in range({n})]}})
    kw = dict(model="sim-chat", provider="simulator", base_url="{url}", mode="batch-api",
              progress=False, batch_options={{"poll_interval": 0.05, "max_poll_interval": 0.2}})
    bm.estimate(df, "Say: {{text}}", **kw)  # every import done: the two start even
    gate = open(sys.argv[1])
    print("ready", flush=True)
    fcntl.flock(gate, fcntl.LOCK_SH)  # the barrier: both go when the parent lets go
    out = bm.batch(df, "Say: {{text}}", **kw)
    print(json.dumps({{"jobs": out.attrs["batchmagic"]["jobs"],
                      "outputs": out["output"].tolist(),
                      "errors": [None if e is None else str(e) for e in out["error"]]}}))
"""


def test_two_processes_submitting_the_same_rows_at_once_create_one_batch(sim, tmp_path):
    n = 3000
    gate = tmp_path / "gate"
    gate.write_text("")
    before = created(sim)
    code = textwrap.dedent(RACER.format(n=n, url=sim.base_url))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(gate) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        racers = [subprocess.Popen([sys.executable, "-c", code, str(gate)], cwd=ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for _ in range(2)]
        for proc in racers:  # both are loaded and at the barrier
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        fcntl.flock(held, fcntl.LOCK_UN)
    results = []
    for proc in racers:
        out, err = proc.communicate(timeout=150)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert created(sim) == before + 1  # one provider batch, paid once
    assert results[0]["jobs"] == results[1]["jobs"]  # the second joined the first one's job
    for r in results:
        assert r["errors"] == [None] * n
        assert r["outputs"] == [f"echo: Say: race {i}" for i in range(n)]
    [job] = bm.jobs()
    assert job.id == results[0]["jobs"][0] and len(job.status().batches) == 1


def test_a_second_driver_of_the_same_job_waits_for_the_first_ones_batches(sim):
    """The lease on one job's batches, in one process: two handles on a recorded job (as two
    kernels would have) both submit at once; one batch per shard is created."""
    before = created(sim)
    first = bm.submit(pd.DataFrame({"text": [f"j {i}" for i in range(12)]}), "Say: {text}",
                      model="sim-chat", provider="simulator", base_url=sim.base_url,
                      mode="batch-api", progress=False,
                      batch_options={**FAST, "max_requests": 4})
    second = bm.job(first.id)
    [engine] = second._engines()
    second._on_loop(engine.submit(), 60)
    first._wait_submitted(60)
    out = first.wait(60)
    assert created(sim) == before + 3  # three shards, three batches
    assert out["output"].tolist() == [f"echo: Say: j {i}" for i in range(12)]
    assert sorted(b["batch_id"] for b in second.status().batches) == \
        sorted(b["batch_id"] for b in first.status().batches)


# --------------------------------------------------------------------------- adopting


def test_a_batch_made_elsewhere_is_adopted_by_id(sim, capfd):
    ids = ["q-10", "q-2", "q-1", "q-3"]
    batch_id = made_elsewhere(sim, ids)
    with pytest.raises(bm.ConfigError, match="provider="):
        bm.job(batch_id)  # not in the journal, and no provider said
    job = bm.job(batch_id, provider="simulator", base_url=sim.base_url)
    assert isinstance(job, bm.BatchJob) and job.id == batch_id
    assert "made elsewhere" in repr(job)
    status = job.status()
    assert status.total == 4 and status.job_id == batch_id
    out = job.wait(60, progress=False)
    assert out["custom_id"].tolist() == ["q-1", "q-2", "q-3", "q-10"]  # numbers as numbers
    assert out["output"].tolist() == [f"echo: hello q-{i}" for i in (1, 2, 3, 10)]
    assert out["error"].isna().all() and (out["input_tokens"] > 0).all()
    facts = out.attrs["batchmagic"]
    assert facts["adopted"] and facts["jobs"] == [batch_id] and facts["state"] == "completed"
    assert job.done() and job.finished_count() == 4
    with pytest.raises(bm.ConfigError, match="made elsewhere"):
        job.resubmit()
    with pytest.raises(bm.ConfigError, match="has no batch"):
        bm.job("batch_nobody_made_this", provider="simulator", base_url=sim.base_url)
    assert bm.jobs() == []  # adopting writes nothing to the journal
    captured = capfd.readouterr()
    assert_no_secret(repr(job), str(status), repr(out), captured.out, captured.err)


def test_an_adopted_batch_keeps_failed_and_unrun_rows(sim):
    sim.configure(batch_fault_rate=0.5)
    try:
        batch_id = made_elsewhere(sim, [f"f{i}" for i in range(10)])
        out = bm.job(batch_id, provider="simulator", base_url=sim.base_url).wait(60, progress=False)
    finally:
        sim.configure(batch_fault_rate=0.0)
    assert len(out) == 10
    ok = out["error"].isna()
    assert 0 < ok.sum() < 10
    assert all(isinstance(e, bm.ServerError) for e in out.loc[~ok, "error"])
    # a batch cancelled before it ran: its requests come back as rows that were never sent
    sim.configure(batch_seconds=30.0)
    try:
        batch_id = made_elsewhere(sim, ["c1", "c2"])
        job = bm.job(batch_id, provider="simulator", base_url=sim.base_url)
        job.cancel()
        out = job.wait(60, progress=False)
    finally:
        sim.configure(batch_seconds=0.3)
    assert out["custom_id"].tolist() == ["c1", "c2"]
    assert all(isinstance(e, bm.NotSentError) for e in out["error"])
    assert out.attrs["batchmagic"]["state"] == "cancelled"


def test_jobs_status_and_results_adopt_from_the_command_line(sim, tmp_path, capfd):
    batch_id = made_elsewhere(sim, ["a1", "a2"])
    where = ["--provider", "simulator", "--base-url", sim.base_url]
    assert main(["jobs", "status", batch_id, *where]) == 0
    said = capfd.readouterr().out
    assert batch_id in said and "2 failed" not in said
    out = tmp_path / "adopted.jsonl"
    assert main(["jobs", "results", batch_id, "-o", str(out), "-q", *where,
                 "--option", "poll_interval=0.05"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["custom_id"], r["output"]) for r in rows] == [("a1", "echo: hello a1"),
                                                             ("a2", "echo: hello a2")]
    assert main(["jobs", "status", "batch_unknown", *where]) == 2
    captured = capfd.readouterr()
    assert "has no batch" in captured.err
    assert_no_secret(captured.out, captured.err, out.read_text())


def test_an_adopted_batch_is_a_batchjob_and_says_why_it_cannot_be_sent_again(sim):
    """One class for every job: an adopted batch is a plain BatchJob (no subclass refusing its
    methods); resubmit() and finish_online() exist once and need inputs the journal holds."""
    batch_id = made_elsewhere(sim, ["s2", "s1"])
    adopted = bm.job(batch_id, provider="simulator", base_url=sim.base_url)
    assert type(adopted) is bm.BatchJob and bm.BatchJob.__subclasses__() == []
    assert [f.result() for f in adopted] == ["echo: hello s1", "echo: hello s2"]
    assert adopted.run_id is None and adopted._engines() == []
    panel = adopted.progress
    assert (panel.title, panel.state, panel.ok, panel.requests) == (
        f"batch-api job {batch_id}", "done", 2, 2)
    before = created(sim)
    for send_again in (adopted.resubmit, adopted.finish_online):
        with pytest.raises(bm.ConfigError, match=f"batch {batch_id} was made elsewhere: its "
                                                 "inputs are not in the journal"):
            send_again()
    assert created(sim) == before and bm.jobs() == []  # nothing sent again, nothing recorded
    bm.batch(pd.DataFrame({"text": ["z"]}), "Say: {text}", model="sim-chat",
             provider="simulator", base_url=sim.base_url, mode="batch-api", progress=False,
             batch_options=FAST)
    [mine] = bm.jobs()
    assert type(mine) is bm.BatchJob and [f.result() for f in mine] == ["echo: Say: z"]
    panel = mine.progress
    assert (panel.title, panel.state, panel.ok, panel.requests) == (
        f"batch-api job {mine.id}", "done", 1, 1)


def test_a_journal_job_is_found_by_its_provider_batch_id(sim):
    df = pd.DataFrame({"text": ["x", "y"]})
    bm.batch(df, "Say: {text}", model="sim-chat", provider="simulator", base_url=sim.base_url,
             mode="batch-api", progress=False, batch_options=FAST)
    [mine] = bm.jobs()
    [batch] = mine.status().batches
    found = bm.job(batch["batch_id"], provider="simulator", base_url=sim.base_url)
    assert found.id == mine.id and "made elsewhere" not in repr(found)
    assert found.result(30, progress=False)["text"].tolist() == ["x", "y"]  # inputs known
    [listed] = bm.jobs(provider="simulator", base_url=sim.base_url, limit=1)  # the newest
    assert listed.id == mine.id and "made elsewhere" not in repr(listed)


def test_an_ark_job_made_elsewhere_is_adopted(sim):
    job_id = ark_made_elsewhere(sim, ["r2", "r1"])
    job = bm.job(job_id, provider="ark", batch_options=ark_options(sim))
    out = job.wait(60, progress=False)
    assert out["custom_id"].tolist() == ["r1", "r2"]
    assert out["output"].tolist() == ["echo: hello r1", "echo: hello r2"]
    assert job.status().status == "Completed"
    assert_no_secret(repr(job), repr(out))


# --------------------------------------------------------------------------- listing


def test_the_providers_batches_are_listed_across_pages_with_a_status_filter(sim, capfd):
    done = [made_elsewhere(sim, [f"l{i}"]) for i in range(3)]
    wait_until(lambda: all(sim_batches(sim)[b]["status"] == "completed" for b in done),
          "the batches to complete")
    sim.configure(batch_seconds=30.0)
    try:
        stopped = made_elsewhere(sim, ["s1"])
        bm.job(stopped, provider="simulator", base_url=sim.base_url).cancel()
        wait_until(lambda: sim_batches(sim)[stopped]["status"] == "cancelled", "the cancel")
    finally:
        sim.configure(batch_seconds=0.3)
    mine = [*done, stopped]

    async def pages(page_size: int, status: str | None = None):
        client = OpenAIBatch(name="sim", base_url=sim.base_url, api_key=None, dialect="openai",
                             wire=make_wire("aiohttp", 2), headers={"Authorization": f"Bearer {KEY}"})
        try:
            return await client.list_batches(status=status, limit=4, page_size=page_size)
        finally:
            await client.aclose()

    assert [b.id for b in asyncio.run(pages(1))] == mine[::-1]  # newest first, four pages
    listed = bm.jobs(provider="simulator", base_url=sim.base_url, limit=4)
    assert [j.id for j in listed] == mine  # oldest first, like the journal's list
    only = bm.jobs(provider="simulator", base_url=sim.base_url, status="cancelled")
    assert stopped in [j.id for j in only] and not set(done) & {j.id for j in only}
    completed = {j.id for j in bm.jobs(provider="simulator", base_url=sim.base_url,
                                       status="completed", limit=1000)}
    assert set(done) <= completed and stopped not in completed
    with pytest.raises(bm.ConfigError, match="not a batch status"):
        bm.jobs(provider="simulator", base_url=sim.base_url, status="sleeping")
    assert main(["jobs", "list", "--provider", "simulator", "--base-url", sim.base_url,
                 "--status", "cancelled"]) == 0
    said = capfd.readouterr().out
    assert stopped in said and not any(b in said for b in done)
    assert_no_secret(said, repr(listed))


def test_arks_jobs_are_listed_with_its_phase_filter(sim, capfd):
    finished = ark_made_elsewhere(sim, ["p1"])
    wait_until(lambda: sim_batches(sim)[finished]["status"] == "completed", "the Ark job")
    sim.configure(batch_seconds=30.0)
    try:
        running = ark_made_elsewhere(sim, ["p2"])
        wait_until(lambda: sim_batches(sim)[running]["status"] == "in_progress", "the Ark job to run")
        options = ark_options(sim)
        listed = bm.jobs(provider="ark", batch_options=options, status="Running")
        assert [j.id for j in listed] == [running]
        done = bm.jobs(provider="ark", batch_options=options, status="completed", limit=1000)
        assert finished in {j.id for j in done} and running not in {j.id for j in done}
        assert [j.id for j in bm.jobs(provider="ark", batch_options=options, limit=2)] == \
            [finished, running]
        assert main(["jobs", "list", "--provider", "ark", "--status", "running",
                     *(f"--option={k}={v}" for k, v in options.items())]) == 0
        said = capfd.readouterr().out
        assert running in said and finished not in said
        bm.job(running, provider="ark", batch_options=options).cancel()
    finally:
        sim.configure(batch_seconds=0.3)


def test_the_simulators_ark_list_filters_by_phase(sim):
    job_id = ark_made_elsewhere(sim, ["z1"])
    wait_until(lambda: sim_batches(sim)[job_id]["status"] == "completed", "the Ark job")

    async def ask(phases):
        client = ArkBatch(name="ark", options=ark_options(sim), wire=make_wire("aiohttp", 2),
                          model=None, creating=False)
        try:
            return await client._action("ListBatchInferenceJobs", {
                "Filter": {"Phases": phases}, "PageNumber": 1, "PageSize": 100})
        finally:
            await client.aclose()

    completed = asyncio.run(ask(["Completed"]))
    assert job_id in [i["Id"] for i in completed["Items"]]
    assert all(i["Status"]["Phase"] == "Completed" for i in completed["Items"])
    assert job_id not in [i["Id"] for i in asyncio.run(ask(["Running", "Failed"]))["Items"]]
    with pytest.raises(bm.BadRequestError, match="Phases"):
        asyncio.run(ask(["Sleeping"]))


# --------------------------------------------------------------------------- whole downloads


class ChunkedBatchServer:
    """A minimal OpenAI-compatible files + batches server on 127.0.0.1 whose output files are
    sent the way proxies send them: ``Transfer-Encoding: chunked``, no Content-Length, a line
    per chunk a few milliseconds apart. ``cut`` stops each download halfway and closes the
    connection without the final chunk."""

    def __init__(self, *, cut: bool = False, gap: float = 0.003):
        self.cut = cut
        self.gap = gap
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, str] = {}  # batch id -> input file id
        self.downloads: list[tuple[int, bool]] = []  # (chunks sent, whole)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ChunkedBatchServer:
        self._thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _batch(self, batch_id: str, status: str) -> dict:
        lines = self.files[self.batches[batch_id]].splitlines()
        return {"id": batch_id, "object": "batch", "endpoint": "/v1/chat/completions",
                "status": status, "input_file_id": self.batches[batch_id],
                "output_file_id": f"out-{batch_id}" if status == "completed" else None,
                "error_file_id": None, "created_at": int(time.time()),
                "request_counts": {"total": len(lines), "completed": len(lines), "failed": 0}}

    def _answers(self, batch_id: str) -> list[bytes]:
        out = []
        for raw in self.files[self.batches[batch_id]].splitlines():
            line = orjson.loads(raw)
            text = line["body"]["messages"][-1]["content"]
            body = {"id": "c", "object": "chat.completion", "choices": [{"index": 0,
                    "message": {"role": "assistant", "content": f"echo: {text}"},
                    "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
            out.append(orjson.dumps({"id": f"r-{line['custom_id']}",
                                     "custom_id": line["custom_id"], "error": None,
                                     "response": {"status_code": 200, "body": body}}) + b"\n")
        return out[::-1]  # any order: joined by custom_id

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/v1/files" and request.method == "POST":
            form = await request.post()
            file_id = f"in-{len(self.files)}"
            self.files[file_id] = form["file"].file.read()
            return web.json_response({"id": file_id, "object": "file", "purpose": "batch"})
        if path == "/v1/batches" and request.method == "POST":
            payload = await request.json()
            batch_id = f"batch-{len(self.batches)}"
            self.batches[batch_id] = payload["input_file_id"]
            return web.json_response(self._batch(batch_id, "validating"))
        if path == "/v1/batches":
            return web.json_response({"object": "list", "data": [], "has_more": False})
        if path.startswith("/v1/batches/"):
            return web.json_response(self._batch(path.rsplit("/", 1)[1], "completed"))
        if path.startswith("/v1/files/out-") and path.endswith("/content"):
            return await self._send(request, self._answers(path.split("/")[3][len("out-"):]))
        return web.json_response({"error": {"message": "no such path"}}, status=404)

    async def _send(self, request: web.Request, pieces: list[bytes]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/jsonl"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        cut = self.cut
        if cut:
            pieces = pieces[: len(pieces) // 2]
        for piece in pieces:
            await resp.write(piece)
            await asyncio.sleep(self.gap)  # the server's pace, not a wait in the test
        self.downloads.append((len(pieces), not cut))
        if cut:
            request.transport.close()  # no terminating chunk: the body is incomplete
            return resp
        await resp.write_eof()
        return resp

    def _serve(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            runner = web.AppRunner(web.Application(middlewares=[]), handle_signals=False)
            runner.app.router.add_route("*", "/{tail:.*}", self.handle)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            self.base_url = f"http://127.0.0.1:{port}/v1"
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        asyncio.run(main())


def chunk_run(server: ChunkedBatchServer, n: int) -> pd.DataFrame:
    return bm.batch(pd.DataFrame({"text": [f"c {i}" for i in range(n)]}), "Say: {text}",
                    model="m", base_url=server.base_url, api_key=KEY, mode="batch-api",
                    progress=False, batch_options=FAST)


def test_a_chunked_output_file_is_harvested_whole_on_the_aiohttp_wire():
    with ChunkedBatchServer() as server:
        out = chunk_run(server, 40)
    assert out["output"].tolist() == [f"echo: Say: c {i}" for i in range(40)]
    assert out["error"].isna().all()
    assert server.downloads == [(40, True)]  # forty chunks, spread over time


def test_an_output_file_cut_short_is_an_error_not_a_partial_harvest(tmp_path):
    with ChunkedBatchServer(cut=True) as server:
        out = chunk_run(server, 40)
        assert out["output"].isna().all()  # not the half that arrived
        assert all(isinstance(e, bm.NotSentError) and "not collected" in str(e)
                   for e in out["error"])
        assert "cut off" in out.attrs["batchmagic"]["stopped_by"]
        assert len(server.downloads) > 1 and not any(whole for _, whole in server.downloads)
        [job] = bm.jobs()
        assert job.status().state != "finished"  # still to be collected
        server.cut = False  # the network heals: the same job is collected whole, not re-sent
        again = job.wait(60, progress=False)
        # an adopted batch's download cut short is an error too
        server.cut = True
        with pytest.raises(bm.ServerError, match="cut off"):
            bm.job("batch-0", cache=tmp_path, base_url=server.base_url, api_key=KEY,
                   batch_options=FAST).wait(60, progress=False)
    assert len(server.batches) == 1
    assert again["output"].tolist() == [f"echo: Say: c {i}" for i in range(40)]
