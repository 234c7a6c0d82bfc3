"""The ``batchmagic`` command.

    batchmagic demo                 label the bundled reviews with a small model on this machine
                                    (llama.cpp + SmolLM2-135M; no key, no network; --simulator
                                    uses the bundled OpenAI-compatible simulator instead)
    batchmagic run FILE -p PROMPT   run a CSV / JSONL / Parquet file through a model, write the result
                                    (--mode batch-api: through the provider's Batch API)
    batchmagic jobs create|list|status|cancel|results|resubmit
                                    provider Batch API jobs (recorded in the journal)
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
        mode=args.mode, batch_options=_batch_options(args) if args.mode == "batch-api" else None,
    )
    _write_table(out, args.output)
    facts = out.attrs["batchmagic"]
    print(f"wrote {args.output}: {facts['ok']} ok, {facts['failed']} failed", file=sys.stderr)
    return 0 if facts["failed"] == 0 else 1


# -- batchmagic jobs -------------------------------------------------------------------------------


def _batch_options(args: argparse.Namespace) -> dict | None:
    import json

    options: dict = {}
    for item in getattr(args, "option", None) or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"batchmagic: --option takes KEY=VALUE, got {item!r}")
        try:
            options[name.strip()] = json.loads(value)  # numbers and booleans
        except ValueError:
            options[name.strip()] = value
    if getattr(args, "completion_window", None):
        options["completion_window"] = args.completion_window
    return options or None


def _add_batch_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--completion-window", help="e.g. 24h (DashScope: up to 336h; Ark: 1d-28d)")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="a Batch API option (repeatable): poll_interval, max_requests, "
                             "bucket (Ark), model_version (Ark), ...")


def _add_jobs_parser(sub) -> None:
    jobs = sub.add_parser("jobs", help="provider Batch API jobs: create, list, status, cancel, "
                                       "results, resubmit")
    jobs.add_argument("--cache", help="the journal folder (default: .batchmagic or "
                                      "BATCHMAGIC_JOURNAL_DIR)")
    verbs = jobs.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="send a file of rows or requests as a Batch API job")
    create.add_argument("--input", required=True,
                        help="a .jsonl of batch request lines ({custom_id, body}), or a "
                             ".csv / .jsonl / .parquet table with --prompt")
    create.add_argument("-p", "--prompt", help="template over the table's columns")
    create.add_argument("--provider")
    create.add_argument("--base-url")
    create.add_argument("-m", "--model")
    create.add_argument("-k", "--kind", default="chat", choices=["chat", "completion", "embedding"])
    create.add_argument("--system")
    create.add_argument("--max-tokens", type=int)
    create.add_argument("--wait", action="store_true", help="wait for the job and its results")
    create.add_argument("-o", "--output", help="with --wait: write the results here")
    create.add_argument("-q", "--quiet", action="store_true")
    _add_batch_flags(create)
    verbs.add_parser("list", help="the jobs in the journal, oldest first")
    for verb, text in (("status", "the provider's status and request counts"),
                       ("cancel", "cancel at the provider (finished rows are kept)"),
                       ("resubmit", "send the rows a finished job left unanswered as a new job")):
        cmd = verbs.add_parser(verb, help=text)
        cmd.add_argument("id", help="a job id (a unique prefix is enough)")
    results = verbs.add_parser("results", help="wait for a job and write its rows")
    results.add_argument("id")
    results.add_argument("-o", "--output", required=True, help="a .jsonl, .csv or .parquet file")
    results.add_argument("--no-wait", action="store_true",
                         help="write what the journal has now instead of waiting")
    results.add_argument("-q", "--quiet", action="store_true")
    jobs.set_defaults(fn=_jobs)


def _jobs(args: argparse.Namespace) -> int:
    from batchmagic.batchapi import _handle

    cache = args.cache or True
    if args.verb == "create":
        return _jobs_create(args, cache)
    if args.verb == "list":
        found = _handle.jobs(cache, None)
        if not found:
            print("no Batch API jobs in the journal")
        for job in found:
            print(repr(job))
        return 0
    job = _handle.job(args.id, cache)
    if args.verb == "status":
        status = job.status()
        print(status)
        for b in status.batches:
            line = (f"  batch {b['batch_id'] or '(not created)'}: {b['status'] or '-'}, "
                    f"{b['completed']}/{b['requests']} done, {b['failed']} failed")
            print(line + (f" ({b['message']})" if b["message"] else ""))
        return 0
    if args.verb == "cancel":
        job.cancel()
        print(job.status())
        return 0
    if args.verb == "resubmit":
        new = job.resubmit()
        print(f"resubmitted as job {new.id}")
        return 0
    frame = job.frame if args.no_wait else job.wait(progress=not args.quiet)
    _write_results(frame, args.output)
    return 0


def _jobs_create(args: argparse.Namespace, cache) -> int:
    from batchmagic import _api
    from batchmagic.batchapi._files import read_request_lines, validate_lines
    from batchmagic.batchapi._handle import BatchJob

    kwargs = dict(kind=args.kind, model=args.model, provider=args.provider,
                  base_url=args.base_url, system=args.system, mode="batch-api",
                  progress=not args.quiet, batch_options=_batch_options(args), cache=cache)
    if args.max_tokens is not None:
        kwargs["params"] = {"max_tokens": args.max_tokens}
    ids = None
    if args.prompt is None and args.input.lower().endswith((".jsonl", ".ndjson")):
        with open(args.input, "rb") as fh:
            data = fh.read()
        # request lines: checked the way the provider will check them, before anything is sent
        ids, bodies = read_request_lines(validate_lines(data, "ark"))
        models = {b.get("model") or args.model for b in bodies}
        if len(models) > 1:
            raise _api.ConfigError(f"a batch job holds one model; the file names {len(models)}: "
                                   f"{', '.join(sorted(map(str, models)))}")
        run = _api._Run(bodies, None, _api._options(kwargs))
        import pandas as pd

        run.plan.frame = pd.DataFrame({"custom_id": ids, "input": bodies},
                                      index=run.plan.frame.index)
    else:
        run = _api._Run(_read_table(args.input), args.prompt, _api._options(kwargs))
    job = BatchJob._submit(run)
    if not args.wait:
        job._wait_submitted()
        print(f"job {job.id} submitted; `batchmagic jobs status {job.id}` to follow it, "
              f"`batchmagic jobs results {job.id} -o out.jsonl` to collect it")
        return 0
    frame = job.wait()
    print(f"job {job.id}: {frame.attrs['batchmagic']['ok']} ok, "
          f"{frame.attrs['batchmagic']['failed']} failed", file=sys.stderr)
    if args.output:
        _write_results(frame, args.output)
    return 0 if frame.attrs["batchmagic"]["failed"] == 0 else 1


def _write_results(frame, path: str) -> None:
    if "input" in frame.columns and not path.lower().endswith((".jsonl", ".ndjson")):
        import json  # request bodies in a table: JSON text, not Python reprs

        frame = frame.assign(input=[json.dumps(v, ensure_ascii=False) if isinstance(v, dict)
                                    else v for v in frame["input"]])
    _write_table(frame, path)
    print(f"wrote {path}: {len(frame)} rows", file=sys.stderr)


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
    run.add_argument("--mode", choices=["online", "batch-api", "batch-chat"],
                     help="online (default); batch-api: the provider's Batch API (about half the "
                          "price, answers within the completion window); batch-chat: its Batch "
                          "Chat endpoint")
    _add_batch_flags(run)
    run.set_defaults(fn=_run)

    _add_jobs_parser(sub)

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
