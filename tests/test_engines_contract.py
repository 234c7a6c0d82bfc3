"""The engine contract without a model: outcomes, pre-flight, units, the demo's fallback.

``ScriptedEngine`` below is a test double for the ``Engine`` contract (it answers from a script);
the real engines are tested in test_engines_llamacpp / _transformers / _gpu.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import batchmagic as bm
from batchmagic._backend import CONTEXT, FATAL, OK, ROW, TRANSIENT, Unit
from batchmagic._kinds import Parsed
from batchmagic.engines import _base, engine_units, preflight


class ScriptedEngine(_base.Engine):
    """A test double: answers, or raises what the script says for a prompt."""

    name = "scripted"
    context_window = 50
    default_concurrency = 2

    def __init__(self, script: dict | None = None):
        self.script = script or {}
        self.kind = "chat"

    def count_tokens(self, body: dict) -> int:
        text = body["messages"][-1]["content"]
        if text == "untokenizable":
            raise ValueError("bad bytes")
        return len(text.split())

    async def generate(self, body: dict) -> list[Parsed]:
        text = body["messages"][-1]["content"]
        action = self.script.get(text)
        if isinstance(action, BaseException):
            raise action
        return [Parsed(f"ok:{text}#{i}", "stop", self.count_tokens(body), 1)
                for i in range(body.get("n", 1))]


def chat(text: str, **params) -> dict:
    return {"messages": [{"role": "user", "content": text}], **params}


def call(backend, body) -> object:
    return asyncio.run(backend.call(Unit([0], body, 0)))


def test_outcomes_map_engine_failures_to_the_dispatchers_categories():
    engine = ScriptedEngine({
        "long": _base.ContextOverflow("too long"),
        "bad": _base.RowFailure("bad row"),
        "boom": RuntimeError("library bug"),
        "died": _base.EngineCrashed("the process died"),
    })
    backend = _base.EngineBackend(engine, "chat")
    assert call(backend, chat("hi")).category == OK
    assert call(backend, chat("long")).category == CONTEXT
    assert call(backend, chat("bad")).category == ROW
    out = call(backend, chat("boom"))
    assert out.category == ROW and "library bug" in out.message
    out = call(backend, chat("died"))
    assert out.category == TRANSIENT and out.error_type is bm.ServerError


def test_a_unit_of_samples_gets_one_answer_per_item_and_its_prompt_counts_once():
    backend = _base.EngineBackend(ScriptedEngine(), "chat")
    out = asyncio.run(backend.call(Unit([4, 5, 6], chat("a b", n=3), 0)))
    assert out.category == OK
    assert [p.output for p in out.results] == ["ok:a b#0", "ok:a b#1", "ok:a b#2"]
    assert [p.input_tokens for p in out.results] == [2, 0, 0]
    # answers that cannot be matched to the unit's items are that unit's error, never a guess
    out = asyncio.run(backend.call(Unit([4], chat("a b", n=2), 0)))
    assert out.category == ROW and "2 answers for a request of 1" in out.message


def test_a_dead_engine_is_restarted_once_for_all_waiting_calls_then_the_run_stops():
    dead = ScriptedEngine()
    dead.alive = False
    loads = []

    def reload():
        loads.append(1)
        fresh = ScriptedEngine()
        if len(loads) > 1:
            fresh.alive = False  # it keeps dying
        return fresh

    backend = _base.EngineBackend(dead, "chat", reload=reload)

    async def many():
        return await asyncio.gather(*(backend.call(Unit([i], chat("hi"), 0)) for i in range(5)))

    assert [o.category for o in asyncio.run(many())] == [OK] * 5
    assert len(loads) == 1  # one restart served every waiting call
    backend.engine.alive = False
    assert call(backend, chat("hi")).category == OK  # second restart (allowed)...
    backend.engine.alive = False
    out = call(backend, chat("hi"))  # ...the third is not: the run stops
    assert out.category == FATAL and "crashed" in out.message


def test_aclose_does_not_unload():
    engine = ScriptedEngine()
    engine.unload = lambda: pytest.fail("aclose must leave the engine loaded")
    asyncio.run(_base.EngineBackend(engine).aclose())


def test_preflight_flags_rows_that_cannot_fit_and_records_real_counts():
    backend = _base.EngineBackend(ScriptedEngine())
    items = [SimpleNamespace(body=chat("a b c", max_tokens=10), prompt_tokens=99),
             SimpleNamespace(body=chat("w " * 45, max_tokens=10), prompt_tokens=1),
             SimpleNamespace(body=chat("w " * 60), prompt_tokens=1),
             SimpleNamespace(body=chat("untokenizable"), prompt_tokens=1),
             SimpleNamespace(body=chat("w " * 49), prompt_tokens=1),
             SimpleNamespace(body=chat("skipped " * 99), prompt_tokens=1)]
    failures = preflight(backend, items, skip={5})
    assert items[0].prompt_tokens == 3
    assert sorted(failures) == [1, 2, 3]
    assert isinstance(failures[1], bm.ContextLengthError)
    assert "45 tokens + max_tokens 10 = 55" in str(failures[1])
    assert isinstance(failures[2], bm.ContextLengthError)
    assert "at least 1 output token" in str(failures[2])
    assert isinstance(failures[3], bm.InputError) and "could not tokenize" in str(failures[3])
    assert all(f.provider == "scripted" for f in failures.values())
    assert 4 not in failures  # 49 + 1 output token fits in 50


class WordEngine(_base.Engine):
    """A test double for completion and embedding rows: one token per word, and a record of
    every body it was asked to count."""

    name = "words"
    context_window = 50

    def __init__(self):
        self.counted: list[dict] = []

    def count_tokens(self, body: dict) -> int:
        self.counted.append(body)
        if "messages" in body:  # a chat template's own tokens, then the words
            return 3 + len(body["messages"][-1]["content"].split())
        content, _ = _base.split_body(body)
        return len(content.split())


def test_preflight_makes_empty_and_zero_token_rows_input_errors():
    engine = WordEngine()
    backend = _base.EngineBackend(engine)
    bodies = [{"prompt": ""}, {"prompt": "a b"}, {"input": ""}, {"input": "a"},
              {"prompt": "   "}, {"input": "\n"}, chat("")]
    items = [SimpleNamespace(body=b, prompt_tokens=7) for b in bodies]
    failures = preflight(backend, items)
    assert sorted(failures) == [0, 2, 4, 5]
    assert all(isinstance(failures[i], bm.InputError) for i in failures)
    assert "completion prompt is empty" in str(failures[0])
    assert "embedding input is empty" in str(failures[2])
    assert "0 tokens" in str(failures[4]) and "0 tokens" in str(failures[5])
    # an empty text never reaches the tokenizer; an empty chat message is still a prompt (the
    # chat template surrounds it), so the engine decides about it
    assert {"prompt": ""} not in engine.counted and {"input": ""} not in engine.counted
    assert 6 not in failures
    assert items[1].prompt_tokens == 2 and items[3].prompt_tokens == 1
    assert items[0].prompt_tokens == 7  # a refused row keeps its estimate


def test_subprocess_worker_refuses_a_zero_token_prompt():
    from batchmagic.engines import _worker

    with pytest.raises(_worker.RowError, match="0 tokens"):
        _worker._budget({}, 0, 100, 16)
    assert _worker._budget({}, 3, 100, 16)["max_tokens"] == 16


def test_engine_units_ask_n_for_the_draws_of_a_row_and_move_a_seed_on_by_the_draw():
    def draw(row: int, d: int, **params):
        return SimpleNamespace(key=f"k{row}-{d}", base=f"k{row}", draw=d, prompt_tokens=3,
                               max_output=5, body=chat(f"row {row}", **params))

    items = [draw(0, d, seed=10) for d in range(3)] + [draw(1, d) for d in range(3)]
    units = engine_units(items, list(range(6)), samples=3)
    assert [u.items for u in units] == [[0, 1, 2], [3, 4, 5]]
    assert units[0].body == chat("row 0", seed=10, n=3) and units[0].tokens == 3 + 15
    assert units[1].body == chat("row 1", n=3)
    # a resumed run asks only for the missing draws: draw d keeps the seed + d it had
    resumed = engine_units(items, [0, 2, 3, 4], samples=3)
    assert [u.items for u in resumed] == [[0], [2], [3, 4]]
    assert [u.body.get("seed") for u in resumed] == [10, 12, None]
    assert "n" not in resumed[0].body and resumed[2].body["n"] == 2
    # draws sent one by one (samples=1) still get a seed each, never one answer K times
    single = engine_units(items, [0, 1, 2])
    assert [u.body["seed"] for u in single] == [10, 11, 12]
    assert single[0].body is items[0].body


def test_engine_units_carry_body_dicts_and_pack_embeddings():
    items = [SimpleNamespace(body=chat(str(i)), prompt_tokens=3, max_output=5) for i in range(3)]
    units = engine_units(items, [0, 2])
    assert [u.items for u in units] == [[0], [2]]
    assert units[0].body is items[0].body and units[0].tokens == 8
    emb = [SimpleNamespace(body={"input": str(i)}, prompt_tokens=2, max_output=0)
           for i in range(70)]
    packed = engine_units(emb, list(range(70)))
    assert [len(u.items) for u in packed] == [32, 32, 6]
    assert packed[0].body == [e.body for e in emb[:32]]


def test_engine_and_provider_together_is_a_config_error():
    with pytest.raises(bm.ConfigError, match="drop provider"):
        bm.batch(["x"], engine="vllm", base_url="http://127.0.0.1:1/v1", progress=False)
    with pytest.raises(bm.ConfigError, match="engine must be one of"):
        bm.batch(["x"], engine="ollama", progress=False)
    with pytest.raises(bm.ConfigError, match="engine_options= applies"):
        bm.batch(["x"], provider="openai", api_key="k", engine_options={"n_ctx": 8},
                 progress=False)


def test_unload_with_nothing_loaded():
    assert bm.unload("fastdeploy") == 0
    with pytest.raises(bm.ConfigError):
        bm.unload("nope")


def test_demo_falls_back_to_the_simulator_without_a_local_model(monkeypatch, capsys):
    from batchmagic import cli, engines

    def missing(*args, **kw):
        raise bm.ConfigError("engine='llama.cpp' needs the 'llama_cpp' package")

    monkeypatch.setattr(engines, "resolve", missing)
    assert cli.main(["demo", "-q", "--no-cache", "--latency", "0.01"]) == 0
    captured = capsys.readouterr()
    assert "using the simulator instead" in captured.err
    assert "20 ok, 0 failed" in captured.out


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    """The GPU engines' real worker process, importing recording stand-ins for vLLM and
    FastDeploy (tests/engine_stand_ins; the "engine" echoes the prompt). Yields the record."""
    record = tmp_path / "record.jsonl"
    path = os.environ.get("PYTHONPATH")
    here = str(Path(__file__).parent / "engine_stand_ins")
    monkeypatch.setenv("PYTHONPATH", here + (os.pathsep + path if path else ""))
    monkeypatch.setenv("BM_STANDIN_RECORD", str(record))
    yield record
    bm.unload("vllm")
    bm.unload("fastdeploy")


@pytest.mark.parametrize("engine", ["vllm", "fastdeploy"])
def test_gpu_engines_never_get_an_empty_completion(stand_ins, engine):
    def run(inputs):
        return bm.batch(inputs, kind="completion", engine=engine, model="stand-in-model",
                        engine_options={"python": sys.executable}, params={"max_tokens": 8},
                        progress=False)

    texts = run(["", "hi"])
    bodies = run([{"prompt": ""}, {"prompt": "ho"}])  # whole request bodies take the same path
    for out, answer in ((texts, "echo:hi"), (bodies, "echo:ho")):
        assert isinstance(out["error"][0], bm.InputError) and out["attempts"][0] == 0
        assert out["error"][1] is None and out["output"][1] == answer
    sent = [json.loads(line) for line in stand_ins.read_text().splitlines()]
    assert [s["class"] for s in sent].count(f"{engine}.SamplingParams") == 2  # "hi", "ho" only
