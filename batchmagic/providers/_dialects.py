"""Classify a provider's error answer into what the run should do about it.

Every OpenAI-compatible provider returns errors a little differently. This module turns one answer
(HTTP status + parsed JSON body) into one of five categories:

=============  =====================================================================================
``fatal``      applies to every row: stop the whole run, no retry (bad key, no quota / arrears,
               no such model)
``rate_limit`` throttled: retry after a wait and slow the whole run down
``transient``  server-side trouble: retry this row with backoff
``context``    this row's prompt does not fit the model: row error, no retry
``row``        anything else about this one request (bad parameter, content filter): row error
=============  =====================================================================================

Decision order (first hit wins), all of it driven by the per-dialect tables below:

1. the dialect's *message* rules (a few codes mean two things and only the message tells them apart,
   e.g. DashScope ``Throttling.AllocationQuota`` is TPM throttling *or* "Free allocated quota exceeded");
2. the error ``code`` in the dialect's table, then in the generic OpenAI table;
3. the error ``type`` in the same tables;
4. the message says the prompt is too long            -> ``context``;
5. the code or message says the model does not exist -> ``fatal``;
6. the HTTP status: 401/402/403 fatal, 404 row, 408/409/425 transient, 429 rate_limit (fatal when the
   message is about billing), other 4xx row, 5xx/529 transient (rate_limit when the message asks us
   to slow down).

On "503 overloaded": we follow what each provider's own error page tells the caller to do. OpenAI's
"503 - Slow Down" page says *reduce your request rate*, and DashScope's ``503 ModelServingError`` says
"Your requests are being throttled due to system capacity limits": those are ``rate_limit`` (slow the
whole run). OpenAI's "503 - The engine is currently overloaded" and DeepSeek's "503 - Server
Overloaded" only say "retry after a brief wait", so they stay ``transient`` (retry the row, do not
throttle the run). Volcengine Ark's ``ServerOverloaded`` comes with HTTP 429 and so is ``rate_limit``.

Sources (checked while writing this file; see the ``docs`` field of each preset as well):

* OpenAI        https://platform.openai.com/docs/guides/error-codes
                https://help.openai.com/en/articles/6614457-troubleshooting-api-usage-and-spend-limits
* DashScope     https://help.aliyun.com/zh/model-studio/error-code
                https://www.alibabacloud.com/help/en/model-studio/error-code
* Ark           https://www.volcengine.com/docs/82379/1299023
* Qianfan v2    https://cloud.baidu.com/doc/qianfan-api/s/Om9b4yj3w
* Qianfan v1    https://cloud.baidu.com/doc/WENXINWORKSHOP/s/tlmyncueh  (numeric ``error_code``)
                https://cloud.baidu.com/doc/WENXINWORKSHOP/s/hlzic283e  (336501/336502 in HTTP 200)
* DeepSeek      https://api-docs.deepseek.com/quick_start/error_codes
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "FATAL",
    "RATE_LIMIT",
    "TRANSIENT",
    "CONTEXT",
    "ROW",
    "CATEGORIES",
    "DIALECTS",
    "Classified",
    "classify",
]

FATAL = "fatal"
RATE_LIMIT = "rate_limit"
TRANSIENT = "transient"
CONTEXT = "context"
ROW = "row"

CATEGORIES = (FATAL, RATE_LIMIT, TRANSIENT, CONTEXT, ROW)

_MESSAGE_LIMIT = 500


@dataclass(frozen=True)
class Classified:
    category: str
    code: str | None  # provider error code as a string, e.g. "insufficient_quota", "336501"
    message: str  # the provider's message, trimmed to 500 chars


@dataclass(frozen=True)
class _Dialect:
    """One provider's error conventions. Empty fields inherit the generic OpenAI tables."""

    codes: Mapping[str, str] = field(default_factory=dict)
    """error ``code`` (or ``type``) -> category. Matched exactly, then case-insensitively."""
    prefixes: tuple[tuple[str, str], ...] = ()
    """code prefixes -> category, for families such as ``SensitiveContentDetected.Violence``."""
    message_rules: tuple[tuple[str, str], ...] = ()
    """lower-case message substrings checked *before* codes (codes with two meanings)."""
    billing_phrases: tuple[str, ...] | None = None
    """phrases that turn a 429 into ``fatal``; ``None`` inherits the generic list."""


