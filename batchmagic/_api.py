"""``batch`` / ``abatch`` / ``submit`` / ``estimate``: options -> plan -> run -> frame.

Every option is declared once, in ``_options.OPTIONS``; the four functions share its signature.
Everything that can fail before spending (options, where the rows go, the key, the template,
the columns) fails in the caller's thread, in planning (``_planning``). The run itself
(``_run.Run``) executes on batchmagic's private loop thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pandas as pd

from . import _loop
from ._estimate import Estimate, estimate_plan
from ._options import options_from, takes_options
from ._planning import plan_run
from ._run import Run, recent_runs
from ._task import BatchTask

__all__ = ["BatchTask", "Estimate", "abatch", "batch", "estimate", "recent_runs", "submit"]


def _run_for(inputs: Any, prompt: str | None, options: dict[str, Any]) -> Run:
    return Run(plan_run(inputs, prompt, options_from(options)))


@takes_options()
def batch(inputs: Any, prompt: str | None = None, **options: Any) -> pd.DataFrame:
    """Run every row through a model and return the rows with the answers, in input order.

    ``inputs`` is a DataFrame (``prompt`` is a template over its columns, ``{column}``), a
    Series or list of texts (each is the prompt, or fills the template's one field), a list of
    chat message lists, or a list of whole request bodies (dicts); polars and pyarrow tables
    are read as DataFrames. Where the rows go: ``provider=`` (a preset: openai, dashscope, ark,
    qianfan, deepseek, vllm, ollama, llamacpp, simulator), ``base_url=`` (any OpenAI-compatible
    server), or ``engine=`` to run offline on this machine ("llama.cpp", "transformers",
    "vllm", "fastdeploy"); ``mode="batch-api"`` sends the rows through the provider's Batch API
    (about half the price). Every option is listed, with its default and one line, in the
    manual's reference (and in ``batchmagic._options.OPTIONS``).

    Failed rows stay in the frame with their exception in ``error``; ``bm.raise_for_errors(df)``
    escalates. Ctrl-C stops the run and returns the rows finished so far.
    """
    run = _run_for(inputs, prompt, options)
    run.open_display()
    return _loop.run_sync(run.execute(), on_interrupt=lambda: run.control("cancel"))


@takes_options()
async def abatch(inputs: Any, prompt: str | None = None, **options: Any) -> pd.DataFrame:
    """``batch`` for async code: ``df = await bm.abatch(...)``. Cancelling the await cancels
    the run (finished rows are kept in the journal)."""
    run = _run_for(inputs, prompt, options)
    run.open_display()
    fut = _loop.submit(run.execute())
    try:
        return await asyncio.wrap_future(fut)
    except asyncio.CancelledError:
        run.control("cancel")
        raise


@takes_options()
def submit(inputs: Any, prompt: str | None = None, **options: Any) -> Any:
    """Start a run in the background and return at once: a ``BatchTask`` (in the style of
    Qianfan's ``batch_do``), or with ``mode="batch-api"`` a ``BatchJob``, recorded in the
    journal before this returns."""
    return _start(_run_for(inputs, prompt, options))


def _start(run: Run) -> Any:
    """Prepare a run (a Batch API job is in the journal once this returns), start it in the
    background, and return what its executor hands the caller."""
    run.prepare()
    return run.executor.handle(BatchTask(run))


@takes_options()
def estimate(inputs: Any, prompt: str | None = None, **options: Any) -> Estimate:
    """Plan a run and say what it would send and cost: rows, unique requests, rows the journal
    already answers, tokens, cost ranges, time at the given limits, and which key the run would
    use. Sends nothing, writes nothing, needs no key."""
    return estimate_plan(plan_run(inputs, prompt, options_from(options), need_key=False))
