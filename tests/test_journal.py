"""The journal: resume, cache, edits, kills, torn writes, garbage, disk full, two processes."""

from __future__ import annotations

import collections
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import BASE_URL, Server, echo_chat

import batchmagic as bm
from batchmagic import _durable
from batchmagic._errors import JournalError
from batchmagic._journal import Journal, _key_lines, open_journal
from batchmagic.simulator import SimulatorProcess

SENTINEL = "sk-SENTINEL-DO-NOT-LEAK-0123456789"


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess() as s:
        yield s


@pytest.fixture
def fresh(sim):
    sim.reset()
    sim.configure(faults={}, latency=0.0, api_key=None, rpm=None, tpm=None)
    return sim


def run(sim, inputs, prompt=None, **kw):
    kw.setdefault("model", "sim-chat")
    kw.setdefault("progress", False)
    return bm.batch(inputs, prompt, provider="simulator", base_url=sim.base_url, **kw)


def texts(n, tag="row"):
    return [f"{tag} {i}" for i in range(n)]


def test_rerun_sends_nothing_and_returns_the_same_frame(fresh):
    first = run(fresh, texts(50))
    assert len(fresh.calls()) == 50 and first.attrs["batchmagic"]["cached"] == 0
    second = run(fresh, texts(50))
    assert len(fresh.calls()) == 50  # zero new requests
    assert second["output"].tolist() == first["output"].tolist()
    assert second["input_tokens"].tolist() == first["input_tokens"].tolist()
    assert (second["attempts"] == 0).all()
    assert second.attrs["batchmagic"]["cached"] == 50


def test_edit_ten_rows_sends_ten(fresh):
    df = pd.DataFrame({"text": texts(100, "edit")})
    run(fresh, df, "Say {text}")
    edited = df.copy()
    edited.loc[[3, 17, 20, 33, 41, 55, 68, 72, 90, 99], "text"] += " (fixed)"
    before = len(fresh.calls())
    out = run(fresh, edited, "Say {text}")
    new = fresh.calls()[before:]
    assert len(new) == 10
    assert sorted(c["tag"] for c in new) == sorted(f"Say {t}" for t in edited.text[edited.text.str.endswith("(fixed)")])
    assert out["error"].isna().all()


def test_what_changes_the_key(fresh):
    run(fresh, texts(20, "key"), params={"temperature": 0.0})
    n = len(fresh.calls())
    run(fresh, texts(20, "key"), params={"temperature": 0.0}, concurrency=3, progress=True,
        timeout=33, retries=1)
    assert len(fresh.calls()) == n  # concurrency, display, timeout, retries: nothing re-sent
    run(fresh, texts(20, "key"), params={"temperature": 0.7})
    assert len(fresh.calls()) == n + 20  # a parameter that shapes the answer: all re-sent


def test_failed_rows_are_retried_next_time(fresh):
    fresh.configure(faults={"400_context": 1.0}, fault_attempts=1)
    first = run(fresh, texts(5, "fail"))
    assert all(isinstance(e, bm.ContextLengthError) for e in first["error"])
    fresh.configure(faults={})
    second = run(fresh, texts(5, "fail"))
    assert second["error"].isna().all()
    assert len(fresh.calls()) == 10


def test_cache_false_bypasses(fresh, _private_journal):
    run(fresh, texts(5, "nocache"), cache=False)
    run(fresh, texts(5, "nocache"), cache=False)
    assert len(fresh.calls()) == 10


def test_embeddings_and_images_round_trip(fresh):
    emb = run(fresh, texts(30, "emb"), kind="embedding", model="sim-embed")
    again = run(fresh, texts(30, "emb"), kind="embedding", model="sim-embed")
    assert len(fresh.calls()) == 1
    for a, b in zip(emb["output"], again["output"]):
        assert a.dtype == b.dtype and (a == b).all()
    img = run(fresh, ["a cat"], kind="image", model="sim-image", params={"size": "16x16"})
    img2 = run(fresh, ["a cat"], kind="image", model="sim-image", params={"size": "16x16"})
    assert img2["output"].iloc[0] == img["output"].iloc[0]
    assert img2.attrs["batchmagic"]["cached"] == 1