# --------------------------------------------------------------------------------------------------
# Generic phrases (lower-case substrings of the provider's message)
# --------------------------------------------------------------------------------------------------

# The row's prompt is too long. Each phrase is the wording of a real server:
_CONTEXT_PHRASES = (
    "context_length_exceeded",  # OpenAI code, also echoed in messages by proxies
    "maximum context length",  # OpenAI, vLLM, DeepSeek: "This model's maximum context length is N"
    "context length exceeded",
    "longer than the model's context length",  # vLLM / Together style
    "exceeds the available context size",  # llama.cpp server (exceed_context_size_error)
    "exceed_context_size",  # llama.cpp type echoed in a message
    "range of input length should be",  # DashScope: "Range of input length should be [1, 30720]"
    "total message token length exceed model limit",  # DashScope Qwen-Long
    "exceed max message tokens",  # Ark OutofContextError: "Total tokens of image and text exceed..."
    "prompt tokens too long",  # Qianfan tokens_too_long
    "the max input characters is",  # Qianfan characters_too_long
    "prompt is too long",  # Anthropic-compatible gateways
    "input is too long",
    "prompt too long",
    "input too long",
    "too many tokens in the prompt",
    "exceeds the maximum number of tokens allowed",
)

# The requested model does not exist / is not available: every row will fail the same way.
_MODEL_WORDS = ("model",)
_MISSING_PHRASES = (
    "does not exist",  # OpenAI "The model `x` does not exist or you do not have access to it."; vLLM
    "not exist",  # DashScope "Model not exist."
    "not found",  # Ollama 'model "x" not found, try pulling it first'
    "can not be found",  # DashScope "Model can not be found."
    "cannot be found",
    "no such model",
    "is offline",  # Qianfan model_offline "The model is offline"
)

# A 429 that is about money, not speed (OpenAI: "You exceeded your current quota, please check your
# plan and billing details"; DeepSeek uses 402 for the same thing).
_BILLING_PHRASES = (
    "exceeded your current quota",
    "check your plan and billing",
    "insufficient_quota",
    "insufficient balance",
    "credit balance",
    "out of credit",
    "spend limit",
    "arrear",
    "overdue",
    "payment required",
)

# A 5xx that explicitly asks the caller to send fewer requests.
_THROTTLE_PHRASES = (
    "slow down",  # OpenAI 503 "Slow Down": reduce your request rate
    "throttl",  # DashScope 503 ModelServingError "...requests are being throttled..."
    "too many requests",
    "rate limit",
)

# --------------------------------------------------------------------------------------------------
# Per-dialect tables
# --------------------------------------------------------------------------------------------------

