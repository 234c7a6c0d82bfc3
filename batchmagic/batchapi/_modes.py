"""Where ``mode="batch-api"`` and ``mode="batch-chat"`` send rows, checked before anything runs.

* ``batch-api``: the provider's Batch API (files + batches, or Ark's TOS jobs). The run's row keys
  stay those of the online endpoint, so answers bought at the batch price serve later online runs.
* ``batch-chat``: DashScope's and Ark's "Batch Chat": the ordinary chat call, queued server-side
  and answered within minutes to hours, at the batch price. It runs through the online
  dispatcher with a long per-request deadline and a very wide window (the provider, not the
  client, does the queueing); row keys are again those of the online endpoint.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .._errors import ConfigError
from ..providers._presets import get_preset
from ..providers._target import Target, resolve_target

BATCH_KINDS = ("chat", "completion", "embedding")
#: requests in flight for Batch Chat: Ark's guide asks for "high concurrency (e.g. 100,000 coroutines)";
#: 1,000 keeps one client's sockets sane and is far beyond what online limits allow
BATCH_CHAT_CONCURRENCY = 1000
#: per-request deadline, seconds: DashScope waits at most 3,600 s server-side; Ark recommends a
#: client timeout of 24-72 hours
BATCH_CHAT_TIMEOUT = {"dashscope": 3600.0 + 300.0, "ark": 24 * 3600.0}
OPTION_KEYS = frozenset({
    "completion_window", "poll_interval", "max_poll_interval", "max_requests", "max_bytes",
    # Ark batch jobs
    "bucket", "output_bucket", "prefix", "region", "openapi_url", "tos_endpoint", "project_name",
    "model_version", "custom_model_id", "access_key", "secret_key",
})
SECRET_OPTIONS = frozenset({"access_key", "secret_key"})
#: options only Ark's job API reads; given to another provider they would be silently ignored
ARK_ONLY_OPTIONS = frozenset({
    "bucket", "output_bucket", "prefix", "region", "openapi_url", "tos_endpoint", "project_name",
    "model_version", "custom_model_id", "access_key", "secret_key",
})
TEXT_OPTIONS = ("bucket", "output_bucket", "region", "project_name", "custom_model_id")
URL_OPTIONS = ("openapi_url", "tos_endpoint")
WINDOW_FORMAT = re.compile(r"[1-9]\d*[hd]")


def check_options(options: Any) -> dict:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ConfigError("batch_options must be a dict, e.g. {'completion_window': '24h'}")
    unknown = set(options) - OPTION_KEYS
    if unknown:
        raise ConfigError(f"unknown batch_options {', '.join(sorted(map(repr, unknown)))}; known: "
                          f"{', '.join(sorted(OPTION_KEYS))}")
    for name in ("poll_interval", "max_poll_interval"):
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ConfigError(f"batch_options[{name!r}] must be a positive number of seconds")
    for name in ("max_requests", "max_bytes"):
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ConfigError(f"batch_options[{name!r}] must be a positive integer")
    _check_text_options(options)
    return dict(options)


def _check_text_options(options: dict) -> None:
    """Types and shapes a provider would refuse only after the upload (each row's error then)."""
    window = options.get("completion_window")
    if window is not None and (not isinstance(window, str)
                               or not WINDOW_FORMAT.fullmatch(window.strip())):
        raise ConfigError(f"batch_options['completion_window'] takes hours or days such as "
                          f"'24h' or '3d', not {window!r}")
    for name in TEXT_OPTIONS:
        value = options.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"batch_options[{name!r}] must be a non-empty string")
    prefix = options.get("prefix")
    if prefix is not None and not isinstance(prefix, str):
        raise ConfigError("batch_options['prefix'] must be a string (a TOS key prefix)")
    version = options.get("model_version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, (str, int))
                                or not str(version).strip()):
        raise ConfigError("batch_options['model_version'] must be a version such as '250615'")
    for name in URL_OPTIONS:
        value = options.get(name)
        if value is not None and (not isinstance(value, str)
                                  or not value.startswith(("http://", "https://"))):
            raise ConfigError(f"batch_options[{name!r}] must be an http(s) URL")


