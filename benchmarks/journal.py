"""What the journal costs: the same run with ``cache=False`` and with the journal on, side by side.

    python benchmarks/journal.py               # 100,000 chat rows, simulator at zero latency
    python benchmarks/journal.py --quick       # 2,000 rows, to keep the harness working

Each run is a fresh process and a fresh journal; the two modes are interleaved and repeated.
Reported: wall time, rows/s, and the journal's share of wall time (1 - without / with).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import json, sys, time
import batchmagic._api  # imports are not part of the measurement
import batchmagic as bm
n, url, cache = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = [f"journal benchmark row {i}" for i in range(n)]
t = time.perf_counter()
df = bm.batch(rows, provider="simulator", base_url=url, model="m", concurrency=256,
              params={"max_tokens": 16}, progress=False, cache=False if cache == "off" else cache)
wall = time.perf_counter() - t
print(json.dumps({"wall": wall, "ok": int(df["error"].isna().sum())}))
"""


def one(n: int, url: str, journal: bool) -> dict:
    cache = tempfile.mkdtemp(prefix="bm-journal-") if journal else "off"
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), url, cache], capture_output=True,
                         text=True, check=True, timeout=1800)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if journal:
        r["journal_bytes"] = sum(p.stat().st_size for p in Path(cache).iterdir())
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    if args.quick:
        args.n, args.repeats = 2000, 1
    sys.path.insert(0, str(HERE.parent))
    from batchmagic.simulator import SimulatorProcess

    runs: dict[str, list[dict]] = {"off": [], "on": []}
    with SimulatorProcess(log_calls=False) as sim:
        for rep in range(args.repeats):
            for mode in ("off", "on"):
                r = one(args.n, sim.base_url, mode == "on")
                runs[mode].append(r)
                print(f"  [{rep + 1}] journal {mode:3s}: {r['wall']:7.2f} s, "
                      f"{args.n / r['wall']:7.0f} rows/s, ok {r['ok']}", file=sys.stderr)
    off = statistics.median(r["wall"] for r in runs["off"])
    on = statistics.median(r["wall"] for r in runs["on"])
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "rows": args.n, "repeats": args.repeats,
        "wall_without": off, "wall_with": on,
        "rows_per_s_without": args.n / off, "rows_per_s_with": args.n / on,
        "journal_share": 1 - off / on,
        "journal_bytes": runs["on"][-1]["journal_bytes"],
        "runs": runs,
    }
    table = (
        f"Journal overhead, {report['date']}, {report['machine']}: {args.n:,} chat rows against "
        f"the simulator (zero latency, 256 in flight), median of {args.repeats}.\n\n"
        "| journal | wall | rows/s |\n|---|---|---|\n"
        f"| off (`cache=False`) | {off:.1f} s | {args.n / off:,.0f} |\n"
        f"| on (default) | {on:.1f} s | {args.n / on:,.0f} |\n\n"
        f"The journal's share of wall time: {report['journal_share'] * 100:.1f}% "
        f"({report['journal_bytes'] / 1e6:.1f} MB on disk).\n"
    )
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "journal.json").write_text(json.dumps(report, indent=2))
    (out / "journal.md").write_text(table)


if __name__ == "__main__":
    main()
