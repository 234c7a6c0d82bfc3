"""The machinery of ``python -m benchmarks run``: which contenders exist and where they live, one
run of one contender in a fresh subprocess against the simulator, and small statistics helpers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHILD = HERE / "_child.py"
RESULTS = HERE / "results"

#: where the peers' virtual environments live (BENCH_PEERS_DIR moves them, e.g. in a test)
PEERS_DIR = Path(os.environ.get("BENCH_PEERS_DIR") or HERE)
#: the peers' virtual environments, built by ``python -m benchmarks setup``
VENVS = {
    "peers": (PEERS_DIR / ".venv-peers", HERE / "requirements-peers.txt"),
    # the newest OpenAI SDK cannot share an environment with bespokelabs-curator 0.1.31, which
    # pins litellm 1.83.7, which pins openai 2.30.0: it gets an environment of its own
    "openai": (PEERS_DIR / ".venv-peers-openai", HERE / "requirements-peers-openai.txt"),
}


@dataclass(frozen=True)
class Contender:
    name: str
    label: str  #: how the tables name it
    venv: str | None  #: None: the project's own interpreter
    modules: tuple[str, ...]  #: import check for the project's interpreter
    how: str  #: one line: how it is driven


CONTENDERS: dict[str, Contender] = {c.name: c for c in (
    Contender("aiohttp", "raw aiohttp + semaphore (floor)", None, ("aiohttp", "orjson"),
              "aiohttp.ClientSession, TCPConnector(limit=C), asyncio.Semaphore(C), no retries"),
    Contender("httpx", "raw httpx 0.28 + semaphore (floor)", None, ("httpx",),
              "httpx.AsyncClient(limits=C), asyncio.Semaphore(C), no retries"),
    Contender("httpx2", "raw httpx2 + semaphore (floor)", None, ("httpx2",),
              "httpx2.AsyncClient(limits=C), asyncio.Semaphore(C), no retries"),
    Contender("openai", "OpenAI SDK AsyncOpenAI + semaphore", "openai", (),
              "AsyncOpenAI(base_url=...) with its default transport and 2 retries, "
              "asyncio.Semaphore(C)"),
    Contender("openai-aiohttp", "AsyncOpenAI(DefaultAioHttpClient) + semaphore", "openai", (),
              "AsyncOpenAI(http_client=DefaultAioHttpClient()), asyncio.Semaphore(C)"),
    Contender("qianfan", "Qianfan SDK batch_do", "peers", (),
              "qianfan.ChatCompletion(version=2).batch_do(messages_list, worker_num=C); "
              "QIANFAN_CONSOLE_API_BASE_URL + QIANFAN_CHAT_V2_API_ROUTE point it at the server"),
    Contender("litellm", "LiteLLM batch_completion / Router", "peers", (),
              "litellm.batch_completion(max_workers=C); with a limit: Router(rpm=, tpm=, "
              "usage-based-routing-v2).acompletion + asyncio.Semaphore(C)"),
    Contender("curator", "Bespoke Curator (online)", "peers", (),
              "curator.LLM(backend='openai', backend_params={base_url, "
              "max_concurrent_requests=C, ...})(prompts)"),
    Contender("langchain", "LangChain ChatOpenAI.abatch", "peers", (),
              "ChatOpenAI(base_url=...).abatch(prompts, config={'max_concurrency': C})"),
    Contender("batchmagic", "batchmagic bm.batch", None, ("batchmagic",),
              "bm.batch(rows, provider='simulator', base_url=..., concurrency=C), journal on in "
              "a fresh folder per run"),
)}

CHAT = ["aiohttp", "httpx", "httpx2", "openai", "openai-aiohttp", "qianfan", "litellm", "curator",
        "langchain", "batchmagic"]


def venv_python(venv: str) -> Path:
    return VENVS[venv][0] / "bin" / "python"


def availability(name: str) -> str | None:
    """None if the contender can be started here, else why not."""
    c = CONTENDERS[name]
    if c.venv is None:
        for mod in c.modules:
            if importlib.util.find_spec(mod) is None:
                return f"not installed: {mod} is missing from the project's environment"
        return None
    py = venv_python(c.venv)
    if not py.exists():
        folder = VENVS[c.venv][0]
        with contextlib.suppress(ValueError):
            folder = folder.relative_to(ROOT)
        return (f"not installed: the peers' environment {folder} does not exist "
                "(build it with `python -m benchmarks setup`)")
    return None


# -- one run ---------------------------------------------------------------------------------------


@dataclass
class RunResult:
    ok: bool
    data: dict = field(default_factory=dict)
    error: str | None = None
    server: dict = field(default_factory=dict)  #: sim.stats() after the run
    calls: list = field(default_factory=list)  #: the call log, where the workload asked for it
    context: dict = field(default_factory=dict)  #: what before_go returned (e.g. schedule start)
    version: str | None = None  #: the contender's library version, as its child reported it


def child_env(contender: Contender, sim_url: str, scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    # caches and state a library might write go to this run's scratch folder, deleted after it
    env["XDG_CACHE_HOME"] = str(scratch / "cache")
    env["HF_HOME"] = str(scratch / "hf")
    env["HF_HUB_OFFLINE"] = env["HF_DATASETS_OFFLINE"] = "1"
    env["BATCHMAGIC_JOURNAL_DIR"] = str(scratch / "journal")
    env["OPENAI_API_KEY"] = "sk-bench-not-a-secret"
    # LiteLLM and Curator: no network at import or run time
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["LITELLM_LOG"] = "ERROR"
    env["TELEMETRY_ENABLED"] = "False"
    env["CURATOR_CACHE_DIR"] = str(scratch / "curator")
    env["CURATOR_DISABLE_RICH_DISPLAY"] = "1"
    env["CURATOR_VIEWER"] = "0"
    if contender.venv == "peers":
        # tiktoken downloads its encodings on first use; LiteLLM ships cl100k_base, which is the
        # encoding Curator's OpenAI backend asks for
        tok = _litellm_tokenizers()
        if tok:
            env["TIKTOKEN_CACHE_DIR"] = tok
    # Qianfan v2 (OpenAI-compatible): the host comes from QIANFAN_CONSOLE_API_BASE_URL and the
    # path from QIANFAN_CHAT_V2_API_ROUTE; QIANFAN_BASE_URL only serves the v1 API and OAuth
    root = sim_url.removesuffix("/v1")
    env["QIANFAN_CONSOLE_API_BASE_URL"] = root
    env["QIANFAN_CHAT_V2_API_ROUTE"] = "/v1/chat/completions"
    env["QIANFAN_BEARER_TOKEN"] = "sk-bench-not-a-secret"
    env["QIANFAN_CACHE_DIR"] = str(scratch / "qianfan")
    env["QIANFAN_LOG_LEVEL"] = "ERROR"
    if contender.venv is None:
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + (
            [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


_TOKENIZERS: str | None | bool = False


def _litellm_tokenizers() -> str | None:
    global _TOKENIZERS
    if _TOKENIZERS is False:
        lib = VENVS["peers"][0] / "lib"
        found = sorted(lib.glob("python3*/site-packages/litellm/litellm_core_utils/tokenizers"))
        _TOKENIZERS = str(found[0]) if found else None
    return _TOKENIZERS or None


def run_one(contender: str, spec: dict, sim: Any, *, timeout: float, calls: bool = False,
            before_go: Any = None, setup_timeout: float = 180.0,
            stop_at_deadline: bool = False) -> RunResult:
    """Start the contender's child, reset the simulator when it is ready, let it go, collect.

    With ``stop_at_deadline`` a run still going after ``timeout`` is stopped and counts: the
    workload measures it from the simulator's call log (the rows it would still have answered
    are unknown)."""
    c = CONTENDERS[contender]
    why = availability(contender)
    if why:
        return RunResult(False, error=why)
    python = str(venv_python(c.venv)) if c.venv else sys.executable
    spec = dict(spec, contender=contender, url=sim.base_url)
    scratch = Path(tempfile.mkdtemp(prefix="bm-bench-"))
    env = child_env(c, sim.base_url, scratch)
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen([python, str(CHILD), json.dumps(spec)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=str(scratch),
                            text=True, bufsize=1)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(("READY", "RESULT ", "SETUP-FAILED ")):
                lines.put(line.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    def wait_for(deadline: float) -> str | None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            try:
                line = lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            return line

    result: RunResult
    try:
        line = wait_for(time.monotonic() + setup_timeout)
        if line is None or line == "timeout" or not line.startswith("READY"):
            if line and line.startswith("SETUP-FAILED "):
                err = json.loads(line[len("SETUP-FAILED "):])["error"]
            elif line == "timeout":
                err = f"did not start within {setup_timeout:.0f} s"
            else:
                err = _last_line(stderr) or "exited before it was ready"
            return RunResult(False, error=f"cannot start: {err}")
        version = None
        with contextlib.suppress(ValueError, KeyError):
            version = json.loads(line[len("READY "):] or "{}")["version"]
        sim.reset()
        context = before_go(sim) if before_go else {}
        assert proc.stdin is not None
        proc.stdin.write("GO\n")
        proc.stdin.flush()
        line = wait_for(time.monotonic() + timeout)
        if line == "timeout" and stop_at_deadline:
            result = RunResult(True, data={"wall": timeout, "cpu": None, "ok": None,
                                           "failed": None, "errors": {}, "stopped": True},
                               context=context)
        elif line == "timeout":
            result = RunResult(False, error=f"timed out after {timeout:.0f} s", context=context)
        elif line is None or not line.startswith("RESULT "):
            result = RunResult(False, error=f"crashed: {_last_line(stderr) or 'no result'}",
                               context=context)
        else:
            result = RunResult(True, data=json.loads(line[len("RESULT "):]), context=context)
        result.version = version
        with contextlib.suppress(Exception):
            result.server = sim.stats()
        if calls:
            with contextlib.suppress(Exception):
                result.calls = sim.calls()
        return result
    finally:
        if proc.poll() is None:
            proc.kill()  # the child this call started, by its own handle
        with contextlib.suppress(Exception):
            proc.wait(10)
        reader.join(2)
        stderr.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _last_line(fh: Any) -> str:
    try:
        fh.flush()
        fh.seek(0)
        text = fh.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # the exception line of a traceback, not a log line after it
    for ln in reversed(lines):
        if ("Error" in ln or "Exception" in ln) and not ln.startswith(("File ", "^")):
            return ln[:300]
    return lines[-1][:300] if lines else ""


# -- statistics ------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict | None:
    """min / median / max of the repeats (None when there are none)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "n": len(values)}


def fmt_spread(s: dict | None, fmt: str = "{:.2f}", unit: str = "") -> str:
    if not s:
        return "-"
    med = fmt.format(s["median"]) + unit
    if s["n"] == 1:
        return med
    return f"{med} ({fmt.format(s['min'])}–{fmt.format(s['max'])})"


def percent(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"
