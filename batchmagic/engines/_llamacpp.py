"""The llama.cpp engine (llama-cpp-python): GGUF models on the CPU (or offloaded to a GPU).

One model file, several independent contexts (``n_contexts``), each answering one row at a time
on its own thread with ``n_threads`` threads; the weights are memory-mapped once and shared, each
context has its own KV cache. Rows are handed to whichever context is free, so every core stays
busy and no row waits for another's answer.

Measured on a 2-core x86_64 machine with SmolLM2-135M (Q4_1): two contexts of one thread each
generate about 1.25x the tokens/s of one context with two threads (llama-cpp-python spends part
of each token in Python, which a second context overlaps). So the default is one context per
core, up to 4, with the cores split between them (``n_contexts`` / ``n_threads`` override it).

Chat rows are formatted with the model's own chat template (from the GGUF metadata, with
llama-cpp-python's ``Jinja2ChatFormatter``, exactly as its chat handler does) and generated with
``create_completion``, which takes a stopping criterion: a cancelled run stops its rows within one
token. ``count_tokens`` uses the same template and tokenizer, so the pre-flight context check is
exact.

``response_format`` is a grammar (llama.cpp's GBNF, from the JSON Schema; its JSON grammar for
``json_object``) that sampling cannot leave, on chat and completion rows alike: each answer is
JSON of the schema unless ``max_tokens`` cuts it short. ``n`` samples the prompt n times on one
context, which evaluates the prompt once (the later samples reuse its cached prefix).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import queue
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .._errors import ConfigError
from .._kinds import Parsed
from . import _models, _params
from ._base import (
    EMPTY_ROW,
    ContextOverflow,
    Engine,
    RowFailure,
    StopFlag,
    max_new_tokens,
    sample_seeds,
    split_body,
    split_reasoning,
    text_messages,
)

#: the context window used when neither the model nor ``n_ctx`` says otherwise
FALLBACK_CTX = 4096
MAX_DEFAULT_CTX = 4096  # the default n_ctx is the model's training context, capped here
MAX_DEFAULT_CONTEXTS = 4
_POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}


def layout(options: dict) -> tuple[int, int]:
    """(contexts, threads per context) for these options on this machine."""
    cores = os.cpu_count() or 1
    contexts = options.get("n_contexts")
    threads = options.get("n_threads")
    for name, value in (("n_contexts", contexts), ("n_threads", threads)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if contexts is None:
        contexts = max(1, min(MAX_DEFAULT_CONTEXTS, cores // (threads or 1)))
    if threads is None:
        threads = max(1, cores // contexts)
    return contexts, threads


def default_concurrency(options: dict) -> int:
    contexts, _ = layout(options)
    return 2 * contexts  # each context busy, the next row already waiting for it


@contextlib.contextmanager
def _quiet_native_stderr():
    """llama.cpp prints load-time notes straight to file descriptor 2 even when asked not to;
    hold them back during a load (and show them if the load fails)."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (some embedded hosts): nothing to silence
        yield lambda: ""
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)

        def captured() -> str:
            sink.seek(0)
            return sink.read().decode("utf-8", "replace")[-2000:]

        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)


#: load options handed to llama.cpp as they are
_PASSED_THROUGH = ("n_batch", "n_ubatch", "flash_attn", "use_mmap", "use_mlock", "chat_format")


def _embedding_load_options(kw: dict, options: dict, metadata: dict, n_ctx: int) -> None:
    """An embedding input is one batch; a generative model's token states are averaged."""
    kw.setdefault("n_batch", n_ctx)
    kw.setdefault("n_ubatch", n_ctx)
    pooling = options.get("pooling")
    if pooling is None and not _has_pooling(metadata):
        pooling = "mean"
    if pooling is not None:
        if pooling not in _POOLING:
            raise ConfigError(f"pooling must be one of {', '.join(_POOLING)}")
        kw["pooling_type"] = _POOLING[pooling]


def _chat_formatter(llm):
    """The model's own chat template (from its GGUF metadata), or None to let llama.cpp pick."""
    from llama_cpp import llama_chat_format

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    return llama_chat_format.Jinja2ChatFormatter(
        template=template, eos_token=_token_text(llm, llm.token_eos()),
        bos_token=_token_text(llm, llm.token_bos()))


