"""Items -> units: the one packing of embedding inputs, shared by HTTP and engine backends; rows
planned as columns (a RequestTable) give the units rows planned one by one give."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from batchmagic import _inputs, _kinds, _requests, _tokens
from batchmagic._inputs import Item, make_plan
from batchmagic._requests import packed_around
from batchmagic._units import (
    embedding_units,
    item_units,
    pack_indexes,
    table_embedding_units,
    table_units,
)

TOKENS = {0: 5, 1: 5, 2: 5, 3: 20, 4: 1, 5: 1}


def same_key(i: int) -> str:
    return "k"


def test_chunks_are_cut_at_max_items():
    assert pack_indexes(range(7), same_key, lambda i: 1, max_items=3) == [[0, 1, 2], [3, 4, 5], [6]]


def test_chunks_are_cut_before_the_item_that_would_pass_max_tokens():
    chunks = pack_indexes(range(6), same_key, TOKENS.__getitem__, max_items=10, max_tokens=12)
    # 5+5 fits, +5 would be 15; 20 alone is over the limit but is still sent (the provider judges
    # it); 1+1 fit together
    assert chunks == [[0, 1], [2], [3], [4, 5]]


def test_no_token_limit_packs_by_count_only():
    chunks = pack_indexes(range(6), same_key, TOKENS.__getitem__, max_items=4, max_tokens=None)
    assert chunks == [[0, 1, 2, 3], [4, 5]]


def test_groups_never_mix_and_keep_the_order_they_were_met_in():
    key = {0: "b", 1: "a", 2: "b", 3: "a", 4: "b"}.__getitem__
    assert pack_indexes([0, 1, 2, 3, 4], key, lambda i: 1, max_items=2) == [[0, 2], [4], [1, 3]]


def test_nothing_to_pack_and_a_bad_limit():
    assert pack_indexes([], same_key, lambda i: 1, max_items=1) == []
    with pytest.raises(ValueError, match="max_items"):
        pack_indexes([0], same_key, lambda i: 1, max_items=0)


def embedding(text: str, tokens: int, **params) -> Item:
    body = {"model": "m", "input": text, **params}
    return Item(key=text, body=body, prompt_tokens=tokens, max_output=0)


def test_embedding_units_share_a_request_only_when_all_but_the_input_is_equal():
    items = [embedding("a", 2), embedding("b", 3, dimensions=8), embedding("c", 4),
             embedding("d", 1), embedding("e", 9)]
    units = embedding_units(items, [0, 1, 2, 3, 4], max_items=2, max_tokens=10, body_of=list)
    assert [u.items for u in units] == [[0, 2], [3, 4], [1]]
    assert [u.tokens for u in units] == [6, 10, 3]
    assert units[0].body == [items[0].body, items[2].body]


def test_embedding_units_carry_the_wire_body_the_caller_builds():
    items = [embedding(t, 1) for t in "xyz"]

    def wire_body(bodies: list[dict]) -> bytes:
        return _kinds.encode_body(_kinds.pack_embeddings(bodies, False))

    (unit,) = embedding_units(items, [0, 1, 2], max_items=8, max_tokens=None, body_of=wire_body)
    assert unit.items == [0, 1, 2]
    assert orjson.loads(unit.body)["input"] == ["x", "y", "z"]


def test_item_units_are_one_per_item_with_the_worst_case_tokens():
    items = [Item(key=str(i), body={"messages": [{"role": "user", "content": str(i)}]},
                  prompt_tokens=3, max_output=5) for i in range(3)]
    units = item_units(items, [2, 0], body_of=lambda body: body)
    assert [u.items for u in units] == [[2], [0]]
    assert units[0].body is items[2].body and units[0].tokens == 8


# -- rows planned as columns (a RequestTable) give the requests rows planned one by one give ----

URL = "http://127.0.0.1:9/v1"


def _both(monkeypatch, inputs, template=None, **kw):
    """The plan as columns, and the same call planned row by row."""
    table = make_plan(inputs, template, **kw)
    assert table.table is not None
    with monkeypatch.context() as m:
        m.setattr(_inputs, "_slot_for", lambda *a: None)
        rows = make_plan(inputs, template, **kw)
    assert rows.table is None
    return table, rows


def _same_plan(table, rows):
    assert table.n_rows == rows.n_rows and table.n_items == len(rows.items)
    assert list(table.row_item) == list(rows.row_item)
    assert {p: e.message for p, e in table.row_errors.items()} == \
        {p: e.message for p, e in rows.row_errors.items()}
    assert table.skipped == rows.skipped
    assert [k.decode() for k in table.keys] == [it.key for it in rows.items]
    assert [table.rows_of(i) for i in range(table.n_items)] == [it.rows for it in rows.items]
    assert list(table.table.prompt_tokens) == [it.prompt_tokens for it in rows.items]
    assert [table.table.body(i) for i in range(table.n_items)] == [it.body for it in rows.items]


@pytest.mark.parametrize("params", [{"temperature": 0}, {"temperature": 0.7}])
def test_a_table_plans_chat_rows_as_rows_planned_one_by_one_do(monkeypatch, params):
    texts = ["hello", "wörld ünïcode 漢字", "hello", "", "a \"quoted\" line\nand\ttabs", "x_y-z!",
             "\ud800 lone", "hello"]
    kw = dict(kind="chat", endpoint=URL + "/chat/completions", model="m",
              params={"max_tokens": 7, **params}, system="be brief")
    table, rows = _both(monkeypatch, texts, **kw)
    _same_plan(table, rows)
    todo = list(range(table.n_items))
    got = [(u.items, u.body, u.tokens) for u in table_units(table.table, todo)]
    want = [(u.items, u.body, u.tokens) for u in item_units(rows.items, todo, _kinds.encode_body)]
    assert got == want
    # the same through a frame's template, with a missing value
    df = pd.DataFrame({"t": ["a", None, "b", "a"]}, index=list("wxyz"))
    for on_missing in ("error", "skip", "empty"):
        _same_plan(*_both(monkeypatch, df, "Say {t}", on_missing=on_missing, **kw))


def test_a_table_packs_embeddings_as_items_are_packed(monkeypatch):
    texts = [f"text number {i} ok" for i in range(50)] + ["  ", "text number 3 ok", "日本語"]
    table, rows = _both(monkeypatch, texts, kind="embedding", endpoint=URL + "/embeddings",
                        model="e", params={}, system=None)
    _same_plan(table, rows)
    todo = list(range(table.n_items))
    for max_items, max_tokens in ((8, None), (50, 40), (256, 250_000)):
        got = table_embedding_units(table.table, todo, max_items=max_items,
                                    max_tokens=max_tokens, around=packed_around(table.table.slot,
                                                                                False))
        want = embedding_units(rows.items, todo, max_items=max_items, max_tokens=max_tokens,
                               body_of=lambda bodies: _kinds.encode_body(
                                   _kinds.pack_embeddings(bodies, False)))
        assert [(list(u.items), u.body, u.tokens) for u in got] == \
            [(u.items, u.body, u.tokens) for u in want]
        if max_tokens is None:  # consecutive items are packed as ranges (no list of ints)
            assert all(isinstance(u.items, range) for u in got)


@pytest.mark.parametrize("params", [{"temperature": 0}, {"temperature": 0.7}])
def test_a_tables_keys_are_hashed_when_asked_and_as_far_as_asked(monkeypatch, params):
    """Planning hashes no key (a run sends its first requests while the rest are hashed); keys
    asked for a few at a time, in any order, are the keys rows planned one by one get."""
    monkeypatch.setattr(_requests, "HASH_CHUNK", 4)
    texts = [f"text {i}" for i in range(40)] + ["again", "text 3", "again", "ü \"q\""]
    kw = dict(kind="chat", endpoint=URL + "/chat/completions", model="m", params=params,
              system=None)
    plan = make_plan(texts, None, **kw)
    _, rows = _both(monkeypatch, texts, **kw)
    want = [it.key for it in rows.items]
    table = plan.table
    drawn = table.draw is not None  # identical rows at a temperature: keys of their own
    assert table._hashed == (len(table) if drawn else 0)
    assert table.key(5) == want[5]
    assert [k.decode() for k in table.keys_of(np.array([20, 3, 21]))] == \
        [want[20], want[3], want[21]]
    assert drawn or 22 <= table._hashed < len(table)  # a chunk at a time, not all of them
    assert [k.decode() for k in table.keys] == want


def test_texts_counted_together_count_as_each_counted_alone():
    rng = np.random.default_rng(3)
    alphabet = list("abcXYZ019 _-.,!?\t\n\r\x00\x1c\x1f'\"")
    for _ in range(50):
        texts = ["".join(rng.choice(alphabet, size=rng.integers(0, 30)))
                 for _ in range(rng.integers(1, 60))]
        assert list(_tokens.estimate_texts_tokens(texts)) == \
            [_tokens.estimate_text_tokens(t) for t in texts]
        joined = "\n".join(texts) * 50  # long enough to be counted over its bytes
        assert _tokens.estimate_text_tokens(joined) == \
            sum((len(w) + 3) // 4 for w in _tokens._WORD.findall(joined))
    assert list(_tokens.estimate_texts_tokens(["漢字 ok", "ok"])) == [3, 1]
