"""The panel, the display choice and the live result frame, in-process.

State (``Progress``) stays apart from drawing: the panel only renders snapshots, sends at most two
comm messages per update, has text and HTML fallbacks, and never holds a key. The live frame is one
object of the final shape, filled in from the run's refresh timer and exactly the result at the end.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import BASE_URL, AsyncServer, chat_answer, echo_chat, user_text

import batchmagic as bm
from batchmagic import _display, _frame
from batchmagic._progress import Snapshot
from batchmagic._widget import TEXT_ON, TONES, Panel, StaticPanel, render_html, render_text
from batchmagic.simulator import SimulatorThread

SENTINEL = "sk-sentinel-4f1c9e0b7d2a"


def snap(**kw) -> Snapshot:
    # counts are rows; 90 unique requests answer the 100 rows
    base = dict(title="chat qwen-plus @ dashscope", rows=100, requests=90, done=40, ok=38,
                failed=2, requests_done=40, in_flight=8, retrying=1, retries=3, rate_limited=2, input_tokens=900,
                output_tokens=300, concurrency=8, rate_waits=1, state="running",
                started=time.monotonic() - 4,
                errors={"ServerError": 2}, first_errors=["ServerError: HTTP 503 <b>busy</b>"])
    base.update(kw)
    return Snapshot(**base)


# -- renderings ------------------------------------------------------------------------------------


def test_text_rendering_has_every_fact():
    text = render_text(snap(cost=0.0123))
    for needle in ("chat qwen-plus @ dashscope: running", "40/100 rows (40%)", "40/90 requests",
                   "req/s", "tok/s", "ETA", "ok 38", "failed 2", "retrying 1", "in flight 8",
                   "queued 41", "concurrency 8", "rate-limit waits 1", "429s 2", "retries 3",
                   "spent $0.0123", "ServerError x2: HTTP 503 <b>busy</b>"):
        assert needle in text, needle
    assert "spent" not in render_text(snap())  # spend is shown once there is some


def test_html_rendering_escapes_and_shows_the_outcome():
    html = render_html(snap())
    assert "&lt;b&gt;busy&lt;/b&gt;" in html and "<b>busy</b>" not in html
    done_ok = render_html(snap(state="done", done=100, ok=100, failed=0, errors={},
                               first_errors=[], finished=time.monotonic()))
    assert TONES["success"] in done_ok and ">done<" in done_ok
    done_bad = render_html(snap(state="done", done=100, ok=98, failed=2,
                                finished=time.monotonic()))
    assert TONES["danger"] in done_bad and "finished, 2 failed" in done_bad
    assert "in flight" not in done_bad  # live-only counts go when the run ends


def _widths(html: str) -> dict[str, float]:
    return {name: float(width) for name, width in
            re.findall(r'class="batchmagic-([a-z-]+)" style="width: ([0-9.]+)%', html)}


def test_the_bar_is_stacked_never_all_red():
    """18 of 20 rows succeeded: the bar is 90% ok and 10% failed, not a red bar."""
    done = snap(rows=20, requests=20, done=20, requests_done=20, ok=18, failed=2, in_flight=0,
                retrying=0, state="done", finished=time.monotonic())
    assert _widths(render_html(done)) == {"ok": 90.0, "failed": 10.0}
    running = snap(rows=20, requests=20, done=10, requests_done=6, ok=8, cached=4, failed=2,
                   in_flight=3, retrying=0)
    assert _widths(render_html(running)) == {"ok": 20.0, "cached": 20.0, "failed": 10.0,
                                              "in-flight": 15.0}


def test_zero_counts_are_left_out():
    done = snap(state="done", done=100, ok=100, failed=0, errors={}, first_errors=[],
                retries=0, rate_limited=0, rate_waits=0, finished=time.monotonic())
    text, html = render_text(done), render_html(done)
    assert "ok 100" in text
    for label in ("failed", "cached", "retrying", "in flight", "queued", "not started"):
        assert label not in text and f">{label}<" not in html, label


def test_every_colour_is_a_theme_variable():
    """Colours come from JupyterLab's theme (a fallback only where no theme defines them), so
    the panel follows light and dark themes; no fixed colour, no white text."""
    stopped = snap(state="cancelled", finished=time.monotonic(), failed=12, cached=3,
                   errors={"ServerError": 2, "CancelledRowError": 2, "NotSentError": 8})
    for s in (snap(), snap(state="paused"), stopped):
        html = render_html(s)
        values = re.findall(r"(?:color|background|border(?:-left)?):\s*([^;\"]+)", html)
        assert values
        for value in values:
            assert "var(--jp-" in value, value
        assert "color: white" not in html


def _theme_colours(theme: str) -> dict[str, str]:
    """The --jp-* colour variables a JupyterLab 4 theme defines, resolved."""
    css_path = (Path(sys.prefix) / "share" / "jupyter" / "lab" / "themes" / "@jupyterlab"
                / f"theme-{theme}-extension" / "index.css")
    if not css_path.is_file():
        pytest.skip(f"JupyterLab's {theme} theme is not installed here")
    css = css_path.read_text()
    found = dict(re.findall(r"--jp-([a-z0-9-]+):\s*([^;}]+)[;}]", css))
    resolved = {}
    for name, value in found.items():
        fallback = re.fullmatch(r"var\(--md-[a-z0-9-]+,\s*([^)]+)\)", value.strip())
        ref = re.fullmatch(r"var\(--jp-([a-z0-9-]+)\)", value.strip())
        resolved[name] = (fallback.group(1) if fallback else
                          found.get(ref.group(1), "") if ref else value).strip()
    return resolved


def _rgba(value: str) -> tuple[float, float, float, float]:
    value = value.strip().lower()
    if value == "white":
        return 255, 255, 255, 1
    if value.startswith("#"):
        digits = value[1:]
        if len(digits) == 3:
            digits = "".join(c * 2 for c in digits)
        return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16), 1
    r, g, b, *a = (float(x) for x in re.findall(r"[0-9.]+", value))
    return r, g, b, a[0] if a else 1


def contrast(text: str, background: str, page: str) -> float:
    """WCAG contrast of ``text`` over ``background`` over ``page`` (alpha composited)."""
    def over(top, bottom):
        r, g, b, a = top
        return tuple(a * t + (1 - a) * u for t, u in zip((r, g, b), bottom[:3])) + (1,)

    def luminance(rgb):
        def lin(c):
            c /= 255
            return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
        r, g, b = (lin(c) for c in rgb[:3])
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    bg = over(_rgba(background), _rgba(page))
    fg = over(_rgba(text), bg)
    hi, lo = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_text_contrast_in_jupyterlab_themes(theme, capsys):
    """Every text colour on every background the panel draws it on reads at 4.5:1 or more in
    JupyterLab 4's light and dark themes, with the values those themes define."""
    colours = _theme_colours(theme)
    html = render_html(snap(state="cancelled", finished=time.monotonic(), failed=12,
                            errors={"ServerError": 2, "CancelledRowError": 2,
                                    "NotSentError": 8}))
    texts = set(re.findall(r"[^-]color:\s*var\(--jp-([a-z0-9-]+)", html))
    assert texts and texts <= {t for t, _ in TEXT_ON}  # every text colour drawn is checked
    ratios = {}
    for text, background in TEXT_ON:
        ratios[f"{text} on {background}"] = contrast(
            colours[text], colours[background], colours["layout-color0"])
    with capsys.disabled():
        print(f"\n{theme}: " + ", ".join(f"{k} {v:.1f}:1" for k, v in ratios.items()))
    assert min(ratios.values()) >= 4.5, ratios


