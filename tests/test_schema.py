"""schema=: what is sent (response_format, or the schema in the system message), what comes
back (the validated value, the raw text, an object's fields as columns), re-asks of answers
that do not fit, SchemaError, the schema in the row key, the journal and the estimate."""

from __future__ import annotations

import enum
import json
from typing import Literal

import httpx
import pytest
from pydantic import BaseModel

import batchmagic as bm
from batchmagic._schema import InvalidAnswer, schema_for


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "mixed"]
    stars: int


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


# -- the schema itself ------------------------------------------------------------------------


def test_a_non_object_schema_is_sent_wrapped_and_read_back_bare():
    s = schema_for(Literal["yes", "no"])
    assert s.wire["properties"]["value"]["enum"] == ["yes", "no"]
    assert s.response_format("json_schema")["json_schema"]["strict"] is True
    assert s.parse('{"value": "yes"}') == "yes"
    assert s.parse('"no"') == "no"  # a model that answered the bare value
    with pytest.raises(InvalidAnswer, match="Input should be 'yes' or 'no'"):
        s.parse('{"value": "maybe"}')


@pytest.mark.parametrize("spec, text, expected", [
    (int, '{"value": 7}', 7),
    (bool, '{"value": true}', True),
    (list[str], '{"value": ["a", "b"]}', ["a", "b"]),
    (Color, '{"value": "red"}', Color.RED),
    ({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
     '{"n": 3}', {"n": 3}),
])
def test_types_pydantic_can_describe_and_json_schema_dicts(spec, text, expected):
    assert schema_for(spec).parse(text) == expected


def test_json_is_found_in_what_models_wrap_around_it():
    s = schema_for(Review)
    fenced = 'Here you go:\n```json\n{"sentiment": "mixed", "stars": 3}\n```'
    assert s.parse(fenced) == Review(sentiment="mixed", stars=3)
    assert s.parse('The answer is {"sentiment": "positive", "stars": 5}.').stars == 5
    with pytest.raises(InvalidAnswer, match="not JSON"):
        s.parse("I think it is positive")


def test_a_model_whose_fields_are_all_required_is_sent_strict():
    wire = schema_for(Review).response_format("json_schema")["json_schema"]
    assert wire["strict"] is True and wire["schema"]["additionalProperties"] is False


def test_things_that_are_not_schemas_are_config_errors():
    for bad in ("Review", b"{}", {"type": 12}):
        with pytest.raises(bm.ConfigError):
            schema_for(bad)


# -- runs ---------------------------------------------------------------------------------------


class Model:
    """An OpenAI-shaped server that answers by a rule per prompt and records every body."""

    def __init__(self, answer):
        self.answer = answer
        self.bodies: list[dict] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        prompt = body["messages"][-1]["content"]
        seen = sum(1 for b in self.bodies if b["messages"][-1]["content"] == prompt)
        content = self.answer(prompt, seen, body)
        return httpx.Response(200, json={
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4}})

    def run(self, inputs, prompt=None, **kw):
        kw.setdefault("base_url", "http://model.test/v1")
        kw.setdefault("model", "m")
        return bm.batch(inputs, prompt, transport=httpx.MockTransport(self.handler),
                        progress=False, **kw)


def review_of(prompt: str, seen: int, body: dict) -> str:
    if "twice" in prompt and seen == 1:
        return "Sure! It is positive."  # not JSON: asked again
    if "never" in prompt:
        return '{"sentiment": "great", "stars": "five"}'
    return json.dumps({"sentiment": "positive" if "good" in prompt else "negative",
                       "stars": len(prompt) % 5 + 1})


def test_an_object_schema_gives_values_raw_text_and_field_columns():
    model = Model(review_of)
    df = model.run(["good phone", "bad battery"], schema=Review, cache=False)
    assert df["error"].isna().all()
    assert df["output"].tolist() == [Review(sentiment="positive", stars=1),
                                     Review(sentiment="negative", stars=2)]
    assert df["sentiment"].tolist() == ["positive", "negative"]
    assert df["stars"].tolist() == [1, 2]
    assert json.loads(df["raw"][0]) == {"sentiment": "positive", "stars": 1}
    rf = model.bodies[0]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["name"] == "Review"