# Generic OpenAI rules, the fallback for every OpenAI-compatible server (vLLM, llama.cpp, Ollama...).
# https://platform.openai.com/docs/guides/error-codes and the help-center pages on 429s.
_OPENAI = _Dialect(
    codes={
        # auth / account / region: 401, 403
        "invalid_api_key": FATAL,
        "invalid_authentication": FATAL,
        "unsupported_country_region_territory": FATAL,
        "authentication_error": FATAL,  # type used by DeepSeek and Anthropic-style gateways
        "permission_error": FATAL,
        # billing: 429 whose error.type is insufficient_quota; error.code names the cause
        "insufficient_quota": FATAL,
        "credit_balance_exhausted": FATAL,
        "organization_spend_limit_exceeded": FATAL,
        "project_spend_limit_exceeded": FATAL,
        "organization_usage_limit_exceeded": FATAL,
        "billing_not_active": FATAL,
        # model
        "model_not_found": FATAL,
        # throttling
        "rate_limit_exceeded": RATE_LIMIT,
        "slow_down": RATE_LIMIT,
        "rate_limit_error": RATE_LIMIT,
        "requests": RATE_LIMIT,  # OpenAI puts the exhausted limit in type: "requests" / "tokens"
        "tokens": RATE_LIMIT,
        # prompt too long
        "context_length_exceeded": CONTEXT,
        "exceed_context_size_error": CONTEXT,  # llama.cpp server type
        # content filters: row errors
        "content_filter": ROW,
        "content_policy_violation": ROW,
        "invalid_prompt": ROW,
        # server trouble (mostly seen as error events inside a 200 stream)
        "server_error": TRANSIENT,
        "internal_error": TRANSIENT,
        "overloaded_error": TRANSIENT,
        "unavailable_error": TRANSIENT,  # llama.cpp "Loading model" (503)
        "timeout": TRANSIENT,
    },
)

# Alibaba Cloud Model Studio (Bailian / DashScope), compatible mode. Codes appear both in the
# DashScope spelling (``Throttling.RateQuota``) and the OpenAI-compatible spelling (``limit_requests``).
# https://help.aliyun.com/zh/model-studio/error-code (section "429-Throttling.AllocationQuota/
# insufficient_quota": *TPS/TPM throttling*, not exhausted credit -- unlike OpenAI).
_DASHSCOPE = _Dialect(
    codes={
        # 401 / 403: key, account, access
        "InvalidApiKey": FATAL,
        "invalid_api_key": FATAL,
        "NOT AUTHORIZED": FATAL,
        "AccessDenied": FATAL,
        "access_denied": FATAL,
        "AccessDenied.Unpurchased": FATAL,
        "Model.AccessDenied": FATAL,
        "App.AccessDenied": FATAL,
        "Workspace.AccessDenied": FATAL,
        "AllocationQuota.FreeTierOnly": FATAL,  # 403: free tier used up, "free tier only" mode on
        # money: 400 Arrearage, 429 bill overdue / not purchased
        "Arrearage": FATAL,
        "PrepaidBillOverdue": FATAL,
        "PostpaidBillOverdue": FATAL,
        "CommodityNotPurchased": FATAL,
        # model
        "ModelNotFound": FATAL,
        "model_not_found": FATAL,
        "model_not_supported": FATAL,  # 404 "Unsupported model xxx for OpenAI compatibility mode"
        "WorkSpaceNotFound": FATAL,
        # 429 throttling (RPS/RPM, burst, TPS/TPM)
        "Throttling": RATE_LIMIT,
        "Throttling.RateQuota": RATE_LIMIT,
        "LimitRequests": RATE_LIMIT,
        "limit_requests": RATE_LIMIT,
        "Throttling.BurstRate": RATE_LIMIT,
        "limit_burst_rate": RATE_LIMIT,
        "Throttling.AllocationQuota": RATE_LIMIT,
        "insufficient_quota": RATE_LIMIT,  # DashScope: TPM throttling, see the docstring above
        "ModelServingError": RATE_LIMIT,  # 503 "...throttled due to system capacity limits"
        # content inspection: row errors
        "DataInspectionFailed": ROW,
        "data_inspection_failed": ROW,
        "FaqRuleBlocked": ROW,
        "CustomRoleBlocked": ROW,
        "IPInfringementSuspect": ROW,
        # server side
        "InternalError": TRANSIENT,
        "InternalError.Timeout": TRANSIENT,
        "SystemError": TRANSIENT,
        "ModelServiceFailed": TRANSIENT,
        "ModelUnavailable": TRANSIENT,  # 503 "Model is unavailable, please try again later."
        "RequestTimeOut": TRANSIENT,  # 500/408 "Request timed out, please try again later."
        # NB: "InternalError.Algo" is deliberately absent: it is a 400 for "Missing Content-Length of
        # multimodal url" and a 500 for "inference internal error"; the HTTP status decides.
    },
    message_rules=(
        # Throttling.AllocationQuota is also sent with "Free allocated quota exceeded." when the free
        # quota has expired and the model cannot be paid for: waiting does not help.
        ("free allocated quota exceeded", FATAL),
        ("make sure your account is in good standing", FATAL),  # Arrearage message
    ),
    # "You exceeded your current quota, please check your plan and billing details" is TPM
    # throttling on DashScope, so the generic billing phrases must not make a 429 fatal here.
    billing_phrases=("free allocated quota exceeded", "bill is overdue", "good standing"),
)

