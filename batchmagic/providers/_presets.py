"""Provider presets: where each OpenAI-compatible endpoint lives and what it can do.

Every fact below was checked against the provider's documentation (the ``docs`` field names the main
page; more pages are cited in comments). Where a number could not be confirmed the comment says so
and the value is a conservative choice, not a documented one.

``base_url`` is what you would pass to the OpenAI SDK: request paths (``/chat/completions``,
``/embeddings``, ``/files``, ``/batches``, ``/images/generations``) are appended to it.
``batch_chat_base_url`` is also an SDK base URL: ``/chat/completions`` is appended to it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Preset", "PRESETS", "ALIASES", "get_preset", "STRUCTURED_OUTPUT_MODES"]

ALL_KINDS = frozenset({"chat", "completion", "embedding", "image"})
# how a preset takes a schema: response_format with a JSON Schema, JSON mode only, or neither
STRUCTURED_OUTPUT_MODES = ("json_schema", "json_object", "none")


@dataclass(frozen=True)
class Preset:
    name: str  # "openai"
    base_url: str  # OpenAI-compatible base URL (ends in /v1, or the provider's equivalent)
    key_env: tuple[str, ...]  # env vars to read the API key from, in order
    base_url_env: tuple[str, ...] = ()  # env vars that override the base URL
    needs_key: bool = True  # False for local servers (vllm, ollama, llamacpp, simulator)
    # which of {"chat", "completion", "embedding", "image"} the OpenAI-compatible endpoint supports
    kinds: frozenset[str] = frozenset({"chat"})
    embedding_max_inputs: int = 2048  # max items in one /embeddings request
    # max total tokens per /embeddings request, if documented
    embedding_max_tokens: int | None = None
    batch_api: bool = False  # supports OpenAI-style /files + /batches
    # accepted completion_window values, the default first
    batch_completion_windows: tuple[str, ...] = ()
    batch_max_requests: int | None = None  # per input file
    batch_max_bytes: int | None = None  # per input file
    batch_chat_base_url: str | None = None  # "Batch Chat": ordinary chat queued server-side
    image_path: str | None = None  # text-to-image path if OpenAI-compatible, else None
    default_max_concurrency: int = 16  # a sensible default window (local servers smaller)
    dialect: str = "openai"  # error dialect: "openai", "dashscope", "ark", "qianfan", "deepseek"
    docs: str = ""  # URL of the doc page the facts came from
    batch_endpoint_prefix: str = "/v1"  # prefix of the per-line "url" in a batch JSONL file
    # structured output: "json_schema" (response_format with a JSON Schema), "json_object" (only
    # JSON mode: the schema goes into the system message) or "none"
    structured_output: str = "json_schema"
    supports_n: bool = True  # several choices in one request (n=K) for samples=K
    # model-name prefixes that only answer streamed requests (stream=None turns streaming on)
    stream_only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # a misspelt mode would silently fall back to json_schema on the wire; fail at import
        if self.structured_output not in STRUCTURED_OUTPUT_MODES:
            raise ValueError(f"preset {self.name!r}: structured_output must be one of "
                             f"{STRUCTURED_OUTPUT_MODES}, not {self.structured_output!r}")

    def streams_only(self, model: str) -> bool:
        """Whether ``model`` only answers streamed requests (starts with a ``stream_only`` prefix;
        case and surrounding spaces ignored)."""
        name = str(model).strip().lower()
        return any(name.startswith(prefix) for prefix in self.stream_only)

    def api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The first non-empty key among ``key_env``, or ``None``."""
        env = os.environ if environ is None else environ
        for name in self.key_env:
            value = env.get(name, "").strip()
            if value:
                return value
        return None

    def resolved_base_url(self, environ: Mapping[str, str] | None = None) -> str:
        """``base_url``, unless one of ``base_url_env`` is set."""
        env = os.environ if environ is None else environ
        for name in self.base_url_env:
            value = env.get(name, "").strip()
            if value:
                return value.rstrip("/")
        return self.base_url