class LlamaCppEngine(Engine):
    name = "llama.cpp"
    locate_model = staticmethod(_models.gguf_path)
    concurrency_for = staticmethod(default_concurrency)

    @staticmethod
    def check_structured(constraint: dict, options: dict) -> None:
        grammar_for(constraint)  # built (and cached) now: a schema it cannot express fails here

    def __init__(self, spec) -> None:
        self.spec = spec
        self.model = spec.model
        self.kind = spec.kind
        options = dict(spec.options)
        self.n_contexts, self.n_threads = layout(options)
        loaded = self._load(spec.model, options, spec.kind == "embedding")
        self._contexts: queue.SimpleQueue = queue.SimpleQueue()
        for llm in loaded:
            self._contexts.put(llm)
        self._all = loaded
        first = loaded[0]
        self.context_window = first.n_ctx()
        self.default_concurrency = spec.default_concurrency
        self._counter = first  # tokenizing reads the vocabulary only; guarded all the same
        self._count_lock = threading.Lock()
        self._formatter = None if "chat_format" in options else _chat_formatter(first)
        self._executor = ThreadPoolExecutor(max_workers=self.n_contexts,
                                            thread_name_prefix="batchmagic-llama")
        self._flags: set[StopFlag] = set()
        self._closed = False

    def _load(self, model: str, options: dict, embedding: bool) -> list:
        """``n_contexts`` contexts of the model, at its training context (capped) unless
        ``n_ctx`` is given. The first load reads the metadata that says how to load the rest."""
        from llama_cpp import Llama

        kw: dict[str, Any] = {
            "model_path": model, "n_threads": self.n_threads,
            "n_threads_batch": options.get("n_threads_batch", self.n_threads),
            "n_gpu_layers": options.get("n_gpu_layers", 0), "verbose": False,
            "embedding": embedding,
        }
        kw.update({name: options[name] for name in _PASSED_THROUGH if name in options})
        loaded: list = []
        with _quiet_native_stderr() as native_log:
            try:
                first = Llama(**kw, n_ctx=int(options.get("n_ctx") or 512))
                loaded.append(first)
                train_ctx = _train_context(first.metadata)
                n_ctx = int(options.get("n_ctx") or min(train_ctx or FALLBACK_CTX, MAX_DEFAULT_CTX))
                if embedding:
                    _embedding_load_options(kw, options, first.metadata, n_ctx)
                if n_ctx != first.n_ctx() or embedding:
                    first.close()
                    loaded.clear()
                    loaded.append(Llama(**kw, n_ctx=n_ctx))
                for _ in range(self.n_contexts - 1):
                    loaded.append(Llama(**kw, n_ctx=n_ctx))
            except BaseException as exc:
                for llm in loaded:
                    llm.close()
                if isinstance(exc, ConfigError) or not isinstance(exc, Exception):
                    raise
                detail = native_log().strip().splitlines()[-3:]
                raise ConfigError(f"llama.cpp could not load {model}: {exc}"
                                  + (f" ({' / '.join(detail)})" if detail else "")) from None
        return loaded

    # -- tokens -------------------------------------------------------------------------------

    def _chat_prompt(self, llm, messages: list[dict]) -> tuple[list[int], list[str]]:
        """The model's chat template applied, tokenized the way llama-cpp-python's handler does."""
        if self._formatter is None:
            raise RowFailure("this model has no chat template in its GGUF metadata; "
                             "use kind='completion' or engine_options={'chat_format': ...}")
        try:
            result = self._formatter(messages=messages)
        except Exception as exc:  # the template refused these messages (e.g. role order)
            raise RowFailure(f"the model's chat template refused this row: {exc}") from None
        tokens = llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special,
                              special=True)
        stops = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        return tokens, stops

    def _completion_tokens(self, llm, prompt: Any) -> list[int]:
        if not isinstance(prompt, str):
            raise RowFailure("a completion prompt must be text")
        return llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)

    def count_tokens(self, body: dict) -> int:
        content, _ = split_body(body)
        with self._count_lock:
            llm = self._counter
            if self.kind == "embedding":
                return len(self._completion_tokens(llm, content))
            if "messages" in body:
                if self._formatter is None:  # a named chat_format: estimate from the contents
                    msgs = text_messages(content, self.name)
                    return sum(len(llm.tokenize(m["content"].encode(), add_bos=False)) + 6
                               for m in msgs) + 3
                return len(self._chat_prompt(llm, text_messages(content, self.name))[0])
            return len(self._completion_tokens(llm, content))

    # -- generation -----------------------------------------------------------------------------

    async def generate(self, body: dict) -> list[Parsed]:
        if self._closed:
            raise RowFailure("the llama.cpp engine was unloaded")
        flag = StopFlag()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executor, self._generate_blocking, body, flag)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            flag.set()  # the context stops at its next token and goes back to the pool
            raise

    def _generate_blocking(self, body: dict, flag: StopFlag) -> list[Parsed]:
        if flag:
            raise RowFailure("cancelled before it started")
        content, params = split_body(body)
        params = _params.normalise(params)
        grammar = grammar_for(_params.structured(params))
        llm = self._contexts.get()
        self._flags.add(flag)
        try:
            if "messages" in body:
                messages = text_messages(content, self.name)
                if self._formatter is None:
                    return self._chat_fallback(llm, messages, params, grammar)
                tokens, stops = self._chat_prompt(llm, messages)
            else:
                tokens, stops = self._completion_tokens(llm, content), []
            args = _params.llama_cpp_args(params, self._budget(tokens, params))
            args["stop"] = stops + list(args.get("stop") or [])
            outs = self._sample(llm, tokens, args, grammar, _params.choices(params), flag)
        except ValueError as exc:
            if "context window" in str(exc) or "exceed" in str(exc):
                raise ContextOverflow(str(exc)) from None
            raise RowFailure(f"llama.cpp refused this row: {exc}") from None
        finally:
            self._flags.discard(flag)
            self._contexts.put(llm)
        return [_parsed(out["choices"][0], out.get("usage"), "messages" in body) for out in outs]

    def _budget(self, tokens: list[int], params: dict) -> int:
        """The row's output budget, once its prompt is known to fit with it."""
        if not tokens:  # llama.cpp asserts on an empty sequence (pre-flight refuses it first)
            raise RowFailure(EMPTY_ROW)
        n_ctx = self.context_window
        if len(tokens) >= n_ctx:
            raise ContextOverflow(f"the prompt is {len(tokens):,} tokens; the context window "
                                  f"is {n_ctx:,}")
        budget = max_new_tokens(params, len(tokens), n_ctx)
        if len(tokens) + budget > n_ctx:
            raise ContextOverflow(f"the prompt is {len(tokens):,} tokens + max_tokens "
                                  f"{budget:,}, more than the context window of {n_ctx:,}")
        return budget

    @staticmethod
    def _sample(llm, tokens: list[int], args: dict, grammar: Any, n: int, flag: StopFlag
                ) -> list[dict]:
        """``n`` completions of one prompt on one context. The prompt is evaluated once: each
        later sample reuses its cached prefix. A seeded row gives sample i the seed + i, so
        its samples differ and the row stays reproducible."""
        from llama_cpp import StoppingCriteriaList

        stopping = StoppingCriteriaList([lambda ids, logits: bool(flag)])
        outs = []
        for seed in sample_seeds(args.pop("seed", None), n):
            if flag:
                raise RowFailure("cancelled")
            outs.append(llm.create_completion(tokens, stopping_criteria=stopping, grammar=grammar,
                                              seed=seed, **args))
        return outs

    def _chat_fallback(self, llm, messages: list[dict], params: dict, grammar: Any
                       ) -> list[Parsed]:
        """A model without a chat template, given a named ``chat_format``: llama-cpp-python's own
        chat handler for that format (cancellation then waits for the row to finish)."""
        n_ctx = self.context_window
        budget = max_new_tokens(params, self.count_tokens({"messages": messages}), n_ctx)
        args = _params.llama_cpp_args(params, budget)
        results = []
        for seed in sample_seeds(args.pop("seed", None), _params.choices(params)):
            out = llm.create_chat_completion(messages=messages, grammar=grammar, seed=seed,
                                             **args)
            choice = out["choices"][0]
            results.append(_parsed({**choice, "text": choice["message"].get("content")},
                                   out.get("usage"), True))
        return results

    async def embed(self, bodies: list[dict]) -> list[Parsed]:
        if self._closed:
            raise RowFailure("the llama.cpp engine was unloaded")
        loop = asyncio.get_running_loop()
        return await asyncio.shield(loop.run_in_executor(self._executor, self._embed_blocking,
                                                         bodies))

    def _embed_blocking(self, bodies: list[dict]) -> list[Parsed]:
        import numpy as np

        texts = []
        for body in bodies:
            text = body.get("input")
            if not isinstance(text, str):
                raise RowFailure("an embedding input must be text")
            texts.append(text)
        llm = self._contexts.get()
        try:
            counts = [len(self._completion_tokens(llm, t)) for t in texts]
            if 0 in counts:  # an empty input corrupts llama.cpp's heap (a crash at exit)
                raise RowFailure(EMPTY_ROW)
            for n in counts:
                if n > self.context_window:
                    raise ContextOverflow(f"an input is {n:,} tokens; the context window is "
                                          f"{self.context_window:,}")
            try:
                vectors = llm.embed(texts, normalize=True, truncate=False)
            except (ValueError, RuntimeError) as exc:
                raise RowFailure(f"llama.cpp could not embed these rows: {exc}") from None
        finally:
            self._contexts.put(llm)
        out = []
        for vec, n in zip(vectors, counts):
            arr = np.asarray(vec, dtype=np.float32)
            if arr.ndim != 1:
                raise RowFailure("this model returns one vector per token, not per input; "
                                 "pass engine_options={'pooling': 'mean'}")
            out.append(Parsed(arr, None, n, 0))
        return out

    # -- lifecycle --------------------------------------------------------------------------------

    def unload(self) -> None:
        self._closed = True
        for flag in list(self._flags):
            flag.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
        for llm in self._all:
            with contextlib.suppress(Exception):
                llm.close()
        self._all = []

    def describe(self) -> dict:
        return {**super().describe(), "n_contexts": self.n_contexts, "n_threads": self.n_threads}


