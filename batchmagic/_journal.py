"""The durable row journal: SQLite in WAL mode, the source of truth for resume and cache.

Each answered request is written, keyed by its row key, before its row counts as finished. Writes
are batched on one writer thread so the journal costs little. A re-run looks up every row key
first and sends only what is missing; editing 10 rows re-sends 10 rows.

Answers are written many to a statement (schema 2): one ``answers`` row per group commit holds
its keys (16 bytes each) and its answers as arrays: embeddings as one float32 block, other
answers as lines of JSON, usage as packed numbers. Appending a row touches only the pages at the
table's end; one row per key touched a page of the key index per answer (row keys are random),
which made the journal a third of a big run's time. A lookup reads the keys of its own endpoint's
answers, matches them in bulk, and reads back only the answers it found (vectors as one array).
Failed rows, and answers the Batch API harvests, are ``rows`` entries, one per key, as they were in
schema 1: a journal written before is read as it is.

Layout: a project-local ``.batchmagic/`` folder (``BATCHMAGIC_JOURNAL_DIR`` or ``cache="path"``
to move it), mode 0700, holding ``journal.sqlite3`` (0600; SQLite gives its -wal and -shm files the
same mode). JSON only, never pickle; no secret is ever written (request bodies are not stored,
only the answers, except a Batch API job's inputs, kept so its frame can be rebuilt later). A
torn last write is SQLite's to discard on open; a row whose stored answer no longer decodes is
skipped and asked again; a damaged file (header, any page, a truncated file, a WAL that does not
match) is moved aside as ``journal.corrupt-*.sqlite3`` and a new one started; a journal deleted or
replaced during a run is started again at its path and each run writes its answers into it again.

Two processes can share a journal: SQLite serialises writers, and *leases* stop two runs paying
for the same row at once: a run claims the keys it is about to send (a row per claim, the keys in
one blob); a key claimed by another live run (same host, process alive, lease fresh) is not sent
but waited for.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from ._errors import JournalError

log = logging.getLogger("batchmagic")
T = TypeVar("T")

SCHEMA_VERSION = 2
LEASE_SECONDS = 60.0
DEFAULT_DIR = ".batchmagic"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS rows (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,           -- ok | error
    kind TEXT,
    model TEXT,
    result TEXT,                    -- JSON: the answer (see encode_result)
    input_tokens INTEGER,
    output_tokens INTEGER,
    cost REAL,
    latency REAL,
    attempts INTEGER,
    error_class TEXT,
    error_message TEXT,
    error_status INTEGER,
    error_code TEXT,
    possibly_billed INTEGER,
    run_id TEXT,
    created REAL,
    updated REAL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started REAL,
    finished REAL,
    state TEXT,
    kind TEXT,
    model TEXT,
    provider TEXT,
    endpoint TEXT,
    template TEXT,
    rows INTEGER,
    requests INTEGER,
    cached INTEGER,
    ok INTEGER,
    failed INTEGER,
    cost REAL,
    pid INTEGER
);
-- the claims of live runs: the keys each is sending, newline-joined in one blob per claim
-- (a million keys cost a few writes, not a million index inserts); a run's first claim is the
-- row run_id, its later ones run_id#1, run_id#2, ...
CREATE TABLE IF NOT EXISTS claims (
    run_id TEXT PRIMARY KEY,
    host TEXT,
    pid INTEGER,
    expires REAL,
    keys BLOB
);
-- Batch API jobs (batchapi/): a job is recorded before any provider call, so a crash never
-- loses track of a batch the provider may be running (and billing).
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    created REAL,
    updated REAL,
    state TEXT,                     -- submitting | running | finished
    provider TEXT,
    model TEXT,
    config TEXT,                    -- JSON: where and how to send (never a key)
    plan TEXT,                      -- JSON: the inputs, to rebuild the frame after a restart
    summary TEXT                    -- JSON: last known provider status and counts
);
CREATE TABLE IF NOT EXISTS job_shards (
    job_id TEXT NOT NULL,
    shard INTEGER NOT NULL,
    nonce TEXT NOT NULL,            -- also in the provider batch's metadata: adopt it on resume
    requests INTEGER,
    attempts INTEGER DEFAULT 0,     -- times a process started creating it
    file_ref TEXT,
    batch_id TEXT,
    status TEXT,                    -- the provider's word for it
    info TEXT,                      -- JSON: normalised state and request counts
    output_ref TEXT,
    error_ref TEXT,
    message TEXT,
    harvested INTEGER DEFAULT 0,
    updated REAL,
    PRIMARY KEY (job_id, shard)
);
CREATE TABLE IF NOT EXISTS job_rows (
    job_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    key TEXT NOT NULL,
    shard INTEGER,
    outcome TEXT,                   -- NULL while pending | ok | error | unprocessed
    error TEXT,                     -- JSON: the row error, when outcome is error / unprocessed
    PRIMARY KEY (job_id, custom_id)
);
CREATE INDEX IF NOT EXISTS job_rows_key ON job_rows(key);
-- schema 2: answers many per row (see the module's docstring); big columns last, so that a
-- lookup reading the keys never reads the answers
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY,
    scope TEXT,                     -- the endpoint asked: a lookup reads its own scope's keys
    n INTEGER,
    keys BLOB,                      -- n row keys, 16 bytes each (their 32 hex digits, decoded)
    kind TEXT,
    model TEXT,
    run_id TEXT,
    created REAL,
    input_tokens BLOB,              -- n x int64, -1 where not known
    output_tokens BLOB,             -- n x int64, -1 where not known
    cost BLOB,                      -- n x float64, NaN where not known
    latency BLOB,                   -- n x float64, NaN where not known
    attempts BLOB,                  -- n x int32
    dim INTEGER,                    -- embeddings: the length of each vector
    vectors BLOB,                   -- embeddings: n x dim little-endian float32
    outputs TEXT                    -- other answers: n lines of JSON (encode_result), key order
);
CREATE INDEX IF NOT EXISTS answers_scope ON answers(scope);
"""


@dataclass(slots=True)
class Record:
    key: str
    status: str
    output: Any
    finish_reason: str | None
    reasoning: str | None
    input_tokens: int | None
    output_tokens: int | None
    cost: float | None
    latency: float | None
    attempts: int
    extra: dict = field(default_factory=dict)  # tool_calls, logprobs


def default_folder() -> Path:
    return Path(os.environ.get("BATCHMAGIC_JOURNAL_DIR") or DEFAULT_DIR)


def folder_for(cache: Any) -> Path | None:
    """``cache=True`` -> the default folder, ``False`` -> None, a path -> that folder."""
    if cache is False or cache is None:
        return None
    if cache is True:
        return default_folder()
    if isinstance(cache, (str, os.PathLike)):
        return Path(cache)
    raise TypeError(f"cache must be True, False or a folder path, not {type(cache).__name__}")


