"""Parsing, validation and answers of the four POST endpoints (OpenAI shapes exactly)."""

from __future__ import annotations

import base64
import hashlib
import random
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ._answers import (
    IMAGE_PART_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    REQUEST_OVERHEAD_TOKENS,
    content_text,
    count_tokens,
    embedding_b64,
    embedding_vector,
    image_color,
    reply_text,
    solid_png,
    truncate_tokens,
)
from ._config import SimConfig
from ._extras import EXTRA_KEYS, Extras, chat_choices, completion_choices, read_extras
from ._faults import model_not_found
from ._http import ApiError

if TYPE_CHECKING:
    from ._app import SimState

MAX_IMAGES_KEPT = 10_000
MAX_MODELS_LISTED = 1_000
MAX_IMAGES_PER_REQUEST = 10


PATHS = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "embedding": "/v1/embeddings",
    "image": "/v1/images/generations",
}


class Job:
    """A parsed, validated request, ready to be answered."""

    __slots__ = ("kind", "model", "tag", "n_inputs", "prompt_tokens", "charge", "ctoks",
                 "text", "finish", "inputs", "dim", "b64", "prompt", "n", "size", "url", "extra")

    def __init__(self, kind: str, model: str, tag: str, prompt_tokens: int, charge: int) -> None:
        self.kind = kind
        self.model = model
        self.tag = tag
        self.prompt_tokens = prompt_tokens
        self.charge = charge
        self.n_inputs: int | None = None
        self.ctoks = 0
        self.extra: Extras | None = None  # n, response_format, tools, logprobs, stream


# ---------------------------------------------------------------------- parsing
def _model(st: SimState, payload: dict[str, Any], default: str | None = None) -> str:
    model = payload.get("model", default)
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    if model in st.missing:
        e = ApiError(404, "")
        e.body = model_not_found(model)
        raise e
    models = st.models
    if model not in models and len(models) < MAX_MODELS_LISTED:
        models[model] = None
    return model


def prep_chat(st: SimState, p: dict[str, Any], cfg: SimConfig) -> Job:
    model = _model(st, p)
    messages = p.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array", param="messages")
    ptoks = REQUEST_OVERHEAD_TOKENS
    user = ""
    for m in messages:
        if not isinstance(m, dict):
            raise ApiError(400, "each message must be an object", param="messages")
        text, images = content_text(m.get("content"))
        ptoks += MESSAGE_OVERHEAD_TOKENS + count_tokens(text) + IMAGE_PART_TOKENS * images
        if m.get("role") == "user":
            user = text
    job = _text_job("chat", model, p, cfg, user, ptoks)
    if not EXTRA_KEYS.isdisjoint(p):
        texts = [content_text(m.get("content"))[0] for m in messages]
        _add_extras(job, p, cfg, user, texts, messages)
    return job


def prep_completion(st: SimState, p: dict[str, Any], cfg: SimConfig) -> Job:
    model = _model(st, p)
    prompt = p.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string or a list of one string",
                       param="prompt")
    job = _text_job("completion", model, p, cfg, prompt, count_tokens(prompt))
    if not EXTRA_KEYS.isdisjoint(p):
        _add_extras(job, p, cfg, prompt, [prompt], None)
    return job


def _max_tokens(p: dict[str, Any]) -> Any:
    mt = p.get("max_completion_tokens")
    return p.get("max_tokens") if mt is None else mt


def _text_job(kind: str, model: str, p: dict[str, Any], cfg: SimConfig, prompt: str,
              ptoks: int) -> Job:
    mt = p.get("max_completion_tokens")
    if mt is None:
        mt = p.get("max_tokens")
    if mt is not None and (not isinstance(mt, int) or isinstance(mt, bool) or mt < 1):
        raise ApiError(400, "max_tokens must be a positive integer", param="max_tokens")
    asked = ptoks + (mt or 0)
    if asked > cfg.context_window:
        raise ApiError(
            400,
            f"This model's maximum context length is {cfg.context_window} tokens. However,"
            f" you requested {asked} tokens ({ptoks} in the messages, {mt or 0} in the "
            "completion). Please reduce the length of the messages or completion.",
            code="context_length_exceeded", param="messages")
    answer = reply_text(cfg.reply, prompt)
    job = Job(kind, model, prompt[:200], ptoks, ptoks + (mt if mt is not None else 16))
    if mt is not None:
        answer, job.ctoks, cut = truncate_tokens(answer, mt)
    else:
        job.ctoks, cut = count_tokens(answer), False
    job.text = answer
    job.finish = "length" if cut else "stop"
    return job


