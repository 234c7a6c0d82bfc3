"""Every option of a run, declared once.

``OPTIONS`` is the one table: each ``Option`` has its name, type as shown in signatures, default,
one-line doc, section, check, and where else it appears (the ``%%batch`` / ``batchmagic run``
flags, and whether it may be a default from ``%config BatchMagics``, ``[tool.batchmagic]`` or a
``BATCHMAGIC_*`` variable). From it come:

* the checked values of a call (``options_from``): an unknown keyword is a ``ConfigError`` with a
  suggestion, each value is checked by its option, then the rules between options;
* the signature of ``batch`` / ``abatch`` / ``submit`` / ``estimate`` (``takes_options``; the
  static signature IDEs read is ``_signature`` below, pinned to the table by a test);
* the magic's traits and flags (``_magic.py``), the CLI's flags (``cli.py``), the reference in
  the manual (``docs/hooks.py``).

``PARAM_FLAGS`` are the two generation parameters the magic and the CLI take as flags
(``--max-tokens``, ``--temperature``); they go into ``params``.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field, make_dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ._errors import ConfigError

if TYPE_CHECKING:
    import os

    from ._breaker import Breaker

KINDS = ("chat", "completion", "embedding", "image")
MODES = ("online", "batch-api", "batch-chat")
WIRES = ("aiohttp", "httpx", "httpx2")
ON_MISSING = ("error", "skip", "empty")
#: a per-request deadline beyond a week is a unit slip (milliseconds for seconds); Ark's Batch
#: Chat asks for the longest client deadline we know of, 72 hours
MAX_TIMEOUT = 7 * 24 * 3600.0
MAX_CONCURRENCY = 10_000  # beyond this a client runs out of sockets


# -- checks: each takes the option's name and value, returns the value to use -------------------


def _number(name: str, value: Any, *, integer: bool = False, zero_ok: bool = False) -> Any:
    """``value`` as a plain int / float (numpy scalars welcome), or a ConfigError naming the
    option. NaN compares false with every limit, so it would silently mean "no limit" (a budget
    that never stops); inf overflows deadlines; ``True`` is not a count."""
    if value is None:
        return None
    wanted = numbers.Integral if integer else numbers.Real
    number = None
    if isinstance(value, wanted) and not isinstance(value, bool):
        number = int(value) if integer else value if type(value) in (int, float) else float(value)
    if number is None or not math.isfinite(number) or number < 0 or (number == 0 and not zero_ok):
        kind = "a positive number"
        if integer:
            kind = "a whole number >= 0" if zero_ok else "a positive integer"
        raise ConfigError(f"{name} must be {kind} (finite), got {value!r}", option=name)
    return number


def positive(name: str, value: Any) -> Any:
    return _number(name, value)


def positive_int(name: str, value: Any) -> Any:
    return _number(name, value, integer=True)


def count(name: str, value: Any) -> Any:
    return _number(name, value, integer=True, zero_ok=True)


def _concurrency(name: str, value: Any) -> Any:
    value = positive_int(name, value)
    if value is not None and value > MAX_CONCURRENCY:
        raise ConfigError(f"{name} above {MAX_CONCURRENCY:,} would exhaust sockets; use at most "
                          f"{MAX_CONCURRENCY:,}", option=name)
    return value


def _timeout(name: str, value: Any) -> Any:
    value = positive(name, value)
    if value is not None and value > MAX_TIMEOUT:
        raise ConfigError(f"{name} is in seconds, at most 604800 (a week); got {value!r}",
                          option=name)
    return value


def _one_of(choices: tuple[str, ...], *, optional: bool = False) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if value is None and optional:
            return None
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}; got "
                              f"{value!r}", option=name)
        return value
    return check


def _text(name: str, value: Any) -> Any:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {type(value).__name__}", option=name)
    return value


def _flag(name: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}", option=name)
    return value


def _dict(example: str) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{name} must be a dict, e.g. {example}; got "
                              f"{type(value).__name__}", option=name)
        return value
    return check


def _numbers_in(name: str, value: dict | None, *, zero_ok: bool) -> dict | None:
    """Each number in the dict finite (a NaN price makes every cost NaN, which disarms budget=;
    a NaN poll interval never polls)."""
    if not isinstance(value, dict):
        return value
    return {k: _number(f"{name}[{k!r}]", v, integer=isinstance(v, numbers.Integral),
                       zero_ok=zero_ok)
            if isinstance(v, numbers.Real) and not isinstance(v, bool) else v
            for k, v in value.items()}


def _prices(name: str, value: Any) -> Any:
    return _numbers_in(name, _dict("{'input': 0.15, 'output': 0.60}")(name, value), zero_ok=True)


def _batch_options(name: str, value: Any) -> Any:
    return _numbers_in(name, _dict("{'completion_window': '24h'}")(name, value), zero_ok=False)


def _headers(name: str, value: Any) -> Any:
    from ._secrets import check_headers

    check_headers(value)
    return value


def _params(name: str, value: Any) -> Any:
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"params must be a dict of generation parameters, got "
                          f"{type(value).__name__}", option=name)
    return value


def _breaker(name: str, value: Any) -> Any:
    from ._breaker import breaker_for

    breaker_for(value)  # checks it
    return value


def _temperature(name: str, value: Any) -> Any:
    return _number(name, value, zero_ok=True)


def _executor(name: str, value: Any) -> Any:
    from .executors import EXECUTORS

    if value is not None and value not in EXECUTORS:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, EXECUTORS))}; got "
                          f"{value!r}", option=name)
    return value


#: what ray_options= takes (executors/ray.py reads them)
RAY_OPTIONS = ("address", "workers", "num_cpus", "num_gpus", "runtime_env", "block_rows")


def _ray_options(name: str, value: Any) -> Any:
    if isinstance(value, str):  # from a flag, %config or the environment
        import json

        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(f"{name} must be a dict or its JSON, e.g. "
                              "'{\"address\": \"auto\", \"workers\": 4}'", option=name) from None
    value = _dict("{'address': 'auto', 'workers': 4}")(name, value)
    if value is None:
        return None
    for key in value:
        if key not in RAY_OPTIONS:
            close = difflib.get_close_matches(str(key), RAY_OPTIONS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{name} has no {key!r}{hint} (it takes: {', '.join(RAY_OPTIONS)})",
                              option=name)
    checked = dict(value)
    for key in ("workers", "block_rows"):
        if key in checked:
            checked[key] = positive_int(f"{name}[{key!r}]", checked[key])
    for key in ("num_cpus", "num_gpus"):
        if key in checked:
            checked[key] = count(f"{name}[{key!r}]", checked[key]) \
                if isinstance(checked[key], int) else _number(f"{name}[{key!r}]", checked[key],
                                                             zero_ok=True)
    if not isinstance(checked.get("address", ""), str):
        raise ConfigError(f"{name}['address'] must be a string such as 'auto' or "
                          "'ray://head:10001'", option=name)
    _dict("{'pip': ['batchmagic']}")(f"{name}['runtime_env']", checked.get("runtime_env"))
    return checked


def _output_path(name: str, value: Any) -> Any:
    import os

    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{name} must be a folder path, got {type(value).__name__}",
                          option=name)
    return os.fspath(value) if value is not None else None


def _optional_flag(name: str, value: Any) -> Any:
    return None if value is None else _flag(name, value)


def _schema(name: str, value: Any) -> Any:
    if value is None:
        return None
    from ._schema import schema_for

    return schema_for(value)


def _anything(name: str, value: Any) -> Any:
    return value


# -- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option of a run. ``text`` is how a flag, an environment variable or a pyproject value
    is read (``str``, ``int``, ``float``, ``bool``); ``None`` means Python only."""

    name: str
    annotation: str  # as the signature shows it
    default: Any
    doc: str
    group: str
    check: Callable[[str, Any], Any] = _anything
    flags: tuple[str, ...] = ()  # %%batch and `batchmagic run` flags
    metavar: str | None = None
    text: type | None = None
    choices: tuple[str, ...] | None = None
    config: bool = False  # a %config / [tool.batchmagic] / BATCHMAGIC_* default
    secret: bool = False  # never shown (repr, error text)

    @property
    def flag_text(self) -> str:
        """How errors name it in the magic and the CLI: ``-m/--model``."""
        return "/".join(self.flags) if self.flags else self.name


