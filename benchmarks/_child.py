"""One run of one contender, in its own process: ``python _child.py '<json spec>'``.

This file is run as a script by whichever interpreter owns the contender (the project's own for
the floors and batchmagic, the peers' virtual environment for the other libraries), so it imports
nothing from the project and only the standard library at module level.

Protocol with the harness: the child imports its library and builds its inputs, prints
``READY``, waits for ``GO`` on stdin (the harness resets the simulator in between), runs, and
prints ``RESULT {json}``: wall and CPU seconds of the run (all threads of this process), peak
RSS, rows answered / failed, the most common error types, and per-request latency percentiles
where the library exposes them.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

API_KEY = "sk-bench-not-a-secret"
CHAT_MODEL = "sim-chat"
EMBED_MODEL = "sim-embed"


# -- helpers ---------------------------------------------------------------------------------------


def texts(spec: dict) -> list[str]:
    return [f"{spec.get('prefix', 'row')} {i}" for i in range(spec["n"])]


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[k]


class Tally:
    """Rows answered and failed, the error types seen, and latencies where measured."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.latencies: list[float] = []

    def fail(self, exc: BaseException | str, rows: int = 1) -> None:
        self.failed += rows
        name = exc if isinstance(exc, str) else _error_name(exc)
        self.errors[name] += rows

    def result(self, **extra: Any) -> dict:
        out = {"ok": self.ok, "failed": self.failed,
               "errors": dict(self.errors.most_common(4)),
               "lat_p50": percentile(self.latencies, 0.5),
               "lat_p95": percentile(self.latencies, 0.95)}
        out.update(extra)
        return out


