"""Provider Batch APIs: JSONL files, jobs at about half the online price, results in the same frame.

``bm.batch(..., mode="batch-api")`` and ``bm.submit(..., mode="batch-api")`` run rows through
them; ``bm.jobs()`` lists the jobs recorded in the journal, across kernel restarts, and
``bm.jobs(provider=...)`` the provider's own; ``bm.job(id)`` finds one, or adopts a batch made
elsewhere.

* ``_files``: input lines, ``custom_id`` from row keys, local validation, sharding
* ``_client``: the OpenAI-compatible files + batches client (OpenAI, DashScope, compatible servers)
* ``_ark``, ``_sign``: Volcengine Ark batch jobs over TOS, with Volcengine's signatures
* ``_results``: output / error files -> one outcome per custom_id
* ``_jobs``: a job's life (record, submit, adopt after a crash, poll, harvest into the journal)
* ``_lease``: one process at a time records a job for the same rows, or creates a job's batches
* ``_adopt``: batches made elsewhere (by id, or listed from the provider): the source a
  ``BatchJob`` asks for them, and their frames
* ``_run``: a run in batch-api mode
* ``_handle``: ``BatchJob`` (one class; it asks its source: a job of this journal, or a batch
  adopted from elsewhere), ``jobs()`` and ``job()``
* ``_modes``: where batch-api and batch-chat runs go, checked before anything is sent
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for readers and the API reference; at run time they load on first use
    from ._handle import BatchJob, job, jobs
    from ._jobs import JobStatus

__all__ = ["BatchJob", "JobStatus", "jobs", "job"]


def __getattr__(name: str) -> Any:
    # pandas and the HTTP stack load on first use, as for the top-level package
    if name in ("BatchJob", "jobs", "job"):
        from . import _handle

        return getattr(_handle, name)
    if name == "JobStatus":
        from ._jobs import JobStatus

        return JobStatus
    raise AttributeError(f"module 'batchmagic.batchapi' has no attribute {name!r}")
