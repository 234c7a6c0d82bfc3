"""The subprocess that runs a GPU engine (vLLM or FastDeploy) for batchmagic.

It is started as a script (``python _worker.py``), so it needs only the standard library and the
engine: the engine may live in another Python environment (``engine_options={"python": ...}``).
Ending this process is how batchmagic frees the GPU.

Protocol: JSON lines. stdin carries requests, stdout carries answers; everything the engine prints
goes to stderr (which batchmagic writes to a log file). The first request loads the model:

    -> {"op": "load", "engine": "vllm", "model": "...", "kind": "chat", "options": {...}}
    <- {"op": "ready", "context_window": 32768, "version": "..."}   or {"op": "error", "message"}
    -> {"id": 7, "op": "generate", "kind": "chat", "messages": [...], "sampling": {...},
        "choices": 1, "structured": {"json": {...}} | {"json_object": true} (optional),
        "chat_template_kwargs": {...}, "default_max_tokens": 512}
    <- {"id": 7, "ok": {"prompt_tokens", "metrics": {"queue_s", "ttft_s"},
                         "choices": [{"text", "reasoning", "finish_reason", "completion_tokens"}]}}
       {"id": 7, "error": {"category": "row" | "context", "message": "..."}}
    -> {"id": 8, "op": "count", "items": [{"kind": "chat", "messages": [...]}, ...]}
    <- {"id": 8, "ok": {"counts": [12, 40, {"error": "..."}]}}
    -> {"id": 9, "op": "abort", "target": 7}          (no answer; request 7 answers as cancelled)
    -> {"op": "shutdown"}                             (or end of stdin): the process exits

Requests are served concurrently: vLLM gets one ``generate`` per row on its async engine (it
batches continuously); FastDeploy's synchronous ``LLM`` is fed one row per worker thread.

``structured`` constrains decoding: vLLM gets ``SamplingParams(structured_outputs=
StructuredOutputsParams(**structured))`` (older vLLM: ``guided_decoding=
GuidedDecodingParams(...)``), FastDeploy ``guided_decoding=GuidedDecodingParams(**structured)``.
``choices`` answers: vLLM's ``n`` in one request; FastDeploy gets that many copies of the row,
each with its own seed (its offline ``LLM`` clones one ``SamplingParams``, seed included, for
each of ``n``, which would make the samples equal).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import threading
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor


class RowError(Exception):
    category = "row"


class ContextError(RowError):
    category = "context"


def _prompt_ids(tokenizer, msg: dict) -> list:
    """Token ids of one row: the chat template for chat rows, the raw text for completions."""
    if msg.get("kind") == "chat":
        text = tokenizer.apply_chat_template(
            msg["messages"], tokenize=False, add_generation_prompt=True,
            **(msg.get("chat_template_kwargs") or {}))
        ids = tokenizer.encode(text, add_special_tokens=False)
    else:
        ids = tokenizer.encode(msg["prompt"])
    if isinstance(ids, dict):  # some tokenizers answer with a mapping
        ids = ids["input_ids"]
    return list(ids)


def _budget(kw: dict, n_prompt: int, window: int, default_max: int) -> dict:
    if n_prompt == 0:  # the engines refuse an empty sequence (vLLM: "prompt cannot be empty")
        raise RowError("this row's text tokenizes to 0 tokens, so the model has nothing to read")
    if n_prompt >= window:
        raise ContextError(f"the prompt is {n_prompt:,} tokens; the context window is {window:,}")
    kw = dict(kw)
    if kw.get("max_tokens") is None:
        kw["max_tokens"] = max(1, min(default_max, window - n_prompt))
    elif n_prompt + kw["max_tokens"] > window:
        raise ContextError(f"the prompt is {n_prompt:,} tokens + max_tokens {kw['max_tokens']:,}, "
                           f"more than the context window of {window:,}")
    return kw


async def _maybe_await(value):
    return await value if inspect.isawaitable(value) else value


def _constrained(kw: dict, msg: dict, factory) -> dict:
    """``kw`` plus the engine's structured-output argument for the row's ``structured``.
    ``factory`` is (keyword, class) for this engine version, or None where it has none."""
    spec = msg.get("structured")
    if not spec:
        return kw
    if factory is None:
        raise RowError("this engine version has no structured output (guided decoding); "
                       "upgrade it to constrain answers to a schema")
    name, cls = factory
    try:
        return {**kw, name: cls(**spec)}
    except (TypeError, ValueError) as exc:
        raise RowError(f"the engine refused the structured-output parameters: {exc}") from None


def _vllm_structured():
    """(SamplingParams keyword, class) of this vLLM's structured outputs, or None."""
    try:
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError:
        try:  # older vLLM (its structured outputs were "guided decoding")
            from vllm.sampling_params import GuidedDecodingParams
        except ImportError:
            return None
        return "guided_decoding", GuidedDecodingParams
    return "structured_outputs", StructuredOutputsParams


