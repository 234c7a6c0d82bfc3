"""Provider presets and error-dialect classification.

The error payloads below are copied from (or shaped exactly like) the examples in each provider's
error-code documentation; the comment on each case names the source.
"""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest

from batchmagic.providers._dialects import (
    CATEGORIES,
    CONTEXT,
    DIALECTS,
    FATAL,
    RATE_LIMIT,
    ROW,
    TRANSIENT,
    Classified,
    classify,
)
from batchmagic.providers._presets import (
    ALL_KINDS,
    PRESETS,
    STRUCTURED_OUTPUT_MODES,
    Preset,
    get_preset,
)

LOCAL = {"vllm", "ollama", "llamacpp", "simulator"}
REQUIRED = {
    "openai",
    "dashscope",
    "dashscope-intl",
    "ark",
    "qianfan",
    "deepseek",
    "vllm",
    "ollama",
    "llamacpp",
    "simulator",
}
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


# --------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------


def test_required_presets_exist():
    assert REQUIRED <= set(PRESETS)
    for name, preset in PRESETS.items():
        assert isinstance(preset, Preset)
        assert preset.name == name


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_is_well_formed(name):
    p = PRESETS[name]
    url = urlparse(p.base_url)
    assert not p.base_url.endswith("/")
    assert re.search(r"/v\d+$", url.path), p.base_url  # /v1, or Ark's /api/v3, Qianfan's /v2
    if name in LOCAL:
        assert url.scheme == "http"
        assert url.hostname in ("127.0.0.1", "localhost", "::1")
        assert p.needs_key is False
    else:
        assert url.scheme == "https"
        assert p.needs_key is True
        assert p.key_env, "a cloud preset must say where its key comes from"
        assert p.docs.startswith("https://")
    for env in p.key_env + p.base_url_env:
        assert ENV_NAME.match(env), env
    assert p.kinds and p.kinds <= ALL_KINDS
    assert "chat" in p.kinds
    assert p.embedding_max_inputs >= 1
    assert p.embedding_max_tokens is None or p.embedding_max_tokens > 0
    assert p.default_max_concurrency >= 1
    assert p.dialect in DIALECTS
    assert (p.image_path is not None) == ("image" in p.kinds)
    if p.image_path is not None:
        assert p.image_path.startswith("/")
    if p.batch_api:
        assert p.batch_completion_windows and p.batch_completion_windows[0] == "24h"
        assert all(re.fullmatch(r"\d+h", w) for w in p.batch_completion_windows)
        assert p.batch_max_requests and p.batch_max_requests > 0
        assert p.batch_max_bytes and p.batch_max_bytes > 0
        assert re.fullmatch(r"/v\d+", p.batch_endpoint_prefix)
    else:
        assert p.batch_completion_windows == ()
    if p.batch_chat_base_url is not None:
        assert p.batch_chat_base_url.startswith("https://")


def test_local_servers_use_smaller_windows():
    cloud = min(p.default_max_concurrency for n, p in PRESETS.items() if n not in LOCAL)
    for name in ("ollama", "llamacpp"):
        assert PRESETS[name].default_max_concurrency < cloud


def test_documented_facts():
    assert PRESETS["openai"].embedding_max_inputs == 2048
    assert PRESETS["openai"].embedding_max_tokens == 300_000
    assert PRESETS["openai"].batch_completion_windows == ("24h",)
    assert PRESETS["dashscope"].embedding_max_inputs == 10
    assert PRESETS["dashscope"].batch_completion_windows[-1] == "336h"
    assert PRESETS["dashscope"].batch_chat_base_url == (
        "https://batch.dashscope.aliyuncs.com/compatible-mode/v1"
    )
    assert "dashscope-intl.aliyuncs.com" in PRESETS["dashscope-intl"].base_url
    assert PRESETS["ark"].base_url == "https://ark.cn-beijing.volces.com/api/v3"
    assert PRESETS["ark"].key_env == ("ARK_API_KEY",)
    assert PRESETS["ark"].batch_chat_base_url.endswith("/api/v3/batch")
    assert PRESETS["qianfan"].base_url == "https://qianfan.baidubce.com/v2"
    assert PRESETS["qianfan"].key_env[0] == "QIANFAN_API_KEY"
    assert PRESETS["qianfan"].batch_endpoint_prefix == "/v2"
    assert PRESETS["qianfan"].batch_completion_windows[-1] == "672h"
    assert PRESETS["deepseek"].kinds == frozenset({"chat"})
    assert PRESETS["vllm"].key_env == ("VLLM_API_KEY",)
    assert PRESETS["simulator"].kinds == ALL_KINDS and PRESETS["simulator"].batch_api


