"""Generation parameters (OpenAI names, as they sit in the request body) -> each engine's own.

Every engine accepts a documented set; anything else is a ``ConfigError`` before a row runs, naming
the parameters the engine does take. ``max_completion_tokens`` / ``max_new_tokens`` are read as
``max_tokens`` and ``repeat_penalty`` as ``repetition_penalty`` everywhere. ``n`` may only be 1
(a row has one output).

The mappings are plain functions from a params dict to keyword arguments, so tests can check
them against small recording stand-ins for classes that cannot be installed here (vLLM's and
FastDeploy's ``SamplingParams``).

``response_format`` (OpenAI's shape: ``{"type": "json_schema", "json_schema": {"schema": ...}}``
or ``{"type": "json_object"}``) becomes ``structured(params)``: ``{"json": schema}`` or
``{"json_object": True}``, the form every engine's constrained decoding starts from. ``n`` (several
choices of one prompt) is ``choices(params)``.
"""

from __future__ import annotations

from typing import Any

from .._errors import ConfigError
from ._registry import find

_ALIASES = {"max_completion_tokens": "max_tokens", "max_new_tokens": "max_tokens",
            "repeat_penalty": "repetition_penalty"}

#: embeddings take no generation parameters
EMBEDDING_OK = frozenset({"encoding_format", "dimensions", "user"})
_CHAT_ONLY = frozenset({"chat_template_kwargs"})
_FORMAT_TYPES = ("json_schema", "json_object", "text")


def normalise(params: dict) -> dict:
    """Aliases folded in (``max_completion_tokens`` -> ``max_tokens``, ...)."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        name = _ALIASES.get(k, k)
        if name in out and out[name] != v:
            raise ConfigError(f"{k!r} and {name!r} are the same parameter; give one")
        out[name] = v
    return out


def check(engine: str, kind: str, params: dict) -> dict:
    """Validate one body's parameters for ``engine`` (the parameters each engine takes are in its
    ``_registry`` record); returns them normalised."""
    params = normalise(params)
    if kind == "embedding":
        unknown = sorted(set(params) - EMBEDDING_OK)
        if unknown:
            raise ConfigError(f"embeddings on the {engine} engine take no generation parameters; "
                              f"got {', '.join(map(repr, unknown))}")
        if params.get("encoding_format") not in (None, "float", "base64"):
            raise ConfigError("encoding_format must be 'float' or 'base64'")
        if params.get("dimensions") is not None:
            raise ConfigError(f"the {engine} engine cannot shorten embeddings (dimensions=)")
        return params
    allowed = find(engine).params
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigError(
            f"the {engine} engine does not take {', '.join(map(repr, unknown))}; it takes "
            f"{', '.join(sorted(allowed))}"
        )
    if kind != "chat":
        bad = sorted(set(params) & _CHAT_ONLY)
        if bad:
            raise ConfigError(f"{', '.join(map(repr, bad))} applies to chat only, not {kind}")
    _check_values(params)
    structured(params)
    return params


def structured(params: dict) -> dict | None:
    """The constraint ``response_format`` asks for: ``{"json": schema}``, ``{"json_object":
    True}``, or None (no constraint: none given, or ``{"type": "text"}``). A ConfigError says
    what is wrong with one that is neither."""
    fmt = params.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in _FORMAT_TYPES:
        raise ConfigError("response_format must be {'type': 'json_schema', 'json_schema': "
                          "{'name': ..., 'schema': {...}}}, {'type': 'json_object'} or "
                          f"{{'type': 'text'}}; got {fmt!r}"[:300])
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise ConfigError("response_format of type json_schema needs json_schema={'name': ..., "
                          "'schema': {...}} with the JSON Schema as a dict")
    remote = _remote_ref(schema)
    if remote is not None:  # a grammar builder would try to download it
        raise ConfigError(f"the JSON Schema refers to {remote!r}: an offline engine takes only "
                          "references inside the schema ('#/$defs/...')")
    return {"json": schema}


def _remote_ref(schema: Any) -> str | None:
    """The first ``$ref`` that points outside the schema, or None."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return ref
        values = schema.values()
    elif isinstance(schema, list):
        values = schema
    else:
        return None
    return next((r for r in map(_remote_ref, values) if r is not None), None)


def choices(params: dict) -> int:
    """How many answers the request asks for (``n``, default 1)."""
    n = params.get("n")
    return 1 if n is None else n


