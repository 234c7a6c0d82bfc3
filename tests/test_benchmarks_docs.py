"""The benchmarks of record: a full run writes the manual's page (``docs/benchmarks.md``) with its
date, machine and versions; a ``--quick`` or partial run never touches it; a saved full run's
JSON can write it again. Nothing here is about speed."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORD = "the page of record, untouched"


def _bench(*args: str, tmp_path: Path, timeout: float = 110) -> subprocess.CompletedProcess:
    env = dict(os.environ, BENCH_PEERS_DIR=str(tmp_path / "no-peers"))
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_quick_run_leaves_the_page_of_record_alone(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text(RECORD)
    proc = _bench("run", "--quick", "--only", "W1", "--contenders", "batchmagic,aiohttp",
                  "--out", str(tmp_path / "results"), "--docs", str(page), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "results" / "compare-quick.md").is_file()
    assert page.read_text() == RECORD
    assert "left as it is: a --quick run" in proc.stderr
    report = json.loads((tmp_path / "results" / "compare-quick.json").read_text())
    assert report["machine"]["cores"] == os.cpu_count()
    assert "### W1." in report["workloads"]["W1"]["markdown"]  # the table travels in the JSON


def _args(**changes) -> argparse.Namespace:
    full = dict(quick=False, only="", contenders="", repeats=None, scale=1.0)
    return argparse.Namespace(**{**full, **changes})


def test_only_a_full_run_is_a_run_of_record():
    from benchmarks.__main__ import not_of_record

    assert not_of_record(_args()) is None
    assert not_of_record(_args(quick=True)) == "a --quick run"
    for change, flag in ((dict(only="W1"), "--only"), (dict(contenders="batchmagic"), "--contenders"),
                         (dict(repeats=1), "--repeats"), (dict(scale=0.2), "--scale")):
        assert flag in not_of_record(_args(**change))


def _saved_report(**changes) -> dict:
    table = ("### W1. Latency-bound\n\n| contender | wall |\n|---|---|\n"
             "| batchmagic bm.batch | 8.83 s |\n\n**Target:** batchmagic ≤ 1.15× the floor\n")
    report = {
        "date": "2026-12-01T10:15:42+00:00", "quick": False, "status": {"curator": "not installed"},
        "machine": {"cpu": "Example CPU @ 2.10GHz", "cores": 2, "arch": "x86_64",
                    "python": "3.11.7", "os": "Linux-6.1"},
        "versions": {"aiohttp": "3.14.5", "openai": "3.54.0", "batchmagic": "0.1.0"},
        "elapsed_s": 1320.0,
        "verdicts": [{"workload": "W1", "target": "latency-bound ≤ 1.15× the raw aiohttp floor",
                      "measured": "1.01× the floor", "met": True}],
        "workloads": {"W1": {"key": "W1", "title": "Latency-bound", "markdown": table}},
    }
    return {**report, **changes}


def test_the_page_of_record_from_a_saved_full_run(tmp_path):
    source, page = tmp_path / "compare.json", tmp_path / "benchmarks.md"
    source.write_text(json.dumps(_saved_report()))
    proc = _bench("docs", str(source), "--docs", str(page), tmp_path=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = page.read_text()
    assert text.startswith("# Benchmarks of record")
    assert "The full run of 2026-12-01 10:15 UTC" in text and "replaces this page" in text
    for fact in ("| CPU | Example CPU @ 2.10GHz |", "| cores | 2 |", "| Python | 3.11.7 |",
                 "| OS | Linux-6.1 |", "| run time | 22 minutes |"):
        assert fact in text, fact
    assert "| OpenAI SDK AsyncOpenAI + semaphore | 3.54.0 |" in text  # the peers' versions
    assert "| Bespoke Curator (online) | - |" in text and "not installed" in text
    assert "| W1 | latency-bound ≤ 1.15× the raw aiohttp floor | 1.01× the floor | yes |" in text
    assert "| batchmagic bm.batch | 8.83 s |" in text


def test_a_new_page_of_record_keeps_the_run_before_beside_its_figures(tmp_path):
    from benchmarks import _report

    old = _report.docs_page(_saved_report(date="2026-11-22T05:20:00+00:00", verdicts=[
        {"workload": "W1", "target": "t1", "measured": "1.01× the floor", "met": True},
        {"workload": "W3", "target": "t3a", "measured": "97%", "met": True},
        {"workload": "W3", "target": "t3b", "measured": "99%", "met": True}]))
    source, page = tmp_path / "compare.json", tmp_path / "benchmarks.md"
    page.write_text(old)
    source.write_text(json.dumps(_saved_report(verdicts=[
        {"workload": "W1", "target": "t1", "measured": "1.03× the floor", "met": True},
        {"workload": "W2", "target": "t2", "measured": "1.16×", "met": True},
        {"workload": "W3", "target": "t3a", "measured": "96%", "met": True},
        {"workload": "W3", "target": "t3b", "measured": "98%", "met": True}])))
    for _ in range(2):  # written again from the same run: the run before stays beside it
        proc = _bench("docs", str(source), "--docs", str(page), tmp_path=tmp_path, timeout=60)
        assert proc.returncode == 0, proc.stderr
        text = page.read_text()
        assert "| workload | target | measured | previous full run (2026-11-22 05:20 UTC) | met |" \
            in text
        assert "| W1 | t1 | 1.03× the floor | 1.01× the floor | yes |" in text
        assert "| W2 | t2 | 1.16× |  | yes |" in text  # a target the run before did not have
        assert "| W3 | t3a | 96% | 97% | yes |" in text and "| W3 | t3b | 98% | 99% | yes |" in text


def test_a_quick_runs_json_is_not_a_record(tmp_path):
    source, page = tmp_path / "compare-quick.json", tmp_path / "benchmarks.md"
    source.write_text(json.dumps(_saved_report(quick=True)))
    proc = _bench("docs", str(source), "--docs", str(page), tmp_path=tmp_path, timeout=60)
    assert proc.returncode == 2 and "not a run of record" in proc.stderr
    assert not page.exists()


def test_the_page_in_the_manual_says_when_and_where_it_was_measured():
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    assert text.startswith("# Benchmarks of record")
    assert "The full run of 2026-" in text and "replaces this page" in text
    assert "## The machine" in text and "| cores |" in text and "| Python |" in text
    for key in range(1, 10):
        assert f"### W{key}." in text
