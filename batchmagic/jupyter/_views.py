"""What the sidebar and the status bar show, and what a download holds: journal records as
plain JSON-able dicts, Batch API jobs asked or stopped at the provider, result frames as files.

Every function here blocks (SQLite, the provider): the handlers call them in a worker thread.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from tornado.web import HTTPError

from .._errors import ConfigError
from .._journal import peek_overview
from ._paths import JOURNAL_FILE

RUN_FIELDS = ("run_id", "started", "finished", "state", "kind", "model", "provider", "rows",
              "requests", "cached", "ok", "failed", "cost", "pid")
TEMPLATE_SHOWN = 300  # characters of a run's prompt template, for a tooltip
JOB_TIMEOUT_S = 120.0


def overview(journal: Path, limit: int) -> dict[str, Any]:
    """Runs (newest first) and jobs (newest first) of the journal in ``journal``; empty lists
    when there is none yet."""
    found = peek_overview(journal, limit)
    if found is None:
        return {"exists": False, "runs": [], "jobs": []}
    return {"exists": True, "runs": [_run(r) for r in found["runs"]],
            "jobs": [_job(j) for j in found["jobs"]]}


def _run(record: dict) -> dict:
    run = {k: record.get(k) for k in RUN_FIELDS}
    template = record.get("template") or ""
    run["template"] = template[:TEMPLATE_SHOWN] + ("…" if len(template) > TEMPLATE_SHOWN else "")
    run["cost"] = _finite(run["cost"])
    run["live"] = record["state"] == "running"
    return run


def _job(record: dict) -> dict:
    summary = record["summary"]
    rows = record["rows"]
    return {
        "job_id": record["job_id"], "created": record["created"], "updated": record["updated"],
        "state": record["state"], "provider": record["provider"], "model": record["model"],
        "status": summary.get("status") or "", "requests": summary.get("total") or sum(
            rows.values()),
        "completed": summary.get("completed") or 0, "failed": summary.get("failed") or 0,
        "ok": rows.get("ok", 0), "errors": rows.get("error", 0) + rows.get("unprocessed", 0),
        "pending": rows.get("pending", 0),
        "batches": [b["batch_id"] for b in record["batches"] if b["batch_id"]],
        "live": record["state"] != "finished",
    }


def _finite(x: Any) -> Any:
    return x if not isinstance(x, float) or math.isfinite(x) else None


def kernel_runs(view: dict, pid: int | None) -> dict[str, Any]:
    """The runs of the process ``pid`` still running, and their rows done of rows in all."""
    runs = [r for r in view["runs"] if r["live"] and pid is not None and r["pid"] == pid]
    return {"runs": runs, "rows": sum(r["rows"] or 0 for r in runs),
            "done": sum((r["ok"] or 0) + (r["failed"] or 0) for r in runs)}


# -- the job actions: these open the journal for writing ------------------------------------------

def load_job(journal: Path, job_id: str):
    """The journal's job ``job_id`` (exactly that id); 404 when there is none."""
    from .. import batchapi

    if not (journal / JOURNAL_FILE).is_file():
        raise HTTPError(404, "there is no journal in this folder")
    known = peek_overview(journal, limit=1_000_000) or {"jobs": []}
    if job_id not in {j["job_id"] for j in known["jobs"]}:
        raise HTTPError(404, f"no Batch API job {job_id!r} in this folder's journal")
    return batchapi.job(job_id, cache=journal)


def refresh(journal: Path, job_id: str) -> dict[str, Any]:
    """Ask the provider about the job; one that has ended there is harvested into the journal
    (its answers are kept, as a kernel following it would keep them)."""
    from ..batchapi._client import TERMINAL

    job = load_job(journal, job_id)
    status = job.status()
    if status.state != "finished" and status.batches and all(
            b["state"] in TERMINAL for b in status.batches):
        job.wait(JOB_TIMEOUT_S, progress=False)
        status = job.status()
    return _status(status)


def cancel(journal: Path, job_id: str) -> dict[str, Any]:
    """Ask the provider to stop the job (rows it finished are kept)."""
    job = load_job(journal, job_id)
    job.cancel()
    return _status(job.status())


def _status(status: Any) -> dict[str, Any]:
    return {"job_id": status.job_id, "state": status.state, "status": status.status,
            "requests": status.total, "completed": status.completed, "failed": status.failed,
            "text": str(status)}


def result_file(journal: Path, job_id: str, fmt: str) -> bytes:
    """The job's result frame as the journal has it now, as CSV or Parquet."""
    frame = plain(load_job(journal, job_id).frame)
    if fmt == "csv":
        return frame.to_csv().encode()
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ConfigError("a Parquet file needs pyarrow: pip install pyarrow") from None
    out = io.BytesIO()
    frame.to_parquet(out)
    return out.getvalue()


def plain(frame):
    """A copy of a result frame that CSV and Parquet can hold: an error as its class and
    message, a vector or a structure as JSON text, anything else that is not a plain value as
    its text. Attributes (run facts, the journal's path) are left out."""
    import orjson

    def cell(v: Any) -> Any:
        if v is None or isinstance(v, (str, int, float, bool)):
            return v
        if isinstance(v, BaseException):
            return f"{type(v).__name__}: {v}"
        try:
            return orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        except TypeError:
            return str(v)

    out = frame.copy()
    out.attrs = {}
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(cell).astype(object)
    return out
