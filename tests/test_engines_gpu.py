"""vLLM and FastDeploy: parameter mapping, and the subprocess worker that runs them.

Neither engine can be installed on a machine without a GPU, so these tests run batchmagic's real
worker process and protocol against *recording stand-ins* for the few names it uses
(tests/engine_stand_ins: ``RecordingSamplingParams`` records every argument; the "engine" echoes
the prompt). What they prove: the mapping from OpenAI-style params to each engine's
``SamplingParams``, chat templates with ``chat_template_kwargs``, reasoning in its own column,
per-request metrics, the context pre-flight with the worker's tokenizer, crash handling (rows in
flight retried after a restart, the run stopped if the engine keeps dying), that unloading
ends the process, and that ``response_format`` and ``n`` become each engine's structured-output
parameters and choices. A real model on a real GPU is ``benchmarks/gpu_smoke.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

import batchmagic as bm
from batchmagic import engines
from batchmagic._backend import OK, Unit
from batchmagic.engines import _params, _worker

STAND_INS = Path(__file__).parent / "engine_stand_ins"
sys.path.insert(0, str(STAND_INS))
from standin_common import RecordingSamplingParams  # noqa: E402

sys.path.remove(str(STAND_INS))

ENGINE_OPTIONS = {"python": sys.executable}  # run the worker here, with the stand-ins on its path


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """The worker finds the stand-ins; every SamplingParams it builds is recorded."""
    record = tmp_path / "record.jsonl"
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(STAND_INS) + (os.pathsep + path if path else ""))
    monkeypatch.setenv("BM_STANDIN_RECORD", str(record))
    yield Recorded(record)
    bm.unload("vllm")
    bm.unload("fastdeploy")


class Recorded:
    def __init__(self, path: Path):
        self.path = path

    def calls(self, cls: str) -> list[dict]:
        if not self.path.exists():
            return []
        lines = [json.loads(line) for line in self.path.read_text().splitlines()]
        return [line["kwargs"] for line in lines if line["class"] == cls]


def run(inputs, engine="vllm", **kw):
    kw.setdefault("progress", False)
    kw.setdefault("model", "stand-in-model")
    kw.setdefault("engine_options", ENGINE_OPTIONS)
    return bm.batch(inputs, engine=engine, **kw)


PARAMS = {"temperature": 0.7, "top_p": 0.95, "top_k": 20, "min_p": 0.05, "max_tokens": 64,
          "min_tokens": 2, "presence_penalty": 0.5, "frequency_penalty": 0.25,
          "repetition_penalty": 1.1, "stop": "###", "seed": 11, "bad_words": ["darn"]}


# -- the mapping, against a recording SamplingParams ------------------------------------------


def test_vllm_sampling_params_mapping():
    p = _params.check("vllm", "chat", {**PARAMS, "max_completion_tokens": 64, "n": 1,
                                       "stop_token_ids": [7], "ignore_eos": False})
    params = RecordingSamplingParams(**_params.vllm_sampling_kwargs(p))
    assert params.kwargs == {
        "n": 1, "max_tokens": 64, "temperature": 0.7, "top_p": 0.95, "top_k": 20, "min_p": 0.05,
        "seed": 11, "min_tokens": 2, "presence_penalty": 0.5, "frequency_penalty": 0.25,
        "repetition_penalty": 1.1, "stop_token_ids": [7], "bad_words": ["darn"],
        "ignore_eos": False, "stop": ["###"]}
    assert _params.vllm_sampling_kwargs({"top_k": 0}) == {"n": 1, "top_k": -1}
    # without max_tokens the worker sets one once it knows the prompt's length
    assert "max_tokens" not in _params.vllm_sampling_kwargs({"temperature": 0})


def test_fastdeploy_sampling_params_mapping():
    p = _params.check("fastdeploy", "chat", {**PARAMS, "top_k": -1, "reasoning_max_tokens": 32})
    params = RecordingSamplingParams(**_params.fastdeploy_sampling_kwargs(p))
    assert params.kwargs == {
        "n": 1, "max_tokens": 64, "temperature": 0.7, "top_p": 0.95, "top_k": 0, "min_p": 0.05,
        "seed": 11, "min_tokens": 2, "presence_penalty": 0.5, "frequency_penalty": 0.25,
        "repetition_penalty": 1.1, "bad_words": ["darn"], "reasoning_max_tokens": 32,
        "stop": ["###"]}
    with pytest.raises(bm.ConfigError, match="reasoning_max_tokens"):
        _params.fastdeploy_sampling_kwargs({"max_tokens": 8, "reasoning_max_tokens": 9})


def test_unknown_and_invalid_parameters_are_config_errors():
    with pytest.raises(bm.ConfigError, match="does not take 'logit_bias'"):
        _params.check("vllm", "chat", {"logit_bias": {}})
    with pytest.raises(bm.ConfigError, match="bad_words"):
        _params.check("llama.cpp", "chat", {"bad_words": ["x"]})
    with pytest.raises(bm.ConfigError, match="top_p"):
        _params.check("vllm", "chat", {"top_p": 1.5})
    with pytest.raises(bm.ConfigError, match="chat only"):
        _params.check("vllm", "completion", {"chat_template_kwargs": {"enable_thinking": True}})
    with pytest.raises(bm.ConfigError, match="same parameter"):
        _params.check("vllm", "chat", {"max_tokens": 3, "max_completion_tokens": 4})


def test_vllm_needs_a_model_and_the_package():
    with pytest.raises(bm.ConfigError, match="model= is required"):
        bm.batch(["x"], engine="vllm", progress=False)
    if engines._models.importlib.util.find_spec("vllm") is None:
        with pytest.raises(bm.ConfigError, match="needs the 'vllm' package"):
            bm.batch(["x"], engine="vllm", model="m", progress=False)
    with pytest.raises(bm.ConfigError, match="serves chat, completion"):
        bm.batch(["x"], engine="fastdeploy", model="m", kind="embedding", progress=False)


# -- the worker, end to end, on the stand-ins -------------------------------------------------


def test_vllm_worker_runs_rows_with_mapped_params_and_reports_usage(stand_in):
    out = run(["hello", "world"], params=PARAMS)
    assert list(out["output"]) == ["echo:hello", "echo:world"]
    assert out["error"].isna().all()
    assert list(out["input_tokens"]) == [len("<user>hello<assistant>")] * 2
    assert list(out["output_tokens"]) == [len("echo:hello")] * 2
    sent = stand_in.calls("vllm.SamplingParams")
    assert len(sent) == 2
    expected = {**_params.vllm_sampling_kwargs(PARAMS), "output_kind": "RequestOutputKind.FINAL_ONLY"}
    assert sent[0] == expected
    assert stand_in.calls("vllm.AsyncEngineArgs") == [
        {"model": "stand-in-model", "disable_log_stats": True}]
    info = engines.loaded()[0]
    assert info["engine"] == "vllm" and info["mean_queue_s"] == 0.25 and info["mean_ttft_s"] == 0.5


def test_default_max_tokens_fits_the_context(stand_in):
    run(["hi"], engine_options={**ENGINE_OPTIONS, "max_model_len": 100})
    prompt = len("<user>hi<assistant>")
    assert stand_in.calls("vllm.SamplingParams")[0]["max_tokens"] == 100 - prompt


def test_engine_options_reach_the_engine(stand_in):
    run(["hi"], engine_options={**ENGINE_OPTIONS, "gpu_memory_utilization": 0.5,
                                "max_model_len": 300})
    assert stand_in.calls("vllm.AsyncEngineArgs") == [
        {"model": "stand-in-model", "disable_log_stats": True, "gpu_memory_utilization": 0.5,
         "max_model_len": 300}]


def test_chat_template_kwargs_and_reasoning_column(stand_in):
    out = run(["why?"], params={"chat_template_kwargs": {"enable_thinking": True}})
    assert out["output"][0] == "echo"
    assert out["reasoning"][0] == "weighing it up"
    template = stand_in.calls("chat_template")
    assert template[-1]["enable_thinking"] is True


def test_preflight_uses_the_workers_tokenizer(stand_in):
    out = run(["short", "x" * 1000, "also short"], params={"max_tokens": 10},
              engine_options={**ENGINE_OPTIONS, "max_model_len": 200})
    assert isinstance(out["error"][1], bm.ContextLengthError)
    assert "1,017 tokens" in str(out["error"][1])  # counted with the chat template, per character
    assert out["error"][0] is None and out["error"][2] is None
    assert len(stand_in.calls("vllm.SamplingParams")) == 2  # the long row never reached vLLM


def test_a_crash_fails_only_rows_in_flight_which_succeed_after_a_restart(stand_in, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("BM_STANDIN_CRASH_ONCE", str(tmp_path / "crashed"))
    rows = ["SLOW one", "CRASH now", "SLOW two", "three", "four"]
    out = run(rows, concurrency=5)
    assert out["error"].isna().all(), list(out["error"])
    assert out["output"][1] == "echo:CRASH now"
    facts = out.attrs["batchmagic"]
    assert facts["retries"] >= 1  # the rows in flight at the crash were retried
    assert (tmp_path / "crashed").exists()
    assert engines.loaded()[0]["alive"] is True


def test_an_engine_that_keeps_crashing_stops_the_run_and_keeps_finished_rows(stand_in):
    out = run(["fine", "CRASH always"] + [f"later {i}" for i in range(20)], concurrency=1,
              retries=10)
    assert out["error"][0] is None and out["output"][0] == "echo:fine"
    assert isinstance(out["error"][1], bm.RowError)
    assert "crashed 3 times" in str(out["error"][1])  # restarted twice, then the run stops
    assert out.attrs["batchmagic"]["state"] == "aborted"
    # every other row finished (between restarts), was never sent (NotSentError), or was sent
    # while the engine restarted and waited for its retry when the run stopped (it keeps what
    # that attempt got and says so; a slow restart on a loaded machine makes that window): none
    # lost
    assert all(e is None or isinstance(e, bm.NotSentError) or "not retried: the run stopped"
               in str(e) for e in out["error"][2:]), list(out["error"])


def test_unload_ends_the_engine_process(stand_in):
    run(["hi"])
    pid = engines.loaded()[0]["pid"]
    os.kill(pid, 0)  # alive
    assert bm.unload("vllm") == 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the engine process outlived unload()")
    assert engines.loaded() == []


def test_reused_across_calls(stand_in):
    run(["a"])
    pid = engines.loaded()[0]["pid"]
    run(["b"])
    assert [e["pid"] for e in engines.loaded()] == [pid]
    assert len(stand_in.calls("vllm.AsyncEngineArgs")) == 1


def test_fastdeploy_worker(stand_in):
    params = {"temperature": 0.3, "top_k": -1, "max_tokens": 40,
              "chat_template_kwargs": {"enable_thinking": True}}
    out = run(["why?", "hello"], engine="fastdeploy", params=params)
    assert out["error"].isna().all()
    assert out["reasoning"][0] == "weighing it up" and out["output"][0] == "echo"
    sent = stand_in.calls("fastdeploy.SamplingParams")
    assert sent[0] == {"n": 1, "max_tokens": 40, "temperature": 0.3, "top_k": 0}
    comp = run(["The sky is"], engine="fastdeploy", kind="completion", params={"max_tokens": 5})
    assert comp["output"][0] == "echo:"  # cut at max_tokens
    assert comp["finish_reason"][0] == "length"


def test_worker_metrics_across_engine_versions():
    from types import SimpleNamespace as NS

    assert _worker._metrics(NS(metrics=NS(time_in_queue=0.5, arrival_time=1.0,
                                          first_token_time=3.0))) == {"queue_s": 0.5, "ttft_s": 2.0}
    v1 = NS(queued_ts=10.0, scheduled_ts=10.5, first_token_latency=0.75)
    assert _worker._metrics(NS(metrics=v1)) == {"queue_s": 0.5, "ttft_s": 0.75}
    assert _worker._metrics(NS(metrics=None)) is None


# -- structured output and n choices ----------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA,
                                                      "strict": True}}
GUIDED = {**ENGINE_OPTIONS, "guided_decoding_backend": "auto"}


def chat_body(text: str, **params) -> dict:
    return {"messages": [{"role": "user", "content": text}], **params}


def call(engine: str, body: dict, items: int = 1, options: dict = ENGINE_OPTIONS):
    """One unit of ``items`` items straight to the engine's backend (as the dispatcher sends a
    row's samples: one request whose n is the number of items)."""
    backend = engines.get_backend(engine, "stand-in-model", "chat", options)
    return asyncio.run(backend.call(Unit(list(range(items)), body, 0)))