def _check_limits(options: dict, preset: Any) -> None:
    """A file larger than the provider takes is refused whole, after the upload."""
    for name, limit in (("max_requests", preset.batch_max_requests),
                        ("max_bytes", preset.batch_max_bytes)):
        value = options.get(name)
        if value is not None and limit and value > limit:
            raise ConfigError(f"batch_options[{name!r}] is {value:,}, but {preset.name} takes "
                              f"at most {limit:,} per batch file")


def target_for(o: Any, *, need_key: bool = True) -> tuple[Target, str | None]:
    """(the run's target, the base URL requests are actually sent to, if not the target's).
    ``need_key=False`` (an estimate) looks for no key."""
    if o.engine is not None:
        raise ConfigError(f"mode={o.mode!r} sends rows to a provider; drop engine=")
    if o.mode == "batch-chat":
        return _batch_chat(o, need_key)
    if o.kind not in BATCH_KINDS:
        raise ConfigError(f"mode='batch-api' takes kind chat, completion or embedding, not "
                          f"{o.kind!r}")
    if o.cache is False or o.cache is None:
        raise ConfigError("mode='batch-api' records its jobs in the journal (so a crash or a "
                          "restart cannot lose a paid batch); drop cache=False, or pass "
                          "cache='some/folder'")
    o.batch_options = check_options(o.batch_options)
    provider = o.provider
    if provider is not None:
        try:
            preset = get_preset(provider)
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from None
        if preset.name == "ark":
            # Ark's job API is signed with an Access Key pair; the chat API key is not needed
            from ._ark import ArkBatch, ark_window

            base = (o.base_url or preset.resolved_base_url()).rstrip("/")
            ArkBatch(name="ark", options=o.batch_options, wire=None, model=o.model)  # checks
            if o.batch_options.get("completion_window") is not None:
                ark_window(o.batch_options["completion_window"])  # 1d-28d, whole days
            return Target("ark", base, None, preset, preset.dialect), None
        if not preset.batch_api and preset.needs_key:
            raise ConfigError(f"{preset.name} has no Batch API; use mode='online'")
    misplaced = sorted(set(o.batch_options) & ARK_ONLY_OPTIONS)
    if misplaced:
        raise ConfigError(f"batch_options {', '.join(map(repr, misplaced))} apply to "
                          "provider='ark' (its TOS files and signed job API) only")
    target = resolve_target(o.provider, o.base_url, o.api_key, o.kind, need_key=need_key)
    window = o.batch_options.get("completion_window")
    preset = target.preset
    if preset is not None:
        _check_limits(o.batch_options, preset)
    if window is not None and preset is not None and preset.batch_completion_windows \
            and window not in preset.batch_completion_windows:
        shown = preset.batch_completion_windows
        listed = ", ".join(shown) if len(shown) <= 4 else f"{shown[0]} to {shown[-1]}"
        raise ConfigError(f"{preset.name} takes completion_window {listed}, not {window!r}")
    return target, None


def _batch_chat(o: Any, need_key: bool) -> tuple[Target, str | None]:
    target = resolve_target(o.provider, o.base_url, o.api_key, o.kind, need_key=need_key)
    preset = target.preset
    if o.kind != "chat":
        raise ConfigError("mode='batch-chat' is for chat")
    if preset is None or not preset.batch_chat_base_url:
        with_it = "dashscope, ark"
        raise ConfigError(f"mode='batch-chat' needs a provider with a Batch Chat endpoint "
                          f"({with_it}); {target.name} has none")
    if o.batch_options:
        raise ConfigError("batch_options apply to mode='batch-api'")
    o.timeout = o.timeout or BATCH_CHAT_TIMEOUT.get(preset.name, 3600.0)
    o.concurrency = o.concurrency or BATCH_CHAT_CONCURRENCY
    return target, preset.batch_chat_base_url.rstrip("/")
