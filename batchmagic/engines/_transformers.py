"""The transformers engine: a local model folder (or a GGUF file, which transformers dequantizes
with the ``gguf`` package), batched generation with left padding, on the GPU when there is one.

Nothing is downloaded: every load is ``local_files_only`` (a model id works only if it is already
in the local Hugging Face cache), and a GGUF file brings its own tokenizer and chat template.

Rows are batched as they arrive: one thread owns the model; it takes every waiting row that
shares the oldest row's generation settings (up to ``max_batch``), pads them on the left and runs
one ``generate``. A finished batch frees the thread for the next one at once, so the model stays
busy while the dispatcher's window keeps the queue filled. A request for ``n`` choices is ``n``
rows of its batch.

``response_format`` constrains decoding with xgrammar: each row's grammar (compiled once per
schema for this tokenizer) masks the tokens it cannot take next, so every answer is JSON of the
schema unless ``max_tokens`` cuts it short. Chosen over lm-format-enforcer (its transformers
integration imports modules transformers 5 removed) and outlines (measured here on SmolLM2,
8 rows: 8 ms of masking per step against xgrammar's 2 ms, a step itself taking 250 ms or more
on 2 busy cores, and a first use that builds its vocabulary index for tens of seconds).
xgrammar is also what vLLM and FastDeploy constrain with, so a schema means the same thing on
every engine. The JSON is compact (no free whitespace): a small model otherwise spends its
budget on newlines.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
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
    split_body,
    split_reasoning,
    text_messages,
)

CPU_MAX_BATCH = 8
GPU_MAX_BATCH = 64
#: how long a batch waits for more rows when it starts from an empty queue (a generate call
#: takes far longer, so this costs little and saves running a burst's first row alone)
LINGER_S = 0.01


def model_location(model: str | None) -> str:
    """The default GGUF, a local folder or file, or a model id already in the local HF cache."""
    if model is None:
        return _models.default_gguf()
    path = os.path.abspath(os.path.expanduser(model))
    if os.path.exists(path):
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
    except Exception:
        cached = None
    if isinstance(cached, str):
        return model
    raise ConfigError(
        f"model={model!r} is neither a local folder or file nor in the local Hugging Face cache; "
        "the transformers engine never downloads (fetch it first, e.g. `hf download "
        f"{model}`, or pass the folder)"
    )


def pick_device(options: dict) -> str:
    if options.get("device"):
        return str(options["device"])
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def default_concurrency(options: dict) -> int:
    batch = options.get("max_batch")
    if batch is None:
        batch = GPU_MAX_BATCH if pick_device(options) != "cpu" else CPU_MAX_BATCH
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ConfigError(f"max_batch must be a positive integer, got {batch!r}")
    return 2 * batch  # one batch running, the next one queued


@dataclass(eq=False)
class _Request:
    op: str  # "generate" | "embed"
    ids: list  # prompt token ids (a list of lists for embed)
    args: dict  # generate kwargs
    signature: tuple
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    stop: StopFlag = field(default_factory=StopFlag)
    stops: list[str] | None = None
    explicit_max: bool = True
    constraint: str | None = None  # _params.structured as JSON text (the grammar cache's key)
    n: int = 1  # choices: rows of the batch this request takes

    @property
    def rows(self) -> int:
        return self.n if self.op == "generate" else 1


class TransformersEngine(Engine):
    name = "transformers"
    locate_model = staticmethod(model_location)
    concurrency_for = staticmethod(default_concurrency)

    @staticmethod
    def check_structured(constraint: dict, options: dict) -> None:
        _models.require("xgrammar", "transformers", 'pip install "batchmagic[transformers]"')
        import xgrammar as xgr

        if "json" not in constraint:
            return
        try:
            xgr.Grammar.from_json_schema(json.dumps(constraint["json"]), any_whitespace=False)
        except Exception as exc:  # xgrammar says which part of the schema it cannot express
            raise ConfigError(f"xgrammar cannot constrain answers to this JSON Schema: "
                              f"{_native_message(exc)}") from None

    def __init__(self, spec) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.spec = spec
        self.model = spec.model
        self.kind = spec.kind
        options = spec.options
        self.device = pick_device(options)
        if options.get("torch_threads"):
            torch.set_num_threads(int(options["torch_threads"]))
        dtype = options.get("dtype")
        if dtype in (None, "auto"):
            if self.device == "cuda":
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            else:
                dtype = torch.float32
        elif isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        where, extra = self._where(spec.model)
        common = {"local_files_only": True, "trust_remote_code": bool(options.get("trust_remote_code")),
                  **extra}
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # load-time bars would spill into the notebook
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(where, **common)
            model_kw: dict[str, Any] = {"dtype": dtype}
            if options.get("attn_implementation"):
                model_kw["attn_implementation"] = options["attn_implementation"]
            model = AutoModelForCausalLM.from_pretrained(where, **common, **model_kw)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"transformers could not load {spec.model!r}: {exc}") from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self._torch = torch
        self.net = model.to(self.device).eval()
        tok = self.tokenizer
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.pad_id = tok.pad_token_id
        eos = self.net.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tok.eos_token_id is not None:
            eos_ids.add(tok.eos_token_id)
        self.eos_ids = eos_ids
        self.context_window = int(options.get("max_model_len") or getattr(
            self.net.config, "max_position_embeddings", 0) or 2048)
        self.max_batch = int(options.get("max_batch") or (
            GPU_MAX_BATCH if self.device != "cpu" else CPU_MAX_BATCH))
        self.default_concurrency = spec.default_concurrency
        self._tok_lock = threading.Lock()
        self._grammars: Any = None  # compiles a constraint for this tokenizer; made on first use
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="batchmagic-transformers",
                                        daemon=True)
        self._thread.start()

    @staticmethod
    def _where(model: str) -> tuple[str, dict]:
        if model.lower().endswith(".gguf") and os.path.isfile(model):
            return os.path.dirname(model), {"gguf_file": os.path.basename(model)}
        return model, {}

    # -- tokens ----------------------------------------------------------------------------

    def _prompt_ids(self, body: dict) -> list[int]:
        content, params = split_body(body)
        tok = self.tokenizer
        with self._tok_lock:
            if "messages" in body:
                if not tok.chat_template:
                    raise RowFailure(f"{self.model} has no chat template; use kind='completion'")
                text = tok.apply_chat_template(
                    text_messages(content, self.name), tokenize=False, add_generation_prompt=True,
                    **(params.get("chat_template_kwargs") or {}))
                return list(tok(text, add_special_tokens=False)["input_ids"])
            if not isinstance(content, str):
                raise RowFailure("a completion prompt must be text")
            return list(tok(content)["input_ids"])

    def count_tokens(self, body: dict) -> int:
        if "input" in body and "messages" not in body and "prompt" not in body:
            return len(self._embed_ids(body))
        return len(self._prompt_ids(body))

    def _embed_ids(self, body: dict) -> list[int]:
        text = body.get("input")
        if not isinstance(text, str):
            raise RowFailure("an embedding input must be text")
        with self._tok_lock:
            return list(self.tokenizer(text)["input_ids"])

    # -- requests (event loop side) ----------------------------------------------------------

    async def generate(self, body: dict) -> list[Parsed]:
        ids = self._prompt_ids(body)
        if not ids:  # an all-padding row: nothing to attend to
            raise RowFailure(EMPTY_ROW)
        _, params = split_body(body)
        params = _params.normalise(params)
        if len(ids) >= self.context_window:
            raise ContextOverflow(f"the prompt is {len(ids):,} tokens; the context window is "
                                  f"{self.context_window:,}")
        explicit = params.get("max_tokens") is not None
        budget = max_new_tokens(params, len(ids), self.context_window)
        if explicit and len(ids) + budget > self.context_window:
            raise ContextOverflow(f"the prompt is {len(ids):,} tokens + max_tokens {budget:,}, more "
                                  f"than the context window of {self.context_window:,}")
        args = _params.transformers_args(params, budget if explicit else 0)
        stops = args.pop("stop_strings", None)
        seed = params.get("seed")
        constraint = _params.structured(params)
        # not sorted: a schema's property order is the order the answer writes them in
        constraint_key = json.dumps(constraint) if constraint else None
        signature = (tuple(sorted((k, repr(v)) for k, v in args.items())), repr(stops), seed,
                     constraint_key)
        loop = asyncio.get_running_loop()
        return await self._submit(_Request("generate", ids, args, signature, loop,
                                           loop.create_future(), stops=stops,
                                           explicit_max=explicit, constraint=constraint_key,
                                           n=_params.choices(params)))

    async def embed(self, bodies: list[dict]) -> list[Parsed]:
        ids = [self._embed_ids(b) for b in bodies]
        if not all(ids):  # mean pooling over no tokens is a zero vector, not an embedding
            raise RowFailure(EMPTY_ROW)
        for n in map(len, ids):
            if n > self.context_window:
                raise ContextOverflow(f"an input is {n:,} tokens; the context window is "
                                      f"{self.context_window:,}")
        loop = asyncio.get_running_loop()
        return await self._submit(_Request("embed", ids, {}, ("embed",), loop, loop.create_future()))

    async def _submit(self, req: _Request) -> Any:
        if self._closing:
            raise RowFailure("the transformers engine was unloaded")
        self._queue.put(req)
        try:
            return await req.future
        except asyncio.CancelledError:
            req.stop.set()  # the batch thread skips it, or ends it at the next token
            raise

    # -- the batch thread -----------------------------------------------------------------------

    def _serve(self) -> None:
        pending: collections.deque[_Request] = collections.deque()
        while True:
            linger = 0.0
            if not pending:
                req = self._queue.get()
                if req is None:
                    return
                pending.append(req)
                # rows arrive a few microseconds apart: give the rest of a burst a moment to
                # join this batch rather than running the first row alone
                linger = time.monotonic() + LINGER_S
            while True:  # take everything that is waiting
                try:
                    wait = linger - time.monotonic()
                    if wait > 0 and sum(r.rows for r in pending) < self.max_batch:
                        req = self._queue.get(timeout=wait)
                    else:
                        req = self._queue.get_nowait()
                except queue.Empty:
                    break
                if req is None:
                    self._fail_all(pending, "the transformers engine was unloaded")
                    return
                pending.append(req)
            signature = pending[0].signature
            batch: list[_Request] = []
            rows = 0
            rest: collections.deque[_Request] = collections.deque()
            for req in pending:
                if req.stop:
                    continue  # cancelled while waiting
                # a request wider than max_batch still runs: alone
                if req.signature == signature and (not batch or rows + req.rows <= self.max_batch):
                    batch.append(req)
                    rows += req.rows
                else:
                    rest.append(req)
            pending = rest
            if not batch:
                continue
            try:
                if batch[0].op == "embed":
                    for req in batch:
                        self._deliver(req, self._run_embed(req.ids))
                else:
                    for req, result in zip(batch, self._run_generate(batch)):
                        self._deliver(req, result)
            except Exception as exc:  # the whole batch failed (e.g. out of memory): each row's error
                err = RowFailure(f"transformers failed on this batch: {type(exc).__name__}: {exc}")
                for req in batch:
                    self._deliver(req, err)

    def _deliver(self, req: _Request, result: Any) -> None:
        def settle() -> None:
            if req.future.done():
                return
            if isinstance(result, BaseException):
                req.future.set_exception(result)
            else:
                req.future.set_result(result)

        try:
            req.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the run's loop is gone
            pass

    def _fail_all(self, reqs, message: str) -> None:
        for req in reqs:
            self._deliver(req, RowFailure(message))

    def _run_generate(self, batch: list[_Request]) -> list[Any]:
        """One ``generate`` over the batch's rows (a request of ``n`` choices is ``n`` rows);
        each request's answer is its list of ``Parsed``."""
        torch = self._torch
        rows = [req for req in batch for _ in range(req.n)]
        longest = max(len(r.ids) for r in rows)
        args = dict(batch[0].args)
        if not batch[0].explicit_max:  # no max_tokens given: the default, capped to what fits
            args["max_new_tokens"] = max(1, min(512, self.context_window - longest))
        input_ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for row, req in enumerate(rows):
            n = len(req.ids)
            input_ids[row, longest - n:] = torch.tensor(req.ids, dtype=torch.long)
            mask[row, longest - n:] = 1
        seed = batch[0].signature[2]
        if seed is not None:
            torch.manual_seed(int(seed))
        stops = batch[0].stops
        extra: dict[str, Any] = {}
        if stops:
            extra = {"stop_strings": stops, "tokenizer": self.tokenizer}
        extra["stopping_criteria"] = _cancel_criteria([r.stop for r in rows])
        if batch[0].constraint is not None:
            extra["logits_processor"] = [_schema_mask(self._grammar(batch[0].constraint),
                                                      len(rows))]
        with torch.inference_mode():
            out = self.net.generate(input_ids=input_ids.to(self.device),
                                    attention_mask=mask.to(self.device), pad_token_id=self.pad_id,
                                    **args, **extra)
        answers = [self._answer(req, tokens, args["max_new_tokens"], stops)
                   for req, tokens in zip(rows, out[:, longest:].tolist())]
        results: list[Any] = []
        for req in batch:
            results.append(answers[:req.n])
            answers = answers[req.n:]
        return results

    def _answer(self, req: _Request, tokens: list[int], budget: int, stops: list[str] | None
                ) -> Parsed:
        ended = False
        kept: list[int] = []
        for t in tokens:
            if t in self.eos_ids:
                ended = True
                break
            kept.append(t)
        with self._tok_lock:
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
        finish = "stop" if ended else ("length" if len(kept) >= budget else "stop")
        if stops:
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
        answer, reasoning = split_reasoning(text)
        return Parsed(answer, finish, len(req.ids), len(kept), reasoning=reasoning)

    def _grammar(self, constraint_key: str) -> Any:
        """The constraint compiled for this model's tokenizer (cached per schema)."""
        if self._grammars is None:
            self._grammars = _grammar_compiler(self.tokenizer, self.eos_ids,
                                               getattr(self.net.config, "vocab_size", None))
        try:
            return self._grammars(constraint_key)
        except Exception as exc:
            raise RowFailure(f"xgrammar could not compile this row's schema: "
                             f"{_native_message(exc)}") from None

    def _run_embed(self, ids: list[list[int]]) -> list[Parsed]:
        import numpy as np

        torch = self._torch
        out: list[Parsed] = []
        for start in range(0, len(ids), self.max_batch):
            chunk = ids[start:start + self.max_batch]
            longest = max(len(x) for x in chunk)
            input_ids = torch.full((len(chunk), longest), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), longest), dtype=torch.long)
            # padded on the right, unlike generation: every row's tokens keep positions 0..n-1,
            # so a row's vector does not depend on how long the others in its pack are
            for row, seq in enumerate(chunk):
                input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, :len(seq)] = 1
            with torch.inference_mode():
                hidden = self.net(input_ids=input_ids.to(self.device),
                                  attention_mask=mask.to(self.device),
                                  output_hidden_states=True).hidden_states[-1]
                m = mask.to(hidden.device).unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
            for seq, vec in zip(chunk, pooled.cpu().numpy()):
                out.append(Parsed(np.asarray(vec, dtype=np.float32), None, len(seq), 0))
        return out

    # -- lifecycle ------------------------------------------------------------------------------

    def unload(self) -> None:
        self._closing = True
        self._queue.put(None)
        self._thread.join(timeout=60)
        net = getattr(self, "net", None)
        self.net = None
        del net
        import gc

        gc.collect()
        if self.device == "cuda":
            self._torch.cuda.empty_cache()

    def describe(self) -> dict:
        return {**super().describe(), "device": self.device, "max_batch": self.max_batch}