_O = Option
OPTIONS: tuple[Option, ...] = (
    # what to ask for
    _O("kind", "str", "chat", "What to ask for: chat, completion, embedding or image.", "what",
       _one_of(KINDS), ("-k", "--kind"), text=str, choices=KINDS, config=True),
    _O("model", "str | None", None, "The model, e.g. qwen-plus, gpt-4o-mini, or a GGUF path "
       "for an engine (None: the engine's default model).", "what", _text, ("-m", "--model"),
       "MODEL", str, config=True),
    _O("system", "str | None", None, "System prompt, put before each chat row's messages.",
       "what", _text, ("--system",), "TEXT", str, config=True),
    _O("params", "dict | None", None, "Generation parameters sent with each request "
       "(temperature, max_tokens, top_p, ...); engines map them to their own.", "what", _params),
    _O("schema", "Any", None, "The answer's type: a pydantic model, a JSON Schema dict or a "
       "type (Literal[...], int, list[str], a TypedDict, an Enum); output holds the validated "
       "value and an object's fields become columns.", "what", _schema, ("--schema",), "NAME",
       str),
    _O("parse_retries", "int", 1, "Times an answer that does not fit the schema is asked "
       "again before it is the row's SchemaError.", "what", count, ("--parse-retries",), "N",
       int, config=True),
    _O("samples", "int | None", None, "Answers per row: K rows out per row in, with a sample "
       "column (0..K-1).", "what", positive_int, ("--samples",), "K", int, config=True),
    _O("dedupe", "bool | None", None, "Send identical requests once (default: only when the "
       "answer is deterministic, temperature 0).", "what", _optional_flag),
    _O("stream", "bool | None", None, "Send streamed requests and assemble each answer, with a "
       "ttft column (default: where the model only answers streamed requests).", "what",
       _optional_flag, ("--stream",), text=bool),
    # where the rows go
    _O("provider", "str | None", None, "A provider preset: openai, dashscope, ark, qianfan, "
       "deepseek, vllm, ollama, llamacpp, simulator; its key comes from its usual variable.",
       "where", _text, ("-p", "--provider"), "PROVIDER", str, config=True),
    _O("base_url", "str | None", None, "Any OpenAI-compatible endpoint, e.g. "
       "http://127.0.0.1:8000/v1.", "where", _text, ("--base-url",), "URL", str, config=True),
    _O("api_key", "str | None", None, "The key (default: the provider's environment variable, "
       "or a prompt when a person can answer). Never shown, logged or stored.", "where", _anything,
       secret=True),
    _O("engine", "str | None", None, "Run offline on this machine: llama.cpp, transformers, "
       "vllm or fastdeploy.", "where", _text, ("--engine",), "NAME", str, config=True),
    _O("engine_options", "dict | None", None, "The engine's load options, e.g. {'n_ctx': 8192}.",
       "where", _dict("{'n_ctx': 8192}")),
    _O("mode", "str | None", None, "online (default); batch-api: the provider's Batch API, about "
       "half the price; batch-chat: its queued Batch Chat endpoint.", "where",
       _one_of(MODES, optional=True), ("--mode",), text=str, choices=MODES, config=True),
    _O("executor", "str | None", None, "What answers the rows, when engine= and mode= do not "
       "say enough: 'ray' runs them across a Ray cluster (a name in "
       "batchmagic.executors.EXECUTORS).", "where", _executor, ("--executor",), "NAME", str,
       config=True),
    _O("ray_options", "dict | str | None", None, "With executor='ray': address (join a cluster; "
       "none starts a local one), workers, num_cpus and num_gpus per worker, runtime_env, "
       "block_rows (a dict, or its JSON).", "where", _ray_options, ("--ray-options",), "JSON",
       str, config=True),
    _O("output_path", "str | os.PathLike | None", None, "With executor='ray': a folder the "
       "workers write result Parquet files to as they go (input and result columns, _bm_key); "
       "a re-run skips the rows already written.", "where", _output_path, ("--output-path",),
       "PATH", str),
    _O("batch_options", "dict | None", None, "Batch API settings: completion_window, polling, "
       "Ark's TOS bucket and key pair.", "where", _batch_options, secret=True),
    # how fast
    _O("concurrency", "int | None", None, "Most requests in flight (default: adaptive, up to the "
       "preset's ceiling).", "pace", _concurrency, ("-c", "--concurrency"), "N", int,
       config=True),
    _O("rpm", "float | None", None, "Requests per minute (default: learned from the provider's "
       "headers, or probed).", "pace", positive, ("--rpm",), "N", float, config=True),
    _O("tpm", "float | None", None, "Tokens per minute (default: learned from the provider's "
       "headers).", "pace", positive, ("--tpm",), "N", float, config=True),
    _O("retries", "int | None", None, "Retries of a server error, connection failure or "
       "deadline (default 5; 429s have their own bound).", "pace", count, ("--retries",), "N",
       int, config=True),
    _O("timeout", "float | None", None, "Seconds each attempt may take, start to last byte "
       "(default 300; 60 for embeddings).", "pace", _timeout, ("--timeout",), "SECONDS", float,
       config=True),
    _O("breaker", "Breaker | bool", True, "Stop a run whose attempts keep failing the same way "
       "(bm.Breaker(...) tunes it, False turns it off).", "pace", _breaker),
    # cost and the journal
    _O("budget", "float | None", None, "Stop before spending more than this many USD (needs a "
       "known price).", "cost", positive, ("--budget",), "USD", float, config=True),
    _O("prices", "dict | None", None, "USD per 1M tokens, {'input': .., 'output': ..}, where "
       "the price list does not know the model.", "cost", _prices),
    _O("cache", "bool | str | os.PathLike", True, "The journal: True (.batchmagic/ here), a "
       "folder, or False (send every row again, keep nothing).", "cost", _anything,
       ("--no-cache",), text=bool, config=True),
    # the inputs
    _O("on_missing", "str", "error", "A row with a missing value: error (its InputError), skip, "
       "or empty (an empty string).", "inputs", _one_of(ON_MISSING), ("--on-missing",),
       text=str, choices=ON_MISSING, config=True),
    _O("images", "str | None", None, "A column of image URLs or paths sent with each chat row "
       "(vision models).", "inputs", _text, ("--images",), "COLUMN", str),
    _O("allow_private_urls", "bool", False, "Allow image URLs on loopback, private or "
       "link-local addresses.", "inputs", _flag),
    # display and transport
    _O("progress", "bool", True, "Show the progress panel or bar.", "display", _flag,
       ("-q", "--quiet"), text=bool),
    _O("http", "str", "aiohttp", "The HTTP client: aiohttp (fastest), httpx or httpx2.",
       "transport", _one_of(WIRES), ("--http",), text=str, choices=WIRES, config=True),
    _O("transport", "Any", None, "An httpx transport (e.g. httpx.MockTransport(handler)) for "
       "tests and proxies.", "transport"),
    _O("headers", "dict | None", None, "Extra HTTP headers sent with each request.", "transport",
       _headers, secret=True),
)
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}

