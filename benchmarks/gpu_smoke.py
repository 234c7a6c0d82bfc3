"""A real model on a real GPU, end to end, through a GPU engine (vLLM by default).

    python benchmarks/gpu_smoke.py --model Qwen/Qwen2.5-0.5B-Instruct
    python benchmarks/gpu_smoke.py --engine fastdeploy --model baidu/ERNIE-4.5-0.3B-Paddle
    python benchmarks/gpu_smoke.py --engine transformers --model /models/Qwen2.5-0.5B-Instruct

Checks, in order: a factual question at temperature 0 is answered correctly; a row over the
context window is that row's ContextLengthError while the others run; a few hundred sampled rows
(temperature 0.7, top_p 0.95, max_tokens 256) all succeed, with tokens/s and the engine's queue /
first-token times; the engine is reused by a second call; ``bm.unload()`` ends the engine and the
GPU memory comes back. Prints a JSON summary; exits 0 when every check passed, 1 when one failed,
and 2 (with a message) when there is no GPU or the engine is not installed.

The model must be loadable by the engine on this machine (a local folder, or an id it may fetch:
batchmagic itself never downloads).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import batchmagic as bm  # noqa: E402
from batchmagic import engines  # noqa: E402


def gpu_memory_used_mib() -> list[int] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [int(x) for x in out.split() if x.strip().isdigit()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="vllm", choices=["vllm", "fastdeploy", "transformers"])
    ap.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--option", action="append", default=[], metavar="KEY=JSON",
                    help="an engine option, e.g. --option max_model_len=4096")
    args = ap.parse_args(argv)

    used = gpu_memory_used_mib()
    if not used:
        print("gpu_smoke: no NVIDIA GPU found (nvidia-smi is missing or lists no GPU); nothing to "
              "check on this machine", file=sys.stderr)
        return 2
    module = {"vllm": "vllm", "fastdeploy": "fastdeploy", "transformers": "transformers"}[args.engine]
    if importlib.util.find_spec(module) is None:
        print(f"gpu_smoke: {args.engine} is not installed in this environment", file=sys.stderr)
        return 2
    options = {}
    for item in args.option:
        key, _, value = item.partition("=")
        options[key] = json.loads(value)
    kw = dict(engine=args.engine, model=args.model, engine_options=options or None, cache=False,
              progress=False)
    report: dict = {"engine": args.engine, "model": args.model, "gpu_memory_before_mib": used,
                    "checks": {}}
    checks = report["checks"]

    t0 = time.perf_counter()
    first = bm.batch(["What is the capital of France? Answer with one word."],
                     params={"temperature": 0, "max_tokens": 16}, **kw)
    report["load_and_first_row_s"] = round(time.perf_counter() - t0, 1)
    checks["paris"] = bool(first["error"][0] is None and "Paris" in str(first["output"][0]))
    report["first_answer"] = first["output"][0]

    window = engines.loaded()[0]["context_window"]
    rows = [f"Write a short paragraph about topic number {i}." for i in range(args.rows)]
    rows[3] = "word " * (window + 100)
    t0 = time.perf_counter()
    out = bm.batch(rows, params={"temperature": 0.7, "top_p": 0.95, "max_tokens": 256}, **kw)
    wall = time.perf_counter() - t0
    facts = out.attrs["batchmagic"]
    checks["long_row_is_context_error"] = isinstance(out["error"][3], bm.ContextLengthError)
    checks["other_rows_ok"] = int(out["error"].isna().sum()) == args.rows - 1
    report["rows"] = args.rows
    report["wall_s"] = round(wall, 2)
    report["output_tokens"] = int(facts["output_tokens"])
    report["output_tokens_per_s"] = round(facts["output_tokens"] / wall, 1)
    report["engine_info"] = engines.loaded()
    pid = report["engine_info"][0].get("pid")
    checks["reused"] = len(engines.loaded()) == 1

    unloaded = bm.unload(args.engine)
    time.sleep(3)
    after = gpu_memory_used_mib()
    report["gpu_memory_after_unload_mib"] = after
    checks["unloaded"] = unloaded == 1 and engines.loaded() == []
    if after is not None and used is not None:
        checks["gpu_memory_released"] = sum(after) <= sum(used) + 512
    if pid:
        try:
            os.kill(pid, 0)
            checks["process_ended"] = False
        except ProcessLookupError:
            checks["process_ended"] = True
    report["passed"] = all(checks.values())
    print(json.dumps(report, indent=2, default=str))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
