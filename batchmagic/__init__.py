"""batchmagic: run an LLM over every row of a dataset, from Jupyter or plain Python.

    import batchmagic as bm
    df = bm.batch(reviews, "Classify the sentiment of: {text}", model="qwen-plus",
                  provider="dashscope", params={"max_tokens": 8})

The whole public surface is here; every other module is private.
"""

from __future__ import annotations

from ._api import BatchTask, Estimate, abatch, batch, estimate, submit
from ._errors import (
    BadRequestError,
    BatchError,
    CancelledRowError,
    ColumnClashError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    ContextLengthError,
    DeadlineError,
    FatalProviderError,
    InputError,
    NotSentError,
    ProviderError,
    RateLimitError,
    ResponseError,
    RowError,
    RunError,
    ServerError,
    TemplateError,
    TransportError,
)
from ._frame import RESULT_COLUMNS, raise_for_errors
from ._image import GeneratedImage

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # running
    "batch",
    "abatch",
    "submit",
    "estimate",
    "BatchTask",
    "Estimate",
    "raise_for_errors",
    "RESULT_COLUMNS",
    "GeneratedImage",
    # errors
    "BatchError",
    "ConfigError",
    "TemplateError",
    "ColumnClashError",
    "RunError",
    "RowError",
    "InputError",
    "NotSentError",
    "CancelledRowError",
    "ProviderError",
    "RateLimitError",
    "ServerError",
    "ContextLengthError",
    "BadRequestError",
    "FatalProviderError",
    "TransportError",
    "ConnectError",
    "DeadlineError",
    "ConnectionLostError",
    "ResponseError",
]
