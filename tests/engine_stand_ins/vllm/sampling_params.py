"""Stand-in (see ../README.md): vLLM's RequestOutputKind enum."""

import enum


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2
