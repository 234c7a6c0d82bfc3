"""The report: targets at a glance, then one table per workload (Markdown), and the raw data (JSON).

Everything here renders from the report dict alone (each workload's table is kept in it as
Markdown), so a saved ``compare.json`` can be rendered again. A full run also writes the manual's
page of record, ``docs/benchmarks.md`` (``docs_page``); ``--quick`` and partial runs never do.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from typing import Any

from ._harness import CONTENDERS
from ._workloads import Workload


def _bm(w: Workload, mode: str = ""):  # noqa: ANN202
    c = w.case("batchmagic", mode)
    return c if c is not None and c.runs else None


def verdicts(workloads: dict[str, Workload]) -> list[dict]:
    """batchmagic against each target: what was measured and whether it met it."""
    out: list[dict] = []

    def add(key: str, target: str, measured: str, ok: bool | None) -> None:
        out.append({"workload": key, "target": target, "measured": measured, "met": ok})

    w = workloads.get("W1")
    if w:
        s = w.summary()
        c = _bm(w)
        x = s[c.label]["x_floor"] if c else None
        add("W1", "latency-bound ≤ 1.15× the raw aiohttp floor",
            f"{x:.2f}× the floor" if x else "not measured", None if x is None else x <= 1.15)
    w = workloads.get("W2")
    if w:
        c, f = _bm(w), w.case("aiohttp")
        cpu = c.median("cpu_us") if c else None
        floor = f.median("cpu_us") if f and f.runs else None
        x = cpu / floor if cpu and floor else None
        add("W2", "client CPU ≤ 1.2× the raw aiohttp floor's per request (journal on)",
            f"{x:.2f}× ({cpu:.0f} µs / {floor:.0f} µs)" if x else "not measured",
            None if x is None else x <= 1.2)
    w = workloads.get("W3")
    if w:
        for mode in ("no limit", "limit given"):
            c = _bm(w, mode)
            if not c:
                add("W3", f"rate-limited ({mode}) ≥ 95% of the binding limit, 0 user-visible 429s",
                    "not measured", None)
                continue
            share = c.median("share")
            failed = max((r["failed"] for r in c.runs), key=lambda f: -1 if f is None else f)
            add("W3", f"rate-limited ({mode}) ≥ 95% of the binding limit, 0 user-visible 429s",
                f"{share:.0%} of the limit, {failed} rows failed" if share is not None
                else "no answer", share is not None and share >= 0.95 and failed == 0)
            if failed is None:
                out[-1]["measured"] = f"{share:.0%} of the limit; stopped at the deadline"
    w = workloads.get("W4")
    if w:
        c = _bm(w)
        if c:
            lost = max(r["lost"] for r in c.runs)
            dup = max(r["duplicated"] for r in c.runs)
            add("W4", "transient faults: no row lost", f"{lost} lost, {dup} duplicated "
                "(reset after processing / truncated bodies)", lost == 0)
    w = workloads.get("W5")
    if w:
        c = _bm(w)
        if c:
            r = c.runs[0]
            parts, ok = [], True
            for p in r["phases"]:
                if p["share"] is None:
                    parts.append(f"{p['rate']:.0f}/s: not reached (run over)")
                    ok = False
                    continue
                t85 = p["t85"]
                parts.append(f"{p['rate']:.0f}/s: {p['share']:.0%}, 85% after "
                             + (f"{t85:.1f} s" if t85 is not None else "never"))
                ok = ok and t85 is not None and t85 <= (15.0 if not w.q else 1.0)
            add("W5", "moving limit: ≥ 85% of each new limit within 15 s", "; ".join(parts), ok)
    w = workloads.get("W6")
    if w:
        c = _bm(w, "adaptive: no concurrency given")
        share = c.median("share") if c else None
        add("W6", "capacity collapse ≥ 90% of the optimal goodput (adaptive)",
            f"{share:.0%} of K/latency" if share is not None else "not measured",
            None if share is None else share >= 0.9)
    w = workloads.get("W7")
    if w:
        c, f, o = _bm(w), w.case("aiohttp"), w.case("openai")
        ips = c.median("ips") if c else None
        fx = ips / f.median("ips") if ips and f and f.runs else None
        ox = ips / o.median("ips") if ips and o and o.runs else None
        text = ", ".join(x for x in (f"{fx:.2f}× the floor" if fx else "",
                                     f"{ox:.2f}× AsyncOpenAI" if ox else "") if x)
        add("W7", "embeddings ≥ 0.8× the floor and ≥ 3× AsyncOpenAI", text or "not measured",
            None if fx is None else (fx >= 0.8 and (ox is None or ox >= 3)))
    w = workloads.get("W8")
    if w:
        c = _bm(w, "journal on")
        x = c.median("rss_x_df") if c else None
        growth = c.median("growth_x_df") if c else None
        add("W8", "1M rows: peak RSS ≤ 1.5× the final DataFrame",
            (f"{x:.2f}× ({c.median('rss_mb'):,.0f} MB / {c.median('df_mb'):,.0f} MB)"
             + (f"; grew {growth:.2f}× the frame during the call" if growth else "")) if x
            else "not measured", None if x is None else x <= 1.5)
        first = c.median("first_s") if c else None
        add("W8", "1M rows: first request < 2 s after the call",
            "not measured" if first is None else f"{first:.2f} s",
            None if first is None else first < 2.0)
    w = workloads.get("W9")
    if w:
        c = _bm(w, "bm.submit in a kernel")
        if c:
            m = c.runs[0]
            add("W9", "≤ 10 display updates/s", f"{m['updates_per_s']:.1f} updates/s "
                f"({m['comm_per_s']:.1f} comm messages/s); `1+1` median "
                f"{m['cell_median'] * 1000:.0f} ms", m["updates_per_s"] <= 10)
        else:
            err = w.cases[0].error if w.cases else "batchmagic not selected"
            add("W9", "≤ 10 display updates/s", err or "not available", None)
    return out


def workload_results(workloads: dict[str, Workload]) -> dict[str, dict]:
    """Each workload's raw data, with its table as Markdown so the report renders on its own."""
    return {key: {**w.result(), "markdown": w.markdown()} for key, w in workloads.items()}