#: generation parameters the magic and the CLI take as flags (they go into ``params``)
PARAM_FLAGS: tuple[Option, ...] = (
    _O("max_tokens", "int | None", None, "max_tokens of each answer.", "what", positive_int,
       ("--max-tokens",), "N", int, config=True),
    _O("temperature", "float | None", None, "Sampling temperature.", "what", _temperature,
       ("--temperature",), "X", float, config=True),
)


def as_flag_message(exc: ConfigError, table: dict[str, Option], drop: set[str] = frozenset()
                    ) -> str:
    """A ConfigError as a cell or command-line author reads it: the option named by its flag
    (``-m/--model must be ...``), without the flags in ``drop``."""
    text = str(exc)
    opt = table.get(exc.option or "")
    flags = [f for f in opt.flags if f not in drop] if opt is not None else []
    if flags and text.startswith(opt.name):
        text = "/".join(flags) + text[len(opt.name):]
    return text


# -- values of one call ---------------------------------------------------------------------------

Options = make_dataclass(
    "Options", [(o.name, Any, field(default=o.default, repr=not o.secret)) for o in OPTIONS])
Options.__doc__ = "The checked value of every option for one call (see ``OPTIONS``)."


def options_from(kwargs: dict[str, Any]) -> Any:
    """The call's options, checked: unknown names (with a suggestion), each value, then the
    rules between options."""
    unknown = [name for name in kwargs if name not in BY_NAME]
    if unknown:
        raise ConfigError(_unknown(unknown[0]))
    values = {name: BY_NAME[name].check(name, value) for name, value in kwargs.items()}
    o = Options(**values)
    _check_together(o)
    return o


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, list(BY_NAME), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown option {name!r}{hint} (the options: {', '.join(BY_NAME)})"