def _add_extras(job: Job, p: dict[str, Any], cfg: SimConfig, prompt: str, texts: list[str],
                messages: list | None) -> None:
    """The slow path: n choices, response_format, tools, logprobs, stream (see _extras)."""
    ex = read_extras(job.kind, p, cfg.reply, prompt, texts, messages, _max_tokens(p))
    job.extra = ex
    job.ctoks = ex.ctoks
    job.text, job.finish = ex.choices[0].text, ex.choices[0].finish
    per_choice = job.charge - job.prompt_tokens
    job.charge = job.prompt_tokens + per_choice * len(ex.choices)  # TPM counts every choice


def prep_embedding(st: SimState, p: dict[str, Any], cfg: SimConfig) -> Job:
    model = _model(st, p)
    raw = p.get("input")
    inputs: list[str]
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and raw:
        if all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
            inputs = [" ".join(map(str, raw))]  # one token-id array
        elif all(isinstance(x, str) for x in raw):
            inputs = raw
        elif all(isinstance(x, list) and all(isinstance(t, int) for t in x) for x in raw):
            inputs = [" ".join(map(str, x)) for x in raw]
        else:
            raise ApiError(400, "'input' must be a string, an array of strings or an array"
                           " of token arrays", param="input")
    else:
        raise ApiError(400, "'input' must be a non-empty string or array", param="input")
    if len(inputs) > cfg.max_embedding_inputs:
        raise ApiError(400, f"Too many inputs. The max number of inputs is "
                       f"{cfg.max_embedding_inputs}. We recommend sending smaller batches.",
                       param="input")
    dim = p.get("dimensions")
    if dim is None:
        dim = cfg.embedding_dim
    elif not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 65536:
        raise ApiError(400, "'dimensions' must be an integer in [1, 65536]",
                       param="dimensions")
    fmt = p.get("encoding_format", "float")
    if fmt not in ("float", "base64", None):
        raise ApiError(400, "'encoding_format' must be 'float' or 'base64'",
                       param="encoding_format")
    ptoks = 0
    for text in inputs:
        n = count_tokens(text)
        if n > cfg.context_window:
            raise ApiError(400, f"This model's maximum context length is "
                           f"{cfg.context_window} tokens, however you requested {n} tokens"
                           " in one input. Please reduce your input.",
                           code="context_length_exceeded", param="input")
        ptoks += n
    job = Job("embedding", model, inputs[0][:200], ptoks, ptoks)
    job.n_inputs = len(inputs)
    job.inputs = inputs
    job.dim = dim
    job.b64 = fmt == "base64"
    return job


def prep_image(st: SimState, p: dict[str, Any], cfg: SimConfig) -> Job:
    model = _model(st, p, "sim-image")
    prompt = p.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "'prompt' must be a non-empty string", param="prompt")
    n = p.get("n", 1)
    if n is None:
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_IMAGES_PER_REQUEST:
        raise ApiError(400, f"'n' must be an integer in [1, {MAX_IMAGES_PER_REQUEST}]",
                       param="n")
    size = p.get("size") or "64x64"
    try:
        w_s, _, h_s = str(size).lower().partition("x")
        w, h = int(w_s), int(h_s)
    except ValueError:
        w = h = 0
    if not (1 <= w <= cfg.max_image_size and 1 <= h <= cfg.max_image_size):
        raise ApiError(400, f"'size' must be WIDTHxHEIGHT, each in [1, "
                       f"{cfg.max_image_size}]", param="size")
    fmt = p.get("response_format") or "b64_json"
    if fmt not in ("b64_json", "url"):
        raise ApiError(400, "'response_format' must be 'b64_json' or 'url'",
                       param="response_format")
    ptoks = count_tokens(prompt)
    job = Job("image", model, prompt[:200], ptoks, ptoks)
    job.n_inputs = n
    job.prompt = prompt
    job.n = n
    job.size = (w, h)
    job.url = fmt == "url"
    return job