def test_permissions_whatever_the_umask(fresh, tmp_path):
    old = os.umask(0)
    try:
        folder = tmp_path / "j"
        run(fresh, texts(3, "perm"), cache=str(folder))
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_no_secret_and_no_pickle_in_the_journal(fresh, tmp_path):
    fresh.configure(api_key=SENTINEL)
    folder = tmp_path / "secret"
    run(fresh, texts(10, "s"), cache=str(folder), api_key=SENTINEL)
    fresh.configure(api_key=None)
    conn = sqlite3.connect(folder / "journal.sqlite3")
    dump = "\n".join(conn.iterdump())
    conn.close()
    raw = b"".join(p.read_bytes() for p in folder.iterdir())
    assert SENTINEL not in dump and SENTINEL.encode() not in raw
    assert b"\x80\x04\x95" not in raw  # no pickle protocol-4 frames
    assert "echo: s 3" in dump  # the answers are there, as JSON


def test_garbage_row_is_asked_again(fresh, _private_journal):
    run(fresh, texts(10, "garb"))
    conn = sqlite3.connect(Path(_private_journal) / "journal.sqlite3")
    # answers are lines of JSON, many to an answers row: spoil the first line of the first row
    conn.execute("UPDATE answers SET outputs = '{not json' || "
                 "substr(outputs, instr(outputs, char(10))) WHERE id = (SELECT MIN(id) FROM answers)")
    conn.commit()
    conn.close()
    out = run(fresh, texts(10, "garb"))
    assert out["error"].isna().all()
    assert len(fresh.calls()) == 11
    assert out.attrs["batchmagic"]["cached"] == 9


def test_damaged_file_is_moved_aside(fresh, tmp_path):
    folder = tmp_path / "damaged"
    folder.mkdir()
    (folder / "journal.sqlite3").write_bytes(b"this is not a database at all" * 100)
    out = run(fresh, texts(4, "dmg"), cache=str(folder))
    assert out["error"].isna().all()
    assert list(folder.glob("journal.corrupt-*.sqlite3"))


def test_unwritable_folder_fails_before_sending(fresh, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(bm.JournalError, match="cannot open the journal"):
        run(fresh, texts(3, "ro"), cache=str(blocker / "journal"))
    assert fresh.calls() == []


def test_disk_full_stops_buying_answers(fresh, tmp_path):
    folder = tmp_path / "full"
    journal = open_journal(folder)
    pages = journal._conn.execute("PRAGMA page_count").fetchone()[0]
    # room for the leases (about 10 pages), not for 400 answers of 2 KB each
    journal._conn.execute(f"PRAGMA max_page_count = {pages + 40}")
    fresh.configure(latency=0.01)
    big = [f"{'long text ' * 200} {i}" for i in range(400)]
    out = run(fresh, big, cache=str(folder), concurrency=4, params={"max_tokens": 4000})
    facts = out.attrs["batchmagic"]
    assert facts["state"] == "aborted"
    assert "disk is full" in facts["stopped_by"]
    assert len(fresh.calls()) < 400  # it stopped sending
    assert any(isinstance(e, bm.NotSentError) for e in out["error"])
    assert len(out) == 400
    journal._conn.execute("PRAGMA max_page_count = 1073741823")


def _script(tmp_path, body: str) -> Path:
    path = tmp_path / f"script_{abs(hash(body))}.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_sigkill_mid_run_then_resume(fresh, tmp_path):
    fresh.configure(latency=0.05)
    folder = tmp_path / "kill"
    code = f"""
        import batchmagic as bm
        df = bm.batch([f"kill {{i}}" for i in range(400)], provider="simulator",
                      base_url={fresh.base_url!r}, model="m", concurrency=16, progress=False,
                      cache={str(folder)!r})
        print(int(df["error"].isna().sum()))
    """
    script = _script(tmp_path, code)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while len(fresh.calls()) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)  # wait until the run is well under way
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    calls_before = len(fresh.calls())
    conn = sqlite3.connect(folder / "journal.sqlite3")
    durable = conn.execute("SELECT (SELECT COUNT(*) FROM rows WHERE status = 'ok') + "
                           "(SELECT coalesce(sum(n), 0) FROM answers)").fetchone()[0]
    conn.close()
    assert 0 < durable < 400 and calls_before >= durable

    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "400"
    calls = fresh.calls()
    first, second = calls[:calls_before], calls[calls_before:]
    # nothing durable was asked again, and the repeats are at most the in-flight window
    assert len(second) == 400 - durable
    repeated = {c["tag"] for c in first} & {c["tag"] for c in second}
    # the in-flight window (16) plus the answers of the one write under way at the kill
    assert len(repeated) <= 16 + 8, len(repeated)
    assert len(first) + len(second) - 400 == len(repeated)


