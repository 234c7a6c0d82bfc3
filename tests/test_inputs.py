"""Inputs and templates: every input shape, missing values, de-duplication, pre-flight errors."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import Server, chat_answer, echo_chat, run, user_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import batchmagic as bm


def _never_called(request, body):  # pragma: no cover - the point is that it is not called
    raise AssertionError("no request may be sent")


# -- DataFrame + template ---------------------------------------------------------------------------


def test_frame_template_keeps_order_and_index(server):
    df_in = pd.DataFrame({"name": ["ann", "bob", "cy"], "n": [1, 2, 3]}, index=["x", "y", "z"])
    df = run(df_in, "Hi {name} #{n}", server=server)
    assert list(df.index) == ["x", "y", "z"]
    assert list(df["name"]) == ["ann", "bob", "cy"]
    assert list(df["output"]) == ["echo:Hi ann #1", "echo:Hi bob #2", "echo:Hi cy #3"]
    assert df["error"].isna().all()
    assert list(df.columns[:2]) == ["name", "n"]
    for col in bm.RESULT_COLUMNS:
        assert col in df.columns
    assert server.count == 3
    assert {user_text(b) for b in server.bodies} == {"Hi ann #1", "Hi bob #2", "Hi cy #3"}
    assert all(b["model"] == "m" for b in server.bodies)


def test_non_default_integer_index_is_kept(server):
    df_in = pd.DataFrame({"t": ["a", "b", "c"]}, index=[30, 10, 20])
    df = run(df_in, "{t}", server=server)
    assert list(df.index) == [30, 10, 20]
    assert list(df["output"]) == ["echo:a", "echo:b", "echo:c"]


def test_duplicate_rows_are_sent_once_and_fanned_out(server):
    """When the answer is deterministic (temperature 0) identical requests are sent once."""
    df_in = pd.DataFrame({"t": ["a", "b", "a", "a", "b", "c"]}, index=list("pqrstu"))
    df = run(df_in, "say {t}", server=server, params={"temperature": 0})
    assert server.count == 3
    assert sorted(user_text(b) for b in server.bodies) == ["say a", "say b", "say c"]
    assert list(df["output"]) == ["echo:say " + t for t in "abaabc"]
    assert list(df.index) == list("pqrstu")
    attrs = df.attrs["batchmagic"]
    assert attrs["rows"] == 6
    assert attrs["requests"] == 3


def test_duplicate_rows_that_fail_each_name_their_own_row():
    s = Server(lambda req, body: httpx.Response(400, json={"error": {"message": "nope"}}))
    df = run(pd.DataFrame({"t": ["a", "a"]}, index=["r1", "r2"]), "{t}", server=s, dedupe=True)
    assert s.count == 1
    assert [e.row for e in df["error"]] == ["r1", "r2"]
    assert all(isinstance(e, bm.BadRequestError) for e in df["error"])


def test_missing_column_is_a_template_error_before_any_request():
    s = Server(_never_called)
    with pytest.raises(bm.TemplateError) as info:
        run(pd.DataFrame({"title": ["a"], "body": ["b"]}), "{title}: {text}", server=s)
    msg = str(info.value)
    assert "'text'" in msg
    assert "'title'" in msg and "'body'" in msg  # it lists the columns the frame has
    assert s.count == 0


def test_missing_images_column_is_a_template_error():
    s = Server(_never_called)
    with pytest.raises(bm.TemplateError):
        run(pd.DataFrame({"t": ["a"]}), "{t}", images="pic", server=s)
    assert s.count == 0


def test_malformed_template_is_a_template_error():
    s = Server(_never_called)
    with pytest.raises(bm.TemplateError):
        run(pd.DataFrame({"t": ["a"]}), "{t", server=s)
    with pytest.raises(bm.TemplateError):
        run(["a"], "oops }", server=s)
    assert s.count == 0


def test_multi_column_frame_needs_a_template():
    s = Server(_never_called)
    with pytest.raises(bm.TemplateError):
        run(pd.DataFrame({"a": ["x"], "b": ["y"]}), server=s)


def test_single_column_frame_without_template_uses_the_column(server):
    df = run(pd.DataFrame({"text": ["a", "b"]}), server=server)
    assert list(df["output"]) == ["echo:a", "echo:b"]


def test_single_unnamed_column_frame_without_template(server):
    """``pd.DataFrame(list)`` names its one column 0 (an int): it must still be found."""
    df = run(pd.DataFrame(["a", "b"]), server=server)
    assert list(df["output"]) == ["echo:a", "echo:b"]
    df = run(pd.DataFrame(["c"]), "T: {0}", server=server)
    assert list(df["output"]) == ["echo:T: c"]


MISSING = [None, np.nan, pd.NA]


def _with_missing() -> pd.DataFrame:
    return pd.DataFrame({"a": ["x", None, np.nan, pd.NA], "b": [1, 2, 3, 4]}, index=list("wxyz"))


def test_missing_values_are_row_input_errors_by_default(server):
    df = run(_with_missing(), "{a}-{b}", server=server)
    assert server.count == 1
    assert df.loc["w", "output"] == "echo:x-1"
    assert df.loc["w", "error"] is None
    for label in "xyz":
        err = df.loc[label, "error"]
        assert isinstance(err, bm.InputError)
        assert err.row == label
        assert "'a'" in str(err)
        assert "on_missing" in str(err)
        assert df.loc[label, "output"] is None
        assert df.loc[label, "attempts"] == 0
    assert df.attrs["batchmagic"]["failed"] == 3


def test_missing_values_skip(server):
    df = run(_with_missing(), "{a}-{b}", server=server, on_missing="skip")
    assert server.count == 1
    assert user_text(server.bodies[0]) == "x-1"
    for label in "xyz":
        assert df.loc[label, "finish_reason"] == "skipped"
        assert df.loc[label, "error"] is None
        assert df.loc[label, "output"] is None
    assert df.loc["w", "finish_reason"] == "stop"
    assert df.attrs["batchmagic"]["skipped"] == 3


def test_missing_values_empty(server):
    df = run(_with_missing(), "[{a}]-{b}", server=server, on_missing="empty")
    assert sorted(user_text(b) for b in server.bodies) == ["[]-2", "[]-3", "[]-4", "[x]-1"]
    assert list(df["output"]) == ["echo:[x]-1", "echo:[]-2", "echo:[]-3", "echo:[]-4"]
    assert df["error"].isna().all()


@pytest.mark.parametrize("missing", MISSING)
def test_missing_values_in_a_list_of_texts(server, missing):
    df = run(["a", missing, "c"], server=server)
    assert isinstance(df["error"][1], bm.InputError)
    assert list(df["output"])[::2] == ["echo:a", "echo:c"]
    assert server.count == 2


def test_bad_on_missing_is_a_config_error():
    with pytest.raises(bm.ConfigError):
        run(["a"], server=Server(_never_called), on_missing="drop")


def test_braces_in_values_are_sent_verbatim(server):
    values = ["{other}", "{{x}}", "}{", "{0}", "{t}", "%s {}"]
    df = run(pd.DataFrame({"t": values, "other": ["O"] * len(values)}), "<{t}>", server=server)
    assert sorted(user_text(b) for b in server.bodies) == sorted(f"<{v}>" for v in values)
    assert list(df["output"]) == [f"echo:<{v}>" for v in values]


def test_literal_braces_in_template(server):
    df = run(["v"], 'JSON: {{"k": "{}"}}', server=server)
    assert user_text(server.bodies[0]) == 'JSON: {"k": "v"}'
    assert df["output"][0] == 'echo:JSON: {"k": "v"}'


# -- other input shapes ------------------------------------------------------------------------------


def test_series_keeps_its_name_and_index(server):
    s = pd.Series(["x", "y"], index=[10, 20], name="col")
    df = run(s, "T: {col}", server=server)
    assert list(df.columns[:1]) == ["col"]
    assert list(df.index) == [10, 20]
    assert list(df["col"]) == ["x", "y"]
    assert list(df["output"]) == ["echo:T: x", "echo:T: y"]


def test_unnamed_series_becomes_input_column(server):
    df = run(pd.Series(["x"]), server=server)
    assert "input" in df.columns
    assert df["output"][0] == "echo:x"


def test_list_of_strings_without_template(server):
    df = run(["one", "two", "three"], server=server)
    assert list(df["input"]) == ["one", "two", "three"]
    assert list(df.index) == [0, 1, 2]
    assert list(df["output"]) == ["echo:one", "echo:two", "echo:three"]


def test_bare_string_is_one_row(server):
    df = run("hello", "Say {}", server=server)
    assert len(df) == 1
    assert df["input"][0] == "hello"
    assert df["output"][0] == "echo:Say hello"
    assert server.count == 1


@pytest.mark.parametrize("template", ["<{}>", "<{text}>", "<{anything_at_all}>", "<{x!s}>"])
def test_any_single_field_fills_texts(server, template):
    df = run(["a", "b"], template, server=server)
    assert list(df["output"]) == ["echo:<a>", "echo:<b>"]


def test_two_fields_with_a_list_is_a_template_error():
    s = Server(_never_called)
    with pytest.raises(bm.TemplateError) as info:
        run(["a", "b"], "{x} and {y}", server=s)
    assert "DataFrame" in str(info.value)
    with pytest.raises(bm.TemplateError):
        run(["a"], "no field here", server=s)
    assert s.count == 0


def test_list_of_message_lists_sent_as_is_with_system_prepended(server):
    conv = [
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
         {"role": "user", "content": "q2"}],
        [{"role": "system", "content": "own"}, {"role": "user", "content": "kept"}],
    ]
    df = run(conv, system="SYS", server=server)
    assert list(df["output"]) == ["echo:hi", "echo:q2", "echo:kept"]
    by_last = {user_text(b): b["messages"] for b in server.bodies}
    assert by_last["hi"] == [{"role": "system", "content": "SYS"}, conv[0][0]]
    assert by_last["q2"] == [{"role": "system", "content": "SYS"}, *conv[1]]
    assert by_last["kept"] == conv[2]  # it already has a system message
    assert conv[0] == [{"role": "user", "content": "hi"}]  # the caller's list is not mutated


def test_message_lists_refuse_a_template():
    with pytest.raises(bm.TemplateError):
        run([[{"role": "user", "content": "hi"}]], "{x}", server=Server(_never_called))


def test_bad_message_list_is_a_row_error(server):
    df = run([[{"role": "user", "content": "ok"}], [{"content": "no role"}]], server=server)
    assert df["output"][0] == "echo:ok"
    assert isinstance(df["error"][1], bm.InputError)
    assert server.count == 1


def test_list_of_request_bodies(server):
    bodies = [
        {"messages": [{"role": "user", "content": "a"}], "temperature": 0.5},
        {"messages": [{"role": "user", "content": "b"}], "model": "other"},
    ]
    df = run(bodies, server=server, params={"temperature": 1.0, "max_tokens": 5})
    assert list(df["output"]) == ["echo:a", "echo:b"]
    sent = {user_text(b): b for b in server.bodies}
    assert sent["a"]["model"] == "m"  # added where absent
    assert sent["a"]["temperature"] == 0.5  # params do not override the body
    assert sent["a"]["max_tokens"] == 5  # but fill what is missing
    assert sent["b"]["model"] == "other"
    assert sent["b"]["temperature"] == 1.0
    assert "model" not in bodies[0]  # the caller's dicts are not mutated


def test_request_body_without_messages_is_a_row_error(server):
    df = run([{"messages": [{"role": "user", "content": "a"}]}, {"prompt": "x"}], server=server)
    assert df["output"][0] == "echo:a"
    assert isinstance(df["error"][1], bm.InputError)


def test_mixed_list_is_a_config_error():
    s = Server(_never_called)
    with pytest.raises(bm.ConfigError):
        run(["text", {"messages": []}], server=s)
    with pytest.raises(bm.ConfigError):
        run(["text", [{"role": "user", "content": "x"}]], server=s)
    assert s.count == 0


def test_dict_and_none_inputs_are_config_errors():
    s = Server(_never_called)
    with pytest.raises(bm.ConfigError):
        run({"a": 1}, server=s)
    with pytest.raises(bm.ConfigError):
        run(None, server=s)


@pytest.mark.parametrize("inputs,prompt", [
    ([], None),
    ([], "x {}"),
    (pd.DataFrame({"text": pd.Series([], dtype=object)}), "x {text}"),
    (pd.DataFrame(columns=["a", "b"]), "{a}"),
    (pd.Series([], dtype=object, name="s"), None),
])
def test_empty_inputs_give_an_empty_frame_with_result_columns(inputs, prompt):
    s = Server(_never_called)
    df = run(inputs, prompt, server=s)
    assert len(df) == 0
    for col in bm.RESULT_COLUMNS:
        assert col in df.columns
    assert s.count == 0


@pytest.mark.parametrize("col", ["output", "error", "latency", "reasoning"])
def test_column_clash(col):
    s = Server(_never_called)
    with pytest.raises(bm.ColumnClashError) as info:
        run(pd.DataFrame({"text": ["a"], col: [1]}), "{text}", server=s)
    msg = str(info.value)
    assert f"'{col}'" in msg
    assert "rename" in msg and f"{col}_in" in msg
    assert s.count == 0


def test_series_named_like_a_result_column_clashes():
    with pytest.raises(bm.ColumnClashError):
        run(pd.Series(["a"], name="output"), server=Server(_never_called))


def test_lone_surrogate_is_a_row_error(server):
    df = run(["ok", "bad\ud800x", "fine"], server=server)
    assert server.count == 2
    assert list(df["output"]) == ["echo:ok", None, "echo:fine"]
    err = df["error"][1]
    assert isinstance(err, bm.InputError)
    assert "surrogate" in str(err)
    assert err.row == 1


def test_lone_surrogate_in_a_frame_row(server):
    # object dtype: pandas' pyarrow-backed strings cannot hold a lone surrogate at all
    texts = pd.Series(["a", "\udfff", "c"], index=["p", "q", "r"], dtype=object)
    df = run(pd.DataFrame({"t": texts}), "{t}", server=server)
    assert isinstance(df.loc["q", "error"], bm.InputError)
    assert df.loc["p", "output"] == "echo:a" and df.loc["r", "output"] == "echo:c"


# -- images for vision chat ----------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40


def _image_parts(body):
    content = user_text(body)
    assert isinstance(content, list)
    return content[0]["text"], [p["image_url"]["url"] for p in content[1:]]


def test_image_column(tmp_path):
    path = tmp_path / "cat.png"
    path.write_bytes(PNG)
    s = Server(lambda req, body: httpx.Response(200, json=chat_answer("seen")))
    frame = pd.DataFrame({
        "q": ["local", "remote", "loopback", "metadata", "two"],
        "img": [str(path), "https://example.com/a.png", "http://127.0.0.1/x.png",
                "http://169.254.169.254/", [str(path), "http://example.org/b.jpg"]],
    })
    df = run(frame, "describe {q}", images="img", server=s)
    assert s.count == 3
    sent = dict(_image_parts(b) for b in s.bodies)
    assert sent["describe local"] == ["data:image/png;base64," + base64.b64encode(PNG).decode()]
    assert sent["describe remote"] == ["https://example.com/a.png"]
    assert len(sent["describe two"]) == 2 and sent["describe two"][1] == "http://example.org/b.jpg"
    assert list(df["output"]) == ["seen", "seen", None, None, "seen"]
    for pos in (2, 3):
        err = df["error"][pos]
        assert isinstance(err, bm.InputError)
        assert "allow_private_urls" in str(err)


def test_image_private_urls_allowed_when_asked():
    s = Server(lambda req, body: httpx.Response(200, json=chat_answer("seen")))
    frame = pd.DataFrame({"q": ["a", "b"], "img": ["http://127.0.0.1/x.png", "http://169.254.169.254/"]})
    df = run(frame, "{q}", images="img", server=s, allow_private_urls=True)
    assert s.count == 2
    assert df["error"].isna().all()
    assert sorted(u for b in s.bodies for u in _image_parts(b)[1]) == [
        "http://127.0.0.1/x.png", "http://169.254.169.254/"]


def test_image_missing_file_is_a_row_error(tmp_path):
    s = Server(lambda req, body: httpx.Response(200, json=chat_answer("seen")))
    frame = pd.DataFrame({"q": ["a"], "img": [str(tmp_path / "nope.png")]})
    df = run(frame, "{q}", images="img", server=s)
    assert isinstance(df["error"][0], bm.InputError)
    assert s.count == 0


def test_images_need_a_frame():
    with pytest.raises(bm.ConfigError):
        run(["a"], images="img", server=Server(_never_called))


# -- params ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["model", "messages", "prompt", "input"])
def test_reserved_params_are_config_errors(key):
    s = Server(_never_called)
    with pytest.raises(bm.ConfigError) as info:
        run(["a"], server=s, params={key: "x"})
    assert repr(key) in str(info.value)
    assert s.count == 0


def test_params_are_sent(server):
    run(["a"], server=server, params={"temperature": 0, "max_tokens": 7, "stop": ["\n"]})
    body = server.bodies[0]
    assert body["temperature"] == 0 and body["max_tokens"] == 7 and body["stop"] == ["\n"]


def test_model_is_required():
    with pytest.raises(bm.ConfigError):
        run(["a"], server=Server(_never_called), model=None)


# -- property: text round-trips exactly and rows stay in order ---------------------------------------------

_PIECE = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6),
    st.sampled_from(["{", "}", "{x}", "{v}", "{{", "\u2028", "\u2029", "\u200f", "\u202e",
                     "שלום", "مرحبا", "😀", "👩\u200d👩\u200d👧", "\x00", "\n", "\r\n", "\t",
                     '"', "\\", " "]),
)
_TEXT = st.lists(_PIECE, max_size=8).map("".join)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(_TEXT, min_size=1, max_size=8))
def test_property_text_round_trips_and_order_is_kept(values):
    s = Server(echo_chat)
    template = "Q[{v}]"
    df = run(pd.DataFrame({"v": values}), template, server=s, cache=False, dedupe=True)
    expected = [f"Q[{v}]" for v in values]
    assert sorted(user_text(b) for b in s.bodies) == sorted(set(expected))
    assert s.count == len(set(expected))
    assert list(df["v"]) == values
    assert list(df["output"]) == ["echo:" + e for e in expected]
    assert df["error"].isna().all()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(_TEXT, min_size=1, max_size=6))
def test_property_list_of_texts_round_trips(values):
    s = Server(echo_chat)
    df = run(values, "» {} «", server=s, cache=False, dedupe=True)
    expected = [f"» {v} «" for v in values]
    assert sorted(user_text(b) for b in s.bodies) == sorted(set(expected))
    assert list(df["output"]) == ["echo:" + e for e in expected]


def test_queued_requests_are_stored_compactly():
    """The bytes of queued requests are sized exactly (orjson's own buffers are ~4 KB each), and
    no body dict per row stays beside them (the first body is kept, for showing)."""
    import tracemalloc

    from batchmagic import _api, _run

    texts = [f"question {i}" for i in range(5_000)]
    opts = dict(provider="simulator", base_url="http://127.0.0.1:9/v1", model="m",
                progress=False, cache=False)
    tracemalloc.start()
    try:
        run = _api._run_for(texts, "Answer: {}", opts)
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(run.units) == 5_000
    assert all(len(u.body) < 200 for u in run.units)
    assert kept < 5_000 * 1_000, kept  # was over 4 KB per queued request
    # one text in a shared body: the rows are planned as columns, no body dict per row at all
    assert run.plan.table is not None and run.plan.first_body() is not None
    _run._recent.remove(run)


@pytest.mark.parametrize(("kind", "n", "per_row"), [("embedding", 50_000, 350),
                                                     ("chat", 20_000, 650)])
def test_a_large_input_plans_in_little_memory_per_row(kind, n, per_row):
    """The memory a planned run keeps per row, input excluded (traced, so the machine's load
    does not change it): keys, bytes and counts as columns, no object per row but the queued
    units (one per chat request). Rows planned one by one kept about 505 B (embeddings) and
    790 B (chat); as columns about 250 B and 545 B."""
    import tracemalloc

    from batchmagic import _api, _run

    texts = [f"row {i} of a large input" for i in range(n)]
    opts = dict(provider="simulator", base_url="http://127.0.0.1:9/v1", model="m", kind=kind,
                progress=False, cache=False)
    tracemalloc.start()
    try:
        run = _api._run_for(texts, None, opts)
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert run.plan.table is not None and run.plan.n_items == n
    assert kept < n * per_row, kept / n
    _run._recent.remove(run)


# -- tables from other libraries, and inputs with no clear rows --------------------------------------------


def test_polars_frame_is_read_as_a_table_of_rows(server):
    pl = pytest.importorskip("polars")
    df_in = pl.DataFrame({"t": ["a", "b", "c"], "n": [1, None, 3]})
    df = run(df_in, "{t}#{n}", server=server)
    assert list(df.index) == [0, 1, 2]
    assert list(df["t"]) == ["a", "b", "c"]
    # ints stay ints beside a null (pandas alone would make them 1.0 and 3.0)
    assert list(df["output"][[0, 2]]) == ["echo:a#1", "echo:c#3"]
    err = df["error"][1]
    assert isinstance(err, bm.InputError) and "'n'" in str(err)
    assert server.count == 2


def test_polars_series_is_a_list_of_texts(server):
    pl = pytest.importorskip("polars")
    df = run(pl.Series("q", ["x", "y"]), "Q: {q}", server=server)
    assert list(df["q"]) == ["x", "y"]
    assert list(df["output"]) == ["echo:Q: x", "echo:Q: y"]
    df = run(pl.Series(["z"]), server=server)  # polars' default name is ""
    assert list(df["input"]) == ["z"]


def test_polars_lazy_frame_is_refused_until_collected():
    pl = pytest.importorskip("polars")
    with pytest.raises(bm.ConfigError, match=r"collect\(\)"):
        run(pl.LazyFrame({"t": ["a"]}), "{t}", server=Server(_never_called))


def test_pyarrow_table_and_record_batch_are_tables(server):
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"t": ["a", "b"], "n": [1, 2]})
    for value in (table, table.to_batches()[0]):
        df = run(value, "{t}-{n}", server=server)
        assert list(df.index) == [0, 1]
        assert list(df["output"]) == ["echo:a-1", "echo:b-2"]
    df = run(pa.chunked_array([["p"], ["q"]]), "<{}>", server=server)
    assert list(df["output"]) == ["echo:<p>", "echo:<q>"]


def test_pyarrow_table_written_from_pandas_keeps_its_index(server):
    pa = pytest.importorskip("pyarrow")
    table = pa.Table.from_pandas(pd.DataFrame({"t": ["a", "b"]}, index=["r1", "r2"]))
    df = run(table, "{t}", server=server)
    assert list(df.index) == ["r1", "r2"]
    assert list(df["output"]) == ["echo:a", "echo:b"]


def test_pyarrow_table_with_duplicate_columns_is_refused():
    pa = pytest.importorskip("pyarrow")
    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["t", "t"])
    with pytest.raises(bm.ConfigError, match="duplicate"):
        run(table, "{t}", server=Server(_never_called))


@pytest.mark.parametrize("data", [b"hello", bytearray(b"hello"), memoryview(b"hello"),
                                  [b"hello", b"world"], np.array([b"a", b"b"])])
def test_bytes_are_refused_with_a_hint_to_decode(data):
    s = Server(_never_called)
    with pytest.raises(bm.ConfigError, match="decode"):
        run(data, server=s)
    assert s.count == 0


@pytest.mark.parametrize("data, message", [
    ({"a", "b"}, "no order"),
    (frozenset({"a"}), "no order"),
    (np.array([["a", "b"], ["c", "d"]]), "2-dimensional"),
    (np.array("a"), "0-dimensional"),
    ({"text": ["a", "b"]}, r"pd\.DataFrame\(d\)"),
    ({"messages": [{"role": "user", "content": "hi"}]}, r"\[body\]"),
    (42, "cannot take rows from a int"),
])
def test_inputs_without_clear_rows_are_refused(data, message):
    s = Server(_never_called)
    with pytest.raises(bm.ConfigError, match=message):
        run(data, server=s)
    assert s.count == 0


def test_one_dimensional_arrays_and_generators_are_rows_in_order(server):
    df = run(np.array(["a", "b", "c"]), "<{}>", server=server)
    assert list(df["output"]) == ["echo:<a>", "echo:<b>", "echo:<c>"]
    df = run((t for t in ["x", "y"]), server=server)
    assert list(df["output"]) == ["echo:x", "echo:y"]


# -- templates over a DataFrame: the same field rule as over texts ----------------------------------------


def test_template_without_a_field_over_a_frame_is_a_template_error():
    s = Server(_never_called)
    frame = pd.DataFrame({"text": ["good", "bad"], "id": [1, 2]})
    with pytest.raises(bm.TemplateError, match="same prompt") as info:
        run(frame, "Classify the sentiment of this review.", server=s)
    assert "{text}" in str(info.value)  # it names the columns that could fill it
    with pytest.raises(bm.TemplateError, match="same prompt"):
        run(frame[["text"]], "Classify the sentiment of this review.", server=s)
    assert s.count == 0


def test_template_without_a_field_is_fine_when_each_row_has_its_images(tmp_path):
    pic = tmp_path / "p.png"
    pic.write_bytes(PNG)
    s = Server(lambda req, body: httpx.Response(200, json=chat_answer("a cat")))
    df = run(pd.DataFrame({"img": [str(pic)]}), "Describe the image.", images="img", server=s)
    assert df["error"].isna().all() and s.count == 1


def test_empty_braces_fill_the_only_column_of_a_frame(server):
    df = run(pd.DataFrame({"review": ["a", "b"]}), "Label: {}", server=server)
    assert list(df["output"]) == ["echo:Label: a", "echo:Label: b"]


def test_empty_braces_over_several_columns_ask_for_a_name():
    with pytest.raises(bm.TemplateError) as info:
        run(pd.DataFrame({"a": ["x"], "b": ["y"]}), "Label: {}", server=Server(_never_called))
    msg = str(info.value)
    assert "2 columns" in msg and "{a}" in msg
    assert "column ''" not in msg


# -- row labels, whole request bodies, embeddings ---------------------------------------------------------


def test_row_errors_show_numpy_labels_plainly():
    frame = pd.DataFrame({"t": ["ok", None]}, index=np.array([11371, 11372], dtype=np.int64))
    df = run(frame, "{t}", server=Server(echo_chat))
    err = df["error"][11372]
    assert str(err).startswith("row 11372: "), str(err)
    assert "np.int64" not in str(err) and "np.int64" not in repr(err)
    assert str(err.for_row(np.int64(7))).startswith("row 7: ")
    assert str(bm.InputError("x", row=(np.int64(1), "a"))) == "row (1, 'a'): x"


def test_body_with_a_system_field_sends_it_as_the_leading_message(server):
    """Qianfan v1 ``body_list`` rows carry ``system`` beside ``messages``; v2 and every other
    OpenAI-compatible server want it as a system message."""
    user = {"role": "user", "content": "hi"}
    bodies = [
        {"system": "Be brief.", "messages": [user]},
        {"system": "Be brief.", "messages": [{"role": "system", "content": "Be brief."}, user]},
        {"system": "Be long.", "messages": [{"role": "system", "content": "Be brief."}, user]},
        {"messages": [user]},
    ]
    df = run(bodies, server=server, system="Default.", cache=False, dedupe=True)
    assert df["error"][:2].isna().all() and df["error"][3] is None
    assert isinstance(df["error"][2], bm.InputError) and "keep one" in str(df["error"][2])
    sent = [b["messages"] for b in server.bodies]
    assert all("system" not in b for b in server.bodies)
    assert [{"role": "system", "content": "Be brief."}, user] in sent
    assert [{"role": "system", "content": "Default."}, user] in sent
    assert server.count == 2  # rows 0 and 1 are the same request
    assert bodies[0] == {"system": "Be brief.", "messages": [user]}  # the caller's dict is kept


def _embeddings_like_a_provider(request, body):
    """Refuses a whole packed request when any input is blank, as OpenAI, SGLang and NIM do."""
    inputs = body["input"]
    if any(not text.strip() for text in inputs):
        return httpx.Response(400, json={"error": {"message": "'$.input' is invalid.",
                                                   "type": "invalid_request_error"}})
    data = [{"index": i, "embedding": [float(len(t)), 1.0]} for i, t in enumerate(inputs)]
    return httpx.Response(200, json={"data": data, "usage": {"prompt_tokens": len(inputs)}})


def test_blank_embedding_inputs_are_row_errors_and_the_rest_are_embedded():
    s = Server(_embeddings_like_a_provider)
    df = run(["alpha", "", "  \n", "be", pd.NA], server=s, kind="embedding")
    assert [type(e).__name__ if e is not None else None for e in df["error"]] == \
        [None, "InputError", "InputError", None, "InputError"]
    assert "nothing to embed" in str(df["error"][1])
    assert [list(v) for v in df["output"][[0, 3]]] == [[5.0, 1.0], [2.0, 1.0]]
    assert s.count == 1 and s.bodies[0]["input"] == ["alpha", "be"]


def test_blank_embedding_input_in_a_request_body_is_a_row_error():
    s = Server(_embeddings_like_a_provider)
    df = run([{"input": "x"}, {"input": " "}, {"input": [""]}], server=s, kind="embedding")
    assert df["error"][0] is None
    assert all(isinstance(e, bm.InputError) for e in df["error"][1:])
    assert s.count == 1


# -- numbers in params ----------------------------------------------------------------------------------


@pytest.mark.parametrize("params, name", [
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": np.float64("inf")}, "top_p"),
    ({"logit_bias": {"50256": float("-inf")}}, "logit_bias"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
])
def test_non_finite_or_bad_params_are_config_errors(params, name):
    s = Server(_never_called)
    with pytest.raises(bm.ConfigError, match=name):
        run(["a"], server=s, params=params)
    assert s.count == 0


def test_numpy_numbers_in_params_are_sent_as_plain_numbers(server):
    df = run(["a"], server=server, params={"max_tokens": np.int64(7), "temperature": np.float32(0.5),
                                            "stop": np.array(["\n"])})
    assert df["error"][0] is None
    assert server.bodies[0]["max_tokens"] == 7 and server.bodies[0]["temperature"] == 0.5
    assert server.bodies[0]["stop"] == ["\n"]
