"""Offline engines: run the same kinds on this machine instead of over HTTP.

    df = bm.batch(questions, "Answer briefly: {q}", engine="llama.cpp", params={"max_tokens": 64})

| engine (aliases)                              | runs                        | where it runs              |
|-----------------------------------------------|-----------------------------|----------------------------|
| ``llama.cpp`` (``llamacpp``, ``llama-cpp``)   | GGUF files, CPU (or GPU)    | in process, threads        |
| ``transformers`` (``hf``)                     | local model folders, GGUF   | in process, a batch thread |
| ``vllm``                                      | Hugging Face models on GPU  | a subprocess batchmagic owns |
| ``fastdeploy``                                | Paddle / HF models on GPU   | a subprocess batchmagic owns |

An engine is loaded on first use and cached, keyed by (engine, model, load options); a run's
``aclose()`` leaves it loaded for the next run, ``unload()`` frees it (killing the subprocess of
a GPU engine, which really releases its GPU memory). ``loaded()`` lists what is loaded.

The contract every engine meets is in ``_base`` (``Engine``); ``get_backend`` wraps one in an
``EngineBackend``, which is the dispatcher's ``Backend`` plus ``context_window``,
``count_tokens(body)`` and ``default_concurrency``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import dataclass, field

from .._errors import ConfigError
from ._base import Engine, EngineBackend, preflight

__all__ = ["ENGINES", "EngineSpec", "check_bodies", "engine_units", "get_backend", "loaded",
           "preflight", "resolve", "unload"]

#: embedding rows sent to an engine together (one call embeds them all)
EMBEDDING_PACK = 32

_CANONICAL = {
    "llama.cpp": "llama.cpp", "llamacpp": "llama.cpp", "llama-cpp": "llama.cpp",
    "llama_cpp": "llama.cpp",
    "transformers": "transformers", "hf": "transformers",
    "vllm": "vllm",
    "fastdeploy": "fastdeploy",
}
#: every name ``engine=`` accepts, aliases included
ENGINES = ("llama.cpp", "llamacpp", "llama-cpp", "transformers", "hf", "vllm", "fastdeploy")

_KINDS = {
    "llama.cpp": ("chat", "completion", "embedding"),
    "transformers": ("chat", "completion", "embedding"),
    "vllm": ("chat", "completion"),
    "fastdeploy": ("chat", "completion"),
}

#: load options each in-process engine understands (GPU engines pass theirs through to the
#: engine's own constructor, which checks them)
_OPTIONS = {
    "llama.cpp": {"n_ctx", "n_threads", "n_threads_batch", "n_contexts", "n_batch", "n_ubatch",
                  "n_gpu_layers", "flash_attn", "pooling", "chat_format", "use_mmap", "use_mlock"},
    "transformers": {"device", "dtype", "max_batch", "max_model_len", "torch_threads",
                     "attn_implementation", "trust_remote_code"},
}
_SUBPROCESS_OWN = {"python", "load_timeout", "workers"}  # batchmagic's, not the engine's

_INSTALL = {
    "llama.cpp": ('llama_cpp', 'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON '
                  '-DGGML_F16C=ON" pip install "batchmagic[local]"'),
    "transformers": ("transformers", 'pip install "batchmagic[transformers]" (install a CPU '
                     'torch first on machines without a GPU)'),
    "vllm": ("vllm", 'pip install "batchmagic[gpu]" vllm, or engine_options={"python": '
             '"/path/to/env/bin/python"} to run vLLM from another environment'),
    "fastdeploy": ("fastdeploy", "install FastDeploy (fastdeploy-gpu) for your CUDA version, or "
                   'engine_options={"python": ...} to run it from another environment'),
}


def canonical(engine: str) -> str:
    if not isinstance(engine, str) or engine.lower() not in _CANONICAL:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    return _CANONICAL[engine.lower()]


@dataclass(frozen=True)
class EngineSpec:
    """Everything that identifies one loaded engine, resolved without loading anything."""

    engine: str  # canonical name
    model: str  # the model file / folder / id that will be loaded
    kind: str
    options: dict = field(default_factory=dict, compare=False, hash=False)
    default_concurrency: int = 1

    @property
    def key(self) -> tuple:
        # one loaded model serves every kind, except that llama.cpp embeds in its own contexts
        return (self.engine, self.model, self.engine == "llama.cpp" and self.kind == "embedding",
                json.dumps(self.options, sort_keys=True, default=str))

    @property
    def endpoint(self) -> str:
        """Stands in for the base URL in row keys, so cached answers name the model that gave them."""
        return f"engine://{self.engine}/{self.model}"


def resolve(engine: str, model: str | None, kind: str, options: dict | None = None) -> EngineSpec:
    """Check an engine request and say what would be loaded, without loading it. Raises
    ``ConfigError`` for an unknown engine, kind or option, a missing library or model file."""
    name = canonical(engine)
    if kind not in _KINDS[name]:
        raise ConfigError(f"the {name} engine serves {', '.join(_KINDS[name])}, not kind={kind!r}")
    options = dict(options or {})
    if not all(isinstance(k, str) for k in options):
        raise ConfigError("engine_options keys must be strings")
    from . import _models

    if name in _OPTIONS:
        unknown = sorted(set(options) - _OPTIONS[name])
        if unknown:
            raise ConfigError(f"the {name} engine does not take {', '.join(map(repr, unknown))}; "
                              f"its engine_options are {', '.join(sorted(_OPTIONS[name]))}")
        module, install = _INSTALL[name]
        _models.require(module, name, install)
    if name == "llama.cpp":
        path = _models.gguf_path(model)
        from ._llamacpp import default_concurrency

        return EngineSpec(name, path, kind, options, default_concurrency(options))
    if name == "transformers":
        from ._transformers import default_concurrency, model_location

        return EngineSpec(name, model_location(model), kind, options, default_concurrency(options))
    # vLLM / FastDeploy run in a subprocess, maybe another Python environment
    if model is None:
        raise ConfigError(f"model= is required with engine={name!r}: a local model folder or a "
                          "model id the engine can load")
    if "python" in options:
        if not (isinstance(options["python"], str) and os.path.isfile(options["python"])):
            raise ConfigError(f"engine_options['python'] must be a Python executable; got "
                              f"{options['python']!r}")
    else:
        module, install = _INSTALL[name]
        _models.require(module, name, install)
    from ._subprocess import default_concurrency as sub_concurrency

    return EngineSpec(name, model, kind, options, sub_concurrency(name, options))


def check_bodies(spec: EngineSpec, items: list) -> None:
    """Every row's generation parameters must be ones the engine takes: a ConfigError (before
    anything runs) names the first that is not."""
    from . import _params

    seen: set[tuple] = set()
    for item in items:
        params = {k: v for k, v in item.body.items()
                  if k not in ("model", "messages", "prompt", "input")}
        key = tuple(sorted((k, repr(v)) for k, v in params.items()))
        if key in seen:
            continue
        seen.add(key)
        _params.check(spec.engine, spec.kind, params)


def engine_units(items: list, todo: list[int]) -> list:
    """Units for an engine: the item's body dict (not bytes); embeddings that share parameters
    packed by ``EMBEDDING_PACK`` into one unit whose body is the list of their bodies."""
    from .._backend import Unit

    if not todo:
        return []
    first = items[todo[0]].body
    if "input" not in first or "messages" in first or "prompt" in first:
        return [Unit([i], items[i].body, items[i].prompt_tokens + items[i].max_output)
                for i in todo]
    from .._kinds import pack_signature

    groups: dict[tuple, list[int]] = {}
    for i in todo:
        groups.setdefault(pack_signature(items[i].body), []).append(i)
    units = []
    for idxs in groups.values():
        for start in range(0, len(idxs), EMBEDDING_PACK):
            chunk = idxs[start:start + EMBEDDING_PACK]
            units.append(Unit(chunk, [items[i].body for i in chunk],
                              sum(items[i].prompt_tokens for i in chunk)))
    return units


# -- the cache of loaded engines ------------------------------------------------------------

_registry_lock = threading.Lock()
_engines: dict[tuple, Engine] = {}
_load_locks: dict[tuple, threading.Lock] = {}


def _construct(spec: EngineSpec) -> Engine:
    if spec.engine == "llama.cpp":
        from ._llamacpp import LlamaCppEngine

        return LlamaCppEngine(spec)
    if spec.engine == "transformers":
        from ._transformers import TransformersEngine

        return TransformersEngine(spec)
    from ._subprocess import SubprocessEngine

    return SubprocessEngine(spec)


def _load(spec: EngineSpec) -> Engine:
    """The cached engine for ``spec``, loading it (once, even under concurrent callers) if it is
    not loaded or has died."""
    key = spec.key
    with _registry_lock:
        lock = _load_locks.setdefault(key, threading.Lock())
    with lock:
        with _registry_lock:
            engine = _engines.get(key)
        if engine is not None and engine.alive:
            return engine
        if engine is not None:  # it died: clean up what is left before loading it again
            with _registry_lock:
                _engines.pop(key, None)
            _safe_unload(engine)
        engine = _construct(spec)
        with _registry_lock:
            _engines[key] = engine
        return engine


def get_backend(engine: str, model: str | None, kind: str, options: dict | None = None
                ) -> EngineBackend:
    """The backend for ``engine`` serving ``model`` (``None``: the engine's default model) for
    ``kind``, loading the engine on first use and reusing it afterwards. Blocking: call it from a
    thread when an event loop is running."""
    spec = resolve(engine, model, kind, options)
    return backend_for(spec)


def backend_for(spec: EngineSpec) -> EngineBackend:
    return EngineBackend(_load(spec), spec.kind, reload=lambda: _load(spec))


def unload(engine: str | None = None) -> int:
    """Free loaded engines (all, or those of one engine name); returns how many were unloaded.
    GPU engines run in a subprocess, which is ended, so their GPU memory is really released."""
    name = canonical(engine) if engine is not None else None
    with _registry_lock:
        keys = [k for k in _engines if name is None or k[0] == name]
        victims = [_engines.pop(k) for k in keys]
    for victim in victims:
        _safe_unload(victim)
    return len(victims)


def loaded() -> list[dict]:
    """What is loaded now: one dict per engine (engine, model, kind, context_window, alive, ...)."""
    with _registry_lock:
        engines = list(_engines.values())
    return [e.describe() for e in engines]


def _safe_unload(engine: Engine) -> None:
    try:
        engine.unload()
    except Exception as exc:  # freeing must not raise over the user's next call
        print(f"batchmagic: unloading {engine.name} failed: {exc}", file=sys.stderr)