def _day_windows(max_hours: int) -> tuple[str, ...]:
    """Whole-day completion windows from 24h to ``max_hours``: "24h", "48h", ..."""
    return tuple(f"{hours}h" for hours in range(24, max_hours + 1, 24))


# --------------------------------------------------------------------------------------------------
# Cloud providers
# --------------------------------------------------------------------------------------------------

# Structured output: response_format {"type": "json_schema", "json_schema": {..., "strict": true}}
#   ("Structured Outputs", gpt-4o-mini / gpt-4o-2024-08-06 and later; older models have JSON mode
#   only). https://platform.openai.com/docs/guides/structured-outputs
# n: "How many chat completion choices to generate for each input message."
#   https://platform.openai.com/docs/api-reference/chat/create
# No chat model is documented as answering only streamed requests.
_OPENAI = Preset(
    name="openai",
    base_url="https://api.openai.com/v1",
    key_env=("OPENAI_API_KEY",),
    base_url_env=("OPENAI_BASE_URL",),  # read by the official openai SDK as well
    kinds=ALL_KINDS,
    # "any array must be 2048 dimensions or less ... all embedding models enforce a maximum of
    # 300,000 tokens summed across all inputs in a single request" (API reference, embeddings input)
    embedding_max_inputs=2048,
    embedding_max_tokens=300_000,
    batch_api=True,
    batch_completion_windows=("24h",),  # "Currently only 24h is supported."
    batch_max_requests=50_000,  # "The file can contain up to 50,000 requests,
    batch_max_bytes=200_000_000,  # and can be up to 200 MB in size." (decimal MB: the safe reading)
    image_path="/images/generations",
    default_max_concurrency=64,
    dialect="openai",
    docs="https://platform.openai.com/docs/api-reference/batch/create",
    structured_output="json_schema",
    supports_n=True,
    stream_only=(),
)

