"""A plan as JSON in the journal, so a job's frame can be rebuilt in a new kernel.

Stored: the input frame (``orient="split"`` plus its dtypes and index names), each unique
request (row key, body, token estimates, the rows it answers), the pre-flight row errors and
skipped rows. No key is ever part of a plan. Values JSON cannot hold are stored as text.
"""

from __future__ import annotations

import io
from typing import Any

import orjson
import pandas as pd

from .. import _errors
from .._errors import InputError
from .._inputs import Item, Plan

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _frame_json(frame: pd.DataFrame) -> str:
    try:
        return frame.to_json(orient="split", default_handler=str, date_format="iso",
                             date_unit="ns")
    except (ValueError, TypeError, OverflowError):
        return frame.astype(str).to_json(orient="split")


def dump_plan(plan: Plan) -> str:
    frame = plan.frame
    index = frame.index
    return orjson.dumps({
        "v": 1,
        "kind": plan.kind,
        "endpoint": plan.endpoint,
        "template": plan.template,
        "frame": _frame_json(frame),
        "dtypes": [str(d) for d in frame.dtypes],
        "index_names": [None if n is None else str(n) for n in index.names],
        "range_index": isinstance(index, pd.RangeIndex),
        "items": [[it.key, it.body, it.prompt_tokens, it.max_output, it.rows]
                  for it in plan.items],
        "row_item": plan.row_item,
        "row_errors": [[pos, type(e).__name__, e.message] for pos, e in plan.row_errors.items()],
        "skipped": sorted(plan.skipped),
    }, option=_OPTS, default=str).decode()


def _restore_frame(data: dict) -> pd.DataFrame:
    frame = pd.read_json(io.StringIO(data["frame"]), orient="split", dtype=False)
    for pos, dtype in enumerate(data.get("dtypes") or []):
        if pos >= frame.shape[1] or str(frame.dtypes.iloc[pos]) == dtype:
            continue
        try:
            frame.isetitem(pos, frame.iloc[:, pos].astype(dtype))
        except (TypeError, ValueError):
            pass  # kept as JSON gave it back
    if data.get("range_index") and list(frame.index) == list(range(len(frame))):
        frame.index = pd.RangeIndex(len(frame))
    names = data.get("index_names") or [None]
    if len(names) == frame.index.nlevels:
        frame.index.names = names
    return frame


def load_plan(text: str | bytes) -> Plan:
    data = orjson.loads(text)
    frame = _restore_frame(data)
    items = [Item(key, body, int(pt), int(mo), list(rows))
             for key, body, pt, mo, rows in data["items"]]
    index = frame.index
    row_errors: dict[int, InputError] = {}
    for pos, cls_name, message in data["row_errors"]:
        cls = getattr(_errors, cls_name, InputError)
        if not (isinstance(cls, type) and issubclass(cls, _errors.RowError)):
            cls = InputError
        row_errors[int(pos)] = cls(message, row=index[int(pos)])
    return Plan(data["kind"], data["endpoint"], index, frame, items, list(data["row_item"]),
                row_errors, set(data["skipped"]), data.get("template"))


def error_json(err: _errors.RowError) -> str:
    return orjson.dumps({"class": type(err).__name__, "message": err.message,
                         "status": err.status, "code": err.code, "attempts": err.attempts,
                         "provider": err.provider,
                         "possibly_billed": bool(err.possibly_billed)}).decode()


def error_from_json(text: str | None, default_message: str = "failed") -> _errors.RowError:
    data: dict[str, Any] = orjson.loads(text) if text else {}
    cls = getattr(_errors, str(data.get("class") or "RowError"), _errors.RowError)
    if not (isinstance(cls, type) and issubclass(cls, _errors.RowError)):
        cls = _errors.RowError
    return cls(str(data.get("message") or default_message), attempts=data.get("attempts") or 0,
               status=data.get("status"), provider=data.get("provider"), code=data.get("code"),
               possibly_billed=bool(data.get("possibly_billed")))
