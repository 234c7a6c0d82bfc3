"""A local OpenAI-compatible server for dry runs, tests and benchmarks.

Deterministic answers (``"echo: " + prompt``), embeddings and PNG images; server-side rate limits
with OpenAI headers; seeded fault injection (5xx, 429, resets, hangs, trickles, truncated or
malformed bodies); a call log and an admin API under ``/_sim/``.

Chat and completions also answer ``response_format`` (``json_schema``: JSON valid for the schema,
see :func:`structured_answer`; ``json_object``), ``n`` choices, ``tools`` (a call when the last
user message says ``call <tool name>`` or ``tool_choice`` names one), ``logprobs`` and
``stream: true`` (server-sent events, first token after the latency, then ``per_token_latency``
apart). Faults for them: ``invalid_json``, ``schema_mismatch``, ``stream_cut``, ``stream_eof``,
``malformed_chunk``, ``stream_stall`` (each spoils only the requests it can; see ``_extras`` and
``_sse``).

    python -m batchmagic.simulator --port 0 --latency 0.05 --rpm 1200 --fault 500=0.05

    with SimulatorProcess(latency=0.05, faults={"500": 0.05}) as sim:
        client = OpenAI(base_url=sim.base_url, api_key="unused")
"""

from __future__ import annotations

from ._answers import (
    count_tokens,
    embedding_vector,
    image_color,
    reply_text,
    sample_text,
    solid_png,
    split_tokens,
)
from ._config import API_KEY_ENV, FAULT_NAMES, SimConfig
from ._faults import fault_for
from ._process import SimulatorError, SimulatorProcess, SimulatorThread
from ._server import READY_PREFIX, run_server, serve
from ._structured import structured_answer, tool_arguments

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
    "sample_text",
    "serve",
    "solid_png",
    "split_tokens",
    "structured_answer",
    "tool_arguments",
]