def _fastdeploy_structured():
    try:
        from fastdeploy.engine.sampling_params import GuidedDecodingParams
    except ImportError:
        return None
    return "guided_decoding", GuidedDecodingParams


def _seeded_copies(kw: dict, n: int) -> list[dict]:
    """``n`` sets of sampling arguments for ``n`` copies of a row: a seeded row's copy i gets
    the seed + i (reproducible, and the samples differ)."""
    seed = kw.get("seed")
    return [dict(kw) if seed is None else {**kw, "seed": seed + i} for i in range(n)]


def _metrics(out) -> dict | None:
    """Queue time and time to first token from a RequestOutput, across engine versions."""
    m = getattr(out, "metrics", None)
    if m is None:
        return None

    def get(name):
        value = getattr(m, name, None)
        return value if isinstance(value, (int, float)) and value else None

    queue_s = get("time_in_queue")
    if queue_s is None and get("scheduled_ts") and get("queued_ts"):
        queue_s = m.scheduled_ts - m.queued_ts
    if queue_s is None and get("first_scheduled_time") and get("arrival_time"):
        queue_s = m.first_scheduled_time - m.arrival_time
    ttft = get("first_token_latency")
    if ttft is None and get("first_token_time") and get("arrival_time"):
        ttft = m.first_token_time - m.arrival_time
    found = {k: round(v, 6) for k, v in (("queue_s", queue_s), ("ttft_s", ttft)) if v is not None}
    return found or None


class VllmRunner:
    """vLLM's async engine: every row is its own ``generate`` call, so the engine's scheduler
    batches continuously and a slow row never holds back the others."""

    async def load(self, model: str, kind: str, options: dict) -> dict:
        import vllm
        from vllm import AsyncEngineArgs, SamplingParams

        try:
            from vllm import AsyncLLMEngine as EngineClass
        except ImportError:  # newer releases name the v1 engine AsyncLLM
            from vllm.v1.engine.async_llm import AsyncLLM as EngineClass
        opts = {"disable_log_stats": True, **options}
        args = AsyncEngineArgs(model=model, **opts)
        self.engine = EngineClass.from_engine_args(args)
        self.SamplingParams = SamplingParams
        self.structured = _vllm_structured()
        try:
            from vllm.sampling_params import RequestOutputKind

            self.final_only = RequestOutputKind.FINAL_ONLY
        except ImportError:
            self.final_only = None
        get_tok = getattr(self.engine, "get_tokenizer", None)
        self.tokenizer = await _maybe_await(get_tok()) if get_tok else self.engine.tokenizer
        config = getattr(self.engine, "model_config", None)
        if config is None:
            config = await _maybe_await(self.engine.get_model_config())
        self.window = int(config.max_model_len)
        return {"context_window": self.window, "version": getattr(vllm, "__version__", "?")}

    def count(self, msg: dict) -> int:
        return len(_prompt_ids(self.tokenizer, msg))

    async def generate(self, msg: dict) -> dict:
        ids = _prompt_ids(self.tokenizer, msg)
        kw = _budget(msg.get("sampling") or {}, len(ids), self.window,
                     msg.get("default_max_tokens", 512))
        if self.final_only is not None:
            kw["output_kind"] = self.final_only
        kw["n"] = msg.get("choices", 1)
        kw = _constrained(kw, msg, self.structured)
        try:
            params = self.SamplingParams(**kw)
        except (TypeError, ValueError) as exc:
            raise RowError(f"vLLM refused the sampling parameters: {exc}") from None
        final = None
        async for out in self.engine.generate({"prompt_token_ids": ids}, params,
                                              f"bm-{uuid.uuid4().hex}"):
            final = out
        if final is None or not final.outputs:
            raise RowError("vLLM returned no output for this row")
        choices = [{
            "text": choice.text,
            "reasoning": getattr(choice, "reasoning_content", None),
            "finish_reason": choice.finish_reason,
            "completion_tokens": len(choice.token_ids),
        } for choice in final.outputs]
        return {"prompt_tokens": len(final.prompt_token_ids or ids), "metrics": _metrics(final),
                "choices": choices}

    def shutdown(self) -> None:
        stop = getattr(self.engine, "shutdown", None)
        if stop is not None:
            stop()


