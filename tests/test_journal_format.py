"""The journal's answers format (schema 2): many answers to one row, vectors as float32 blobs read
back as one array, and a journal written in schema 1 (one JSON row per answer) still read."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

import batchmagic as bm
from batchmagic import _journal
from batchmagic._journal import SCHEMA_VERSION, Journal, decode_result, encode_result
from batchmagic.simulator import SimulatorProcess


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess(embedding_dim=16) as s:
        yield s


@pytest.fixture
def fresh(sim):
    sim.reset()
    sim.configure(faults={}, latency=0.0, api_key=None, rpm=None, tpm=None)
    return sim


def run(sim, inputs, folder, **kw):
    kw.setdefault("model", "sim-chat")
    return bm.batch(inputs, provider="simulator", base_url=sim.base_url, progress=False,
                    cache=str(folder), **kw)


def _sql(folder: Path, sql: str, *args) -> list:
    conn = sqlite3.connect(folder / "journal.sqlite3")
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_vectors_are_float32_blobs_many_to_a_row(fresh, tmp_path):
    texts = [f"vec {i}" for i in range(3000)]
    df = run(fresh, texts, tmp_path, kind="embedding", model="sim-embed")
    answers = _sql(tmp_path, "SELECT n, dim, typeof(vectors), length(vectors), outputs "
                             "FROM answers")
    assert sum(n for n, *_ in answers) == 3000
    assert len(answers) <= 3000 // 100  # many answers per statement, never one row per answer
    for n, dim, kind, size, outputs in answers:
        assert (dim, kind, size, outputs) == (16, "blob", n * 16 * 4, None)
    assert _sql(tmp_path, "SELECT count(*) FROM rows") == [(0,)]
    # read back as one array, in the order asked
    keys = [k for k in _keys_of(tmp_path)]
    found = Journal(tmp_path).find(keys[::-1])
    assert found.vectors is not None and found.vectors.dtype == np.float32
    assert found.vectors.shape == (3000, 16)
    by_key = dict(zip(keys, range(3000)))
    stored = np.stack(df["output"].to_numpy())
    order = [by_key[k] for k in keys[::-1]]
    assert np.array_equal(np.sort(found.vectors, axis=0), np.sort(stored[order], axis=0))


def _keys_of(folder: Path) -> list[str]:
    keys = []
    for n, blob in _sql(folder, "SELECT n, keys FROM answers ORDER BY id"):
        keys += [blob[16 * j:16 * (j + 1)].hex() for j in range(n)]
    return keys


def _as_schema_1(folder: Path) -> None:
    """Rewrite a journal the way batchmagic wrote it before schema 2: one ``rows`` entry per
    answer with the answer as JSON (vectors as base64 float32), no answers table."""
    conn = sqlite3.connect(folder / "journal.sqlite3")
    cols = ("key, status, kind, model, result, input_tokens, output_tokens, cost, latency, "
            "attempts, run_id, created, updated")
    for n, keys, kind, model, run_id, i_t, o_t, dim, vectors, outputs in conn.execute(
            "SELECT n, keys, kind, model, run_id, input_tokens, output_tokens, dim, vectors, "
            "outputs FROM answers").fetchall():
        ins, outs = np.frombuffer(i_t, "<i8"), np.frombuffer(o_t, "<i8")
        lines = outputs.split("\n") if outputs is not None else None
        for j in range(n):
            if dim is not None:
                vec = np.frombuffer(vectors, "<f4")[j * dim:(j + 1) * dim]
                result = encode_result(vec, None, None).decode()  # as schema 1 wrote it
            else:
                result = lines[j]
            conn.execute(f"INSERT INTO rows ({cols}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                         (keys[16 * j:16 * (j + 1)].hex(), "ok", kind, model, result,
                          int(ins[j]) if ins[j] >= 0 else None,
                          int(outs[j]) if outs[j] >= 0 else None, None, 0.01, 1, run_id, 1.0,
                          1.0))
    conn.execute("DROP TABLE answers")
    conn.execute("UPDATE meta SET v = '1' WHERE k = 'schema'")
    conn.commit()
    conn.close()
    # the next run opens it as a new process would (this one keeps its journals open)
    _journal._journals.pop(str(folder.resolve())).close()


@pytest.mark.parametrize("kind", ["chat", "embedding"])
def test_a_schema_1_journal_is_read_as_it_is(fresh, tmp_path, kind):
    texts = [f"old {kind} {i}" for i in range(40)]
    model = "sim-embed" if kind == "embedding" else "sim-chat"
    first = run(fresh, texts, tmp_path, kind=kind, model=model)
    _as_schema_1(tmp_path)
    assert _sql(tmp_path, "SELECT count(*) FROM rows WHERE status = 'ok'") == [(40,)]
    calls = len(fresh.calls())
    again = run(fresh, texts, tmp_path, kind=kind, model=model)
    assert len(fresh.calls()) == calls  # every answer came from the schema 1 rows
    assert again.attrs["batchmagic"]["cached"] == 40
    for a, b in zip(first["output"], again["output"]):
        assert (np.array_equal(a, b) and b.dtype == np.float32) if kind == "embedding" else a == b
    assert again["input_tokens"].tolist() == first["input_tokens"].tolist()
    # opened by this version: the schema moved on, the old rows stay as they were
    assert _sql(tmp_path, "SELECT v FROM meta WHERE k = 'schema'") == [(str(SCHEMA_VERSION),)]
    assert _sql(tmp_path, "SELECT count(*) FROM rows") == [(40,)]
    # new answers go to the answers table beside them, and both are read
    more = run(fresh, texts + [f"new {kind}"], tmp_path, kind=kind, model=model)
    assert len(fresh.calls()) == calls + 1 and more["error"].isna().all()
    assert _sql(tmp_path, "SELECT sum(n) FROM answers") == [(1,)]


def test_a_spoiled_answer_is_asked_again_alone(fresh, tmp_path):
    texts = [f"spoil {i}" for i in range(20)]
    run(fresh, texts, tmp_path, concurrency=1)  # answers in several rows
    conn = sqlite3.connect(tmp_path / "journal.sqlite3")
    n, outputs = conn.execute("SELECT n, outputs FROM answers ORDER BY n DESC").fetchone()
    lines = outputs.split("\n")
    lines[0] = "{not json"
    conn.execute("UPDATE answers SET outputs = ? WHERE outputs = ?", ("\n".join(lines), outputs))
    conn.commit()
    conn.close()
    before = len(fresh.calls())
    out = run(fresh, texts, tmp_path)
    assert out["error"].isna().all()
    assert len(fresh.calls()) == before + 1  # that one answer, not its whole row of answers
    assert out.attrs["batchmagic"]["cached"] == 19


def test_answers_keep_tool_calls_logprobs_and_usage(tmp_path):
    journal = Journal(tmp_path)
    key = "0123456789abcdef" * 2
    from batchmagic._journal import AnswerBatch

    extra = {"tool_calls": [{"id": "c1", "name": "f", "arguments": {"x": 1}}],
             "logprobs": {"content": [{"token": "a", "logprob": -0.5}]}}
    journal.write_answers(AnswerBatch(
        "http://h/v1/chat/completions", "chat", "m", "run", [key], [7], [None], [0.25], [None],
        [2], outputs=[encode_result("text", "tool_calls", "why", extra)]))
    rec = journal.lookup([key, "f" * 32])[key]
    assert (rec.output, rec.finish_reason, rec.reasoning, rec.extra) == ("text", "tool_calls",
                                                                          "why", extra)
    assert (rec.input_tokens, rec.output_tokens, rec.cost, rec.latency, rec.attempts) == \
        (7, None, 0.25, None, 2)
    # another endpoint's lookup does not read them
    assert journal.lookup([key], scope="http://other/v1/chat/completions") == {}
    assert decode_result(encode_result("x", None, None)) == ("x", None, None, {})


def test_answers_whose_keys_are_not_row_keys_go_to_the_rows_table(tmp_path):
    from batchmagic._journal import AnswerBatch

    journal = Journal(tmp_path)
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    journal.write_answers(AnswerBatch("http://h/v1/embeddings", "embedding", "m", "run",
                                      ["not-hex-1", "not-hex-2"], [1, 2], [0, 0], [None, None],
                                      [None, None], [1, 1], vectors=vectors))
    assert _sql(tmp_path, "SELECT count(*) FROM answers") == [(0,)]
    found = journal.lookup(["not-hex-2", "not-hex-1", "missing"])
    assert sorted(found) == ["not-hex-1", "not-hex-2"]
    assert np.array_equal(found["not-hex-2"].output, vectors[1])
    assert found["not-hex-1"].input_tokens == 1


def test_keys_are_matched_alike_however_few_are_asked():
    """A lookup of a few keys in a big journal sorts the few (``_match_few``); both ways find
    every key asked for, the newest copy of a key stored twice, and nothing else."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        pool = rng.integers(0, 4, size=(30, 2)).astype("<u8")  # halves collide often
        stored = pool[rng.integers(0, 30, size=rng.integers(1, 60))]
        wanted = pool[rng.integers(0, 30, size=rng.integers(1, 12))]
        newest = {tuple(k): i for i, k in enumerate(stored.tolist())}
        expected = sorted((p, newest[tuple(k)]) for p, k in enumerate(wanted.tolist())
                          if tuple(k) in newest)
        for match in (_journal._match, _journal._match_few):
            w_pos, s_pos = match(wanted, stored)
            assert list(w_pos) == sorted(w_pos)
            assert sorted(zip(w_pos.tolist(), s_pos.tolist())) == expected
