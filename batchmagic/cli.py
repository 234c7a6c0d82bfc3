"""The ``batchmagic`` command.

    batchmagic demo                 label the bundled reviews with the local simulator (no key, no network)
    batchmagic run FILE -p PROMPT   run a CSV / JSONL / Parquet file through a model, write the result
    batchmagic simulator [...]      serve the OpenAI-compatible simulator (same flags as python -m batchmagic.simulator)
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources


def _read_table(path: str):
    import pandas as pd

    lower = path.lower()
    if lower.endswith((".jsonl", ".ndjson")):
        return pd.read_json(path, lines=True)
    if lower.endswith(".json"):
        return pd.read_json(path)
    if lower.endswith(".parquet"):
        return pd.read_parquet(path)
    return pd.read_csv(path)


def _write_table(df, path: str) -> None:
    out = df.copy()
    out["error"] = [None if e is None else f"{type(e).__name__}: {e}" for e in out["error"]]
    lower = path.lower()
    if lower.endswith((".jsonl", ".ndjson")):
        out.to_json(path, orient="records", lines=True, force_ascii=False, default_handler=str)
    elif lower.endswith(".parquet"):
        out.to_parquet(path)
    else:
        out.to_csv(path, index=False)


def _demo(args: argparse.Namespace) -> int:
    import pandas as pd

    import batchmagic as bm
    from batchmagic.simulator import SimulatorThread

    with resources.files("batchmagic").joinpath("data/reviews.csv").open("r", encoding="utf-8") as fh:
        reviews = pd.read_csv(fh)
    print(f"batchmagic demo: {len(reviews)} reviews -> the local simulator (an OpenAI-compatible "
          "server on 127.0.0.1; no API key, no network)", file=sys.stderr)
    sim = SimulatorThread(latency=args.latency, latency_dist="uniform",
                          latency_jitter=args.latency / 2).start()
    try:
        out = bm.batch(
            reviews, "Classify the sentiment of this review as positive, negative or mixed: {text}",
            model="sim-chat", provider="simulator", base_url=sim.base_url,
            params={"max_tokens": 24, "temperature": 0}, progress=not args.quiet,
        )
    finally:
        sim.stop()
    with pd.option_context("display.max_colwidth", 60, "display.width", 160):
        print(out[["id", "text", "output", "finish_reason", "input_tokens", "output_tokens",
                   "latency"]].to_string(index=False))
    facts = out.attrs["batchmagic"]
    print(f"\n{facts['ok']} ok, {facts['failed']} failed, {facts['requests']} requests in "
          f"{facts['wall_s']:.2f} s (run {facts['run_id']})")
    if args.output:
        _write_table(out, args.output)
        print(f"wrote {args.output}")
    return 0 if facts["failed"] == 0 else 1


def _run(args: argparse.Namespace) -> int:
    import json

    import batchmagic as bm

    df = _read_table(args.input)
    params = json.loads(args.params) if args.params else {}
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        params["temperature"] = args.temperature
    out = bm.batch(
        df, args.prompt, kind=args.kind, model=args.model, provider=args.provider,
        base_url=args.base_url, system=args.system, params=params or None,
        concurrency=args.concurrency, rpm=args.rpm, tpm=args.tpm, progress=not args.quiet,
    )
    _write_table(out, args.output)
    facts = out.attrs["batchmagic"]
    print(f"wrote {args.output}: {facts['ok']} ok, {facts['failed']} failed", file=sys.stderr)
    return 0 if facts["failed"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulator"]:
        from batchmagic.simulator.__main__ import main as sim_main

        return sim_main(argv[1:]) or 0
    parser = argparse.ArgumentParser(prog="batchmagic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="label the bundled reviews against the local simulator")
    demo.add_argument("--latency", type=float, default=0.2, help="simulated seconds per answer")
    demo.add_argument("-o", "--output", help="also write the result (csv, jsonl or parquet)")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(fn=_demo)

    run = sub.add_parser("run", help="run a CSV / JSONL / Parquet file through a model")
    run.add_argument("input", help="a .csv, .jsonl or .parquet file")
    run.add_argument("-p", "--prompt", required=True, help="template over the columns, e.g. 'Summarise: {text}'")
    run.add_argument("-o", "--output", required=True, help="where to write the result")
    run.add_argument("-k", "--kind", default="chat", choices=["chat", "completion", "embedding", "image"])
    run.add_argument("-m", "--model")
    run.add_argument("--provider")
    run.add_argument("--base-url")
    run.add_argument("--system")
    run.add_argument("--params", help="JSON object of generation parameters")
    run.add_argument("--max-tokens", type=int)
    run.add_argument("--temperature", type=float)
    run.add_argument("-c", "--concurrency", type=int)
    run.add_argument("--rpm", type=float)
    run.add_argument("--tpm", type=float)
    run.add_argument("-q", "--quiet", action="store_true")
    run.set_defaults(fn=_run)

    sub.add_parser("simulator", help="serve the simulator (see: batchmagic simulator --help)")
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from batchmagic import BatchError

        if isinstance(exc, BatchError):
            print(f"batchmagic: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
