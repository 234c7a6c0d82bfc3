"""Per-request results held as columns: what the result frame's columns are made of.

A run of a million rows keeps a million answers until its frame is built. Held as one Python
list per field (fifteen of them) they cost 120 MB of pointers before any answer, and building
the frame copied every one of them twice more (object arrays, then typed columns). Here numbers
are numpy arrays with a "missing" mask, which become the frame's nullable columns without a copy;
answers, errors and finish reasons are object arrays; and the fields most runs never fill
(reasoning, validated values, tool calls, logprobs, time to first token) are kept only for the
requests that have them.

Every field still reads and writes one request at a time (``results.cost[i]``, ``None`` where
missing), so code that fills results from a journal, a Batch API job or a Ray worker needs no
change; the dispatcher answers a packed request's inputs in one step (``answer_many``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from ._errors import RowError


class Numbers:
    """A column of numbers, some missing: ``None`` in, ``None`` out, one request at a time;
    the frame takes ``values`` / ``masked()`` as they are. A float column holds NaN where a
    value is missing, so its ``values`` are a plain float column too."""

    __slots__ = ("values", "missing", "_gap")

    def __init__(self, n: int, dtype: Any, default: int | float | None = None):
        self._gap = np.nan if np.dtype(dtype).kind == "f" else 0
        if default is None:
            self.values = np.full(n, self._gap, dtype=dtype)
            self.missing = np.ones(n, dtype=bool)
        else:
            self.values = np.full(n, default, dtype=dtype)
            self.missing = np.zeros(n, dtype=bool)

    def __getitem__(self, i: int) -> Any:
        return None if self.missing[i] else self.values[i].item()

    def __setitem__(self, i: int, value: Any) -> None:
        if value is None:
            self.values[i] = self._gap
            self.missing[i] = True
        else:
            self.values[i] = value
            self.missing[i] = False

    def put(self, items: np.ndarray, values: list) -> None:
        """Set many at once (``items`` an index array, ``values`` a list with ``None``s)."""
        missing = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
        if missing.any():
            values = [self._gap if v is None else v for v in values]
        self.values[items] = values
        self.missing[items] = missing

    def take(self, items: Iterable[int]) -> list:
        """The values of ``items`` as Python numbers and ``None``s (for the journal)."""
        at = np.fromiter(items, dtype=np.int64) if not isinstance(items, np.ndarray) else items
        return [None if m else v for v, m in zip(self.values[at].tolist(),
                                                  self.missing[at].tolist())]

    def plain(self, take: np.ndarray | None = None) -> np.ndarray:
        """The values as a plain numpy column (NaN, or 0 for integers, where missing), or those
        of rows ``take`` (-1: no request). Without ``take`` it is this column's own array."""
        return self.values if take is None else _take(self.values, take, self._gap)

    def masked(self, take: np.ndarray | None = None) -> Any:
        """A pandas nullable array (Int64 / Float64) of the column, or of rows ``take`` (-1 for
        a row no request answers: missing). Without ``take`` it shares this column's memory."""
        values, missing = self.values, self.missing
        if take is not None:
            values, missing = _take(values, take, self._gap), _take(missing, take, True)
        if values.dtype.kind == "f":
            return pd.arrays.FloatingArray(values, missing)
        return pd.arrays.IntegerArray(values, missing)


class Sparse(dict):
    """A column that few requests fill: only theirs are kept; any other reads as ``None``."""

    __slots__ = ()

    def __missing__(self, i: int) -> None:
        return None

    def __setitem__(self, i: int, value: Any) -> None:
        if value is None:
            self.pop(i, None)
        else:
            super().__setitem__(i, value)

    def column(self, n: int) -> np.ndarray:
        """All ``n`` requests' values as an object array (``None`` where not filled)."""
        out = np.full(n, None, dtype=object)
        for i, v in self.items():
            out[i] = v
        return out


def objects(n: int) -> np.ndarray:
    return np.full(n, None, dtype=object)


