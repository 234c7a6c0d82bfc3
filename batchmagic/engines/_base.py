"""The engine contract, and the adapter that lets the dispatcher drive an engine like any backend.

An *engine* is a model loaded on this machine. It is loaded once (lazily, cached across runs by
``engines.get_backend``), answers many rows, and is freed only by ``bm.unload()``::

    class Engine:
        name: str                    # "llama.cpp", "transformers", "vllm", "fastdeploy"
        model: str                   # the model file, folder or id it loaded
        kind: str                    # "chat", "completion" or "embedding"
        context_window: int          # tokens the model can attend to (prompt + output)
        default_concurrency: int     # rows worth keeping in flight to keep it busy
        alive: bool                  # False once a subprocess engine has died
        def count_tokens(self, body: dict) -> int          # the model's own tokenizer (and chat
                                                           # template, for chat bodies)
        def count_tokens_many(self, bodies) -> list[int]   # the same for many bodies at once
        async def generate(self, body: dict) -> list[Parsed]  # one chat or completion request:
                                                           # one Parsed per choice (its ``n``)
        async def embed(self, bodies: list[dict]) -> list[Parsed]  # many embedding rows
        def unload(self) -> None                           # free memory (GPU memory included)
        def describe(self) -> dict                         # what ``engines.loaded()`` lists

    and, before anything loads (the engine's ``_registry`` record calls them)::

        locate_model(model: str | None) -> str             # the model that would be loaded
        concurrency_for(options: dict) -> int              # default_concurrency for these options
        check_structured(constraint, options) -> None      # ConfigError: it cannot hold its
                                                           # answers to this response_format

``generate`` and ``embed`` never block the event loop: blocking work runs in a thread (llama.cpp,
transformers) or in a subprocess batchmagic owns (vLLM, FastDeploy). They report usage (prompt
and completion tokens) in each ``Parsed`` so the progress display shows tokens/s.

A request's ``response_format`` constrains decoding (``_params.structured``: a JSON Schema, or
any JSON object): llama.cpp samples under a grammar built from the schema, transformers under
xgrammar's token masks, vLLM and FastDeploy under their own structured-output parameters. Its
``n`` asks for that many choices, each its own ``Parsed``; a unit whose items are the samples
of one row gets one per item, and the prompt is counted once, on the first. They raise:

    RowFailure        this row cannot be answered (a bad parameter, an engine error on this request)
    ContextOverflow   this row does not fit the context window
    EngineCrashed     the engine died with this row in flight; it is reloaded on the next call

``EngineBackend`` turns those into ``Outcome``s (ROW, CONTEXT, TRANSIENT) so the dispatcher's
rules apply unchanged: one bad row never kills a batch; a crash fails only the rows in flight
(retried once the engine is back), and stops the run if the engine keeps crashing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from .. import _tokens
from .._backend import CONTEXT, FATAL, OK, ROW, TRANSIENT, Outcome, Unit
from .._errors import ConfigError, ContextLengthError, InputError, RowError
from .._kinds import Parsed

log = logging.getLogger("batchmagic")

#: how many times one backend restarts a crashed engine before the run stops
MAX_RESTARTS = 2
#: why an engine refuses a row that tokenizes to nothing (pre-flight says it first, per row)
EMPTY_ROW = "this row's text tokenizes to 0 tokens, so the model has nothing to read"


class RowFailure(Exception):
    """The engine could not answer this row."""


class ContextOverflow(RowFailure):
    """The row does not fit the model's context window."""


class EngineCrashed(Exception):
    """The engine died while this row was in flight."""


class Engine:
    """Base class of the engines; see the module docstring for the contract."""

    name = "engine"
    model = ""
    kind = "chat"
    context_window = 0
    default_concurrency = 1
    alive = True

    @staticmethod
    def locate_model(model: str | None) -> str:
        """What the engine loads for ``model=``; a ConfigError if there is no such model here.
        By default the name goes to the engine as given (it finds the model itself)."""
        if model is None:
            raise ConfigError("this engine has no default model: pass model=")
        return model

    @staticmethod
    def concurrency_for(options: dict) -> int:
        return 1

    @staticmethod
    def check_structured(constraint: dict, options: dict) -> None:
        """A ConfigError, before anything runs, when this engine cannot hold answers to
        ``constraint`` (``_params.structured``) with these load options."""

    def count_tokens(self, body: dict) -> int:
        raise NotImplementedError

    def count_tokens_many(self, bodies: list[dict]) -> list[int]:
        return [self.count_tokens(b) for b in bodies]

    async def generate(self, body: dict) -> list[Parsed]:
        raise NotImplementedError

    async def embed(self, bodies: list[dict]) -> list[Parsed]:
        raise RowFailure(f"the {self.name} engine does not serve embeddings")

    def unload(self) -> None:
        pass

    def describe(self) -> dict:
        return {"engine": self.name, "model": self.model, "kind": self.kind,
                "context_window": self.context_window, "alive": self.alive}


