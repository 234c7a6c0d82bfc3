"""The simulator's Batch API surfaces, driven by batchmagic's own clients and by raw HTTP."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import orjson
import pytest

import batchmagic as bm
from batchmagic.batchapi._ark import ArkBatch
from batchmagic.batchapi._client import OpenAIBatch
from batchmagic.batchapi._files import request_line
from batchmagic.providers._wire import AiohttpWire
from batchmagic.simulator import SimConfig, SimulatorThread

pytestmark = pytest.mark.timeout(60)
SK = "sim-secret-for-tests"


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(batch_seconds=0.2, ark_access_key="AK1", ark_secret_key=SK) as s:
        yield s


def openai_client(sim) -> OpenAIBatch:
    return OpenAIBatch(name="sim", base_url=sim.base_url, api_key=None, dialect="openai",
                       wire=AiohttpWire(4))


def get_json(url: str):
    with urllib.request.urlopen(url) as resp:
        return json.loads(resp.read())


def body(text: str, model: str = "sim-chat") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def file_of(*texts: str, url: str = "/v1/chat/completions") -> bytes:
    return b"".join(request_line(f"c{i}", body(t), url, "openai") for i, t in enumerate(texts))


async def until_terminal(client, batch_id: str):
    for _ in range(200):
        rb = await client.retrieve(batch_id)
        if rb.terminal:
            return rb
        await asyncio.sleep(0.05)
    raise AssertionError("the batch never ended")


def test_files_batches_list_and_content(sim):
    async def go():
        client = openai_client(sim)
        try:
            ids = []
            for n in range(3):
                ref = await client.upload(file_of(f"a{n}", f"b{n}"), f"in{n}.jsonl")
                rb = await client.create(ref, endpoint="/v1/chat/completions", window="24h",
                                         model=None, nonce=f"nonce-{n}", job_id="j", shard=n)
                assert rb.state == "pending" and rb.nonce == f"nonce-{n}"
                ids.append(rb.id)
            found = await client.find("nonce-1", time.time())
            assert found is not None and found.id == ids[1]
            assert await client.find("nope", time.time()) is None
            done = await until_terminal(client, ids[0])
            assert done.state == "completed" and done.completed == 2 and done.error_ref is None
            data = await client.download(done.output_ref)
            lines = [orjson.loads(x) for x in data.splitlines()]
            assert [x["custom_id"] for x in lines] == ["c1", "c0"]  # reversed: join by id
            assert await client.download("file-missing") is None
            with pytest.raises(bm.BadRequestError, match="Cannot cancel"):
                await client.cancel(ids[0])
        finally:
            await client.aclose()

    asyncio.run(go())
    page = get_json(sim.base_url + "/batches?limit=2")
    assert len(page["data"]) == 2 and page["has_more"]
    rest = get_json(f"{sim.base_url}/batches?limit=2&after={page['last_id']}")
    assert rest["data"] and rest["data"][0]["id"] != page["data"][-1]["id"]


def test_the_simulator_fails_a_bad_file_like_a_provider(sim):
    async def go():
        client = openai_client(sim)
        try:
            bad = file_of("a") + b"not json\n" + request_line("c0", body("dup"),
                                                              "/v1/chat/completions", "openai")
            ref = await client.upload(bad, "bad.jsonl")
            rb = await client.create(ref, endpoint="/v1/chat/completions", window="24h",
                                     model=None, nonce="n", job_id="j", shard=0)
            rb = await until_terminal(client, rb.id)
            assert rb.state == "failed" and "line 2" in rb.message and "not unique" in rb.message
            with pytest.raises(bm.BadRequestError, match="completion_window"):
                await client.create(ref, endpoint="/v1/chat/completions", window="1h",
                                    model=None, nonce="n", job_id="j", shard=0)
            with pytest.raises(bm.BadRequestError):
                await client.create("file-none", endpoint="/v1/chat/completions",
                                    window="24h", model=None, nonce="n", job_id="j", shard=0)
        finally:
            await client.aclose()

    asyncio.run(go())


def test_an_api_key_guards_files_and_batches():
    with SimulatorThread(api_key="sk-k") as s:
        req = urllib.request.Request(s.base_url + "/batches")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req)
        assert info.value.code == 401
        info.value.close()


def test_ark_job_and_tos_signatures_are_checked(sim):
    async def go(secret: str):
        client = ArkBatch(name="ark", wire=AiohttpWire(4), model="doubao-x-250101",
                          options={"bucket": "b1", "access_key": "AK1", "secret_key": secret,
                                   "openapi_url": sim.root_url, "tos_endpoint": sim.root_url})
        try:
            ref = await client.upload(
                b"".join(request_line(f"c{i}", body(f"t{i}"), "", "ark") for i in range(3)),
                "in.jsonl")
            rb = await client.create(ref, endpoint="/v1/chat/completions", window="24h",
                                     model=None, nonce="ark-nonce", job_id="j", shard=0)
            assert rb.status in ("Queued", "Running")
            assert (await client.find("ark-nonce", time.time())).id == rb.id
            rb = await until_terminal(client, rb.id)
            assert rb.state == "completed" and rb.completed == 3
            data = await client.download(rb.output_ref)
            assert sorted(orjson.loads(x)["custom_id"] for x in data.splitlines()) == \
                ["c0", "c1", "c2"]
            assert await client.download(rb.error_ref) is None  # nothing failed: no errors file
        finally:
            await client.aclose()

    asyncio.run(go(SK))
    with pytest.raises(bm.FatalProviderError, match="SignatureDoesNotMatch|signature"):
        asyncio.run(go("wrong-secret"))


def test_batch_config_flags_and_secrets():
    cfg = SimConfig.from_args(["--batch-seconds", "2", "--batch-day-seconds", "10",
                               "--batch-error-rate", "0.1", "--batch-fault-rate", "0.2",
                               "--no-batch-reverse"],
                              env={"BATCHMAGIC_SIM_ARK_SECRET_KEY": "SK-sentinel-77"})
    assert (cfg.batch_seconds, cfg.batch_day_seconds, cfg.batch_reverse) == (2.0, 10.0, False)
    assert cfg.ark_secret_key == "SK-sentinel-77" and "SK-sentinel-77" not in repr(cfg)
    assert cfg.public_dict()["ark_secret_key"] is None and "--ark-secret-key" not in cfg.to_args()
    with pytest.raises(ValueError):
        SimConfig(batch_error_rate=0.7, batch_fault_rate=0.7)
    with pytest.raises(ValueError):
        SimConfig(batch_seconds=0)
