"""What answers a run's rows. Each executor is one module behind one small protocol; the run
lifecycle (``_run.Run``) is the same for all of them.

    class Executor(Protocol):
        def __init__(self, run: Run) -> None      # built with the planned run, in the caller's thread
        def prepare(self) -> None                 # before anything runs (caller's thread for submit)
        async def run(self) -> None               # answer the rows (batchmagic's loop thread)
        async def close(self) -> None             # after run(), always: let go of what it holds
        def control(self, action: str) -> None    # "pause" / "resume" / "cancel" (loop thread)
        cancelled: bool                           # the run was cancelled
        stopped_by: BaseException | None          # why it stopped early (fatal error, budget, ...)
        def facts(self) -> dict                   # what it adds to df.attrs["batchmagic"]
        def handle(self, task: BatchTask) -> Any  # what bm.submit returns for it

An executor uses only the run's public surface (see ``_run``). Adding one is a module here and a
line in ``EXECUTORS``.

=============  ==================================================================================
online         the dispatcher over an OpenAI-compatible HTTP endpoint (``online.py``)
engine         the same dispatcher over an engine on this machine (``engine.py``)
batch-api      provider Batch API jobs: upload, create, poll, harvest (``batchapi.py``)
ray            the same dispatcher on each worker of a Ray cluster, one shared limit (``ray.py``)
=============  ==================================================================================

An executor may also have ``frame(attrs) -> DataFrame``: the result when its rows are not on
the driver (Ray with ``output_path=``: a summary per block); the run then uses it in place of
the frame it builds from the plan.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .._run import Run
    from .._task import BatchTask

#: executor name -> "module:class" (imported when first used) or the class itself
EXECUTORS: dict[str, Any] = {
    "online": "online:OnlineExecutor",
    "engine": "engine:EngineExecutor",
    "batch-api": "batchapi:BatchApiExecutor",
    "ray": "ray:RayExecutor",
}


class Executor(Protocol):
    cancelled: bool
    stopped_by: BaseException | None

    def __init__(self, run: Run) -> None: ...

    def prepare(self) -> None: ...

    async def run(self) -> None: ...

    async def close(self) -> None: ...

    def control(self, action: str) -> None: ...

    def facts(self) -> dict: ...

    def handle(self, task: BatchTask) -> Any: ...


def executor_for(name: str, run: Run) -> Executor:
    """The executor ``name`` (a key of ``EXECUTORS``) for ``run``."""
    entry = EXECUTORS[name]
    if isinstance(entry, str):
        module, _, cls = entry.partition(":")
        entry = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    return entry(run)
