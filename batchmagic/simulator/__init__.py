"""A local OpenAI-compatible server for dry runs, tests and benchmarks.

Deterministic answers (``"echo: " + prompt``), embeddings and PNG images; server-side rate limits
with OpenAI headers; seeded fault injection (5xx, 429, resets, hangs, trickles, truncated or
malformed bodies); a call log and an admin API under ``/_sim/``.

    python -m batchmagic.simulator --port 0 --latency 0.05 --rpm 1200 --fault 500=0.05

    with SimulatorProcess(latency=0.05, faults={"500": 0.05}) as sim:
        client = OpenAI(base_url=sim.base_url, api_key="unused")
"""

from __future__ import annotations

from ._answers import count_tokens, embedding_vector, image_color, reply_text, solid_png
from ._config import API_KEY_ENV, FAULT_NAMES, SimConfig
from ._faults import fault_for
from ._process import SimulatorError, SimulatorProcess, SimulatorThread
from ._server import READY_PREFIX, run_server, serve

__all__ = [
    "API_KEY_ENV",
    "FAULT_NAMES",
    "READY_PREFIX",
    "SimConfig",
    "SimulatorError",
    "SimulatorProcess",
    "SimulatorThread",
    "count_tokens",
    "embedding_vector",
    "fault_for",
    "image_color",
    "reply_text",
    "run_server",
    "serve",
    "solid_png",
]