# Alibaba Cloud Model Studio (Bailian), DashScope compatible mode, China (Beijing) region.
# Base URL: https://help.aliyun.com/zh/model-studio/compatibility-of-openai-with-dashscope
# Embeddings: text-embedding-v3 / v4 take at most 10 rows per request (v1 / v2: 25), 8,192 tokens
#   per row; no per-request token total is documented.
#   https://www.alibabacloud.com/help/en/model-studio/developer-reference/text-embedding-synchronous-api
# Completions (/completions) exist for the Qwen-Coder models in Beijing only.
#   https://www.alibabacloud.com/help/en/model-studio/completions
# Batch: "Up to 50,000 requests per file, 500 MB total, 6 MB per line"; completion_window "24h to
#   336h (14 days)". Older pages said 100 MB and "only 24h"; we use the current figures.
#   https://www.alibabacloud.com/help/en/model-studio/batch-interfaces-compatible-with-openai
#   Whole days are listed below; other hour counts inside the range are not confirmed.
# Batch Chat: base_url https://batch.dashscope.aliyuncs.com/compatible-mode/v1, Chinese Mainland only,
#   synchronous call queued server-side, default wait 3600 s (60-3600 s configurable).
#   https://www.alibabacloud.com/help/en/model-studio/openai-compatible-batch-chat
# Images: Wan / Qwen-Image use DashScope's native async API, not /images/generations -> None.
# Structured output: JSON Object mode works on "most Qwen models" (non-thinking mode; the messages
#   must contain the word "JSON"); JSON Schema mode only on some models (qwen3-max, qwen-plus and
#   qwen-flash 2025-07-28 and later, deepseek-v3.2), and the international page documents JSON
#   Object only. Thinking-mode models support neither. The preset cannot know the model, so
#   json_object: the schema goes into the system message and every answer is validated here.
#   https://help.aliyun.com/zh/model-studio/json-mode ,
#   https://www.alibabacloud.com/help/en/model-studio/qwen-structured-output
# n: "取值范围是1-4 ... 当前仅支持 Qwen3（非思考模式）、qwen-plus-character 模型，且在传入 tools 参数时
#   固定为1" (older revisions: qwen-plus only). Model-dependent, so False: samples=K sends K
#   requests, which every model answers. https://help.aliyun.com/zh/model-studio/qwen-api-reference
# Stream-only: "Qwen3 open-source edition, QwQ commercial and open-source editions, QVQ, and
#   Qwen-Omni support only streaming output" (https://help.aliyun.com/zh/model-studio/stream );
#   Qwen-Omni "stream参数必须设置为True，否则会报错" (https://help.aliyun.com/zh/model-studio/qwen-omni ).
#   Open-source Qwen3 answers unstreamed only with enable_thinking=false ("否则会报错", API
#   reference above), and thinks by default. The prefixes are the documented names; some also
#   match a non-thinking sibling (qwen3-30b-a3b-instruct-2507), which is harmless: a streamed
#   request is never refused. Thinking switched on by a request parameter (enable_thinking) is not
#   a model name and cannot be listed here.
_DASHSCOPE_STREAM_ONLY = (
    "qwq-",  # qwq-plus, qwq-32b
    "qvq-",  # qvq-max, qvq-plus, qvq-72b-preview
    "qwen-omni",  # qwen-omni-turbo
    "qwen2.5-omni",
    "qwen3-omni",  # qwen3-omni-flash
    "qwen3.5-omni",
    # Qwen3 open-source
    "qwen3-235b-a22b",
    "qwen3-32b",
    "qwen3-30b-a3b",
    "qwen3-14b",
    "qwen3-8b",
    "qwen3-4b",
    "qwen3-1.7b",
    "qwen3-0.6b",
    "qwen3-next-80b-a3b-thinking",
)
_DASHSCOPE = Preset(
    name="dashscope",
    base_url="https://dashscope.aliyuncs.com/compatible-mode/v1",
    key_env=("DASHSCOPE_API_KEY",),
    kinds=frozenset({"chat", "completion", "embedding"}),
    embedding_max_inputs=10,
    embedding_max_tokens=None,
    batch_api=True,
    batch_completion_windows=_day_windows(336),
    batch_max_requests=50_000,
    batch_max_bytes=500_000_000,
    batch_chat_base_url="https://batch.dashscope.aliyuncs.com/compatible-mode/v1",
    image_path=None,
    default_max_concurrency=32,
    dialect="dashscope",
    docs="https://help.aliyun.com/zh/model-studio/compatibility-of-openai-with-dashscope",
    structured_output="json_object",
    supports_n=False,
    stream_only=_DASHSCOPE_STREAM_ONLY,
)

# The international (Singapore) deployment. Keys of one region do not work in the other.
# Batch (file input) is offered there for qwen-max / plus / flash / turbo; Batch Chat is documented
# for the Chinese Mainland only; /completions is documented for Beijing only.
# (Alibaba now also recommends a workspace domain https://{WorkspaceId}.ap-southeast-1.maas.aliyuncs.com;
# the dashscope-intl domain "remains fully functional".)
# Structured output, n and stream-only models: as for the Beijing region above (the same API
# reference; the international structured-output page documents JSON Object mode only).
#   https://www.alibabacloud.com/help/en/model-studio/json-mode
_DASHSCOPE_INTL = Preset(
    name="dashscope-intl",
    base_url="https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
    key_env=("DASHSCOPE_API_KEY",),
    kinds=frozenset({"chat", "embedding"}),
    embedding_max_inputs=10,
    embedding_max_tokens=None,
    batch_api=True,
    batch_completion_windows=_day_windows(336),
    batch_max_requests=50_000,
    batch_max_bytes=500_000_000,
    batch_chat_base_url=None,
    image_path=None,
    default_max_concurrency=32,
    dialect="dashscope",
    docs="https://www.alibabacloud.com/help/en/model-studio/compatibility-of-openai-with-dashscope",
    structured_output="json_object",
    supports_n=False,
    stream_only=_DASHSCOPE_STREAM_ONLY,
)