def _cancel_criteria(flags: list[StopFlag]):
    """A stopping criterion that ends cancelled rows (all of them ends the batch)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.tensor([bool(f) for f in flags], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Cancelled()])


def _native_message(exc: Exception) -> str:
    """xgrammar's error without the C++ source location it starts with."""
    text = re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", str(exc).strip())
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _grammar_compiler(tokenizer: Any, eos_ids: set[int], vocab_size: int | None) -> Any:
    """constraint JSON -> xgrammar CompiledGrammar for this tokenizer, cached per constraint.
    The JSON is compact (``any_whitespace=False``); ``json_object`` is any object."""
    import xgrammar as xgr

    size = vocab_size or len(tokenizer)
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=size,
                                              stop_token_ids=sorted(eos_ids) or None)
    compiler = xgr.GrammarCompiler(info, max_threads=1)

    @functools.lru_cache(maxsize=64)
    def compiled(constraint_key: str) -> Any:
        constraint = json.loads(constraint_key)
        if "json" in constraint:
            return compiler.compile_json_schema(json.dumps(constraint["json"]),
                                                any_whitespace=False)
        return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False,
                                            strict_mode=False)

    return compiled


def _schema_mask(compiled: Any, rows: int) -> Any:
    """A logits processor that holds each row to ``compiled`` (one xgrammar matcher per row and
    a shared token bitmask). A row that ends for another reason (a stop string, a cancel) is
    fed padding next, which its grammar refuses: that row is let go, not failed."""
    import xgrammar as xgr
    from transformers import LogitsProcessor

    class _SchemaMask(LogitsProcessor):
        def __init__(self) -> None:
            self.matchers = [xgr.GrammarMatcher(compiled) for _ in range(rows)]
            self.bitmask = xgr.allocate_token_bitmask(rows, compiled.tokenizer_info.vocab_size)
            self.held = [True] * rows
            self.started = False

        def __call__(self, input_ids, scores):
            if self.started:  # each row's last token: the one sampled under its mask
                for i, token in enumerate(input_ids[:, -1].tolist()):
                    matcher = self.matchers[i]
                    if self.held[i] and not matcher.is_terminated():
                        self.held[i] = matcher.accept_token(token)
            self.started = True
            for i, matcher in enumerate(self.matchers):
                if self.held[i] and not matcher.is_terminated():
                    matcher.fill_next_token_bitmask(self.bitmask, i)
                else:
                    self.bitmask[i] = -1  # every bit set: the row is over, nothing to hold
            if scores.device.type in ("cpu", "cuda"):
                xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device))
                return scores
            on_cpu = scores.cpu()  # xgrammar masks on the CPU or CUDA only (e.g. not MPS)
            xgr.apply_token_bitmask_inplace(on_cpu, self.bitmask)
            return on_cpu.to(scores.device)

    return _SchemaMask()
