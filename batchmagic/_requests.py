"""A plan's requests as columns, for rows that are each one text in one place of the same body.

Most runs are texts (a list, a Series, or a DataFrame's rendered template) filling one field of a
body that is otherwise the same for every row: the model, the parameters, the system prompt. For
those, planning works on all rows at once instead of one Python object per row:

* the body is built once, with a *slot* where each row's text goes, and written out twice: with
  sorted keys (what the row key hashes) and in the order requests are sent;
* every text is JSON-encoded in one call (``orjson.dumps`` of the list), and each row's key is
  the hash of the bytes around its slot, the same key a body built per row gets
  (``_inputs.row_key``), so journals and Batch API ids carry over;
* the keys are held as one array, hashed when first asked for and then only as far as asked
  (a run's first requests are claimed and sent while the rest are still to be hashed: a million
  keys take about a second); the encoded texts are one buffer with offsets; token estimates
  are made per request when the units are cut (an embedding unit estimates its texts joined);
* a request body is the bytes around the slot with the row's text in between; packed embedding
  requests of consecutive rows are one slice of the buffer.

``RequestTable`` is what a plan holds for such rows; ``Plan.items`` builds the ``Item`` objects
from it when a reader needs them (engines, Batch API jobs), and the plan then keeps those.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from . import _kinds, _tokens

#: the text put where each row's text goes, to find that place in the encoded body
_SLOT = "\x00batchmagic-slot\x00"
_SLOT_JSON = orjson.dumps(_SLOT)
_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class NoSlot(Exception):
    """The call's body cannot be planned with a slot (planning goes row by row instead)."""


@dataclass(frozen=True)
class Slot:
    """The body every row shares, with the place of the row's text: the bytes before and after
    it as the row key hashes them and as the request sends them."""

    kind: str
    body: dict  # the body with _SLOT where the text goes
    path: tuple  # where: keys and indexes from the body down to the text
    key_head: bytes  # b"endpoint\0kind\0" + the sorted body up to the text
    key_tail: bytes
    wire_head: bytes  # the body as encode_body writes it, up to the text
    wire_tail: bytes
    base_tokens: int  # the estimated prompt tokens of the body with an empty text
    max_output: int

    def body_of(self, text: str) -> dict:
        """The row's own body (fresh dicts and lists; parameter values shared, as built)."""
        body = _copy_containers(self.body)
        place = body
        for step in self.path[:-1]:
            place = place[step]
        place[self.path[-1]] = text
        return body

    def tokens_of(self, texts: list[str]) -> int:
        """The estimated prompt tokens of the rows with ``texts``, all together. The words of
        texts joined by a line break are the words of each (the estimate is a sum over words)."""
        return self.base_tokens * len(texts) + _tokens.estimate_text_tokens("\n".join(texts))


def make_slot(kind: str, endpoint: str, model: str | None, params: dict,
              system: str | None) -> Slot:
    """The slot body of a call; ``NoSlot`` when the slot's text is not found exactly once."""
    body = _kinds.build_body(kind, _SLOT, model, params, system, None)
    path = _find(body, ())
    if path is None:
        raise NoSlot("no place for the text")
    try:
        key_head, key_tail = _around(orjson.dumps(body, option=_SORTED))
        wire_head, wire_tail = _around(_kinds.encode_body(body))
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise NoSlot(str(exc)) from None
    prefix = b"%s\0%s\0" % (endpoint.encode(), kind.encode())
    empty = _kinds.build_body(kind, "", model, params, system, None)
    return Slot(kind, body, path, prefix + key_head, key_tail, wire_head, wire_tail,
                _tokens.estimate_prompt_tokens(kind, empty), _tokens.max_output_tokens(kind, params))


def packed_around(slot: Slot, base64_ok: bool) -> tuple[bytes, bytes]:
    """The bytes before and after the texts of a packed embeddings request (``input`` a list):
    the request for texts ``t`` is ``head + b",".join(json(t)) + tail``."""
    packed = _kinds.pack_embeddings([slot.body], base64_ok)
    return _around(_kinds.encode_body(packed))


