"""W10 cluster: the same rows, server limit and fault mix through batchmagic ``executor="ray"``,
Ray Data LLM's HTTP processor and a single-process ``bm.batch``, on a local Ray cluster.

    python benchmarks/ray_cluster.py                 # 600 rows, 1,200 requests/minute, 2 workers
    python benchmarks/ray_cluster.py --rows 3000 --rpm 6000 --cpus 8 --workers 4

The simulator states its limit in rate headers and fails 2 % of first attempts with a 500.
Ray Data LLM gets ``qps`` = limit / workers per worker, as its docs say to share a limit, with
its default ``max_retries=0`` and with ``max_retries=3``. Reported per contender: rows failed
(all of them when the job raised), 429s the server sent, the steady rate reached (after the
first second's burst) as a share of the limit, and wall time (cluster start excluded; worker
start included). Needs ``batchmagic[ray]``.
"""

from __future__ import annotations

import argparse
import collections
import re
import time


def _rate(calls: list[dict], rpm: float) -> float:
    ok = sorted(c["t"] for c in calls if c["status"] == 200)
    steady = [t for t in ok if t >= ok[0] + 1.0] if ok else []
    if len(steady) < 3:
        return 0.0
    return (len(steady) - 1) / (steady[-1] - steady[0]) * 60 / rpm


def _batchmagic(sim, df, workers: int | None) -> tuple[int, str]:
    import batchmagic as bm

    kw = {"executor": "ray", "ray_options": {"workers": workers}} if workers else {}
    out = bm.batch(df, "{text}", provider="simulator", base_url=sim.base_url, model="sim-chat",
                   progress=False, cache=False, **kw)
    return int(out["error"].notna().sum()), ""


def _ray_data_llm(sim, df, workers: int, rpm: float, retries: int) -> tuple[int, str]:
    import ray.data
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    config = HttpRequestProcessorConfig(
        url=sim.base_url + "/chat/completions", headers={"Authorization": "Bearer unused"},
        qps=max(1, int(rpm / 60 / workers)), concurrency=workers, batch_size=64,
        max_retries=retries)
    processor = build_processor(
        config,
        preprocess=lambda row: {"payload": {"model": "sim-chat", "messages": [
            {"role": "user", "content": row["text"]}]}},
        postprocess=lambda row: {"answer": str(row.get("http_response"))[:40]})
    try:
        out = processor(ray.data.from_pandas(df)).to_pandas()
    except Exception as exc:  # one row out of retries fails the job
        why = re.search(r"Previous Exception: ([^.]+)", str(exc))
        return len(df), f"the job raised ({why.group(1) if why else type(exc).__name__})"
    return len(df) - len(out), ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--rpm", type=float, default=1200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--fault-500", type=float, default=0.02)
    args = ap.parse_args()

    import pandas as pd
    import ray

    from batchmagic.executors.ray import start_ray
    from batchmagic.simulator import SimulatorProcess

    start_ray(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    df = pd.DataFrame({"text": [f"w10 row {i}" for i in range(args.rows)]})
    contenders = [
        ("batchmagic executor='ray'", lambda s: _batchmagic(s, df, args.workers)),
        ("Ray Data LLM, max_retries=0", lambda s: _ray_data_llm(s, df, args.workers, args.rpm, 0)),
        ("Ray Data LLM, max_retries=3", lambda s: _ray_data_llm(s, df, args.workers, args.rpm, 3)),
        ("bm.batch, one process", lambda s: _batchmagic(s, df, None)),
    ]
    print(f"W10 cluster: {args.rows} rows, server limit {args.rpm:g} requests/minute (stated in "
          f"headers), 500 on {args.fault_500:.0%} of first attempts, {args.workers} workers, "
          f"{args.cpus} CPUs\n")
    print("| contender | rows failed | 429s | limit reached | wall s | note |\n|---|---|---|---|---|---|")
    with SimulatorProcess(latency=0.05, rpm=args.rpm, faults={"500": args.fault_500},
                          fault_attempts=1) as sim:
        for name, go in contenders:
            sim.reset()
            t0 = time.monotonic()
            failed, note = go(sim)
            wall = time.monotonic() - t0
            calls = sim.calls()
            statuses = collections.Counter(c["status"] for c in calls)
            print(f"| {name} | {failed} | {statuses.get(429, 0)} | {_rate(calls, args.rpm):.0%} "
                  f"| {wall:.1f} | {note} |", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