def _check_values(p: dict) -> None:
    def number(name: str, lo: float | None = None, hi: float | None = None, integer=False) -> None:
        if name not in p or p[name] is None:
            return
        v = p[name]
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok:
            raise ConfigError(f"{name} must be {'an integer' if integer else 'a number'}, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise ConfigError(f"{name} must be {rng}, got {v!r}")

    number("temperature", 0)
    number("top_p", 0, 1)
    number("top_k", -1, integer=True)
    number("min_p", 0, 1)
    number("max_tokens", 1, integer=True)
    number("min_tokens", 0, integer=True)
    number("seed", integer=True)
    number("presence_penalty", -2, 2)
    number("frequency_penalty", -2, 2)
    number("repetition_penalty", 0)
    number("typical_p", 0, 1)
    number("n", 1, integer=True)
    stop = p.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise ConfigError("stop must be a string or a list of strings")
    bad = p.get("bad_words")
    if bad is not None and not (isinstance(bad, list) and all(isinstance(s, str) for s in bad)):
        raise ConfigError("bad_words must be a list of strings")
    ctk = p.get("chat_template_kwargs")
    if ctk is not None and not isinstance(ctk, dict):
        raise ConfigError("chat_template_kwargs must be a dict, e.g. {'enable_thinking': False}")


def _stops(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else list(stop)


# -- llama.cpp ------------------------------------------------------------------------------------


def llama_cpp_args(params: dict, max_tokens: int) -> dict:
    """Keyword arguments for ``Llama.create_chat_completion`` / ``create_completion``. Parameters
    the row does not set keep llama-cpp-python's defaults. (``response_format`` becomes a
    grammar and ``n`` a number of calls: the engine does both.)"""
    p = normalise(params)
    args: dict[str, Any] = {"max_tokens": max_tokens}
    for name in ("temperature", "top_p", "top_k", "min_p", "typical_p", "seed",
                 "presence_penalty", "frequency_penalty"):
        if p.get(name) is not None:
            args[name] = p[name]
    if p.get("repetition_penalty") is not None:
        args["repeat_penalty"] = p["repetition_penalty"]
    if p.get("stop") is not None:
        args["stop"] = _stops(p["stop"])
    if args.get("top_k", 0) < 0:
        args["top_k"] = 0  # "no top-k cut" is 0 in llama.cpp
    return args


# -- transformers ---------------------------------------------------------------------------------


def transformers_args(params: dict, max_tokens: int) -> dict:
    """Keyword arguments for ``model.generate``; parameters the row does not set keep the model's
    generation config. ``seed`` is handled by the caller (set per batch)."""
    p = normalise(params)
    args: dict[str, Any] = {"max_new_tokens": max_tokens}
    temperature = p.get("temperature")
    if temperature is not None:
        if temperature == 0:
            args["do_sample"] = False
        else:
            args["do_sample"] = True
            args["temperature"] = float(temperature)
    sampling = args.get("do_sample") is not False
    if sampling:
        if p.get("top_p") is not None:
            args["top_p"] = float(p["top_p"])
        if p.get("top_k") is not None:
            args["top_k"] = max(0, int(p["top_k"]))
        if p.get("min_p") is not None:
            args["min_p"] = float(p["min_p"])
    if p.get("min_tokens"):
        args["min_new_tokens"] = int(p["min_tokens"])
    if p.get("repetition_penalty") is not None:
        args["repetition_penalty"] = float(p["repetition_penalty"])
    if p.get("stop") is not None:
        args["stop_strings"] = _stops(p["stop"])
    return args


# -- vLLM -----------------------------------------------------------------------------------------

_VLLM_DIRECT = ("temperature", "top_p", "top_k", "min_p", "seed", "min_tokens", "presence_penalty",
                "frequency_penalty", "repetition_penalty", "stop_token_ids", "bad_words",
                "ignore_eos", "skip_special_tokens", "include_stop_str_in_output")


def vllm_sampling_kwargs(params: dict) -> dict:
    """Keyword arguments for ``vllm.SamplingParams``: ``n`` choices in one request, as vLLM does
    it. Without a max_tokens the worker sets one once it knows the prompt's length (batchmagic's
    default, capped to fit). ``response_format`` is not among them: the worker builds vLLM's
    structured-output object from ``structured(params)``."""
    p = normalise(params)
    kw: dict[str, Any] = {"n": choices(p)}
    if p.get("max_tokens") is not None:
        kw["max_tokens"] = p["max_tokens"]
    for name in _VLLM_DIRECT:
        if p.get(name) is not None:
            kw[name] = p[name]
    if kw.get("top_k") == 0:
        kw["top_k"] = -1  # OpenAI "no cut"; vLLM accepts -1 (and 0 in newer versions)
    if p.get("stop") is not None:
        kw["stop"] = _stops(p["stop"])
    return kw


# -- FastDeploy -----------------------------------------------------------------------------------

_FD_DIRECT = ("temperature", "top_p", "top_k", "min_p", "seed", "min_tokens", "presence_penalty",
              "frequency_penalty", "repetition_penalty", "stop_token_ids", "bad_words",
              "reasoning_max_tokens")


def fastdeploy_sampling_kwargs(params: dict) -> dict:
    """Keyword arguments for ``fastdeploy.SamplingParams`` (max_tokens and response_format as for
    vLLM). ``n`` is 1 here: the worker sends ``n`` copies of the prompt, FastDeploy's offline
    ``LLM`` answering one output per prompt."""
    p = normalise(params)
    kw: dict[str, Any] = {"n": 1}
    if p.get("max_tokens") is not None:
        kw["max_tokens"] = p["max_tokens"]
    for name in _FD_DIRECT:
        if p.get(name) is not None:
            kw[name] = p[name]
    if kw.get("top_k") == -1:
        kw["top_k"] = 0  # FastDeploy's "no cut" is 0
    if p.get("stop") is not None:
        kw["stop"] = _stops(p["stop"])
    if "reasoning_max_tokens" in kw and "max_tokens" in kw and \
            kw["reasoning_max_tokens"] > kw["max_tokens"]:
        raise ConfigError("reasoning_max_tokens must not exceed max_tokens")
    return kw