# Volcengine Ark (Doubao). Errors are {"error": {"code", "message", "param", "type"}} where type is
# the HTTP reason (BadRequest, TooManyRequests...). https://www.volcengine.com/docs/82379/1299023
_ARK = _Dialect(
    codes={
        "AuthenticationError": FATAL,  # 401
        "AccountOverdueError": FATAL,  # 403: balance < 0
        "AccessDenied": FATAL,  # 403
        "InvalidAccountStatus": FATAL,
        "InvalidSubscription": FATAL,  # 403 coding-plan subscription missing or expired
        "OperationDenied.ServiceNotOpen": FATAL,
        "OperationDenied.ServiceOverdue": FATAL,
        "OperationDenied.PermissionDenied": FATAL,
        "InvalidEndpointOrModel.NotFound": FATAL,  # 404
        "InvalidEndpointOrModel.ModelIDAccessDisabled": FATAL,
        "InvalidEndpoint.NotFound": FATAL,
        "ModelNotOpen": FATAL,  # 404: model service not activated for the account
        "UnsupportedModel": FATAL,
        "QuotaExceeded": FATAL,  # 429: free trial quota used up; activate the model to continue
        "SetLimitExceeded": FATAL,  # 429: "Safe Experience Mode" limit reached, service paused
        "ServerOverloaded": RATE_LIMIT,  # 429 "服务资源紧张，请您稍后重试"
        "RequestBurstTooFast": RATE_LIMIT,  # 429: ramp traffic up more slowly
        "InflightBatchsizeExceeded": RATE_LIMIT,  # 429: max concurrency for the current top-up
        "AccountRateLimitExceeded": RATE_LIMIT,
        "ModelAccountRpmRateLimitExceeded": RATE_LIMIT,
        "ModelAccountTpmRateLimitExceeded": RATE_LIMIT,
        "ModelAccountIpmRateLimitExceeded": RATE_LIMIT,
        "APIAccountRpmRateLimitExceeded": RATE_LIMIT,
        "OutofContextError": CONTEXT,  # 400 "Total tokens of image and text exceed max message tokens"
        "InvalidEndpoint.ClosedEndpoint": TRANSIENT,  # 400 "closed or temporarily unavailable", retry
        "ContentSecurityDetectionError": TRANSIENT,  # the risk-detection service call itself failed
        "InternalServiceError": TRANSIENT,  # 500
        "InternalServerError": TRANSIENT,
    },
    prefixes=(
        ("RateLimitExceeded", RATE_LIMIT),  # .EndpointRPMExceeded, .EndpointTPMExceeded, .Model...
        ("SensitiveContentDetected", ROW),  # .SevereViolation, .Violence, ...
        ("InputTextSensitiveContentDetected", ROW),
        ("InputImageSensitiveContentDetected", ROW),
        ("InputVideoSensitiveContentDetected", ROW),
        ("InputAudioSensitiveContentDetected", ROW),
        ("OutputTextSensitiveContentDetected", ROW),
        ("OutputImageSensitiveContentDetected", ROW),
        ("OutputVideoSensitiveContentDetected", ROW),
        ("OutputAudioSensitiveContentDetected", ROW),
        ("InputTextRiskDetection", ROW),
        ("InputImageRiskDetection", ROW),
        ("OutputTextRiskDetection", ROW),
        ("OutputImageRiskDetection", ROW),
    ),
)

