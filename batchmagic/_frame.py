"""Results -> the result DataFrame: the input rows in input order, with the input index, plus a
fixed set of columns. Run-level facts go to ``df.attrs["batchmagic"]``.

==================  ===========================================================================
column              meaning
==================  ===========================================================================
``output``          the answer: text (chat, completion), a float32 numpy vector (embedding),
                    a ``GeneratedImage`` (image); ``None`` where the row failed or was skipped
``error``           the row's exception (a ``bm.RowError``), ``None`` on success
``finish_reason``   ``stop``, ``length``, ... as the provider said; ``skipped`` for skipped rows
``input_tokens``    prompt tokens the provider counted (nullable integer)
``output_tokens``   completion tokens the provider counted (nullable integer)
``cost``            the row's cost in USD where the price is known, else missing
``latency``         seconds from sending the successful attempt to its answer
``attempts``        how many times the request was sent (0 for cached and pre-flight rows)
``reasoning``       only when the model returned reasoning text separately
==================  ===========================================================================
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from ._errors import ColumnClashError, RowError, RunError

RESULT_COLUMNS = ("output", "error", "finish_reason", "input_tokens", "output_tokens", "cost",
                  "latency", "attempts")
OPTIONAL_COLUMNS = ("reasoning",)


def check_clash(frame: pd.DataFrame) -> None:
    clash = [c for c in frame.columns if c in RESULT_COLUMNS + OPTIONAL_COLUMNS]
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


def build_frame(plan, results, *, costs: list | None = None, attrs: dict | None = None,
                cached: set[int] | None = None) -> pd.DataFrame:
    """``plan`` from ``_inputs.make_plan``; ``results`` an ``ItemResults`` over ``plan.items``."""
    n = plan.n_rows
    index = plan.index
    take = np.asarray(plan.row_item, dtype=np.int64) if n else np.zeros(0, dtype=np.int64)

    def column(values: list, fill: Any = None) -> np.ndarray:
        arr = _objects(list(values) + [fill])  # position -1 picks the fill
        return arr[take] if n else np.empty(0, dtype=object)

    output = column(results.output)
    finish = column(results.finish_reason)
    in_tok = column(results.input_tokens)
    out_tok = column(results.output_tokens)
    latency = column(results.latency)
    attempts = column(results.attempts, 0)
    item_cost = column(costs if costs is not None else [None] * len(plan.items))
    reasoning = column(results.reasoning)
    errors = np.empty(n, dtype=object)
    if cached:
        attempts = attempts.copy()
        for item in cached:
            for pos in plan.items[item].rows:
                attempts[pos] = 0
                latency[pos] = None

    item_errors = results.error
    for item, err in enumerate(item_errors):
        if err is not None:
            for pos in plan.items[item].rows:
                errors[pos] = err.for_row(index[pos])
    for pos, err in plan.row_errors.items():
        errors[pos] = err
    for pos in plan.skipped:
        finish[pos] = "skipped"

    result = {
        "output": pd.Series(output, index=index, dtype=object),
        "error": pd.Series(errors, index=index, dtype=object),
        "finish_reason": pd.Series(finish, index=index, dtype=object),
        "input_tokens": pd.Series(pd.array(list(in_tok), dtype="Int64"), index=index),
        "output_tokens": pd.Series(pd.array(list(out_tok), dtype="Int64"), index=index),
        "cost": pd.Series(pd.array(list(item_cost), dtype="Float64"), index=index),
        "latency": pd.Series(np.array([np.nan if v is None else v for v in latency], dtype=float),
                             index=index),
        "attempts": pd.Series(np.asarray(list(attempts), dtype=np.int64), index=index),
    }
    if any(r is not None for r in results.reasoning):
        result["reasoning"] = pd.Series(reasoning, index=index, dtype=object)
    out = pd.concat([plan.frame, pd.DataFrame(result, index=index)], axis=1) if len(plan.frame.columns) \
        else pd.DataFrame(result, index=index)
    out.attrs["batchmagic"] = dict(attrs or {})
    return out


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
