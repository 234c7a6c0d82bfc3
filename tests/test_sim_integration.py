"""bm.batch against the simulator in a subprocess on 127.0.0.1, on the default (aiohttp) wire."""

from __future__ import annotations

import collections
import json
import time

import pandas as pd
import pytest

import batchmagic as bm
from batchmagic.simulator import SimulatorProcess

SENTINEL = "sk-SENTINEL-DO-NOT-LEAK-0123456789"


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess() as s:
        yield s


@pytest.fixture
def fresh(sim):
    sim.reset()
    sim.configure(faults={}, fault_attempts=1, latency=0.0, rpm=None, tpm=None, api_key=None,
                  retry_after_format="seconds", ratelimit_headers=True, missing_models=[])
    yield sim
    sim.configure(faults={}, rpm=None, tpm=None, api_key=None, latency=0.0)


def prompts(n: int, tag: str = "row") -> list[str]:
    return [f"{tag} {i}" for i in range(n)]


def run(sim, inputs, **kw):
    kw.setdefault("model", "sim-chat")
    kw.setdefault("progress", False)
    return bm.batch(inputs, provider="simulator", base_url=sim.base_url, **kw)


def test_chat_rows_land_on_their_rows(fresh):
    fresh.configure(latency=0.02, latency_dist="uniform", latency_jitter=0.02)
    texts = prompts(300)
    df = run(fresh, texts, concurrency=50)
    assert list(df.index) == list(range(300))
    assert df["error"].isna().all()
    assert df["output"].tolist() == [f"echo: {t}" for t in texts]
    assert (df["attempts"] == 1).all()
    assert len(fresh.calls()) == 300


def test_identical_requests_sent_once(fresh):
    """Deterministic answers (temperature 0) are asked once and fanned out."""
    df = run(fresh, ["same"] * 50 + ["other"], params={"temperature": 0})
    assert df["output"].tolist() == ["echo: same"] * 50 + ["echo: other"]
    assert len(fresh.calls()) == 2


def test_identical_rows_at_a_temperature_are_each_their_own_answer(fresh):
    """Five identical rows at temperature 1 used to send one request and copy its answer to
    all five: sampling was silently impossible."""
    df = run(fresh, ["same"] * 5, params={"temperature": 1.0})
    assert len(fresh.calls()) == 5 and df["error"].isna().all()
    assert df.attrs["batchmagic"]["requests"] == 5
    again = run(fresh, ["same"] * 5, params={"temperature": 1.0})  # the same 5 from the journal
    assert len(fresh.calls()) == 5 and again.attrs["batchmagic"]["cached"] == 5
    more = run(fresh, ["same"] * 7, params={"temperature": 1.0})  # two more rows: two more asks
    assert len(fresh.calls()) == 7 and more.attrs["batchmagic"]["cached"] == 5


TRANSIENT = ["500", "502", "503", "504", "529", "429", "reset_before", "reset_after", "truncated",
             "non_json", "invalid_utf8", "wrong_shape"]
# a reset after the request went out looks the same to the client whether or not the server
# processed it, so both resets count as possibly billed
BILLED = {"reset_before", "reset_after", "truncated", "non_json", "invalid_utf8", "wrong_shape"}


@pytest.mark.parametrize("fault", TRANSIENT)
def test_transient_fault_is_retried(fresh, fault):
    fresh.configure(faults={fault: 1.0}, fault_attempts=1, retry_after_format="ms")
    texts = prompts(12, fault)
    df = run(fresh, texts, concurrency=4)
    assert df["error"].isna().all(), df["error"].dropna().tolist()
    assert df["output"].tolist() == [f"echo: {t}" for t in texts]
    assert (df["attempts"] == 2).all()
    facts = df.attrs["batchmagic"]
    assert facts["possibly_billed"] == (12 if fault in BILLED else 0)
    assert len(fresh.calls()) == 24