# Baidu Qianfan. v2 (OpenAI compatible): {"error": {"code", "message", "type"}}, HTTP status set.
# v1 / legacy and some throttling answers: HTTP 200 with {"error_code": N, "error_msg": ...} or
# {"code": ..., "msg": ...}. Numeric codes from the v1 table and the official SDK's APIErrorCode enum.
_QIANFAN = _Dialect(
    codes={
        # ---- v2 string codes (https://cloud.baidu.com/doc/qianfan-api/s/Om9b4yj3w) ----
        "malformed_json": ROW,
        "invalid_model": FATAL,  # 400 "model is empty" / 401 "The model does not exist or ..."
        "invalid_messages": ROW,
        "characters_too_long": CONTEXT,
        "tokens_too_long": CONTEXT,
        "invalid_argument": ROW,
        "invalid_image_generation_prompt": ROW,
        "invalid_image_genration_prompt": ROW,  # the docs spell it both ways
        "invalid_image_generation_refer_image": ROW,
        "invalid_image_genration_refer_image": ROW,
        "invalid_image_url": ROW,
        "invalid_plugin_argument": ROW,
        "image_url_unsafe": ROW,
        "no_parameter_permission": FATAL,  # 401
        "invalid_appid": FATAL,  # 401
        "invalid_iam_token": FATAL,  # 401: bearer token invalid / expired / missing "Bearer"
        "system_unsafe": ROW,  # 403, but a content check on this row's system prompt
        "user_setting_unsafe": ROW,
        "functions_unsafe": ROW,
        "account_overdue": FATAL,  # 403
        "model_offline": FATAL,  # 403
        "method_not_supported": FATAL,  # 405: only POST is accepted
        "rpm_rate_limit_exceeded": RATE_LIMIT,
        "tpm_rate_limit_exceeded": RATE_LIMIT,
        "input_tpm_rate_limit_exceeded": RATE_LIMIT,
        "output_tpm_rate_limit_exceeded": RATE_LIMIT,
        "Offline_batch_reasoning_refused": RATE_LIMIT,
        "preemptible_rate_limit_exceeded": RATE_LIMIT,
        "user_rate_limit_exceeded": RATE_LIMIT,
        "cluster_rate_limit_exceeded": RATE_LIMIT,
        "cluster_rpm_rate_limit_exceeded": RATE_LIMIT,
        "cluster_tpm_rate_limit_exceeded": RATE_LIMIT,
        "internal_error": TRANSIENT,
        "dispatch_internal_error": TRANSIENT,
        "image_generation_interal_error": TRANSIENT,
        "image_genration_interal_error": TRANSIENT,
        # v2 error types
        "rate_limit_exceeded": RATE_LIMIT,
        "unsafe_request": ROW,
        "access_denied": FATAL,
        "Internal_error": TRANSIENT,
        # ---- v1 numeric error_code (https://cloud.baidu.com/doc/WENXINWORKSHOP/s/tlmyncueh) ----
        "1": TRANSIENT,  # Unknown error: "请再次请求"
        "2": TRANSIENT,  # Service temporarily unavailable
        "3": FATAL,  # Unsupported openapi method: the API does not exist
        "4": RATE_LIMIT,  # Open api request limit reached (cluster over quota, "请再次请求")
        "6": FATAL,  # No permission to access data
        "13": FATAL,  # Get service token failed
        "14": FATAL,  # IAM Certification failed
        "15": TRANSIENT,  # app not exists or create failed: "重试调用可解决问题"
        "17": FATAL,  # Open api daily request limit reached / billing not enabled / arrears
        "18": RATE_LIMIT,  # Open api qps request limit reached
        "19": FATAL,  # TotalRequestLimitReached (SDK enum; wording not found in the stored docs)
        "100": ROW,  # InvalidRequest (SDK enum)
        "110": FATAL,  # Access token invalid or no longer valid
        "111": FATAL,  # Access token expired (SDK enum APITokenExpired)
        "336000": TRANSIENT,  # InternalError
        "336001": ROW,  # InvalidArgument
        "336002": ROW,  # InvalidJSON
        "336003": ROW,  # InvalidParam: a parameter error, NOT an auth error
        "336004": FATAL,  # PermissionError
        "336005": FATAL,  # APINameNotExist
        "336100": TRANSIENT,  # ServerHighLoad: "try again later" (the SDK retries it)
        "336101": FATAL,  # InvalidHTTPMethod
        "336104": ROW,  # InvalidArgumentSystem
        "336105": ROW,  # InvalidArgumentUserSetting
        "336501": RATE_LIMIT,  # Rate limit reached for RPM
        "336502": RATE_LIMIT,  # Rate limit reached for TPM
    },
)

