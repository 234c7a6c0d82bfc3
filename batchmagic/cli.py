"""The ``batchmagic`` command.

    batchmagic demo                 label the bundled reviews with a small model on this machine
                                    (llama.cpp + SmolLM2-135M; no key, no network; --simulator
                                    uses the bundled OpenAI-compatible simulator instead)
    batchmagic run FILE -o OUT      run a CSV / JSONL / Parquet / .txt file through a model, write the
                                    result (-p 'template over {columns}')
                                    (--mode batch-api: through the provider's Batch API)
    batchmagic jobs create|list|status|cancel|results|resubmit
                                    provider Batch API jobs (recorded in the journal; with
                                    --provider: the provider's own, made anywhere)
    batchmagic simulator [...]      serve the OpenAI-compatible simulator (same flags as python -m batchmagic.simulator)
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from importlib import resources

from ._errors import ConfigError
from ._options import OPTIONS, PARAM_FLAGS, as_flag_message

# -- files in and out --------------------------------------------------------------------------------

INPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "txt", ".jsonl": "jsonl",
                 ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
OUTPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                  ".json": "json", ".parquet": "parquet"}


def _format_of(path: str, formats: dict[str, str], verb: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in formats:
        known = ", ".join(dict.fromkeys(formats))
        raise ConfigError(f"cannot {verb} {path!r}: the name must end in one of {known}")
    return formats[ext]


def _check_output(path: str, input_path: str | None = None) -> None:
    """Everything about the output file that can be known before a request is paid for."""
    fmt = _format_of(path, OUTPUT_FORMATS, "write")
    if os.path.isdir(path):
        raise ConfigError(f"cannot write {path!r}: it is a folder; name a file in it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"cannot write {path!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path)
                                                   and not os.access(path, os.W_OK)):
        raise ConfigError(f"cannot write {path!r}: permission denied")
    if (input_path and os.path.exists(path) and os.path.exists(input_path)
            and os.path.samefile(path, input_path)):
        raise ConfigError(f"-o {path!r} is the input file: write the result somewhere else")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError("writing Parquet needs pyarrow: pip install pyarrow "
                              "(or write .csv / .jsonl)") from None


def _read_table(path: str):
    """A table whose text stays text: ``"007"`` is read as ``"007"``, not 7."""
    fmt = _format_of(path, INPUT_FORMATS, "read")
    if not os.path.isfile(path):
        raise ConfigError(f"no such file: {path!r}" if not os.path.exists(path)
                          else f"{path!r} is not a file")
    try:
        return _read(path, fmt)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # pandas' parser errors included
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot read {path!r} as {fmt}: {first_line}") from None


def _read(path: str, fmt: str):
    import pandas as pd

    if fmt == "txt":
        with open(path, encoding="utf-8-sig") as fh:  # one prompt per line, no header
            return pd.DataFrame({"text": [line for line in fh.read().splitlines() if line.strip()]})
    if fmt in ("csv", "tsv"):
        # every cell as its text, only empty cells missing ("NA" and "None" are words too);
        # then the columns whose every value is a number written the one way pandas writes it
        df = pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", dtype=str,
                         keep_default_na=False, na_values=[""], encoding="utf-8-sig")
        return df.apply(_numbers_if_lossless)
    if fmt == "parquet":
        return pd.read_parquet(path)
    # JSON says which values are strings: keep them (dtype=False: no "007" -> 7, no date guessing)
    return pd.read_json(path, lines=fmt == "jsonl", dtype=False, precise_float=True)


_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")  # no leading zeros, fits in int64


def _numbers_if_lossless(column):
    """The column as numbers when that changes no value's text; else the column unchanged."""
    import pandas as pd

    texts = column.dropna().tolist()
    if not texts:
        return column
    if all(_INTEGER.fullmatch(t) for t in texts):
        return pd.to_numeric(column).astype("Int64" if column.isna().any() else "int64")
    if all(_plain_float(t) for t in texts):
        return pd.to_numeric(column)
    return column