def test_error_inside_http_200_is_a_rate_limit(fresh):
    fresh.configure(faults={"error_200": 1.0}, fault_attempts=1)
    df = bm.batch(prompts(5), provider="qianfan", base_url=fresh.base_url, api_key="k",
                  model="sim-chat", progress=False)
    assert df["error"].isna().all()
    assert df.attrs["batchmagic"]["rate_limited"] == 5


@pytest.mark.parametrize("fault", ["hang", "trickle"])
def test_hard_deadline_per_attempt(fresh, fault):
    fresh.configure(faults={fault: 1.0}, fault_attempts=1, trickle_interval=0.3)
    t0 = time.monotonic()
    df = run(fresh, prompts(4, fault), timeout=1.0, concurrency=4)
    # each first attempt ran to its 1 s deadline, then one retry: about 2 s; the upper bound
    # only tells "cut at the deadline" from "waited for the server" (hang: an hour)
    assert 1.0 <= time.monotonic() - t0 < 20
    assert df["error"].isna().all()
    assert (df["attempts"] == 2).all()
    assert df.attrs["batchmagic"]["possibly_billed"] == 4


def test_possibly_billed_retried_only_once(fresh):
    fresh.configure(faults={"reset_after": 1.0}, fault_attempts=5)
    df = run(fresh, prompts(3, "billed"), concurrency=3)
    errors = df["error"].tolist()
    assert all(isinstance(e, bm.ConnectionLostError) for e in errors)
    assert all(e.possibly_billed and e.attempts == 2 for e in errors)
    assert "possibly billed" in str(errors[0])
    assert len(fresh.calls()) == 6


@pytest.mark.parametrize("fault,cls", [("401", bm.FatalProviderError),
                                       ("insufficient_quota", bm.FatalProviderError),
                                       ("404_model", bm.FatalProviderError)])
def test_fatal_errors_stop_the_run(fresh, fault, cls):
    fresh.configure(faults={fault: 1.0}, fault_attempts=1000)
    df = run(fresh, prompts(40, fault), concurrency=2)
    errors = df["error"].tolist()
    assert all(e is not None for e in errors)
    assert isinstance(errors[0], cls)
    assert sum(isinstance(e, bm.NotSentError) for e in errors) >= 30
    assert len(fresh.calls()) <= 4  # stopped at once: no retries, no more rows
    assert df.attrs["batchmagic"]["stopped_by"]
    assert df.attrs["batchmagic"]["state"] == "aborted"


def test_context_length_is_a_row_error(fresh):
    fresh.configure(context_window=64)
    df = run(fresh, ["short", "long " * 200, "short too"], params={"max_tokens": 8})
    assert df["error"].iloc[0] is None and df["error"].iloc[2] is None
    assert isinstance(df["error"].iloc[1], bm.ContextLengthError)
    assert df["error"].iloc[1].attempts == 1
    fresh.configure(context_window=8192)


def test_learns_rate_limit_from_headers(fresh):
    """No limit given: the x-ratelimit-* headers seed the pacing; rows finish with no errors."""
    fresh.configure(rpm=1200, latency=0.05)
    n = 100
    t0 = time.monotonic()
    df = run(fresh, prompts(n, "paced"))
    wall = time.monotonic() - t0
    assert df["error"].isna().all()
    ideal = (n - 20) / 20.0  # 20 requests/s after a burst of 20
    # paced at the learned rate, not crawling below it (a loaded machine only adds a little;
    # a wrong or probed rate would take minutes)
    assert wall < ideal * 10, wall
    assert df.attrs["batchmagic"]["learned_rpm"] == pytest.approx(1200)
    stats = fresh.stats()
    assert stats["by_status"].get("429", 0) <= n * 0.2


def test_given_rpm_is_respected(fresh):
    fresh.configure(rpm=600)
    df = run(fresh, prompts(30, "given"), rpm=600)
    assert df["error"].isna().all()
    assert df.attrs["batchmagic"]["rate_limited"] <= 3


