"""Offline engines: bm.batch's tokens/s against a plain loop over the same library.

    python benchmarks/offline.py            # llama.cpp and transformers, SmolLM2-135M on the CPU
    python benchmarks/offline.py --quick    # fewer rows: keeps the harness working
    python benchmarks/offline.py --only llama.cpp

llama.cpp (llama-cpp-python, the bundled SmolLM2-135M-Instruct Q4_1 GGUF, n_ctx 4096, greedy,
max_tokens 64, the same chat prompts):

  plain loop       one ``Llama`` with every core, ``create_chat_completion`` row after row
                   (what a notebook loop does)
  bm (1 context)   ``engine="llama.cpp"`` with the plain loop's layout (1 context x every core):
                   batchmagic's own overhead
  bm (default)     ``engine="llama.cpp"`` with its default layout (one context per core)

transformers (the same GGUF loaded through transformers, float32 on the CPU, greedy,
max_new_tokens 32):

  plain loop       ``generate`` one row at a time
  plain batches    ``generate`` on chunks of ``max_batch`` rows, left-padded (the same batching
                   the engine does, without batchmagic)
  bm               ``engine="transformers"`` with the same ``max_batch``

Models are loaded and warmed before timing; every contender answers the same rows, interleaved,
repeated, median reported. Tokens/s counts generated tokens (the engines' own usage counts).
CPU ms/token is the whole process's CPU time per generated token: on a machine shared with other
work wall-clock rates drift, and this says whether batchmagic itself costs anything.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import batchmagic as bm  # noqa: E402
from batchmagic.engines import _models  # noqa: E402


def prompts(n: int) -> list[str]:
    topics = ["the sea", "a mountain", "coffee", "a library", "winter", "a train", "the moon",
              "a garden", "bicycles", "the desert", "music", "a market"]
    return [f"Write one sentence about {topics[i % len(topics)]} and the number {i}."
            for i in range(n)]


def _median_rate(samples: list[tuple[int, float, float]]) -> tuple[float, int, float, float]:
    """(median tokens/s, tokens, median wall s, median process CPU ms per token)."""
    rates = [tok / wall for tok, wall, _ in samples]
    tokens = samples[0][0]
    cpu = statistics.median(c / tok * 1000 for tok, _, c in samples)
    return statistics.median(rates), tokens, statistics.median(w for _, w, _ in samples), cpu


def _timed(fn) -> tuple[int, float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    tokens = fn()
    return tokens, time.perf_counter() - t0, time.process_time() - c0


# -- llama.cpp ------------------------------------------------------------------------------


def bench_llama(rows: list[str], max_tokens: int, repeats: int) -> dict:
    from llama_cpp import Llama

    from batchmagic.engines import _llamacpp

    path = _models.default_gguf()
    cores = os.cpu_count() or 1
    n_ctx = 4096
    contexts, threads = _llamacpp.layout({})
    params = {"max_tokens": max_tokens, "temperature": 0}

    plain = Llama(path, n_ctx=n_ctx, n_threads=cores, n_threads_batch=cores, verbose=False)

    def plain_loop() -> int:
        total = 0
        for q in rows:
            out = plain.create_chat_completion([{"role": "user", "content": q}],
                                               max_tokens=max_tokens, temperature=0)
            total += out["usage"]["completion_tokens"]
        return total

    one_ctx = {"n_contexts": 1, "n_threads": cores, "n_ctx": n_ctx}
    default = {"n_ctx": n_ctx}

    def bm_run(options: dict) -> int:
        out = bm.batch(rows, engine="llama.cpp", engine_options=options, params=params,
                       cache=False, progress=False)
        assert out["error"].isna().all(), out["error"].dropna().head()
        return int(out["output_tokens"].sum())

    # load and warm everything before timing
    plain_loop_warm = plain.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=4)
    del plain_loop_warm
    for options in (one_ctx, default):
        bm.batch(["hi"], engine="llama.cpp", engine_options=options, params={"max_tokens": 4},
                 cache=False, progress=False)

    contenders = {"plain loop": plain_loop, "bm (1 context)": lambda: bm_run(one_ctx),
                  "bm (default)": lambda: bm_run(default)}
    samples: dict[str, list[tuple[int, float, float]]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            samples[name].append(_timed(fn))
    plain.close()
    bm.unload("llama.cpp")
    result = {"layout_default": {"n_contexts": contexts, "n_threads": threads},
              "layout_plain": {"n_contexts": 1, "n_threads": cores}, "rows": len(rows),
              "max_tokens": max_tokens, "contenders": {}}
    base = _median_rate(samples["plain loop"])[0]
    for name in contenders:
        rate, tokens, wall, cpu = _median_rate(samples[name])
        result["contenders"][name] = {"tokens": tokens, "wall_s": round(wall, 3),
                                      "tokens_per_s": round(rate, 1),
                                      "x_plain_loop": round(rate / base, 3),
                                      "cpu_ms_per_token": round(cpu, 2),
                                      "all_tokens_per_s": [round(t / w, 1) for t, w, _ in
                                                           samples[name]]}
    return result


# -- transformers --------------------------------------------------------------------------


def bench_transformers(rows: list[str], max_tokens: int, repeats: int, max_batch: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _models.default_gguf()
    where, name = os.path.dirname(path), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(where, gguf_file=name, local_files_only=True)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, local_files_only=True,
                                                 dtype=torch.float32).eval()
    eos = {tok.eos_token_id, model.generation_config.eos_token_id}
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                     add_generation_prompt=True) for q in rows]

    def count(new_rows) -> int:
        total = 0
        for seq in new_rows:
            for t in seq:
                if t in eos:
                    break
                total += 1
        return total

    def generate(chunk: list[str]) -> int:
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        return count(out[:, enc["input_ids"].shape[1]:].tolist())

    def plain_loop() -> int:
        return sum(generate([t]) for t in texts)

    def plain_batches() -> int:
        return sum(generate(texts[i:i + max_batch]) for i in range(0, len(texts), max_batch))

    options = {"max_batch": max_batch}
    params = {"max_tokens": max_tokens, "temperature": 0}

    def bm_run() -> int:
        out = bm.batch(rows, engine="transformers", engine_options=options, params=params,
                       cache=False, progress=False)
        assert out["error"].isna().all(), out["error"].dropna().head()
        return int(out["output_tokens"].sum())

    generate(texts[:1])
    bm.batch(["hi"], engine="transformers", engine_options=options, params={"max_tokens": 4},
             cache=False, progress=False)
    contenders = {"plain loop": plain_loop, "plain batches": plain_batches, "bm": bm_run}
    samples: dict[str, list[tuple[int, float, float]]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for cname, fn in contenders.items():
            samples[cname].append(_timed(fn))
    bm.unload("transformers")
    result = {"rows": len(rows), "max_tokens": max_tokens, "max_batch": max_batch,
              "torch_threads": torch.get_num_threads(), "contenders": {}}
    loop_rate = _median_rate(samples["plain loop"])[0]
    batch_rate = _median_rate(samples["plain batches"])[0]
    for cname in contenders:
        rate, tokens, wall, cpu = _median_rate(samples[cname])
        result["contenders"][cname] = {"tokens": tokens, "wall_s": round(wall, 3),
                                       "tokens_per_s": round(rate, 1),
                                       "x_plain_loop": round(rate / loop_rate, 3),
                                       "x_plain_batches": round(rate / batch_rate, 3),
                                       "cpu_ms_per_token": round(cpu, 2),
                                       "all_tokens_per_s": [round(t / w, 1) for t, w, _ in
                                                            samples[cname]]}
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["llama.cpp", "transformers"])
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--rows", type=int, help="rows per contender (default 48 llama.cpp, 32 "
                    "transformers)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    report: dict = {
        "date": dt.date.today().isoformat(), "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    if args.only in (None, "llama.cpp"):
        rows = prompts(args.rows or (8 if args.quick else 48))
        report["llama.cpp"] = bench_llama(rows, 64, repeats)
        _print("llama.cpp", report["llama.cpp"])
    if args.only in (None, "transformers"):
        rows = prompts(args.rows or (8 if args.quick else 32))
        report["transformers"] = bench_transformers(rows, 32, repeats, max_batch=8)
        _print("transformers", report["transformers"])
    out = HERE / "results" / "offline.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")
    return 0


def _print(title: str, result: dict) -> None:
    print(f"\n{title}: {result['rows']} rows, max_tokens {result['max_tokens']}")
    if "layout_default" in result:
        d = result["layout_default"]
        print(f"  default layout: {d['n_contexts']} contexts x {d['n_threads']} threads")
    print(f"  {'contender':<16} {'tokens':>7} {'wall s':>8} {'tokens/s':>9} {'x plain loop':>13} "
          f"{'CPU ms/token':>13}")
    for name, c in result["contenders"].items():
        extra = f"  ({c['x_plain_batches']:.2f}x plain batches)" if "x_plain_batches" in c else ""
        print(f"  {name:<16} {c['tokens']:>7} {c['wall_s']:>8.2f} {c['tokens_per_s']:>9.1f} "
              f"{c['x_plain_loop']:>12.2f}x {c['cpu_ms_per_token']:>13.2f}{extra}")


if __name__ == "__main__":
    sys.exit(main())
