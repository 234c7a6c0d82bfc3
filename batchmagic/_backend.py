"""The one small contract between the dispatcher and whatever answers requests.

A backend (an OpenAI-compatible HTTP endpoint, an offline engine, a Batch API client) implements::

    class Backend(Protocol):
        name: str                                   # shown in errors: "dashscope", "llama.cpp"
        async def call(self, unit: Unit) -> Outcome  # one attempt at one unit; never raises for
                                                     # a request problem, it returns an Outcome
        async def aclose(self) -> None

A *unit* is what one call sends: one item (chat, completion, image) or many packed items
(embeddings). The backend classifies failures into the categories below; the dispatcher decides
what to do with them (retry, slow down, stop the run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._errors import (
    BadRequestError,
    ContextLengthError,
    FatalProviderError,
    RateLimitError,
    RowError,
    ServerError,
)

# outcome categories
OK = "ok"
FATAL = "fatal"  # applies to every row: stop the run
RATE_LIMIT = "rate_limit"  # throttled: wait, slow the run, retry
TRANSIENT = "transient"  # retry with backoff
CONTEXT = "context"  # this row's prompt is too long: row error
ROW = "row"  # anything else wrong with this row: row error

#: the row error a failure of each category becomes (online, Batch API and engine alike)
ERROR_TYPES: dict[str, type[RowError]] = {
    FATAL: FatalProviderError,
    RATE_LIMIT: RateLimitError,
    TRANSIENT: ServerError,
    CONTEXT: ContextLengthError,
    ROW: BadRequestError,
}


def error_type(category: str) -> type[RowError]:
    """The row error for a failure ``category``; one this table does not know is a bad request
    about this row (the safe reading: no retry, no run stop)."""
    return ERROR_TYPES.get(category, BadRequestError)


@dataclass(slots=True, eq=False)
class Unit:
    items: Sequence[int]  # indexes into the plan's items (a range when packed consecutive ones)
    body: Any  # the wire body (bytes for HTTP backends, request dicts for engines)
    tokens: int  # estimated prompt tokens + worst-case output, for TPM pacing and budgets
    attempts: int = 0
    billed_failures: int = 0  # failures after which the provider may have charged
    rate_limited: int = 0
    worst_cost: float = 0.0  # USD if every token of max_tokens is used (budget reservations)
    last: Any = None  # the Outcome of its last failed attempt: what a stopped run reports
    reasks: int = 0  # answers that did not fit schema= and were asked again
    settled: bool = False  # its items have their outcome (answered, failed or not sent)
    reserved: bool = False  # its worst cost is reserved in the run's budget


@dataclass(slots=True)
class Outcome:
    category: str
    results: list | None = None  # one kinds.Parsed per item, when category == OK
    error_type: type[RowError] | None = None
    message: str = ""
    status: int | None = None
    code: str | None = None
    possibly_billed: bool = False
    retry_after: float | None = None  # seconds the provider asked us to wait
    overloaded: bool = False  # a congestion signal (503, 529, "overloaded") even if transient
    rate_info: Any = None  # limits.RateInfo from the answer's headers
    extra: dict = field(default_factory=dict)

    @classmethod
    def failure(cls, category: str, message: str, **facts: Any) -> Outcome:
        """A failed attempt whose row error is the one its category stands for."""
        return cls(category, error_type=error_type(category), message=message, **facts)


class Backend(Protocol):
    name: str

    async def call(self, unit: Unit) -> Outcome: ...

    async def aclose(self) -> None: ...