# Volcengine Ark (Doubao), cn-beijing.
# Embeddings: "文本数量不超过 256 条", each text at most the model's max input tokens (4096 for
#   doubao-embedding) and 100,000 bytes. https://www.volcengine.com/docs/82379/1302003
# Batch: Ark has no OpenAI-style /files + /batches; it offers batch jobs over TOS
#   (CreateBatchInferenceJob) and "Batch Chat": POST .../api/v3/batch/chat/completions, same fields
#   as chat except no streaming; model must be a batch inference endpoint ID ("ep-bi-...").
#   https://www.volcengine.com/docs/82379/1449576
# Images: Seedream via POST .../api/v3/images/generations (OpenAI-shaped request and response).
# ARK_BASE_URL is a widespread community convention, not a variable named in Ark's docs.
# Structured output: response_format json_object and json_schema are both "beta阶段" and each
#   "支持该字段的模型请参见文档": the model table lists some models with JSON Object only, and
#   doubao-seed-1-6-lite-251015 with neither. json_object is the mode the most models take, so
#   json_object; the schema goes into the system message and answers are validated here.
#   https://www.volcengine.com/docs/82379/1568221 , Chat API https://www.volcengine.com/docs/82379/1494384
# n: not among the Chat API's request fields -> False (samples=K sends K requests).
# No model is documented as answering only streamed requests (Batch Chat is the reverse: no
#   streaming at all).
_ARK = Preset(
    name="ark",
    base_url="https://ark.cn-beijing.volces.com/api/v3",
    key_env=("ARK_API_KEY",),
    base_url_env=("ARK_BASE_URL",),
    kinds=frozenset({"chat", "embedding", "image"}),
    embedding_max_inputs=256,
    embedding_max_tokens=None,
    batch_api=False,
    batch_chat_base_url="https://ark.cn-beijing.volces.com/api/v3/batch",
    image_path="/images/generations",
    default_max_concurrency=32,
    dialect="ark",
    docs="https://www.volcengine.com/docs/82379/1299023",
    structured_output="json_object",
    supports_n=False,
    stream_only=(),
)

# Baidu Qianfan ModelBuilder, v2 OpenAI-compatible API (bearer API key "bce-v3/ALTAK-...").
# Base URL: https://cloud.baidu.com/doc/WENXINWORKSHOP/s/2m3fihw8s
# Key env: Qianfan's docs pass the key in code. QIANFAN_API_KEY is the name other OpenAI-compatible
#   tools use for it; Baidu's own SDK (bce-qianfan-sdk) reads QIANFAN_BEARER_TOKEN.
# Embeddings: "文本数量不超过16" (tao-8k: 1). https://cloud.baidu.com/doc/qianfan-api/s/Fm7u3ropn
# Images: POST https://qianfan.baidubce.com/v2/images/generations
#   https://cloud.baidu.com/doc/qianfan-docs/s/bm8wv3h6f
# Batch: OpenAI-compatible /v2/files + /v2/batches. completion_window "1-672h"; at most 5000 requests
#   per file, file at most 1G; the per-line "url" is "/v2/chat/completions".
#   https://cloud.baidu.com/doc/qianfan-api/s/xmk297s1a , https://cloud.baidu.com/doc/qianfan/s/Oml4r78ea
#   Whole days are listed below; hour counts 1-671 are also documented as accepted.
# /completions is not documented for v2 -> not in kinds.
# Structured output: response_format type text | json_object ("可能出现不满足效果情况") | json_schema
#   ("只有部分模型支持": ERNIE-4.5, DeepSeek-V3 / V3.1 / R1, Qwen3 and other open models); ERNIE X1
#   Turbo takes no response_format at all. The json_schema field is described only as "JSON Schema
#   描述", not as OpenAI's {name, schema, strict} wrapper. So json_object, with the schema in the
#   system message and the answer validated here.
#   https://cloud.baidu.com/doc/qianfan-docs/s/6m8r1x5hz , https://cloud.baidu.com/doc/qianfan-api/s/3m7of64lb
# n: not among the v2 chat request fields -> False.
# No model is documented as answering only streamed requests.
_QIANFAN = Preset(
    name="qianfan",
    base_url="https://qianfan.baidubce.com/v2",
    key_env=("QIANFAN_API_KEY", "QIANFAN_BEARER_TOKEN"),
    kinds=frozenset({"chat", "embedding", "image"}),
    embedding_max_inputs=16,
    embedding_max_tokens=None,
    batch_api=True,
    batch_completion_windows=_day_windows(672),
    batch_max_requests=5_000,
    batch_max_bytes=1_000_000_000,
    batch_chat_base_url=None,
    image_path="/images/generations",
    default_max_concurrency=16,
    dialect="qianfan",
    docs="https://cloud.baidu.com/doc/qianfan-api/s/Om9b4yj3w",
    batch_endpoint_prefix="/v2",
    structured_output="json_object",
    supports_n=False,
    stream_only=(),
)