class FastDeployRunner:
    """FastDeploy's ``LLM``: a synchronous API whose engine batches the requests it holds, fed
    one row per worker thread so there are always rows queued (no waves)."""

    async def load(self, model: str, kind: str, options: dict) -> dict:
        import fastdeploy
        from fastdeploy import LLM, SamplingParams

        workers = int(options.pop("workers", 64))
        self.llm = await asyncio.to_thread(LLM, model=model, **options)
        self.SamplingParams = SamplingParams
        self.structured = _fastdeploy_structured()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bm-fastdeploy")
        engine = getattr(self.llm, "llm_engine", None)
        cfg = getattr(engine, "cfg", None)
        window = getattr(cfg, "max_model_len", None) or options.get("max_model_len")
        if not window:
            raise RuntimeError("could not read max_model_len from FastDeploy; pass it in "
                               "engine_options")
        self.window = int(window)
        processor = getattr(engine, "data_processor", None)
        self.tokenizer = getattr(processor, "tokenizer", None)
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=True)
        return {"context_window": self.window, "version": getattr(fastdeploy, "__version__", "?")}

    def count(self, msg: dict) -> int:
        return len(_prompt_ids(self.tokenizer, msg))

    async def generate(self, msg: dict) -> dict:
        n_prompt = self.count(msg)
        kw = _budget(msg.get("sampling") or {}, n_prompt, self.window,
                     msg.get("default_max_tokens", 512))
        kw = _constrained(kw, msg, self.structured)
        loop = asyncio.get_running_loop()
        outs = await asyncio.gather(*(
            loop.run_in_executor(self.pool, self._run_one, msg, self._params(copy))
            for copy in _seeded_copies(kw, msg.get("choices", 1))))
        first = outs[0]
        return {"prompt_tokens": len(first.prompt_token_ids or []) or n_prompt,
                "metrics": _metrics(first),
                "choices": [self._choice(out, kw["max_tokens"]) for out in outs]}

    def _params(self, kw: dict):
        try:
            return self.SamplingParams(**kw)
        except (TypeError, ValueError) as exc:
            raise RowError(f"FastDeploy refused the sampling parameters: {exc}") from None

    def _run_one(self, msg: dict, params):
        """One copy of the row through FastDeploy's synchronous ``LLM`` (on a pool thread)."""
        if msg.get("kind") == "chat":
            outs = self.llm.chat([list(msg["messages"])], params, use_tqdm=False,
                                 chat_template_kwargs=msg.get("chat_template_kwargs"))
        else:
            outs = self.llm.generate([msg["prompt"]], params, use_tqdm=False)
        if not outs or outs[0] is None:
            raise RowError("FastDeploy returned no output for this row")
        out = outs[0]
        code = getattr(out, "error_code", 200)
        if code not in (None, 200):
            raise RowError(f"FastDeploy error {code}: {getattr(out, 'error_msg', '')}")
        return out

    @staticmethod
    def _choice(out, max_tokens: int) -> dict:
        comp = out.outputs
        n_out = len(comp.token_ids or [])
        return {
            "text": comp.text or "",
            "reasoning": getattr(comp, "reasoning_content", None),
            # FastDeploy reports no finish reason: a row that used its whole budget was cut off
            "finish_reason": "length" if n_out >= max_tokens else "stop",
            "completion_tokens": n_out,
        }

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


