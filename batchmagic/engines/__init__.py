"""Offline engines: run the same kinds on this machine instead of over HTTP.

    df = bm.batch(questions, "Answer briefly: {q}", engine="llama.cpp", params={"max_tokens": 64})

| engine (aliases)                                          | runs                        | where it runs                |
|-----------------------------------------------------------|-----------------------------|------------------------------|
| ``llama.cpp`` (``llamacpp``, ``llama-cpp``, ``llama_cpp``) | GGUF files, CPU (or GPU)    | in process, threads          |
| ``transformers`` (``hf``)                                 | local model folders, GGUF   | in process, a batch thread   |
| ``vllm``                                                  | Hugging Face models on GPU  | a subprocess batchmagic owns |
| ``fastdeploy``                                            | Paddle / HF models on GPU   | a subprocess batchmagic owns |

Every fact about an engine (its names, kinds, options, parameters, library, the class that runs
it) is in its record in ``_registry``; this module resolves, loads and caches engines by it.
Every engine constrains its decoding to a request's ``response_format`` (``schema=``) and answers
``n`` choices of one prompt (``samples=``); ``_base`` says how.

An engine is loaded on first use and cached, keyed by (engine, model, load options); a run's
``aclose()`` leaves it loaded for the next run, ``unload()`` frees it (killing the subprocess of
a GPU engine, which really releases its GPU memory). ``loaded()`` lists what is loaded.

The contract every engine meets is in ``_base`` (``Engine``); ``get_backend`` wraps one in an
``EngineBackend``, which is the dispatcher's ``Backend`` plus ``context_window``,
``count_tokens(body)`` and ``default_concurrency``.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, field

from .._backend import Unit
from .._units import embedding_units
from ._base import Engine, EngineBackend, preflight, split_body
from ._registry import ENGINES, EngineInfo, find

__all__ = ["ENGINES", "EngineInfo", "EngineSpec", "check_bodies", "engine_units", "find",
           "get_backend", "loaded", "preflight", "resolve", "unload"]

#: embedding rows sent to an engine together (one call embeds them all)
EMBEDDING_PACK = 32


@dataclass(frozen=True)
class EngineSpec:
    """Everything that identifies one loaded engine, resolved without loading anything."""

    engine: str  # canonical name
    model: str  # the model file / folder / id that will be loaded
    kind: str
    options: dict = field(default_factory=dict, compare=False, hash=False)
    default_concurrency: int = 1

    @property
    def info(self) -> EngineInfo:
        return find(self.engine)

    @property
    def key(self) -> tuple:
        # one loaded model serves every kind, except where embeddings need their own instance
        return (self.engine, self.model, self.info.embeds_apart and self.kind == "embedding",
                json.dumps(self.options, sort_keys=True, default=str))

    @property
    def endpoint(self) -> str:
        """Stands in for the base URL in row keys, so cached answers name the model that gave them."""
        return f"engine://{self.engine}/{self.model}"


def resolve(engine: str, model: str | None, kind: str, options: dict | None = None) -> EngineSpec:
    """Check an engine request and say what would be loaded, without loading it. Raises
    ``ConfigError`` for an unknown engine, kind or option, a missing library or model file."""
    info = find(engine)
    info.check_kind(kind)
    options = info.check_options(options)
    info.check_model(model)
    info.require_library(options)
    return EngineSpec(info.name, info.locate_model(model), kind, options,
                      info.default_concurrency(options))


def check_bodies(spec: EngineSpec, items: list) -> None:
    """Every row's generation parameters must be ones the engine takes, and its
    ``response_format`` one the engine can hold its answers to: a ConfigError (before anything
    runs) names the first that is not."""
    from . import _params

    seen: set[tuple] = set()
    for item in items:
        params = split_body(item.body)[1]
        key = tuple(sorted((k, repr(v)) for k, v in params.items()))
        if key in seen:
            continue
        seen.add(key)
        constraint = _params.structured(_params.check(spec.engine, spec.kind, params))
        if constraint is not None:
            spec.info.engine_class().check_structured(constraint, spec.options)


def engine_units(items: list, todo: list[int], samples: int = 1) -> list:
    """Units for an engine: the item's body dict (not bytes); embeddings that share parameters
    packed by ``EMBEDDING_PACK`` into one unit whose body is the list of their bodies. With
    ``samples`` > 1 the draws of one row still to answer, consecutive ones together, are one
    unit whose body asks ``n`` of them (every engine answers n choices of one prompt)."""
    if not todo:
        return []
    first = items[todo[0]].body
    if "input" in first and "messages" not in first and "prompt" not in first:
        return embedding_units(items, todo, max_items=EMBEDDING_PACK, max_tokens=None,
                               body_of=list)
    groups = _draw_groups(items, todo, samples) if samples > 1 else [[i] for i in todo]
    return [Unit(group, _drawn_body(items[group[0]], len(group)),
                 items[group[0]].prompt_tokens + sum(items[i].max_output for i in group))
            for group in groups]


def _draw_groups(items: list, todo: list[int], samples: int) -> list[list[int]]:
    """``todo`` grouped by row (the request's key and which K draws it holds), each group cut
    where its draws stop being consecutive (so draw d always gets the seed + d)."""
    rows: dict[tuple, list[int]] = {}
    for i in todo:
        item = items[i]
        draw = getattr(item, "draw", 0)
        rows.setdefault((getattr(item, "base", None) or item.key, draw // samples), []).append(i)
    groups: list[list[int]] = []
    for members in rows.values():
        members.sort(key=lambda i: getattr(items[i], "draw", 0))
        run = [members[0]]
        for i in members[1:]:
            if getattr(items[i], "draw", 0) == getattr(items[run[-1]], "draw", 0) + 1:
                run.append(i)
            else:
                groups.append(run)
                run = [i]
        groups.append(run)
    return groups


def _drawn_body(item, n: int) -> dict:
    """The body for ``n`` draws starting at ``item``'s: ``n`` when more than one, and a seeded
    request's seed moved on by the draw, so the K answers of a seeded row differ and a re-run
    (or a resumed one, asking only for some draws) gets the same answer for each draw."""
    body = item.body
    if n > 1:
        body = {**body, "n": n}
    seed, draw = body.get("seed"), getattr(item, "draw", 0)
    if draw and isinstance(seed, int) and not isinstance(seed, bool):
        body = {**body, "seed": seed + draw}
    return body


# -- the cache of loaded engines ------------------------------------------------------------

_cache_lock = threading.Lock()
_engines: dict[tuple, Engine] = {}
_load_locks: dict[tuple, threading.Lock] = {}


def _construct(spec: EngineSpec) -> Engine:
    return spec.info.engine_class()(spec)


def _load(spec: EngineSpec) -> Engine:
    """The cached engine for ``spec``, loading it (once, even under concurrent callers) if it is
    not loaded or has died."""
    key = spec.key
    with _cache_lock:
        lock = _load_locks.setdefault(key, threading.Lock())
    with lock:
        with _cache_lock:
            engine = _engines.get(key)
        if engine is not None and engine.alive:
            return engine
        if engine is not None:  # it died: clean up what is left before loading it again
            with _cache_lock:
                _engines.pop(key, None)
            _safe_unload(engine)
        engine = _construct(spec)
        with _cache_lock:
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
    name = find(engine).name if engine is not None else None
    with _cache_lock:
        keys = [k for k in _engines if name is None or k[0] == name]
        victims = [_engines.pop(k) for k in keys]
    for victim in victims:
        _safe_unload(victim)
    return len(victims)


def loaded() -> list[dict]:
    """What is loaded now: one dict per engine (engine, model, kind, context_window, alive, ...)."""
    with _cache_lock:
        engines = list(_engines.values())
    return [e.describe() for e in engines]


def _safe_unload(engine: Engine) -> None:
    try:
        engine.unload()
    except Exception as exc:  # freeing must not raise over the user's next call
        print(f"batchmagic: unloading {engine.name} failed: {exc}", file=sys.stderr)