# DeepSeek. base_url https://api.deepseek.com; "you can also use https://api.deepseek.com/v1 ...
# the v1 here has no relationship with the model version". Chat only: FIM /completions needs the
# separate beta base URL https://api.deepseek.com/beta; there are no embeddings, images or batches.
# Structured output: "JSON Output": response_format {"type": "json_object"} only, the prompt must
#   contain the word "json"; no json_schema type. https://api-docs.deepseek.com/guides/json_mode
# n: not a request field of Create Chat Completion -> False.
#   https://api-docs.deepseek.com/api/create-chat-completion
# No model is documented as answering only streamed requests.
_DEEPSEEK = Preset(
    name="deepseek",
    base_url="https://api.deepseek.com/v1",
    key_env=("DEEPSEEK_API_KEY",),
    kinds=frozenset({"chat"}),  # embedding_max_inputs keeps its default: DeepSeek has no embeddings
    batch_api=False,
    default_max_concurrency=32,
    dialect="deepseek",
    docs="https://api-docs.deepseek.com/",
    structured_output="json_object",
    supports_n=False,
    stream_only=(),
)

# --------------------------------------------------------------------------------------------------
# Local servers: no key needed, plain HTTP on loopback, smaller default windows.
# --------------------------------------------------------------------------------------------------

# vLLM: `vllm serve MODEL` listens on port 8000 and serves /v1/chat/completions, /v1/completions and
# /v1/embeddings (pooling models). `--api-key` / VLLM_API_KEY makes it require a key.
# No /files + /batches (vLLM's `run-batch` is an offline CLI). No documented cap on embedding inputs:
# 256 keeps one request's memory moderate.
# Structured output: response_format {"type": "json_schema", "json_schema": {"name", "schema"}}
#   is constrained by the server (xgrammar / guidance backends).
#   https://docs.vllm.ai/en/latest/features/structured_outputs/
# n: a supported sampling parameter (the Chat API ignores only parallel_tool_calls and user).
# A local server answers every model streamed or not.
_VLLM = Preset(
    name="vllm",
    base_url="http://127.0.0.1:8000/v1",
    key_env=("VLLM_API_KEY",),
    needs_key=False,
    kinds=frozenset({"chat", "completion", "embedding"}),
    embedding_max_inputs=256,
    default_max_concurrency=32,
    dialect="openai",
    docs="https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html",
    structured_output="json_schema",
    supports_n=True,
    stream_only=(),
)

# Ollama: OpenAI compatibility at http://localhost:11434/v1 (chat, completions, embeddings, models);
# "api_key: required but ignored". OLLAMA_HOST holds host:port, not a /v1 URL, so it is not used as a
# base-URL override. No documented embedding cap (256 is our choice).
# Structured output: "Structured outputs work through the OpenAI-compatible API via
#   response_format" (the local server; Ollama's Cloud does not support structured outputs).
#   https://docs.ollama.com/capabilities/structured-outputs
# n: listed as not supported for /v1/chat/completions -> False.
# A local server answers every model streamed or not.
_OLLAMA = Preset(
    name="ollama",
    base_url="http://127.0.0.1:11434/v1",
    key_env=(),
    needs_key=False,
    kinds=frozenset({"chat", "completion", "embedding"}),
    embedding_max_inputs=256,
    default_max_concurrency=4,
    dialect="openai",
    docs="https://docs.ollama.com/api/openai-compatibility",
    structured_output="json_schema",
    supports_n=False,
    stream_only=(),
)