def test_response_format_becomes_each_engines_structured_output_parameters():
    assert _params.structured({"response_format": JSON_SCHEMA}) == {"json": SCHEMA}
    assert _params.structured({"response_format": {"type": "json_object"}}) == {"json_object": True}
    assert _params.structured({"response_format": {"type": "text"}}) is None
    assert _params.structured({}) is None
    for engine in ("vllm", "fastdeploy", "transformers", "llama.cpp"):
        for kind in ("chat", "completion"):  # a completion can be held to a schema as well
            assert _params.check(engine, kind, {"response_format": JSON_SCHEMA, "n": 3})
    with pytest.raises(bm.ConfigError, match="response_format must be"):
        _params.check("vllm", "chat", {"response_format": {"type": "yaml"}})
    with pytest.raises(bm.ConfigError, match="JSON Schema as a dict"):
        _params.check("vllm", "chat", {"response_format": {"type": "json_schema"}})
    remote = {"type": "json_schema", "json_schema": {"name": "r", "schema": {
        "type": "object", "properties": {"x": {"$ref": "https://example.com/x.json"}}}}}
    with pytest.raises(bm.ConfigError, match="references inside the schema"):
        _params.check("vllm", "chat", {"response_format": remote})
    with pytest.raises(bm.ConfigError, match="n must be an integer"):
        _params.check("vllm", "chat", {"n": 1.5})
    # vLLM answers n choices in one request; FastDeploy's worker sends n seeded copies instead
    assert _params.vllm_sampling_kwargs({"n": 3, "response_format": JSON_SCHEMA}) == {"n": 3}
    assert _params.fastdeploy_sampling_kwargs({"n": 3, "response_format": JSON_SCHEMA}) == {"n": 1}


