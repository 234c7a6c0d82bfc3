"""The API key reaches the Authorization header and nothing else a user can see."""

from __future__ import annotations

import logging
import pickle
import threading

import httpx
import pytest
from conftest import BASE_URL, Server, echo_chat, run, user_text

import batchmagic as bm
from batchmagic._secrets import Secret
from batchmagic.providers._target import resolve_target

KEY = "sk-SENTINEL-DO-NOT-LEAK-0123456789"
PIECES = [KEY, KEY[:17], KEY[-17:], KEY[3:15], "SENTINEL-DO-NOT-LEAK"]


def assert_clean(text: str, where: str = "") -> None:
    for piece in PIECES:
        assert piece not in text, f"the key leaked into {where or 'text'}: {text[:300]!r}"


def _answer(req: httpx.Request, body) -> httpx.Response:
    assert req.headers["authorization"] == f"Bearer {KEY}"
    text = user_text(body)
    if text == "bad":  # a provider that quotes the key back, whole and in part
        return httpx.Response(400, json={"error": {
            "message": f"invalid header {KEY}; did you mean {KEY[:20]}...?", "type": "invalid_request_error"}})
    if text == "server":
        return httpx.Response(500, text=f"upstream said: Authorization: Bearer {KEY}")
    if text == "drop":  # a client exception whose text holds the header
        raise httpx.ReadError(f"connection reset while sending {req.headers['authorization']}")
    if text == "refused":
        raise httpx.ConnectError(f"refused {req.headers['authorization']}")
    return echo_chat(req, body)


ROWS = ["fine", "bad", "server", "drop", "refused", None]


@pytest.fixture
def frame_and_errors(capsys, caplog):
    caplog.set_level(logging.DEBUG)
    s = Server(_answer)
    df = run(ROWS, server=s, api_key=KEY, retries=0)
    errors = [e for e in df["error"] if e is not None]
    return df, errors, s, capsys, caplog


def test_key_arrives_in_the_authorization_header(frame_and_errors):
    df, errors, s, _, _ = frame_and_errors
    assert s.count >= 5
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in s.requests)
    assert df["output"][0] == "echo:fine"
    assert len(errors) == 5


def test_key_not_in_the_frame(frame_and_errors):
    df, _, _, _, _ = frame_and_errors
    assert_clean(repr(df), "repr(df)")
    assert_clean(str(df), "str(df)")
    assert_clean(df.to_string(), "df.to_string()")
    assert_clean(df.to_json(default_handler=str), "df.to_json(default_handler=str)")
    assert_clean(df.to_json(), "df.to_json()")
    assert_clean(df.to_csv(), "df.to_csv()")
    assert_clean(df.to_html(), "df.to_html()")
    assert_clean(repr(df.attrs), "df.attrs")
    assert_clean(pickle.dumps(df).decode("latin-1"), "pickle.dumps(df)")


def test_key_not_in_errors(frame_and_errors):
    _, errors, _, _, _ = frame_and_errors
    kinds = {type(e) for e in errors}
    assert {bm.BadRequestError, bm.ServerError, bm.ConnectionLostError, bm.ConnectError,
            bm.InputError} <= kinds
    for err in errors:
        assert_clean(str(err), f"str({type(err).__name__})")
        assert_clean(repr(err), f"repr({type(err).__name__})")
        assert_clean(repr(err.args), "err.args")
        assert_clean(repr(vars(err)), "vars(err)")
        raw = pickle.dumps(err)
        assert_clean(raw.decode("latin-1"), "pickle")
        back = pickle.loads(raw)
        assert type(back) is type(err) and str(back) == str(err)
        # foreign exceptions (which may hold the request) are never chained
        assert err.__cause__ is None and err.__context__ is None
    bad = next(e for e in errors if isinstance(e, bm.BadRequestError))
    assert "***" in bad.message  # redacted, not dropped


def test_key_not_in_run_error(frame_and_errors):
    df, _, _, _, _ = frame_and_errors
    with pytest.raises(bm.RunError) as info:
        bm.raise_for_errors(df)
    assert_clean(str(info.value), "RunError")
    assert_clean(repr(info.value.errors), "RunError.errors")


def test_key_not_in_output_or_logs(frame_and_errors):
    _, _, _, capsys, caplog = frame_and_errors
    out, err = capsys.readouterr()
    assert_clean(out, "stdout")
    assert_clean(err, "stderr")
    assert_clean(caplog.text, "logs")
    for record in caplog.records:
        assert_clean(record.getMessage(), "a log record")