# DeepSeek: plain OpenAI envelope, but error.code is often just "invalid_request_error" whatever
# happened (401, 402, 400 "Content Exists Risk"), so the HTTP status decides: 402 Insufficient Balance
# -> fatal, 422 -> row, 429 -> rate_limit, 500 -> transient, 503 Server Overloaded -> transient.
_DEEPSEEK = _Dialect()

DIALECTS: dict[str, _Dialect] = {
    "openai": _OPENAI,
    "dashscope": _DASHSCOPE,
    "ark": _ARK,
    "qianfan": _QIANFAN,
    "deepseek": _DEEPSEEK,
}

#: the generic dialect's lookup order: OpenAI first, then every preset's own codes
_GENERIC_ORDER = (_OPENAI, _QIANFAN, _ARK, _DASHSCOPE)


# --------------------------------------------------------------------------------------------------
# Envelope parsing
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Envelope:
    code: str | None
    type: str | None
    message: str
    numeric: int | None  # a code that is an HTTP status (vLLM and llama.cpp put 400 / 404 there)


_SUCCESS_CODES = {"", "0", "200", "ok", "success"}
_SUCCESS_KEYS = ("choices", "data", "output", "object")


def _text(value: object) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (str, int, float)):
        text = str(value).strip()
        return text or None
    return None


def _status_like(code: str | None) -> int | None:
    if code is not None and code.isdigit() and len(code) == 3:
        number = int(code)
        if 400 <= number <= 599:
            return number
    return None