def test_torn_last_write_is_tolerated(fresh, tmp_path):
    folder = tmp_path / "torn"
    code = f"""
        import os, batchmagic as bm
        bm.batch([f"torn {{i}}" for i in range(60)], provider="simulator",
                 base_url={fresh.base_url!r}, model="m", progress=False, cache={str(folder)!r})
        os.kill(os.getpid(), 9)  # die without closing: the WAL stays
    """
    subprocess.run([sys.executable, str(_script(tmp_path, code))], timeout=60)
    wal = folder / "journal.sqlite3-wal"
    assert wal.exists() and wal.stat().st_size > 0
    with open(wal, "r+b") as fh:  # tear the last frame
        fh.truncate(wal.stat().st_size - 700)
    n = len(fresh.calls())
    out = run(fresh, [f"torn {i}" for i in range(60)], cache=str(folder), model="m")
    assert out["error"].isna().all()
    assert len(fresh.calls()) - n < 60  # the intact frames still count


def test_two_processes_on_one_journal_pay_once(fresh, tmp_path):
    fresh.configure(latency=0.3)
    folder = tmp_path / "shared"
    code = f"""
        import json, batchmagic as bm
        df = bm.batch([f"two {{i}}" for i in range(60)], provider="simulator",
                      base_url={fresh.base_url!r}, model="m", concurrency=8, progress=False,
                      cache={str(folder)!r})
        print(json.dumps([int(df["error"].isna().sum()), df.attrs["batchmagic"]["cached"]]))
    """
    script = _script(tmp_path, code)
    a = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    time.sleep(0.8)
    b = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    out_a, _ = a.communicate(timeout=90)
    out_b, _ = b.communicate(timeout=90)
    ok_a, _ = json.loads(out_a)
    ok_b, cached_b = json.loads(out_b)
    assert ok_a == 60 and ok_b == 60
    assert cached_b > 0
    per_tag = collections.Counter(c["tag"] for c in fresh.calls())
    assert max(per_tag.values()) == 1, "a row was paid for twice"
    assert len(per_tag) == 60


def test_runs_listing_and_clearing(fresh, tmp_path):
    folder = tmp_path / "list"
    run(fresh, texts(5, "l1"), cache=str(folder))
    run(fresh, texts(5, "l1"), cache=str(folder))
    listing = bm.runs(cache=str(folder))
    assert len(listing) == 2
    assert list(listing["cached"]) == [5, 0]  # newest first
    assert set(listing["state"]) == {"done"}
    assert bm.clear_journal("2000-01-01", cache=str(folder)) == 0
    assert bm.clear_journal(cache=str(folder)) == 5
    run(fresh, texts(5, "l1"), cache=str(folder))
    assert len(fresh.calls()) == 10


def test_claims_hold_keys_for_live_runs_only(tmp_path):
    journal = open_journal(tmp_path / "claims")
    assert journal.claim(["a", "b", "c"], "run-1") == {}
    # another run in this process (alive) is told which keys run-1 is sending
    assert journal.claim(["b", "c", "d"], "run-2") == {"b": ("run-1", os.getpid()),
                                                      "c": ("run-1", os.getpid())}
    # claims add up: run-1 claiming more keeps the first ones (in a row of their own, named
    # after the run; what holds them is the run)
    assert journal.claim(["e"], "run-1") == {}
    assert journal.claim(["a", "e", "d"], "run-3") == {
        "a": ("run-1", os.getpid()), "e": ("run-1", os.getpid()), "d": ("run-2", os.getpid())}
    journal.release("run-1")  # all of its claims
    assert journal.claim(["a", "b"], "run-3") == {}
    assert journal.claim(["e"], "run-5") == {}
    # a dead process's claims are void, and removed
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    journal._conn.execute("UPDATE claims SET pid=? WHERE run_id='run-3' OR run_id GLOB 'run-3#*'",
                          (int(dead.stdout),))
    assert journal.claim(["a", "b", "d"], "run-4") == {"d": ("run-2", os.getpid())}
    assert [r[0] for r in journal._conn.execute("SELECT run_id FROM claims ORDER BY run_id")] \
        == ["run-2", "run-4", "run-5"]


