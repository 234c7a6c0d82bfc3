"""Results held as columns (``_item_results``): one request at a time they read and write as
lists did (``None`` where missing); the frame takes their arrays without copying them; a large
run keeps little beside its frame (W8 of the benchmarks, at a size CI can afford)."""

from __future__ import annotations

import tempfile

import numpy as np
import pandas as pd
import pytest

import batchmagic as bm
from batchmagic._frame import build_frame
from batchmagic._item_results import ItemResults, Numbers, Sparse


def test_numbers_read_and_write_none_where_missing():
    ints, floats = Numbers(4, np.int64), Numbers(4, np.float64)
    assert [ints[i] for i in range(4)] == [None] * 4
    ints[1], floats[2] = 7, 0.25
    assert (ints[1], type(ints[1]), floats[2], type(floats[2])) == (7, int, 0.25, float)
    ints[1] = None
    assert ints[1] is None and np.isnan(floats.values[0])  # a float column is NaN where missing
    ints.put(np.array([0, 3]), [5, None])
    assert ints.take([0, 1, 3]) == [5, None, None]
    masked = ints.masked()
    assert masked.dtype == "Int64" and list(masked.fillna(-1)) == [5, -1, -1, -1]
    assert np.shares_memory(masked._data, ints.values)  # the frame's column is this array
    # rows a request does not answer (-1) are missing
    assert list(ints.masked(np.array([0, -1, 0])).fillna(-1)) == [5, -1, 5]
    attempts = Numbers(3, np.int64, default=0)
    assert attempts.take(range(3)) == [0, 0, 0]


def test_sparse_keeps_only_the_requests_that_have_a_value():
    s = Sparse()
    s[3], s[5] = "why", None
    assert (s[3], s[4], s[5], len(s)) == ("why", None, None, 1)
    s[3] = None
    assert not s
    s[1] = {"a": 1}
    assert list(s.column(3)) == [None, {"a": 1}, None]


def test_answers_one_by_one_and_many_at_once_fill_the_same_columns():
    one, many = ItemResults(3), ItemResults(3)
    vectors = [np.full(2, i, dtype=np.float32) for i in range(3)]
    for i, v in enumerate(vectors):
        one.answer(i, v, None, None, 4, 0, cost=0.5, latency=0.1, attempts=2)
    many.answer_many(range(3), vectors, [None] * 3, [4, 4, 4], [0, 0, 0], [0.5] * 3, 0.1, 2)
    for r in (one, many):
        assert [r.output[i] is vectors[i] for i in range(3)] == [True] * 3
        assert r.input_tokens.take(range(3)) == [4, 4, 4]
        assert r.cost.take(range(3)) == [0.5] * 3 and r.attempts.take(range(3)) == [2] * 3
        assert bytes(r.done) == b"\x01" * 3 and not r.reasoning


def test_the_frame_takes_the_number_columns_without_a_copy():
    from batchmagic import _api, _run

    run = _api._run_for(["a", "b", "c"], None, dict(provider="simulator",
                        base_url="http://127.0.0.1:9/v1", model="m", progress=False,
                        cache=False))
    r = run.results
    for i in range(3):
        r.answer(i, f"out{i}", "stop", None, 3, 1 + i, cost=0.01, latency=0.2, attempts=1)
    r.reasoning[1] = "because"
    df = build_frame(run.plan, r)
    assert list(df["output"]) == ["out0", "out1", "out2"]
    assert df["output_tokens"].dtype == "Int64" and list(df["output_tokens"]) == [1, 2, 3]
    assert df["latency"].dtype == float and df["attempts"].dtype == np.int64
    for name, column in (("output_tokens", r.output_tokens), ("cost", r.cost),
                         ("latency", r.latency), ("attempts", r.attempts)):
        values = df[name].array._data if name in ("output_tokens", "cost") \
            else df[name].to_numpy()
        assert np.shares_memory(values, column.values), name
    assert list(df["reasoning"]) == [None, "because", None]  # a column once any row has one
    assert "tool_calls" not in df and "ttft" not in df
    _run._recent.remove(run)


@pytest.fixture(scope="module")
def embedding_server():
    from batchmagic.simulator import SimulatorProcess

    with SimulatorProcess(latency=0.0, log_calls=False, embedding_dim=8) as sim:
        yield sim


def test_a_large_embedding_run_keeps_little_beside_its_frame(embedding_server):
    """50,000 embedding rows with the journal on: the memory the run allocates at its peak, per
    row, traced (so the machine's load does not change it). Results as fifteen lists, copied
    twice into the frame, peaked at ~636 B a row (2.06x the frame); as columns the frame takes
    as they are, with vectors as rows of one block per answer, ~415-450 B (~1.5x)."""
    import tracemalloc

    n = 50_000
    texts = [f"row {i}" for i in range(n)]
    kw = dict(provider="simulator", base_url=embedding_server.base_url, kind="embedding",
              model="e", progress=False)
    bm.batch(texts[:10], cache=False, **kw)  # imports and first-call set-up are not the run's
    with tempfile.TemporaryDirectory() as folder:
        tracemalloc.start()
        try:
            df = bm.batch(texts, cache=folder, **kw)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert df["error"].isna().all() and len(df) == n
    assert isinstance(df["output"][0], np.ndarray) and df["output"][0].shape == (8,)
    frame = int(df.memory_usage(deep=True).sum())
    assert peak < n * 540, (peak / n, peak / frame)
    pd.testing.assert_series_equal(df["input"], pd.Series(texts, name="input"),
                                   check_dtype=False)
