"""Batch API building blocks without a server: input files, sharding, result lines, signatures,
the plan a job stores, Ark's job parameters."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

import numpy as np
import orjson
import pandas as pd
import pytest

import batchmagic as bm
from batchmagic import _kinds
from batchmagic._inputs import make_plan
from batchmagic.batchapi import _ark, _files, _results, _sign, _store

# --------------------------------------------------------------------------- input files


def test_custom_id_is_safe_and_short():
    plan = make_plan(["a", "b", "a"], None, kind="chat", endpoint="http://x/v1/chat/completions",
                     model="m", params=None, system=None, dedupe=True)
    ids = [_files.custom_id_for(item.key) for item in plan.items]
    assert len(ids) == 2 == len(set(ids))  # identical requests share one line
    apart = make_plan(["a", "b", "a"], None, kind="chat",
                      endpoint="http://x/v1/chat/completions", model="m", params=None,
                      system=None)  # not deterministic: each row its own draw, its own line
    ids = [_files.custom_id_for(item.key) for item in apart.items]
    assert len(ids) == 3 == len(set(ids))
    assert all(_files.CUSTOM_ID_RE.match(cid) and len(cid) <= 64 for cid in ids)


def test_request_lines_in_both_formats():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi\u2028there"}]}
    line = orjson.loads(_files.request_line("bm-1", body, "/v1/chat/completions", "openai"))
    assert line == {"custom_id": "bm-1", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}
    ark = orjson.loads(_files.request_line("bm-1", body, "/v1/chat/completions", "ark"))
    assert ark == {"custom_id": "bm-1", "body": {"messages": body["messages"]}}  # model: the job's


def lines(*objs) -> bytes:
    return b"".join((o if isinstance(o, bytes) else orjson.dumps(o)) + b"\n" for o in objs)


def good(cid="a", model="m"):
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": []}}


def test_validation_accepts_a_good_file_and_u2028():
    data = lines(good("a"), good("b")) + orjson.dumps(
        {**good("c"), "body": {"model": "m", "messages": [{"role": "user", "content": "x\u2028y"}]}})
    assert len(_files.validate_lines(data, "openai", url="/v1/chat/completions")) == 3


@pytest.mark.parametrize("bad, why", [
    (lines(good("a"), b"{not json"), "line 2: not JSON"),
    (lines(good("a"), [1, 2]), "not a JSON object"),
    (lines({**good("a"), "custom_id": ""}), "no custom_id"),
    (lines(good("a"), good("a")), "repeats an earlier line"),
    (lines(good("a b")), "must be 1-64 characters"),
    (lines(good("x" * 65)), "must be 1-64 characters"),
    (lines({**good("a"), "body": "text"}), "body must be a JSON object"),
    (lines(good("a", "m1"), good("b", "m2")), "one model"),
    (lines({**good("a"), "url": "/v1/embeddings"}), "url must be"),
    (lines({**good("a"), "method": "GET"}), "method must be POST"),
    (b"\n\n", "no requests"),
])
def test_validation_refuses_bad_files(bad, why):
    with pytest.raises(bm.ConfigError, match="not valid") as info:
        _files.validate_lines(bad, "openai", url="/v1/chat/completions")
    assert why in str(info.value)


def test_validation_lists_a_bounded_number_of_problems():
    data = lines(*[{"custom_id": "", "body": {}} for _ in range(50)])
    with pytest.raises(bm.ConfigError) as info:
        _files.validate_lines(data, "ark")
    assert "and 45 more" in str(info.value) and len(str(info.value)) < 600


def test_sharding_by_requests_and_bytes():
    s = _files.shard_lines([10] * 7, max_requests=3, max_bytes=1000)
    assert s.shards == [[0, 1, 2], [3, 4, 5], [6]] and s.too_large == []
    s = _files.shard_lines([40, 40, 40, 200, 10], max_requests=100, max_bytes=100)
    assert s.shards == [[0, 1], [2, 4]] and s.too_large == [3]


# --------------------------------------------------------------------------- result lines


def chat_body(text="hi"):
    return {"id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}}


def outcome(line, kind="chat", dialect="openai"):
    return _results.parse_line(line, kind, dialect, "p")


def test_a_2xx_line_is_parsed_like_an_online_answer():
    out = outcome({"custom_id": "a", "error": None,
                   "response": {"status_code": 200, "body": chat_body("yes")}})
    assert isinstance(out, _kinds.Parsed) and out.output == "yes" and out.input_tokens == 3


def test_a_400_with_error_null_is_a_row_error():
    body = {"error": {"message": "bad", "type": "invalid_request_error", "code": None}}
    out = outcome({"custom_id": "a", "error": None,
                   "response": {"status_code": 400, "body": body}})
    assert isinstance(out, bm.BadRequestError) and out.status == 400 and "bad" in str(out)


def test_error_objects_5xx_context_and_unprocessed():
    out = outcome({"custom_id": "a", "response": None,
                   "error": {"code": "server_error", "message": "boom"}})
    assert isinstance(out, bm.ServerError)
    out = outcome({"custom_id": "a", "response": {"status_code": 400, "body": {"error": {
        "message": "This model's maximum context length is 8 tokens",
        "code": "context_length_exceeded"}}}, "error": None})
    assert isinstance(out, bm.ContextLengthError)
    out = outcome({"custom_id": "a", "response": None,
                   "error": {"code": "batch_expired", "message": "not run"}})
    assert isinstance(out, _results.Unprocessed)


def test_an_error_envelope_inside_a_200_and_bodies_as_strings():
    out = outcome({"custom_id": "a", "response": {"status_code": 200, "body": {
        "error_code": 336501, "error_msg": "Rate limit reached for RPM"}}}, dialect="qianfan")
    assert isinstance(out, bm.RateLimitError)
    out = outcome({"custom_id": "a", "response": {
        "status_code": 200, "body": orjson.dumps(chat_body("s")).decode()}})
    assert out.output == "s"
    out = outcome({"custom_id": "a", "response": {"status_code": 200, "body": {"nope": 1}}})
    assert isinstance(out, bm.ResponseError) and out.possibly_billed


def test_embedding_lines():
    vec = [0.5, 0.25]
    out = outcome({"custom_id": "a", "response": {"status_code": 200, "body": {
        "data": [{"index": 0, "embedding": vec}], "usage": {"prompt_tokens": 2}}}},
        kind="embedding")
    assert np.allclose(out.output, vec) and out.input_tokens == 2


def test_files_join_by_custom_id_and_a_success_wins():
    report = _results.FileReport({})
    ok = {"custom_id": "a", "error": None, "response": {"status_code": 200, "body": chat_body()}}
    fail = {"custom_id": "a", "response": None, "error": {"code": "server_error", "message": "x"}}
    other = {**ok, "custom_id": "zzz"}
    data = lines(fail, b"garbage", {"no": "id"}, other)
    _results.read_file(data, {"a"}, "chat", "openai", "p", report)
    _results.read_file(lines(ok), {"a"}, "chat", "openai", "p", report)
    _results.read_file(lines(fail), {"a"}, "chat", "openai", "p", report)
    assert isinstance(report.outcomes["a"], _kinds.Parsed)
    assert report.unreadable == 2 and report.unknown == 1


# --------------------------------------------------------------------------- signatures


def test_canonical_request_matches_the_published_example():
    # Volcengine / BytePlus "signature example": GET ListUsers, empty body
    empty = hashlib.sha256(b"").hexdigest()
    creq = _sign.canonical_request(
        "GET", "/", {"Action": "ListUsers", "Version": "2018-01-01", "Limit": "10", "Offset": "0"},
        {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
         "Host": "iam.byteplusapi.com", "X-Content-Sha256": empty, "X-Date": "20201230T081805Z"},
        ["content-type", "host", "x-content-sha256", "x-date"], empty)
    assert creq == (
        "GET\n/\nAction=ListUsers&Limit=10&Offset=0&Version=2018-01-01\n"
        "content-type:application/x-www-form-urlencoded; charset=utf-8\n"
        "host:iam.byteplusapi.com\n"
        f"x-content-sha256:{empty}\nx-date:20201230T081805Z\n\n"
        f"content-type;host;x-content-sha256;x-date\n{empty}")


def _independent_signature(sk, algorithm, date, region, service, creq):
    """The documented steps, written out again without the module under test."""
    def h(key, msg):
        return hmac.new(key, msg.encode(), hashlib.sha256).digest()
    k = h(h(h(h(sk.encode(), date[:8]), region), service), "request")
    sts = "\n".join([algorithm, date, f"{date[:8]}/{region}/{service}/request",
                     hashlib.sha256(creq.encode()).hexdigest()])
    return hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize("tos", [False, True])
def test_sign_matches_the_documented_algorithm(tos):
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    body = b'{"Id": "bi-1"}'
    headers = _sign.sign(access_key="AK", secret_key="SK-secret", method="POST",
                         host="ark.cn-beijing.volcengineapi.com", path="/",
                         params={"Action": "GetBatchInferenceJob", "Version": "2024-01-01"},
                         body=body, region="cn-beijing", service="tos" if tos else "ark", tos=tos,
                         content_type="application/json", now=now)
    algorithm = "TOS4-HMAC-SHA256" if tos else "HMAC-SHA256"
    prefix = "x-tos-" if tos else "x-"
    assert headers[f"{prefix}date"] == "20260102T030405Z"
    assert headers[f"{prefix}content-sha256"] == hashlib.sha256(body).hexdigest()
    auth = _sign.parse_authorization(headers["Authorization"])
    assert auth["access_key"] == "AK" and auth["date"] == "20260102"
    assert auth["region"] == "cn-beijing" and auth["algorithm"] == algorithm
    signed = auth["signed"].split(";")
    assert signed == sorted(signed) and {"host", f"{prefix}date"} <= set(signed)
    lower = {k.lower(): v for k, v in headers.items()}
    creq = "\n".join(["POST", "/", "Action=GetBatchInferenceJob&Version=2024-01-01",
                      "".join(f"{n}:{lower[n]}\n" for n in signed), ";".join(signed),
                      hashlib.sha256(body).hexdigest()])
    expected = _independent_signature("SK-secret", algorithm, "20260102T030405Z", "cn-beijing",
                                      "tos" if tos else "ark", creq)
    assert auth["signature"] == expected
    assert "SK-secret" not in repr(headers)


# --------------------------------------------------------------------------- Ark parameters


def test_ark_windows_and_model_references():
    assert _ark.ark_window("24h") == "1d" and _ark.ark_window("336h") == "14d"
    assert _ark.ark_window("3d") == "3d"
    for bad in ("25h", "0d", "29d", "soon"):
        with pytest.raises(bm.ConfigError):
            _ark.ark_window(bad)
    assert _ark.model_reference("doubao-seed-1-6-250615", {}) == {
        "FoundationModel": {"Name": "doubao-seed-1-6", "ModelVersion": "250615"}}
    assert _ark.model_reference("doubao-pro-32k", {"model_version": "240615"}) == {
        "FoundationModel": {"Name": "doubao-pro-32k", "ModelVersion": "240615"}}
    assert _ark.model_reference(None, {"custom_model_id": "cm-1"}) == {"CustomModelId": "cm-1"}
    with pytest.raises(bm.ConfigError, match="model_version"):
        _ark.model_reference("doubao-pro", {})


def test_ark_needs_a_bucket_and_a_key_pair(monkeypatch):
    for env in (*_ark.AK_ENV, *_ark.SK_ENV):
        monkeypatch.delenv(env, raising=False)
    with pytest.raises(bm.ConfigError, match="Access Key pair"):
        bm.estimate(["x"], model="doubao-pro-240615", provider="ark", mode="batch-api",
                    batch_options={"bucket": "b"})
    monkeypatch.setenv("VOLC_ACCESSKEY", "AK")
    monkeypatch.setenv("VOLC_SECRETKEY", "SK")
    with pytest.raises(bm.ConfigError, match="bucket"):
        bm.estimate(["x"], model="doubao-pro-240615", provider="ark", mode="batch-api")


# --------------------------------------------------------------------------- mode checks


def test_mode_and_option_checks():
    kw = dict(model="m", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(bm.ConfigError, match="mode must be"):
        bm.estimate(["x"], mode="overnight", **kw)
    with pytest.raises(bm.ConfigError, match="kind chat, completion or embedding"):
        bm.estimate(["x"], kind="image", mode="batch-api", **kw)
    with pytest.raises(bm.ConfigError, match="cache=False"):
        bm.estimate(["x"], mode="batch-api", cache=False, **kw)
    with pytest.raises(bm.ConfigError, match="unknown batch_options"):
        bm.estimate(["x"], mode="batch-api", batch_options={"colour": 1}, **kw)
    with pytest.raises(bm.ConfigError, match="applies to mode='batch-api'"):
        bm.estimate(["x"], batch_options={"poll_interval": 1}, **kw)
    with pytest.raises(bm.ConfigError, match="no Batch API"):
        bm.estimate(["x"], model="deepseek-chat", provider="deepseek", api_key="k",
                    mode="batch-api")
    with pytest.raises(bm.ConfigError, match="completion_window"):
        bm.estimate(["x"], model="gpt-4o-mini", provider="openai", api_key="k",
                    mode="batch-api", batch_options={"completion_window": "48h"})
    with pytest.raises(bm.ConfigError, match="Batch Chat endpoint"):
        bm.estimate(["x"], model="gpt-4o-mini", provider="openai", api_key="k",
                    mode="batch-chat")


def test_estimate_in_batch_mode_sends_nothing_and_records_no_job():
    est = bm.estimate(["a", "b"], model="m", base_url="http://127.0.0.1:9/v1", mode="batch-api",
                      prices={"input": 1.0, "output": 2.0, "batch_share": 0.5},
                      params={"max_tokens": 10})
    assert est.cost_batch_api[1] == pytest.approx(est.cost_online[1] * 0.5)
    assert bm.jobs() == []


# --------------------------------------------------------------------------- the stored plan


def test_a_plan_survives_the_journal():
    df = pd.DataFrame({"text": ["a", "b", None, "a"], "n": [1, 2, 3, 4],
                       0: [1.5, 2.5, 3.5, 4.5], "when": pd.to_datetime(["2026-01-01"] * 4)},
                      index=pd.Index(["w", "x", "y", "z"], name="rid"))
    plan = make_plan(df, "Say {text} {n}", kind="chat", endpoint="http://x/v1/chat/completions",
                     model="m", params={"max_tokens": 5}, system="be brief")
    back = _store.load_plan(_store.dump_plan(plan))
    assert [i.key for i in back.items] == [i.key for i in plan.items]
    assert [i.body for i in back.items] == [i.body for i in plan.items]
    assert list(back.row_item) == list(plan.row_item) and back.skipped == plan.skipped
    assert list(back.index) == list(plan.index) and back.index.name == "rid"
    assert list(back.frame.columns) == list(df.columns)
    assert back.frame.dtypes.tolist() == df.dtypes.tolist()
    assert isinstance(back.row_errors[2], bm.InputError) and back.row_errors[2].row == "y"
    messages = make_plan([[{"role": "user", "content": "hi"}]], None, kind="chat",
                         endpoint="e", model="m", params=None, system=None)
    again = _store.load_plan(_store.dump_plan(messages))
    assert again.frame["input"].iloc[0] == [{"role": "user", "content": "hi"}]
    assert isinstance(again.index, pd.RangeIndex)
