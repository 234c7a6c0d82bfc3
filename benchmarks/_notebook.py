"""W9: a background run in a real Jupyter kernel (jupyter_client): how many widget messages the
panel sends per second, and how long a trivial cell takes while the run goes on."""

from __future__ import annotations

import os
import queue
import shutil
import statistics
import tempfile
import time
from typing import Any

from ._harness import ROOT
from ._workloads import MAX_TOKENS, Case, Ctx, Workload


class Notebook(Workload):
    key = "W9"
    title = "Notebook: a background run in a real kernel"
    target = "≤ 10 display updates/s, and trivial cells stay fast during the run."
    repeats = 1

    def __init__(self, ctx: Ctx):
        super().__init__(ctx)
        self.n, self.latency, self.c = (300, 0.02, 16) if self.q else (10_000, 0.05, 64)
        self.unavailable: str | None = None
        self.m: dict = {}

    def plan(self) -> list[Case]:
        return [Case("batchmagic", "bm.submit in a kernel")] if "batchmagic" in self.ctx.contenders \
            else []

    def describe(self) -> list[str]:
        return [f"{self.n:,} chat rows, {self.latency * 1000:.0f} ms latency, {self.c} in flight,"
                " started with bm.submit(...) in an ipykernel after `%load_ext batchmagic`; while"
                " it runs, `1+1` cells are executed one after another. Counted: comm_msg messages "
                "on iopub (the panel's widget updates; a burst of messages within 20 ms is one "
                "display update), over the run's wall time."]

    def estimate_s(self) -> float:
        return self.n * self.latency / self.c * 1.3 + 15

    def run(self) -> None:
        self.cases = self.plan()
        if not self.cases:
            return
        case = self.cases[0]
        try:
            from jupyter_client.manager import start_new_kernel
        except ImportError:
            self.unavailable = "jupyter_client is not installed"
            case.error = f"not available: {self.unavailable}"
            return
        from batchmagic.simulator import SimulatorProcess

        tmp = tempfile.mkdtemp(prefix="bm-bench-kernel-")
        env = dict(os.environ, BATCHMAGIC_JOURNAL_DIR=os.path.join(tmp, "journal"),
                   IPYTHONDIR=os.path.join(tmp, "ipython"),
                   PYTHONPATH=os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]]
                                                             if os.environ.get("PYTHONPATH")
                                                             else [])))
        km = kc = None
        try:
            with SimulatorProcess(latency=self.latency, log_calls=False) as sim:
                try:
                    km, kc = start_new_kernel(kernel_name="python3", cwd=tmp, env=env,
                                              startup_timeout=90)
                except Exception as exc:  # noqa: BLE001
                    case.error = f"not available: no kernel could be started ({exc})"
                    return
                k = _Kernel(kc)
                err = k.run("%load_ext batchmagic")["error"]
                if err:
                    self.unavailable = f"the notebook extension cannot be loaded: {err}"
                    case.error = f"not available: {self.unavailable}"
                    return
                setup = (f"import batchmagic as bm\ntexts = [f'row {{i}}' for i in range({self.n})]")
                err = k.run(setup)["error"]
                if err:
                    case.error = f"not available: {err}"
                    return
                k.comm.clear()
                t0 = time.monotonic()
                r = k.run(f"task = bm.submit(texts, provider='simulator', base_url={sim.base_url!r},"
                          f" model='sim-chat', params={{'max_tokens': {MAX_TOKENS}}}, "
                          f"concurrency={self.c}, cache=False)")
                if r["error"]:
                    case.error = f"bm.submit failed in the kernel: {r['error']}"
                    return
                submit_s = time.monotonic() - t0
                latencies: list[float] = []
                deadline = time.monotonic() + max(120.0, self.n * self.latency / self.c * 20)
                done = False
                while not done and time.monotonic() < deadline:
                    for _ in range(5):
                        t = time.monotonic()
                        out = k.run("1+1")
                        latencies.append(time.monotonic() - t)
                        if out["result"] != "2":
                            case.error = f"a trivial cell failed during the run: {out}"
                            return
                    done = k.run("task.done()")["result"] == "True"
                if not done:
                    case.error = "the background run did not finish in time"
                    return
                k.drain(1.0)  # the panel's last update after the run ended
                facts = k.run("_f = task.wait().attrs['batchmagic']\n"
                              "(_f['wall_s'], _f['ok'], _f['failed'])")["result"]
                wall, ok, failed = eval(facts)  # noqa: S307  (our own tuple of numbers)
                stamps = sorted(k.comm)
                updates = 0
                last = None
                for s in stamps:
                    if last is None or s - last > 0.02:
                        updates += 1
                    last = s
                self.m = {"wall": wall, "ok": ok, "failed": failed, "comm_msgs": len(stamps),
                          "comm_per_s": len(stamps) / wall, "updates": updates,
                          "updates_per_s": updates / wall, "cells": len(latencies),
                          "cell_median": statistics.median(latencies),
                          "cell_p95": sorted(latencies)[int(0.95 * (len(latencies) - 1))],
                          "cell_max": max(latencies), "submit_s": submit_s, "cpu": 0.0,
                          "errors": {}, "n": self.n}
                case.runs.append(self.m)
                self.ctx.log(f"  [W9] {self.n} rows in {wall:.2f} s: {len(stamps)} comm messages "
                             f"({self.m['comm_per_s']:.1f}/s, {self.m['updates_per_s']:.1f} "
                             f"updates/s); {len(latencies)} trivial cells, median "
                             f"{self.m['cell_median'] * 1000:.0f} ms, max "
                             f"{self.m['cell_max'] * 1000:.0f} ms")
        finally:
            if kc is not None:
                kc.stop_channels()
            if km is not None:
                km.shutdown_kernel(now=True)
            shutil.rmtree(tmp, ignore_errors=True)

    def table(self) -> list[str]:
        lines = ["| run | rows | wall | comm messages/s | display updates/s | trivial cell: "
                 "median / p95 / max | rows failed |", "|---|---|---|---|---|---|---|"]
        for c in self.cases:
            if not c.runs:
                lines.append(f"| {c.mode} | {c.error or 'not run'} | | | | | |")
                continue
            m = c.runs[0]
            lines.append(f"| {c.mode} | {m['ok']:,} | {m['wall']:.2f} s | {m['comm_per_s']:.1f} | "
                         f"{m['updates_per_s']:.1f} | {m['cell_median'] * 1000:.0f} / "
                         f"{m['cell_p95'] * 1000:.0f} / {m['cell_max'] * 1000:.0f} ms | "
                         f"{m['failed']} |")
        return lines


class _Kernel:
    """Execute cells one at a time; every comm_msg seen on iopub is time-stamped (arrival)."""

    def __init__(self, kc: Any):
        self.kc = kc
        self.comm: list[float] = []

    def _take(self, msg: dict) -> None:
        if msg["msg_type"] == "comm_msg":
            self.comm.append(time.monotonic())

    def run(self, code: str, timeout: float = 120.0) -> dict:
        msg_id = self.kc.execute(code)
        out: dict = {"result": None, "error": None}
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                out["error"] = "timed out"
                return out
            self._take(msg)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "execute_result":
                out["result"] = content["data"].get("text/plain")
            elif kind == "error":
                out["error"] = f"{content['ename']}: {content['evalue']}"
            elif kind == "status" and content["execution_state"] == "idle":
                return out

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self._take(self.kc.get_iopub_msg(timeout=max(0.05, end - time.monotonic())))
            except queue.Empty:
                return