def _check_together(o: Any) -> None:
    if o.batch_options is not None and o.mode != "batch-api":
        raise ConfigError("batch_options= applies to mode='batch-api'", option="batch_options")
    if o.engine is not None and (o.provider is not None or o.base_url is not None):
        raise ConfigError("engine= runs the model on this machine; drop provider= / base_url= "
                          "(or drop engine= to send the rows to a server)", option="engine")
    if o.engine is None and o.engine_options is not None:
        raise ConfigError("engine_options= applies to engine= runs only", option="engine_options")
    _check_ray(o)


def _check_ray(o: Any) -> None:
    if o.executor != "ray":
        for name in ("ray_options", "output_path"):
            if getattr(o, name) is not None:
                raise ConfigError(f"{name}= applies to executor='ray'", option=name)
        return
    if o.mode in ("batch-api", "batch-chat"):
        raise ConfigError(f"executor='ray' sends rows online or runs an engine on each worker; "
                          f"mode={o.mode!r} is the provider's own batching: drop one",
                          option="executor")
    if o.transport is not None:
        raise ConfigError("transport= is an object of this process, and Ray workers open their "
                          "own connections: drop transport= with executor='ray'",
                          option="transport")


# -- the shared signature -------------------------------------------------------------------------

P = ParamSpec("P")
R = TypeVar("R")


