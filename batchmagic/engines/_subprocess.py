"""GPU engines (vLLM, FastDeploy) in a subprocess batchmagic owns.

The worker (``_worker.py``) holds the model; this side sends it rows as JSON lines and matches the
answers to waiting futures by id, from a reader thread, so any thread (the run's event loop, the
pre-flight thread) can ask. Unloading ends the process (and its process group), which is the one
sure way to give the GPU memory back. If the process dies, every row in flight fails with
``EngineCrashed`` (retried once the engine is back), and the engine is loaded again on the next
call.

The engine's own log goes to a file, never to the notebook; its last lines are quoted when the
engine fails to load or dies.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import weakref

from .. import _tokens
from .._errors import ConfigError
from .._kinds import Parsed
from . import _params
from ._base import (
    ContextOverflow,
    Engine,
    EngineCrashed,
    RowFailure,
    split_body,
    split_reasoning,
    text_messages,
)

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")
OWN_OPTIONS = ("python", "load_timeout", "workers")
DEFAULT_LOAD_TIMEOUT = 1800.0
_live: weakref.WeakSet = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    for engine in list(_live):
        try:
            engine.unload()
        except Exception:
            pass


atexit.register(_stop_all_at_exit)


class SubprocessEngine(Engine):
    """The batchmagic side of a worker process; a subclass per engine says what differs."""

    #: batchmagic's own options the engine's constructor also takes
    shared_options: tuple[str, ...] = ()

    @staticmethod
    def sampling_kwargs(params: dict) -> dict:
        """The engine's ``SamplingParams`` keyword arguments for a row's (normalised) params."""
        raise NotImplementedError

    def __init__(self, spec) -> None:
        self.spec = spec
        self.name = spec.engine
        self.model = spec.model
        self.kind = spec.kind
        self.default_concurrency = spec.default_concurrency
        options = dict(spec.options)
        python = options.get("python") or sys.executable
        load_timeout = float(options.get("load_timeout") or DEFAULT_LOAD_TIMEOUT)
        engine_options = {k: v for k, v in options.items()
                          if k not in OWN_OPTIONS or k in self.shared_options}
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._lock = threading.Lock()
        self._next_id = 0
        self.alive = True
        self._closing = False
        log = tempfile.NamedTemporaryFile(prefix=f"batchmagic-{self.name}-", suffix=".log",
                                          delete=False)
        self.log_path = log.name
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        try:
            self._proc = subprocess.Popen(
                [python, WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                env=env, start_new_session=True,  # Ctrl-C stops the run, not the engine
            )
        finally:
            log.close()
        self._ready: concurrent.futures.Future = concurrent.futures.Future()
        self._reader = threading.Thread(target=self._read, name=f"batchmagic-{self.name}-reader",
                                        daemon=True)
        self._reader.start()
        self._write({"op": "load", "engine": self.name, "model": spec.model, "kind": spec.kind,
                     "options": engine_options})
        try:
            ready = self._ready.result(timeout=load_timeout)
        except concurrent.futures.TimeoutError:
            self._kill()
            raise ConfigError(f"the {self.name} engine did not load {spec.model!r} within "
                              f"{load_timeout:.0f} s (log: {self.log_path})") from None
        except EngineCrashed as exc:
            self._kill()
            raise ConfigError(f"the {self.name} engine could not load {spec.model!r}: {exc}") from None
        if ready.get("op") != "ready":
            self._kill()
            raise ConfigError(f"the {self.name} engine could not load {spec.model!r}: "
                              f"{ready.get('message')} (log: {self.log_path})")
        self.context_window = int(ready["context_window"])
        self.version = ready.get("version")
        self.metrics = {"rows": 0, "queue_s": 0.0, "ttft_s": 0.0, "timed": 0}
        _live.add(self)

    # -- the pipe -------------------------------------------------------------------------------

    def _write(self, msg: dict) -> None:
        data = json.dumps(msg, ensure_ascii=False).encode("utf-8") + b"\n"
        with self._lock:
            stdin = self._proc.stdin
            if stdin is None:
                raise EngineCrashed(self._death_message())
            stdin.write(data)
            stdin.flush()

    def _request(self, msg: dict) -> tuple[int, concurrent.futures.Future]:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            rid = self._next_id
            self._next_id += 1
            self._pending[rid] = fut
        if not self.alive:
            self._pending.pop(rid, None)
            fut.set_exception(EngineCrashed(self._death_message()))
            return rid, fut
        try:
            self._write({"id": rid, **msg})
        except (OSError, ValueError, EngineCrashed):
            with self._lock:
                self._pending.pop(rid, None)
            if not fut.done():
                fut.set_exception(EngineCrashed(self._death_message()))
        return rid, fut

    def _read(self) -> None:
        stdout = self._proc.stdout
        try:
            for line in stdout:  # type: ignore[union-attr]
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if "id" not in msg:
                    if not self._ready.done():
                        self._ready.set_result(msg)
                    continue
                with self._lock:
                    fut = self._pending.pop(msg["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (OSError, ValueError):
            pass
        # end of output: the worker exited (or was ended)
        self.alive = False
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        crash = EngineCrashed(self._death_message())
        if not self._ready.done():
            self._ready.set_exception(crash)
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for fut in pending:
            if not fut.done():
                fut.set_exception(crash)

    def _death_message(self) -> str:
        if self._closing:
            return f"the {self.name} engine was unloaded"
        code = self._proc.poll()
        how = f"exit code {code}" if code is not None and code >= 0 else \
            f"killed by signal {-code}" if code is not None else "no longer answering"
        tail = _tail(self.log_path)
        return (f"the {self.name} engine process died ({how}) with this row in flight; it is "
                f"restarted for the next rows" + (f"; its log ends: {tail}" if tail else ""))

    # -- the engine contract ---------------------------------------------------------------------

    def _item(self, body: dict) -> dict:
        content, params = split_body(body)
        if "messages" in body:
            item = {"kind": "chat", "messages": text_messages(content, self.name)}
            ctk = params.get("chat_template_kwargs")
            if ctk:
                item["chat_template_kwargs"] = ctk
            return item
        if not isinstance(content, str):
            raise RowFailure("a completion prompt must be text")
        return {"kind": "completion", "prompt": content}

    def count_tokens(self, body: dict) -> int:
        return self.count_tokens_many([body])[0]

    def count_tokens_many(self, bodies: list[dict]) -> list[int]:
        _, fut = self._request({"op": "count", "items": [self._item(b) for b in bodies]})
        answer = fut.result(timeout=600)
        if "error" in answer:
            raise RowFailure(answer["error"]["message"])
        counts = answer["ok"]["counts"]
        for c in counts:
            if isinstance(c, dict):
                raise RowFailure(c.get("error", "could not count tokens"))
        return counts

    async def generate(self, body: dict) -> list[Parsed]:
        item = self._item(body)
        _, params = split_body(body)
        params = _params.normalise(params)
        params.pop("chat_template_kwargs", None)
        request = {"op": "generate", **item, "sampling": self.sampling_kwargs(params),
                   "choices": _params.choices(params),
                   "default_max_tokens": _tokens.DEFAULT_MAX_OUTPUT}
        constraint = _params.structured(params)
        if constraint is not None:
            request["structured"] = constraint
        rid, fut = self._request(request)
        try:
            answer = await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            with self._lock:
                self._pending.pop(rid, None)
            if self.alive:
                try:
                    self._write({"op": "abort", "target": rid})
                except (OSError, ValueError, EngineCrashed):
                    pass
            raise
        if "error" in answer:
            err = answer["error"]
            if err.get("category") == "context":
                raise ContextOverflow(err.get("message", "the row does not fit the context"))
            raise RowFailure(f"{self.name}: {err.get('message', 'failed')}")
        ok = answer["ok"]
        results = [_choice(c, ok.get("prompt_tokens")) for c in ok.get("choices") or ()]
        if not results:
            raise RowFailure(f"{self.name} returned no answer for this row")
        self._note(ok.get("metrics"), results[0])
        return results

    def _note(self, metrics: dict | None, parsed: Parsed) -> None:
        m = self.metrics
        m["rows"] += 1
        if metrics:
            parsed.metrics = metrics
            if "queue_s" in metrics or "ttft_s" in metrics:
                m["timed"] += 1
                m["queue_s"] += metrics.get("queue_s") or 0.0
                m["ttft_s"] += metrics.get("ttft_s") or 0.0

    def unload(self) -> None:
        self._closing = True
        _live.discard(self)
        if self._proc.poll() is None:
            try:
                self._write({"op": "shutdown"})
                self._proc.wait(timeout=30)
            except (OSError, ValueError, EngineCrashed, subprocess.TimeoutExpired):
                pass
        self._kill()
        try:
            os.unlink(self.log_path)
        except OSError:
            pass

    def _kill(self) -> None:
        """End the worker and everything it started (vLLM runs its own engine processes)."""
        proc = self._proc
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            # the whole group: the leader, and children that outlive it
            try:
                os.killpg(proc.pid, sig)
            except OSError:
                pass
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        for pipe in (proc.stdin, proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        self.alive = False

    def describe(self) -> dict:
        d = {**super().describe(), "pid": self._proc.pid, "version": getattr(self, "version", None),
             "log": self.log_path}
        m = getattr(self, "metrics", None)
        if m and m["timed"]:
            d["mean_queue_s"] = m["queue_s"] / m["timed"]
            d["mean_ttft_s"] = m["ttft_s"] / m["timed"]
        return d


class VllmEngine(SubprocessEngine):
    sampling_kwargs = staticmethod(_params.vllm_sampling_kwargs)

    @staticmethod
    def concurrency_for(options: dict) -> int:
        return 2 * int(options.get("max_num_seqs") or 256)  # the scheduler's queue never runs dry


class FastDeployEngine(SubprocessEngine):
    sampling_kwargs = staticmethod(_params.fastdeploy_sampling_kwargs)
    shared_options = ("workers",)  # FastDeploy's LLM sizes its own pool with it too

    @staticmethod
    def concurrency_for(options: dict) -> int:
        return int(options.get("workers") or 64)

    @staticmethod
    def check_structured(constraint: dict, options: dict) -> None:
        # FastDeploy constrains decoding only when its LLM is loaded with a guided-decoding
        # backend (its documented offline example passes guided_decoding_backend="auto")
        backend = options.get("guided_decoding_backend")
        if backend in (None, "", "off"):
            raise ConfigError(
                "FastDeploy holds answers to a schema only when loaded with a guided-decoding "
                "backend: pass engine_options={'guided_decoding_backend': 'auto'} (or "
                "'xgrammar')")


def _choice(choice: dict, prompt_tokens: int | None) -> Parsed:
    text, reasoning = choice.get("text") or "", choice.get("reasoning")
    if reasoning is None:
        text, reasoning = split_reasoning(text)
    return Parsed(text, choice.get("finish_reason"), prompt_tokens,
                  choice.get("completion_tokens"), reasoning=reasoning)


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 4000))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
    return " / ".join(kept)[:600]