def test_chaos_2000_rows_every_invariant(fresh, tmp_path, capfd):
    log = tmp_path / "calls.jsonl"
    faults = {"500": 0.02, "503": 0.01, "429": 0.01, "reset_before": 0.01, "reset_after": 0.01,
              "truncated": 0.01, "non_json": 0.01, "invalid_utf8": 0.005, "wrong_shape": 0.005,
              "504": 0.01}
    fresh.configure(faults=faults, fault_attempts=2, fault_seed=7, latency=0.003,
                    api_key=SENTINEL, call_log_path=str(log), retry_after_format="ms")
    frame = pd.DataFrame({"text": prompts(2000, "chaos"), "n": range(2000)},
                         index=pd.Index([f"k{i}" for i in range(2000)], name="key"))
    df = bm.batch(frame, "Say {text}", provider="simulator", base_url=fresh.base_url,
                  api_key=SENTINEL, model="sim-chat", concurrency=64, progress=True)
    out, err = capfd.readouterr()

    # 1. one row out per row in, in order, each a value or an error
    assert len(df) == 2000 and list(df.index) == list(frame.index)
    assert df["n"].tolist() == list(range(2000))
    has_out = df["output"].notna()
    has_err = df["error"].notna()
    assert (has_out ^ has_err).all()
    for text, output in zip(df["text"][has_out], df["output"][has_out]):
        assert output == f"echo: Say {text}"
    # 3. no double spend beyond the rules: each row's requests are exactly its attempts,
    #    possibly-billed failures retried at most once
    calls = fresh.calls()
    per_tag = collections.Counter(c["tag"] for c in calls)
    for text, attempts in zip(df["text"], df["attempts"]):
        assert per_tag[f"Say {text}"] == attempts
    assert len(calls) == int(df["attempts"].sum())
    for e in df["error"][has_err]:
        assert isinstance(e, bm.RowError) and e.row in frame.index
    assert has_out.mean() > 0.97
    # 4. no secret anywhere
    everything = [out, err, repr(df), df.to_json(default_handler=str), json.dumps(df.attrs, default=str),
                  log.read_text(), fresh.stdout_text(), fresh.stderr_text()]
    everything += [repr(e) + str(e) for e in df["error"][has_err]]
    assert not any(SENTINEL in s for s in everything)
    # 5. bounded output: the bar redraws at most a few times a second, no line per row
    assert err.count("\r") + err.count("\n") < 200
    fresh.configure(call_log_path=None)


def test_no_socket_leaves_loopback(fresh):
    import ipaddress
    import sys

    seen: list = []
    state = {"on": True}

    def hook(event, args):
        if state["on"] and event == "socket.connect":
            seen.append(args[1])

    sys.addaudithook(hook)
    try:
        run(fresh, prompts(20, "net"), concurrency=8)
    finally:
        state["on"] = False
    hosts = {a[0] for a in seen if isinstance(a, tuple)}
    assert hosts, "no connection was observed"
    assert all(ipaddress.ip_address(h).is_loopback for h in hosts), hosts


def test_embeddings_and_images_through_the_wire(fresh):
    texts = prompts(300, "emb")
    df = run(fresh, texts, kind="embedding", model="sim-embed")
    assert df["error"].isna().all()
    assert df["output"].iloc[0].dtype.name == "float32"
    assert len(fresh.calls()) == 1  # packed into one request (cap 2048)
    again = run(fresh, texts[:1], kind="embedding", model="sim-embed")
    assert (again["output"].iloc[0] == df["output"].iloc[0]).all()

    imgs = run(fresh, ["a red square", "a blue circle"], kind="image", model="sim-image",
               params={"size": "32x32"})
    assert imgs["error"].isna().all()
    assert all(isinstance(i, bm.GeneratedImage) and i.size == (32, 32) for i in imgs["output"])
    urls = run(fresh, ["a red square"], kind="image", model="sim-image",
               params={"size": "32x32", "response_format": "url"})
    assert urls["output"].iloc[0].data == imgs["output"].iloc[0].data