def test_provider_echo_of_the_key_in_a_401_is_redacted(capsys, caplog):
    caplog.set_level(logging.DEBUG)
    s = Server(lambda req, body: httpx.Response(401, json={"error": {
        "message": f"Incorrect API key provided: {KEY}", "type": "invalid_request_error",
        "code": "invalid_api_key"}}))
    df = run(["a", "b", "c"], server=s, api_key=KEY, concurrency=1)
    assert s.requests[0].headers["authorization"] == f"Bearer {KEY}"
    err = df["error"][0]
    assert isinstance(err, bm.FatalProviderError)
    assert "Incorrect API key provided: ***" in str(err)
    assert_clean(repr(df), "repr(df)")
    assert_clean(df.to_json(), "df.to_json()")
    assert_clean(df.to_csv(), "df.to_csv()")
    assert_clean(repr(df.attrs), "df.attrs")
    assert df.attrs["batchmagic"]["stopped_by"]
    for e in df["error"]:
        assert_clean(str(e), "error")
        assert_clean(repr(e), "error repr")
        assert_clean(pickle.dumps(e).decode("latin-1"), "pickled error")
    out, errout = capsys.readouterr()
    assert "batch stopped" in errout  # the stop is reported on stderr...
    assert_clean(out, "stdout")
    assert_clean(errout, "stderr")  # ...without the key
    assert_clean(caplog.text, "logs")


def test_partial_echo_of_the_key_is_redacted():
    s = Server(lambda req, body: httpx.Response(401, json={"error": {
        "message": f"Incorrect API key provided: {KEY[:12]}**********{KEY[-12:]}."}}))
    df = run(["a"], server=s, api_key=KEY)
    text = str(df["error"][0])
    assert KEY[:12] not in text and KEY[-12:] not in text


def test_key_not_in_a_batch_task_repr():
    release = threading.Event()

    def answer(req, body):
        release.wait(5)
        return _answer(req, body)

    s = Server(answer)
    task = bm.submit(["fine", "bad"], base_url=BASE_URL, model="m", api_key=KEY,
                     transport=s.transport, progress=False)
    try:
        assert_clean(repr(task), "repr(BatchTask) while running")
        assert_clean(repr(task.frame), "BatchTask.frame while running")
        assert_clean(repr(task.progress), "BatchTask.progress")
        assert_clean(repr(task._run.options), "the run's options")
        assert_clean(repr(task._run.target), "the run's target")
    finally:
        release.set()
    df = task.wait(5)
    assert_clean(repr(task), "repr(BatchTask)")
    assert_clean(repr(task.progress), "BatchTask.progress")
    assert_clean(repr(df), "repr(df)")
    assert_clean(repr(task.results()), "results()")


def test_key_not_in_estimate():
    est = bm.estimate(["a"], base_url=BASE_URL, model="m", api_key=KEY)
    assert_clean(repr(est), "repr(Estimate)")
    assert_clean(str(est), "str(Estimate)")


def test_secret_never_shows_its_value():
    secret = Secret(KEY)
    assert secret.reveal() == KEY
    assert_clean(repr(secret))
    assert_clean(str(secret))
    assert_clean(f"{secret}")
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    assert secret == Secret(KEY) and hash(secret) == hash(Secret(KEY))
    assert secret.redact(f"a {KEY} b") == "a *** b"
    assert "***" in secret.redact(f"x{KEY[5:25]}y")
    assert secret.redact("") == ""
    assert Secret(f"  {KEY}\n").reveal() == KEY
    with pytest.raises(ValueError):
        Secret("   ")


def test_target_repr_hides_the_key():
    target = resolve_target(None, BASE_URL, KEY, "chat")
    assert target.api_key.reveal() == KEY
    assert_clean(repr(target))


def test_empty_api_key_is_a_config_error():
    with pytest.raises(bm.ConfigError):
        run(["a"], server=Server(), api_key="  ")


def test_no_key_means_no_authorization_header(monkeypatch):
    monkeypatch.delenv("BATCHMAGIC_API_KEY", raising=False)
    s = Server(echo_chat)
    run(["a"], server=s)
    assert "authorization" not in s.requests[0].headers


def test_credentials_in_base_url_are_refused():
    with pytest.raises(bm.ConfigError) as info:
        run(["a"], server=Server(), base_url=f"http://user:{KEY}@test/v1")
    assert_clean(str(info.value))


# -- keys and headers the HTTP client cannot send: refused up front, never quoted -----------------

# distinctive on both sides of the break, so any echo of either half is caught
BROKEN_KEY = "sk-QWxF7pZk3Lm9\r\nRtYv2Hs8Nd4Bj6"
NUL_KEY = "sk-QWxF7pZk3Lm9\x00RtYv2Hs8Nd4Bj6"


