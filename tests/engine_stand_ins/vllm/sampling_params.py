"""Stand-in (see ../README.md): vLLM's RequestOutputKind enum, and a recording
StructuredOutputsParams (recent vLLM: ``SamplingParams(structured_outputs=...)``)."""

import enum

from standin_common import RecordingParams


class StructuredOutputsParams(RecordingParams):
    engine = "vllm"


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2