class EngineBackend:
    """The ``_backend.Backend`` contract over an engine: ``name``, ``call(unit)``, ``aclose()``,
    plus ``context_window``, ``count_tokens(body)`` and ``default_concurrency`` for the run's
    pre-flight and window.

    ``aclose()`` does not unload the engine (it stays cached for the next run; ``bm.unload()``
    frees it). A crashed engine is reloaded here, once for all the calls waiting on it, at most
    ``MAX_RESTARTS`` times per run; after that every call is FATAL and the run stops.
    """

    def __init__(self, engine: Engine, kind: str | None = None, reload: Any = None):
        self.engine = engine
        self.kind = kind or engine.kind
        self.name = engine.name
        self._reload = reload  # () -> Engine, blocking; reloads and re-caches the engine
        self._restart_lock: asyncio.Lock | None = None
        self.restarts = 0

    def __repr__(self) -> str:
        return f"<EngineBackend {self.engine.name} {self.engine.model}>"

    @property
    def context_window(self) -> int:
        return self.engine.context_window

    @property
    def default_concurrency(self) -> int:
        return self.engine.default_concurrency

    def count_tokens(self, body: dict) -> int:
        return self.engine.count_tokens(body)

    def count_tokens_many(self, bodies: list[dict]) -> list[int]:
        return self.engine.count_tokens_many(bodies)

    async def call(self, unit: Unit) -> Outcome:
        engine = self.engine
        if not engine.alive:
            failed = await self._restart(engine)
            if failed is not None:
                return failed
            engine = self.engine
        try:
            if self.kind == "embedding":
                bodies = unit.body if isinstance(unit.body, list) else [unit.body]
                results = await engine.embed(bodies)
            else:
                results = _one_prompt(await engine.generate(unit.body))
                if len(results) != len(unit.items):
                    return Outcome.failure(ROW, (
                        f"{engine.name} gave {len(results)} answers for a request of "
                        f"{len(unit.items)} (its n must match the samples it stands for)"))
        except ContextOverflow as exc:
            return Outcome.failure(CONTEXT, str(exc))
        except RowFailure as exc:
            return Outcome.failure(ROW, str(exc))
        except EngineCrashed as exc:
            return Outcome.failure(TRANSIENT, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an engine library error about this request: this row's error
            log.debug("engine error", exc_info=True)
            return Outcome.failure(
                ROW, f"{engine.name} failed on this row: {type(exc).__name__}: {exc}")
        return Outcome(OK, results=results)

    async def _restart(self, dead: Engine) -> Outcome | None:
        if self._restart_lock is None:
            self._restart_lock = asyncio.Lock()
        async with self._restart_lock:
            if self.engine is not dead and self.engine.alive:
                return None  # another call already restarted it
            if self._reload is None or self.restarts >= MAX_RESTARTS:
                return Outcome.failure(FATAL, (
                    f"the {dead.name} engine crashed {self.restarts + 1} times during this run; "
                    "stopping (finished rows are kept; run again to resume)"))
            self.restarts += 1
            try:
                self.engine = await asyncio.to_thread(self._reload)
            except Exception as exc:
                return Outcome.failure(
                    FATAL, f"the {dead.name} engine crashed and could not be restarted: {exc}")
        return None

    async def aclose(self) -> None:
        """Nothing to close: the engine stays loaded for the next run (``bm.unload()`` frees it)."""


# -- helpers the engines share ---------------------------------------------------------------


def _one_prompt(results: list[Parsed]) -> list[Parsed]:
    """The choices of one request read one prompt: its tokens count once, on the first (as a
    provider bills ``n``), so totals and tokens/s are not inflated by the samples."""
    for extra in results[1:]:
        extra.input_tokens = 0
    return results


def sample_seeds(seed: int | None, n: int) -> list[int | None]:
    """The seed of each of ``n`` samples: seed + i for a seeded row (reproducible, and its
    samples differ), None for each otherwise."""
    return [None] * n if seed is None else [seed + i for i in range(n)]


def split_body(body: dict) -> tuple[Any, dict]:
    """(the content: messages / prompt / input, the generation parameters)."""
    params = {k: v for k, v in body.items() if k not in ("model", "messages", "prompt", "input")}
    if "messages" in body:
        return body["messages"], params
    if "prompt" in body:
        return body["prompt"], params
    return body.get("input"), params


def text_messages(messages: Any, engine: str) -> list[dict]:
    """Chat messages with plain-text content (content parts joined); images are refused per row."""
    if not isinstance(messages, list) or not messages:
        raise RowFailure("a chat row needs a non-empty list of messages")
    out = []
    for m in messages:
        if not isinstance(m, dict):
            raise RowFailure("each chat message must be a dict with 'role' and 'content'")
        content = m.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") not in (None, "text", "input_text"):
                    raise RowFailure(f"the {engine} engine takes text-only messages; this row has "
                                     f"a {part.get('type')!r} part")
                texts.append(part.get("text", "") if isinstance(part, dict) else str(part))
            content = "".join(texts)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            content = str(content)
        msg = {"role": m.get("role", "user"), "content": content}
        for extra in ("name", "tool_calls", "tool_call_id"):
            if extra in m:
                msg[extra] = m[extra]
        out.append(msg)
    return out


def split_reasoning(text: str) -> tuple[str, str | None]:
    """Reasoning models write ``<think>...</think>`` before the answer (the opening tag may be in
    the prompt): the answer, and the reasoning text when there was any."""
    if "</think>" not in text:
        return text, None
    before, after = text.split("</think>", 1)
    reasoning = before.replace("<think>", "", 1).strip()
    return after.lstrip(), reasoning or None


def max_new_tokens(params: dict, prompt_tokens: int, context_window: int) -> int:
    """The row's output budget: its max_tokens, or batchmagic's default capped to what fits."""
    for name in ("max_tokens", "max_completion_tokens", "max_new_tokens"):
        value = params.get(name)
        if value is not None:
            return int(value)
    return max(1, min(_tokens.DEFAULT_MAX_OUTPUT, context_window - prompt_tokens))


def explicit_max_tokens(body: dict) -> int | None:
    for name in ("max_tokens", "max_completion_tokens", "max_new_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def preflight(backend: EngineBackend, items: list, skip: Any = ()) -> dict[int, RowError]:
    """Check every item before any row runs, so nothing a row contains can crash the engine: an
    empty completion or embedding text, a prompt that tokenizes to 0 tokens or cannot be
    tokenized is an ``InputError``; a prompt that does not fit the context window with its output
    budget is a ``ContextLengthError``. Returns ``{item index: that error}``; the other items'
    token estimates are replaced by the model's real counts. ``skip`` holds items already
    answered."""
    failures: dict[int, RowError] = {}
    todo = []
    for i in range(len(items)):
        if i in skip:
            continue
        why = nothing_to_read(items[i].body)
        if why is None:
            todo.append(i)
        else:
            failures[i] = InputError(why, provider=backend.name)
    chunk = 512
    for start in range(0, len(todo), chunk):
        idxs = todo[start:start + chunk]
        counts = _count_each(backend, [items[i].body for i in idxs])
        for i, n in zip(idxs, counts):
            err = _check_count(items[i], n, backend.context_window, backend.name)
            if err is not None:
                failures[i] = err
    return failures


def nothing_to_read(body: dict) -> str | None:
    """Why a completion or embedding row has no text for the model, or None. (A chat row always
    has the chat template's tokens around its messages, so an empty message is still a prompt.)"""
    if "messages" in body:
        return None
    if "prompt" in body:
        return "the completion prompt is empty" if body["prompt"] == "" else None
    if body.get("input") == "":
        return "the embedding input is empty"
    return None


def _count_each(backend: EngineBackend, bodies: list[dict]) -> list[Any]:
    """Token counts for ``bodies``; a body that cannot be counted gets its exception instead."""
    try:
        return list(backend.count_tokens_many(bodies))
    except Exception:  # one unreadable body must not sink its neighbours: count one by one
        counts: list[Any] = []
        for body in bodies:
            try:
                counts.append(backend.count_tokens(body))
            except Exception as exc:
                counts.append(exc)
        return counts


def _check_count(item: Any, n: Any, window: int, engine: str) -> RowError | None:
    """The error for an item whose prompt is ``n`` tokens, or None (its count is recorded)."""
    if isinstance(n, BaseException):
        return InputError(f"could not tokenize this row: {type(n).__name__}: {n}", provider=engine)
    if n == 0:  # the engines cannot run an empty sequence (llama.cpp crashes on one)
        return InputError(EMPTY_ROW, provider=engine)
    item.prompt_tokens = n
    body = item.body
    asked = explicit_max_tokens(body)
    if body.get("input") is not None and "messages" not in body and "prompt" not in body:
        need, what = n, ""  # embeddings: the input alone must fit
    elif asked is not None:
        need, what = n + asked, f" + max_tokens {asked:,}"
    else:
        need, what = n + 1, " + at least 1 output token"
    if need <= window:
        return None
    return ContextLengthError(f"the prompt is {n:,} tokens{what} = {need:,}, more than the "
                              f"model's context window of {window:,} tokens", provider=engine)


class StopFlag:
    """A per-request stop signal a generation thread checks between tokens (set on cancel)."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