def _error_name(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    name = type(exc).__name__
    return f"{name} {status}" if isinstance(status, int) else name


class Pacer:
    """Semaphore + pacing, for clients with no rate limiter of their own: requests leave at most
    ``rate`` per second, evenly spaced (the harness passes the binding limit in requests/s)."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self.next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now, self.next)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


def chat_body(text: str, max_tokens: int) -> dict:
    return {"model": CHAT_MODEL, "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens}


# -- floors: raw HTTP clients + a semaphore ---------------------------------------------------------


def prep_aiohttp(spec: dict) -> Callable[[], dict]:
    import aiohttp
    import orjson

    url, c, tally = spec["url"], spec["concurrency"], Tally()
    pacer = Pacer(spec.get("pace_rps"))
    if spec["kind"] == "embedding":
        import base64

        import numpy as np

        groups = chunks(texts(spec), spec["pack"])
        dim = spec["embedding_dim"]

        async def main_embed() -> None:
            sem = asyncio.Semaphore(c)
            vectors: list = []
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c),
                                             timeout=timeout) as session:
                async def one(group: list[str]) -> None:
                    async with sem:
                        body = orjson.dumps({"model": EMBED_MODEL, "input": group,
                                             "encoding_format": "base64"})
                        try:
                            async with session.post(url + "/embeddings", data=body, headers={
                                    "Content-Type": "application/json",
                                    "Authorization": f"Bearer {API_KEY}"}) as r:
                                raw = await r.read()
                                if r.status != 200:
                                    tally.fail(f"HTTP {r.status}", len(group))
                                    return
                            out: list = [None] * len(group)
                            for item in orjson.loads(raw)["data"]:
                                out[item["index"]] = np.frombuffer(
                                    base64.b64decode(item["embedding"]), dtype=np.float32)
                            good = sum(1 for v in out if v is not None and v.shape == (dim,))
                            tally.ok += good
                            if good < len(group):
                                tally.fail("missing vectors", len(group) - good)
                            vectors.append(out)
                        except Exception as exc:  # noqa: BLE001  a floor has no retries
                            tally.fail(exc, len(group))
                await asyncio.gather(*(one(g) for g in groups))

        return lambda: (asyncio.run(main_embed()), tally.result())[1]

    rows = texts(spec)
    max_tokens = spec["max_tokens"]

    async def main_chat() -> None:
        sem = asyncio.Semaphore(c)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c),
                                         timeout=timeout) as session:
            async def one(text: str) -> None:
                async with sem:
                    await pacer.wait()
                    t0 = time.perf_counter()
                    try:
                        async with session.post(url + "/chat/completions",
                                                data=orjson.dumps(chat_body(text, max_tokens)),
                                                headers={"Content-Type": "application/json",
                                                         "Authorization": f"Bearer {API_KEY}"}
                                                ) as r:
                            raw = await r.read()
                            if r.status != 200:
                                tally.fail(f"HTTP {r.status}")
                                return
                        if orjson.loads(raw)["choices"][0]["message"]["content"]:
                            tally.ok += 1
                            tally.latencies.append(time.perf_counter() - t0)
                        else:
                            tally.fail("empty answer")
                    except Exception as exc:  # noqa: BLE001  a floor has no retries
                        tally.fail(exc)
            await asyncio.gather(*(one(t) for t in rows))

    return lambda: (asyncio.run(main_chat()), tally.result())[1]


def _prep_httpx_api(module: Any, spec: dict) -> Callable[[], dict]:
    url, c, tally = spec["url"], spec["concurrency"], Tally()
    pacer = Pacer(spec.get("pace_rps"))
    rows = texts(spec)
    max_tokens = spec["max_tokens"]

    async def main() -> None:
        sem = asyncio.Semaphore(c)
        limits = module.Limits(max_connections=c, max_keepalive_connections=c)
        async with module.AsyncClient(limits=limits, timeout=120) as client:
            async def one(text: str) -> None:
                async with sem:
                    await pacer.wait()
                    t0 = time.perf_counter()
                    try:
                        r = await client.post(url + "/chat/completions",
                                              json=chat_body(text, max_tokens),
                                              headers={"Authorization": f"Bearer {API_KEY}"})
                        if r.status_code != 200:
                            tally.fail(f"HTTP {r.status_code}")
                            return
                        if r.json()["choices"][0]["message"]["content"]:
                            tally.ok += 1
                            tally.latencies.append(time.perf_counter() - t0)
                        else:
                            tally.fail("empty answer")
                    except Exception as exc:  # noqa: BLE001  a floor has no retries
                        tally.fail(exc)
            await asyncio.gather(*(one(t) for t in rows))

    return lambda: (asyncio.run(main()), tally.result())[1]


def prep_httpx(spec: dict) -> Callable[[], dict]:
    import httpx

    return _prep_httpx_api(httpx, spec)


def prep_httpx2(spec: dict) -> Callable[[], dict]:
    import httpx2

    return _prep_httpx_api(httpx2, spec)


# -- the OpenAI SDK --------------------------------------------------------------------------------


def _prep_openai(spec: dict, aiohttp_transport: bool) -> Callable[[], dict]:
    import openai
    from openai import AsyncOpenAI

    url, c, tally = spec["url"], spec["concurrency"], Tally()
    pacer = Pacer(spec.get("pace_rps"))
    rows = texts(spec)

    def client() -> AsyncOpenAI:
        kw: dict = {}
        if aiohttp_transport:
            kw["http_client"] = openai.DefaultAioHttpClient()
        return AsyncOpenAI(base_url=url, api_key=API_KEY, **kw)  # its defaults: 2 retries

    if spec["kind"] == "embedding":
        groups = chunks(rows, spec["pack"])
        dim = spec["embedding_dim"]

        async def main_embed() -> None:
            sem = asyncio.Semaphore(c)
            async with client() as oc:
                async def one(group: list[str]) -> None:
                    async with sem:
                        try:
                            r = await oc.embeddings.create(model=EMBED_MODEL, input=group)
                            good = sum(1 for d in r.data if len(d.embedding) == dim)
                            tally.ok += good
                            if good < len(group):
                                tally.fail("missing vectors", len(group) - good)
                        except Exception as exc:  # noqa: BLE001
                            tally.fail(exc, len(group))
                await asyncio.gather(*(one(g) for g in groups))

        return lambda: (asyncio.run(main_embed()), tally.result())[1]

    max_tokens = spec["max_tokens"]

    async def main() -> None:
        sem = asyncio.Semaphore(c)
        async with client() as oc:
            async def one(text: str) -> None:
                async with sem:
                    await pacer.wait()
                    t0 = time.perf_counter()
                    try:
                        r = await oc.chat.completions.create(
                            model=CHAT_MODEL, messages=[{"role": "user", "content": text}],
                            max_tokens=max_tokens)
                        if r.choices[0].message.content:
                            tally.ok += 1
                            tally.latencies.append(time.perf_counter() - t0)
                        else:
                            tally.fail("empty answer")
                    except Exception as exc:  # noqa: BLE001
                        tally.fail(exc)
            await asyncio.gather(*(one(t) for t in rows))

    return lambda: (asyncio.run(main()), tally.result(version=openai.__version__))[1]


def prep_openai(spec: dict) -> Callable[[], dict]:
    return _prep_openai(spec, aiohttp_transport=False)


def prep_openai_aiohttp(spec: dict) -> Callable[[], dict]:
    return _prep_openai(spec, aiohttp_transport=True)


# -- Baidu Qianfan SDK: ChatCompletion(version=2).batch_do ------------------------------------------


def prep_qianfan(spec: dict) -> Callable[[], dict]:
    # v2 (OpenAI-compatible) requests go to QIANFAN_CONSOLE_API_BASE_URL + CHAT_V2_API_ROUTE
    # (QIANFAN_BASE_URL is the v1 / OAuth host); the harness sets both to the simulator.
    import logging

    import qianfan

    logging.getLogger("qianfan").setLevel(logging.ERROR)
    qianfan.disable_log() if hasattr(qianfan, "disable_log") else None
    tally = Tally()
    kw: dict = {}
    if spec.get("rpm"):
        kw["request_per_minute"] = spec["rpm"]  # its own limiter (keeps a 10% buffer by default)
    if spec.get("tpm"):
        kw["token_per_minute"] = spec["tpm"]
    chat = qianfan.ChatCompletion(version=2, **kw)
    messages = [[{"role": "user", "content": t}] for t in texts(spec)]

    def run() -> dict:
        fut = chat.batch_do(messages_list=messages, worker_num=spec["concurrency"],
                            model=CHAT_MODEL, max_tokens=spec["max_tokens"])
        for r in fut.results():
            if isinstance(r, Exception):
                tally.fail(r)
                continue
            try:
                content = r.body["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                content = None
            if content:
                tally.ok += 1
                lat = (r.statistic or {}).get("total_latency")
                if lat is not None:
                    tally.latencies.append(float(lat))
            else:
                tally.fail("no answer in body")
        return tally.result(version=qianfan.__version__ if hasattr(qianfan, "__version__")
                            else None)

    return run


# -- LiteLLM: batch_completion, or its Router when a limit is given ---------------------------------


def prep_litellm(spec: dict) -> Callable[[], dict]:
    import logging

    import litellm

    litellm.suppress_debug_info = True
    logging.getLogger("LiteLLM").setLevel(logging.CRITICAL)
    logging.getLogger("LiteLLM Router").setLevel(logging.CRITICAL)
    tally = Tally()
    rows = texts(spec)
    version = _version("litellm")
    if spec.get("rpm") or spec.get("tpm"):
        # a limit is given: the Router is LiteLLM's way to hold a deployment to rpm / tpm
        from litellm import Router

        params = {"model": f"openai/{CHAT_MODEL}", "api_base": spec["url"], "api_key": API_KEY}
        if spec.get("rpm"):
            params["rpm"] = int(spec["rpm"])
        if spec.get("tpm"):
            params["tpm"] = int(spec["tpm"])
        router = Router(model_list=[{"model_name": CHAT_MODEL, "litellm_params": params}],
                        routing_strategy="usage-based-routing-v2")

        async def main() -> None:
            sem = asyncio.Semaphore(spec["concurrency"])

            async def one(text: str) -> None:
                async with sem:
                    t0 = time.perf_counter()
                    try:
                        r = await router.acompletion(
                            model=CHAT_MODEL, messages=[{"role": "user", "content": text}],
                            max_tokens=spec["max_tokens"])
                        if r.choices[0].message.content:
                            tally.ok += 1
                            tally.latencies.append(time.perf_counter() - t0)
                        else:
                            tally.fail("empty answer")
                    except Exception as exc:  # noqa: BLE001
                        tally.fail(exc)
            await asyncio.gather(*(one(t) for t in rows))

        return lambda: (asyncio.run(main()), tally.result(version=version, api="Router"))[1]

    messages = [[{"role": "user", "content": t}] for t in rows]

    def run() -> dict:
        results = litellm.batch_completion(
            model=f"openai/{CHAT_MODEL}", messages=messages, api_base=spec["url"],
            api_key=API_KEY, max_tokens=spec["max_tokens"], max_workers=spec["concurrency"])
        for r in results:
            if isinstance(r, Exception):
                tally.fail(r)
            elif r.choices and r.choices[0].message.content:
                tally.ok += 1
                ms = getattr(r, "_response_ms", None)
                if ms is not None:
                    tally.latencies.append(ms / 1000.0)
            else:
                tally.fail("empty answer")
        return tally.result(version=version, api="batch_completion")

    return run


# -- Bespoke Curator: online mode, OpenAI backend with a base URL -----------------------------------


def prep_curator(spec: dict) -> Callable[[], dict]:
    import logging

    from bespokelabs import curator

    for name in ("bespokelabs", "bespokelabs.curator", "curator"):
        logging.getLogger(name).setLevel(logging.ERROR)
    tally = Tally()
    backend: dict = {"base_url": spec["url"], "api_key": API_KEY,
                     "max_concurrent_requests": spec["concurrency"],
                     "require_all_responses": False}
    if spec.get("rpm"):
        backend["max_requests_per_minute"] = int(spec["rpm"])
    if spec.get("tpm"):
        backend["max_tokens_per_minute"] = int(spec["tpm"])
    if spec.get("unbounded"):
        # no server limit: the user lifts curator's own defaults so only concurrency binds
        backend.setdefault("max_requests_per_minute", 10**8)
        backend.setdefault("max_tokens_per_minute", 10**11)
    llm = curator.LLM(model_name=CHAT_MODEL, backend="openai",
                      generation_params={"max_tokens": spec["max_tokens"]},
                      backend_params=backend)
    rows = texts(spec)

    def run() -> dict:
        out = llm(rows)
        ds = out.dataset if hasattr(out, "dataset") else out
        answered = sum(1 for r in ds["response"] if r)
        tally.ok = answered
        if answered < len(rows):
            tally.fail("no response (curator dropped the row)", len(rows) - answered)
        return tally.result(version=_version("bespokelabs-curator"))

    return run


# -- LangChain: ChatOpenAI.abatch(max_concurrency=...) ---------------------------------------------


def prep_langchain(spec: dict) -> Callable[[], dict]:
    from langchain_openai import ChatOpenAI

    kw: dict = {}
    if spec.get("pace_rps"):
        from langchain_core.rate_limiters import InMemoryRateLimiter

        # LangChain's limiter counts requests only: it is given the binding limit in requests/s
        kw["rate_limiter"] = InMemoryRateLimiter(requests_per_second=spec["pace_rps"],
                                                 check_every_n_seconds=0.01)
    model = ChatOpenAI(model=CHAT_MODEL, base_url=spec["url"], api_key=API_KEY,
                       max_tokens=spec["max_tokens"], **kw)
    rows = texts(spec)
    tally = Tally()

    def run() -> dict:
        out = asyncio.run(model.abatch(rows, config={"max_concurrency": spec["concurrency"]},
                                       return_exceptions=True))
        for r in out:
            if isinstance(r, Exception):
                tally.fail(r)
            elif getattr(r, "content", None):
                tally.ok += 1
            else:
                tally.fail("empty answer")
        return tally.result(version=_version("langchain-openai"))

    return run


# -- batchmagic ------------------------------------------------------------------------------------


def prep_batchmagic(spec: dict) -> Callable[[], dict]:
    # not part of the timing: pandas, numpy, the dispatcher, and the HTTP client with aiohttp,
    # which the first run would import (the floors import theirs before the timing too)
    import aiohttp  # noqa: F401

    import batchmagic as bm
    import batchmagic._api  # noqa: F401
    import batchmagic.executors.online  # noqa: F401

    rows = texts(spec)
    kind = spec["kind"]
    journal = spec.get("journal", True)
    folder = tempfile.mkdtemp(prefix="bm-bench-journal-") if journal else None
    kw: dict = {"provider": "simulator", "base_url": spec["url"], "progress": False,
                "cache": folder if journal else False, "concurrency": spec.get("concurrency"),
                "rpm": spec.get("rpm"), "tpm": spec.get("tpm")}
    if kind == "embedding":
        kw.update(kind="embedding", model=EMBED_MODEL)
    else:
        kw.update(model=CHAT_MODEL, params={"max_tokens": spec["max_tokens"]})

    def run() -> dict:
        try:
            df = bm.batch(rows, **kw)
            facts = dict(df.attrs.get("batchmagic", {}))
            tally = Tally()
            errors = df["error"]
            tally.ok = int(errors.isna().sum())
            for err in errors.dropna():
                tally.fail(err)
            if kind != "embedding" and "latency" in df:
                tally.latencies = [float(x) for x in df["latency"].dropna()]
            extra: dict = {"facts": {k: facts.get(k) for k in (
                "ok", "failed", "retries", "rate_limited", "possibly_billed", "learned_rpm",
                "learned_tpm", "final_concurrency", "wall_s", "http_requests")},
                "version": bm.__version__ if hasattr(bm, "__version__") else None}
            if spec.get("measure_frame"):
                extra["df_bytes"] = int(df.memory_usage(deep=True).sum())
            if folder:
                extra["journal_bytes"] = sum(p.stat().st_size for p in os.scandir(folder)
                                             if p.is_file())
            return tally.result(**extra)
        finally:
            if folder:
                shutil.rmtree(folder, ignore_errors=True)

    return run


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001
        return None


PREP = {
    "aiohttp": prep_aiohttp,
    "httpx": prep_httpx,
    "httpx2": prep_httpx2,
    "openai": prep_openai,
    "openai-aiohttp": prep_openai_aiohttp,
    "qianfan": prep_qianfan,
    "litellm": prep_litellm,
    "curator": prep_curator,
    "langchain": prep_langchain,
    "batchmagic": prep_batchmagic,
}


def _bm_version() -> str | None:
    import batchmagic

    return getattr(batchmagic, "__version__", None) or _version("batchmagic")


VERSIONS: dict[str, Callable[[], str | None]] = {
    "aiohttp": lambda: _version("aiohttp"),
    "httpx": lambda: _version("httpx"),
    "httpx2": lambda: _version("httpx2"),
    "openai": lambda: _version("openai"),
    "openai-aiohttp": lambda: _version("openai"),
    "qianfan": lambda: _version("qianfan"),
    "litellm": lambda: _version("litellm"),
    "curator": lambda: _version("bespokelabs-curator"),
    "langchain": lambda: f"langchain-openai {_version('langchain-openai')}, openai "
                         f"{_version('openai')}",
    "batchmagic": _bm_version,
}


def _rss_now_mb() -> float | None:
    """The process's resident memory now (Linux), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        run = PREP[spec["contender"]](spec)
    except Exception as exc:  # noqa: BLE001  reported to the harness as "cannot run"
        print("SETUP-FAILED " + json.dumps({"error": f"{type(exc).__name__}: {exc}"[:400]}),
              flush=True)
        return
    print("READY " + json.dumps({"version": VERSIONS.get(spec["contender"], lambda: None)()}),
          flush=True)
    if sys.stdin.readline().strip() != "GO":
        return
    rss_before = _rss_now_mb()
    t_cpu, t0, started_at = time.process_time(), time.perf_counter(), time.time()
    out = run()
    out["started_at"] = started_at  # with the simulator's first request: time to first request
    out["wall"] = time.perf_counter() - t0
    out["cpu"] = time.process_time() - t_cpu
    out["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out["rss_before_mb"] = rss_before  # the interpreter, the libraries and the input, ready
    print("RESULT " + json.dumps(out, default=str), flush=True)
    sys.stdout.flush()
    os._exit(0)  # leftover library threads (executors, telemetry) must not hold the exit


if __name__ == "__main__":
    main()