def test_a_run_answered_by_the_journal_says_so():
    cached = snap(rows=120, requests=0, requests_done=0, done=120, ok=120, cached=120, failed=0,
                  in_flight=0, retrying=0, errors={}, first_errors=[], state="done",
                  finished=time.monotonic())
    text, html = render_text(cached), render_html(cached)
    assert "120 rows · 120 from the journal · 0 sent" in text
    assert "120 rows · 120 from the journal · 0 sent" in html
    assert "0/0 requests" not in text and "req/s" not in text
    assert "ok 120" in text and "cached 120" in text


def test_a_stopped_run_says_stopped_and_its_reason_once():
    reason = "Incorrect API key provided. (simulator, HTTP 401, code invalid_api_key, 1 attempt)"
    stopped = snap(rows=20, requests=20, done=20, requests_done=8, ok=0, failed=20, in_flight=0,
                   retrying=0, state="aborted", finished=time.monotonic(),
                   message=f"stopped: {reason}",
                   errors={"FatalProviderError": 8, "NotSentError": 12},
                   first_errors=[f"FatalProviderError: {reason}"])
    text, html = render_text(stopped), render_html(stopped)
    for shown in (text, html):
        assert "aborted" not in shown
        assert shown.count("Incorrect API key") == 1, shown
        assert "stopped" in shown
    assert "failed 8" in text and "not started 12" in text
    line = _display.summary_line(stopped)
    assert line.count("Incorrect API key") == 1 and "aborted" not in line