def _plain_float(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and repr(value) == text


def _write_table(df, path: str) -> None:
    out = df.copy()
    out["error"] = [None if e is None else f"{type(e).__name__}: {e}" for e in out["error"]]
    _write_frame(out, path)


def _write_frame(out, path: str) -> None:
    fmt = _format_of(path, OUTPUT_FORMATS, "write")
    if fmt in ("jsonl", "json"):
        out.to_json(path, orient="records", lines=fmt == "jsonl", force_ascii=False,
                    default_handler=str)
    elif fmt == "parquet":
        out.to_parquet(path)
    else:
        out.to_csv(path, index=False, sep="\t" if fmt == "tsv" else ",")


def _default_prompt(df, path: str) -> str:
    """``{column}`` for a .txt file or a table with one text column; else say what -p needs."""
    import pandas as pd

    text = list(df.columns) if len(df.columns) == 1 else [
        c for c in df.columns
        if pd.api.types.is_string_dtype(df[c]) or pd.api.types.is_object_dtype(df[c])]
    if len(text) != 1:
        found = (f"{len(text)} text columns ({', '.join(map(str, text))})" if text
                 else "no text column")
        example = max(text, key=lambda c: df[c].astype(str).str.len().mean()) if text else "text"
        raise ConfigError(f"-p is needed: {path} has {found}; say which to use, "
                          f"e.g. -p 'Summarise: {{{example}}}'")
    name = str(text[0])
    if any(ch in name for ch in "{}:!") or name != text[0]:
        raise ConfigError(f"the column {name!r} cannot be named in a template as it is: "
                          "rename it, or pass -p")
    return "{" + name + "}"


def _row_counts(out) -> str:
    """Counted in rows of the frame (a request can answer several rows; cached rows cost none)."""
    failed = int(sum(e is not None for e in out["error"]))
    ok = len(out) - failed
    cached = 0
    if "attempts" in out.columns:  # answered from the journal: no attempt in this run
        cached = int(sum(e is None and a == 0 for e, a in zip(out["error"], out["attempts"])))
    from_journal = f" ({cached} from the journal)" if cached else ""
    return f"{len(out)} rows: {ok} ok{from_journal}, {failed} failed"


def _read_schema(path: str) -> dict:
    """``--schema FILE.json``: a JSON Schema (an object) from a file."""
    import json

    try:
        with open(path, encoding="utf-8") as fh:
            schema = json.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--schema: no such file: {path!r}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--schema: cannot read {path!r} as JSON ({exc})") from None
    if not isinstance(schema, dict):
        raise ConfigError(f"--schema: {path!r} holds a JSON {type(schema).__name__}, not a JSON "
                          "Schema object")
    return schema


def _parse_params(text: str | None) -> dict:
    import json

    if not text:
        return {}

    def refuse_constant(name: str):
        raise ConfigError(f"--params: {name} is not a number a provider accepts")

    try:
        params = json.loads(text, parse_constant=refuse_constant)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"--params is not valid JSON ({exc}); e.g. --params "
                          "'{\"temperature\": 0, \"max_tokens\": 64}'") from None
    if not isinstance(params, dict):
        raise ConfigError(f"--params must be a JSON object of generation parameters, "
                          f"not a JSON {type(params).__name__}")
    return params


DEMO_PROMPT = ("Classify the sentiment of this review as positive, negative or mixed. "
               "Answer with one word.\n\nReview: {text}")
#: the demo's answers are one of these words: schema= makes every row a valid label
DEMO_LABELS = ("positive", "negative", "mixed")


def _demo(args: argparse.Namespace) -> int:
    from typing import Literal

    import pandas as pd

    import batchmagic as bm

    if args.output:
        _check_output(args.output)
    with resources.files("batchmagic").joinpath("data/reviews.csv").open("r", encoding="utf-8") as fh:
        reviews = pd.read_csv(fh)
    where, sim = _demo_where(args, len(reviews))
    try:
        out = bm.batch(reviews, DEMO_PROMPT, schema=Literal[DEMO_LABELS],
                       params={"max_tokens": 16, "temperature": 0},
                       progress=not args.quiet, cache=not args.no_cache, **where)
    finally:
        if sim is not None:
            sim.stop()
    _demo_report(out, args)
    if args.output:
        _save(out, args.output, journal=not args.no_cache)
        print(f"wrote {args.output}")
    return 0 if out["error"].isna().all() else 1


def _demo_where(args: argparse.Namespace, n: int) -> tuple[dict, object]:
    """Where the demo's rows go: the local model when it is installed, else the simulator
    (started here; the caller stops it)."""
    import batchmagic as bm

    engine = args.engine
    if not args.simulator and engine is None:
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

        print(f"batchmagic demo: {n} reviews -> the local simulator (an OpenAI-compatible "
              "server on 127.0.0.1; no API key, no network)", file=sys.stderr)
        sim = SimulatorThread(latency=args.latency, latency_dist="uniform",
                              latency_jitter=args.latency / 2).start()
        return dict(model="sim-chat", provider="simulator", base_url=sim.base_url), sim
    from batchmagic.engines._models import DEFAULT_MODEL_NAME

    print(f"batchmagic demo: {n} reviews -> {args.model or DEFAULT_MODEL_NAME} on this machine "
          f"(engine={engine}; no API key, no network)", file=sys.stderr)
    return dict(model=args.model, engine=engine), None