def test_a_run_claiming_in_stages_writes_each_key_once(tmp_path):
    """A run claims a million keys a stage at a time: each stage is a row of its own, written
    once (never the whole blob again); renew and release reach every stage."""
    journal = open_journal(tmp_path / "stages")
    stages = [[f"{s}-{i}" for i in range(3)] for s in range(4)]
    for keys in stages:
        assert journal.claim(keys, "big") == {}
    rows = dict(journal._conn.execute("SELECT run_id, keys FROM claims"))
    assert sorted(rows) == ["big", "big#1", "big#2", "big#3"]
    assert [rows[name].decode().split("\n") for name in ["big", "big#1", "big#2", "big#3"]] \
        == stages
    assert journal.claim(stages[2][1:], "other") == {k: ("big", os.getpid())
                                                    for k in stages[2][1:]}
    journal._conn.execute("UPDATE claims SET expires=0")
    journal.renew("big")
    assert sorted(r[0] for r in journal._conn.execute(
        "SELECT run_id FROM claims WHERE expires > 0")) == ["big", "big#1", "big#2", "big#3"]
    journal.release("big")
    assert [r[0] for r in journal._conn.execute("SELECT run_id FROM claims")] == ["other"]


def _later_claims_wait_for(gate, monkeypatch) -> list[int]:
    """Every claim after a run's first waits (on the journal's thread) until ``gate`` is set;
    returns the number of keys of each claim, as they come."""
    sizes: list[int] = []
    real = Journal.claim

    def claim(self, keys, run_id):
        sizes.append(len(keys))
        if len(sizes) > 1:
            assert gate.wait(60), "the first request waited for every key to be claimed"
        return real(self, keys, run_id)

    monkeypatch.setattr(Journal, "claim", claim)
    monkeypatch.setattr(_durable, "FIRST_STAGE_ITEMS", 8)
    monkeypatch.setattr(_durable, "STAGE_ITEMS", 64)
    return sizes


def test_the_first_requests_go_before_every_key_is_claimed(tmp_path, monkeypatch):
    """A big run claims (and hashes) its keys a stage at a time while the first ones are sent:
    the first request leaves while the second stage's claim is still waiting. Every row is
    still claimed before it is sent, sent once, journaled, and found by the next run."""
    gate = threading.Event()
    sizes = _later_claims_wait_for(gate, monkeypatch)

    def answer(request, body):
        gate.set()  # a request went out: the later claims may go on
        return echo_chat(request, body)

    server = Server(answer)
    folder = tmp_path / "staged"
    inputs = [f"staged {i}" for i in range(300)]
    df = bm.batch(inputs, base_url=BASE_URL, model="m", progress=False, concurrency=4,
                  transport=server.transport, cache=str(folder))
    assert list(df["output"]) == [f"echo:{t}" for t in inputs] and df["error"].isna().all()
    assert sizes[0] == 8 and sum(sizes) == 300 and len(sizes) > 3  # 8, 32, 64, ...
    assert server.count == 300 and len({b["messages"][-1]["content"] for b in server.bodies}) \
        == 300  # each row sent once
    assert open_journal(folder)._conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
    again = Server(answer)
    df2 = bm.batch(inputs, base_url=BASE_URL, model="m", progress=False,
                   transport=again.transport, cache=str(folder))
    assert again.count == 0 and list(df2["output"]) == list(df["output"])


def test_rows_another_run_holds_in_a_later_stage_are_waited_for_then_sent(tmp_path, monkeypatch):
    """Another live run holds some keys of a later claim stage: they are not sent while it
    holds them; once it lets go (here: it gives up its claim) they are claimed and sent."""
    monkeypatch.setattr(_durable, "FIRST_STAGE_ITEMS", 8)
    monkeypatch.setattr(_durable, "STAGE_ITEMS", 16)
    folder = tmp_path / "held"
    real = Journal.claim
    held: list[dict] = []
    sent_while_held: list[int] = []

    def claim(self, keys, run_id):
        if run_id != "other" and len(held) == 1:  # another run got to three of these first
            real(self, keys[:3], "other")
            threading.Timer(0.5, lambda: (sent_while_held.append(server.count),
                                          open_journal(folder).release("other"))).start()
        got = real(self, keys, run_id)
        if run_id != "other":
            held.append(got)
        return got

    monkeypatch.setattr(Journal, "claim", claim)
    server = Server(echo_chat)
    inputs = [f"held {i}" for i in range(60)]
    df = bm.batch(inputs, base_url=BASE_URL, model="m", progress=False, concurrency=4,
                  transport=server.transport, cache=str(folder))
    assert len(held[1]) == 3 and sent_while_held[0] <= 57  # held, not sent meanwhile
    assert list(df["output"]) == [f"echo:{t}" for t in inputs] and df["error"].isna().all()
    assert server.count == 60


