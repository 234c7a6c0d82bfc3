"""The batchmagic exception tree.

    BatchError                      every error batchmagic raises or puts in a frame
    ├── ConfigError (ValueError)    bad arguments, unknown provider, missing key: raised before any request
    │   ├── TemplateError           the prompt template names a column that is not there, or is malformed
    │   └── ColumnClashError        a result column would overwrite an input column
    ├── RunError                    raised by bm.raise_for_errors(df) when rows failed
    ├── JournalError                the journal cannot be opened or written (disk full, read-only)
    ├── BudgetExceededError         why a run stopped: the next request could pass the budget
    ├── CircuitOpenError            why a run stopped: every recent attempt failed the same way
    └── RowError                    one row's failure; lives in the frame's ``error`` column
        ├── InputError              found before sending: a missing value, text JSON cannot carry, too long
        ├── NotSentError            never sent: the run was cancelled, or stopped by a fatal error or budget
        ├── CancelledRowError       in flight when the run was cancelled; possibly billed
        ├── ProviderError           the provider answered with an error
        │   ├── RateLimitError      throttled, still throttled after every retry (429, Qianfan 336501, ...)
        │   ├── ServerError         5xx / overloaded, still failing after every retry
        │   ├── ContextLengthError  the prompt does not fit the model's context window
        │   ├── BadRequestError     any other 4xx about this row (content filter, bad parameter)
        │   └── FatalProviderError  applies to every row, so the run stops: bad key, no quota, no such model
        ├── TransportError          no usable answer arrived
        │   ├── ConnectError        could not connect (never billed)
        │   ├── DeadlineError       no complete answer within the per-attempt deadline
        │   └── ConnectionLostError the connection dropped after the request was sent
        ├── ResponseError           an answer arrived but is unusable: not JSON, bad UTF-8, wrong shape
        └── SchemaError             the answer does not fit schema= after every re-ask (``raw`` holds it)

Every ``RowError`` says which row failed (``row``, the input index label), how many ``attempts`` were
made, the HTTP ``status`` if there was one, the ``provider``, and ``possibly_billed``: whether the
provider may have charged for a request whose answer we never got.

Foreign exceptions (aiohttp, httpx, json) are translated to these in one place each and never chained:
a foreign exception can hold the request, and the request holds the API key.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BatchError",
    "ConfigError",
    "TemplateError",
    "ColumnClashError",
    "RunError",
    "JournalError",
    "BudgetExceededError",
    "CircuitOpenError",
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
    "SchemaError",
]


class BatchError(Exception):
    """Base class of every batchmagic error."""


class ConfigError(BatchError, ValueError):
    """The call cannot run as given. Raised before anything is sent. ``option`` names the
    option at fault, when one is (the magic and the CLI show it as their flag)."""

    def __init__(self, message: str = "", *, option: str | None = None):
        super().__init__(message)
        self.option = option


class TemplateError(ConfigError):
    """The prompt template does not fit the inputs."""


class ColumnClashError(ConfigError):
    """A result column would overwrite an input column."""


class RunError(BatchError):
    """Raised by ``raise_for_errors`` when a result frame holds failed rows."""

    def __init__(self, message: str, errors: list[RowError]):
        super().__init__(message)
        self.errors = errors


class JournalError(BatchError):
    """The journal cannot be opened or written: the run stops rather than buy answers it
    cannot keep."""


class BudgetExceededError(BatchError):
    """The reason a run stopped: its next request could have taken spend past the budget."""


class CircuitOpenError(BatchError):
    """The reason a run stopped: its attempts kept failing the same way (a server that never
    answers, a daily quota, a wrong URL), so the rest would fail too. See ``bm.Breaker``."""


class RowError(BatchError):
    """One row's failure. It stays in the result frame's ``error`` column."""

    def __init__(
        self,
        message: str,
        *,
        row: Any = None,
        attempts: int = 0,
        status: int | None = None,
        provider: str | None = None,
        code: str | None = None,
        possibly_billed: bool = False,
    ):
        super().__init__(message)
        self.message = message
        self.row = row
        self.attempts = attempts
        self.status = status
        self.provider = provider
        self.code = code
        self.possibly_billed = possibly_billed

    def __str__(self) -> str:
        where = f"row {_label(self.row)}: " if self.row is not None else ""
        facts = []
        if self.provider:
            facts.append(self.provider)
        if self.status is not None:
            facts.append(f"HTTP {self.status}")
        if self.code:
            facts.append(f"code {self.code}")
        if self.attempts:
            facts.append(f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}")
        if self.possibly_billed:
            facts.append("possibly billed")
        tail = f" ({', '.join(facts)})" if facts else ""
        return f"{where}{self.message}{tail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __reduce__(self):  # picklable by users (e.g. df.to_pickle) without losing the facts
        return (
            _rebuild_row_error,
            (type(self), self.message, self.row, self.attempts, self.status, self.provider,
             self.code, self.possibly_billed),
        )

    def for_row(self, row: Any) -> RowError:
        """A copy of this error naming another row (identical requests fan out to many rows)."""
        twin = _rebuild_row_error(
            type(self), self.message, row, self.attempts, self.status, self.provider, self.code,
            self.possibly_billed,
        )
        for name, value in vars(self).items():  # what a subclass adds (SchemaError's raw)
            if not hasattr(twin, name):
                setattr(twin, name, value)
        return twin


def _label(row: Any) -> str:
    """A row label as the user wrote it: ``11372``, not ``np.int64(11372)`` (numpy 2 reprs
    its scalars with their type); strings keep their quotes so ``'7'`` differs from ``7``."""
    if isinstance(row, tuple):  # a MultiIndex label
        return "(" + ", ".join(map(_label, row)) + ("," if len(row) == 1 else "") + ")"
    item = getattr(row, "item", None)
    if item is not None and type(row).__module__ == "numpy":
        row = item()
    return repr(row)


def _rebuild_row_error(cls, message, row, attempts, status, provider, code, possibly_billed):
    err = cls.__new__(cls)
    RowError.__init__(
        err, message, row=row, attempts=attempts, status=status, provider=provider, code=code,
        possibly_billed=possibly_billed,
    )
    return err


class InputError(RowError):
    """The row could not be turned into a request; nothing was sent."""


class NotSentError(RowError):
    """The row was never sent: the run was cancelled or stopped before reaching it."""


class CancelledRowError(RowError):
    """The row was in flight when the run was cancelled; the provider may have billed it."""


class ProviderError(RowError):
    """The provider answered with an error."""


class RateLimitError(ProviderError):
    """Still throttled after every allowed retry."""


class ServerError(ProviderError):
    """The provider kept failing on its side (5xx, overloaded)."""


class ContextLengthError(ProviderError):
    """The prompt does not fit the model's context window."""