def _around(raw: bytes) -> tuple[bytes, bytes]:
    at = raw.find(_SLOT_JSON)
    if at < 0 or raw.find(_SLOT_JSON, at + 1) >= 0:
        raise NoSlot("the slot is not in the body exactly once")
    return raw[:at], raw[at + len(_SLOT_JSON):]


def _find(value: Any, path: tuple) -> tuple | None:
    if value is _SLOT or (isinstance(value, str) and value == _SLOT):
        return path
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    for step, inner in items:
        found = _find(inner, (*path, step))
        if found is not None:
            return found
    return None


def _copy_containers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy_containers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_containers(v) for v in value]
    return value


# -- encoding and keys, all rows at once ---------------------------------------------------------


@dataclass
class Encoded:
    """Texts JSON-encoded in one buffer: text ``j`` is ``buffer[start[j]:end[j]]`` (quotes
    included), and consecutive texts are separated by one comma, as in a JSON list."""

    buffer: bytes
    start: np.ndarray
    end: np.ndarray


def encode_texts(texts: list[str]) -> Encoded:
    """One ``orjson.dumps`` for every text. ``TypeError``/``JSONEncodeError`` as orjson raises
    them when a text cannot be JSON (a lone surrogate): the caller finds which."""
    # a copy sized to its bytes: orjson's own buffer keeps its spare capacity (~10x the text)
    buffer = bytes(memoryview(orjson.dumps(texts)))
    if not texts:
        return Encoded(buffer, np.zeros(0, np.int64), np.zeros(0, np.int64))
    lengths = np.fromiter(map(len, _parts(buffer[2:-2])), dtype=np.int64,
                          count=len(texts)) + 2
    start = np.empty(len(texts), dtype=np.int64)
    start[0] = 1
    np.cumsum(lengths[:-1] + 1, out=start[1:])
    start[1:] += 1
    return Encoded(buffer, start, start + lengths)


def _parts(joined: bytes) -> list[bytes]:
    """The encodings, without their quotes, of consecutive texts of a buffer (``a","b``):
    inside a JSON string every quote is escaped, so '","' only ever separates two strings."""
    return joined.split(b'","')


def hash_keys(slot: Slot, parts: list[bytes]) -> list[bytes]:
    """Each text's row key as 16 bytes: the hash of the sorted body with the text in its slot
    (``_inputs.row_key``'s bytes, built around the text instead of encoding a body per row)."""
    head, tail = slot.key_head + b'"', b'"' + slot.key_tail
    sha = hashlib.sha256
    return [sha(head + part + tail).digest()[:16] for part in parts]


def text_parts(encoded: Encoded, first: int, stop: int) -> list[bytes]:
    """The encodings without quotes of texts ``first:stop``: one split of the buffer when they
    are consecutive there, as a list's texts are."""
    buffer, start, end = encoded.buffer, encoded.start, encoded.end
    if stop > first and _adjacent(start, end, first, stop):
        return _parts(buffer[start[first] + 1:end[stop - 1] - 1])
    return [buffer[start[j] + 1:end[j] - 1] for j in range(first, stop)]


def _adjacent(start: np.ndarray, end: np.ndarray, first: int, stop: int) -> bool:
    """Whether encodings ``first:stop`` follow each other in the buffer, a comma apart."""
    return np.array_equal(start[first + 1:stop], end[first:stop - 1] + 1)


def hex_keys(digests: list[bytes]) -> np.ndarray:
    """16-byte keys as an ``S32`` array of their hex digits (the keys the journal knows)."""
    if not digests:
        return np.zeros(0, dtype="S32")
    return np.frombuffer(b"".join(digests).hex().encode(), dtype="S32")


# -- the table ------------------------------------------------------------------------------------


#: keys hashed at a time when a few are asked for (a few ms of hashing)
HASH_CHUNK = 4096