def test_a_journal_failing_while_rows_are_held_stops_the_run(tmp_path, monkeypatch):
    """Rows another run holds are watched in the journal; if the journal fails there, the run
    stops as it does when a write fails (it used to wait for those rows forever)."""
    monkeypatch.setattr(_durable, "FIRST_STAGE_ITEMS", 8)
    monkeypatch.setattr(_durable, "STAGE_ITEMS", 16)
    real = Journal.claim
    claims = []

    def claim(self, keys, run_id):
        claims.append(run_id)
        if run_id != "other" and claims.count(run_id) == 2:  # another run holds three keys
            real(self, keys[:3], "other")
        return real(self, keys, run_id)

    def lookup(self, keys, **kw):
        raise JournalError("the disk went away")

    monkeypatch.setattr(Journal, "claim", claim)
    monkeypatch.setattr(Journal, "lookup", lookup)
    server = Server(echo_chat)
    df = bm.batch([f"lost {i}" for i in range(60)], base_url=BASE_URL, model="m",
                  progress=False, concurrency=4, transport=server.transport,
                  cache=str(tmp_path / "failing"))
    facts = df.attrs["batchmagic"]
    assert facts["state"] == "aborted" and "the disk went away" in facts["stopped_by"]
    assert len(df) == 60 and (df["output"].notna() | df["error"].notna()).all()
    assert server.count <= 57  # the held rows were never sent


def test_rows_not_claimed_when_a_run_stops_are_not_sent_errors(tmp_path, monkeypatch):
    gate = threading.Event()
    _later_claims_wait_for(gate, monkeypatch)

    def refuse(request, body):
        gate.set()
        return httpx.Response(401, json={"error": {"message": "bad key"}})

    server = Server(refuse)
    df = bm.batch([f"stop {i}" for i in range(300)], base_url=BASE_URL, model="m",
                  progress=False, concurrency=4, transport=server.transport,
                  cache=str(tmp_path / "stopped"))
    assert len(df) == 300 and df["error"].notna().all()  # no row left without its outcome
    kinds = collections.Counter(type(e).__name__ for e in df["error"])
    assert kinds["NotSentError"] >= 300 - 8 and server.count <= 8


def test_a_key_array_is_claimed_as_its_strings_would_be(tmp_path):
    """A table's S32 key array is claimed without a Python string per key, and what is stored
    and answered is the same as for the strings."""
    journal = open_journal(tmp_path / "array")
    keys = [f"{i:032x}" for i in range(1_000)]
    assert _key_lines(np.array(keys, dtype="S32")) == "\n".join(keys).encode()
    assert _key_lines(np.array([], dtype="S32")) == b""
    assert journal.claim(np.array(keys[:600], dtype="S32"), "run-1") == {}
    held = journal.claim(np.array(keys[500:], dtype="S32"), "run-2")
    assert held == {k: ("run-1", os.getpid()) for k in keys[500:600]}
    # run-2 claimed only what run-1 did not hold
    assert journal.claim(keys[590:610], "run-3") == {
        **{k: ("run-1", os.getpid()) for k in keys[590:600]},
        **{k: ("run-2", os.getpid()) for k in keys[600:610]}}


def test_a_million_keys_are_one_claim_row(tmp_path):
    journal = open_journal(tmp_path / "big")
    keys = [f"{i:032x}" for i in range(1_000_000)]
    t0 = time.perf_counter()
    assert journal.claim(keys, "big-run") == {}
    claimed = time.perf_counter() - t0
    assert journal._conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 1
    assert journal.claim(keys[:10], "other") == {k: ("big-run", os.getpid()) for k in keys[:10]}
    assert claimed < 30  # one blob write, not a million index inserts (generous: shared machines)