def _envelope(payload: object) -> _Envelope | None:
    """The error inside ``payload``, or ``None`` when the body is not an error envelope."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict) and error:
        # OpenAI, Ark, DashScope compatible mode, Qianfan v2, llama.cpp, Ollama /v1
        code = _text(error.get("code"))
        kind = _text(error.get("type"))
        message = _text(error.get("message")) or _text(error.get("msg")) or ""
        return _Envelope(code or kind, kind, message, _status_like(code))
    if isinstance(error, str) and error.strip():
        # {"error": "model 'x' not found"}: Ollama native, many small servers
        return _Envelope(None, None, error.strip(), None)
    if payload.get("error_code") not in (None, 0, "0", ""):
        # Qianfan v1: {"error_code": 336501, "error_msg": "Rate limit reached for RPM"}
        code = _text(payload.get("error_code"))
        message = _text(payload.get("error_msg")) or _text(payload.get("message")) or ""
        return _Envelope(code, None, message, None)
    if payload.get("object") == "error":
        # vLLM (older): {"object":"error","message":...,"type":"NotFoundError","code":404}
        code = _text(payload.get("code"))
        kind = _text(payload.get("type"))
        message = _text(payload.get("message")) or ""
        return _Envelope(code or kind, kind, message, _status_like(code))
    code = _text(payload.get("code"))
    if code is not None and code.lower() not in _SUCCESS_CODES:
        if any(key in payload for key in _SUCCESS_KEYS):
            return None
        # DashScope native {"code":"InvalidApiKey","message":...}; Qianfan {"code":...,"msg":...}
        message = _text(payload.get("message")) or _text(payload.get("msg")) or ""
        return _Envelope(code, _text(payload.get("type")), message, _status_like(code))
    detail = payload.get("detail")
    if isinstance(detail, str) and detail.strip() and len(payload) <= 2:
        # FastAPI-style {"detail": "Unauthorized"}
        return _Envelope(None, None, detail.strip(), None)
    return None


# --------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------


def _tables(dialect: _Dialect) -> tuple[_Dialect, ...]:
    """Where codes are looked up, in order. A provider's own dialect falls back on OpenAI's; the
    generic dialect (``base_url=`` servers, gateways, proxies) also knows every preset's codes,
    since gateways pass a provider's errors through (a Qianfan ``336501`` RPM throttle inside an
    HTTP 200 is a throttle wherever it comes from). OpenAI's meaning wins where two differ
    (``insufficient_quota`` is money at OpenAI, TPM throttling at DashScope)."""
    if dialect is _OPENAI:
        return _GENERIC_ORDER
    return (dialect, _OPENAI)


def _lookup(key: str | None, dialect: _Dialect) -> str | None:
    if not key:
        return None
    tables = _tables(dialect)
    for d in tables:
        if key in d.codes:
            return d.codes[key]
    folded = key.casefold()
    for d in tables:
        for name, category in d.codes.items():
            if name.casefold() == folded:
                return category
    for d in tables:
        for prefix, category in d.prefixes:
            if key.startswith(prefix):
                return category
    return None


def _has(message: str, phrases: tuple[str, ...]) -> bool:
    return any(phrase in message for phrase in phrases)


def _model_missing(message: str) -> bool:
    return _has(message, _MODEL_WORDS) and _has(message, _MISSING_PHRASES)


def _by_status(status: int, message: str, dialect: _Dialect) -> str:
    billing = _BILLING_PHRASES if dialect.billing_phrases is None else dialect.billing_phrases
    if status in (401, 402, 403):
        return FATAL
    if status in (408, 409, 425):
        return TRANSIENT
    if status == 429:
        return FATAL if _has(message, billing) else RATE_LIMIT
    if 400 <= status < 500:
        return ROW  # 400 bad request, 404 not about the model, 413, 415, 422 ...
    if status >= 500:
        return RATE_LIMIT if _has(message, _THROTTLE_PHRASES) else TRANSIENT
    return ROW  # 1xx / 3xx: nothing sensible to retry


def classify(dialect: str, status: int, payload: object | None) -> Classified | None:
    """Classify one answer. ``payload`` is the parsed JSON body, or ``None`` if it was not JSON.

    Returns ``None`` for a success: HTTP 2xx whose body is not an error envelope. Providers that put
    errors inside HTTP 200 (Qianfan ``error_code``, error events in a stream) are classified by the
    code inside. Unknown dialect names use the generic OpenAI rules.
    """
    envelope = _envelope(payload)
    ok = 200 <= status < 300
    if ok and envelope is None:
        return None
    rules = DIALECTS.get((dialect or "openai").lower(), _OPENAI)
    if envelope is None:
        envelope = _Envelope(None, None, "", None)
    message = envelope.message or f"HTTP {status}"
    if ok:
        # An error inside a 200: judge it as the status it names, or as a plain bad request.
        status = envelope.numeric or 400
    lowered = envelope.message.lower()

    category: str | None = None
    for phrase, rule_category in (r for d in _tables(rules) for r in d.message_rules):
        if phrase in lowered:
            category = rule_category
            break
    if category is None:
        category = _lookup(envelope.code, rules) or _lookup(envelope.type, rules)
    if category is None and status >= 400 and _has(lowered, _CONTEXT_PHRASES):
        category = CONTEXT
    if category is None and 400 <= status < 500 and _model_missing(lowered):
        category = FATAL
    if category is None:
        category = _by_status(status, lowered, rules)
    return Classified(category, envelope.code, message[:_MESSAGE_LIMIT])