def _train_context(metadata: dict) -> int | None:
    arch = metadata.get("general.architecture")
    value = metadata.get(f"{arch}.context_length") if arch else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _has_pooling(metadata: dict) -> bool:
    arch = metadata.get("general.architecture")
    return bool(arch) and f"{arch}.pooling_type" in metadata


def _token_text(llm, token: int) -> str:
    if token is None or token < 0:
        return ""
    return llm.detokenize([token], special=True).decode("utf-8", "replace")


def _parsed(choice: dict, usage: dict | None, chat: bool) -> Parsed:
    usage = usage or {}
    text = choice.get("text") or ""
    reasoning = None
    if chat:
        text, reasoning = split_reasoning(text)
    return Parsed(text, choice.get("finish_reason"), usage.get("prompt_tokens"),
                  usage.get("completion_tokens"), reasoning=reasoning)


def grammar_for(constraint: dict | None):
    """The grammar that holds sampling to ``constraint`` (``_params.structured``): one built
    from the JSON Schema, or llama.cpp's JSON grammar for ``json_object``; None for no
    constraint. Built once per schema: the rows of a run share one schema, and turning a schema
    into a grammar is Python work worth doing once. A schema llama.cpp cannot express is a
    ConfigError."""
    if constraint is None:
        return None
    # not sorted: a schema's property order is the order the answer writes them in
    return _grammar(json.dumps(constraint, ensure_ascii=False))


@functools.lru_cache(maxsize=64)
def _grammar(constraint_json: str):
    # a LlamaGrammar only holds the grammar's text (each completion builds its own sampler from
    # it), so one object serves every context and thread
    from llama_cpp import LlamaGrammar, llama_grammar

    constraint = json.loads(constraint_json)
    if "json" not in constraint:
        return LlamaGrammar.from_string(llama_grammar.JSON_GBNF, verbose=False)
    try:
        return LlamaGrammar.from_json_schema(json.dumps(constraint["json"]), verbose=False)
    except Exception as exc:  # the converter raises plain errors for what it does not support
        raise ConfigError(f"llama.cpp cannot turn this JSON Schema into a grammar: "
                          f"{type(exc).__name__}: {exc}"[:400]) from None
