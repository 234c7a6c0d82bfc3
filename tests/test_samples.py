"""samples=K: K answers per row (n=K in one request where the provider takes it, K requests
where it does not), a sample column, sample-aware journal keys, and a resume after SIGKILL that
pays for no sample twice; identical rows are one request only when the answer is
deterministic."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import httpx
import pandas as pd
import pytest

import batchmagic as bm
from batchmagic.simulator import SimulatorProcess


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess(reply="length:4") as s:
        yield s


@pytest.fixture
def fresh(sim):
    sim.reset()
    sim.configure(latency=0.0)
    yield sim


def run(sim, inputs, prompt=None, **kw):
    kw.setdefault("model", "sim-chat")
    kw.setdefault("progress", False)
    return bm.batch(inputs, prompt, provider="simulator", base_url=sim.base_url, **kw)


def asked(call: dict) -> int:
    """How many answers one logged call asked for."""
    return (call.get("extras") or {}).get("n", 1)


def test_samples_give_k_rows_per_row_in_order_with_a_sample_column(fresh):
    reviews = pd.DataFrame({"text": [f"review {i}" for i in range(10)]}, index=list("abcdefghij"))
    df = run(fresh, reviews, "Say something about {text}", samples=3, cache=False)
    assert len(df) == 30
    assert list(df.index) == [label for label in "abcdefghij" for _ in range(3)]
    assert df["sample"].tolist() == [0, 1, 2] * 10
    assert df["text"].tolist() == [t for t in reviews["text"] for _ in range(3)]
    assert df["error"].isna().all()
    for _, group in df.groupby(level=0):
        assert group["output"].nunique() == 3  # three different answers, not one copied
    calls = fresh.calls()
    assert len(calls) == 10 and all(asked(c) == 3 for c in calls)  # n=3 in one request
    facts = df.attrs["batchmagic"]
    assert (facts["rows"], facts["ok"], facts["requests"]) == (30, 30, 30)


def test_without_n_each_sample_is_its_own_request():
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        import json

        body = json.loads(request.content)
        bodies.append(body)
        return httpx.Response(200, json={
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"answer {len(bodies)}"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}})

    df = bm.batch(["a", "b"], base_url="http://plain.test/v1", model="m", samples=3,
                  transport=httpx.MockTransport(handler), progress=False, cache=False)
    assert len(bodies) == 6 and all("n" not in b for b in bodies)  # no preset: n is not known
    assert df["sample"].tolist() == [0, 1, 2, 0, 1, 2]
    assert df["output"].nunique() == 6


def test_samples_come_back_from_the_journal_and_more_samples_ask_only_for_the_new_ones(fresh,
                                                                                       tmp_path):
    where = dict(cache=str(tmp_path / "j"))
    first = run(fresh, ["one", "two"], samples=2, **where)
    assert sum(asked(c) for c in fresh.calls()) == 4
    again = run(fresh, ["one", "two"], samples=2, **where)
    assert sum(asked(c) for c in fresh.calls()) == 4  # nothing asked again
    assert again["output"].tolist() == first["output"].tolist()
    more = run(fresh, ["one", "two"], samples=3, **where)
    assert sum(asked(c) for c in fresh.calls()) == 6  # the third sample of each row only
    assert more["output"].tolist()[0:2] == first["output"].tolist()[0:2]
    assert more.attrs["batchmagic"]["cached"] == 4


def test_samples_estimate_and_checks(fresh):
    est = bm.estimate(["a", "b"], provider="simulator", base_url=fresh.base_url, model="m",
                      samples=4)
    assert est.rows == 8 and est.requests == 8 and est.http_requests == 2
    with pytest.raises(bm.ConfigError, match="an embedding has one"):
        bm.estimate(["a"], kind="embedding", provider="simulator", base_url=fresh.base_url,
                    model="m", samples=2)
    with pytest.raises(bm.ConfigError, match="samples must be a positive integer"):
        bm.estimate(["a"], provider="simulator", base_url=fresh.base_url, model="m", samples=0)


def test_a_row_error_fails_every_sample_of_its_row(fresh):
    df = run(fresh, pd.DataFrame({"t": ["x", None]}), "{t}", samples=2, cache=False)
    assert df["error"][:2].isna().all()
    assert all(isinstance(e, bm.InputError) for e in df["error"][2:])


def test_samples_resume_after_sigkill_without_paying_for_a_sample_twice(fresh, tmp_path):
    fresh.configure(latency=0.05)
    folder = tmp_path / "kill"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import batchmagic as bm
        df = bm.batch([f"row {{i}}" for i in range(120)], provider="simulator",
                      base_url={fresh.base_url!r}, model="m", samples=3, concurrency=8,
                      progress=False, cache={str(folder)!r})
        print(int(df["error"].isna().sum()))
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(fresh.calls()) < 40 and time.monotonic() < deadline:
        time.sleep(0.02)  # the run is well under way
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    paid_before = sum(asked(c) for c in fresh.calls())
    conn = sqlite3.connect(folder / "journal.sqlite3")
    kept = conn.execute("SELECT (SELECT COUNT(*) FROM rows WHERE status = 'ok') + "
                        "(SELECT coalesce(sum(n), 0) FROM answers)").fetchone()[0]
    conn.close()
    assert 0 < kept < 360

    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "360"
    paid_after = sum(asked(c) for c in fresh.calls()) - paid_before
    assert paid_after == 360 - kept  # only the samples the journal did not hold
    # what was paid twice: at most the requests in flight at the kill (8 rows x 3 samples)
    # and the one journal write under way then
    assert paid_before + paid_after - 360 <= 8 * 3 + 24