RUNNERS = {"vllm": VllmRunner, "fastdeploy": FastDeployRunner}


class Server:
    def __init__(self, out) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.tasks: dict = {}

    def send(self, msg: dict) -> None:
        data = json.dumps(msg, ensure_ascii=False, default=str).encode("utf-8") + b"\n"
        with self.lock:
            self.out.write(data)
            self.out.flush()

    async def serve(self, first: dict) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.runner = RUNNERS[first["engine"]]()
            info = await self.runner.load(first["model"], first.get("kind", "chat"),
                                          dict(first.get("options") or {}))
        except BaseException as exc:
            traceback.print_exc()
            self.send({"op": "error", "message": f"{type(exc).__name__}: {exc}"})
            return
        self.send({"op": "ready", **info})
        done = asyncio.Event()
        inbox: asyncio.Queue = asyncio.Queue()

        def read() -> None:
            for line in sys.stdin.buffer:
                if line.strip():
                    loop.call_soon_threadsafe(inbox.put_nowait, line)
            loop.call_soon_threadsafe(done.set)

        threading.Thread(target=read, daemon=True).start()
        waiter = asyncio.ensure_future(done.wait())
        while True:
            getter = asyncio.ensure_future(inbox.get())
            finished, _ = await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in finished:
                getter.cancel()
                break
            msg = json.loads(getter.result())
            op = msg.get("op")
            if op == "shutdown":
                break
            if op == "abort":
                task = self.tasks.get(msg.get("target"))
                if task is not None:
                    task.cancel()
                continue
            task = asyncio.ensure_future(self.handle(msg))
            self.tasks[msg["id"]] = task
            task.add_done_callback(lambda t, i=msg["id"]: self.tasks.pop(i, None))
        for task in list(self.tasks.values()):
            task.cancel()
        try:
            self.runner.shutdown()
        except Exception:
            traceback.print_exc()

    async def handle(self, msg: dict) -> None:
        rid = msg["id"]
        try:
            if msg["op"] == "count":
                counts = await asyncio.to_thread(self.count_many, msg["items"])
                self.send({"id": rid, "ok": {"counts": counts}})
            elif msg["op"] == "generate":
                self.send({"id": rid, "ok": await self.runner.generate(msg)})
            else:
                self.send({"id": rid, "error": {"category": "row",
                                                "message": f"unknown op {msg['op']!r}"}})
        except asyncio.CancelledError:
            self.send({"id": rid, "error": {"category": "row", "message": "cancelled"}})
        except RowError as exc:
            self.send({"id": rid, "error": {"category": exc.category, "message": str(exc)}})
        except Exception as exc:
            name = type(exc).__name__
            if "EngineDead" in name:  # the engine cannot serve anything more: exit, be restarted
                traceback.print_exc()
                os._exit(3)
            self.send({"id": rid, "error": {"category": "row", "message": f"{name}: {exc}"}})

    def count_many(self, items: list) -> list:
        counts: list = []
        for item in items:
            try:
                counts.append(self.runner.count(item))
            except Exception as exc:
                counts.append({"error": f"{type(exc).__name__}: {exc}"})
        return counts


def main() -> int:
    # run as a script, Python put this file's folder first on sys.path: drop it, so nothing here
    # can shadow a module the engine imports
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        sys.path.pop(0)
    # the protocol gets a private copy of stdout; file descriptor 1 itself now goes to the log, so
    # nothing the engine prints (from Python, C, or its own child processes) corrupts it
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    line = sys.stdin.buffer.readline()
    if not line:
        return 0
    first = json.loads(line)
    asyncio.run(Server(out).serve(first))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)  # do not wait for engine threads that ignore shutdown