def assert_no_piece_of(value: str, text: str, where: str) -> None:
    """No run of 4 or more of the value's characters appears in ``text``."""
    for start in range(len(value) - 3):
        piece = value[start:start + 4]
        assert piece not in text, f"a piece of the value ({piece!r}) leaked into {where}: {text!r}"


@pytest.fixture(scope="module")
def sim():
    from batchmagic.simulator import SimulatorThread

    s = SimulatorThread().start()
    yield s
    s.stop()


def _sim_batch(sim, **kw):
    return bm.batch(["a", "b"], model="sim-chat", provider="simulator", base_url=sim.base_url,
                    progress=False, cache=False, retries=0, **kw)


@pytest.mark.parametrize("http", ["aiohttp", "httpx"])
@pytest.mark.parametrize("key", [BROKEN_KEY, NUL_KEY], ids=["crlf", "nul"])
def test_key_with_a_control_character_is_refused_before_sending(sim, http, key, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    sim.reset()
    with pytest.raises(bm.ConfigError) as info:
        _sim_batch(sim, api_key=key, http=http)
    message = str(info.value)
    assert "control character" in message and "api_key" in message
    out, err = capsys.readouterr()
    for text, where in ((message, "the error"), (repr(info.value), "its repr"), (out, "stdout"),
                        (err, "stderr"), (caplog.text, "the logs")):
        assert_no_piece_of(key, text, where)
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert sim.calls() == []  # nothing sent, so nothing "possibly billed"


@pytest.mark.parametrize("http", ["aiohttp", "httpx"])
def test_key_from_the_environment_with_a_line_break_is_refused(sim, http, monkeypatch):
    sim.reset()
    monkeypatch.setenv("BATCHMAGIC_SIM_API_KEY", BROKEN_KEY)
    with pytest.raises(bm.ConfigError) as info:
        _sim_batch(sim, http=http)
    assert "BATCHMAGIC_SIM_API_KEY" in str(info.value)  # names where the bad key came from
    assert_no_piece_of(BROKEN_KEY, str(info.value), "the error")
    assert sim.calls() == []


def test_a_trailing_newline_is_trimmed_not_refused(sim):
    sim.reset()
    df = _sim_batch(sim, api_key="sk-QWxF7pZk3Lm9RtYv2Hs8Nd4Bj6\n")
    assert df["error"].isna().all()
    assert len(sim.calls()) == 2


@pytest.mark.parametrize("http", ["aiohttp", "httpx"])
@pytest.mark.parametrize("headers", [{"x-api-key": BROKEN_KEY}, {"x-api-key": NUL_KEY}],
                         ids=["crlf", "nul"])
def test_header_value_with_a_control_character_is_refused_before_sending(sim, http, headers):
    sim.reset()
    with pytest.raises(bm.ConfigError) as info:
        _sim_batch(sim, headers=headers, http=http)
    assert "x-api-key" in str(info.value)
    assert_no_piece_of(headers["x-api-key"], str(info.value), "the error")
    assert sim.calls() == []


@pytest.mark.parametrize("headers", [{"bad name": "v"}, {"x-ok": 5}, ["x-api-key", "v"]],
                         ids=["name", "value-type", "not-a-dict"])
def test_malformed_headers_are_refused_before_sending(sim, headers):
    sim.reset()
    with pytest.raises(bm.ConfigError):
        _sim_batch(sim, headers=headers)
    assert sim.calls() == []


def test_good_headers_still_arrive(sim):
    sim.reset()
    df = _sim_batch(sim, headers={"X-Trace-Id": "abc-123"})
    assert df["error"].isna().all()
    assert len(sim.calls()) == 2


def test_non_ascii_key_is_refused_without_showing_it(sim):
    sim.reset()
    key = "sk-QWxF7pZk3Lm9\u2013RtYv2Hs8Nd4Bj6"  # an en dash from a word processor
    with pytest.raises(bm.ConfigError) as info:
        _sim_batch(sim, api_key=key, http="httpx")
    assert "non-ASCII" in str(info.value)
    assert_no_piece_of(key, str(info.value), "the error")
    assert sim.calls() == []


@pytest.mark.parametrize("value", [12345, 3.5, b"sk-bytes-key-0123456789", ["sk-x"]])
def test_a_key_that_is_not_a_string_says_so_without_echoing_it(sim, value):
    sim.reset()
    with pytest.raises(bm.ConfigError) as info:
        _sim_batch(sim, api_key=value)
    message = str(info.value)
    assert "must be a string" in message and type(value).__name__ in message
    assert "empty" not in message
    shown = value.decode() if isinstance(value, bytes) else str(value)
    assert shown not in message and "12345" not in message
    assert sim.calls() == []