def _take(values: np.ndarray, take: np.ndarray, fill: Any) -> np.ndarray:
    """``values[take]``, with ``fill`` where ``take`` is -1."""
    out = values[np.maximum(take, 0)] if len(values) else np.full(len(take), fill,
                                                                  dtype=values.dtype)
    gaps = take < 0
    if gaps.any():
        out[gaps] = fill
    return out


def take_objects(values: np.ndarray, take: np.ndarray | None, fill: Any = None) -> np.ndarray:
    """An object column for the frame's rows: a copy (the frame is written into)."""
    return values.copy() if take is None else _take(values, take, fill)


class ItemResults:
    """Per unique request (item): the answer, its usage and cost, how it went."""

    __slots__ = ("n", "output", "error", "finish_reason", "input_tokens", "output_tokens",
                 "latency", "attempts", "cost", "cached", "done", "reasoning", "value",
                 "tool_calls", "logprobs", "ttft")

    def __init__(self, n: int):
        self.n = n
        self.output = objects(n)
        self.error: np.ndarray = objects(n)  # RowError or None
        self.finish_reason = objects(n)
        self.input_tokens = Numbers(n, np.int64)
        self.output_tokens = Numbers(n, np.int64)
        self.cost = Numbers(n, np.float64)
        self.latency = Numbers(n, np.float64)
        self.attempts = Numbers(n, np.int64, default=0)
        self.cached = bytearray(n)  # answered from the journal, not by a request in this run
        self.done = bytearray(n)
        self.reasoning = Sparse()
        self.value = Sparse()  # with schema=: the validated answer (output is its text)
        self.tool_calls = Sparse()
        self.logprobs = Sparse()
        self.ttft = Sparse()

    def answer(self, i: int, output: Any, finish_reason: str | None, reasoning: str | None,
               input_tokens: int | None, output_tokens: int | None, *, cost: float | None = None,
               latency: float | None = None, attempts: int = 0, cached: bool = False,
               value: Any = None, tool_calls: list | None = None, logprobs: Any = None,
               ttft: float | None = None) -> None:
        """Item ``i`` has its answer (from a request, a journal record or a job's output)."""
        self.output[i] = output
        self.finish_reason[i] = finish_reason
        self.input_tokens[i] = input_tokens
        self.output_tokens[i] = output_tokens
        self.cost[i] = cost
        self.latency[i] = latency
        self.attempts[i] = attempts
        if reasoning is not None or value is not None or tool_calls is not None \
                or logprobs is not None or ttft is not None or self.reasoning or self.value \
                or self.tool_calls or self.logprobs or self.ttft:  # (most answers have none)
            for sparse, v in ((self.reasoning, reasoning), (self.value, value),
                              (self.tool_calls, tool_calls), (self.logprobs, logprobs),
                              (self.ttft, ttft)):
                if v is not None or i in sparse:
                    sparse[i] = v
        self.cached[i] = cached
        self.done[i] = 1

    def answer_many(self, items: list[int], outputs: list, finish_reasons: list,
                    input_tokens: list, output_tokens: list, costs: list, latency: float,
                    attempts: int) -> None:
        """The plain answers (no reasoning, tool calls, logprobs or schema value) of one request
        that answers many items (packed embeddings, n=K draws), one step per column."""
        at = np.asarray(items, dtype=np.int64)
        out, finish = self.output, self.finish_reason
        for i, o, f in zip(items, outputs, finish_reasons):  # element-wise: equal vectors must
            out[i] = o                                         # not become one 2-D array
            finish[i] = f
        self.input_tokens.put(at, input_tokens)
        self.output_tokens.put(at, output_tokens)
        self.cost.put(at, costs)
        self.latency.put(at, [latency] * len(items))
        self.attempts.put(at, [attempts] * len(items))
        for sparse in (self.reasoning, self.value, self.tool_calls, self.logprobs, self.ttft):
            if sparse:
                for i in items:
                    sparse[i] = None
        cached, done = self.cached, self.done
        for i in items:
            cached[i] = 0
            done[i] = 1

    def fail(self, i: int, err: RowError, attempts: int) -> None:
        """Item ``i`` ends with ``err`` after ``attempts`` sends."""
        self.error[i] = err
        self.attempts[i] = attempts
        self.done[i] = 1