def test_an_answer_that_does_not_fit_is_asked_again_then_is_a_schema_error():
    model = Model(review_of)
    df = model.run(["good twice", "never fits"], schema=Review, cache=False)
    assert df["error"][0] is None and df["attempts"][0] == 2  # re-asked once, then fine
    err = df["error"][1]
    assert isinstance(err, bm.SchemaError) and err.attempts == 2
    assert err.raw == '{"sentiment": "great", "stars": "five"}'
    assert df["raw"][1] == err.raw and df["output"][1] is None
    assert "does not fit the schema" in str(err)
    facts = df.attrs["batchmagic"]
    assert facts["failed"] == 1 and facts["retries"] == 2
    assert facts["input_tokens"] == 40  # the re-asked answers were paid for too


def test_parse_retries_zero_fails_at_once():
    model = Model(review_of)
    df = model.run(["good twice"], schema=Review, cache=False, parse_retries=0)
    assert isinstance(df["error"][0], bm.SchemaError) and len(model.bodies) == 1


def test_json_mode_providers_get_the_schema_in_the_system_message():
    model = Model(lambda p, n, b: '{"value": "yes"}')
    df = model.run(["q"], schema=Literal["yes", "no"], provider="deepseek", api_key="k",
                   system="Be brief.", cache=False)
    assert df["output"][0] == "yes"
    body = model.bodies[0]
    assert body["response_format"] == {"type": "json_object"}
    system = body["messages"][0]["content"]
    assert system.startswith("Be brief.") and "JSON" in system and '"enum"' in system


def test_the_schema_is_part_of_the_row_key_and_the_journal_answers_again(tmp_path):
    model = Model(review_of)
    where = dict(cache=str(tmp_path))
    model.run(["good phone"], schema=Review, **where)
    again = model.run(["good phone"], schema=Review, **where)
    assert len(model.bodies) == 1 and again.attrs["batchmagic"]["cached"] == 1
    assert again["output"][0] == Review(sentiment="positive", stars=1)  # validated again
    other = model.run(["good phone"], schema=Literal["positive", "negative"], **where)
    # another schema: asked anew (twice: this model's answer never fits it)
    assert len(model.bodies) == 3
    assert isinstance(other["error"][0], bm.SchemaError)


def test_a_field_named_like_an_input_column_is_a_clash_before_sending():
    import pandas as pd

    model = Model(review_of)
    with pytest.raises(bm.ColumnClashError, match="'stars'"):
        model.run(pd.DataFrame({"text": ["a"], "stars": [1]}), "{text}", schema=Review)

    class Bad(BaseModel):
        error: str

    with pytest.raises(bm.ColumnClashError, match="rename the field"):
        model.run(["a"], schema=Bad)
    assert model.bodies == []


def test_schema_needs_chat_or_completion_and_no_response_format_of_its_own():
    model = Model(review_of)
    with pytest.raises(bm.ConfigError, match="chat and completion"):
        model.run(["a"], kind="embedding", schema=Review)
    with pytest.raises(bm.ConfigError, match="not both"):
        model.run(["a"], schema=Review, params={"response_format": {"type": "json_object"}})


def test_the_estimate_counts_the_schema():
    plain = bm.estimate(["a review"], base_url="http://model.test/v1", model="m")
    with_schema = bm.estimate(["a review"], base_url="http://model.test/v1", model="m",
                              schema=Review)
    assert with_schema.input_tokens > plain.input_tokens + 20


def test_the_magic_takes_a_schema_by_name():
    from IPython.core.error import UsageError
    from IPython.testing.globalipapp import get_ipython, start_ipython

    ip = start_ipython() or get_ipython()  # None when the test shell is already running
    ip.run_line_magic("load_ext", "batchmagic")
    model = Model(review_of)
    ip.user_ns.update(Review=Review, texts=["good one"])
    from batchmagic import _magic

    kwargs = {}
    real = _magic._api.batch

    def spy(inputs, prompt, **kw):
        kwargs.update(kw)
        return real(inputs, prompt, transport=httpx.MockTransport(model.handler), **kw)

    _magic._api.batch = spy
    try:
        ip.run_cell_magic("batch", "--on texts -o out -m m --base-url http://model.test/v1 "
                          "--schema Review --no-cache -q", "{}")
        assert kwargs["schema"] is Review
        assert ip.user_ns["out"]["sentiment"].tolist() == ["positive"]
        with pytest.raises(UsageError, match="--schema Reviw: no variable named 'Reviw'"):
            ip.run_cell_magic("batch", "--on texts -m m --base-url http://model.test/v1 "
                              "--schema Reviw", "{}")
    finally:
        _magic._api.batch = real