# ---------------------------------------------------------------------- answers
def build_chat(st: SimState, job: Job, request: web.BaseRequest | None) -> dict[str, Any]:
    if job.extra is not None:
        return _chat_body(st, job, chat_choices(job.extra))
    return {
        "id": f"chatcmpl-sim{next(st.ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": job.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": job.text, "refusal": None},
            "logprobs": None,
            "finish_reason": job.finish,
        }],
        "usage": {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.ctoks,
                  "total_tokens": job.prompt_tokens + job.ctoks},
        "system_fingerprint": "fp_batchmagic_sim",
    }


def _chat_body(st: SimState, job: Job, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-sim{next(st.ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": job.model,
        "choices": choices,
        "usage": {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.ctoks,
                  "total_tokens": job.prompt_tokens + job.ctoks},
        "system_fingerprint": "fp_batchmagic_sim",
    }


def build_completion(st: SimState, job: Job, request: web.BaseRequest | None
                     ) -> dict[str, Any]:
    if job.extra is not None:
        return {
            "id": f"cmpl-sim{next(st.ids)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": job.model,
            "choices": completion_choices(job.extra),
            "usage": {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.ctoks,
                      "total_tokens": job.prompt_tokens + job.ctoks},
        }
    return {
        "id": f"cmpl-sim{next(st.ids)}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": job.model,
        "choices": [{"text": job.text, "index": 0, "logprobs": None,
                     "finish_reason": job.finish}],
        "usage": {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.ctoks,
                  "total_tokens": job.prompt_tokens + job.ctoks},
    }


def build_embedding(st: SimState, job: Job, request: web.BaseRequest) -> dict[str, Any]:
    inputs = job.inputs
    order = list(range(len(inputs)))
    if st.cfg.shuffle_embeddings and len(order) > 1:
        # Seeded by the inputs so the same request is always shuffled the same way; never
        # the identity, so a client that ignores ``index`` is always caught.
        seed = int.from_bytes(hashlib.sha256("\x00".join(inputs).encode(
            "utf-8", "surrogatepass")).digest()[:8], "big") ^ st.cfg.seed
        random.Random(seed).shuffle(order)
        if order == sorted(order):
            order = order[1:] + order[:1]
    data = []
    for i in order:
        vec = embedding_vector(inputs[i], job.dim)
        emb: Any = base64.b64encode(embedding_b64(vec)).decode("ascii") if job.b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {
        "object": "list",
        "data": data,
        "model": job.model,
        "usage": {"prompt_tokens": job.prompt_tokens, "total_tokens": job.prompt_tokens},
    }


def build_image(st: SimState, job: Job, request: web.BaseRequest) -> dict[str, Any]:
    w, h = job.size
    png = solid_png(image_color(job.prompt), w, h)
    if job.url:
        base = _local_base(request)
        data = []
        for _ in range(job.n):
            image_id = f"img{next(st.ids)}"
            st.images[image_id] = png
            if len(st.images) > MAX_IMAGES_KEPT:
                st.images.popitem(last=False)
            data.append({"url": f"{base}/v1/sim-images/{image_id}.png",
                         "revised_prompt": job.prompt})
    else:
        b64 = base64.b64encode(png).decode("ascii")
        data = [{"b64_json": b64, "revised_prompt": job.prompt} for _ in range(job.n)]
    return {"created": int(time.time()), "data": data}


PREPARE = {
    "chat": prep_chat,
    "completion": prep_completion,
    "embedding": prep_embedding,
    "image": prep_image,
}


BUILD = {
    "chat": build_chat,
    "completion": build_completion,
    "embedding": build_embedding,
    "image": build_image,
}


def call_tag(kind: str, p: dict[str, Any]) -> str | None:
    """Best-effort call-log tag of a request that was not fully parsed (errors, faults)."""
    try:
        if kind == "chat":
            users = [m for m in p.get("messages") or () if m.get("role") == "user"]
            return content_text(users[-1].get("content"))[0][:200] if users else None
        value = p.get("input" if kind == "embedding" else "prompt")
        if isinstance(value, list) and value:
            value = value[0]
        return value[:200] if isinstance(value, str) else None
    except (AttributeError, TypeError):
        return None


def _local_base(request: web.BaseRequest) -> str:
    # The socket's own address, not the Host header: no header value is ever echoed.
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if not sockname:
        return ""
    host, port = sockname[0], sockname[1]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