def test_vllm_gets_structured_outputs_and_n_and_answers_one_parsed_per_choice(stand_in):
    out = call("vllm", chat_body("hi", n=3, seed=4, max_tokens=20, response_format=JSON_SCHEMA),
               items=3)
    assert out.category == OK, out.message
    assert [p.output for p in out.results] == ["echo:hi", "echo:hi#1", "echo:hi#2"]
    prompt = len("<user>hi<assistant>")
    assert [p.input_tokens for p in out.results] == [prompt, 0, 0]  # one prompt, counted once
    assert [p.output_tokens for p in out.results] == [7, 9, 9]
    sent = stand_in.calls("vllm.SamplingParams")
    assert len(sent) == 1 and sent[0]["n"] == 3 and sent[0]["seed"] == 4
    assert sent[0]["structured_outputs"] == {"class": "StructuredOutputsParams", "json": SCHEMA}
    assert "response_format" not in sent[0]

    call("vllm", {"prompt": "The sky is", "response_format": {"type": "json_object"}})
    assert stand_in.calls("vllm.StructuredOutputsParams")[-1] == {"json_object": True}
    plain = call("vllm", chat_body("hi"))
    assert "structured_outputs" not in stand_in.calls("vllm.SamplingParams")[-1]
    assert [p.output for p in plain.results] == ["echo:hi"]