def test_static_panel_has_an_install_hint():
    view = StaticPanel(snap(), hint=StaticPanel.HINT)
    assert "batchmagic[notebook]" in view._repr_html_()
    assert repr(view) == render_text(snap())
    assert "batchmagic[notebook]" not in StaticPanel(snap())._repr_html_()


# -- the widget ------------------------------------------------------------------------------------


@pytest.fixture
def sent(monkeypatch):
    """Every comm message the widgets send, as (widget, keys)."""
    import ipywidgets

    log: list = []
    real = ipywidgets.Widget._send

    def spy(self, msg, buffers=None):
        log.append((type(self).__name__, sorted(msg.get("state", {}))))
        return real(self, msg, buffers)

    monkeypatch.setattr(ipywidgets.Widget, "_send", spy)
    return log


def test_an_update_sends_at_most_two_messages(sent):
    actions = []
    panel = Panel(snap(done=0, ok=0), actions.append, background=True)
    sent.clear()
    for i in range(1, 30):
        panel.update(snap(done=i, ok=i, started=time.monotonic() - i))
    assert len(sent) <= 29  # the bar is in the body: one message per update while running
    assert {name for name, _ in sent} <= {"HTML"}
    sent.clear()
    panel.update(snap(state="paused", done=29, ok=29, started=time.monotonic() - 29))
    assert len(sent) <= 2 + 2  # body and header, and the buttons' state
    sent.clear()
    panel.update(snap(state="paused", done=29, ok=29, started=time.monotonic() - 29))
    panel.update(snap(state="paused", done=29, ok=29, started=time.monotonic() - 29))
    assert len(sent) <= 1  # nothing changed but the clock: at most the body


def test_buttons_control_a_background_run_and_turn_off_at_the_end():
    actions = []
    panel = Panel(snap(), actions.append, background=True)
    b = panel.buttons
    assert not b["pause"].disabled and b["resume"].disabled and not b["cancel"].disabled
    for name in ("pause", "resume", "cancel"):
        b[name].click()
    assert actions == ["pause", "resume", "cancel"]
    panel.update(snap(state="paused"))
    assert b["pause"].disabled and not b["resume"].disabled
    panel.update(snap(state="done", done=100, ok=100, failed=0, finished=time.monotonic()))
    assert all(btn.disabled for btn in b.values())
    assert "batchmagic-failed" not in panel.body.value


def test_a_foreground_run_has_no_buttons():
    """Its clicks could not reach a kernel busy running the cell: the badge says how to stop it."""
    import ipywidgets

    panel = Panel(snap(), lambda action: None, background=False)
    assert panel.buttons == {}
    assert not any(isinstance(w, (ipywidgets.Button, ipywidgets.HBox)) for w in panel.box.children)
    assert "interrupt the kernel" in panel.header.value


def test_closing_the_panel_closes_every_widget():
    panel = Panel(snap(), lambda action: None, background=True)
    widgets = panel._widgets()
    assert all(w.comm is not None for w in widgets)
    panel.close()
    assert all(w.comm is None for w in widgets)


def test_mimebundle_carries_text_and_html_fallbacks():
    panel = Panel(snap(state="done", finished=time.monotonic()), None)
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"] == render_text(panel.snap)
    assert bundle["text/html"] == render_html(panel.snap)
    assert panel._repr_html_() == bundle["text/html"]


