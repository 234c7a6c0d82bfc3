"""The report: targets at a glance, then one table per workload (Markdown), and the raw data (JSON)."""

from __future__ import annotations

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
        c = _bm(w)
        cpu = c.median("cpu_us") if c else None
        add("W2", "client CPU ≤ 250 µs per request",
            f"{cpu:.0f} µs" if cpu else "not measured", None if cpu is None else cpu <= 250)
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
        add("W8", "1M rows: peak RSS ≤ 1.5× the final DataFrame",
            f"{x:.2f}× ({c.median('rss_mb'):,.0f} MB / {c.median('df_mb'):,.0f} MB)" if x
            else "not measured", None if x is None else x <= 1.5)
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


def markdown(report: dict[str, Any], workloads: dict[str, Workload]) -> str:
    lines = [f"# batchmagic against the tools users would pick instead{' (quick)' if report['quick'] else ''}",
             "", f"{report['date']}, {report['machine']}. Simulator in its own process on "
             "127.0.0.1; each run of each contender in a fresh subprocess, interleaved over the "
             "repeats; cells show the median (min–max) where there was more than one repeat. "
             "Ratios come from this run only.", ""]
    lines += ["## Targets at a glance (batchmagic)", "", "| workload | target | measured | met |",
              "|---|---|---|---|"]
    for v in report["verdicts"]:
        met = {True: "yes", False: "**no**", None: "-"}[v["met"]]
        lines.append(f"| {v['workload']} | {v['target']} | {v['measured']} | {met} |")
    lines += ["", "## Contenders", "", "| contender | version | how it is driven | status |",
              "|---|---|---|---|"]
    for name in CONTENDERS:
        c = CONTENDERS[name]
        status = report["status"].get(name) or "ran"
        lines.append(f"| {c.label} | {report['versions'].get(name) or '-'} | {c.how} | {status} |")
    for w in workloads.values():
        lines += ["", w.markdown().rstrip()]
    return "\n".join(lines) + "\n"


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