# What each provider does with a schema, with n > 1 and with unstreamed requests, as its docs say
# (the comment above each preset cites the page). A change here must be a deliberate one.
STRUCTURED_FACTS = {
    # name: (structured_output, supports_n)
    "openai": ("json_schema", True),
    "dashscope": ("json_object", False),  # json_schema on some models only; n on Qwen3 non-thinking
    "dashscope-intl": ("json_object", False),
    "ark": ("json_object", False),  # response_format is beta and per model; no n field
    "qianfan": ("json_object", False),  # json_schema on some models only; no n field
    "deepseek": ("json_object", False),  # JSON Output is json_object only; no n field
    "vllm": ("json_schema", True),
    "ollama": ("json_schema", False),  # n listed as unsupported
    "llamacpp": ("json_schema", False),  # "Only one completion choice is allowed"
    "simulator": ("json_schema", True),
}
DASHSCOPE_STREAM_ONLY = (
    "qwq-", "qvq-", "qwen-omni", "qwen2.5-omni", "qwen3-omni", "qwen3.5-omni",
    "qwen3-235b-a22b", "qwen3-32b", "qwen3-30b-a3b", "qwen3-14b", "qwen3-8b", "qwen3-4b",
    "qwen3-1.7b", "qwen3-0.6b", "qwen3-next-80b-a3b-thinking",
)


def test_structured_facts_cover_every_preset():
    assert set(STRUCTURED_FACTS) == set(PRESETS), "a new preset needs its documented facts"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_structured_output_is_one_of_three_words(name):
    assert PRESETS[name].structured_output in ("json_schema", "json_object", "none")
    assert STRUCTURED_OUTPUT_MODES == ("json_schema", "json_object", "none")


@pytest.mark.parametrize("name", sorted(STRUCTURED_FACTS))
def test_structured_output_and_n_as_documented(name):
    preset = PRESETS[name]
    assert (preset.structured_output, preset.supports_n) == STRUCTURED_FACTS[name]


def test_stream_only_models_as_documented():
    for name in ("dashscope", "dashscope-intl"):
        assert PRESETS[name].stream_only == DASHSCOPE_STREAM_ONLY
    for name in set(PRESETS) - {"dashscope", "dashscope-intl"}:
        assert PRESETS[name].stream_only == (), name
    for preset in PRESETS.values():
        for prefix in preset.stream_only:
            assert prefix and prefix == prefix.strip().lower(), prefix


@pytest.mark.parametrize(
    "model, streamed_only",
    [
        ("qwq-plus", True),
        ("QwQ-32B", True),  # case does not matter
        (" qvq-max ", True),
        ("qwen-omni-turbo", True),
        ("qwen3-omni-flash", True),
        ("qwen3-8b", True),  # open-source Qwen3 thinks by default: streamed only
        ("qwen3-235b-a22b-thinking-2507", True),
        ("qwen3-next-80b-a3b-thinking", True),
        ("qwen3-next-80b-a3b-instruct", False),
        ("qwen3-max", False),  # commercial models answer both ways
        ("qwen-plus", False),
        ("qwen3-coder-plus", False),
        ("", False),
    ],
)
def test_dashscope_streams_only(model, streamed_only):
    assert PRESETS["dashscope"].streams_only(model) is streamed_only
    assert PRESETS["dashscope-intl"].streams_only(model) is streamed_only
    assert PRESETS["openai"].streams_only(model) is False


def test_a_misspelt_structured_output_mode_fails_when_the_preset_is_made():
    with pytest.raises(ValueError, match="structured_output must be one of"):
        Preset(name="x", base_url="http://127.0.0.1:1/v1", key_env=(), structured_output="json")


@pytest.mark.parametrize(
    "alias, name",
    [
        ("openai", "openai"),
        ("OpenAI", "openai"),
        ("  DashScope ", "dashscope"),
        ("bailian", "dashscope"),
        ("Aliyun", "dashscope"),
        ("dashscope_intl", "dashscope-intl"),
        ("DASHSCOPE-INTL", "dashscope-intl"),
        ("volcengine", "ark"),
        ("Doubao", "ark"),
        ("ARK", "ark"),
        ("baidu", "qianfan"),
        ("llama.cpp", "llamacpp"),
        ("llama-cpp", "llamacpp"),
        ("Llama_CPP", "llamacpp"),
        ("vLLM", "vllm"),
        ("simulator", "simulator"),
    ],
)
def test_get_preset_aliases(alias, name):
    assert get_preset(alias) is PRESETS[name]


def test_get_preset_unknown_lists_names():
    with pytest.raises(KeyError) as info:
        get_preset("no-such-provider")
    text = str(info.value)
    assert "no-such-provider" in text
    for name in REQUIRED:
        assert name in text


