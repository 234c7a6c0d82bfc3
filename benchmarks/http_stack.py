"""HTTP client cost at high concurrency: raw aiohttp, raw httpx, httpx2, and bm.batch.

    python benchmarks/http_stack.py              # 4,000 chat requests, 100 ms latency, 200 in flight
    python benchmarks/http_stack.py --quick      # a few hundred requests: keeps the harness working

The simulator runs in its own process on 127.0.0.1. Each contender runs in a fresh subprocess,
interleaved and repeated; wall time and the client process's CPU time (all threads) are measured.
Ratios are computed within this one run. A second scenario checks rate-limit learning: the server
allows 1,200 requests/minute, bm.batch is given no limit, 400 rows; the ideal is 400 / 20 per s.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONTENDERS = ["aiohttp", "httpx", "httpx2", "bm.batch", "bm.batch[httpx2]"]


# -- one contender, in its own process -----------------------------------------------------------


def _body(i: int) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": f"request {i}"}],
                       "max_tokens": 16}).encode()


async def _raw_aiohttp(url: str, n: int, c: int) -> int:
    import aiohttp
    import orjson

    sem = asyncio.Semaphore(c)
    ok = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as session:
        async def one(i: int) -> None:
            nonlocal ok
            async with sem:
                async with session.post(url + "/chat/completions", data=_body(i),
                                        headers={"Content-Type": "application/json"}) as r:
                    payload = orjson.loads(await r.read())
                    ok += r.status == 200 and bool(payload["choices"])
        await asyncio.gather(*(one(i) for i in range(n)))
    return ok


async def _raw_httpx(module, url: str, n: int, c: int) -> int:
    sem = asyncio.Semaphore(c)
    ok = 0
    limits = module.Limits(max_connections=c, max_keepalive_connections=c)
    async with module.AsyncClient(limits=limits, timeout=60) as client:
        async def one(i: int) -> None:
            nonlocal ok
            async with sem:
                r = await client.post(url + "/chat/completions", content=_body(i),
                                      headers={"Content-Type": "application/json"})
                ok += r.status_code == 200 and bool(r.json()["choices"])
        await asyncio.gather(*(one(i) for i in range(n)))
    return ok


def _bm(url: str, n: int, c: int | None, http: str) -> int:
    import batchmagic as bm

    df = bm.batch([f"request {i}" for i in range(n)], provider="simulator", base_url=url,
                  model="m", params={"max_tokens": 16}, concurrency=c, http=http, progress=False)
    return int(df["error"].isna().sum())


def run_one(name: str, url: str, n: int, c: int | None) -> dict:
    # imports are not part of the measurement: load every contender's modules first
    import aiohttp  # noqa: F401
    import orjson  # noqa: F401

    if name.startswith("bm.batch"):
        import batchmagic._api  # noqa: F401  (pandas, numpy, the dispatcher)
    if "httpx2" in name:
        import httpx2  # noqa: F401
    if name == "httpx":
        import httpx  # noqa: F401
    t_cpu, t0 = time.process_time(), time.perf_counter()
    if name == "aiohttp":
        ok = asyncio.run(_raw_aiohttp(url, n, c))
    elif name == "httpx":
        import httpx

        ok = asyncio.run(_raw_httpx(httpx, url, n, c))
    elif name == "httpx2":
        import httpx2

        ok = asyncio.run(_raw_httpx(httpx2, url, n, c))
    elif name == "bm.batch":
        ok = _bm(url, n, c, "aiohttp")
    elif name == "bm.batch[httpx2]":
        ok = _bm(url, n, c, "httpx2")
    else:
        raise SystemExit(f"unknown contender {name}")
    return {"name": name, "wall": time.perf_counter() - t0, "cpu": time.process_time() - t_cpu,
            "ok": ok, "n": n}


def _spawn(name: str, url: str, n: int, c: int | None, timeout: float) -> dict:
    import tempfile

    args = [sys.executable, __file__, "--one", name, "--url", url, "-n", str(n)]
    if c:
        args += ["-c", str(c)]
    # bm.batch runs as a user would, journal on, but each run starts from an empty journal
    env = dict(os.environ, BATCHMAGIC_JOURNAL_DIR=tempfile.mkdtemp(prefix="bm-bench-"))
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=True,
                             env=env)
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timed out after {timeout:.0f} s"}
    except subprocess.CalledProcessError as exc:
        return {"name": name, "error": exc.stderr.strip().splitlines()[-1] if exc.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the suite -----------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("-n", type=int, default=4000)
    p.add_argument("-c", type=int, default=200)
    p.add_argument("--latency", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    p.add_argument("--skip", action="append", default=[], help="leave out a contender")
    p.add_argument("--no-ratelimit", action="store_true", help="skip the rate-limit scenario")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.url, args.n, args.c)))
        return
    if args.quick:
        args.n, args.repeats = 400, 1
    sys.path.insert(0, str(HERE.parent))
    from batchmagic.simulator import SimulatorProcess

    ideal = args.n * args.latency / args.c
    contenders = [c for c in CONTENDERS if c not in args.skip]
    runs: dict[str, list[dict]] = {c: [] for c in contenders}
    failures: dict[str, str] = {}
    print(f"{args.n} requests, {args.latency * 1000:.0f} ms latency, {args.c} in flight "
          f"(ideal {ideal:.2f} s); {args.repeats} repeats, interleaved", file=sys.stderr)
    with SimulatorProcess(latency=args.latency, log_calls=False) as sim:
        for rep in range(args.repeats):
            for name in contenders:
                if name in failures:
                    continue
                r = _spawn(name, sim.base_url, args.n, args.c, timeout=max(120, ideal * 60))
                if "error" in r:
                    failures[name] = r["error"]
                    print(f"  {name}: {r['error']}", file=sys.stderr)
                    continue
                runs[name].append(r)
                print(f"  [{rep + 1}] {name:18s} wall {r['wall']:6.2f} s  cpu {r['cpu']:6.2f} s  "
                      f"ok {r['ok']}/{r['n']}", file=sys.stderr)

    rows = []
    floor = statistics.median(r["wall"] for r in runs["aiohttp"]) if runs.get("aiohttp") else None
    for name in contenders:
        rs = runs[name]
        if not rs:
            rows.append({"name": name, "error": failures.get(name, "no runs")})
            continue
        walls = sorted(r["wall"] for r in rs)
        cpus = [r["cpu"] for r in rs]
        med = statistics.median(walls)
        rows.append({
            "name": name, "wall_min": walls[0], "wall_median": med, "wall_max": walls[-1],
            "cpu_us_per_request": statistics.median(cpus) / args.n * 1e6,
            "x_ideal": med / ideal, "x_aiohttp": med / floor if floor else None,
            "ok": min(r["ok"] for r in rs), "n": args.n,
        })

    ratelimit = None if args.no_ratelimit or args.quick else rate_limit_scenario()
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "n": args.n, "latency": args.latency, "concurrency": args.c, "ideal_s": ideal,
        "repeats": args.repeats, "results": rows, "rate_limit": ratelimit,
    }
    table = markdown(report)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "http_stack.json").write_text(json.dumps(report, indent=2))
    (out / "http_stack.md").write_text(table)


def rate_limit_scenario(n: int = 400, rpm: int = 1200) -> dict:
    """The server allows ``rpm``; bm.batch is given no limit and learns it from the headers."""
    from batchmagic.simulator import SimulatorProcess

    with SimulatorProcess(latency=0.1, rpm=rpm) as sim:
        code = ("import batchmagic as bm, json, time\n"
                "t = time.perf_counter()\n"
                f"df = bm.batch([f'r {{i}}' for i in range({n})], provider='simulator', "
                f"base_url={sim.base_url!r}, model='m', progress=False)\n"
                "a = df.attrs['batchmagic']\n"
                "print(json.dumps({'wall': time.perf_counter() - t, 'failed': a['failed'], "
                "'rate_limited': a['rate_limited'], 'learned_rpm': a['learned_rpm']}))")
        import tempfile

        env = dict(os.environ, BATCHMAGIC_JOURNAL_DIR=tempfile.mkdtemp(prefix="bm-bench-"))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=300, check=True, env=env)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        stats = sim.stats()
    burst = rpm / 60  # the server's bucket starts full with one second's worth
    ideal = (n - burst) / (rpm / 60)
    r.update(n=n, rpm=rpm, ideal_s=ideal, x_ideal=r["wall"] / ideal,
             server_429s=stats.get("by_status", {}).get("429", 0))
    print(f"  rate limit: {n} rows at {rpm}/min: wall {r['wall']:.2f} s = {r['x_ideal']:.3f}x ideal "
          f"{ideal:.1f} s, {r['failed']} failed, {r['server_429s']} 429s", file=sys.stderr)
    return r


def markdown(report: dict) -> str:
    lines = [
        f"HTTP stack, {report['date']}, {report['machine']}: {report['n']} chat requests, "
        f"{report['latency'] * 1000:.0f} ms simulated latency, {report['concurrency']} in flight, "
        f"ideal {report['ideal_s']:.2f} s, median of {report['repeats']}.",
        "",
        "| client | wall median (min-max) | x ideal | x raw aiohttp | client CPU / request |",
        "|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error']} | | | |")
            continue
        xa = f"{r['x_aiohttp']:.2f}" if r["x_aiohttp"] else "-"
        lines.append(
            f"| {r['name']} | {r['wall_median']:.2f} s ({r['wall_min']:.2f}-{r['wall_max']:.2f}) "
            f"| {r['x_ideal']:.2f} | {xa} | {r['cpu_us_per_request']:.0f} µs |")
    rl = report.get("rate_limit")
    if rl:
        lines += ["", f"Rate limit learned from headers: {rl['n']} rows, server limit {rl['rpm']}/min, "
                      f"no limit given: {rl['wall']:.2f} s = {rl['x_ideal']:.2f}x the ideal "
                      f"{rl['ideal_s']:.1f} s, {rl['failed']} failed rows, {rl['server_429s']} "
                      "429s answered by the server (all retried)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