def test_a_schema_reaches_vllm_from_a_run(stand_in):
    out = run(["hi", "there"], params={"response_format": JSON_SCHEMA, "max_tokens": 30})
    assert out["error"].isna().all() and list(out["output"]) == ["echo:hi", "echo:there"]
    sent = stand_in.calls("vllm.SamplingParams")
    assert [s["structured_outputs"]["json"] for s in sent] == [SCHEMA, SCHEMA]


def test_fastdeploy_gets_guided_decoding_and_n_seeded_copies(stand_in):
    out = call("fastdeploy", chat_body("hi", n=3, seed=5, max_tokens=20,
                                       response_format=JSON_SCHEMA), items=3, options=GUIDED)
    assert out.category == OK, out.message
    assert [p.output for p in out.results] == ["echo:hi"] * 3
    assert [p.input_tokens for p in out.results] == [len("<user>hi<assistant>"), 0, 0]
    sent = stand_in.calls("fastdeploy.SamplingParams")
    # FastDeploy's LLM would clone one SamplingParams, seed and all, per choice: equal samples
    assert sorted(s["seed"] for s in sent) == [5, 6, 7] and {s["n"] for s in sent} == {1}
    assert all(s["guided_decoding"] == {"class": "GuidedDecodingParams", "json": SCHEMA}
               for s in sent)
    assert stand_in.calls("fastdeploy.LLM")[0]["guided_decoding_backend"] == "auto"

    unseeded = call("fastdeploy", {"prompt": "x", "n": 2, "response_format": {"type": "json_object"}},
                    items=2, options=GUIDED)
    assert unseeded.category == OK and len(unseeded.results) == 2
    assert all("seed" not in s for s in stand_in.calls("fastdeploy.SamplingParams")[3:])
    assert stand_in.calls("fastdeploy.GuidedDecodingParams")[-1] == {"json_object": True}


def test_fastdeploy_without_a_guided_decoding_backend_is_told_before_it_loads(stand_in):
    with pytest.raises(bm.ConfigError, match="guided_decoding_backend"):
        run(["hi"], engine="fastdeploy", params={"response_format": JSON_SCHEMA})
    assert stand_in.calls("fastdeploy.LLM") == [] and engines.loaded() == []