# -- answers <-> JSON ---------------------------------------------------------------------------


def encode_result(output: Any, finish_reason: str | None, reasoning: str | None,
                  extra: dict | None = None) -> bytes:
    """An answer as the journal keeps it; ``extra`` holds what some answers carry besides
    (``tool_calls``, ``logprobs``), left out when empty."""
    if isinstance(output, np.ndarray):
        value: Any = {"f32": base64.b64encode(output.astype("<f4").tobytes()).decode()}
    elif type(output).__name__ == "GeneratedImage":
        value = {"image": base64.b64encode(output.data).decode(), "mime": output.mime,
                 "url": output.url}
    else:
        value = output
    stored = {"o": value, "f": finish_reason, "r": reasoning}
    extra = {k: v for k, v in (extra or {}).items() if v is not None}
    if extra:
        stored["x"] = extra
    return orjson.dumps(stored)


def decode_result(raw: str | bytes) -> tuple[Any, str | None, str | None, dict]:
    data = orjson.loads(raw)
    value = data["o"]
    if isinstance(value, dict) and "f32" in value:
        value = np.frombuffer(base64.b64decode(value["f32"]), dtype="<f4").astype(np.float32)
    elif isinstance(value, dict) and "image" in value:
        from ._image import GeneratedImage

        value = GeneratedImage(base64.b64decode(value["image"]), mime=value.get("mime"),
                               url=value.get("url"))
    return value, data.get("f"), data.get("r"), data.get("x") or {}


_UPSERT_ROW = (
    "INSERT INTO rows (key, status, kind, model, result, input_tokens, "
    "output_tokens, cost, latency, attempts, error_class, error_message, "
    "error_status, error_code, possibly_billed, run_id, created, updated) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(key) DO UPDATE SET status=excluded.status, kind=excluded.kind, "
    "model=excluded.model, result=excluded.result, input_tokens=excluded.input_tokens, "
    "output_tokens=excluded.output_tokens, cost=excluded.cost, latency=excluded.latency, "
    "attempts=excluded.attempts, error_class=excluded.error_class, "
    "error_message=excluded.error_message, error_status=excluded.error_status, "
    "error_code=excluded.error_code, possibly_billed=excluded.possibly_billed, "
    "run_id=excluded.run_id, updated=excluded.updated "
    "WHERE rows.status != 'ok' OR excluded.status = 'ok'"  # never lose an answer
)


# -- answers many per row (schema 2) --------------------------------------------------------------

_ANSWER_COLUMNS = ("scope, n, keys, kind, model, run_id, created, input_tokens, output_tokens, "
                   "cost, latency, attempts, dim, vectors, outputs")


@dataclass
class AnswerBatch:
    """Answers to write as one ``answers`` row: their keys (32 hex digits each) and columns.
    Usage columns take None where not known; ``vectors`` (n x dim) holds embeddings, else
    ``outputs`` holds each answer as ``encode_result`` made it."""

    scope: str
    kind: str
    model: str | None
    run_id: str
    keys: Sequence[str]
    input_tokens: Sequence[int | None]
    output_tokens: Sequence[int | None]
    cost: Sequence[float | None]
    latency: Sequence[float | None]
    attempts: Sequence[int]
    vectors: np.ndarray | None = None
    outputs: Sequence[bytes] | None = None

    def as_records(self) -> list[tuple]:
        """The answers as ``rows`` entries, one per key (for keys that are not 32 hex digits)."""
        outputs = self.outputs if self.vectors is None else \
            [encode_result(v, None, None, {}) for v in self.vectors]
        return [(key, "ok", self.kind, self.model, out.decode(), self.input_tokens[j],
                 self.output_tokens[j], self.cost[j], self.latency[j], self.attempts[j], None,
                 None, None, None, 0, self.run_id)
                for j, (key, out) in enumerate(zip(self.keys, outputs or ()))]

    def as_row(self, now: float) -> tuple:
        n = len(self.keys)
        raw = key_bytes(self.keys)
        if raw is None:
            raise ValueError("answers rows hold row keys of 32 hex digits only")
        dim = vectors = outputs = None
        if self.vectors is not None:
            dim = int(self.vectors.shape[1])
            vectors = np.ascontiguousarray(self.vectors, dtype="<f4").tobytes()
        else:
            outputs = b"\n".join(self.outputs or ()).decode()
        return (self.scope, n, raw.tobytes(), self.kind, self.model, self.run_id, now,
                _ints(self.input_tokens), _ints(self.output_tokens), _floats(self.cost),
                _floats(self.latency), np.asarray(self.attempts, dtype="<i4").tobytes(), dim,
                vectors, outputs)


def _ints(values: Sequence[int | None]) -> bytes:
    if isinstance(values, np.ndarray):
        return values.astype("<i8").tobytes()
    return np.array([-1 if v is None else v for v in values], dtype="<i8").tobytes()


def _key_strings(keys: Sequence[str] | np.ndarray) -> Sequence[str]:
    return [k.decode() for k in keys.tolist()] if isinstance(keys, np.ndarray) else keys


def _key_lines(keys: Sequence[str] | np.ndarray) -> bytes:
    """Keys joined by line breaks, as the claims table keeps them; an ``S32`` key array in one
    numpy step (a million keys as Python strings would take ~90 MB just to be joined)."""
    if not isinstance(keys, np.ndarray):
        return "\n".join(keys).encode()
    if not len(keys):
        return b""
    lines = np.empty((len(keys), keys.itemsize + 1), dtype=np.uint8)
    lines[:, :-1] = np.ascontiguousarray(keys).view(np.uint8).reshape(len(keys), keys.itemsize)
    lines[:, -1] = ord("\n")
    return lines.reshape(-1)[:-1].tobytes()


def _floats(values: Sequence[float | None]) -> bytes:
    if isinstance(values, np.ndarray):
        return values.astype("<f8").tobytes()
    return np.array([np.nan if v is None else v for v in values], dtype="<f8").tobytes()


def key_bytes(keys: Sequence[str] | np.ndarray) -> np.ndarray | None:
    """Row keys (32 hex digits each) as an (n, 2) uint64 array of their 16 bytes; None when
    one of them is not such a key."""
    if isinstance(keys, np.ndarray) and keys.dtype == np.dtype("S32"):
        text = keys.tobytes().decode("ascii", "replace")
    else:
        text = "".join(keys)
    if len(text) != 32 * len(keys):
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return np.frombuffer(raw, dtype="<u8").reshape(-1, 2)