def test_key_and_base_url_from_env():
    openai = PRESETS["openai"]
    assert openai.api_key({}) is None
    assert openai.api_key({"OPENAI_API_KEY": " sk-x "}) == "sk-x"
    assert openai.resolved_base_url({}) == "https://api.openai.com/v1"
    assert openai.resolved_base_url({"OPENAI_BASE_URL": "http://h/v1/"}) == "http://h/v1"
    qianfan = PRESETS["qianfan"]
    assert qianfan.api_key({"QIANFAN_BEARER_TOKEN": "bce-v3/ALTAK-b"}) == "bce-v3/ALTAK-b"
    both = {"QIANFAN_API_KEY": "bce-v3/ALTAK-a", "QIANFAN_BEARER_TOKEN": "bce-v3/ALTAK-b"}
    assert qianfan.api_key(both) == "bce-v3/ALTAK-a"


# --------------------------------------------------------------------------------------------------
# Dialects
# --------------------------------------------------------------------------------------------------


def _openai_error(message, type_=None, code=None, param=None):
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


CASES = [
    # ---- OpenAI (platform.openai.com/docs/guides/error-codes, help-center 429 articles) ----
    pytest.param(
        "openai",
        401,
        _openai_error(
            "Incorrect API key provided: sk-abc***.", "invalid_request_error", "invalid_api_key"
        ),
        FATAL,
        "invalid_api_key",
        id="openai-401-invalid-key",
    ),
    pytest.param(
        "openai",
        429,
        _openai_error(
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            "insufficient_quota",
        ),
        FATAL,
        "insufficient_quota",
        id="openai-429-insufficient-quota",
    ),
    pytest.param(
        "openai",
        429,
        _openai_error(
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            "credit_balance_exhausted",
        ),
        FATAL,
        "credit_balance_exhausted",
        id="openai-429-credit-balance-exhausted",
    ),
    pytest.param(
        "openai",
        429,
        _openai_error(
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            "project_spend_limit_exceeded",
        ),
        FATAL,
        "project_spend_limit_exceeded",
        id="openai-429-project-spend-limit",
    ),
    pytest.param(
        "openai",
        429,
        _openai_error(
            "Rate limit reached for gpt-4o in organization org-x on requests per min "
            "(RPM): Limit 500, Used 500, Requested 1. Please try again in 120ms.",
            "requests",
            "rate_limit_exceeded",
        ),
        RATE_LIMIT,
        "rate_limit_exceeded",
        id="openai-429-rpm",
    ),
    pytest.param(
        "openai",
        404,
        _openai_error(
            "The model `gpt-9` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
            "model",
        ),
        FATAL,
        "model_not_found",
        id="openai-404-model-not-found",
    ),
    pytest.param(
        "openai",
        404,
        _openai_error("Invalid URL (POST /v1/chat/complete)", "invalid_request_error"),
        ROW,
        "invalid_request_error",
        id="openai-404-wrong-path-is-row",
    ),
    pytest.param(
        "openai",
        400,
        _openai_error(
            "This model's maximum context length is 128000 tokens. However, your "
            "messages resulted in 130017 tokens. Please reduce the length of the "
            "messages.",
            "invalid_request_error",
            "context_length_exceeded",
            "messages",
        ),
        CONTEXT,
        "context_length_exceeded",
        id="openai-400-context",
    ),
    pytest.param(
        "openai",
        400,
        _openai_error(
            "Invalid prompt: your prompt was flagged as potentially violating our usage policy.",
            "invalid_request_error",
            "invalid_prompt",
        ),
        ROW,
        "invalid_prompt",
        id="openai-400-flagged-prompt",
    ),
    pytest.param(
        "openai",
        500,
        _openai_error(
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
        ),
        TRANSIENT,
        "server_error",
        id="openai-500",
    ),
    pytest.param(
        "openai",
        503,
        _openai_error(
            "The engine is currently overloaded, please try again later.", "server_error"
        ),
        TRANSIENT,
        "server_error",
        id="openai-503-overloaded-is-transient",
    ),
    pytest.param(
        "openai",
        503,
        _openai_error("Slow Down", "rate_limit_error", "slow_down"),
        RATE_LIMIT,
        "slow_down",
        id="openai-503-slow-down-is-rate-limit",
    ),
    pytest.param(
        "openai",
        403,
        _openai_error(
            "Country, region, or territory not supported",
            "request_forbidden",
            "unsupported_country_region_territory",
        ),
        FATAL,
        "unsupported_country_region_territory",
        id="openai-403-region",
    ),
    pytest.param(
        "openai",
        200,
        {
            "error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        },
        TRANSIENT,
        "server_error",
        id="openai-200-stream-error-event",
    ),
    pytest.param("openai", 502, None, TRANSIENT, None, id="openai-502-not-json"),
    pytest.param("openai", 529, None, TRANSIENT, None, id="openai-529-not-json"),
    pytest.param("openai", 408, None, TRANSIENT, None, id="openai-408"),
    pytest.param("openai", 409, None, TRANSIENT, None, id="openai-409"),
    pytest.param("openai", 413, {"error": "Payload Too Large"}, ROW, None, id="openai-413-row"),
    # ---- generic OpenAI-compatible local servers ----
    pytest.param(  # vLLM's flat error object (vllm issue tracker)
        "openai",
        404,
        {
            "object": "error",
            "message": "The model `Qwen1.5-14B-Chat-GPTQ-Int8` does not exist.",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        },
        FATAL,
        "404",
        id="vllm-404-model",
    ),
    pytest.param(
        "openai",
        400,
        {
            "object": "error",
            "message": "This model's maximum context length is 2000 tokens. "
            "However, you requested 2417 tokens (417 in the messages, 2000 in the completion). "
            "Please reduce the length of the messages or completion.",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        },
        CONTEXT,
        "400",
        id="vllm-400-context",
    ),
    pytest.param(  # llama.cpp server, server-context.cpp
        "openai",
        400,
        {
            "error": {
                "code": 400,
                "message": "request (9412 tokens) exceeds the available context "
                "size (8192 tokens), try increasing it",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": 9412,
                "n_ctx": 8192,
            }
        },
        CONTEXT,
        "400",
        id="llamacpp-400-context",
    ),
    pytest.param(  # llama.cpp while the model is loading
        "openai",
        503,
        {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
        TRANSIENT,
        "503",
        id="llamacpp-503-loading",
    ),
    pytest.param(  # Ollama /v1
        "openai",
        404,
        {
            "error": {
                "message": 'model "gemma3:12b" not found, try pulling it first',
                "type": "api_error",
                "param": None,
                "code": None,
            }
        },
        FATAL,
        "api_error",
        id="ollama-404-model",
    ),
    # ---- DeepSeek (api-docs.deepseek.com/quick_start/error_codes) ----
    pytest.param(
        "deepseek",
        402,
        {
            "error": {
                "message": "Insufficient Balance",
                "type": "unknown_error",
                "param": None,
                "code": "invalid_request_error",
            }
        },
        FATAL,
        "invalid_request_error",
        id="deepseek-402-balance",
    ),
    pytest.param(
        "deepseek",
        401,
        {
            "error": {
                "message": "Authentication Fails (no such user)",
                "type": "authentication_error",
                "param": None,
                "code": "invalid_request_error",
            }
        },
        FATAL,
        "invalid_request_error",
        id="deepseek-401",
    ),
    pytest.param(
        "deepseek",
        422,
        {
            "error": {
                "message": "Failed to deserialize the JSON body into the target type: "
                "messages[0]: missing field `content`",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_request_error",
            }
        },
        ROW,
        "invalid_request_error",
        id="deepseek-422",
    ),
    pytest.param(
        "deepseek",
        400,
        {
            "error": {
                "message": "This model's maximum context length is 131072 tokens. However, "
                "you requested 140000 tokens (140000 in the messages, 0 in the completion). "
                "Please reduce the length of the messages or completion.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_request_error",
            }
        },
        CONTEXT,
        "invalid_request_error",
        id="deepseek-400-context",
    ),
    pytest.param(
        "deepseek",
        400,
        {
            "error": {
                "message": "Content Exists Risk",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_request_error",
            }
        },
        ROW,
        "invalid_request_error",
        id="deepseek-400-content-risk",
    ),
    pytest.param("deepseek", 429, None, RATE_LIMIT, None, id="deepseek-429"),
    pytest.param("deepseek", 500, None, TRANSIENT, None, id="deepseek-500"),
    pytest.param(
        "deepseek",
        503,
        {"error": {"message": "Server Overloaded", "type": "server_error"}},
        TRANSIENT,
        "server_error",
        id="deepseek-503-overloaded",
    ),
    # ---- DashScope (help.aliyun.com/zh/model-studio/error-code) ----
    pytest.param(
        "dashscope",
        401,
        {
            "error": {
                "code": "invalid_api_key",
                "param": None,
                "message": "Incorrect API key provided. ",
                "type": "invalid_request_error",
            },
            "request_id": "5d3e7a8b-xxxx",
        },
        FATAL,
        "invalid_api_key",
        id="dashscope-401-key",
    ),
    pytest.param(
        "dashscope",
        400,
        {
            "error": {
                "code": "Arrearage",
                "param": None,
                "message": "Access denied, please make sure your account is in good standing.",
                "type": "Arrearage",
            }
        },
        FATAL,
        "Arrearage",
        id="dashscope-400-arrearage",
    ),
    pytest.param(
        "dashscope",
        429,
        {
            "error": {
                "code": "limit_requests",
                "param": None,
                "message": "You exceeded your current requests list.",
                "type": "limit_requests",
            }
        },
        RATE_LIMIT,
        "limit_requests",
        id="dashscope-429-limit-requests",
    ),
    pytest.param(
        "dashscope",
        429,
        {
            "code": "Throttling.RateQuota",
            "message": "Requests rate limit exceeded, please try again later.",
            "request_id": "b53f2f6c-xxxx",
        },
        RATE_LIMIT,
        "Throttling.RateQuota",
        id="dashscope-429-ratequota-native",
    ),
    pytest.param(  # TPM throttling on DashScope, NOT exhausted credit (unlike OpenAI)
        "dashscope",
        429,
        {
            "error": {
                "code": "insufficient_quota",
                "param": None,
                "message": "You exceeded your current quota, please check your plan and "
                "billing details.",
                "type": "insufficient_quota",
            }
        },
        RATE_LIMIT,
        "insufficient_quota",
        id="dashscope-429-insufficient-quota-is-tpm",
    ),
    pytest.param(
        "dashscope",
        429,
        {
            "code": "Throttling.AllocationQuota",
            "message": "Allocated quota exceeded, please increase your quota limit.",
        },
        RATE_LIMIT,
        "Throttling.AllocationQuota",
        id="dashscope-429-allocation-quota",
    ),
    pytest.param(
        "dashscope",
        429,
        {"code": "Throttling.AllocationQuota", "message": "Free allocated quota exceeded."},
        FATAL,
        "Throttling.AllocationQuota",
        id="dashscope-429-free-quota-gone",
    ),
    pytest.param(
        "dashscope",
        429,
        {"code": "PrepaidBillOverdue", "message": "The prepaid bill is overdue."},
        FATAL,
        "PrepaidBillOverdue",
        id="dashscope-429-bill-overdue",
    ),
    pytest.param(
        "dashscope",
        400,
        {
            "error": {
                "code": "data_inspection_failed",
                "param": None,
                "message": "Input data may contain inappropriate content.",
                "type": "data_inspection_failed",
            }
        },
        ROW,
        "data_inspection_failed",
        id="dashscope-400-data-inspection",
    ),
    pytest.param(
        "dashscope",
        400,
        {
            "error": {
                "code": "invalid_parameter_error",
                "param": None,
                "message": "Range of input length should be [1, 129024]",
                "type": "invalid_request_error",
            }
        },
        CONTEXT,
        "invalid_parameter_error",
        id="dashscope-400-input-length",
    ),
    pytest.param(
        "dashscope",
        400,
        {"code": "InvalidParameter", "message": "Model not exist."},
        FATAL,
        "InvalidParameter",
        id="dashscope-400-model-not-exist",
    ),
    pytest.param(
        "dashscope",
        404,
        {
            "error": {
                "code": "model_not_found",
                "param": None,
                "message": "The model `qwen-maxx` does not exist or you do not have access to it.",
                "type": "invalid_request_error",
            }
        },
        FATAL,
        "model_not_found",
        id="dashscope-404-model",
    ),
    pytest.param(
        "dashscope",
        403,
        {
            "code": "AllocationQuota.FreeTierOnly",
            "message": "The free tier of the model has been exhausted. If you wish to continue "
            'access the model on a paid basis, please disable the "use free tier only" '
            "mode in the management console.",
        },
        FATAL,
        "AllocationQuota.FreeTierOnly",
        id="dashscope-403-free-tier-only",
    ),
    pytest.param(
        "dashscope",
        503,
        {
            "code": "ModelServingError",
            "message": "Too many requests. Your requests are being throttled due to system "
            "capacity limits. Please try again later.",
        },
        RATE_LIMIT,
        "ModelServingError",
        id="dashscope-503-capacity-throttle",
    ),
    pytest.param(
        "dashscope",
        500,
        {"code": "InternalError.Algo", "message": "inference internal error."},
        TRANSIENT,
        "InternalError.Algo",
        id="dashscope-500-algo",
    ),
    pytest.param(
        "dashscope",
        400,
        {"code": "InternalError.Algo", "message": "Missing Content-Length of multimodal url."},
        ROW,
        "InternalError.Algo",
        id="dashscope-400-algo-is-row",
    ),
    # ---- Volcengine Ark (volcengine.com/docs/82379/1299023) ----
    pytest.param(
        "ark",
        401,
        {
            "error": {
                "code": "AuthenticationError",
                "message": "The API key or AK/SK in the request is missing or invalid. "
                "Request id: 0217...",
                "param": "",
                "type": "Unauthorized",
            }
        },
        FATAL,
        "AuthenticationError",
        id="ark-401",
    ),
    pytest.param(
        "ark",
        403,
        {
            "error": {
                "code": "AccountOverdueError",
                "message": "The request failed because your account has an overdue balance. "
                "Request id: 0217...",
                "param": "",
                "type": "Forbidden",
            }
        },
        FATAL,
        "AccountOverdueError",
        id="ark-403-overdue",
    ),
    pytest.param(
        "ark",
        404,
        {
            "error": {
                "code": "InvalidEndpointOrModel.NotFound",
                "message": "The model or endpoint doubao-embedding-large-text-240915 does not "
                "exist or you do not have access to it.",
                "param": "",
                "type": "NotFound",
            }
        },
        FATAL,
        "InvalidEndpointOrModel.NotFound",
        id="ark-404-endpoint",
    ),
    pytest.param(
        "ark",
        429,
        {
            "error": {
                "code": "RateLimitExceeded.EndpointRPMExceeded",
                "message": "The Requests Per Minute (RPM) limit of the associated endpoint "
                "for your account has been exceeded. Request id: 0217...",
                "param": "",
                "type": "TooManyRequests",
            }
        },
        RATE_LIMIT,
        "RateLimitExceeded.EndpointRPMExceeded",
        id="ark-429-rpm",
    ),
    pytest.param(
        "ark",
        429,
        {
            "error": {
                "code": "RateLimitExceeded.EndpointTPMExceeded",
                "message": "The Tokens Per Minute (TPM) limit of the associated endpoint for "
                "your account has been exceeded.",
                "param": "",
                "type": "TooManyRequests",
            }
        },
        RATE_LIMIT,
        "RateLimitExceeded.EndpointTPMExceeded",
        id="ark-429-tpm",
    ),
    pytest.param(
        "ark",
        429,
        {
            "error": {
                "code": "ServerOverloaded",
                "message": "The service is currently unable to handle additional requests "
                "due to server overload.",
                "param": "",
                "type": "TooManyRequests",
            }
        },
        RATE_LIMIT,
        "ServerOverloaded",
        id="ark-429-server-overloaded",
    ),
    pytest.param(
        "ark",
        429,
        {
            "error": {
                "code": "QuotaExceeded",
                "message": "Your account 2100xxxx has exhausted the free trial quota for the "
                "model doubao-seed-1-6.",
                "param": "",
                "type": "TooManyRequests",
            }
        },
        FATAL,
        "QuotaExceeded",
        id="ark-429-free-quota-exhausted",
    ),
    pytest.param(
        "ark",
        429,
        {
            "error": {
                "code": "SetLimitExceeded",
                "message": "Your account [2100334555] has reached the set inference limit for "
                "the [doubao-seed-1-6-flash] model, and the model service has been "
                "paused.",
                "param": "",
                "type": "TooManyRequests",
            }
        },
        FATAL,
        "SetLimitExceeded",
        id="ark-429-safe-experience-limit",
    ),
    pytest.param(
        "ark",
        400,
        {
            "error": {
                "code": "SensitiveContentDetected.Violence",
                "message": "The request failed because the input text may contain violence "
                "information.",
                "param": "",
                "type": "BadRequest",
            }
        },
        ROW,
        "SensitiveContentDetected.Violence",
        id="ark-400-sensitive",
    ),
    pytest.param(
        "ark",
        400,
        {
            "error": {
                "code": "OutofContextError",
                "message": "Total tokens of image and text exceed max message tokens.",
                "param": "",
                "type": "BadRequest",
            }
        },
        CONTEXT,
        "OutofContextError",
        id="ark-400-out-of-context",
    ),
    pytest.param(  # a max_tokens complaint is NOT a context overflow
        "ark",
        400,
        {
            "error": {
                "code": "InvalidParameter",
                "message": "The parameter `max_tokens` specified in the request are not valid: "
                "integer above maximum value, expected a value <= 32768, but got "
                "65536 instead.",
                "param": "max_tokens",
                "type": "BadRequest",
            }
        },
        ROW,
        "InvalidParameter",
        id="ark-400-max-tokens-is-row",
    ),
    pytest.param(
        "ark",
        500,
        {
            "error": {
                "code": "InternalServiceError",
                "message": "The service encountered an unexpected internal error.",
                "param": "",
                "type": "InternalServerError",
            }
        },
        TRANSIENT,
        "InternalServiceError",
        id="ark-500",
    ),
    # ---- Qianfan v2 (cloud.baidu.com/doc/qianfan-api/s/Om9b4yj3w) ----
    pytest.param(
        "qianfan",
        401,
        {
            "error": {
                "code": "invalid_iam_token",
                "message": "IAM Certification failed",
                "type": "invalid_request_error",
            },
            "id": "as-t2z8xi6mm8",
        },
        FATAL,
        "invalid_iam_token",
        id="qianfan-v2-401",
    ),
    pytest.param(
        "qianfan",
        429,
        {
            "error": {
                "code": "rpm_rate_limit_exceeded",
                "message": "Rate limit reached for RPM",
                "type": "rate_limit_exceeded",
            },
            "id": "as-x",
        },
        RATE_LIMIT,
        "rpm_rate_limit_exceeded",
        id="qianfan-v2-429-rpm",
    ),
    pytest.param(
        "qianfan",
        400,
        {
            "error": {
                "code": "tokens_too_long",
                "message": "Prompt tokens too long",
                "type": "invalid_request_error",
            },
            "id": "as-x",
        },
        CONTEXT,
        "tokens_too_long",
        id="qianfan-v2-400-tokens-too-long",
    ),
    pytest.param(
        "qianfan",
        403,
        {
            "error": {
                "code": "system_unsafe",
                "message": "the content of system field is invalid",
                "type": "unsafe_request",
            },
            "id": "as-x",
        },
        ROW,
        "system_unsafe",
        id="qianfan-v2-403-unsafe-is-row",
    ),
    pytest.param(
        "qianfan",
        403,
        {
            "error": {
                "code": "account_overdue",
                "message": "Access denied due to overdue account",
                "type": "access_denied",
            },
            "id": "as-x",
        },
        FATAL,
        "account_overdue",
        id="qianfan-v2-403-overdue",
    ),
    pytest.param(
        "qianfan",
        500,
        {
            "error": {
                "code": "internal_error",
                "message": "Internal error",
                "type": "Internal_error",
            },
            "id": "as-x",
        },
        TRANSIENT,
        "internal_error",
        id="qianfan-v2-500",
    ),
    # ---- Qianfan errors inside HTTP 200 (v1 error_code; rate-limit doc example) ----
    pytest.param(
        "qianfan",
        200,
        {"error_code": 110, "error_msg": "Access token invalid or no longer valid"},
        FATAL,
        "110",
        id="qianfan-200-110-token-invalid",
    ),
    pytest.param(
        "qianfan",
        200,
        {"error_code": 18, "error_msg": "Open api qps request limit reached"},
        RATE_LIMIT,
        "18",
        id="qianfan-200-18-qps",
    ),
    pytest.param(
        "qianfan",
        200,
        {"error_code": 336501, "error_msg": "Rate limit reached for RPM"},
        RATE_LIMIT,
        "336501",
        id="qianfan-200-336501",
    ),
    pytest.param(
        "qianfan",
        200,
        {"code": 336502, "msg": "Rate limit reached for TPM"},
        RATE_LIMIT,
        "336502",
        id="qianfan-200-336502-code-msg",
    ),
    pytest.param(
        "qianfan",
        200,
        {"code": "rpm_rate_limit_exceeded", "msg": "Rate limit reached for RPM"},
        RATE_LIMIT,
        "rpm_rate_limit_exceeded",
        id="qianfan-200-v2-code-in-200",
    ),
    pytest.param(
        "qianfan",
        200,
        {"error_code": 336100, "error_msg": "try again later"},
        TRANSIENT,
        "336100",
        id="qianfan-200-336100",
    ),
    pytest.param(
        "qianfan",
        200,
        {"error_code": 336000, "error_msg": "Internal error"},
        TRANSIENT,
        "336000",
        id="qianfan-200-336000",
    ),
    pytest.param(
        "qianfan",
        200,
        {"error_code": 336003, "error_msg": "the length of messages must be an odd number"},
        ROW,
        "336003",
        id="qianfan-200-336003-param",
    ),
    pytest.param(
        "qianfan",
        200,
        {"error_code": 17, "error_msg": "Open api daily request limit reached"},
        FATAL,
        "17",
        id="qianfan-200-17-daily-limit",
    ),
]


@pytest.mark.parametrize("dialect, status, payload, category, code", CASES)
def test_classify(dialect, status, payload, category, code):
    found = classify(dialect, status, payload)
    assert isinstance(found, Classified)
    assert found.category == category
    assert found.category in CATEGORIES
    assert found.code == code
    assert isinstance(found.message, str) and found.message
    assert len(found.message) <= 500


def test_enough_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize(
    "payload",
    [
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        },
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
            "model": "text-embedding-v4",
            "usage": {"prompt_tokens": 2, "total_tokens": 2},
        },
        {"created": 1757469561, "data": [{"url": "https://example.com/x.jpeg"}]},
        {
            "status_code": 200,
            "request_id": "902f",
            "code": "",
            "message": "",
            "output": {"choices": []},
        },  # DashScope native success: empty code and message
        {"error": None, "choices": []},
        None,
        [],
    ],
)
def test_success_is_none(payload):
    for dialect in DIALECTS:
        assert classify(dialect, 200, payload) is None


