"""The comparison benchmarks' harness still runs: `python -m benchmarks run --quick` against
batchmagic and the raw aiohttp floor completes and writes its Markdown and JSON. Nothing here is
about speed. The peers' virtual environments are pointed at an empty folder, as on a CI machine
that never ran `python -m benchmarks setup`: they must be listed as not installed, not crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEERS = ["openai", "openai-aiohttp", "qianfan", "litellm", "curator", "langchain"]


@pytest.mark.slow
@pytest.mark.timeout(900)  # a guard against a hang only: a loaded machine takes minutes
def test_quick_benchmark_run_writes_its_report(tmp_path):
    out = tmp_path / "results"
    env = dict(os.environ, BENCH_PEERS_DIR=str(tmp_path / "no-peers"))
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--quick",
         "--contenders", "batchmagic,aiohttp", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=880)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "compare-quick.md").read_text()
    report = json.loads((out / "compare-quick.json").read_text())
    assert report["quick"] is True
    assert set(report["workloads"]) == {f"W{i}" for i in range(1, 10)}
    for key in ("W1", "W2", "W7"):
        assert any(c["runs"] for c in report["workloads"][key]["cases"]), key
    for peer in PEERS:
        assert report["status"][peer].startswith("not installed"), (peer, report["status"])
        assert "not installed" in md
    print(f"\nquick benchmark run: {wall:.1f} s")
