"""Plan items -> units: what one backend call sends.

A chat, completion or image item is a unit of its own. Embedding items that differ only in their
input share a unit (one request embeds them all), cut so that no unit holds more than the
backend's ``max_items`` inputs or, when it has one, ``max_tokens`` prompt tokens. Pure: no I/O,
the caller says how to turn items into a body (bytes for HTTP, dicts for engines). Requests of a
``RequestTable`` (``_requests``) become units from its columns: their bytes are the slot body's
around each text, and a packed unit's texts one slice of the encoded texts.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

from ._backend import Unit
from ._kinds import pack_signature
from ._requests import RequestTable, as_index


def pack_indexes(indexes: Iterable[int], key_of: Callable[[int], Hashable],
                 tokens_of: Callable[[int], int], max_items: int,
                 max_tokens: int | None = None) -> list[list[int]]:
    """Group ``indexes`` by ``key_of`` and cut each group, in order, into chunks of at most
    ``max_items`` indexes and ``max_tokens`` tokens (``None``: no token limit). An index whose
    own tokens exceed ``max_tokens`` is a chunk alone: the backend judges it, not the packing.
    Groups come in the order of their first index; indexes keep their order within a group."""
    if max_items < 1:
        raise ValueError(f"max_items must be at least 1, got {max_items}")
    groups: dict[Hashable, list[int]] = {}
    for i in indexes:
        groups.setdefault(key_of(i), []).append(i)
    chunks: list[list[int]] = []
    for members in groups.values():
        chunk: list[int] = []
        tokens = 0
        for i in members:
            t = tokens_of(i)
            full = len(chunk) >= max_items or (max_tokens is not None and tokens + t > max_tokens)
            if chunk and full:
                chunks.append(chunk)
                chunk, tokens = [], 0
            chunk.append(i)
            tokens += t
        if chunk:
            chunks.append(chunk)
    return chunks


def item_units(items: Sequence[Any], todo: Iterable[int], body_of: Callable[[dict], Any]
               ) -> list[Unit]:
    """One unit per item; its tokens are the prompt plus the worst-case output."""
    return [Unit([i], body_of(items[i].body), items[i].prompt_tokens + items[i].max_output)
            for i in todo]


def embedding_units(items: Sequence[Any], todo: Iterable[int], *, max_items: int,
                    max_tokens: int | None, body_of: Callable[[list[dict]], Any]) -> list[Unit]:
    """Embedding items packed by ``pack_indexes`` (items share a unit when everything but their
    input is equal); ``body_of`` turns the packed items' body dicts into the unit's body."""
    chunks = pack_indexes(todo, lambda i: pack_signature(items[i].body),
                          lambda i: items[i].prompt_tokens, max_items, max_tokens)
    return [Unit(chunk, body_of([items[i].body for i in chunk]),
                 sum(items[i].prompt_tokens for i in chunk))
            for chunk in chunks]


def table_units(table: RequestTable, todo: list[int]) -> list[Unit]:
    """One unit per request of a table: its bytes, its prompt plus worst-case output tokens."""
    tokens = (table.prompt_tokens + table.slot.max_output).tolist()
    return [Unit([i], table.wire_body(i), tokens[i]) for i in todo]


def table_embedding_units(table: RequestTable, todo: list[int], *, max_items: int,
                          max_tokens: int | None, around: tuple[bytes, bytes]) -> list[Unit]:
    """Embedding requests of a table packed as ``embedding_units`` packs them (they share
    their body but for the input): ``max_items`` at a time, unless ``max_tokens`` binds. The
    per-request estimates are only made when a character count says the cap may bind."""
    if max_items < 1:
        raise ValueError(f"max_items must be at least 1, got {max_items}")
    if todo and todo[-1] - todo[0] + 1 == len(todo):  # consecutive (the usual case): ranges,
        chunks: list = [range(s, min(s + max_items, todo[-1] + 1))  # no list of a million ints
                        for s in range(todo[0], todo[-1] + 1, max_items)]
    else:
        chunks = [todo[s:s + max_items] for s in range(0, len(todo), max_items)]
    if max_tokens is not None and chunks:
        bound = table.most_tokens()
        if any(int(bound[as_index(chunk)].sum()) > max_tokens for chunk in chunks):
            tokens = table.prompt_tokens
            chunks = pack_indexes(todo, lambda i: 0, tokens.__getitem__, max_items, max_tokens)
    head, tail = around
    return [Unit(chunk, head + table.joined(chunk) + tail, table.tokens_of(chunk))
            for chunk in chunks]