class RequestTable:
    """The unique requests of rows planned with a slot, as columns over the requests.

    ``keys`` (``S32``), each request's text and where its encoding is in the buffer; ``base``
    and ``draw`` only when some request is another draw of an identical one (rows that are not
    de-duplicated), else each request is its own first draw. Keys not given are hashed when
    first asked for, from the first request on, as far as asked (``keys_of``)."""

    def __init__(self, slot: Slot, texts: list[str], encoded: Encoded, first_text: np.ndarray,
                 keys: np.ndarray | None = None, base: np.ndarray | None = None,
                 draw: np.ndarray | None = None):
        self.slot = slot
        self.texts = texts  # per request
        self.buffer = encoded.buffer
        identity = len(first_text) == len(encoded.start)
        self.start = encoded.start if identity else encoded.start[first_text]  # per request
        self.end = encoded.end if identity else encoded.end[first_text]
        self.base = base
        self.draw = draw
        self._tokens: np.ndarray | None = None
        self.extra_tokens = 0  # added to every request's estimate (a schema's own tokens)
        self._keys = keys if keys is not None else np.empty(len(texts), dtype="S32")
        self._hashed = len(texts) if keys is not None else 0  # keys[:_hashed] are made
        self._hashing = threading.Lock()  # the loop and the journal's thread both ask

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def keys(self) -> np.ndarray:
        """Every request's key (``S32``), hashing those not made yet."""
        self._hash_to(len(self.texts))
        return self._keys

    def keys_of(self, items: np.ndarray) -> np.ndarray:
        """The keys of requests ``items``, hashing only as far as the last of them."""
        if len(items):
            self._hash_to(int(items.max()) + 1)
        return self._keys[items]

    def key(self, i: int) -> str:
        self._hash_to(i + 1 if i >= 0 else len(self.texts))
        return self._keys[i].decode()

    def _hash_to(self, stop: int) -> None:
        stop = min(stop, len(self.texts))  # (an index past the end fails on the array)
        if self._hashed >= stop:
            return
        with self._hashing:
            n = len(self.texts)
            while self._hashed < stop:
                first = self._hashed
                # at least a chunk, and at most four at once (each text's bytes are copied)
                last = min(n, max(first + HASH_CHUNK, min(stop, first + 4 * HASH_CHUNK)))
                self._keys[first:last] = hex_keys(hash_keys(
                    self.slot, text_parts(Encoded(self.buffer, self.start, self.end), first,
                                          last)))
                self._hashed = last

    def body(self, i: int) -> dict:
        return self.slot.body_of(self.texts[i])

    def wire_body(self, i: int) -> bytes:
        """The bytes request ``i`` sends (``encode_body`` of its body)."""
        return self.slot.wire_head + self.buffer[self.start[i]:self.end[i]] + self.slot.wire_tail

    def joined(self, items: list[int]) -> bytes:
        """The encodings of requests ``items`` joined by commas: one slice of the buffer when
        they are consecutive there (as the rows of a list are)."""
        first, last = items[0], items[-1]
        if last - first + 1 == len(items) and _adjacent(self.start, self.end, first, last + 1):
            return self.buffer[self.start[first]:self.end[last]]
        return b",".join(self.buffer[self.start[i]:self.end[i]] for i in items)

    @property
    def prompt_tokens(self) -> np.ndarray:
        """Each request's estimated prompt tokens (made once, when first asked for)."""
        if self._tokens is None:
            self._tokens = _tokens.estimate_texts_tokens(self.texts) + self.slot.base_tokens
        return self._tokens + self.extra_tokens

    def tokens_of(self, items: list[int]) -> int:
        """The estimated prompt tokens of requests ``items`` together."""
        if self._tokens is not None:
            return int(self._tokens[as_index(items)].sum()) + self.extra_tokens * len(items)
        at = as_index(items)
        texts = self.texts[at] if isinstance(at, slice) else [self.texts[i] for i in items]
        return self.slot.tokens_of(texts) + self.extra_tokens * len(items)

    def most_tokens(self) -> np.ndarray:
        """A bound no request's estimate exceeds, per request: one token per character (a
        word of L characters counts at most L, a mark or ideograph one), and a text's JSON
        encoding has at least a byte per character (no Python step per text)."""
        return self.end - self.start - 2 + self.slot.base_tokens + self.extra_tokens


def as_index(items: Any) -> Any:
    """A slice for a range of consecutive requests (numpy makes an array of a range)."""
    if isinstance(items, range) and items.step == 1:
        return slice(items.start, items.stop)
    return items