def markdown(report: dict[str, Any]) -> str:
    """``compare.md``: the run's header, then its results."""
    title = "# batchmagic against the tools users would pick instead"
    lines = [title + (" (quick)" if report["quick"] else ""), "",
             f"{when(report['date'])}, {machine_line(report['machine'])}. Simulator in its own "
             "process on 127.0.0.1; each run of each contender in a fresh subprocess, interleaved "
             "over the repeats; cells show the median (min–max) where there was more than one "
             "repeat. Ratios come from this run only.", ""]
    return "\n".join(lines) + results_markdown(report)


def results_markdown(report: dict[str, Any], previous: dict | None = None) -> str:
    """Targets at a glance, the contenders with their versions, one section per workload.
    ``previous`` (``previous_targets``): the figures of the full run before, shown beside."""
    head = "| workload | target | measured | met |"
    if previous:
        head = f"| workload | target | measured | previous full run ({previous['date']}) | met |"
    lines = ["## Targets at a glance (batchmagic)", "", head, "|" + "---|" * (head.count("|") - 1)]
    seen: dict[str, int] = {}
    for v in report["verdicts"]:
        met = {True: "yes", False: "**no**", None: "-"}[v["met"]]
        cells = [v["workload"], v["target"], v["measured"]]
        if previous:  # the workload's k-th target beside the k-th one of the run before
            k = seen[v["workload"]] = seen.get(v["workload"], -1) + 1
            before = previous["measured"].get(v["workload"], [])
            cells.append(before[k] if k < len(before) else "")
        lines.append("| " + " | ".join([*cells, met]) + " |")
    lines += ["", "## Contenders", "", "| contender | version | how it is driven | status |",
              "|---|---|---|---|"]
    for name in CONTENDERS:
        c = CONTENDERS[name]
        status = report["status"].get(name) or "ran"
        lines.append(f"| {c.label} | {report['versions'].get(name) or '-'} | {c.how} | {status} |")
    lines += ["", "## Workloads"]
    for w in report["workloads"].values():
        lines += ["", w["markdown"].rstrip()]
    return "\n".join(lines) + "\n"


# -- the manual's page of record ------------------------------------------------------------------

DOCS_INTRO = """\
batchmagic against the tools users would pick instead: nine workloads, ten contenders, each
driven through its public API in a fresh subprocess against the project's simulator in its own
process on 127.0.0.1. Runs are interleaved and repeated (batchmagic right after the raw aiohttp
floor, so the ratios its targets check are taken side by side); cells show the median (min–max)
where there was more than one repeat, and every ratio comes from this one run. Peers that run
slowly get fewer requests (column n) so that a run stays under about 8 s; a peer that is not
installed, cannot be pointed at a local server, or fails a workload is listed with the reason,
never dropped.

```bash
python -m benchmarks setup          # the peers, pinned, in benchmarks/.venv-peers (+ .venv-peers-openai)
python -m benchmarks run            # the full run: writes this page (about 25 minutes, quiet machine)
python -m benchmarks run --quick    # tiny sizes, seconds; checks the harness, never writes this page
```

Workloads: W1 latency-bound, W2 CPU-bound ceiling, W3 rate limits announced in headers, W4
seeded transient faults, W5 an unknown limit that moves, W6 a self-hosted server past its
capacity, W7 packed embeddings, W8 a million embedding rows, W9 a background run in a real
kernel. Why batchmagic misses some targets: [where batchmagic is behind](explanation/performance.md).
Other measurements, each dated where it is quoted: the HTTP clients
([why aiohttp](explanation/why-aiohttp.md)), the offline engines
([engines](how-to/engines.md#measured)) and the journal's cost
([journal](how-to/journal.md#what-it-costs)).
"""


