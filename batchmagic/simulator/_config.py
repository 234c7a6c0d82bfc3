"""SimConfig: every knob of the simulator, its CLI flags and live JSON patches."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: environment variable read for the API key when ``--api-key`` is not given (keeps it out of ps)
API_KEY_ENV = "BATCHMAGIC_SIM_API_KEY"
#: likewise for the Secret Access Key the Ark-shaped job API and the TOS stand-in verify
ARK_SECRET_KEY_ENV = "BATCHMAGIC_SIM_ARK_SECRET_KEY"

FAULT_NAMES = (
    "500", "502", "503", "504", "529", "429", "insufficient_quota", "401", "403", "404_model",
    "400_context", "reset_before", "reset_after", "hang", "trickle", "truncated", "non_json",
    "invalid_utf8", "wrong_shape", "error_200", "invalid_json", "schema_mismatch", "stream_cut",
    "stream_eof", "malformed_chunk", "stream_stall",
)
LATENCY_DISTS = ("fixed", "uniform", "exponential", "lognormal")
RETRY_AFTER_FORMATS = ("seconds", "ms", "http-date", "none")
ERROR_200_CODES = (336501, 336502, 18)
#: fields fixed for the life of a server (a live patch cannot move the socket)
STARTUP_ONLY = frozenset({"host", "port", "allow_remote"})


@dataclass
class SimConfig:
    """Configuration of the simulator. Every field is also a CLI flag (``--field-name``).

    All fields except ``host``, ``port`` and ``allow_remote`` can be changed while the server
    runs (``POST /_sim/config`` or ``SimulatorProcess.configure``).
    """

    # --- network
    host: str = "127.0.0.1"  #: bind address; non-loopback needs ``allow_remote``
    port: int = 0  #: 0 = pick a free port
    allow_remote: bool = False  #: allow binding a non-loopback host

    # --- answers
    reply: str = "echo"  #: "echo" | "fixed:<text>" | "length:<N>" (see _answers.reply_text)
    seed: int = 0  #: seeds latency jitter and embedding shuffles
    embedding_dim: int = 16  #: embedding size when a request gives no ``dimensions``
    shuffle_embeddings: bool = True  #: return ``data`` out of order so clients map by ``index``
    max_embedding_inputs: int = 2048  #: more inputs in one request -> 400
    max_image_size: int = 512  #: largest width/height accepted by images/generations
    missing_models: list[str] = field(default_factory=list)  #: these model names -> 404
    context_window: int = 8192  #: prompt tokens + max_tokens above this -> 400
    api_key: str | None = field(default=None, repr=False)  #: require ``Bearer <key>`` if set

    # --- latency
    latency: float = 0.0  #: seconds before each answer (base of the distribution)
    latency_dist: str = "fixed"  #: fixed | uniform | exponential | lognormal
    latency_jitter: float = 0.0  #: spread of the distribution (see _app.draw_latency)
    per_token_latency: float = 0.0  #: extra seconds per completion token (a stream's gaps)

    # --- capacity (self-hosted server model)
    capacity: int | None = None  #: K: above K in flight, latency *= in_flight / K
    overload: int | None = None  #: above this many in flight -> 503 at once (default 2K)

    # --- rate limits (OpenAI style token buckets)
    rpm: float | None = None  #: requests per minute; None = unlimited
    tpm: float | None = None  #: tokens per minute (prompt + max_tokens or 16); None = unlimited
    burst: float = 1.0  #: bucket capacity in seconds' worth of the rate
    retry_after_format: str = "seconds"  #: seconds | ms | http-date | none
    #: send this Retry-After text as it is instead of the computed wait: a misbehaving server
    #: ("0", "-1", "NaN") or a daily quota ("86400")
    retry_after_value: str | None = None
    ratelimit_headers: bool = True  #: send x-ratelimit-* headers on every answer
    #: [(at_seconds, {field: value}), ...] applied automatically; times count from when the
    #: schedule was set (server start for a startup schedule)
    schedule: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    # --- fault injection
    faults: dict[str, float] = field(default_factory=dict)  #: fault name -> probability
    fault_seed: int = 0  #: seeds the per-body fault draws
    fault_attempts: int = 1  #: a body can be faulted only on its first N arrivals
    hang_seconds: float = 3600.0  #: ``hang`` (``stream_stall``) sleeps this long, then answers
    trickle_interval: float = 0.2  #: seconds between bytes of the ``trickle`` fault
    error_200_code: int = 336501  #: 336501 (RPM), 336502 (TPM) or 18 (QPS)

    # --- call log
    log_calls: bool = True  #: keep a record of every request in memory
    call_log_path: str | None = None  #: also append JSONL records here (mode 0600)

    # --- Batch APIs (files + batches; Ark jobs over a TOS stand-in): see _batches
    batch_seconds: float = 1.0  #: seconds a batch takes to run all its requests
    batch_day_seconds: float = 60.0  #: seconds one day of a completion window lasts ("24h")
    batch_error_rate: float = 0.0  #: share of lines answered 400 with ``"error": null``
    batch_fault_rate: float = 0.0  #: share of lines failed into the error file
    batch_reverse: bool = True  #: write result files in reverse order (join by custom_id!)
    ark_access_key: str = "AKLTbatchmagicsim"  #: Access Key ID the Ark API and TOS accept
    #: its Secret Access Key (prefer the BATCHMAGIC_SIM_ARK_SECRET_KEY env var); None refuses all
    ark_secret_key: str | None = field(default="batchmagic-sim-secret", repr=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ValueError for an inconsistent configuration; normalises a few fields."""
        if self.api_key == "":
            self.api_key = None
        _check_reply(self.reply)
        if self.latency_dist not in LATENCY_DISTS:
            raise ValueError(f"latency_dist must be one of {LATENCY_DISTS}")
        if self.retry_after_format not in RETRY_AFTER_FORMATS:
            raise ValueError(f"retry_after_format must be one of {RETRY_AFTER_FORMATS}")
        for name in ("latency", "latency_jitter", "per_token_latency", "hang_seconds",
                     "trickle_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("embedding_dim", "max_embedding_inputs", "max_image_size",
                     "context_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.fault_attempts < 0:
            raise ValueError("fault_attempts must be >= 0")
        for name in ("capacity", "overload"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 or None")
        if self.burst <= 0:
            raise ValueError("burst must be > 0")
        for name in ("batch_error_rate", "batch_fault_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.batch_error_rate + self.batch_fault_rate > 1.0 + 1e-9:
            raise ValueError("batch_error_rate + batch_fault_rate must be at most 1")
        for name in ("batch_seconds", "batch_day_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.ark_secret_key == "":
            self.ark_secret_key = None
        if self.error_200_code not in ERROR_200_CODES:
            raise ValueError(f"error_200_code must be one of {ERROR_200_CODES}")
        self.missing_models = [str(m) for m in self.missing_models]
        self.faults = _check_faults(self.faults)
        self.schedule = _check_schedule(self.schedule, self)

    @property
    def effective_overload(self) -> int | None:
        """In-flight count above which requests get 503 (2 x capacity unless set)."""
        if self.overload is not None:
            return self.overload
        return 2 * self.capacity if self.capacity is not None else None

    # ------------------------------------------------------------------ patches
    def patched(self, patch: Mapping[str, Any]) -> SimConfig:
        """A validated copy with ``patch`` (field -> value, JSON types) applied."""
        unknown = set(patch) - _FIELD_NAMES
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        fixed = STARTUP_ONLY & set(patch)
        if fixed:
            raise ValueError(f"cannot change {', '.join(sorted(fixed))} while running")
        values = {k: _coerce(k, v) for k, v in patch.items()}
        return dataclasses.replace(self, **values)

    def public_dict(self) -> dict[str, Any]:
        """The configuration as JSON-able data, with the API key replaced by a flag."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["api_key"] = None
        out["api_key_set"] = self.api_key is not None
        out["ark_secret_key"] = None
        out["ark_secret_key_set"] = self.ark_secret_key is not None
        out["schedule"] = [[at, dict(upd)] for at, upd in self.schedule]
        return out

    # ------------------------------------------------------------------ CLI
    @classmethod
    def arg_parser(cls) -> argparse.ArgumentParser:
        """The argparse parser of ``python -m batchmagic.simulator`` (flags = field names)."""
        p = argparse.ArgumentParser(
            prog="python -m batchmagic.simulator",
            description="Local OpenAI-compatible simulator for dry runs, tests and benchmarks.",
        )
        for f in dataclasses.fields(cls):
            kind = _KINDS[f.name]
            flag = "--" + f.name.replace("_", "-")
            default = f.default if f.default is not dataclasses.MISSING else None
            help_ = _HELP.get(f.name, "")
            if kind not in ("faults", "list_str", "schedule") and f.name not in _SECRETS:
                help_ += f" (default: {default})"
            if kind == "bool":
                p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_)
            elif kind == "faults":
                p.add_argument("--fault", "--faults", dest="faults", action="append",
                               metavar="NAME=P", default=None,
                               help=f"inject a fault with probability P; names: "
                                    f"{', '.join(FAULT_NAMES)}")
            elif kind == "list_str":
                p.add_argument("--missing-model", "--missing-models", dest="missing_models",
                               action="append", metavar="MODEL", default=None, help=help_)
            elif kind == "schedule":
                p.add_argument(flag, dest=f.name, metavar="JSON", default=None,
                               help='JSON list like \'[[5, {"rpm": 600}], [10, {"rpm": 1200}]]\'')
            else:
                p.add_argument(flag, dest=f.name, default=None, metavar=kind.upper()
                               .replace("OPT_", ""), help=help_)
        p.add_argument("--ready-file", default=None, metavar="PATH",
                       help="write the base URL to this file once listening")
        p.add_argument("--exit-with-stdin", action="store_true",
                       help="stop when stdin reaches end of file (the parent that started "
                            "this server has exited, however it died)")
        return p

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None
    ) -> SimConfig:
        """Parse CLI flags (``--latency 0.1 --rpm 1200 --fault 500=0.05 ...``)."""
        ns = cls.arg_parser().parse_args(argv)
        return cls.from_namespace(ns, env=env)

    @classmethod
    def from_namespace(
        cls, ns: argparse.Namespace, *, env: Mapping[str, str] | None = None
    ) -> SimConfig:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = getattr(ns, f.name, None)
            if raw is None:
                continue
            kind = _KINDS[f.name]
            if kind == "faults":
                values["faults"] = dict(_parse_fault_flag(item) for item in raw)
            elif kind == "list_str":
                values["missing_models"] = [m for item in raw for m in item.split(",") if m]
            elif kind == "schedule":
                values["schedule"] = json.loads(raw)
            else:
                values[f.name] = _coerce(f.name, raw)
        if "api_key" not in values:
            key = (os.environ if env is None else env).get(API_KEY_ENV)
            if key:
                values["api_key"] = key
        if "ark_secret_key" not in values:
            key = (os.environ if env is None else env).get(ARK_SECRET_KEY_ENV)
            if key:
                values["ark_secret_key"] = key
        return cls(**values)

    def to_args(self, *, include_api_key: bool = False) -> list[str]:
        """CLI flags reproducing this configuration (non-default fields only).

        The API key is left out unless asked for: pass it through ``BATCHMAGIC_SIM_API_KEY``.
        """
        default = SimConfig()
        args: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == getattr(default, f.name):
                continue
            if f.name in _SECRETS and not include_api_key:
                continue
            kind = _KINDS[f.name]
            flag = "--" + f.name.replace("_", "-")
            if kind == "bool":
                args.append(flag if value else "--no-" + f.name.replace("_", "-"))
            elif kind == "faults":
                for name, p in value.items():
                    args += ["--fault", f"{name}={p!r}"]
            elif kind == "list_str":
                for m in value:
                    args += ["--missing-model", m]
            elif kind == "schedule":
                args += [flag, json.dumps([[at, upd] for at, upd in value])]
            else:
                args += [flag, "none" if value is None else str(value)]
        return args


# ---------------------------------------------------------------------- helpers
_KINDS: dict[str, str] = {
    "host": "str", "port": "int", "allow_remote": "bool", "reply": "str", "seed": "int",
    "embedding_dim": "int", "shuffle_embeddings": "bool", "max_embedding_inputs": "int",
    "max_image_size": "int", "missing_models": "list_str", "context_window": "int",
    "api_key": "opt_str", "latency": "float", "latency_dist": "str", "latency_jitter": "float",
    "per_token_latency": "float", "capacity": "opt_int", "overload": "opt_int",
    "rpm": "opt_float", "tpm": "opt_float", "burst": "float", "retry_after_format": "str",
    "retry_after_value": "opt_str",
    "ratelimit_headers": "bool", "schedule": "schedule", "faults": "faults",
    "fault_seed": "int", "fault_attempts": "int", "hang_seconds": "float",
    "trickle_interval": "float", "error_200_code": "int", "log_calls": "bool",
    "call_log_path": "opt_str", "batch_seconds": "float", "batch_day_seconds": "float",
    "batch_error_rate": "float", "batch_fault_rate": "float", "batch_reverse": "bool",
    "ark_access_key": "str", "ark_secret_key": "opt_str",
}
#: fields never shown, and passed to a child process through the environment only
_SECRETS = frozenset({"api_key", "ark_secret_key"})
_FIELD_NAMES = frozenset(_KINDS)
_HELP = {
    "host": "bind address",
    "port": "port (0 = any free port)",
    "allow_remote": "allow a non-loopback --host",
    "reply": 'answer mode: "echo", "fixed:<text>" or "length:<N>"',
    "seed": "seed of latency jitter and embedding shuffles",
    "embedding_dim": "embedding size when a request sets no dimensions",
    "shuffle_embeddings": "return embeddings out of order (clients must map by index)",
    "max_embedding_inputs": "more inputs in one embeddings request -> 400",
    "max_image_size": "largest image width/height",
    "missing_models": "model name answered with 404 (repeatable or comma-separated)",
    "context_window": "prompt + max_tokens above this -> 400 context_length_exceeded",
    "api_key": f"require this bearer key (prefer the {API_KEY_ENV} env var)",
    "latency": "seconds before each answer",
    "latency_dist": f"one of {', '.join(LATENCY_DISTS)}",
    "latency_jitter": "spread of the latency distribution (seconds, or sigma for lognormal)",
    "per_token_latency": "extra seconds per completion token (in a stream: between tokens)",
    "capacity": "requests served at full speed at once (latency scales above)",
    "overload": "in-flight count above which requests get 503 (default 2 x capacity)",
    "rpm": "requests per minute limit",
    "tpm": "tokens per minute limit (prompt + max_tokens, or 16)",
    "burst": "bucket size in seconds' worth of rpm/tpm",
    "retry_after_format": f"one of {', '.join(RETRY_AFTER_FORMATS)}",
    "retry_after_value": 'send this Retry-After text verbatim ("0", "NaN", "86400")',
    "ratelimit_headers": "send x-ratelimit-* headers",
    "fault_seed": "seed of the per-body fault draws",
    "fault_attempts": "a body can be faulted only on its first N arrivals",
    "hang_seconds": "how long the hang fault sleeps (and stream_stall goes quiet)",
    "trickle_interval": "seconds between bytes of the trickle fault",
    "error_200_code": f"one of {', '.join(map(str, ERROR_200_CODES))}",
    "log_calls": "keep an in-memory call log (GET /_sim/calls)",
    "call_log_path": "append a JSONL call log to this file (mode 0600)",
    "batch_seconds": "seconds a batch (files + batches, or an Ark job) takes to run",
    "batch_day_seconds": "seconds one day of a batch completion window lasts (24h -> this)",
    "batch_error_rate": "share of batch lines answered with status 400 and error null",
    "batch_fault_rate": "share of batch lines failed into the error file",
    "batch_reverse": "write batch result files in reverse order",
    "ark_access_key": "Access Key ID the Ark job API and the TOS stand-in accept",
    "ark_secret_key": f"its Secret Access Key (prefer the {ARK_SECRET_KEY_ENV} env var)",
}


def _coerce(name: str, value: Any) -> Any:
    """Convert a CLI string or JSON value to the field's type."""
    kind = _KINDS[name]
    if kind.startswith("opt_"):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        kind = kind[4:]
    if kind == "bool":
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{name}: not a boolean: {value!r}")
        return bool(value)
    if kind == "int":
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{name}: not an integer")
        return int(value)
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError(f"{name}: not a number")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"{name}: not a string")
        return value
    if kind == "list_str":
        if isinstance(value, str):
            return [m for m in value.split(",") if m]
        return [str(m) for m in value]
    if kind == "faults":
        if not isinstance(value, Mapping):
            raise ValueError("faults: expected an object of name -> probability")
        return dict(value)
    if kind == "schedule":
        if isinstance(value, str):
            value = json.loads(value)
        return list(value)
    raise AssertionError(kind)


def _parse_fault_flag(item: str) -> tuple[str, float]:
    name, sep, p = item.partition("=")
    if not sep:
        raise ValueError(f"--fault expects NAME=PROBABILITY, got {item!r}")
    return name.strip(), float(p)


def _check_reply(reply: str) -> None:
    if reply == "echo" or reply.startswith("fixed:"):
        return
    if reply.startswith("length:") and reply[7:].isdigit() and int(reply[7:]) >= 1:
        return
    raise ValueError('reply must be "echo", "fixed:<text>" or "length:<N>"')


def _check_faults(faults: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, p in faults.items():
        name = str(name)
        if name not in FAULT_NAMES:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULT_NAMES)}")
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"fault {name}: probability must be in [0, 1]")
        if p > 0:
            out[name] = p
    if sum(out.values()) > 1.0 + 1e-9:
        raise ValueError("fault probabilities add up to more than 1")
    return out


def _check_schedule(schedule: Any, base: SimConfig) -> list[tuple[float, dict[str, Any]]]:
    out: list[tuple[float, dict[str, Any]]] = []
    for entry in schedule or ():
        if isinstance(entry, Mapping):
            at, upd = entry.get("at"), entry.get("set", entry.get("config"))
        else:
            at, upd = entry
        if not isinstance(upd, Mapping) or "schedule" in upd:
            raise ValueError("schedule entries are (at_seconds, {field: value})")
        out.append((float(at), dict(upd)))
    out.sort(key=lambda e: e[0])
    # Fail now, not mid-benchmark: each update must apply to the config it will meet.
    cfg = dataclasses.replace(base, schedule=[]) if out else None
    for _, upd in out:
        assert cfg is not None
        cfg = cfg.patched(upd)
    return out


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IP literals."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