def _signature(inputs: Any, prompt: str | None = None, *, kind: str = "chat",
               model: str | None = None, system: str | None = None, params: dict | None = None,
               schema: Any = None, parse_retries: int = 1, samples: int | None = None,
               dedupe: bool | None = None, stream: bool | None = None,
               provider: str | None = None, base_url: str | None = None,
               api_key: str | None = None, engine: str | None = None,
               engine_options: dict | None = None, mode: str | None = None,
               executor: str | None = None, ray_options: dict | str | None = None,
               output_path: str | os.PathLike | None = None,
               batch_options: dict | None = None,
               concurrency: int | None = None,
               rpm: float | None = None, tpm: float | None = None, retries: int | None = None,
               timeout: float | None = None, breaker: Breaker | bool = True,
               budget: float | None = None, prices: dict | None = None,
               cache: bool | str | os.PathLike = True, on_missing: str = "error",
               images: str | None = None, allow_private_urls: bool = False,
               progress: bool = True, http: str = "aiohttp", transport: Any = None,
               headers: dict | None = None) -> None:
    """The keywords every run function takes, in ``OPTIONS`` order (a test pins the two)."""


def takes_options(template: Callable[P, Any] = _signature
                  ) -> Callable[[Callable[..., R]], Callable[P, R]]:
    """Give ``fn(inputs, prompt=None, **options)`` the full signature of ``template``: IDEs and
    type checkers read it through ``ParamSpec``, ``help()`` and Jupyter through
    ``__signature__``, and an unknown keyword reaches ``options_from`` (which suggests the
    option meant) instead of a bare ``TypeError``."""

    def wrap(fn: Callable[..., R]) -> Callable[P, R]:
        own = inspect.signature(fn)
        fn.__signature__ = inspect.signature(template).replace(  # type: ignore[attr-defined]
            return_annotation=own.return_annotation)
        return fn  # type: ignore[return-value]

    return wrap