def docs_page(report: dict[str, Any], replaced: str | None = None) -> str:
    """``docs/benchmarks.md`` for a full run: the date, the machine, the peers' versions and
    every table. Written by the run; the next full run replaces it, keeping the figures of the
    page it replaces (``replaced``, its text) beside its own targets."""
    if report.get("quick"):
        raise ValueError("a --quick run is not a run of record")
    m = report["machine"]
    facts = machine_facts(m)
    minutes = report.get("elapsed_s")
    lines = ["# Benchmarks of record", "",
             "<!-- Written by `python -m benchmarks run` (a full run); do not edit by hand: the "
             "next full run replaces this page. -->", "",
             f"**The full run of {when(report['date'])}.** The next full run "
             "(`python -m benchmarks run`) replaces this page.", ""]
    if report.get("provenance"):
        lines += [f"!!! note \"Where these numbers come from\"\n    {report['provenance']}", ""]
    lines += [DOCS_INTRO, "## The machine", "", "| | |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in facts]
    if minutes:
        lines.append(f"| run time | {minutes / 60:.0f} minutes |")
    lines += ["", "The client and the simulator share these cores.", ""]
    previous = previous_targets(replaced, when(report["date"])) if replaced else None
    return "\n".join(lines) + "\n" + results_markdown(report, previous)


def previous_targets(page: str, this_run: str) -> dict | None:
    """From the page of record a run replaces: its run's date and each workload's measured
    figures, in the order of its targets table. A page of the same run (written again from its
    JSON) hands on the figures it kept from the run before it."""
    date = re.search(r"\*\*The full run of (.+?)\.\*\*", page)
    if date is None or "## Targets at a glance" not in page:
        return None
    table = page.split("## Targets at a glance", 1)[1].split("\n## ", 1)[0].splitlines()
    kept = next((re.search(r"\| previous full run \((.+?)\) \|", line) for line in table
                 if line.startswith("| workload |")), None)
    column = 2  # measured
    if date.group(1) == this_run:
        if kept is None:
            return None
        column = 3  # the same run again: the column it showed beside its own
    measured: dict[str, list[str]] = {}
    for line in table:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > column + 1 and re.fullmatch(r"W\d+", cells[0]):
            measured.setdefault(cells[0], []).append(cells[column])
    if not measured:
        return None
    return {"date": kept.group(1) if column == 3 else date.group(1), "measured": measured}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "arch": platform.machine(),
            "python": platform.python_version(), "os": platform.platform(terse=True)}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "not known"


def machine_facts(m: dict[str, Any] | str) -> list[tuple[str, str]]:
    if isinstance(m, str):  # reports written before the machine was a dict
        return [("machine", m)]
    return [("CPU", str(m.get("cpu") or "not recorded")),
            ("cores", str(m.get("cores") or "not recorded")),
            ("architecture", str(m.get("arch") or "not recorded")),
            ("Python", str(m.get("python") or "not recorded")),
            ("OS", str(m.get("os") or "not recorded"))]


def machine_line(m: dict[str, Any] | str) -> str:
    if isinstance(m, str):
        return m
    return (f"{m.get('arch')}, {m.get('cores')} cores ({m.get('cpu')}), Python {m.get('python')}, "
            f"{m.get('os')}")


def when(date: str) -> str:
    """An ISO time as '2026-11-22 05:20 UTC' (the text as given when it is not ISO)."""
    try:
        t = dt.datetime.fromisoformat(date)
    except (TypeError, ValueError):
        return str(date)
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M UTC")


def versions(workloads: dict[str, Workload]) -> dict[str, str]:
    out: dict[str, str] = {}
    for w in workloads.values():
        for c in w.cases:
            if c.version and c.contender not in out:
                out[c.contender] = str(c.version)
    from importlib.metadata import PackageNotFoundError, version

    for name, dist in (("aiohttp", "aiohttp"), ("httpx", "httpx"), ("httpx2", "httpx2"),
                       ("batchmagic", "batchmagic")):
        if name not in out:
            try:
                out[name] = version(dist)
            except PackageNotFoundError:
                pass
    return out
