"""Batch output and error files -> one outcome per ``custom_id`` (never by position).

A line is ``{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null,
"error": {"code", "message"} | null}`` for OpenAI, DashScope and Ark alike. What counts:

* ``error`` set: a failure, classified by the provider's dialect; ``batch_expired`` /
  ``batch_cancelled`` mean the request never ran (it may be resubmitted);
* ``response.status_code`` outside 2xx: a failure even when ``error`` is null (OpenAI writes
  400s that way), classified from the response body;
* 2xx: the body is read by the kind's parser, exactly as an online answer would be.

A request may appear in both files (a retried line): a success always wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .. import _kinds
from .._backend import ROW, error_type
from .._errors import ResponseError, RowError
from ..providers._dialects import Classified, classify

#: line error codes that mean "never processed" rather than "failed"
UNPROCESSED_CODES = {"batch_expired", "batch_cancelled", "batch_failed"}


@dataclass
class Unprocessed:
    reason: str  # why the provider never ran it


@dataclass
class FileReport:
    outcomes: dict[str, Any]  # custom_id -> kinds.Parsed | RowError | Unprocessed
    unreadable: int = 0  # lines that were not JSON or had no custom_id (cannot be joined)
    unknown: int = 0  # lines naming a custom_id this batch never sent


def _error(found: Classified, status: int | None, provider: str, clean) -> RowError:
    return error_type(found.category)(clean(found.message) or (f"HTTP {status}" if status else "failed"), attempts=1,
               status=status, provider=provider, code=clean(found.code) if found.code else None)


def parse_line(line: dict, kind: str, dialect: str, provider: str, clean=lambda s: s) -> Any:
    """One output / error line -> ``kinds.Parsed``, a ``RowError`` or ``Unprocessed``."""
    error = line.get("error")
    response = line.get("response")
    status = response.get("status_code") if isinstance(response, dict) else None
    status = status if isinstance(status, int) and not isinstance(status, bool) else None
    body = response.get("body") if isinstance(response, dict) else None
    if isinstance(body, str):  # some servers store the body as a JSON string
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    if isinstance(error, dict) and error:
        code = error.get("code")
        if isinstance(code, str) and code in UNPROCESSED_CODES:
            return Unprocessed(clean(str(error.get("message") or code)))
        found = classify(dialect, status if status and status >= 400 else 500,
                         {"error": error})
        return _error(found, status, provider, clean)
    if status is None:
        return ResponseError("the batch result line has neither a response nor an error",
                             attempts=1, provider=provider, possibly_billed=True)
    if not 200 <= status < 300:
        found = classify(dialect, status, body if isinstance(body, dict) else None)
        if found is None:  # pragma: no cover - classify always judges a non-2xx answer
            found = Classified(ROW, None, f"HTTP {status}")
        return _error(found, status, provider, clean)
    found = classify(dialect, status, body)
    if found is not None:  # an error envelope inside a 2xx body
        return _error(found, status, provider, clean)
    try:
        if kind == "embedding":
            vectors, tokens = _kinds.parse_embeddings(body, 1)
            return _kinds.Parsed(vectors[0], None, tokens, 0)
        parsed = _kinds.PARSERS[kind](body)
    except _kinds.ShapeError as exc:
        return ResponseError(f"the batch answer has the wrong shape: {exc}", attempts=1,
                             status=status, provider=provider, possibly_billed=True)
    if parsed.image_url is not None:
        return ResponseError("image answers by URL are not read from batch files", attempts=1,
                             status=status, provider=provider, possibly_billed=True)
    return parsed


def read_file(data: bytes | None, known: set[str] | None, kind: str, dialect: str,
              provider: str, report: FileReport, clean=lambda s: s) -> None:
    """Add one file's lines to ``report`` (a success never loses to a later failure). ``known``:
    the custom_ids the batch was sent with, or None for a batch made elsewhere (take them all)."""
    if not data:
        return
    for raw in data.split(b"\n"):  # not splitlines(): U+2028 may sit inside JSON strings
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            report.unreadable += 1
            continue
        cid = line.get("custom_id") if isinstance(line, dict) else None
        if not isinstance(cid, str):
            report.unreadable += 1
            continue
        if known is not None and cid not in known:
            report.unknown += 1
            continue
        outcome = parse_line(line, kind, dialect, provider, clean)
        before = report.outcomes.get(cid)
        if isinstance(before, _kinds.Parsed):
            continue
        if isinstance(before, RowError) and isinstance(outcome, Unprocessed):
            continue
        report.outcomes[cid] = outcome
