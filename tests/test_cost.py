"""Estimates, prices, per-row cost and the budget guard, against the simulator."""

from __future__ import annotations

import math

import pandas as pd
import pytest

import batchmagic as bm
from batchmagic.simulator import SimulatorProcess

TEXTS = [
    "The battery lasts two full days and the screen is gorgeous.",
    "Stopped working after a week. Support never answered my emails, which is unacceptable.",
    "质量很好，物流也很快，非常满意。包装也很仔细，下次还会再买。",
    "Le produit est correct mais la livraison a pris trois semaines.",
    "def f(x):\n    return [i ** 2 for i in range(x) if i % 3 == 0]",
    "Short.",
    "日本語のテキストも少し混ぜておきます。English mixed in, 123 numbers too!",
    "A much longer review " * 40,
]


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess() as s:
        yield s


def openai_sim(sim, inputs, prompt=None, **kw):
    """The openai preset (so genai-prices knows the model) pointed at the simulator."""
    kw.setdefault("model", "gpt-4o-mini")
    kw.setdefault("progress", False)
    return bm.batch(inputs, prompt, provider="openai", base_url=sim.base_url, api_key="k", **kw)


def test_estimate_is_within_25_percent_of_real_usage(sim):
    est = bm.estimate(TEXTS, model="gpt-4o-mini", provider="openai", base_url=sim.base_url,
                      api_key="k", params={"max_tokens": 64})
    out = openai_sim(sim, TEXTS, params={"max_tokens": 64})
    real = int(out["input_tokens"].sum())
    assert abs(est.input_tokens - real) / real <= 0.25, (est.input_tokens, real)
    for text, tokens in zip(TEXTS, out["input_tokens"]):  # and row by row, for longer rows
        one = bm.estimate([text], model="gpt-4o-mini", provider="openai", base_url=sim.base_url,
                          api_key="k", cache=False).input_tokens
        if tokens >= 20:
            assert abs(one - tokens) / tokens <= 0.25, (text[:30], one, tokens)


def test_estimate_reports_plan_cost_and_cache(sim):
    est = bm.estimate(["a", "b", "a"], model="gpt-4o-mini", provider="openai", base_url=sim.base_url,
                      api_key="k", params={"max_tokens": 100}, rpm=60, dedupe=True)
    assert (est.rows, est.requests, est.to_send, est.cached_rows) == (3, 2, 2, 0)
    assert est.max_output_tokens == 200
    low, high = est.cost_online
    assert 0 < low < high == pytest.approx(low + 200 * 0.60 / 1e6)
    assert est.cost_batch_api == pytest.approx((low / 2, high / 2))
    assert est.eta_s == pytest.approx(2.0)
    assert "genai-prices" in str(est) and "Batch API" in str(est)
    openai_sim(sim, ["a", "b"], params={"max_tokens": 100}, dedupe=True)
    again = bm.estimate(["a", "b", "a"], model="gpt-4o-mini", provider="openai",
                        base_url=sim.base_url, api_key="k", params={"max_tokens": 100},
                        dedupe=True)
    assert (again.cached_rows, again.to_send) == (3, 0)
    assert len(sim.calls()) >= 2  # estimate itself sends nothing: only the batch above did


def test_unknown_price_is_unknown_never_guessed(sim):
    est = bm.estimate(["x"], model="qwen-plus", provider="dashscope", base_url=sim.base_url,
                      api_key="k")
    assert est.cost_online is None and "unknown" in str(est)
    out = bm.batch(["x"], model="qwen-plus", provider="dashscope", base_url=sim.base_url,
                   api_key="k", progress=False)
    assert out["cost"].isna().all() and out.attrs["batchmagic"]["cost"] is None


def test_cost_column_from_real_usage(sim):
    out = openai_sim(sim, ["price me", "and me"], prices={"input": 1.0, "output": 2.0})
    for cost, inp, outp in zip(out["cost"], out["input_tokens"], out["output_tokens"]):
        assert math.isclose(cost, inp * 1e-6 + outp * 2e-6)
    assert math.isclose(out.attrs["batchmagic"]["cost"], float(out["cost"].sum()))
    known = openai_sim(sim, ["genai prices"])
    row = known.iloc[0]
    assert math.isclose(row["cost"], row["input_tokens"] * 0.15e-6 + row["output_tokens"] * 0.6e-6)
    cached = openai_sim(sim, ["genai prices"])
    assert cached["cost"].iloc[0] == row["cost"]  # the journal keeps what the answer cost
    assert cached.attrs["batchmagic"]["cost"] == 0.0  # ... but this run spent nothing
    assert math.isclose(cached.attrs["batchmagic"]["cost_saved"], row["cost"])