def _demo_report(out, args: argparse.Namespace) -> None:
    """The rows, the run's counts and speed, and how many labels are valid and right."""
    import pandas as pd

    with pd.option_context("display.max_colwidth", 56, "display.width", 160):
        print(out[["id", "text", "label", "output", "input_tokens", "output_tokens",
                   "latency"]].to_string(index=False))
    facts = out.attrs["batchmagic"]
    rate = ""
    if facts.get("wall_s") and facts.get("output_tokens"):
        rate = f", {facts['output_tokens'] / facts['wall_s']:.0f} output tokens/s"
    print(f"\n{_row_counts(out)}; {facts['requests']} requests in {facts['wall_s']:.2f} s{rate} "
          f"(run {facts['run_id']})")
    valid = out["output"].isin(DEMO_LABELS)
    right = out["output"] == out["label"]
    print(f"labels: {int(valid.sum())} of {len(out)} rows are one of {', '.join(DEMO_LABELS)}; "
          f"{int(right.sum())} match the gold label ({right.mean():.0%})")
    if not args.simulator and args.model is None:
        print("SmolLM2-135M is a tiny model: this shows the machinery (order, usage, errors, "
              "resume), not a good classifier. Pass --model path/to/model.gguf for a bigger one.",
              file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    import batchmagic as bm

    # all that can fail without the provider is checked before the first request is paid for
    _check_output(args.output, args.input)
    options = {o.name: getattr(args, o.name) for o in OPTIONS
               if getattr(args, o.name, None) is not None}
    params = _parse_params(args.params)
    params.update({o.name: getattr(args, o.name) for o in PARAM_FLAGS
                   if getattr(args, o.name) is not None})
    if params:
        options["params"] = params
    if args.mode == "batch-api":
        options["batch_options"] = _batch_options(args)
    if args.schema is not None:
        options["schema"] = _read_schema(args.schema)
    if options.get("output_path") is not None:
        return _run_to_files(args, options)
    df = _read_table(args.input)
    prompt = args.prompt if args.prompt is not None else _default_prompt(df, args.input)
    out = bm.batch(df, prompt, **options)
    _save(out, args.output, journal=args.cache is not False)
    print(f"wrote {args.output}: {_row_counts(out)}", file=sys.stderr)
    return 0 if out["error"].isna().all() else 1


def _run_to_files(args: argparse.Namespace, options: dict) -> int:
    """``--executor ray --output-path DIR``: the input is read where the workers run (never
    whole here) and they write the rows to DIR; ``-o`` gets the summary, one row per block."""
    import json

    import batchmagic as bm
    from batchmagic.executors._ray_inputs import files_of, read_files

    prompt = args.prompt
    if prompt is None:
        paths, fmt = files_of(args.input)
        prompt = _default_prompt(read_files(paths[:1], fmt, rows=20), args.input)
    summary = bm.batch(args.input, prompt, **options)
    facts = summary.attrs["batchmagic"]
    table = summary.reset_index()
    for name in ("errors", "files"):  # a dict and a list per block: JSON text in any format
        table[name] = [json.dumps(v) for v in table[name]]
    try:
        _write_frame(table, args.output)
    except (OSError, ValueError, TypeError, ImportError) as exc:
        raise ConfigError(f"could not write the summary to {args.output!r} ({exc}); the rows "
                          f"are in {facts['output_path']}") from None
    print(f"wrote {facts['written']} rows to {facts['output_path']} ({facts['ok']} ok, "
          f"{facts['failed']} failed, {facts['not_sent']} not sent, {facts['cached']} already "
          f"there); the summary by block to {args.output}", file=sys.stderr)
    return 0 if facts["failed"] == 0 and facts["not_sent"] == 0 else 1


_FLAGGED = {o.name: o for o in (*OPTIONS, *PARAM_FLAGS)}
#: what a flag's value is on the command line, where it differs from a cell's
_CLI_METAVARS = {"schema": "FILE.json"}
#: the run command's own short flags: -p is its prompt (the magic's -p is the provider), -o its
#: output file
_CLI_OWN = {"-p", "-o"}


def _add_option_flags(parser: argparse.ArgumentParser) -> None:
    """Every option with a flag, from the option table (as the magic's are)."""
    for opt in (*OPTIONS, *PARAM_FLAGS):
        flags = tuple(f for f in opt.flags if f not in _CLI_OWN)
        if opt.text is None or not flags:
            continue
        settings: dict = {"help": opt.doc, "dest": opt.name, "default": None}
        if opt.text is bool:  # the flag says the opposite of the default
            settings.update(action="store_const", const=not opt.default)
        elif opt.choices:
            settings["choices"] = opt.choices
        else:
            settings.update(metavar=_CLI_METAVARS.get(opt.name, opt.metavar), type=opt.text)
        parser.add_argument(*flags, **settings)


def _save(out, path: str, *, journal: bool) -> None:
    """Write the result; if that fails now, after paying, say where the answers still are."""
    try:
        _write_table(out, path)
    except (OSError, ValueError, TypeError, ImportError) as exc:
        where = ("the answers are in the journal: the same command again answers from it without "
                 "sending" if journal else "the answers were not kept (--no-cache)")
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"could not write {path!r} ({detail}); {where}") from None


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
    listing = verbs.add_parser("list", help="the jobs in the journal, oldest first; with "
                                            "--provider, the provider's own batches")
    _add_provider_flags(listing, "list this provider's batches (made anywhere), not the journal's")
    listing.add_argument("--status", help="only jobs in this state: the provider's word "
                                          "(in_progress, Running) or running, completed, expired, "
                                          "...; without --provider: submitting, running, finished")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (newest)")
    for verb, text in (("status", "the provider's status and request counts"),
                       ("cancel", "cancel at the provider (finished rows are kept)"),
                       ("resubmit", "send the rows a finished job left unanswered as a new job")):
        cmd = verbs.add_parser(verb, help=text)
        cmd.add_argument("id", help="a job id (a unique prefix is enough) or a provider batch id")
        if verb != "resubmit":
            _add_provider_flags(cmd, "for a batch made elsewhere: the provider to ask")
    results = verbs.add_parser("results", help="wait for a job and write its rows")
    results.add_argument("id")
    results.add_argument("-o", "--output", required=True, help="a .jsonl, .csv or .parquet file")
    results.add_argument("--no-wait", action="store_true",
                         help="write what the journal has now instead of waiting")
    results.add_argument("-q", "--quiet", action="store_true")
    _add_provider_flags(results, "for a batch made elsewhere: the provider to ask")
    jobs.set_defaults(fn=_jobs)


