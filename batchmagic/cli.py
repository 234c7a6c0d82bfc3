"""The ``batchmagic`` command.

    batchmagic demo                 label the bundled reviews with a small model on this machine
                                    (llama.cpp + SmolLM2-135M; no key, no network; --simulator
                                    uses the bundled OpenAI-compatible simulator instead)
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


DEMO_PROMPT = ("Classify the sentiment of this review as positive, negative or mixed. "
               "Answer with one word.\n\nReview: {text}")


def _demo(args: argparse.Namespace) -> int:
    import pandas as pd

    import batchmagic as bm

    with resources.files("batchmagic").joinpath("data/reviews.csv").open("r", encoding="utf-8") as fh:
        reviews = pd.read_csv(fh)
    sim = None
    engine = args.engine
    if not args.simulator and engine is None:  # the local model when it is installed
        from batchmagic import engines

        try:
            engines.resolve("llama.cpp", args.model, "chat")
            engine = "llama.cpp"
        except bm.ConfigError as exc:
            print(f"batchmagic demo: no local model ({exc}); using the simulator instead",
                  file=sys.stderr)
            args.simulator = True
    if args.simulator:
        from batchmagic.simulator import SimulatorThread

        print(f"batchmagic demo: {len(reviews)} reviews -> the local simulator (an OpenAI-compatible "
              "server on 127.0.0.1; no API key, no network)", file=sys.stderr)
        sim = SimulatorThread(latency=args.latency, latency_dist="uniform",
                              latency_jitter=args.latency / 2).start()
        where = dict(model="sim-chat", provider="simulator", base_url=sim.base_url)
    else:
        from batchmagic.engines._models import DEFAULT_MODEL_NAME

        model = args.model or DEFAULT_MODEL_NAME
        print(f"batchmagic demo: {len(reviews)} reviews -> {model} on this machine "
              f"(engine={engine}; no API key, no network)", file=sys.stderr)
        where = dict(model=args.model, engine=engine)
    try:
        out = bm.batch(reviews, DEMO_PROMPT, params={"max_tokens": 8, "temperature": 0},
                       progress=not args.quiet, cache=not args.no_cache, **where)
    finally:
        if sim is not None:
            sim.stop()
    with pd.option_context("display.max_colwidth", 60, "display.width", 160):
        print(out[["id", "text", "output", "finish_reason", "input_tokens", "output_tokens",
                   "latency"]].to_string(index=False))
    facts = out.attrs["batchmagic"]
    rate = ""
    if facts.get("wall_s") and facts.get("output_tokens"):
        rate = f", {facts['output_tokens'] / facts['wall_s']:.0f} output tokens/s"
    print(f"\n{facts['ok']} ok, {facts['failed']} failed, {facts['requests']} requests in "
          f"{facts['wall_s']:.2f} s{rate} (run {facts['run_id']}"
          f"{', answered from the journal' if facts.get('cached') else ''})")
    if not args.simulator and args.model is None:
        print("SmolLM2-135M is a tiny model: this shows the machinery (order, usage, errors, "
              "resume), not a good classifier. Pass --model path/to/model.gguf for a bigger one.",
              file=sys.stderr)
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
        base_url=args.base_url, engine=args.engine, system=args.system, params=params or None,
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

    demo = sub.add_parser("demo", help="label the bundled reviews with a small local model")
    demo.add_argument("--engine", choices=["llama.cpp", "transformers"],
                      help="the offline engine (default: llama.cpp with the bundled SmolLM2-135M "
                           "when installed, else the simulator)")
    demo.add_argument("--model", help="a .gguf file (or model folder for transformers)")
    demo.add_argument("--simulator", action="store_true",
                      help="use the bundled OpenAI-compatible simulator instead of a model")
    demo.add_argument("--latency", type=float, default=0.2,
                      help="simulated seconds per answer (with --simulator)")
    demo.add_argument("--no-cache", action="store_true", help="do not answer from the journal")
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
    run.add_argument("--engine", help="run offline: llama.cpp, transformers, vllm, fastdeploy")
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