def _match(wanted: np.ndarray, stored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions in ``wanted``, positions in ``stored``) of the keys both hold (n x 2 uint64
    each); a key stored more than once matches its last copy (the newest answer)."""
    if not len(wanted) or not len(stored):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    if 8 * len(wanted) < len(stored):  # a few keys in a big journal: sort the few, not the journal
        return _match_few(wanted, stored)
    order = np.lexsort((np.arange(len(stored)), stored[:, 1], stored[:, 0]))
    s0, s1 = stored[order, 0], stored[order, 1]
    last = np.ones(len(order), dtype=bool)  # the last copy of each key, in sorted order
    last[:-1] = (s0[1:] != s0[:-1]) | (s1[1:] != s1[:-1])
    order, s0, s1 = order[last], s0[last], s1[last]
    lo = np.searchsorted(s0, wanted[:, 0], "left")
    hi = np.searchsorted(s0, wanted[:, 0], "right")
    at = np.flatnonzero(hi > lo)
    found_w: list[np.ndarray] = []
    found_s: list[np.ndarray] = []
    single = at[hi[at] - lo[at] == 1]
    hit = s1[lo[single]] == wanted[single, 1]
    found_w.append(single[hit])
    found_s.append(order[lo[single[hit]]])
    for w in at[hi[at] - lo[at] > 1].tolist():  # two keys sharing their first 8 bytes: rare
        for j in range(lo[w], hi[w]):
            if s1[j] == wanted[w, 1]:
                found_w.append(np.array([w]))
                found_s.append(order[j:j + 1])
    w_pos, s_pos = np.concatenate(found_w), np.concatenate(found_s)
    sort = np.argsort(w_pos, kind="stable")
    return w_pos[sort], s_pos[sort]


def _match_few(wanted: np.ndarray, stored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``_match`` by looking each stored key up among the wanted ones (sorted)."""
    order = np.lexsort((wanted[:, 1], wanted[:, 0]))
    w0, w1 = wanted[order, 0], wanted[order, 1]
    lo = np.searchsorted(w0, stored[:, 0], "left")
    hi = np.searchsorted(w0, stored[:, 0], "right")
    single = np.flatnonzero(hi - lo == 1)
    hit = single[w1[lo[single]] == stored[single, 1]]
    s_parts, w_parts = [hit], [order[lo[hit]]]
    for s in np.flatnonzero(hi - lo > 1).tolist():  # wanted keys sharing their first 8 bytes
        for j in range(lo[s], hi[s]):
            if w1[j] == stored[s, 1]:
                s_parts.append(np.array([s]))
                w_parts.append(order[j:j + 1])
    s_pos, w_pos = np.concatenate(s_parts), np.concatenate(w_parts)
    by_stored = np.argsort(s_pos, kind="stable")
    s_pos, w_pos = s_pos[by_stored], w_pos[by_stored]
    _, last = np.unique(w_pos[::-1], return_index=True)  # each wanted key's newest copy
    keep = len(w_pos) - 1 - last
    return w_pos[keep], s_pos[keep]


@dataclass
class Found:
    """What a lookup found, as columns over the keys found: ``at`` their positions in the keys
    asked (ascending), usage (-1 / NaN where not known), and the answers: ``vectors`` (one
    float32 block, when every answer found is a vector of one length) or ``answers`` (one
    ``(output, finish_reason, reasoning, extra)`` each)."""

    at: np.ndarray
    status: list[str]
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    cost: np.ndarray
    latency: np.ndarray
    attempts: np.ndarray
    vectors: np.ndarray | None = None
    answers: list | None = None

    def __len__(self) -> int:
        return len(self.at)

    def answer(self, j: int) -> tuple[Any, str | None, str | None, dict]:
        if self.vectors is not None:
            return self.vectors[j], None, None, {}
        return self.answers[j]  # type: ignore[index]

    def usage(self, j: int) -> tuple[int | None, int | None, float | None, float | None, int]:
        """(input_tokens, output_tokens, cost, latency, attempts) of answer ``j``."""
        i_t, o_t = int(self.input_tokens[j]), int(self.output_tokens[j])
        cost, latency = float(self.cost[j]), float(self.latency[j])
        return (None if i_t < 0 else i_t, None if o_t < 0 else o_t,
                None if cost != cost else cost, None if latency != latency else latency,
                int(self.attempts[j]))

    def record(self, j: int, key: str = "") -> Record:
        output, finish, reasoning, extra = self.answer(j)
        return Record(key, self.status[j], output, finish, reasoning, *self.usage(j), extra)


def find_in(conn: sqlite3.Connection, keys: Sequence[str] | np.ndarray, include_errors: bool,
            scope: str | None) -> Found:
    """``Journal.find`` on a connection (``peek`` reads a file without a ``Journal``)."""
    hits: dict[int, tuple] = {}  # position -> (status, answer, usage)
    block = _answers_found(conn, keys, scope, hits)
    taken = block.at if block is not None else np.fromiter(hits, dtype=np.int64, count=len(hits))
    statuses = ("ok", "error") if include_errors else ("ok",)
    more = list(_rows_found(conn, keys, taken, statuses))
    if not more and block is not None:  # vectors only: one block, no tuple per key
        return block
    if block is not None:
        for j, pos in enumerate(block.at.tolist()):
            hits[pos] = ("ok", block.answer(j), block.usage(j))
    for pos, rec in more:
        hits[pos] = (rec.status, (rec.output, rec.finish_reason, rec.reasoning, rec.extra),
                     (rec.input_tokens, rec.output_tokens, rec.cost, rec.latency, rec.attempts))
    return _found_of(hits)


def _found_of(hits: dict[int, tuple]) -> Found:
    at = sorted(hits)
    usage = [hits[p][2] for p in at]
    ints = lambda k: np.array([-1 if u[k] is None else u[k] for u in usage], dtype=np.int64)  # noqa: E731
    floats = lambda k: np.array([np.nan if u[k] is None else u[k] for u in usage],  # noqa: E731
                                dtype=np.float64)
    return Found(np.array(at, dtype=np.int64), [hits[p][0] for p in at], ints(0), ints(1),
                 floats(2), floats(3), ints(4), answers=[hits[p][1] for p in at])