# -- the display choice ----------------------------------------------------------------------------


def test_outside_a_kernel_the_text_bar_is_used():
    assert not _display.in_kernel()
    d = _display.make_display(True, snap())
    try:
        assert isinstance(d, _display.TextDisplay)
    finally:
        d.close(snap(state="done", finished=time.monotonic()))
    assert _display.make_display(False, snap()) is None


def test_in_a_kernel_the_widget_else_static_html(monkeypatch, capsys):
    monkeypatch.setattr(_display, "in_kernel", lambda: True)
    d = _display.make_display(True, snap(), control=lambda a: None, background=True)
    assert isinstance(d, _display.WidgetDisplay)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # ipywidgets missing
    d = _display.make_display(True, snap())
    assert isinstance(d, _display.HtmlDisplay)
    d.close(snap(state="done", finished=time.monotonic()))


def test_the_widget_never_holds_the_key(monkeypatch, capsys):
    """A run with a sentinel key (accepted), then one with a wrong key (every row refused):
    neither any state the widgets sent nor the static panel they leave nor anything printed
    contain the key."""
    import ipywidgets

    states: list = []
    real_state = ipywidgets.Widget.get_state

    def spy(self, key=None):
        state = real_state(self, key)
        states.append(state)
        return state

    monkeypatch.setattr(ipywidgets.Widget, "get_state", spy)
    monkeypatch.setattr(_display, "in_kernel", lambda: True)
    with SimulatorThread(latency=0.0, api_key=SENTINEL) as sim:
        kw = dict(provider="simulator", base_url=sim.base_url, model="m", cache=False)
        task = bm.submit([f"r{i}" for i in range(20)], api_key=SENTINEL, **kw)
        df = task.wait(20)
        assert df["error"].isna().all()
        wrong = bm.batch(["x", "y"], api_key=SENTINEL + "-wrong", **kw)
        assert all(isinstance(e, bm.FatalProviderError) for e in wrong["error"])
    runs = [r for r in bm._api.recent_runs() if r.id in (task.run_id,
                                                          wrong.attrs["batchmagic"]["run_id"])]
    assert len(runs) == 2 and states
    blob = json.dumps(states, default=str)
    for run in runs:
        assert isinstance(run.display, _display.WidgetDisplay)
        blob += json.dumps(StaticPanel(run.progress.snapshot())._repr_mimebundle_())
    assert SENTINEL not in blob and "sentinel" not in blob
    assert "FatalProviderError" in blob  # the refusal is shown, without the key
    captured = capsys.readouterr()
    assert SENTINEL not in captured.out + captured.err


# -- bounded output --------------------------------------------------------------------------------


def test_a_big_run_prints_no_line_per_row(server):
    """A 10,000-row run through the text bar: redraws bounded by time, never by rows."""
    err = io.StringIO()
    real = _display.TextDisplay.__init__

    def to_buffer(self, s, file=None):
        real(self, s, file=err)

    t0 = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_display.TextDisplay, "__init__", to_buffer)
        df = bm.batch([f"row {i}" for i in range(10_000)], base_url=BASE_URL, model="m",
                      transport=server.transport, concurrency=256, cache=False)
    wall = time.monotonic() - t0
    assert df["error"].isna().all()
    redraws = err.getvalue().count("\r")
    assert redraws <= _display.MAX_UPDATES_PER_S * wall + 10, (redraws, wall)
    assert err.getvalue().count("\n") <= 3


def test_a_background_run_outside_a_notebook_prints_one_line_when_it_ends(server, capfd):
    """In a terminal the prompt is the user's while a background run goes on: no bar redrawn
    under what they type, one line when it ends."""
    task = bm.submit([f"row {i}" for i in range(20)], base_url=BASE_URL, model="m",
                     transport=server.transport, cache=False)
    assert task.wait(30)["error"].isna().all()
    captured = capfd.readouterr()
    assert "\r" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("chat m @ ") and "done: 20 ok, 0 failed of 20 rows" in lines[0]
    assert captured.out == ""


# -- the live frame --------------------------------------------------------------------------------