def _add_provider_flags(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--provider", help=text)
    parser.add_argument("--base-url", help="an OpenAI-compatible server's URL, e.g. "
                                           "https://host/v1")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="a Batch API option (repeatable): Ark's openapi_url, project_name, "
                             "poll_interval, ...")


def _jobs(args: argparse.Namespace) -> int:
    from batchmagic.batchapi import _handle

    cache = args.cache or True
    if args.verb == "create":
        return _jobs_create(args, cache)
    where = dict(provider=getattr(args, "provider", None), base_url=getattr(args, "base_url", None),
                 batch_options=_batch_options(args))
    if args.verb == "list":
        found = _handle.jobs(cache, args.limit, status=args.status, **where)
        if not found:
            place = where["provider"] or where["base_url"]
            print(f"no Batch API jobs {'at ' + place if place else 'in the journal'}"
                  f"{' with status ' + args.status if args.status else ''}")
        for job in found:
            print(repr(job))
        return 0
    job = _handle.job(args.id, cache, **where)
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
            raise ConfigError(f"a batch job holds one model; the file names {len(models)}: "
                                   f"{', '.join(sorted(map(str, models)))}")
        run = _api._run_for(bodies, None, kwargs)
        import pandas as pd

        # the result frame shows each line's custom_id beside its request
        run.plan.frame = pd.DataFrame({"custom_id": ids, "input": bodies},
                                      index=run.plan.frame.index)
    else:
        run = _api._run_for(_read_table(args.input), args.prompt, kwargs)
    job = _api._start(run)
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

    run = sub.add_parser("run", help="run a CSV / JSONL / Parquet / text file through a model")
    run.add_argument("input", help="a .csv, .tsv, .jsonl, .json or .parquet table, or a .txt file "
                                   "with one prompt per line (blank lines skipped); cells are read "
                                   "as text, and a column becomes numbers only when no value's "
                                   "text changes ('007' stays '007')")
    run.add_argument("-p", "--prompt",
                     help="template over the columns, e.g. 'Summarise: {text}' (default for a "
                          ".txt file or a table with one text column: that text as it is)")
    run.add_argument("-o", "--output", required=True,
                     help="where to write the result: .csv, .tsv, .jsonl, .json or .parquet")
    run.add_argument("--params", help="JSON object of generation parameters")
    _add_option_flags(run)
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

        if isinstance(exc, BatchError):  # one line, no traceback: the message says what to do
            text = as_flag_message(exc, _FLAGGED, _CLI_OWN) if isinstance(exc, ConfigError) \
                else str(exc)
            print("batchmagic: " + " ".join(text.split()), file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