def _answers_found(conn: sqlite3.Connection, keys: Sequence[str] | np.ndarray, scope: str | None,
                   hits: dict[int, tuple]) -> Found | None:
    """Look ``keys`` up in the answers table. A lookup whose every answer is a vector of one
    length returns them as a ``Found`` (one block); otherwise they go into ``hits``."""
    where, args = ("WHERE scope = ?", (scope,)) if scope is not None else ("", ())
    try:
        stored = conn.execute(f"SELECT id, n, keys FROM answers {where} ORDER BY id",
                              args).fetchall()
    except sqlite3.OperationalError as exc:  # a schema 1 journal read as it is (peek)
        if "no such table" not in str(exc):
            raise
        return None
    if not stored or not len(keys):
        return None
    wanted = key_bytes(keys)
    if wanted is None:  # not all are row keys: look up those that are
        valid = [p for p in range(len(keys)) if key_bytes([keys[p]]) is not None]
        wanted = key_bytes([keys[p] for p in valid]) if valid else np.zeros((0, 2), "<u8")
        positions = np.array(valid, dtype=np.int64)
    else:
        positions = np.arange(len(keys), dtype=np.int64)
    ids, sizes = [], []
    blobs = []
    for row_id, n, blob in stored:
        if blob is None or len(blob) != 16 * n:
            continue  # damaged: its answers are asked again
        ids.append(row_id)
        sizes.append(n)
        blobs.append(blob)
    if not ids:
        return None
    all_keys = np.frombuffer(b"".join(blobs), dtype="<u8").reshape(-1, 2)
    w_pos, s_pos = _match(wanted, all_keys)
    if not len(w_pos):
        return None
    starts = np.concatenate([[0], np.cumsum(sizes)])
    chunk = np.searchsorted(starts, s_pos, "right") - 1
    parts = []
    for c in np.unique(chunk).tolist():
        mine = chunk == c
        part = _read_answers(conn, ids[c], sizes[c], s_pos[mine] - starts[c])
        if part is not None:
            parts.append((positions[w_pos[mine]], *part))
    return _gather(parts, hits)


def _read_answers(conn: sqlite3.Connection, row_id: int, n: int,
                  offsets: np.ndarray) -> tuple | None:
    """Answers ``offsets`` of answers row ``row_id``: (kept offsets' mask, usage arrays,
    vectors or decoded answers). None when the row is damaged."""
    row = conn.execute("SELECT input_tokens, output_tokens, cost, latency, attempts, dim, "
                       "vectors, outputs FROM answers WHERE id = ?", (row_id,)).fetchone()
    i_t, o_t, cost, latency, attempts, dim, vectors, outputs = row
    try:
        usage = (np.frombuffer(i_t, "<i8")[offsets], np.frombuffer(o_t, "<i8")[offsets],
                 np.frombuffer(cost, "<f8")[offsets], np.frombuffer(latency, "<f8")[offsets],
                 np.frombuffer(attempts, "<i4")[offsets].astype(np.int64))
        if dim is not None:
            block = np.frombuffer(vectors, "<f4").reshape(n, dim)
            return np.ones(len(offsets), dtype=bool), usage, block[offsets], None
        lines = outputs.split("\n")
        if len(lines) != n:
            return None
    except (TypeError, ValueError, IndexError, AttributeError):
        log.debug("batchmagic: journal answers row %s does not decode; re-asking", row_id)
        return None
    keep = np.ones(len(offsets), dtype=bool)
    answers = []
    for j, off in enumerate(offsets.tolist()):
        try:
            answers.append(decode_result(lines[off]))
        except Exception:  # garbage: this answer is asked again
            keep[j] = False
            answers.append(None)
    return keep, usage, None, answers


def _gather(parts: list[tuple], hits: dict[int, tuple]) -> Found | None:
    """The answers rows' parts as one ``Found`` when they are all vectors of one length and
    all decoded; otherwise into ``hits``, one tuple per key."""
    dims = {p[3].shape[1] if p[3] is not None else None for p in parts}
    if len(dims) == 1 and None not in dims:
        at = np.concatenate([p[0] for p in parts])
        order = np.argsort(at, kind="stable")
        cols = [np.concatenate([p[2][k] for p in parts])[order] for k in range(5)]
        block = np.concatenate([p[3] for p in parts])[order].astype(np.float32)
        return Found(at[order], ["ok"] * len(at), *cols, vectors=block)
    for pos, keep, usage, block, answers in parts:
        for j, p in enumerate(pos.tolist()):
            if not keep[j]:
                continue
            answer = (block[j].astype(np.float32), None, None, {}) if block is not None \
                else answers[j]
            u = [int(usage[0][j]), int(usage[1][j]), float(usage[2][j]), float(usage[3][j]),
                 int(usage[4][j])]
            hits[p] = ("ok", answer, (None if u[0] < 0 else u[0], None if u[1] < 0 else u[1],
                                      None if u[2] != u[2] else u[2],
                                      None if u[3] != u[3] else u[3], u[4]))
    return None


def _rows_found(conn: sqlite3.Connection, keys: Sequence[str] | np.ndarray, taken: np.ndarray,
                statuses: tuple[str, ...]) -> Iterator[tuple[int, Record]]:
    """(position, record) for the keys, but those at positions ``taken``, that the rows table
    answers. A table smaller than the keys asked is read whole; a bigger one is asked about
    the keys."""
    size = conn.execute("SELECT max(rowid) FROM rows").fetchone()[0] or 0
    if size == 0 or not len(keys):
        return
    rest = np.ones(len(keys), dtype=bool)
    rest[taken] = False
    as_str = (lambda k: k.decode()) if isinstance(keys, np.ndarray) else (lambda k: k)  # noqa: E731
    wanted: dict[str, list[int]] = {}
    for p in np.flatnonzero(rest).tolist():
        wanted.setdefault(as_str(keys[p]), []).append(p)
    sql = "SELECT key, status, result, input_tokens, output_tokens, cost, latency, attempts FROM rows"
    if size <= len(wanted):
        cursors: Iterable[sqlite3.Cursor] = [conn.execute(sql)]
    else:
        names = list(wanted)
        cursors = (conn.execute(f"{sql} WHERE key IN ({','.join('?' * len(chunk))})", chunk)
                   for chunk in (names[s:s + 900] for s in range(0, len(names), 900)))
    for cursor in cursors:
        for key, status, result, *usage in cursor:
            at = wanted.get(key)
            if at is not None and status in statuses:
                rec = _record(key, status, result, *usage)
                if rec is not None:
                    yield from ((pos, rec) for pos in at)


# -- the journal --------------------------------------------------------------------------------


