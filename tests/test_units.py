"""Items -> units: the one packing of embedding inputs, shared by HTTP and engine backends."""

from __future__ import annotations

import orjson
import pytest

from batchmagic import _kinds
from batchmagic._inputs import Item
from batchmagic._units import embedding_units, item_units, pack_indexes

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