# llama.cpp `llama-server`: default 127.0.0.1:8080; /v1/chat/completions, /v1/completions,
# /v1/embeddings (with --embeddings). `--api-key KEY ... (env: LLAMA_API_KEY)`. Embedding requests are
# bounded by the server's batch size (it answers "too large to process, increase the physical batch
# size"), so the default here is small and not a documented number.
# Structured output: "The response_format parameter supports both plain JSON output ... and
#   schema-constrained JSON" (a grammar built from the schema). The server reads the schema from
#   OpenAI's nested form response_format.json_schema.schema, which is what we send (the README's
#   top-level {"type": "json_schema", "schema": ...} example is not read by the parser).
# n: its request parser refuses anything but 1 ("Only one completion choice is allowed") -> False.
# A local server answers every model streamed or not.
_LLAMACPP = Preset(
    name="llamacpp",
    base_url="http://127.0.0.1:8080/v1",
    key_env=("LLAMA_API_KEY",),
    needs_key=False,
    kinds=frozenset({"chat", "completion", "embedding"}),
    embedding_max_inputs=32,
    default_max_concurrency=4,
    dialect="openai",
    docs="https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md",
    structured_output="json_schema",
    supports_n=False,
    stream_only=(),
)

# batchmagic's own simulator (batchmagic.simulator). The base URL is normally passed explicitly;
# this one is a placeholder. Speaks the OpenAI dialect and every kind, including /files + /batches.
# Like OpenAI it answers json_schema requests with JSON valid for the schema and honours n; it
# has no stream-only model.
_SIMULATOR = Preset(
    name="simulator",
    base_url="http://127.0.0.1:8000/v1",
    key_env=("BATCHMAGIC_SIM_API_KEY",),
    needs_key=False,
    kinds=ALL_KINDS,
    embedding_max_inputs=2048,
    batch_api=True,
    batch_completion_windows=("24h",),
    batch_max_requests=50_000,
    batch_max_bytes=200_000_000,
    image_path="/images/generations",
    default_max_concurrency=64,
    dialect="openai",
    docs="",
    structured_output="json_schema",
    supports_n=True,
    stream_only=(),
)

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        _OPENAI,
        _DASHSCOPE,
        _DASHSCOPE_INTL,
        _ARK,
        _QIANFAN,
        _DEEPSEEK,
        _VLLM,
        _OLLAMA,
        _LLAMACPP,
        _SIMULATOR,
    )
}

ALIASES: dict[str, str] = {
    "bailian": "dashscope",
    "aliyun": "dashscope",
    "alibaba": "dashscope",
    "modelstudio": "dashscope",
    "bailian-intl": "dashscope-intl",
    "aliyun-intl": "dashscope-intl",
    "volcengine": "ark",
    "volces": "ark",
    "doubao": "ark",
    "baidu": "qianfan",
    "llama.cpp": "llamacpp",
    "llama-cpp": "llamacpp",
    "llama-server": "llamacpp",
    "sim": "simulator",
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``: case-insensitive, ``_`` and ``-`` alike, common aliases accepted.

    Raises ``KeyError`` listing the known names when there is no such preset.
    """
    key = str(name).strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    preset = PRESETS.get(key)
    if preset is None:
        known = ", ".join(sorted(PRESETS))
        aliases = ", ".join(f"{alias}->{target}" for alias, target in sorted(ALIASES.items()))
        raise KeyError(f"unknown provider {name!r}; known: {known} (aliases: {aliases})")
    return preset