def test_budget_stops_before_overspending(sim):
    sim.configure(latency=0.01)
    budget = 0.0010
    rows = [f"budget row {i} " + "words " * 20 for i in range(300)]
    out = openai_sim(sim, rows, params={"max_tokens": 32}, budget=budget, concurrency=8)
    facts = out.attrs["batchmagic"]
    assert facts["cost"] <= budget
    assert facts["state"] == "aborted" and "budget" in facts["stopped_by"]
    done = out["error"].isna()
    assert 0 < done.sum() < 300
    assert all(isinstance(e, bm.NotSentError) for e in out["error"][~done])
    assert "BudgetExceededError" in str(out["error"][~done].iloc[0])
    assert math.isclose(float(out["cost"][done].sum()), facts["cost"])
    sim.configure(latency=0.0)


def test_budget_needs_a_price(sim):
    with pytest.raises(bm.ConfigError, match="budget= needs the price"):
        bm.batch(["x"], model="qwen-plus", provider="dashscope", base_url=sim.base_url,
                 api_key="k", budget=1.0, progress=False)
    with pytest.raises(bm.ConfigError, match="budget must be a positive number"):
        openai_sim(sim, ["x"], budget=-1)


def test_budget_works_with_user_prices_on_any_endpoint(sim):
    rows = pd.Series([f"p {i}" for i in range(50)], name="text")
    out = bm.batch(rows, model="anything", provider="simulator", base_url=sim.base_url,
                   prices={"input": 100.0, "output": 100.0}, budget=0.01, progress=False,
                   params={"max_tokens": 8}, concurrency=2)
    assert out.attrs["batchmagic"]["cost"] <= 0.01
    assert out.attrs["batchmagic"]["state"] == "aborted"


def test_budget_stop_names_the_next_requests_worst_case(sim):
    """It said "the next request could cost up to $0.0000" (the in-flight reservation, which
    is 0 when the stop is decided) instead of what the next request could cost."""
    rows = [f"tight {i:02d} " + "words " * 20 for i in range(40)]  # all the same size
    out = openai_sim(sim, rows, params={"max_tokens": 32}, budget=0.0001, concurrency=2)
    stop = out.attrs["batchmagic"]["stopped_by"]
    from batchmagic._cost import usd

    assert "could cost up to $0.0000 " not in stop
    worst = bm.estimate(rows[-1:], model="gpt-4o-mini", provider="openai",
                        base_url=sim.base_url, api_key="k",
                        params={"max_tokens": 32}).cost_online[1]
    assert f"could cost up to {usd(worst)} " in stop
    assert "max_tokens" not in stop  # it was given


def test_budget_without_max_tokens_explains_what_it_reserves(sim):
    """budget= without max_tokens reserves 512 output tokens a request: with a budget below
    that nothing is sent, and the message must say why and what to do."""
    out = openai_sim(sim, ["a short prompt"] * 3 + ["another"], budget=0.0002)
    stop = out.attrs["batchmagic"]["stopped_by"]
    assert "no max_tokens was given" in stop and "512 output tokens" in stop
    assert "params={'max_tokens': N}" in stop
    assert all(isinstance(e, bm.NotSentError) for e in out["error"])


def test_counts_are_rows_not_requests(sim):
    """10,000 identical rows share one request: they are 10,000 ok rows, not 1; a re-run
    answered by the journal reports them ok as well, and as cached."""
    rows = ["the same prompt"] * 10_000 + ["another"]
    first = openai_sim(sim, rows, params={"temperature": 0})
    facts = first.attrs["batchmagic"]
    assert (facts["ok"], facts["failed"], facts["cached"], facts["requests"]) == (10_001, 0, 0, 2)
    again = openai_sim(sim, rows, params={"temperature": 0})
    facts = again.attrs["batchmagic"]
    assert (facts["ok"], facts["failed"], facts["cached"]) == (10_001, 0, 10_001)
    task = bm.submit(rows, model="gpt-4o-mini", provider="openai", base_url=sim.base_url,
                     api_key="k", progress=False, params={"temperature": 0})
    task.wait(60)
    assert task.total_count() == task.task_count() == task.finished_count() == 10_001
    assert task.progress.ok == 10_001


def test_a_finished_runs_frame_is_freed_once_the_caller_drops_it(sim):
    """The registry of recent runs kept up to 50 runs with their inputs, plans and frames."""
    import gc
    import weakref

    out = openai_sim(sim, [f"free {i}" for i in range(500)], cache=False)
    ref = weakref.ref(out)
    del out
    gc.collect()
    assert ref() is None
    summary = bm._api.recent_runs()[-1].summary()
    assert summary["rows"] == 500 and summary["ok"] == 500
