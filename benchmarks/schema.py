"""What schema= costs the client: the same run with and without a schema, side by side.

    python benchmarks/schema.py               # 20,000 chat rows, simulator at zero latency
    python benchmarks/schema.py --quick       # 1,000 rows, to keep the harness working

The simulator answers JSON valid for the schema (a pydantic model with a Literal, an integer and a
list). Both modes send the same request bytes (the run without schema= passes the same
``response_format`` in params) and get the same answers, so the difference is the client's own
schema work: parsing, validating, the extra columns. Each run is a fresh process (no journal, so the
measure is planning, sending, parsing, validating and the frame); the two modes are interleaved
and repeated. Reported: client CPU per row (user + system time of the client process, which
includes its HTTP work) and the ratio with / without; the target is under 1.10.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import json, resource, sys, time
from typing import Literal
from pydantic import BaseModel
import batchmagic._api  # imports are not part of the measurement
import batchmagic as bm

class Label(BaseModel):
    sentiment: Literal["positive", "negative", "mixed"]
    stars: int
    aspects: list[str]

n, url, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = [f"schema benchmark review {i}: the battery is fine, the screen is dim" for i in range(n)]
params = {"max_tokens": 200, "temperature": 0}
schema = None
if mode == "schema":
    schema = Label
else:  # the same request bytes and the same answers: only the client's schema work differs
    from batchmagic._schema import schema_for
    params["response_format"] = schema_for(Label).response_format("json_schema")
before = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
df = bm.batch(rows, provider="simulator", base_url=url, model="m", concurrency=256,
              params=params, progress=False, cache=False, schema=schema)
wall = time.perf_counter() - t
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
print(json.dumps({"wall": wall, "cpu": cpu, "ok": int(df["error"].isna().sum())}))
"""


def one(n: int, url: str, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), url, mode], capture_output=True,
                         text=True, check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    if args.quick:
        args.n, args.repeats = 1000, 1
    sys.path.insert(0, str(HERE.parent))
    from batchmagic.simulator import SimulatorProcess

    runs: dict[str, list[dict]] = {"plain": [], "schema": []}
    with SimulatorProcess() as sim:
        for k in range(args.repeats):
            order = ("plain", "schema") if k % 2 == 0 else ("schema", "plain")  # no order bias
            for mode in order:
                sim.reset()  # the call log starts empty for each run
                r = one(args.n, sim.base_url, mode)
                assert r["ok"] == args.n, r
                runs[mode].append(r)
    per_row = {m: statistics.median(r["cpu"] for r in rs) / args.n * 1e6 for m, rs in runs.items()}
    ratio = per_row["schema"] / per_row["plain"]
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.python_version()}, "
                   f"{__import__('os').cpu_count()} cores",
        "rows": args.n, "repeats": args.repeats,
        "cpu_us_per_row": per_row, "ratio": ratio,
        "wall_s": {m: statistics.median(r["wall"] for r in rs) for m, rs in runs.items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "schema.json").write_text(json.dumps(report, indent=2))
    print(f"{args.n:,} rows, median of {args.repeats}: client CPU per row "
          f"{per_row['plain']:.0f} us without schema=, {per_row['schema']:.0f} us with "
          f"(x{ratio:.2f}; target under x1.10)")


if __name__ == "__main__":
    main()
