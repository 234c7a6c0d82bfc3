"""batchmagic: run an LLM over every row of a dataset, from Jupyter or plain Python.

    import batchmagic as bm
    df = bm.batch(reviews, "Classify the sentiment of: {text}", model="qwen-plus",
                  provider="dashscope", params={"max_tokens": 8})

The whole public surface is here; every other module is private.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _errors
from ._errors import *  # noqa: F403  (the error tree: every name in _errors.__all__)

if TYPE_CHECKING:
    from ._api import BatchTask, Estimate, abatch, batch, estimate, submit
    from ._breaker import Breaker
    from ._frame import RESULT_COLUMNS, raise_for_errors
    from ._image import GeneratedImage
    from ._journal import clear_journal, runs
    from .batchapi import BatchJob, job, jobs
    from .engines import unload

__version__ = "0.1.0"

# pandas, numpy and the HTTP stack load on first use, so ``import batchmagic`` (and the
# simulator, which needs none of them) stays light
_LAZY = {
    "batch": "_api", "abatch": "_api", "submit": "_api", "estimate": "_api",
    "BatchTask": "_api", "Estimate": "_api",
    "Breaker": "_breaker",
    "raise_for_errors": "_frame", "RESULT_COLUMNS": "_frame",
    "GeneratedImage": "_image",
    "BatchMagics": "_magic",  # for `%config BatchMagics` and ip.register_magics; loads IPython
    "runs": "_journal", "clear_journal": "_journal",
    "unload": "engines",  # offline engines load on first use; this frees them
    "jobs": "batchapi", "job": "batchapi", "BatchJob": "batchapi",  # provider Batch API jobs
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'batchmagic' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def load_ipython_extension(ip) -> None:
    """``%load_ext batchmagic``: registers ``%%batch`` and the ``%batch_*`` line magics."""
    from ._magic import BatchMagics

    ip.register_magics(BatchMagics)


def _jupyter_server_extension_points() -> list[dict]:
    """The Jupyter server extension: the REST API of the JupyterLab extension's sidebar."""
    return [{"module": "batchmagic.jupyter"}]


def _jupyter_labextension_paths() -> list[dict]:
    """The prebuilt JupyterLab extension (``labextension/``, built into the package)."""
    return [{"src": "labextension", "dest": "batchmagic"}]

__all__ = [
    "__version__",
    # running
    "batch",
    "abatch",
    "submit",
    "estimate",
    "BatchTask",
    "BatchJob",
    "Estimate",
    "Breaker",
    "raise_for_errors",
    "runs",
    "clear_journal",
    "jobs",
    "job",
    "unload",
    "RESULT_COLUMNS",
    "GeneratedImage",
]
__all__ += _errors.__all__  # the error tree