class Journal:
    """One SQLite journal. Thread-safe: every call goes through ``_use``, under the connection lock.

    The file at ``path`` is followed, not trusted: a journal deleted or replaced while open (on
    Linux SQLite goes on writing to the unlinked file, so nothing errors) is noticed before and
    after each write, and a damaged one (at open by ``PRAGMA quick_check``, or on any later read)
    is moved aside as ``journal.corrupt-*``. Either way a new journal is started at the path and
    ``generation`` moves on, so that each run writes again the answers it had kept in the old one.
    """

    def __init__(self, folder: str | os.PathLike):
        # absolute: the file is followed by its path, and a notebook's %cd must not move it
        self.folder = Path(os.path.abspath(folder))
        self.path = self.folder / "journal.sqlite3"
        self.generation = 0  # bumped each time a new file replaces the one open
        self._files = (str(self.path), str(self.path) + "-wal")  # stat'ed around every write
        self._lock = threading.Lock()
        self._conn, self._identity = self._connect()

    def _connect(self, trouble: str = "cannot open the journal") -> tuple[sqlite3.Connection, tuple]:
        try:
            self._prepare_folder()
            return self._open()
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"{trouble} in {self.folder}: {_why(exc)}; pass cache=False to run "
                               "without one, or cache='other/folder'") from None

    def _prepare_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        if not self.path.exists():
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)  # 0600 whatever the umask
            os.close(fd)
        os.chmod(self.path, 0o600)

    def _open(self) -> tuple[sqlite3.Connection, tuple]:
        """Connect to the file at the path; a damaged one is moved aside once and a new one made.
        Returns the connection and the identity of the files it has open."""
        for attempt in (1, 2):
            # taken before connecting: if the file changes in between, the next call reopens
            main = _inode(self._files[0])
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
            try:
                damage = self._set_up(conn)
            except sqlite3.Error as exc:
                if attempt == 2 or not _is_damage(exc):
                    conn.close()
                    raise
                damage = str(exc)
            if damage is None:
                return conn, (main, _inode(self._files[1]))
            if attempt == 2:
                conn.close()
                raise sqlite3.DatabaseError(f"a new journal is damaged too ({damage})")
            self._set_aside(damage, conn)
            self._prepare_folder()
        raise AssertionError("unreachable")

    def _set_up(self, conn: sqlite3.Connection) -> str | None:
        """``_set_up_once``, again after a moment when the file is locked: two processes setting
        up a new journal at once can each hold what the other needs, and SQLite then refuses
        one at once instead of waiting its busy timeout (it would be a deadlock). Every step of
        the set-up can be done twice."""
        for pause in (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, None):
            try:
                return self._set_up_once(conn)
            except sqlite3.OperationalError as exc:
                if pause is None or "locked" not in str(exc):
                    raise
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _set_up_once(self, conn: sqlite3.Connection) -> str | None:
        """Settings, the damage check and the schema. Returns what is damaged, or None."""
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes
        # 8 MB: answers are appended (schema 2), so a write touches few pages; the cache holds
        # what was read or written, and a bigger one only grows the process
        conn.execute("PRAGMA cache_size=-8192")
        # SQLite reports a damaged page only when it reads it: read them all now (cheap next to
        # a run: the pages land in the cache that the cache lookup reads next anyway)
        verdict = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        if verdict != "ok":
            return verdict
        conn.executescript(_SCHEMA)  # a schema 1 journal gains the answers table here
        conn.execute("INSERT INTO meta VALUES ('schema', ?) ON CONFLICT(k) DO UPDATE SET v=excluded.v "
                     "WHERE CAST(v AS INTEGER) < CAST(excluded.v AS INTEGER)", (str(SCHEMA_VERSION),))
        for suffix in ("-wal", "-shm"):
            side = _side(self.path, suffix)
            if side.exists():
                os.chmod(side, 0o600)
        return None

    def _set_aside(self, damage: str, conn: sqlite3.Connection) -> None:
        """Move a damaged journal and its WAL aside, as they are, and close ``conn`` to it (after
        the move: closing the last connection to a file still in place would checkpoint the WAL
        into it and delete the WAL)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"journal.corrupt-{stamp}.sqlite3")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"journal.corrupt-{stamp}-{n}.sqlite3")
        log.warning("batchmagic: the journal %s is damaged (%s); moved it to %s and started a new "
                    "one (its answers will be asked again)", self.path, " ".join(damage.split()),
                    aside.name)
        try:
            os.replace(self.path, aside)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        if _side(self.path, "-wal").exists():
            os.replace(_side(self.path, "-wal"), _side(aside, "-wal"))
        _side(self.path, "-shm").unlink(missing_ok=True)

    def _follow_path(self) -> bool:
        """Reopen if the files at the path are no longer the ones open (deleted, their folder
        deleted, or replaced). Returns whether it reopened."""
        if (_inode(self._files[0]), _inode(self._files[1])) == self._identity:
            return False
        self._reopen()
        log.warning("batchmagic: the journal %s was deleted or replaced while open; started a "
                    "new one there (runs write their answers into it again)", self.path)
        return True

    def _reopen(self, damage: str | None = None) -> None:
        """Close the connection and open the file at the path anew, after moving it aside when
        it is damaged. Closing never touches new files: SQLite skips its checkpoint and WAL
        removal for a file that has moved or gone."""
        old_wal = self._identity[1]
        self._identity = ("reopening", old_wal)  # matches no file: after a failure, try again
        what = "damaged" if damage is not None else "deleted or replaced while open"
        trouble = f"the journal was {what}, and a new one cannot be started"
        try:
            if damage is not None:
                self._set_aside(damage, self._conn)
            else:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._drop_old_sides(old_wal)
        except OSError as exc:
            raise JournalError(f"{trouble} in {self.folder}: {_why(exc)}") from None
        self._conn, self._identity = self._connect(trouble)
        self.generation += 1

    def _drop_old_sides(self, old_wal: tuple[int, int] | None) -> None:
        """Remove the -wal and -shm of a file that was deleted or replaced: SQLite would lay its
        pages over the new file. A WAL that is not the old one belongs to the new file: kept."""
        if not self.path.exists() or (old_wal is not None and _inode(self._files[1]) == old_wal):
            _side(self.path, "-wal").unlink(missing_ok=True)
            _side(self.path, "-shm").unlink(missing_ok=True)

    def _use(self, work: Callable[[sqlite3.Connection], T], *, write: bool = False,
             one_statement: bool = False) -> T:
        """Run ``work`` under the lock (one transaction when it writes) on the file at the path.

        A deleted or replaced journal is reopened first; a write is checked again after its
        commit and done again on a new file if the old one went away meanwhile. A damaged journal
        is moved aside and the call done again on a new one. Any other SQLite failure is a
        ``JournalError``: a raw sqlite3 exception never reaches the user. A write of
        ``one_statement`` runs as that statement's own transaction (SQLite's autocommit).
        """
        with self._lock:
            for _ in range(3):
                self._follow_path()
                try:
                    result = self._transact(work) if write and not one_statement \
                        else work(self._conn)
                except sqlite3.Error as exc:
                    if not _is_damage(exc):
                        verb = "write" if write else "read"
                        raise JournalError(f"cannot {verb} the journal in {self.folder}: "
                                           f"{_why(exc)}") from None
                    self._reopen(damage=str(exc))
                    continue
                if not (write and self._follow_path()):
                    return result
        raise JournalError(f"the journal in {self.folder} was deleted, replaced or damaged again "
                           "at each try; pass cache=False to run without one, or "
                           "cache='other/folder'")

    def _transact(self, work: Callable[[sqlite3.Connection], T]) -> T:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(self._conn)
            self._conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise
        return result

    def check(self) -> None:
        """Follow the path now (a run calls this before it reports its answers kept)."""
        self._use(lambda conn: None)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- rows --------------------------------------------------------------------------------

    def lookup(self, keys: Iterable[str], *, include_errors: bool = False,
               scope: str | None = None) -> dict[str, Record]:
        """Finished answers for ``keys``, one ``Record`` each. Rows whose stored answer cannot be
        decoded are skipped (and will be asked again). ``scope``: the endpoint the keys were
        asked at (only its answers are read), or None for all."""
        keys = list(keys)
        found = self.find(keys, include_errors=include_errors, scope=scope)
        return {keys[pos]: found.record(j, keys[pos]) for j, pos in enumerate(found.at.tolist())}

    def find(self, keys: Sequence[str] | np.ndarray, *, include_errors: bool = False,
             scope: str | None = None) -> Found:
        """Finished answers for ``keys`` (hex strings, or an ``S32`` array of them), as columns:
        which of the keys were found, their answers and usage. Embeddings come back as one
        float32 block when every answer found is a vector of one length."""
        return self._use(lambda conn: find_in(conn, keys, include_errors, scope))

    def has_answers(self, scope: str | None = None) -> bool:
        """Whether any answer could be found (``find``) for some key asked at ``scope``: a new
        journal's run hashes no key to look them up."""
        def read(conn: sqlite3.Connection) -> bool:
            where, args = ("WHERE scope = ?", (scope,)) if scope is not None else ("", ())
            return bool(
                conn.execute(f"SELECT 1 FROM answers {where} LIMIT 1", args).fetchone()
                or conn.execute("SELECT 1 FROM rows WHERE status = 'ok' LIMIT 1").fetchone())

        return self._use(read)

    def write_answers(self, batch: AnswerBatch | None, records: list[tuple] = ()) -> None:
        """One transaction: answers, one statement for all (a row of the answers table), and
        ``records`` as ``write_rows`` takes them (failed rows)."""
        now = time.time()
        row = None
        if batch is not None and key_bytes(batch.keys) is None:  # not row keys: one row each
            records = [*records, *batch.as_records()]
        elif batch is not None:
            row = batch.as_row(now)

        def work(conn: sqlite3.Connection) -> None:
            if row is not None:
                conn.execute(f"INSERT INTO answers ({_ANSWER_COLUMNS}) VALUES "
                             f"({','.join('?' * len(row))})", row)
            if records:
                conn.executemany(_UPSERT_ROW, [r + (now, now) for r in records])

        # one INSERT (the usual write) is a transaction of its own: no BEGIN and COMMIT around
        # it, two round trips into SQLite less (each one gives up the GIL and waits to get it
        # back from the run's loop)
        self._use(work, write=True, one_statement=not records)

    def write_rows(self, records: list[tuple]) -> None:
        """One transaction. Each record matches the ``rows`` columns after ``key``."""
        now = time.time()
        self._use(lambda conn: conn.executemany(_UPSERT_ROW, [r + (now, now) for r in records]),
                  write=True)

    # -- leases ------------------------------------------------------------------------------

    def claim(self, keys: Sequence[str] | np.ndarray, run_id: str) -> dict[str, tuple[str, int]]:
        """Claim ``keys`` (strings, or a table's ``S32`` key array) for ``run_id``. Returns the
        keys another live run holds: key -> (run, pid). A run's claims add up: its first is the
        row ``run_id``, each later one a row ``run_id#n`` of its own (a run claiming a million
        keys a stage at a time writes each key once, never the whole blob again); claims of
        runs whose process died or whose lease expired are void (and removed)."""
        host, pid, now = socket.gethostname(), os.getpid(), time.time()
        own = (run_id, _parts_of(run_id))

        def work(conn: sqlite3.Connection) -> dict[str, tuple[str, int]]:
            held: dict[str, tuple[str, int]] = {}
            names: Sequence[str] | None = None  # the keys as strings, made only if compared
            for other, other_host, other_pid, expires, blob in conn.execute(
                    "SELECT run_id, host, pid, expires, keys FROM claims "
                    "WHERE run_id != ? AND run_id NOT GLOB ?", own).fetchall():
                if not _alive(other_host, other_pid, expires, now):
                    conn.execute("DELETE FROM claims WHERE run_id=?", (other,))
                elif blob:
                    theirs = set(blob.decode().split("\n"))
                    if names is None:
                        names = _key_strings(keys)
                    run = other.partition("#")[0]  # a later claim's row: its run
                    held.update((k, (run, other_pid)) for k in names if k in theirs)
            claimed = _key_lines(keys) if not held else \
                "\n".join(k for k in _key_strings(keys) if k not in held).encode()
            parts = conn.execute("SELECT COUNT(*) FROM claims WHERE run_id = ? OR run_id GLOB ?",
                                 own).fetchone()[0]
            conn.execute("UPDATE claims SET expires=? WHERE run_id = ? OR run_id GLOB ?",
                         (now + LEASE_SECONDS, *own))
            if claimed or not parts:
                conn.execute("INSERT OR REPLACE INTO claims VALUES (?,?,?,?,?)",
                             (f"{run_id}#{parts}" if parts else run_id, host, pid,
                              now + LEASE_SECONDS, claimed))
            return held

        return self._use(work, write=True)

    def renew(self, run_id: str) -> None:
        self._use(lambda conn: conn.execute(
            "UPDATE claims SET expires=? WHERE run_id = ? OR run_id GLOB ?",
            (time.time() + LEASE_SECONDS, run_id, _parts_of(run_id))), write=True)

    def release(self, run_id: str) -> None:
        self._use(lambda conn: conn.execute(
            "DELETE FROM claims WHERE run_id = ? OR run_id GLOB ?", (run_id, _parts_of(run_id))),
            write=True)

    # -- runs --------------------------------------------------------------------------------

    def record_run(self, **fields: Any) -> None:
        cols = ",".join(fields)
        marks = ",".join("?" * len(fields))
        updates = ",".join(f"{c}=excluded.{c}" for c in fields if c != "run_id")
        self._use(lambda conn: conn.execute(
            f"INSERT INTO runs ({cols}) VALUES ({marks}) ON CONFLICT(run_id) DO UPDATE SET {updates}",
            tuple(fields.values())), write=True)

    def runs(self, limit: int | None = None):
        import pandas as pd

        sql = "SELECT * FROM runs ORDER BY started DESC" + (f" LIMIT {int(limit)}" if limit else "")

        def read(conn: sqlite3.Connection) -> tuple[list[str], list]:
            cur = conn.execute(sql)
            return [c[0] for c in cur.description], cur.fetchall()

        cols, data = self._use(read)
        df = pd.DataFrame(data, columns=cols)
        for col in ("started", "finished"):
            df[col] = pd.to_datetime(df[col], unit="s", utc=True)
        return df

    # -- Batch API jobs ----------------------------------------------------------------------

    def _write(self, statements: list[tuple[str, Any]]) -> None:
        """Run ``(sql, params)`` statements in one transaction (``params`` a tuple, or a list of
        tuples for executemany)."""
        def work(conn: sqlite3.Connection) -> None:
            for sql, params in statements:
                if isinstance(params, list):
                    conn.executemany(sql, params)
                else:
                    conn.execute(sql, params)

        self._use(work, write=True)

    def _select(self, sql: str, params: tuple = ()) -> list[dict]:
        def read(conn: sqlite3.Connection) -> list[dict]:
            cur = conn.execute(sql, params)
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, row)) for row in cur.fetchall()]

        return self._use(read)

    def add_job(self, job: dict, shards: list[tuple[int, str, int]],
                rows: list[tuple[str, str, int]]) -> None:
        """Record a job before anything is sent: the job, its shards ``(shard, nonce,
        requests)`` and its rows ``(custom_id, key, shard)``, in one transaction."""
        now = time.time()
        job_id = job["job_id"]
        cols = ",".join(job)
        self._write([
            (f"INSERT INTO jobs ({cols}, created, updated) VALUES "
             f"({','.join('?' * len(job))}, ?, ?)", (*job.values(), now, now)),
            ("INSERT INTO job_shards (job_id, shard, nonce, requests, updated) VALUES (?,?,?,?,?)",
             [(job_id, n, nonce, requests, now) for n, nonce, requests in shards]),
            ("INSERT INTO job_rows (job_id, custom_id, key, shard) VALUES (?,?,?,?)",
             [(job_id, cid, key, n) for cid, key, n in rows]),
        ])

    def update_job(self, job_id: str, **fields: Any) -> None:
        sets = ",".join(f"{c}=?" for c in fields)
        self._write([(f"UPDATE jobs SET {sets}, updated=? WHERE job_id=?",
                      (*fields.values(), time.time(), job_id))])

    def update_shard(self, job_id: str, shard: int, **fields: Any) -> None:
        sets = ",".join(f"{c}=?" for c in fields)
        self._write([(f"UPDATE job_shards SET {sets}, updated=? WHERE job_id=? AND shard=?",
                      (*fields.values(), time.time(), job_id, shard))])

    def set_job_rows(self, job_id: str, outcomes: list[tuple[str, str, str | None]]) -> None:
        """``(custom_id, outcome, error JSON)`` for rows a harvest decided."""
        self._write([("UPDATE job_rows SET outcome=?, error=? WHERE job_id=? AND custom_id=?",
                      [(o, e, job_id, cid) for cid, o, e in outcomes])])

    def job(self, job_id: str) -> dict | None:
        found = self._select("SELECT * FROM jobs WHERE job_id=?", (job_id,))
        return found[0] if found else None

    def jobs(self, limit: int | None = None) -> list[dict]:
        """Jobs, oldest first (without their plans, which can be large)."""
        sql = ("SELECT job_id, created, updated, state, provider, model, config, summary FROM jobs "
               "ORDER BY created DESC" + (f" LIMIT {int(limit)}" if limit else ""))
        return self._select(sql)[::-1]

    def job_shards(self, job_id: str) -> list[dict]:
        return self._select("SELECT * FROM job_shards WHERE job_id=? ORDER BY shard", (job_id,))

    def job_rows(self, job_id: str) -> list[dict]:
        return self._select("SELECT custom_id, key, shard, outcome, error FROM job_rows "
                            "WHERE job_id=?", (job_id,))

    def active_jobs_for(self, keys: Iterable[str]) -> dict[str, str]:
        """Row key -> the unfinished job (provider may still answer it) that holds it."""
        keys = list(keys)

        def read(conn: sqlite3.Connection) -> dict[str, str]:
            found: dict[str, str] = {}
            for start in range(0, len(keys), 900):
                chunk = keys[start:start + 900]
                marks = ",".join("?" * len(chunk))
                for key, job_id in conn.execute(
                        f"SELECT r.key, r.job_id FROM job_rows r JOIN jobs j ON j.job_id = r.job_id "
                        f"WHERE j.state != 'finished' AND r.outcome IS NULL AND r.key IN ({marks})",
                        chunk):
                    found.setdefault(key, job_id)
            return found

        return self._use(read)

    def counts(self) -> dict[str, int]:
        """Rows by status: answers (both tables; an answer written twice counts twice) and
        errors."""
        def read(conn: sqlite3.Connection) -> dict[str, int]:
            counts = dict(conn.execute("SELECT status, COUNT(*) FROM rows GROUP BY status"))
            many = conn.execute("SELECT sum(n) FROM answers").fetchone()[0] or 0
            if many:
                counts["ok"] = counts.get("ok", 0) + many
            return counts

        return self._use(read)

    def clear(self, before: float | None = None) -> int:
        """Delete rows (and runs) last written before ``before`` (a UNIX time), or all."""
        def delete(conn: sqlite3.Connection) -> int:
            if before is None:
                n = conn.execute("SELECT coalesce(sum(n), 0) FROM answers").fetchone()[0]
                conn.execute("DELETE FROM answers")
                n += conn.execute("DELETE FROM rows").rowcount
                conn.execute("DELETE FROM runs")
                conn.execute("DELETE FROM claims")
            else:
                n = conn.execute("SELECT coalesce(sum(n), 0) FROM answers WHERE created < ?",
                                 (before,)).fetchone()[0]
                conn.execute("DELETE FROM answers WHERE created < ?", (before,))
                n += conn.execute("DELETE FROM rows WHERE updated < ?", (before,)).rowcount
                conn.execute("DELETE FROM runs WHERE started < ?", (before,))
            # finished Batch API jobs go too; unfinished ones stay, or a batch the provider is
            # still running (and billing) would be forgotten
            conn.execute("DELETE FROM job_shards WHERE job_id IN (SELECT job_id FROM jobs "
                         "WHERE state = 'finished' AND created < ?)", (before or 1e18,))
            conn.execute("DELETE FROM job_rows WHERE job_id IN (SELECT job_id FROM jobs "
                         "WHERE state = 'finished' AND created < ?)", (before or 1e18,))
            conn.execute("DELETE FROM jobs WHERE state = 'finished' AND created < ?",
                         (before or 1e18,))
            return n

        n = self._use(delete, write=True)
        self._use(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        if before is None:
            self._use(lambda conn: conn.execute("VACUUM"))
        return n


def _record(key: str, status: str, result: str | None, *usage: Any) -> Record | None:
    """A stored row as a ``Record``; None when its answer does not decode (it is asked again)."""
    in_tok, out_tok, cost, latency, attempts = usage
    output = finish = reasoning = None
    extra: dict = {}
    if status == "ok":
        try:
            output, finish, reasoning, extra = decode_result(result)
        except Exception:  # garbage: ask again
            log.debug("batchmagic: journal row %s does not decode; re-asking", key)
            return None
    return Record(key, status, output, finish, reasoning, in_tok, out_tok, cost, latency,
                  attempts or 0, extra)


def _side(path: Path, suffix: str) -> Path:
    """SQLite's -wal / -shm file beside ``path``."""
    return Path(str(path) + suffix)


def _inode(path: str) -> tuple[int, int] | None:
    """Which file is at ``path`` now (None: none, or it cannot be seen)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _is_damage(exc: sqlite3.Error) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB: the file is damaged (not locked, full or read-only)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (11, 26)
    text = str(exc)
    return "malformed" in text or "not a database" in text


def _parts_of(run_id: str) -> str:
    """The GLOB pattern of a run's later claims (``run_id#1``, ...); ids have no GLOB marks."""
    return f"{run_id}#*"


def _alive(host: str, pid: int, expires: float, now: float) -> bool:
    if expires < now:
        return False
    if host != socket.gethostname():
        return True  # another machine on a shared folder: trust the lease until it expires
    if pid == os.getpid():
        return True  # another run in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False  # its process died (a crash or a kernel restart): the lease is void
    except PermissionError:
        return True
    return True


def _why(exc: BaseException) -> str:
    text = str(exc)
    if "full" in text:
        return "the disk is full"
    if "readonly" in text or "read-only" in text or isinstance(exc, PermissionError):
        return "the folder is not writable"
    if "locked" in text:
        return "another process holds the journal locked"
    return text or type(exc).__name__


def runs(cache: Any = True, limit: int | None = 50):
    """Past runs recorded in the journal, newest first, as a DataFrame."""
    folder = folder_for(cache) or default_folder()
    return open_journal(folder).runs(limit)


def clear_journal(before: Any = None, *, cache: Any = True) -> int:
    """Delete journaled answers (all, or those last written before ``before``: a datetime, a
    date, an ISO string or a UNIX time). Returns how many rows were deleted."""
    import datetime as dt

    folder = folder_for(cache) or default_folder()
    if isinstance(before, str):
        before = dt.datetime.fromisoformat(before)
    if isinstance(before, dt.date) and not isinstance(before, dt.datetime):
        before = dt.datetime.combine(before, dt.time())
    if isinstance(before, dt.datetime):
        if before.tzinfo is None:
            before = before.astimezone()  # naive means local time
        before = before.timestamp()
    return open_journal(folder).clear(before)


_journals: dict[str, Journal] = {}
_journals_lock = threading.Lock()


def peek(folder: Path | None, keys: list[str]) -> set[str]:
    """The ``keys`` the journal in ``folder`` has answered, read-only: nothing is created,
    changed or moved aside (``bm.estimate`` writes no file). No journal, or one that cannot be
    read as it is: none."""
    path = None if folder is None else Path(folder) / "journal.sqlite3"
    if path is None or not path.is_file() or not keys:
        return set()
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            found = find_in(conn, keys, False, None)
        finally:
            conn.close()
    except sqlite3.Error:  # damaged or locked: the run itself deals with it
        return set()
    return {keys[pos] for pos in found.at.tolist()}


def open_journal(folder: Path) -> Journal:
    """One open journal per folder per process."""
    key = str(folder.resolve())
    with _journals_lock:
        j = _journals.get(key)
        if j is None:
            j = _journals[key] = Journal(folder)
        else:
            j.check()  # deleted or replaced since: the same object follows the path
        return j


# -- a read-only view (JupyterLab's "Batch runs" sidebar and status bar) -------------------------

_VIEW_RUN_COLUMNS = ("run_id, started, finished, state, kind, model, provider, template, rows, "
                     "requests, cached, ok, failed, cost, pid")


def peek_overview(folder: Path, limit: int = 50) -> dict | None:
    """The newest ``limit`` runs and the Batch API jobs of the journal in ``folder``, read-only
    (nothing created, changed or moved aside); None when there is no journal. A run recorded as
    running whose process is gone (no live claim, no live process) reads ``interrupted``; jobs
    come without their inputs and settings, with the outcomes their rows have so far."""
    path = Path(folder) / "journal.sqlite3"
    if not path.is_file():
        return None
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    try:
        conn.row_factory = sqlite3.Row
        runs = [dict(r) for r in conn.execute(
            f"SELECT {_VIEW_RUN_COLUMNS} FROM runs ORDER BY started DESC LIMIT ?", (int(limit),))]
        claims = {r["run_id"]: r for r in conn.execute(
            "SELECT run_id, host, pid, expires FROM claims")}
        jobs = [dict(r) for r in conn.execute(
            "SELECT job_id, created, updated, state, provider, model, summary FROM jobs "
            "ORDER BY created DESC LIMIT ?", (int(limit),))]
        outcomes = _job_outcomes(conn, [j["job_id"] for j in jobs])
        batches = _job_batches(conn, [j["job_id"] for j in jobs])
    finally:
        conn.close()
    now = time.time()
    for run in runs:
        if run["state"] == "running" and not _running_now(run, claims.get(run["run_id"]), now):
            run["state"] = "interrupted"
    for job in jobs:
        job["summary"] = orjson.loads(job["summary"]) if job["summary"] else {}
        job["rows"] = outcomes.get(job["job_id"], {})
        job["batches"] = batches.get(job["job_id"], [])
    return {"runs": runs, "jobs": jobs}


def _running_now(run: dict, claim: sqlite3.Row | None, now: float) -> bool:
    if claim is not None:
        return _alive(claim["host"], claim["pid"], claim["expires"], now)
    # no claim (every row was cached, or it is writing its final record): its process decides
    return run["pid"] is not None and _alive(socket.gethostname(), run["pid"], now + 1, now)


def _job_outcomes(conn: sqlite3.Connection, job_ids: list[str]) -> dict[str, dict]:
    """Per job: how many of its requests are answered ok, failed, or still pending."""
    found: dict[str, dict] = {}
    if job_ids:
        for job_id, outcome, n in conn.execute(
                f"SELECT job_id, outcome, COUNT(*) FROM job_rows WHERE job_id IN "
                f"({','.join('?' * len(job_ids))}) GROUP BY job_id, outcome", job_ids):
            found.setdefault(job_id, {})[outcome or "pending"] = n
    return found


def _job_batches(conn: sqlite3.Connection, job_ids: list[str]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    if job_ids:
        for job_id, batch_id, status in conn.execute(
                f"SELECT job_id, batch_id, status FROM job_shards WHERE job_id IN "
                f"({','.join('?' * len(job_ids))}) ORDER BY job_id, shard", job_ids):
            found.setdefault(job_id, []).append({"batch_id": batch_id, "status": status})
    return found