def test_unknown_dialect_falls_back_to_openai():
    payload = _openai_error("Rate limit reached", "requests", "rate_limit_exceeded")
    assert classify("some-new-server", 429, payload).category == RATE_LIMIT
    assert classify("openai", 429, payload) == classify("some-new-server", 429, payload)


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_every_dialect_keeps_generic_rules(dialect):
    assert classify(dialect, 401, None).category == FATAL
    assert classify(dialect, 403, None).category == FATAL
    assert classify(dialect, 404, None).category == ROW
    assert classify(dialect, 400, None).category == ROW
    assert classify(dialect, 429, None).category == RATE_LIMIT
    assert classify(dialect, 500, None).category == TRANSIENT
    assert classify(dialect, 504, None).category == TRANSIENT
    assert classify(dialect, 408, None).category == TRANSIENT
    too_long = _openai_error("This model's maximum context length is 8192 tokens.")
    assert classify(dialect, 400, too_long).category == CONTEXT
    missing = _openai_error("The model `x` does not exist.", code="model_not_found")
    assert classify(dialect, 404, missing).category == FATAL


def test_message_is_trimmed_and_defaulted():
    found = classify("openai", 400, _openai_error("x" * 2000))
    assert len(found.message) == 500
    assert classify("openai", 502, None).message == "HTTP 502"
    assert classify("openai", 400, {"error": "bad input"}).message == "bad input"


