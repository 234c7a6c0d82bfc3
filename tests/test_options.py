"""Numeric options: NaN, inf and bools refused before anything is sent, numpy numbers taken as
the plain numbers they hold (against the simulator on loopback)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import batchmagic as bm
from batchmagic.simulator import SimulatorThread

NAN, INF = float("nan"), float("inf")
PRICES = {"input": 1.0, "output": 2.0}


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(latency=0.0) as s:
        yield s


def _batch(sim, inputs=("a", "b"), **kw):
    kw.setdefault("model", "m")
    return bm.batch(list(inputs), provider="simulator", base_url=sim.base_url, progress=False,
                    **kw)


@pytest.mark.parametrize("option", ["concurrency", "rpm", "tpm", "timeout", "budget", "retries"])
@pytest.mark.parametrize("value", [NAN, INF, -INF, np.float64(NAN), np.float32(INF), True,
                                   np.True_, "5"])
def test_non_finite_and_non_numeric_options_are_refused_before_sending(sim, option, value):
    sim.reset()
    extra = {"prices": PRICES} if option == "budget" else {}
    with pytest.raises(bm.ConfigError, match=option):
        _batch(sim, **{option: value}, **extra)
    assert sim.stats()["total"] == 0


def test_a_nan_budget_no_longer_disarms_the_spending_cap(sim):
    """budget=NaN compared false with every spend, so the run was never stopped."""
    sim.reset()
    with pytest.raises(bm.ConfigError, match="budget must be a positive number"):
        _batch(sim, budget=NAN, prices=PRICES)
    with pytest.raises(bm.ConfigError, match=r"prices\['input'\]"):
        _batch(sim, budget=1.0, prices={"input": NAN, "output": 1.0})
    assert sim.stats()["total"] == 0


def test_timeout_inf_or_absurd_is_refused_instead_of_failing_every_row(sim):
    sim.reset()
    with pytest.raises(bm.ConfigError, match="timeout"):
        _batch(sim, timeout=INF)
    with pytest.raises(bm.ConfigError, match="a week"):
        _batch(sim, timeout=30_000_000.0)  # milliseconds written for seconds
    assert sim.stats()["total"] == 0


def test_numpy_numbers_are_taken_as_plain_numbers(sim):
    df = _batch(sim, ["x", "y", "z"], concurrency=np.int64(2), rpm=np.float64(60_000),
                tpm=np.int32(10_000_000), timeout=np.float32(30), retries=np.int64(0),
                budget=np.float64(5.0),
                prices={"input": np.float64(1.0), "output": np.float32(2.0)})
    assert df["error"].isna().all()
    assert df["output"].tolist() == ["echo: x", "echo: y", "echo: z"]
    facts = df.attrs["batchmagic"]
    assert type(facts["cost"]) is float and facts["cost"] > 0
    assert facts["final_concurrency"] <= 2


def test_zero_retries_is_allowed_and_negative_is_not(sim):
    assert _batch(sim, ["x"], retries=0)["error"].isna().all()
    with pytest.raises(bm.ConfigError, match="retries must be a whole number >= 0"):
        _batch(sim, retries=np.int64(-1))


def test_batch_options_take_numpy_numbers_and_refuse_non_finite(sim):
    kw = dict(mode="batch-api", provider="simulator", base_url=sim.base_url, model="m")
    est = bm.estimate(["a"], batch_options={"max_requests": np.int64(10),
                                            "poll_interval": np.float64(0.5)}, **kw)
    assert est.rows == 1
    for name, value in (("poll_interval", NAN), ("max_poll_interval", INF), ("max_bytes", 0)):
        with pytest.raises(bm.ConfigError, match=name):
            bm.estimate(["a"], batch_options={name: value}, **kw)


def test_estimate_checks_the_same_options():
    with pytest.raises(bm.ConfigError, match="rpm"):
        bm.estimate(pd.Series(["a"]), base_url="http://127.0.0.1:9/v1", model="m", rpm=NAN)
