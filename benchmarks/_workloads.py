"""The nine workloads: what the simulator does, who runs, what is measured, how it is reported.

Each workload starts its own simulator process, runs every case (a contender, sometimes in
several modes) in a fresh subprocess, interleaved over the repeats, and turns each run into a
few numbers. Ratios are taken within the same run of the suite.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ._harness import CONTENDERS, RunResult, fmt_spread, percent, run_one, spread

MAX_TOKENS = 16
#: the simulator counts "row 123" as 2 tokens, plus 3 per message and 3 per request
PROMPT_TOKENS = 8
#: answers a client may have been billed for, from the call log (the server did the work)
BILLABLE_FAULTS = {"reset_after", "truncated", "trickle", "non_json", "invalid_utf8",
                   "wrong_shape", "hang"}


@dataclass
class Case:
    contender: str
    mode: str = ""
    spec: dict = field(default_factory=dict)
    how: str = ""  #: how a limit / concurrency was given, for the table
    runs: list[dict] = field(default_factory=list)
    error: str | None = None
    slow: bool = False  #: its first run was long: not repeated
    always: bool = False  #: repeated whatever its length
    version: str | None = None

    @property
    def label(self) -> str:
        base = CONTENDERS[self.contender].label
        return f"{base} ({self.mode})" if self.mode else base

    def values(self, key: str) -> list:
        return [r[key] for r in self.runs if r.get(key) is not None]

    def spread(self, key: str) -> dict | None:
        return spread(self.values(key))

    def median(self, key: str) -> float | None:
        s = self.spread(key)
        return s["median"] if s else None


@dataclass
class Ctx:
    quick: bool
    contenders: list[str]
    repeats: int | None = None  #: override every workload's repeats
    scale: float = 1.0  #: full-run sizes (and W5's phase lengths) times this: for development
    probe: dict[str, float] = field(default_factory=dict)  #: seconds per request at zero latency
    broken: dict[str, str] = field(default_factory=dict)  #: contender -> why it cannot run
    log: Any = print


class Workload:
    key = ""
    title = ""
    target = ""
    repeats = 3
    slow_after = 25.0  #: a case whose first run takes longer is run once ...
    always_repeat = ("batchmagic", "aiohttp")  #: ... except these two, which the targets compare
    timeout = 300.0
    stop_at_deadline = False  #: a run still going at ``timeout`` is stopped and measured
    calls = False  #: fetch the simulator's call log after each run
    contenders: list[str] = []

    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        self.q = ctx.quick
        self.cases: list[Case] = []
        self.notes: list[str] = []

    def size(self, n: int, minimum: int = 1) -> int:
        """A full-run size, scaled by ``--scale`` (rounded to a multiple of 100 above 1,000)."""
        x = n * self.ctx.scale
        return max(minimum, int(x) // 100 * 100 if x >= 1000 else int(x))

    # -- to override ---------------------------------------------------------------------------
    def sim_config(self) -> dict:
        return {"log_calls": self.calls}

    def plan(self) -> list[Case]:
        return [Case(c, spec=self.base_spec()) for c in self.contenders if c in self.ctx.contenders]

    def base_spec(self) -> dict:
        return {"kind": "chat", "max_tokens": MAX_TOKENS}

    def before_go(self, case: Case):  # noqa: ANN201  (a callable or None)
        return None

    def measure(self, case: Case, rr: RunResult) -> dict:
        d = rr.data
        return {"wall": d["wall"], "cpu": d["cpu"], "ok": d["ok"], "failed": d["failed"],
                "errors": d.get("errors", {}), "n": case.spec["n"], "version": d.get("version"),
                "facts": d.get("facts"), "stopped": bool(d.get("stopped"))}

    def summary(self) -> dict:
        return {}

    def table(self) -> list[str]:
        return []

    def estimate_s(self) -> float:
        return 60.0

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        from batchmagic.simulator import SimulatorProcess

        self.cases = self.plan()
        for case in self.cases:
            if case.contender in self.ctx.broken:
                case.error = self.ctx.broken[case.contender]
        repeats = self.ctx.repeats or self.repeats
        # batchmagic runs right after the floor in each repeat: the ratios the targets check are
        # then taken a few seconds apart, not across the peers' minutes of a drifting machine
        todo = sorted((c for c in self.cases if c.error is None),
                      key=lambda c: c.contender not in ("aiohttp", "batchmagic"))
        if not todo:
            return
        with SimulatorProcess(**self.sim_config()) as sim:
            for rep in range(repeats):
                for i, case in enumerate(todo):
                    if case.error is not None or (rep > 0 and case.slow):
                        continue
                    rr = run_one(case.contender, case.spec, sim, timeout=self.timeout,
                                 calls=self.calls, before_go=self.before_go(case),
                                 stop_at_deadline=self.stop_at_deadline)
                    tag = f"  [{self.key} {rep + 1}/{repeats} {i + 1}/{len(todo)}] {case.label}"
                    case.version = case.version or rr.version
                    if not rr.ok:
                        case.error = rr.error
                        self.ctx.log(f"{tag}: {rr.error}")
                        continue
                    try:
                        m = self.measure(case, rr)
                    except Exception as exc:  # noqa: BLE001  a metric bug must not end the suite
                        case.error = f"could not measure: {type(exc).__name__}: {exc}"
                        self.ctx.log(f"{tag}: {case.error}")
                        continue
                    case.runs.append(m)
                    if rep == 0 and rr.data["wall"] > self.slow_after and not case.always \
                            and case.contender not in self.always_repeat:
                        case.slow = True
                    self.ctx.log(f"{tag}: {self.progress_line(m)}")

    def progress_line(self, m: dict) -> str:
        if m.get("stopped"):
            return f"stopped at the {m['wall']:.0f}-s deadline, still running"
        return (f"wall {m['wall']:.2f} s, cpu {m['cpu']:.2f} s, ok {m['ok']}"
                + (f", failed {m['failed']} {m['errors']}" if m["failed"] else ""))

    def result(self) -> dict:
        return {"key": self.key, "title": self.title, "target": self.target,
                "sim": self.sim_config(), "notes": self.notes, "summary": self.summary(),
                "cases": [{"contender": c.contender, "label": c.label, "mode": c.mode,
                           "how": c.how, "spec": c.spec, "error": c.error, "runs": c.runs}
                          for c in self.cases]}

    def markdown(self) -> str:
        lines = [f"### {self.key}. {self.title}", ""]
        lines += self.describe()
        lines += [""] + self.table()
        if self.target:
            lines += ["", f"**Target:** {self.target}"]
        for note in self.notes:
            lines += ["", note]
        return "\n".join(lines) + "\n"

    def describe(self) -> list[str]:
        return []

    # -- helpers --------------------------------------------------------------------------------
    def case(self, contender: str, mode: str = "") -> Case | None:
        for c in self.cases:
            if c.contender == contender and c.mode == mode:
                return c
        return None

    @staticmethod
    def failed_cell(case: Case) -> str:
        return f"could not run: {case.error}"

    def cap(self, contender: str, n: int, budget_s: float, floor_n: int) -> int:
        """Fewer requests for a contender whose per-request cost (from the probe) would make one
        run longer than ``budget_s``; its rates stay comparable, its wall time does not."""
        per = self.ctx.probe.get(contender)
        if self.q or not per or contender in self.always_repeat:
            return n  # batchmagic and the floor always run the full size
        return max(floor_n, min(n, int(budget_s / per) // 100 * 100))


def _errors_text(case: Case) -> str:
    errs: Counter = Counter()
    for r in case.runs:
        errs.update(r.get("errors") or {})
    return ", ".join(f"{k} ×{v}" for k, v in errs.most_common(2))


def _failed(case: Case) -> str:
    stopped = [r for r in case.runs if r.get("stopped")]
    if stopped:
        return f"unknown: stopped at the {stopped[0]['wall']:.0f}-s deadline"
    worst = max((r["failed"] for r in case.runs), default=0)
    if not worst:
        return "0"
    return f"{worst} ({_errors_text(case)})"


# -- W1 ---------------------------------------------------------------------------------------------


class LatencyBound(Workload):
    key = "W1"
    title = "Latency-bound"
    contenders = ["aiohttp", "httpx", "httpx2", "openai", "openai-aiohttp", "qianfan", "litellm",
                  "curator", "langchain", "batchmagic"]
    target = "batchmagic ≤ 1.15× the raw aiohttp floor at 256 in flight."
    slow_after = 6.0

    def __init__(self, ctx: Ctx):
        super().__init__(ctx)
        self.n, self.latency, self.c = (200, 0.05, 32) if self.q else (self.size(10_000), 0.2, 256)

    def sim_config(self) -> dict:
        return {"latency": self.latency, "log_calls": False}

    def ideal(self, n: int) -> float:
        return n * self.latency / self.c

    def plan(self) -> list[Case]:
        out = []
        for name in self.contenders:
            if name in self.ctx.contenders:
                n = self.cap(name, self.n, 8.0, 4 * self.c)
                out.append(Case(name, spec={**self.base_spec(), "n": n, "concurrency": self.c,
                                            "unbounded": True}))
        return out

    def measure(self, case: Case, rr: RunResult) -> dict:
        m = super().measure(case, rr)
        m["x_ideal"] = m["wall"] / self.ideal(m["n"])
        m["cpu_us"] = m["cpu"] / m["n"] * 1e6
        return m

    def describe(self) -> list[str]:
        return [f"{self.n:,} chat requests, {self.latency * 1000:.0f} ms simulated latency, "
                f"{self.c} in flight: ideal N·latency/C = {self.ideal(self.n):.2f} s. A contender "
                "whose per-request cost (measured by a short probe) would make a run last over "
                "~8 s runs fewer requests (column n; at least 4 waves); its × ideal is then at "
                "its own n. Runs over 6 s are not repeated (except batchmagic and the floor)."]

    def summary(self) -> dict:
        floor = self.case("aiohttp")
        fx = floor.median("x_ideal") if floor else None
        out = {}
        for c in self.cases:
            x = c.median("x_ideal")
            out[c.label] = {"x_ideal": x, "x_floor": x / fx if x and fx else None,
                            "wall": c.spread("wall"), "cpu_us": c.median("cpu_us")}
        return out

    def table(self) -> list[str]:
        s = self.summary()
        lines = ["| contender | n | wall median (min–max) | × ideal | × aiohttp floor | "
                 "client CPU / request | rows failed |", "|---|---|---|---|---|---|---|"]
        for c in self.cases:
            if c.error and not c.runs:
                lines.append(f"| {c.label} | | {self.failed_cell(c)} | | | | |")
                continue
            r = s[c.label]
            xf = f"{r['x_floor']:.2f}" if r["x_floor"] else "-"
            lines.append(f"| {c.label} | {c.spec['n']:,} | {fmt_spread(c.spread('wall'), unit=' s')}"
                         f" | {fmt_spread(c.spread('x_ideal'))} | {xf} | "
                         f"{c.median('cpu_us'):,.0f} µs | {_failed(c)} |")
        return lines

    def estimate_s(self) -> float:
        return _estimate(self, lambda c: max(self.ideal(c.spec["n"]) * 1.2,
                                             1.2 * c.spec["n"] * self.ctx.probe.get(c.contender, 0)))


def _estimate(w: Workload, per_run) -> float:  # noqa: ANN001
    total = 0.0
    cases = w.plan()
    repeats = w.ctx.repeats or w.repeats
    for c in cases:
        if c.contender in w.ctx.broken:
            continue
        t = per_run(c)
        reps = repeats if c.always or c.contender in w.always_repeat or t <= w.slow_after else 1
        start = 4.0 if CONTENDERS[c.contender].venv == "peers" else 1.5
        total += reps * (t + start)
    return total + 2.0


# -- W2 ---------------------------------------------------------------------------------------------


class CpuBound(Workload):
    key = "W2"
    title = "CPU-bound ceiling"
    contenders = LatencyBound.contenders
    target = "batchmagic's client CPU per request ≤ 1.2× the raw aiohttp floor's, journal on."
    slow_after = 5.0

    def __init__(self, ctx: Ctx):
        super().__init__(ctx)
        self.n, self.c = (300, 32) if self.q else (self.size(20_000), 256)

    def sim_config(self) -> dict:
        return {"latency": 0.0, "log_calls": False}

    def plan(self) -> list[Case]:
        return [Case(name, spec={**self.base_spec(), "n": self.cap(name, self.n, 8.0, 1000),
                                 "concurrency": self.c, "unbounded": True})
                for name in self.contenders if name in self.ctx.contenders]

    def measure(self, case: Case, rr: RunResult) -> dict:
        m = super().measure(case, rr)
        m["rps"] = m["ok"] / m["wall"]
        m["cpu_us"] = m["cpu"] / m["n"] * 1e6
        return m

    def describe(self) -> list[str]:
        return [f"{self.n:,} chat requests, zero simulated latency, {self.c} in flight; the "
                "simulator runs in its own process on the other core. Slow contenders run fewer "
                "requests (n) so that one run stays under ~8 s, once; rates are comparable."]

    def table(self) -> list[str]:
        floor = self.case("aiohttp")
        f = floor.median("rps") if floor else None
        lines = ["| contender | n | requests/s median (min–max) | × aiohttp floor | "
                 "client CPU / request | rows failed |", "|---|---|---|---|---|---|"]
        for c in self.cases:
            if c.error and not c.runs:
                lines.append(f"| {c.label} | | {self.failed_cell(c)} | | | |")
                continue
            rps = c.median("rps")
            xf = f"{rps / f:.2f}" if f and rps else "-"
            lines.append(f"| {c.label} | {c.spec['n']:,} | {fmt_spread(c.spread('rps'), '{:,.0f}')}"
                         f" | {xf} | {fmt_spread(c.spread('cpu_us'), '{:,.0f}', ' µs')} | "
                         f"{_failed(c)} |")
        return lines

    def estimate_s(self) -> float:
        return _estimate(self, lambda c: c.spec["n"] * max(self.ctx.probe.get(c.contender, 0.0),
                                                           1 / 4000))


# -- W3 ---------------------------------------------------------------------------------------------


RATE_CONTENDERS = ["aiohttp", "openai", "qianfan", "litellm", "curator", "langchain", "batchmagic"]


class RateLimited(Workload):
    key = "W3"
    title = "Rate-limited (limits announced in headers)"
    contenders = RATE_CONTENDERS
    target = ("≥ 95% of the binding limit with zero user-visible 429s (rows failed), for "
              "batchmagic given no limit and given the limit.")
    repeats = 1
    calls = True
    stop_at_deadline = True

    def __init__(self, ctx: Ctx):
        super().__init__(ctx)
        if self.q:  # limits 5x higher so that the tiny run is short
            self.rpm, self.tpm, self.latency, self.c, self.n = 6000, 135_000, 0.02, 32, 120
        else:
            self.rpm, self.tpm, self.latency, self.c = 1200, 27_000, 0.1, 64
            self.n = self.size(600, 100)
        self.charge = PROMPT_TOKENS + MAX_TOKENS
        self.binding = min(self.rpm / 60, self.tpm / 60 / self.charge)  # requests per second
        # a run still going at 1.3x the ideal time is stopped: its share of the limit is
        # measured over the time it ran, its unanswered rows are reported as unknown
        self.timeout = max(10.0, 1.3 * self.n / self.binding + 3)

    def sim_config(self) -> dict:
        return {"latency": self.latency, "rpm": self.rpm, "tpm": self.tpm,
                "ratelimit_headers": True, "retry_after_format": "seconds", "log_calls": True}

    def limit_spec(self, name: str) -> tuple[dict, str]:
        if name in ("batchmagic", "qianfan", "litellm", "curator"):
            own = {"batchmagic": "rpm=, tpm=", "qianfan": "request_per_minute=, "
                   "token_per_minute= (its limiters keep a 10% buffer)",
                   "litellm": "Router rpm / tpm (usage-based-routing-v2)",
                   "curator": "max_requests_per_minute / max_tokens_per_minute"}[name]
            return {"rpm": self.rpm, "tpm": self.tpm}, own
        if name == "langchain":
            return ({"pace_rps": self.binding},
                    f"InMemoryRateLimiter({self.binding:.2f} requests/s; it has no TPM)")
        return ({"pace_rps": self.binding},
                f"none of its own: semaphore + pacing at {self.binding:.2f} requests/s")

    def plan(self) -> list[Case]:
        out = []
        for name in self.contenders:
            if name not in self.ctx.contenders:
                continue
            base = {**self.base_spec(), "n": self.n, "concurrency": self.c}
            out.append(Case(name, "no limit", dict(base), how="nothing"))
            extra, how = self.limit_spec(name)
            out.append(Case(name, "limit given", {**base, **extra}, how=how))
        return out

    def describe(self) -> list[str]:
        return [f"{self.n} chat requests, {self.latency * 1000:.0f} ms latency, {self.c} in "
                f"flight; the simulator allows {self.rpm:,} requests/min and {self.tpm:,} "
                f"tokens/min (charged as prompt + max_tokens = {self.charge} per request), so the "
                f"binding limit is tokens: {self.binding * 60:,.0f} requests/min. It answers 429 "
                "with Retry-After and x-ratelimit-* headers. % of limit = answers per second at "
                "the server (200s in its call log) from one second after the first request, when "
                "the burst allowance is spent, to the last answer, over the binding limit. A run "
                "still going at 1.3× the ideal time is stopped there (its share is measured over "
                "that time)."]

    def measure(self, case: Case, rr: RunResult) -> dict:
        m = super().measure(case, rr)
        m.update(rate_stats(rr, self.binding, MAX_TOKENS, self.rpm, self.tpm))
        return m

    def progress_line(self, m: dict) -> str:
        return (super().progress_line(m) + f", {percent(m['share'])} of limit, "
                f"{m['n429']} 429s")

    def table(self) -> list[str]:
        lines = ["| contender | limit given as | % of binding limit | 429s (server) | "
                 "rows failed | wall |", "|---|---|---|---|---|---|"]
        for c in self.cases:
            if c.error and not c.runs:
                lines.append(f"| {c.label} | {c.how} | {self.failed_cell(c)} | | | |")
                continue
            lines.append(f"| {c.label} | {c.how} | {fmt_spread(c.spread('share'), '{:.0%}')} | "
                         f"{fmt_spread(c.spread('n429'), '{:.0f}')} | {_failed(c)} | "
                         f"{fmt_spread(c.spread('wall'), '{:.1f}', ' s')} |")
        return lines

    def estimate_s(self) -> float:
        return _estimate(self, lambda c: min(self.timeout, self.n / self.binding + 2))


def rate_stats(rr: RunResult, binding: float, max_tokens: int, rpm: float, tpm: float) -> dict:
    calls = rr.calls
    ok = sorted(r["t"] for r in calls if r["status"] == 200)
    n429 = int(rr.server.get("by_status", {}).get("429", 0))
    if not ok:
        return {"share": None, "n429": n429, "requests": len(calls)}
    prompt = statistics.median(r["prompt_tokens"] for r in calls
                               if r["status"] == 200 and r["prompt_tokens"] is not None)
    charge = prompt + max_tokens
    rate = min(rpm / 60, tpm / 60 / charge)
    burst = min(rpm / 60, tpm / 60 / charge)  # both buckets start full with one second's worth
    t0 = min(r["t"] for r in calls)
    if ok[-1] - t0 > 3.0:
        # the steady rate: answers from one second after the first request (the server's burst
        # allowance is spent by then, or was never used by a paced client) to the last answer
        start = t0 + 1.0
        got = sum(1 for t in ok if t > start)
        share = min(1.0, got / ((ok[-1] - start) * rate))
    else:  # too short for that: the ideal time for these answers over the time they took
        ideal = max(0.0, len(ok) - burst) / rate
        actual = ok[-1] - t0
        share = min(1.0, ideal / actual) if actual > 0 else 1.0
    return {"share": share, "n429": n429, "requests": len(calls), "charge": charge,
            "binding_rps": rate}


# -- W4 ---------------------------------------------------------------------------------------------


FAULTS = {"500": 0.03, "502": 0.01, "503": 0.02, "reset_before": 0.01, "reset_after": 0.02,
          "truncated": 0.01}


class Faults(Workload):
    key = "W4"
    title = "Transient faults"
    contenders = RATE_CONTENDERS
    target = "no row lost; duplicates only where the server may already have answered."
    repeats = 1
    calls = True

    def __init__(self, ctx: Ctx):
        super().__init__(ctx)
        self.n, self.c, self.latency = (100, 16, 0.02) if self.q else (self.size(2000), 64, 0.05)

    def sim_config(self) -> dict:
        return {"latency": self.latency, "faults": FAULTS, "fault_attempts": 1, "fault_seed": 7,
                "log_calls": True}

    def plan(self) -> list[Case]:
        return [Case(name, spec={**self.base_spec(), "n": self.n, "concurrency": self.c,
                                 "unbounded": True})
                for name in self.contenders if name in self.ctx.contenders]

    def describe(self) -> list[str]:
        mix = ", ".join(f"{k} {v:.0%}" for k, v in FAULTS.items())
        return [f"{self.n:,} chat requests, {self.latency * 1000:.0f} ms latency, {self.c} in "
                f"flight; 10% of request bodies get a seeded transient fault on their first "
                f"arrival only ({mix}). Each library runs with its default retry policy. "
                "Duplicated = rows the server answered (or processed, then cut the connection) "
                "more than once, from the call log: answers that may be billed twice."]

    def measure(self, case: Case, rr: RunResult) -> dict:
        m = super().measure(case, rr)
        billable: Counter = Counter()
        for r in rr.calls:
            if r["status"] == 200 or r["fault"] in BILLABLE_FAULTS:
                billable[r["tag"]] += 1
        m["lost"] = case.spec["n"] - m["ok"]
        m["duplicated"] = sum(1 for v in billable.values() if v > 1)
        m["extra"] = len(rr.calls) - case.spec["n"]
        m["faults"] = sum(rr.server.get("by_fault", {}).values())
        return m

    def progress_line(self, m: dict) -> str:
        return (super().progress_line(m) + f", lost {m['lost']}, duplicated {m['duplicated']}, "
                f"extra requests {m['extra']}")

    def table(self) -> list[str]:
        lines = ["| contender | rows answered | rows lost | rows duplicated | extra requests | "
                 "faults injected | wall | errors seen by the user |",
                 "|---|---|---|---|---|---|---|---|"]
        for c in self.cases:
            if c.error and not c.runs:
                lines.append(f"| {c.label} | {self.failed_cell(c)} | | | | | | |")
                continue
            lines.append(f"| {c.label} | {fmt_spread(c.spread('ok'), '{:,.0f}')} | "
                         f"{fmt_spread(c.spread('lost'), '{:,.0f}')} | "
                         f"{fmt_spread(c.spread('duplicated'), '{:,.0f}')} | "
                         f"{fmt_spread(c.spread('extra'), '{:,.0f}')} | "
                         f"{fmt_spread(c.spread('faults'), '{:,.0f}')} | "
                         f"{fmt_spread(c.spread('wall'), '{:.1f}', ' s')} | "
                         f"{_errors_text(c) or '-'} |")
        return lines

    def estimate_s(self) -> float:
        return _estimate(self, lambda c: self.n * self.latency / self.c * 1.5 + 4)


# -- W5 ---------------------------------------------------------------------------------------------


class MovingLimit(Workload):
    key = "W5"
    title = "Unknown limit, moving limit"
    contenders = RATE_CONTENDERS
    target = "≥ 85% of each new limit within 15 s."
    repeats = 1
    calls = True
    stop_at_deadline = True  # the metrics come from the call log while the phases last

    def __init__(self, ctx: Ctx):
        super().__init__(ctx)
        if self.q:
            self.phases, self.latency, self.c = [(0.0, 100.0), (0.6, 60.0), (1.2, 125.0)], 0.02, 32
            self.window = 0.6
        else:
            d = 15.0 * min(1.0, self.ctx.scale)
            self.phases, self.latency, self.c = [(0.0, 200.0), (d, 120.0), (2 * d, 250.0)], 0.1, 64
            self.window = d
        last_start, last_rate = self.phases[-1]
        # enough requests to keep a client at the limit busy until the last phase's window ends
        self.n = int(sum(r * (b - a) for (a, r), (b, _) in zip(self.phases, self.phases[1:]))
                     + last_rate * (self.window + (2 if not self.q else 0.5)))
        self.retry_after = 1.0  # the simulator's Retry-After is whole seconds, at least 1
        self.timeout = self.phases[-1][0] + self.window + (2.0 if self.q else 3.0)

    def sim_config(self) -> dict:
        return {"latency": self.latency, "rpm": self.phases[0][1] * 60, "ratelimit_headers": False,
                "retry_after_format": "seconds", "log_calls": True}

    def plan(self) -> list[Case]:
        return [Case(name, spec={**self.base_spec(), "n": self.n, "concurrency": self.c},
                     how="no limit given")
                for name in self.contenders if name in self.ctx.contenders]

    def before_go(self, case: Case):  # noqa: ANN201
        schedule = [[at, {"rpm": rate * 60}] for at, rate in self.phases[1:]]

        def go(sim) -> dict:  # noqa: ANN001
            sim.configure(rpm=self.phases[0][1] * 60, schedule=schedule)
            return {"t_set": sim.health()["uptime_s"]}

        return go

    def describe(self) -> list[str]:
        phases = " → ".join(f"{r:.0f}/s at {a:.0f} s" for a, r in self.phases)
        return [f"{self.n:,} chat requests, {self.latency * 1000:.0f} ms latency, {self.c} in "
                f"flight, no limit given to anyone and no x-ratelimit-* headers: only 429 + "
                f"Retry-After. The limit moves {phases}. From the call log (200s by arrival "
                "time): the share of each phase's limit reached over its last 5 s, and the time "
                "from the phase's start until a 1-s window first holds 85% of it (1.0 s = at "
                "once; after a drop that is trivially so). Longest stall = the longest gap "
                "between two answers, in units of one Retry-After (1 s)."]

    def measure(self, case: Case, rr: RunResult) -> dict:
        m = super().measure(case, rr)
        t_set = rr.context.get("t_set", 0.0)
        ok = sorted(r["t"] - t_set for r in rr.calls if r["status"] == 200)
        end = max((r["t"] - t_set for r in rr.calls), default=0.0)
        phases = []
        for i, (start, rate) in enumerate(self.phases):
            stop = self.phases[i + 1][0] if i + 1 < len(self.phases) else start + self.window
            stop_seen = min(stop, end)
            if stop_seen <= start:
                phases.append({"rate": rate, "share": None, "t85": None, "ended": True})
                continue
            tail = min(5.0, stop_seen - start) if not self.q else min(0.5, stop_seen - start)
            got = sum(1 for t in ok if stop_seen - tail <= t < stop_seen)
            share = got / (tail * rate)
            t85 = None
            win = 1.0 if not self.q else 0.4
            step = 0.25 if not self.q else 0.05
            t = start + win
            while t <= stop_seen + 1e-9:
                if sum(1 for x in ok if t - win <= x < t) >= 0.85 * win * rate:
                    t85 = t - start
                    break
                t += step
            phases.append({"rate": rate, "share": share, "t85": t85,
                           "ended": stop_seen < stop - 0.5})
        gaps = [b - a for a, b in zip(ok, ok[1:])]
        if ok:
            gaps.append(ok[0])  # from the start to the first answer
        n429 = int(rr.server.get("by_status", {}).get("429", 0))
        m.update(phases=phases, n429=n429, share429=n429 / max(1, len(rr.calls)),
                 stall=max(gaps) if gaps else None)
        for i, p in enumerate(phases):
            m[f"share{i}"] = p["share"]
            m[f"t85_{i}"] = p["t85"]
        return m

    def progress_line(self, m: dict) -> str:
        shares = " / ".join(percent(p["share"]) for p in m["phases"])
        return (super().progress_line(m) + f", phase shares {shares}, 429 share "
                f"{percent(m['share429'])}, longest stall {m['stall'] or 0:.1f} s")

    def table(self) -> list[str]:
        heads = " | ".join(f"phase {i + 1}: {r:.0f}/s — share, time to 85%"
                           for i, (_, r) in enumerate(self.phases))
        lines = [f"| contender | {heads} | 429 share | longest stall (× Retry-After) | "
                 "rows failed |", "|---" * (4 + len(self.phases)) + "|"]
        for c in self.cases:
            if c.error and not c.runs:
                lines.append(f"| {c.label} | {self.failed_cell(c)} |" + " |" * (2 + len(self.phases)))
                continue
            cells = []
            r = c.runs[0]
            for p in r["phases"]:
                if p["share"] is None:
                    cells.append("run over before this phase")
                    continue
                t85 = f"{p['t85']:.1f} s" if p["t85"] is not None else "not reached"
                cells.append(f"{percent(p['share'])}, {t85}" + (" (run ended)" if p["ended"] else ""))
            stall = r["stall"]
            st = f"{stall:.1f} s ({stall / self.retry_after:.1f}×)" if stall is not None else "-"
            lines.append(f"| {c.label} | " + " | ".join(cells) +
                         f" | {percent(r['share429'])} | {st} | {_failed(c)} |")
        return lines

    def estimate_s(self) -> float:
        return _estimate(self, lambda c: self.timeout)


# -- W6 ---------------------------------------------------------------------------------------------


class CapacityCollapse(Workload):
    key = "W6"
    title = "Capacity collapse (a self-hosted, vLLM-like server)"
    target = "≥ 90% of the optimal goodput K / latency."
    repeats = 2
    slow_after = 0.0  # one run each, but batchmagic's adaptive control (the target) runs twice
    always_repeat = ()
    stop_at_deadline = True  # a run past 3x the optimal time is stopped, its goodput measured

    def __init__(self, ctx: Ctx):
        super().__init__(ctx)
        if self.q:
            self.k, self.latency, self.n, self.low, self.high = 8, 0.02, 80, 4, 64
        else:
            # K below half of batchmagic's default window ceiling (64 for this preset), so that
            # its adaptive control, not its ceiling, has to find the server's capacity
            self.k, self.latency, self.n, self.low, self.high = 16, 0.05, self.size(2000), 8, 256
        self.optimum = self.k / self.latency
        self.timeout = max(10.0, 3 * self.n / self.optimum + 5)

    def sim_config(self) -> dict:
        return {"latency": self.latency, "capacity": self.k, "log_calls": False}

    def plan(self) -> list[Case]:
        base = {**self.base_spec(), "n": self.n, "unbounded": True}
        out = []
        for name in RATE_CONTENDERS:
            if name not in self.ctx.contenders:
                continue
            if name in ("aiohttp", "batchmagic") and not self.q:
                out.append(Case(name, f"fixed low, {self.low}", {**base, "concurrency": self.low}))
            out.append(Case(name, f"fixed high, {self.high}", {**base, "concurrency": self.high}))
            if name == "batchmagic":
                out.append(Case(name, "adaptive: no concurrency given",
                                {**base, "concurrency": None}, always=True))
        return out

    def describe(self) -> list[str]:
        return [f"{self.n:,} chat requests to a server with capacity K = {self.k} (latency "
                f"{self.latency * 1000:.0f} ms up to K in flight, stretched in proportion above "
                f"it) that answers 503 at once above 2K = {2 * self.k} in flight. Optimum goodput "
                f"K / latency = {self.optimum:.0f} answers/s. Latency p95 is per answered request "
                "as the client saw it, where the library exposes it. A run still going after 3× "
                "the optimal time is stopped; its goodput is the server's 200s over that time."]

    def measure(self, case: Case, rr: RunResult) -> dict:
        m = super().measure(case, rr)
        answered = m["ok"] if m["ok"] is not None else \
            int(rr.server.get("by_status", {}).get("200", 0))  # stopped: the server's count
        m["goodput"] = answered / m["wall"]
        m["share"] = m["goodput"] / self.optimum
        m["p95"] = rr.data.get("lat_p95")
        m["n503"] = int(rr.server.get("by_status", {}).get("503", 0))
        m["max_in_flight"] = rr.server.get("max_in_flight")
        return m

    def progress_line(self, m: dict) -> str:
        return (super().progress_line(m) + f", goodput {m['goodput']:.0f}/s "
                f"({percent(m['share'])}), 503s {m['n503']}")

    def table(self) -> list[str]:
        lines = ["| contender | goodput (answers/s) | % of optimum | p95 latency | 503s | "
                 "rows failed | max in flight at the server |", "|---|---|---|---|---|---|---|"]
        for c in self.cases:
            if c.error and not c.runs:
                lines.append(f"| {c.label} | {self.failed_cell(c)} | | | | | |")
                continue
            p95 = c.spread("p95")
            lines.append(f"| {c.label} | {fmt_spread(c.spread('goodput'), '{:.0f}')} | "
                         f"{fmt_spread(c.spread('share'), '{:.0%}')} | "
                         f"{fmt_spread(p95, '{:.2f}', ' s') if p95 else '-'} | "
                         f"{fmt_spread(c.spread('n503'), '{:,.0f}')} | {_failed(c)} | "
                         f"{fmt_spread(c.spread('max_in_flight'), '{:.0f}')} |")
        return lines

    def estimate_s(self) -> float:
        return _estimate(self, lambda c: min(self.timeout, self.n / min(
            self.optimum, (c.spec["concurrency"] or self.k) / self.latency) * 1.3 + 2))


# -- W7 ---------------------------------------------------------------------------------------------


class Embeddings(Workload):
    key = "W7"
    title = "Embeddings"
    contenders = ["aiohttp", "openai", "openai-aiohttp", "batchmagic"]
    target = "batchmagic ≥ 0.8× the floor and ≥ 3× AsyncOpenAI, in inputs/s."
    slow_after = 8.0

    def __init__(self, ctx: Ctx):
        super().__init__(ctx)
        self.n, self.dim, self.pack, self.c = ((4000, 32, 2048, 16) if self.q
                                               else (self.size(200_000), 32, 2048, 16))

    def sim_config(self) -> dict:
        return {"latency": 0.0, "embedding_dim": self.dim, "log_calls": False}

    def plan(self) -> list[Case]:
        spec = {"kind": "embedding", "n": self.n, "pack": self.pack, "embedding_dim": self.dim,
                "concurrency": self.c}
        out = [Case(name, spec=dict(spec)) for name in self.contenders
               if name in self.ctx.contenders]
        if "batchmagic" in self.ctx.contenders:  # how much of its cost is the journal
            out.append(Case("batchmagic", "cache=False", {**spec, "journal": False}))
        return out

    def describe(self) -> list[str]:
        return [f"{self.n:,} short texts to /v1/embeddings ({self.dim}-dimensional vectors), "
                f"{self.pack:,} inputs per request (batchmagic's cap for this server; the floor "
                f"packs the same way and asks for base64, decoded with numpy), {self.c} requests "
                "in flight, zero latency. AsyncOpenAI sends the same packed requests through "
                "embeddings.create (it asks for base64 and decodes to Python lists). batchmagic "
                "runs with its journal on, as everywhere, and once more with cache=False."]

    def measure(self, case: Case, rr: RunResult) -> dict:
        m = super().measure(case, rr)
        m["ips"] = m["ok"] / m["wall"]
        m["cpu_us"] = m["cpu"] / m["n"] * 1e6
        return m

    def table(self) -> list[str]:
        floor, oa = self.case("aiohttp"), self.case("openai")
        f = floor.median("ips") if floor else None
        o = oa.median("ips") if oa else None
        lines = ["| contender | inputs/s median (min–max) | × floor | × AsyncOpenAI | "
                 "client CPU / input | rows failed |", "|---|---|---|---|---|---|"]
        for c in self.cases:
            if c.error and not c.runs:
                lines.append(f"| {c.label} | {self.failed_cell(c)} | | | | |")
                continue
            ips = c.median("ips")
            xf = f"{ips / f:.2f}" if f and ips else "-"
            xo = f"{ips / o:.2f}" if o and ips else "-"
            lines.append(f"| {c.label} | {fmt_spread(c.spread('ips'), '{:,.0f}')} | {xf} | {xo} | "
                         f"{fmt_spread(c.spread('cpu_us'), '{:.1f}', ' µs')} | {_failed(c)} |")
        return lines

    def estimate_s(self) -> float:
        return _estimate(self, lambda c: self.n / (60_000 if c.contender != "openai" else 15_000))


# -- W8 ---------------------------------------------------------------------------------------------


class Scale(Workload):
    key = "W8"
    title = "Scale: a million embedding rows"
    target = "peak RSS ≤ 1.5× the final DataFrame's memory; the first request < 2 s after the call."
    repeats = 1
    timeout = 1500.0

    def __init__(self, ctx: Ctx):
        super().__init__(ctx)
        self.n, self.dim = (5_000, 8) if self.q else (self.size(1_000_000), 8)

    def sim_config(self) -> dict:
        return {"latency": 0.0, "embedding_dim": self.dim, "log_calls": False}

    def plan(self) -> list[Case]:
        if "batchmagic" not in self.ctx.contenders:
            return []
        spec = {"kind": "embedding", "n": self.n, "embedding_dim": self.dim, "concurrency": None,
                "measure_frame": True}
        return [Case("batchmagic", "journal on", {**spec, "journal": True}),
                Case("batchmagic", "cache=False", {**spec, "journal": False})]

    def describe(self) -> list[str]:
        return [f"{self.n:,} embedding rows ({self.dim}-dimensional vectors) through bm.batch "
                "with default concurrency, once with the journal on (a fresh folder) and once "
                "with cache=False. Peak RSS is the child process's ru_maxrss (it includes the "
                "interpreter, pandas and the input list); its growth is the peak less the RSS "
                "just before the call (what the run added to a process that held those); frame "
                "memory is "
                "df.memory_usage(deep=True).sum(); first request is the time from the bm.batch "
                "call to the simulator's first request (wall clocks of one machine)."]

    def measure(self, case: Case, rr: RunResult) -> dict:
        m = super().measure(case, rr)
        m["rss_mb"] = rr.data["rss_peak_mb"]
        m["df_mb"] = rr.data.get("df_bytes", 0) / 2**20
        m["rss_x_df"] = m["rss_mb"] / m["df_mb"] if m["df_mb"] else None
        before = rr.data.get("rss_before_mb")  # what the process held when it called bm.batch
        m["growth_x_df"] = (m["rss_mb"] - before) / m["df_mb"] if before and m["df_mb"] else None
        m["journal_mb"] = (rr.data.get("journal_bytes") or 0) / 2**20
        m["rows_s"] = m["ok"] / m["wall"]
        first, started = (rr.server or {}).get("first_request_at"), rr.data.get("started_at")
        m["first_s"] = first - started if first and started else None
        return m

    def progress_line(self, m: dict) -> str:
        return (super().progress_line(m) + f", peak RSS {m['rss_mb']:.0f} MB, frame "
                f"{m['df_mb']:.0f} MB")

    def table(self) -> list[str]:
        on, off = self.case("batchmagic", "journal on"), self.case("batchmagic", "cache=False")
        lines = ["| mode | wall | rows/s | first request | peak RSS | frame memory | RSS ÷ frame |"
                 " growth ÷ frame | journal on disk | rows failed |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for c in (on, off):
            if c is None:
                continue
            if c.error and not c.runs:
                lines.append(f"| {c.mode} | {self.failed_cell(c)} | | | | | | | | |")
                continue
            first, growth = c.median("first_s"), c.median("growth_x_df")
            lines.append(f"| {c.mode} | {fmt_spread(c.spread('wall'), '{:.1f}', ' s')} | "
                         f"{c.median('rows_s'):,.0f} | "
                         f"{'-' if first is None else f'{first:.2f} s'} | "
                         f"{c.median('rss_mb'):,.0f} MB | "
                         f"{c.median('df_mb'):,.0f} MB | {c.median('rss_x_df'):.2f} | "
                         f"{'-' if growth is None else f'{growth:.2f}'} | "
                         f"{c.median('journal_mb'):,.0f} MB | {_failed(c)} |")
        if on and off and on.runs and off.runs:
            share = 1 - off.median("wall") / on.median("wall")
            lines += ["", f"The journal's share of wall time: {share:.0%} "
                          "(1 − wall with cache=False / wall with the journal)."]
        return lines

    def estimate_s(self) -> float:
        return self.n / 16_000 + self.n / 45_000 + 10


WORKLOADS = {w.key: w for w in (LatencyBound, CpuBound, RateLimited, Faults, MovingLimit,
                               CapacityCollapse, Embeddings, Scale)}


def probe(ctx: Ctx) -> None:
    """A short zero-latency run per chat contender: does it work against the simulator at all,
    and what does one request cost it (this sizes the runs of W1 and W2)."""
    from batchmagic.simulator import SimulatorProcess

    names = [n for n in ctx.contenders if n in LatencyBound.contenders]
    with SimulatorProcess(latency=0.0, log_calls=False) as sim:
        for name in names:
            spec = {"kind": "chat", "max_tokens": MAX_TOKENS, "n": 512, "concurrency": 256,
                    "unbounded": True}
            rr = run_one(name, spec, sim, timeout=180)
            if not rr.ok:
                ctx.broken[name] = rr.error or "failed"
                ctx.log(f"  [probe] {name}: {rr.error}")
                continue
            if rr.data["ok"] == 0:
                ctx.broken[name] = f"no request answered ({rr.data.get('errors')})"
                ctx.log(f"  [probe] {name}: {ctx.broken[name]}")
                continue
            ctx.probe[name] = rr.data["wall"] / 512
            ctx.log(f"  [probe] {name}: {rr.data['wall'] / 512 * 1e3:.2f} ms per request at "
                    f"zero latency, 256 in flight ({rr.data['ok']}/512 ok)")