# --------------------------------------------------------------------------------------------------
# Key lookup in a kernel: prompt only where a person can answer
# --------------------------------------------------------------------------------------------------

KERNEL_SENTINEL = "sk-SENTINEL-typed-at-the-prompt-5c1e"
NO_KEY_CELL = """
import batchmagic as bm
bm.batch(["hi"], model="gpt-4o-mini", provider="openai", progress=False, cache=False)
"""


def _kernel_env(monkeypatch, tmp_path) -> None:
    """The kernel inherits this process's environment: no OpenAI key anywhere in it."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "BATCHMAGIC_PROVIDER", "BATCHMAGIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))


def test_no_key_in_a_non_interactive_notebook_is_a_clean_config_error(monkeypatch, tmp_path):
    """nbclient (as papermill and ``nbconvert --execute``) does not answer input requests."""
    import json

    import nbformat
    from nbclient import NotebookClient

    _kernel_env(monkeypatch, tmp_path)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(NO_KEY_CELL)])
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for o in nb.cells[0].outputs if o.output_type == "error"]
    assert len(errors) == 1, nb.cells[0].outputs
    assert errors[0].ename == "ConfigError"
    assert errors[0].evalue.startswith("no API key for openai: set OPENAI_API_KEY")
    assert "StdinNotImplementedError" not in json.dumps(nb)


def test_a_kernel_that_allows_input_prompts_for_the_key(monkeypatch, tmp_path):
    """A front end that answers input requests (JupyterLab, a console) gets the getpass prompt;
    the key typed there is used and shows up nowhere."""
    from jupyter_client.manager import start_new_kernel

    from batchmagic.simulator import SimulatorThread

    _kernel_env(monkeypatch, tmp_path)
    sim = SimulatorThread(api_key=KERNEL_SENTINEL).start()  # answers only with the typed key
    monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        cell = NO_KEY_CELL.replace("gpt-4o-mini", "sim-chat").strip() + '["output"][0]'
        msg_id = kc.execute(cell, allow_stdin=True)
        request = kc.get_stdin_msg(timeout=120)
        assert request["msg_type"] == "input_request" and request["content"]["password"]
        assert "API key for openai" in request["content"]["prompt"]
        kc.input(KERNEL_SENTINEL)
        outputs = []
        while True:
            msg = kc.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            outputs.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        sim.stop()
    results = [m["content"]["data"]["text/plain"] for m in outputs
               if m["msg_type"] == "execute_result"]
    assert results == ["'echo: hi'"], outputs
    assert KERNEL_SENTINEL not in repr(outputs) and "SENTINEL" not in repr(outputs)
