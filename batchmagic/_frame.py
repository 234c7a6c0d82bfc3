"""Results -> the result DataFrame: the input rows in input order, with the input index, plus a
fixed set of columns. Run-level facts go to ``df.attrs["batchmagic"]``.

==================  ===========================================================================
column              meaning
==================  ===========================================================================
``output``          the answer: text (chat, completion), a float32 numpy vector (embedding),
                    a ``GeneratedImage`` (image), the validated value with ``schema=``; ``None``
                    where the row failed or was skipped
``error``           the row's exception (a ``bm.RowError``), ``None`` on success
``finish_reason``   ``stop``, ``length``, ... as the provider said; ``skipped`` for skipped rows
``input_tokens``    prompt tokens the provider counted (nullable integer)
``output_tokens``   completion tokens the provider counted (nullable integer)
``cost``            the row's cost in USD where the price is known, else missing
``latency``         seconds from sending the successful attempt to its answer
``attempts``        how many times the request was sent (0 for cached and pre-flight rows)
``reasoning``       only when the model returned reasoning text separately
``sample``          with ``samples=K``: which of the input row's K answers the row is (0..K-1),
                    just after the input columns
``raw``             with ``schema=``: the answer's text (``output`` is then the validated value;
                    an object schema's top-level fields are columns of their own)
``tool_calls``      when a model called tools: ``[{"id", "name", "arguments"}]``, arguments parsed
``logprobs``        when asked for (``params={"logprobs": True}``): the provider's logprobs
``ttft``            with ``stream=True``: seconds from sending to the first token
==================  ===========================================================================
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from ._errors import ColumnClashError, RowError, RunError, SchemaError
from ._item_results import take_objects

RESULT_COLUMNS = ("output", "error", "finish_reason", "input_tokens", "output_tokens", "cost",
                  "latency", "attempts")
#: columns a run adds when they apply (reasoning models, schema=, samples=, tools, logprobs,
#: stream=); an object schema's fields are added too
OPTIONAL_COLUMNS = ("reasoning", "raw", "sample", "tool_calls", "logprobs", "ttft")


def check_clash(frame: pd.DataFrame, fields: tuple[str, ...] = ()) -> None:
    """A result column (or a schema's field) that would overwrite an input column, or a schema
    field named like a result column: an error that says how to rename."""
    taken = [f for f in fields if f in RESULT_COLUMNS + OPTIONAL_COLUMNS]
    if taken:
        raise ColumnClashError(
            f"the schema's field{'s' if len(taken) > 1 else ''} {', '.join(map(repr, taken))} "
            "would overwrite the result column of that name; rename the field in the schema")
    clash = [c for c in frame.columns if c in RESULT_COLUMNS + OPTIONAL_COLUMNS + tuple(fields)]
    if clash:
        renames = ", ".join(f"{c!r}: '{c}_in'" for c in clash)
        raise ColumnClashError(
            f"the input already has column{'s' if len(clash) > 1 else ''} "
            f"{', '.join(map(repr, clash))}, which the result adds; rename first, e.g. "
            f"df.rename(columns={{{renames}}})"
        )


def _objects(values: list) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):  # element-wise: equal-length vectors must not become a 2-D array
        arr[i] = v
    return arr


def _floats(values: Any) -> np.ndarray:
    """Numbers or None as a float column (NaN where None)."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _whole(plan, results, cached: set[int] | None) -> dict[str, Any]:
    """Every input row's result columns, each already in its frame dtype. Where each row has a
    request of its own (the usual case) the answers and the number columns are the results' own
    arrays, not copies (the run hands its results over to the frame); errors and finish reasons
    are new arrays, as row errors and skips are written into them."""
    n = plan.n_rows
    take = None if plan.identity else np.asarray(plan.row_item, dtype=np.int64)
    index = plan.index

    def optional(sparse) -> np.ndarray | None:  # None: no request has a value
        return take_objects(sparse.column(results.n), take) if sparse else None

    errors = np.full(n, None, dtype=object)
    for item in np.flatnonzero(results.error != None).tolist():  # noqa: E711  (elementwise)
        err = results.error[item]
        for pos in plan.rows_of(item):
            errors[pos] = err.for_row(index[pos])
    for pos, err in plan.row_errors.items():
        errors[pos] = err
    finish = take_objects(results.finish_reason, take)
    for pos in plan.skipped:
        finish[pos] = "skipped"
    latency, attempts = results.latency.plain(take), results.attempts.plain(take)
    if cached:  # answered from the journal: never sent in this run
        at = plan.rows_for(np.fromiter(cached, dtype=np.int64, count=len(cached)))
        latency, attempts = latency.copy(), attempts.copy()
        latency[at] = np.nan
        attempts[at] = 0
    ttft = optional(results.ttft)
    return {
        "output": results.output if take is None else take_objects(results.output, take),
        "error": errors,
        "finish_reason": finish,
        "input_tokens": results.input_tokens.masked(take),
        "output_tokens": results.output_tokens.masked(take),
        "cost": results.cost.masked(take),
        "latency": latency,
        "attempts": attempts,
        "reasoning": optional(results.reasoning),
        "value": optional(results.value),
        "tool_calls": optional(results.tool_calls),
        "logprobs": optional(results.logprobs),
        "ttft": None if ttft is None else _floats(ttft),
    }


def _some(plan, results, positions: list[int]) -> dict[str, Any]:
    """The result columns of a few input rows that just finished (live updates), typed."""
    index = plan.index
    items = [plan.row_item[p] for p in positions]
    n = len(items)

    def column(values, fill: Any = None) -> np.ndarray:
        arr = np.empty(n, dtype=object)
        for j, i in enumerate(items):
            arr[j] = values[i] if i >= 0 else fill
        return arr

    def numbers(values, dtype: str) -> Any:
        return pd.array(list(column(values)), dtype=dtype)

    errors = np.empty(n, dtype=object)
    finish = column(results.finish_reason)
    for j, (pos, item) in enumerate(zip(positions, items)):
        if pos in plan.row_errors:
            errors[j] = plan.row_errors[pos]
        elif item >= 0 and results.error[item] is not None:
            errors[j] = results.error[item].for_row(index[pos])
        if pos in plan.skipped:
            finish[j] = "skipped"
    ttft = column(results.ttft) if results.ttft else None
    return {
        "output": column(results.output),
        "error": errors,
        "finish_reason": finish,
        "input_tokens": numbers(results.input_tokens, "Int64"),
        "output_tokens": numbers(results.output_tokens, "Int64"),
        "cost": numbers(results.cost, "Float64"),
        "latency": _floats(column(results.latency)),
        "attempts": np.array([v or 0 for v in column(results.attempts, 0)], dtype=np.int64),
        "reasoning": column(results.reasoning) if results.reasoning else None,
        "value": column(results.value) if results.value else None,
        "tool_calls": column(results.tool_calls) if results.tool_calls else None,
        "logprobs": column(results.logprobs) if results.logprobs else None,
        "ttft": None if ttft is None else _floats(ttft),
    }


def _series(name: str, values: Any, index: pd.Index) -> pd.Series:
    """One result column as a Series over the frame's rows, without copying ``values``."""
    if values is None:  # an optional column no row has: all missing
        values = np.full(len(index), np.nan, dtype=float) if name == "ttft" else \
            np.full(len(index), None, dtype=object)
    if isinstance(values, np.ndarray) and values.dtype == object:  # never inferred as strings
        return pd.Series(values, index=index, dtype=object, copy=False)
    return pd.Series(values, index=index, copy=False)


#: optional columns that appear once any row has a value for them
_WHEN_PRESENT = ("reasoning", "tool_calls", "logprobs", "ttft")


def _with_schema(values: dict[str, Any], schema: Any) -> dict[str, Any]:
    """With schema=: ``output`` is the validated value, ``raw`` the answer's text (a
    SchemaError's own), and an object schema's fields are columns of their own."""
    if schema is None:
        return values
    text, errors = values["output"], values["error"]
    raw = _objects([err.raw if isinstance(err, SchemaError) else t
                    for t, err in zip(text, errors)])
    value = values["value"] if values["value"] is not None else np.full(len(text), None,
                                                                        dtype=object)
    values = dict(values, output=value, raw=raw)
    if schema.fields:  # one column per field, each filled by one comprehension
        rows = [schema.columns(v) if v is not None else {} for v in value]
        values.update({field: _objects([row.get(field) for row in rows])
                       for field in schema.fields})
    return values


def _optional(values: dict[str, Any], schema: Any) -> list[str]:
    """The optional columns a frame has: the schema's always, the others once they have values."""
    names = [n for n in _WHEN_PRESENT if values[n] is not None]
    if schema is not None:
        names = ["raw", *names, *schema.fields]
    return names


def build_frame(plan, results, *, attrs: dict | None = None, cached: set[int] | None = None,
                schema: Any = None) -> pd.DataFrame:
    """``plan`` from ``_inputs.make_plan``; ``results`` an ``ItemResults`` over ``plan.items``;
    ``schema`` the run's ``_schema.Schema``, if any."""
    index = plan.index
    values = _with_schema(_whole(plan, results, cached), schema)
    result = {}
    if plan.samples > 1:  # which answer of its input row each output row is
        result["sample"] = pd.Series(np.tile(np.arange(plan.samples, dtype=np.int64),
                                             plan.n_rows // plan.samples), index=index)
    for name in (*RESULT_COLUMNS, *_optional(values, schema)):
        result[name] = _series(name, values[name], index)
    # copy=False: no column is copied again, and same-typed columns are not joined into blocks
    out = pd.DataFrame(result, index=index, copy=False)
    if len(plan.frame.columns):
        out = pd.concat([plan.frame, out], axis=1)
    out.attrs["batchmagic"] = dict(attrs or {})
    return out


class LiveFrame:
    """ONE DataFrame of the final shape (the input rows and index, every result column) whose
    cells fill in as requests finish.

    ``sync()`` copies the requests finished since the last call into the frame, in one batch per
    column; the run calls it from its refresh timer, never per row. ``finish(final)`` makes the
    frame hold exactly the final result's values and attrs. The frame object never changes, so a
    name bound to it in a notebook sees the rows arrive. Both run under a lock: the run's thread
    writes while the user's thread may ask for the frame.
    """

    def __init__(self, plan, results, *, attrs: dict | None = None, schema: Any = None):
        self._plan = plan
        self._results = results
        self._schema = schema
        self._lock = threading.Lock()
        # what is done now is in the first build; anything finishing during it is re-applied
        self._applied = np.frombuffer(bytes(results.done), dtype=np.uint8).astype(bool)
        self.frame = build_frame(plan, results, attrs=attrs, schema=schema)
        self._final = False

    def sync(self, attrs: dict | None = None) -> int:
        """Apply the requests finished since the last call (and the run's facts as they stand,
        ``attrs``); returns how many rows changed."""
        with self._lock:
            if self._final:
                return 0
            if attrs is not None:
                self.frame.attrs["batchmagic"] = dict(attrs)
            done = np.frombuffer(self._results.done, dtype=np.uint8).astype(bool)
            new = np.flatnonzero(done & ~self._applied)
            if not len(new):
                return 0
            self._applied[new] = True
            positions = self._plan.rows_for(new).tolist()
            if not positions:
                return 0
            self._write(positions)
            return len(positions)

    def _write(self, positions: list[int]) -> None:
        df = self.frame
        values = _with_schema(_some(self._plan, self._results, positions), self._schema)
        rows = pd.RangeIndex(len(positions))
        optional = _optional(values, self._schema)
        for name in optional:
            if name not in df.columns:
                df[name] = _series(name, None, df.index)
        for name in (*RESULT_COLUMNS, *optional):
            if name in df.columns:
                df.iloc[positions, df.columns.get_loc(name)] = _series(name, values[name], rows).array

    def finish(self, final: pd.DataFrame) -> None:
        """Make the frame hold exactly ``final``'s result columns and attrs (same rows)."""
        with self._lock:
            df = self.frame
            for name in final.columns:
                if name in RESULT_COLUMNS or name in OPTIONAL_COLUMNS or name not in df.columns \
                        or (self._schema is not None and name in self._schema.fields):
                    # a Series keeps its dtype (a bare object array of strings would be inferred
                    # as a string column); same rows, so positional, never aligned on the index
                    column = pd.Series(final[name].to_numpy(copy=True), index=df.index,
                                       dtype=final[name].dtype)
                    if name in df.columns:
                        df.isetitem(df.columns.get_loc(name), column)
                    else:
                        df[name] = column
            df.attrs = {k: (dict(v) if isinstance(v, dict) else v) for k, v in final.attrs.items()}
            self._final = True


def raise_for_errors(df: pd.DataFrame) -> pd.DataFrame:
    """Raise ``RunError`` if any row of a result frame failed; otherwise return the frame."""
    if "error" not in df.columns:
        raise TypeError("raise_for_errors takes a batchmagic result frame (it has no 'error' column)")
    errors: list[RowError] = [e for e in df["error"].tolist() if isinstance(e, BaseException)]
    if not errors:
        return df
    counts = Counter(type(e).__name__ for e in errors)
    kinds = ", ".join(f"{name} x{count}" for name, count in counts.most_common())
    raise RunError(f"{len(errors)} of {len(df)} rows failed ({kinds}); first: {errors[0]}", errors)
