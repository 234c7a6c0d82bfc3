"""The driver's memory on a large ``executor="ray"`` run with ``output_path=``.

    python benchmarks/ray_memory.py                      # 100,000 and 300,000 rows
    python benchmarks/ray_memory.py --rows 1000000 --workers 4 --cpus 8

For each size: a Parquet file of that many short rows, answered by the simulator (no latency,
no call log) through ``executor="ray"`` into an ``output_path`` folder. The driver's resident
memory is sampled throughout; its peak is compared with what it was just before the run (after a
warm-up run, so imports and Ray's own client are already counted) and with the size of the data
(the Parquet input and the same rows as a pandas frame). Linux only (reads ``/proc/self``).
Needs ``batchmagic[ray]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

MB = 1024 * 1024


def rss() -> int:
    """This process's resident memory now, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """The highest resident memory seen while the block runs (sampled every 20 ms)."""

    def __enter__(self):
        self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def make_input(path: str, n: int) -> int:
    """Write ``n`` short rows to ``path`` in a child process (so that this one never holds
    them); return their size as a pandas frame."""
    code = ("import sys, pandas as pd; n = int(sys.argv[2]); "
            "f = pd.DataFrame({'text': [f'row {i}' for i in range(n)], 'n': range(n)}); "
            "f.to_parquet(sys.argv[1]); print(int(f.memory_usage(deep=True).sum()))")
    done = subprocess.run([sys.executable, "-c", code, path, str(n)], capture_output=True,
                          text=True, check=True)
    return int(done.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--block-rows", type=int, default=5_000)
    args = ap.parse_args()

    import pyarrow.parquet as pq
    import ray

    import batchmagic as bm
    from batchmagic.executors.ray import start_ray
    from batchmagic.simulator import SimulatorProcess

    start_ray(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    opts = {"workers": args.workers, "block_rows": args.block_rows}
    print(f"driver memory, executor='ray' with output_path=: {args.workers} workers, "
          f"{args.cpus} CPUs, concurrency {args.concurrency}, {args.block_rows:,} rows a block\n")
    print("| rows | Parquet input MB | as pandas MB | driver RSS before MB | driver peak MB "
          "| peak growth MB | rows written | wall s | rows/s |\n|---|---|---|---|---|---|---|---|---|",
          flush=True)
    with SimulatorProcess(latency=0.0, log_calls=False) as sim, \
            tempfile.TemporaryDirectory() as tmp:
        def go(n: int, name: str):
            src = os.path.join(tmp, f"{name}.parquet")
            in_memory = make_input(src, n)
            out_dir = os.path.join(tmp, f"{name}-out")
            before = rss()
            t0 = time.monotonic()
            with PeakRss() as peak:
                summary = bm.batch(src, "{text}", provider="simulator", base_url=sim.base_url,
                                   model="sim-chat", executor="ray", output_path=out_dir,
                                   ray_options=opts, concurrency=args.concurrency,
                                   progress=False, cache=False)
            wall = time.monotonic() - t0
            written = int(pq.ParquetDataset(out_dir).read(columns=["_bm_key"]).num_rows) \
                if n <= 300_000 else int(summary["written"].sum())  # counting costs memory too
            return (os.path.getsize(src), in_memory, before, peak.peak, written, wall,
                    int(summary["failed"].sum()))

        go(2_000, "warmup")  # imports, Ray Data's operators and the workers' code, once
        for n in args.rows:
            size, in_memory, before, peak, written, wall, failed = go(n, f"rows{n}")
            note = f" ({failed} failed)" if failed else ""
            print(f"| {n:,} | {size / MB:.1f} | {in_memory / MB:.1f} | {before / MB:.0f} "
                  f"| {peak / MB:.0f} | {(peak - before) / MB:+.0f} | {written:,}{note} "
                  f"| {wall:.0f} | {n / wall:,.0f} |", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
