"""``python -m benchmarks run [--quick] [--only W1,W3] [--contenders a,b]``,
``python -m benchmarks setup`` and ``python -m benchmarks docs``: see ``benchmarks/__init__.py``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import __doc__ as DOC

HERE = Path(__file__).resolve().parent
DOCS_PAGE = HERE.parent / "docs" / "benchmarks.md"  #: the manual's page of record
sys.path.insert(0, str(HERE.parent))  # the project's own package, from a source checkout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=DOC.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the workloads against the contenders")
    r.add_argument("--quick", action="store_true",
                   help="tiny sizes and one repeat: keeps the harness working (seconds)")
    r.add_argument("--only", default="", help="workloads, e.g. W1,W3 (default: all nine)")
    r.add_argument("--contenders", default="", help="e.g. batchmagic,aiohttp (default: all)")
    r.add_argument("--repeats", type=int, default=None, help="override every workload's repeats")
    r.add_argument("--out", default=str(HERE / "results"), help="folder for the .md and .json")
    r.add_argument("--scale", type=float, default=1.0,
                   help="multiply the full run's sizes (development: e.g. 0.2)")
    r.add_argument("--docs", default=str(DOCS_PAGE),
                   help="the manual's page a full run writes (never --quick, --only, "
                        "--contenders, --repeats or --scale runs)")
    d = sub.add_parser("docs", help="write the manual's page from a saved full run's JSON")
    d.add_argument("json", nargs="?", default=str(HERE / "results" / "compare.json"),
                   help="a full run's compare.json")
    d.add_argument("--docs", default=str(DOCS_PAGE), help="the page to write")
    s = sub.add_parser("setup", help="build the peers' virtual environments (pip install -r)")
    s.add_argument("--force", action="store_true", help="delete and rebuild them")
    args = p.parse_args(argv)
    if args.cmd == "setup":
        return setup(args.force)
    if args.cmd == "docs":
        return write_docs(Path(args.json), Path(args.docs))
    return run(args)


# -- setup -----------------------------------------------------------------------------------------


def setup(force: bool) -> int:
    from ._harness import VENVS

    for folder, req in VENVS.values():
        if force and folder.exists():
            shutil.rmtree(folder)
        if not (folder / "bin" / "python").exists():
            print(f"creating {folder.relative_to(HERE.parent)} ...", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        py = str(folder / "bin" / "python")
        subprocess.run([py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
        print(f"pip install -r {req.relative_to(HERE.parent)} into {folder.name} ...", flush=True)
        subprocess.run([py, "-m", "pip", "install", "--quiet", "-r", str(req)], check=True)
        subprocess.run([py, "-m", "pip", "check"], check=False)
    print("done: `python -m benchmarks run` now finds the peers")
    return 0


# -- run -------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from . import _report
    from ._harness import CHAT, CONTENDERS, availability
    from ._notebook import Notebook
    from ._workloads import WORKLOADS, Ctx, probe

    all_workloads = {**WORKLOADS, "W9": Notebook}
    only = [w.strip().upper() for w in args.only.split(",") if w.strip()] or list(all_workloads)
    unknown = [w for w in only if w not in all_workloads]
    if unknown:
        print(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(all_workloads)}",
              file=sys.stderr)
        return 2
    names = [c.strip() for c in args.contenders.split(",") if c.strip()] or list(CHAT)
    bad = [c for c in names if c not in CONTENDERS]
    if bad:
        print(f"unknown contender(s) {', '.join(bad)}; known: {', '.join(CONTENDERS)}",
              file=sys.stderr)
        return 2
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"{time.monotonic() - started:7.1f}s {msg}", file=sys.stderr, flush=True)

    ctx = Ctx(quick=args.quick, contenders=names, log=log, scale=args.scale,
              repeats=args.repeats or (1 if args.quick else None))
    status: dict[str, str] = {}
    for name in names:
        why = availability(name)
        if why:
            ctx.broken[name] = why
            status[name] = why
            log(f"{name}: {why}")
    if not args.quick and ({"W1", "W2"} & set(only)):
        log("probe: one short zero-latency run per contender (sizes W1 and W2, checks each works)")
        probe(ctx)
        for name, why in ctx.broken.items():
            status.setdefault(name, why)
    for name in CONTENDERS:
        if name not in names:
            status[name] = availability(name) or "not selected (--contenders)"
    workloads = {key: all_workloads[key](ctx) for key in only}
    estimate = sum(w.estimate_s() for w in workloads.values())
    log(f"{len(workloads)} workload(s) x {len(names)} contender(s); expected about "
        f"{estimate / 60:.1f} min")
    for key, w in workloads.items():
        t0 = time.monotonic()
        log(f"{key} {w.title} ...")
        w.run()
        log(f"{key} done in {time.monotonic() - t0:.1f} s")

    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": _report.machine(),
        "quick": args.quick, "contenders": names, "status": status, "probe_s_per_request": ctx.probe,
        "versions": _report.versions(workloads), "elapsed_s": time.monotonic() - started,
        "workloads": _report.workload_results(workloads),
    }
    report["verdicts"] = _report.verdicts(workloads)
    text = _report.markdown(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "compare-quick" if args.quick else "compare"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
    (out / f"{stem}.md").write_text(text)
    print(text)
    log(f"wrote {out / (stem + '.md')} and {stem}.json in {time.monotonic() - started:.0f} s")
    partial = not_of_record(args)
    if partial:
        log(f"{args.docs} left as it is: {partial}")
    else:
        page = Path(args.docs)
        page.write_text(_report.docs_page(report, _text_of(page)))
        log(f"wrote the page of record {args.docs}")
    return 0


def not_of_record(args: argparse.Namespace) -> str | None:
    """Why this run may not replace the manual's page of record, or None for a full run."""
    if args.quick:
        return "a --quick run"
    for flag, value, full in (("--only", args.only, ""), ("--contenders", args.contenders, ""),
                              ("--repeats", args.repeats, None), ("--scale", args.scale, 1.0)):
        if value != full:
            return f"not a full run ({flag})"
    return None


def _text_of(page: Path) -> str | None:
    """The page of record a run replaces (its figures stay beside the new ones)."""
    return page.read_text() if page.is_file() else None


def write_docs(source: Path, page: Path) -> int:
    """The manual's page again from a saved full run (``compare.json``)."""
    from . import _report

    report = json.loads(source.read_text())
    if report.get("quick"):
        print(f"{source} is a --quick run, not a run of record", file=sys.stderr)
        return 2
    if any("markdown" not in w for w in report["workloads"].values()):
        print(f"{source} holds no workload tables (written by an older harness): run again",
              file=sys.stderr)
        return 2
    page.write_text(_report.docs_page(report, _text_of(page)))
    print(f"wrote {page} from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
