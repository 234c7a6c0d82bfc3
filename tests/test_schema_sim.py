"""schema= against the simulator over real HTTP, online, streamed and through the Batch API:
a pydantic model, a Literal and a list; answers spoiled by the simulator's faults asked again;
tool calls kept beside a schema."""

from __future__ import annotations

from typing import Literal

import pandas as pd
import pytest
from pydantic import BaseModel

import batchmagic as bm
from batchmagic.simulator import SimulatorProcess

FAST = {"poll_interval": 0.05, "max_poll_interval": 0.2}


class Ticket(BaseModel):
    title: str
    priority: Literal["low", "medium", "high"]
    tags: list[str]


Sentiment = Literal["positive", "negative", "mixed"]


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess(batch_seconds=0.3) as s:
        yield s


@pytest.fixture
def fresh(sim):
    sim.reset()
    sim.configure(faults={}, fault_attempts=1, batch_seconds=0.3)
    yield sim
    sim.configure(faults={})


def where(sim, **kw):
    kw.setdefault("model", "sim-chat")
    kw.setdefault("progress", False)
    kw.setdefault("cache", False)
    return dict(provider="simulator", base_url=sim.base_url, **kw)


TEXTS = pd.DataFrame({"text": ["The login page times out", "Add a dark theme",
                               "Data loss after upgrade", "Typo on the pricing page"]})


@pytest.mark.parametrize("stream", [False, True])
def test_a_pydantic_model_online(fresh, stream):
    df = bm.batch(TEXTS, "File a ticket for: {text}", schema=Ticket, stream=stream,
                  **where(fresh))
    assert df["error"].isna().all(), df["error"].tolist()
    assert all(isinstance(v, Ticket) for v in df["output"])
    assert set(df["priority"]) <= {"low", "medium", "high"}
    assert all(isinstance(t, list) for t in df["tags"])
    assert list(df.columns[:1]) == ["text"] and {"title", "priority", "tags", "raw"} <= set(df)
    if stream:
        assert df["ttft"].notna().all()
    sent = [c.get("extras") or {} for c in fresh.calls()]
    assert all(e.get("format") == "json_schema" for e in sent)


@pytest.mark.parametrize("spec, check", [
    (Sentiment, lambda v: v in ("positive", "negative", "mixed")),
    (list[str], lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    (int, lambda v: isinstance(v, int)),
])
def test_types_online(fresh, spec, check):
    df = bm.batch(TEXTS, "{text}", schema=spec, **where(fresh))
    assert df["error"].isna().all()
    assert all(check(v) for v in df["output"])


@pytest.mark.parametrize("fault", ["invalid_json", "schema_mismatch"])
def test_a_spoiled_answer_is_asked_again(fresh, fault):
    fresh.configure(faults={fault: 1.0}, fault_attempts=1)  # each body's first answer spoiled
    df = bm.batch(TEXTS, "File a ticket for: {text}", schema=Ticket, **where(fresh))
    assert df["error"].isna().all(), df["error"].tolist()
    assert (df["attempts"] == 2).all()
    assert df.attrs["batchmagic"]["retries"] == len(TEXTS)


def test_an_answer_spoiled_every_time_is_a_schema_error_with_its_text(fresh):
    fresh.configure(faults={"schema_mismatch": 1.0}, fault_attempts=100)
    df = bm.batch(TEXTS[:2], "File a ticket for: {text}", schema=Ticket, parse_retries=2,
                  **where(fresh))
    assert all(isinstance(e, bm.SchemaError) for e in df["error"])
    assert (df["attempts"] == 3).all()
    assert all(e.raw and e.raw.startswith("{") for e in df["error"])
    assert df["output"].isna().all() and df["raw"].notna().all()


def test_the_batch_api_carries_the_schema_on_every_line(fresh):
    df = bm.batch(TEXTS, "File a ticket for: {text}", schema=Ticket, mode="batch-api",
                  batch_options=FAST, **where(fresh, cache=True))
    assert df["error"].isna().all(), df["error"].tolist()
    assert all(isinstance(v, Ticket) for v in df["output"])
    assert df.attrs["batchmagic"]["mode"] == "batch-api"


def test_tool_calls_are_kept_beside_the_answers(fresh):
    tools = [{"type": "function", "function": {
        "name": "lookup", "description": "Look an order up",
        "parameters": {"type": "object", "properties": {"order": {"type": "string"}},
                       "required": ["order"]}}}]
    df = bm.batch(["call lookup for order 17", "just say hello"], params={"tools": tools},
                  **where(fresh))
    calls, plain = df["tool_calls"][0], df["tool_calls"][1]
    assert calls[0]["name"] == "lookup" and isinstance(calls[0]["arguments"], dict)
    assert df["finish_reason"][0] == "tool_calls" and df["output"][0] == ""
    assert plain is None and df["output"][1]


def test_logprobs_are_kept(fresh):
    df = bm.batch(["hello there"], params={"logprobs": True, "top_logprobs": 2},
                  **where(fresh))
    content = df["logprobs"][0]["content"]
    assert content and "logprob" in content[0] and len(content[0]["top_logprobs"]) == 2
