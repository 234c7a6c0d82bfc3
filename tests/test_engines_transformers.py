"""The transformers engine on the CPU with a real model: the SmolLM2-135M-Instruct GGUF, loaded
through transformers (dequantized by the gguf package), tokenizer and chat template from the file.

Kept small: one load for the module (about 20-30 s here), a few rows, few tokens. CI installs
torch (CPU build), transformers and gguf (.ci/run) and checks they import first; it installs
xgrammar with them, and the schema tests below fail (not skip) without it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest

import batchmagic as bm
from batchmagic import engines
from batchmagic._backend import Unit
from batchmagic.cli import DEMO_PROMPT
from batchmagic.engines import _params

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parents[1]

OPTIONS = {"max_batch": 4}

# a real model on the CPU: with other work on the same 2 cores one generation took over 300 s
# (the default hang guard) while still computing, so this module's guard is wider
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module", autouse=True)
def _free_engines():
    yield
    bm.unload()


def run(inputs, prompt=None, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("engine_options", OPTIONS)
    return bm.batch(inputs, prompt, engine="transformers", **kw)


def test_batched_chat_answers_and_a_long_row_fails_alone():
    rows = ["Answer briefly: What is the capital of France?", "word " * 9_000,
            "Answer briefly: What is the capital of Japan?"]
    out = run(rows, params={"max_tokens": 16, "temperature": 0})
    assert "Paris" in out["output"][0]
    assert "Tokyo" in out["output"][2]
    assert isinstance(out["error"][1], bm.ContextLengthError)
    assert (out["input_tokens"][[0, 2]] > 10).all() and (out["output_tokens"][[0, 2]] > 0).all()
    assert out.attrs["batchmagic"]["provider"] == "transformers"
    loaded = engines.loaded()
    assert loaded[0]["device"] == "cpu" and loaded[0]["context_window"] == 8192


def test_left_padded_batch_matches_one_row_at_a_time():
    rows = ["Name a color.", "Answer briefly: What is the capital of Japan?", "Say hi."]
    together = run(rows, params={"max_tokens": 12, "temperature": 0}, cache=False)
    alone = [run([r], params={"max_tokens": 12, "temperature": 0}, cache=False)["output"][0]
             for r in rows]
    # the longest row sits with shorter, left-padded neighbours and is still answered right
    assert "Tokyo" in together["output"][1]
    # greedy answers match row by row (float sums over padded shapes may differ in the last
    # bit, which could flip a near-tie, so one row of three may differ)
    assert sum(a == b for a, b in zip(together["output"], alone)) >= 2


def test_engine_is_reused_and_hf_is_an_alias():
    before = engines.get_backend("hf", None, "chat", OPTIONS).engine
    run(["Say hi."], engine_options=OPTIONS, params={"max_tokens": 4}, cache=False)
    assert engines.get_backend("transformers", None, "chat", OPTIONS).engine is before


def test_completion_and_stop_strings():
    out = run(["The capital of France is"], kind="completion",
              params={"max_tokens": 8, "temperature": 0, "stop": ["."]})
    assert "Paris" in out["output"][0] and "." not in out["output"][0]
    assert out["finish_reason"][0] == "stop"


def test_embeddings():
    out = run(["a red apple", "a red apple", "the stock market fell"], kind="embedding")
    a, b, c = out["output"]
    assert a.dtype == np.float32 and a.shape == (576,)
    assert np.allclose(a, b, atol=1e-5) and not np.allclose(a, c)


def test_empty_rows_are_input_errors_and_their_neighbours_run():
    comp = run(["", "The capital of France is"], kind="completion",
               params={"max_tokens": 8, "temperature": 0})
    assert isinstance(comp["error"][0], bm.InputError) and comp["attempts"][0] == 0
    assert "completion prompt is empty" in str(comp["error"][0])
    assert comp["error"][1] is None and "Paris" in comp["output"][1]
    emb = run(["", "a red apple"], kind="embedding")  # a zero vector would be a silent wrong answer
    assert isinstance(emb["error"][0], bm.InputError)
    assert emb["error"][1] is None and np.isclose(np.linalg.norm(emb["output"][1]), 1.0, atol=1e-3)
    lone = run([""], kind="embedding")
    assert isinstance(lone["error"][0], bm.InputError)
    chat = run([""], params={"max_tokens": 4, "temperature": 0})  # the template wraps it
    assert chat["error"][0] is None and chat["input_tokens"][0] > 0


def test_unsupported_parameters_and_missing_models_are_config_errors():
    with pytest.raises(bm.ConfigError, match="presence_penalty"):
        run(["x"], params={"presence_penalty": 0.5})
    with pytest.raises(bm.ConfigError, match="never downloads"):
        run(["x"], model="some-org/not-a-cached-model")


def test_parameter_mapping():
    p = _params.check("transformers", "chat", {"temperature": 0.7, "top_p": 0.9, "top_k": 20,
                                               "min_p": 0.05, "max_tokens": 9, "min_tokens": 2,
                                               "repetition_penalty": 1.1, "stop": "x"})
    assert _params.transformers_args(p, 9) == {
        "max_new_tokens": 9, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 20,
        "min_p": 0.05, "min_new_tokens": 2, "repetition_penalty": 1.1, "stop_strings": ["x"]}
    greedy = _params.transformers_args({"temperature": 0, "top_p": 0.5}, 4)
    assert greedy == {"max_new_tokens": 4, "do_sample": False}


# -- structured output (xgrammar's token masks) and n choices -----------------------------------

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
    reviews = pd.read_csv(ROOT / "batchmagic" / "data" / "reviews.csv").head(8)
    out = run(reviews, DEMO_PROMPT, params={"response_format": json_schema(SENTIMENT),
                                            "max_tokens": 16, "temperature": 0})
    assert out["error"].isna().all(), list(out["error"])
    for text in out["output"]:
        jsonschema.validate(json.loads(text), SENTIMENT)
    assert (out["finish_reason"] == "stop").all()


def test_an_object_schema_holds_chat_and_completion_rows():
    params = {"response_format": json_schema(PERSON), "max_tokens": 64, "temperature": 0.8,
              "seed": 1}
    chat = run(["Invent a person.", "Describe a pirate captain."], params=params)
    completion = run(["A person's record:"], kind="completion", params=params)
    for out in (chat, completion):
        assert out["error"].isna().all(), list(out["error"])
        for text in out["output"]:
            answer = json.loads(text)
            jsonschema.validate(answer, PERSON)
            assert isinstance(answer["name"], str) and isinstance(answer["age"], int)
    assert ", " in chat["output"][0] and "\n" not in chat["output"][0]  # compact JSON


def test_n_choices_are_rows_of_one_batch_each_held_to_the_schema():
    backend = engines.get_backend("transformers", None, "chat", OPTIONS)
    body = {"messages": [{"role": "user", "content": "Invent a person."}], "n": 3, "seed": 2,
            "temperature": 1.0, "max_tokens": 64, "response_format": json_schema(PERSON)}
    out = asyncio.run(backend.call(Unit([0, 1, 2], body, 0)))
    assert out.category == "ok", out.message
    for parsed in out.results:
        jsonschema.validate(json.loads(parsed.output), PERSON)
    assert len({p.output for p in out.results}) > 1  # sampled rows, not one answer copied
    tokens = [p.input_tokens for p in out.results]
    assert tokens[0] > 5 and tokens[1:] == [0, 0]


def test_a_row_that_stops_for_another_reason_is_let_go_not_failed():
    """A stop string ends a row mid-JSON; generation then feeds it padding, which its grammar
    refuses: that row is released from the mask, and neither it nor its batch fails."""
    out = run(["Invent a person.", "Describe a pirate captain."],
              params={"response_format": json_schema(PERSON), "max_tokens": 64,
                      "temperature": 0, "stop": [","]})
    assert out["error"].isna().all(), list(out["error"])
    assert all(text.startswith('{"name": "') and "," not in text for text in out["output"])
    assert (out["finish_reason"] == "stop").all()


def test_a_schema_xgrammar_cannot_express_is_a_config_error():
    lookbehind = {"type": "object", "properties": {"code": {"type": "string",
                                                            "pattern": "(?<=a)b"}},
                  "required": ["code"]}
    with pytest.raises(bm.ConfigError, match="xgrammar cannot .*Lookbehind"):
        run(["x"], params={"response_format": json_schema(lookbehind)})