class BadRequestError(ProviderError):
    """The provider refused this row's request (4xx): a bad parameter, a content filter, ..."""


class FatalProviderError(ProviderError):
    """An error that applies to every row (bad key, no quota, unknown model): the run stops."""


class TransportError(RowError):
    """No usable answer arrived."""


class ConnectError(TransportError):
    """Could not connect. The request never left, so it was not billed."""


class DeadlineError(TransportError):
    """No complete answer within the per-attempt deadline."""


class ConnectionLostError(TransportError):
    """The connection dropped after the request was sent."""


class ResponseError(RowError):
    """An answer arrived but cannot be used: not JSON, invalid UTF-8, or the wrong shape."""


class SchemaError(RowError):
    """The answer did not parse or validate against ``schema=``, after every re-ask. ``raw`` is
    the answer's text as it came; the message says what did not fit. It was paid for."""

    def __init__(self, message: str, *, raw: str | None = None, **facts: Any):
        super().__init__(message, **facts)
        self.raw = raw

    def __reduce__(self):
        rebuild, args = super().__reduce__()
        return _rebuild_schema_error, (args, self.raw)


def _rebuild_schema_error(args: tuple, raw: str | None) -> SchemaError:
    err = _rebuild_row_error(*args)
    err.raw = raw
    return err