def _gated(release: threading.Event, fast: set[str]) -> AsyncServer:
    async def answer(req, body):
        text = user_text(body)
        if text == "bad":
            return httpx.Response(400, json={"error": {"message": "refused"}})
        if text not in fast:
            for _ in range(1000):
                if release.is_set():
                    break
                await asyncio.sleep(0.01)
        return httpx.Response(200, json=chat_answer("echo:" + text, reasoning_content="because"
                                                    if text == "think" else None))

    return AsyncServer(answer)


def _wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_live_frame_is_one_object_that_ends_exactly_as_the_result():
    release = threading.Event()
    s = _gated(release, fast={"a", "bad", "think"})
    inputs = pd.DataFrame({"t": ["a", "slow1", "bad", None, "think", "a", "slow2"]},
                          index=list("vwxyzuq"))
    task = bm.submit(inputs, "{t}", base_url=BASE_URL, model="m", transport=s.transport,
                     progress=False, concurrency=8, cache=False)
    live = task.frame
    assert task.frame is live
    assert list(live.index) == list("vwxyzuq")
    _wait_for(lambda: live.loc["v", "output"] is not None and live.loc["x", "error"] is not None)
    assert live.loc["u", "output"] == "echo:a"  # de-duplicated rows fill in together
    assert live.loc["w", "output"] is None and live.loc["w", "error"] is None
    assert isinstance(live.loc["y", "error"], bm.InputError)  # pre-flight errors from the start
    _wait_for(lambda: "reasoning" in live.columns)  # an optional column appears in place
    release.set()
    final = task.wait(10)
    assert final is live
    run = task._run
    expected = _frame.build_frame(run.plan, run.results)
    pd.testing.assert_frame_equal(final.drop(columns="error"), expected.drop(columns="error"))
    as_text = [None if e is None else (type(e), str(e)) for e in expected["error"]]
    assert [None if e is None else (type(e), str(e)) for e in final["error"]] == as_text
    assert final.attrs["batchmagic"]["state"] == "done"
    assert final.attrs["batchmagic"]["run_id"] == task.run_id
    assert list(final.dtypes) == list(expected.dtypes)


def test_live_frame_after_the_run_is_the_result(server):
    task = bm.submit(["a", "b"], base_url=BASE_URL, model="m", transport=server.transport,
                     progress=False, cache=False)
    df = task.wait(10)
    assert task.frame is df


def test_live_frame_updates_in_batches_not_per_row(monkeypatch):
    """2,000 rows finish; the frame is written once per refresh tick, never once per row."""
    writes = []
    real = _frame.LiveFrame._write

    def count(self, positions):
        writes.append(len(positions))
        return real(self, positions)

    monkeypatch.setattr(_frame.LiveFrame, "_write", count)

    async def slowish(req, body):
        await asyncio.sleep(0.05)
        return echo_chat(req, body)

    s = AsyncServer(slowish)
    t0 = time.monotonic()
    task = bm.submit([f"r{i}" for i in range(2000)], base_url=BASE_URL, model="m",
                     transport=s.transport, progress=False, concurrency=100, cache=False)
    live = task.frame
    df = task.wait(60)
    wall = time.monotonic() - t0
    assert df is live and df["output"].notna().all()
    assert len(writes) <= _display.MAX_UPDATES_PER_S * wall + 3, (len(writes), wall)
    assert sum(writes) <= 2000


def test_live_frame_holds_embedding_vectors():
    with SimulatorThread(latency=0.0) as sim:
        task = bm.submit([f"text {i}" for i in range(50)], kind="embedding",
                         provider="simulator", base_url=sim.base_url, model="e",
                         progress=False, cache=False)
        live = task.frame
        df = task.wait(20)
    assert df is live
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in df["output"])


def test_stop_summary_says_what_was_done_cut_and_unsent():
    line = _display.summary_line(snap(state="cancelled", ok=12, failed=68, rows=80,
                                      errors={"CancelledRowError": 4, "NotSentError": 64},
                                      first_errors=[]))
    assert line == ("batch cancelled: 12 ok, 4 cancelled in flight, 64 not started "
                    "of 80 rows")
    assert _display.summary_line(snap(state="done", failed=0)) == ""
