"""The circuit breaker: stop a run whose every attempt fails the same way.

Retries are bounded per row, but a run of 10,000 rows against a dead server would still spend
rows x retries x timeout before it ends. The breaker watches the run as a whole and stops it, with
the finished rows kept and a ``stopped_by`` that says what happened and what to do, when:

* the provider asks to wait longer than ``Breaker.max_retry_after`` (a Retry-After of hours is a
  daily quota, not a rate limit: waiting it out in a notebook helps nobody);
* ``Breaker.failures`` attempts in a row failed the same way (same error class, status and code)
  and nothing succeeded for ``Breaker.quiet`` seconds (for attempts that got no answer at all,
  two per-attempt deadlines are enough). A burst of 503s or 429s while other rows succeed is
  normal traffic and never trips it;
* a server answers "not here" (HTTP 404, 405, 410) three times in a row with no success ever:
  the URL is wrong, and every row would fail the same way.

A redirect needs no breaker: it is fatal at once (``providers/_openai.py``), since batchmagic does
not re-send paid requests to another address.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._backend import CONTEXT, RATE_LIMIT, ROW, TRANSIENT, Outcome
from ._errors import ConfigError, ConnectError, DeadlineError

#: statuses that mean the request went to the wrong place (a URL without /v1, a removed route)
_WRONG_PLACE = {404: "Not Found", 405: "Method Not Allowed", 410: "Gone"}
_WRONG_PLACE_STREAK = 3


@dataclass(frozen=True)
class Breaker:
    """When a run gives up on a provider that keeps failing (the ``breaker=`` option).

    ``failures``: attempts in a row that fail the same way, with ``quiet`` seconds without any
    success, stop the run. ``max_retry_after``: a provider asking to wait longer than this many
    seconds (a daily quota) stops the run at once. ``breaker=False`` turns the breaker off.
    """

    failures: int = 8
    quiet: float = 60.0
    max_retry_after: float = 600.0

    def __post_init__(self) -> None:
        if isinstance(self.failures, bool) or not isinstance(self.failures, int) \
                or self.failures < 1:
            raise ConfigError(f"Breaker.failures must be a whole number >= 1, got {self.failures!r}")
        for name in ("quiet", "max_retry_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"Breaker.{name} must be a finite number of seconds > 0, "
                                  f"got {value!r}")


def breaker_for(option: Breaker | bool | None) -> Breaker | None:
    """The ``breaker=`` option: True / None is the default breaker, False none."""
    if option is None or option is True:
        return Breaker()
    if option is False:
        return None
    if isinstance(option, Breaker):
        return option
    raise ConfigError(f"breaker must be True, False or a bm.Breaker(...), got {option!r}")


class CircuitBreaker:
    """The breaker's state for one run. ``failure`` returns why the run must stop, or None."""

    def __init__(self, config: Breaker, *, provider: str, url: str, deadline: float,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.provider = provider
        self.url = url
        self.deadline = deadline
        self.clock = clock
        self.last_ok = clock()  # the start counts: "nothing succeeded for T" is measured from it
        self.ever_ok = False
        self.streak = 0
        self._signature: tuple | None = None

    def success(self) -> None:
        self.streak = 0
        self._signature = None
        self.last_ok = self.clock()
        self.ever_ok = True

    def failure(self, outcome: Outcome) -> str | None:
        cfg = self.config
        wait = outcome.retry_after
        if outcome.category == RATE_LIMIT and wait is not None and wait > cfg.max_retry_after:
            return self._quota_message(outcome, wait)
        if outcome.category in (CONTEXT,) or (outcome.category == ROW
                                              and outcome.status not in _WRONG_PLACE):
            self.streak = 0  # the server is alive and answered about this row
            self._signature = None
            return None
        signature = (outcome.error_type, outcome.status, outcome.code)
        if signature != self._signature:
            self._signature = signature
            self.streak = 0
        self.streak += 1
        if outcome.status in _WRONG_PLACE:
            if self.streak >= min(cfg.failures, _WRONG_PLACE_STREAK) and not self.ever_ok:
                return self._wrong_place_message(outcome)
            return None
        if outcome.category not in (TRANSIENT, RATE_LIMIT) or self.streak < cfg.failures:
            return None
        quiet = cfg.quiet
        if outcome.error_type is DeadlineError:  # each such attempt was a deadline of silence
            quiet = min(quiet, 2 * self.deadline)
        silent = self.clock() - self.last_ok
        if silent < quiet:
            return None
        return self._streak_message(outcome, silent)

    # -- what the user reads in stopped_by -------------------------------------------------------

    def _quota_message(self, outcome: Outcome, wait: float) -> str:
        import datetime as dt

        when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=wait)
        return (f"{self.provider} asks to wait {_duration(wait)} before the next request "
                f"(Retry-After, over breaker max_retry_after={self.config.max_retry_after:g} s): "
                f"a daily or monthly quota is probably used up ({outcome.message}). The run "
                f"stopped and kept its finished rows; run it again after "
                f"{when:%Y-%m-%d %H:%M} UTC to do the rest")

    def _wrong_place_message(self, outcome: Outcome) -> str:
        hint = ""
        path = self.url.split("://", 1)[-1].partition("/")[2]
        if outcome.status == 404 and "/v1" not in "/" + path and "v1/" not in path:
            hint = " Is base_url missing /v1 (e.g. http://host:8000/v1)?"
        return (f"HTTP {outcome.status} {_WRONG_PLACE[outcome.status]} from {self.url} on "
                f"{self.streak} requests in a row and no answer yet: the URL is wrong, so every "
                f"row would fail the same way.{hint}")

    def _streak_message(self, outcome: Outcome, silent: float) -> str:
        what = outcome.message or outcome.category
        if outcome.error_type is DeadlineError:
            advice = (f"the server at {self.url} accepts requests but sends no answer; check it, "
                      "or raise timeout= if its answers are just slow")
        elif outcome.error_type is ConnectError:
            advice = f"nothing answers at {self.url}; is the server running?"
        elif outcome.category == RATE_LIMIT:
            advice = ("every request is throttled and none gets through: a quota may be used up, "
                      "or the limit is far below this run's pace; retry later, or set rpm=")
        else:
            advice = "the provider keeps failing; retry later"
        return (f"the last {self.streak} attempts all failed the same way ({what}) and nothing "
                f"succeeded for {_duration(silent)}: {advice}. The run stopped and kept its "
                "finished rows; run it again to do the rest")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
