"""Run a simulator from Python: in a subprocess (SimulatorProcess) or a thread (SimulatorThread).

Admin calls use only urllib so tests do not depend on a client library.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ._config import API_KEY_ENV, ARK_SECRET_KEY_ENV, SimConfig
from ._server import READY_PREFIX, serve

# Admin traffic goes to 127.0.0.1 directly, never through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SimulatorError(RuntimeError):
    """The simulator failed to start or an admin call failed."""


class _AdminClient:
    """``calls`` / ``stats`` / ``configure`` / ``reset`` over the ``/_sim/`` admin endpoints."""

    base_url: str

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:<port>`` (``base_url`` without ``/v1``)."""
        return self.base_url.removesuffix("/v1")

    def _admin(self, method: str, path: str, payload: Any = None, timeout: float = 10.0) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.root_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            e.close()
            raise SimulatorError(f"{method} {path} -> {e.code}: {detail}") from None

    def calls(self, since: int = 0) -> list[dict[str, Any]]:
        """Call-log records from index ``since`` on."""
        return self._admin("GET", f"/_sim/calls?since={int(since)}")

    def stats(self) -> dict[str, Any]:
        return self._admin("GET", "/_sim/stats")

    def live_config(self) -> dict[str, Any]:
        """The live configuration (API key redacted)."""
        return self._admin("GET", "/_sim/config")

    def configure(self, **fields: Any) -> dict[str, Any]:
        """Change config fields live (``configure(rpm=600, faults={"500": 0.1})``)."""
        return self._admin("POST", "/_sim/config", fields)

    def reset(self) -> None:
        """Clear the call log, stats and per-body fault counts; refill the rate buckets."""
        self._admin("POST", "/_sim/reset", {})

    def health(self) -> dict[str, Any]:
        return self._admin("GET", "/_sim/health")


def _child_env(api_key: str | None, extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    # The package root first, then this interpreter's path: works from a source checkout.
    root = str(Path(__file__).resolve().parents[2])
    parts = [root] + [p for p in sys.path if p]
    if env.get("PYTHONPATH"):
        parts += env["PYTHONPATH"].split(os.pathsep)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop(API_KEY_ENV, None)
    env.pop(ARK_SECRET_KEY_ENV, None)
    if api_key is not None:
        env[API_KEY_ENV] = api_key  # never on the command line, where ps would show it
    if extra:
        env.update(extra)
    return env


class SimulatorProcess(_AdminClient):
    """``python -m batchmagic.simulator --port 0 ...`` in a subprocess, as a context manager.

    ``SimulatorProcess(latency=0.05, faults={"500": 0.1})`` or ``SimulatorProcess(cfg)``.
    """

    def __init__(self, config: SimConfig | None = None, *, startup_timeout: float = 20.0,
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None,
                 **fields: Any) -> None:
        cfg = config or SimConfig()
        if fields:
            cfg = _replace(cfg, fields)
        self.config = cfg
        self.startup_timeout = startup_timeout
        self._extra_args = list(extra_args or ())
        self._env = env
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr_file: Any = None
        self._stdout_lines: list[str] = []
        self._reader: threading.Thread | None = None
        self.base_url = ""
        self.last_stderr = ""

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise SimulatorError("simulator not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def start(self) -> SimulatorProcess:
        if self._proc is not None:
            return self
        args = [sys.executable, "-m", "batchmagic.simulator", *self.config.to_args(),
                *self._extra_args, "--exit-with-stdin"]
        if "--port" not in args:
            args += ["--port", "0"]
        self._stderr_file = tempfile.TemporaryFile()
        # the child stops when this pipe closes: when this process exits, however it dies,
        # the server goes with it (no orphan holding a port)
        self._proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr_file,
            env=_child_env(self.config.api_key, {
                **({ARK_SECRET_KEY_ENV: self.config.ark_secret_key}
                   if self.config.ark_secret_key else {}),
                **(self._env or {})}),
        )
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read_stdout, args=(ready,),
                                        name="batchmagic-sim-stdout", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.startup_timeout
        while not ready.wait(0.05):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                code = self._proc.poll()
                why = (f"exited with code {code}" if code is not None
                       else f"not ready after {self.startup_timeout:g}s")
                stderr = self.stderr_text()
                self.stop()
                raise SimulatorError(f"batchmagic simulator {why}; stderr:\n{stderr}")
        return self

    def _read_stdout(self, ready: threading.Event) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        # Keep draining after the ready line so a full pipe can never block the server.
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._stdout_lines.append(line)
            if not ready.is_set() and line.startswith(READY_PREFIX):
                self.base_url = line[len(READY_PREFIX):].strip()
                ready.set()

    def stdout_text(self) -> str:
        return "".join(line + "\n" for line in self._stdout_lines)

    def stderr_text(self) -> str:
        fh = self._stderr_file
        if fh is None or fh.closed:
            return ""
        fh.flush()
        fh.seek(0)
        return fh.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 5.0) -> int | None:
        """Terminate (SIGTERM), then kill after ``timeout`` s; returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(2.0)
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.stdout is not None:
            proc.stdout.close()
        if self._stderr_file is not None and not self._stderr_file.closed:
            self.last_stderr = self.stderr_text()  # kept for inspection after stop
            self._stderr_file.close()
        return proc.returncode

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SimulatorThread(_AdminClient):
    """The simulator on its own event loop in a daemon thread (cheap, for unit tests)."""

    def __init__(self, config: SimConfig | None = None, *, startup_timeout: float = 20.0,
                 **fields: Any) -> None:
        cfg = config or SimConfig()
        if fields:
            cfg = _replace(cfg, fields)
        self.config = cfg
        self.startup_timeout = startup_timeout
        self.base_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> SimulatorThread:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="batchmagic-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.startup_timeout):
            raise SimulatorError("batchmagic simulator thread did not start")
        if self._error is not None:
            raise SimulatorError(f"batchmagic simulator failed: {self._error}") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def main() -> None:
            self._stop = asyncio.Event()

            def ready(url: str) -> None:
                self.base_url = url
                self._ready.set()

            await serve(self.config, on_ready=ready, stop=self._stop)

        try:
            loop.run_until_complete(main())
        except BaseException as e:  # reported to start()
            self._error = e
        finally:
            self._ready.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self, timeout: float = 5.0) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # the loop already finished
        thread.join(timeout)
        self._thread = None

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _replace(cfg: SimConfig, fields: dict[str, Any]) -> SimConfig:
    return dataclasses.replace(cfg, **fields)
