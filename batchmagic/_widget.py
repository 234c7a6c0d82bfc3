"""The notebook panel of a run: an ipywidgets box, with text and HTML renderings of the same state.

The panel only draws ``Snapshot`` objects handed to it (``_display.py`` decides when); it keeps no
counters of its own. Each ``update`` sends at most two comm messages (the body's HTML, which holds
the bar, in one; the header's in the other, and only when the run's state changes). ``render_text``
/ ``render_html`` need no ipywidgets: they are the fallback for nbconvert, front ends without
widget support and kernels without ipywidgets, and what a finished run leaves in the notebook.

Every colour is one of JupyterLab's theme variables (with its light-theme value as the fallback
where no theme defines it), so the panel follows light and dark themes. Text is drawn only in the
theme's font colours on the theme's layout colours; state colours fill shapes (the bar, the chips'
swatches, borders), never text. ``TEXT_ON`` lists each text / background pair for the contrast
check.

Nothing here ever sees an API key: the title names the provider and model, and error messages
reach the progress state already scrubbed.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from ._progress import Snapshot

#: error classes listed in the text rendering (the HTML lists them all: there are few classes)
SHOWN_CLASSES = 8


def _var(name: str, fallback: str) -> str:
    return f"var(--jp-{name}, {fallback})"


# text colours, and the backgrounds text is drawn on
TEXT = _var("ui-font-color1", "rgba(0, 0, 0, 0.87)")
MUTED = _var("ui-font-color2", "rgba(0, 0, 0, 0.54)")
BADGE_BACKGROUND = _var("layout-color2", "#eeeeee")
ERROR_BACKGROUND = _var("rendermime-error-background", "#ffdddd")
#: (text colour, background) pairs the panel draws, as theme variable names; the panel's own
#: background is the output area's (layout-color0, or layout-color1 where a theme sets that)
TEXT_ON = (
    ("ui-font-color1", "layout-color0"), ("ui-font-color1", "layout-color1"),
    ("ui-font-color2", "layout-color0"), ("ui-font-color2", "layout-color1"),
    ("ui-font-color1", "layout-color2"),  # the state badge
    ("ui-font-color1", "rendermime-error-background"),  # the error list
)
# shapes: the bar's segments, the chips' swatches, the badge's dot, borders
TONES = {"success": _var("success-color1", "#388e3c"), "danger": _var("error-color1", "#d32f2f"),
         "warning": _var("warn-color1", "#f57c00"), "info": _var("brand-color1", "#1976d2")}
SEGMENTS = {"ok": TONES["success"], "cached": _var("success-color2", "#81c784"),
            "failed": TONES["danger"], "in flight": _var("brand-color2", "#64b5f6")}
_SWATCHES = {**SEGMENTS, "retrying": TONES["warning"], "queued": _var("layout-color3", "#bdbdbd"),
             "cancelled in flight": _var("warn-color2", "#ffb74d"),
             "not started": _var("layout-color3", "#bdbdbd")}
_TRACK = _var("layout-color2", "#eeeeee")
_BORDER = _var("border-color2", "#e0e0e0")
_STATE_WORDS = {"aborted": "stopped"}  # one word for a stopped run, whatever stopped it
_FG_HINT = ("The kernel is busy running this cell: interrupt the kernel to stop it (finished rows "
            "are kept). Run the cell with --bg (or use bm.submit) for Pause / Resume / Cancel.")


def _n(value: int) -> str:
    return f"{value:,}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _money(usd: float) -> str:
    return f"${usd:,.4f}" if usd < 1 else f"${usd:,.2f}"


def state_word(s: Snapshot) -> str:
    """The run's state as the panel, its summary line and ``%batch_runs`` say it."""
    return _STATE_WORDS.get(s.state, s.state)


def outcome(s: Snapshot) -> tuple[str, str]:
    """(tone, short state text): success when every row succeeded, danger on failures or a stop."""
    if s.state == "done":
        if s.failed:
            return "danger", f"finished, {_n(s.failed)} failed"
        return "success", "done"
    if s.state == "cancelled":
        return "danger" if s.failures else "warning", "cancelled"
    if s.state == "aborted":
        return "danger", state_word(s)
    if s.state == "paused":
        return "warning", "paused"
    return "info", s.state


def answered(s: Snapshot) -> int:
    """Rows that got an answer or a real failure: a stop marks the rest done too (cut off, not
    sent), and those are counted apart."""
    return s.done - s.cut_off - s.not_started


def _percent(s: Snapshot) -> int:
    return 100 if not s.rows else int(100 * answered(s) / s.rows)


def segments(s: Snapshot) -> list[tuple[str, int]]:
    """The stacked bar, in rows: ok (sent this run), cached, failed, in flight."""
    in_flight = min(s.in_flight, max(0, s.rows - answered(s))) if s.finished is None else 0
    return [("ok", s.ok - s.cached), ("cached", s.cached), ("failed", s.failures),
            ("in flight", in_flight)]


def scope(s: Snapshot) -> str:
    """What the run covers: "120 rows · 120 from the journal · 0 sent"."""
    parts = [f"{_n(s.rows)} rows"]
    if s.cached:
        parts.append(f"{_n(s.cached)} from the journal")
    if s.finished is None:
        parts.append(f"{_n(s.requests)} requests")
    else:
        parts.append(f"{_n(s.requests_done)} sent")
    return " · ".join(parts)


def _progress_line(s: Snapshot) -> list[str]:
    parts = [f"{_n(answered(s))}/{_n(s.rows)} rows ({_percent(s)}%)"]
    if s.requests:  # a run the journal answered whole sent nothing: no rate to show
        parts += [f"{_n(s.requests_done)}/{_n(s.requests)} requests", f"{s.rate:,.1f} req/s"]
    if s.input_tokens or s.output_tokens:
        parts.append(f"{s.tokens_per_s:,.0f} tok/s")
    if s.finished is None and s.state in ("running", "starting"):
        parts.append(f"ETA {duration(s.eta)}")
    parts.append(f"elapsed {duration(s.elapsed)}")
    if s.cost:
        parts.append(f"spent {_money(s.cost)}")
    return parts


def counts(s: Snapshot) -> list[tuple[str, int]]:
    """(label, rows) for the count chips; a count of zero is left out."""
    live = s.finished is None
    chips = [("ok", s.ok), ("failed", s.failures), ("cached", s.cached),
             ("retrying", s.retrying if live else 0), ("in flight", s.in_flight if live else 0),
             ("queued", s.queued if live else 0), ("cancelled in flight", s.cut_off),
             ("not started", s.not_started)]
    return [(label, value) for label, value in chips if value]


def _limits(s: Snapshot) -> list[str]:
    parts = []
    if s.concurrency:
        parts.append(f"concurrency {s.concurrency}")
    if s.rate_waits:
        parts.append(f"rate-limit waits {_n(s.rate_waits)}")
    if s.rate_limited:
        parts.append(f"429s {_n(s.rate_limited)}")
    if s.retries:
        parts.append(f"retries {_n(s.retries)}")
    return parts


def _note(s: Snapshot) -> str:
    """The line under the counts: why a stopped run stopped, or the run's own message."""
    if s.stop_reason:
        return f"{state_word(s)}: {s.stop_reason}"
    return s.message


def error_groups(s: Snapshot) -> list[tuple[str, int, str]]:
    """(class, count, first message seen for it) per error class, the most frequent first; the
    stop's own rows are left out, and a message that is the stop's reason is said there only."""
    groups = []
    for name, count in sorted(s.errors.items(), key=lambda kv: -kv[1]):
        if name in s.stop_kinds:
            continue
        first = next((m for m in s.first_errors if m.startswith(name + ": ")), "")
        message = first[len(name) + 2:] if first else ""
        groups.append((name, count, "" if message == s.stop_reason else message))
    return groups


def render_text(s: Snapshot, width: int = 30) -> str:
    """A few plain lines: what a terminal, nbconvert's text output or a log shows."""
    _, state = outcome(s)
    filled = width if not s.rows else int(width * answered(s) / s.rows)
    lines = [
        f"{s.title or 'batch'}: {state} ({scope(s)})",
        f"[{'#' * filled}{'.' * (width - filled)}] " + " · ".join(_progress_line(s)),
    ]
    tallies = [f"{label} {_n(v)}" for label, v in counts(s)] + _limits(s)
    if tallies:
        lines.append(" · ".join(tallies))
    if error_groups(s):
        lines.append("errors:")
        lines += [f"  {name} x{count}" + (f": {message[:160]}" if message else "")
                  for name, count, message in error_groups(s)[:SHOWN_CLASSES]]
    if _note(s):
        lines.append(_note(s))
    return "\n".join(lines)


_FONT = ("font-family: var(--jp-ui-font-family, -apple-system, 'Segoe UI', Roboto, sans-serif); "
         f"font-size: var(--jp-ui-font-size1, 13px); line-height: 1.5; color: {TEXT}")
_MONO = ("font-family: var(--jp-code-font-family, monospace); font-size: 0.9em; "
         "white-space: nowrap; overflow: hidden; text-overflow: ellipsis")


def _swatch(color: str, round_: bool = False) -> str:
    radius = "50%" if round_ else "2px"
    return (f'<span style="display: inline-block; width: 8px; height: 8px; margin-right: 4px; '
            f'border-radius: {radius}; background: {color}"></span>')


def header_html(s: Snapshot, hint: str = "") -> str:
    tone, state = outcome(s)
    title = f' title="{html.escape(hint)}"' if hint else ""
    return (
        f'<div style="{_FONT}; display: flex; align-items: center; gap: 10px">'
        f'<span style="font-weight: 600">{html.escape(s.title or "batch")}</span>'
        f'<span style="color: {MUTED}">{html.escape(scope(s))}</span>'
        f'<span class="batchmagic-state"{title} style="margin-left: auto; padding: 0 9px; '
        f'border-radius: 10px; background: {BADGE_BACKGROUND}; white-space: nowrap">'
        f"{_swatch(TONES[tone], round_=True)}{html.escape(state)}</span></div>"
    )


def bar_html(s: Snapshot) -> str:
    """One stacked bar: ok, cached, failed and in-flight rows, each its share of all rows."""
    total = max(s.rows, 1)
    parts = "".join(
        f'<div class="batchmagic-{name.replace(" ", "-")}" style="width: {100 * rows / total:.3f}%;'
        f' background: {SEGMENTS[name]}"></div>'
        for name, rows in segments(s) if rows
    )
    label = " · ".join(f"{name} {_n(rows)}" for name, rows in segments(s) if rows) or "nothing yet"
    return (f'<div class="batchmagic-bar" role="img" aria-label="{label}" title="{label}" '
            f'style="display: flex; height: 10px; margin: 6px 0; border-radius: 5px; '
            f'background: {_TRACK}; overflow: hidden">{parts}</div>')


def body_html(s: Snapshot) -> str:
    chips = "".join(
        f'<span style="display: inline-block; margin: 0 12px 2px 0; white-space: nowrap">'
        f'{_swatch(_SWATCHES[label])}<span style="color: {MUTED}">{label}</span> '
        f"<b>{_n(value)}</b></span>"
        for label, value in counts(s)
    )
    lines = [
        bar_html(s),
        f"<div>{' · '.join(html.escape(p) for p in _progress_line(s))}</div>",
    ]
    if chips:
        lines.append(f"<div>{chips}</div>")
    limits = _limits(s)
    if limits:
        lines.append(f'<div style="color: {MUTED}">' + " · ".join(limits) + "</div>")
    if error_groups(s):
        rows = "".join(
            f'<b style="white-space: nowrap">{html.escape(name)} ×{_n(count)}</b>'
            f'<span style="{_MONO}" title="{html.escape(message)}">{html.escape(message)}</span>'
            for name, count, message in error_groups(s)
        )
        lines.append(
            f'<div class="batchmagic-errors" style="margin-top: 4px; padding: 3px 8px; '
            f'border-left: 3px solid {TONES["danger"]}; background: {ERROR_BACKGROUND}; '
            f'display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 0 10px">'
            f"{rows}</div>"
        )
    if _note(s):
        lines.append(f"<div><b>{html.escape(_note(s))}</b></div>")
    return f'<div style="{_FONT}; min-width: 0; overflow: hidden">' + "".join(lines) + "</div>"


def render_html(s: Snapshot, hint: str = "") -> str:
    """The whole panel as static HTML (no widgets, no script, no network): header, bar, counts,
    errors. It is what a finished run leaves in the notebook."""
    extra = (f'<div style="{_FONT}; color: {MUTED}; font-size: 0.85em">{html.escape(hint)}</div>'
             if hint else "")
    return (
        '<div class="batchmagic-panel" style="max-width: 760px; padding: 8px 12px; '
        f'border: 1px solid {_BORDER}; border-radius: 6px">'
        f"{header_html(s)}{body_html(s)}{extra}</div>"
    )


class Panel:
    """The live panel: title, stacked bar, counts and rates, errors, and for a run that can be
    controlled (``background``: the kernel is free to receive clicks) Pause / Resume / Cancel.

    ``control(action)`` is called with "pause", "resume" or "cancel" when a button is clicked.
    A foreground run has no buttons (a busy kernel cannot receive clicks); its state badge says
    how to stop it.
    """

    def __init__(self, snap: Snapshot, control: Callable[[str], None] | None = None, *,
                 background: bool = False):
        import ipywidgets as w

        self.snap = snap
        self._control = control
        self._hint = "" if background else _FG_HINT
        # min_width 0 lets long error lines be cut off with an ellipsis instead of widening the box
        self.header = w.HTML(header_html(snap, self._hint),
                             layout=w.Layout(width="100%", min_width="0"))
        self.body = w.HTML(body_html(snap), layout=w.Layout(width="100%", min_width="0"))
        self.buttons: dict = {}
        children = [self.header, self.body]
        if background and control is not None:
            self.buttons = self._make_buttons(w)
            children.append(w.HBox(list(self.buttons.values())))
        self.box = w.VBox(children, layout=w.Layout(max_width="760px", padding="8px 12px",
                                                    margin="2px 0", border=f"1px solid {_BORDER}"))
        self.box.add_class("batchmagic-panel")
        self._state = None
        self.update(snap)

    def _make_buttons(self, w) -> dict:
        buttons = {
            "pause": w.Button(description="Pause", icon="pause", tooltip="Pause the run: "
                              "requests in flight finish, no new ones start"),
            "resume": w.Button(description="Resume", icon="play", tooltip="Resume sending"),
            "cancel": w.Button(description="Cancel", icon="stop", button_style="danger",
                               tooltip="Cancel the run; finished rows are kept"),
        }
        for action, button in buttons.items():
            button.layout = w.Layout(width="auto")
            button.on_click(lambda _b, a=action: self._click(a))
        return buttons

    def _click(self, action: str) -> None:
        if self._control is not None and self.buttons:
            self._control(action)

    def update(self, snap: Snapshot) -> None:
        self.snap = snap
        body = body_html(snap)
        if body != self.body.value:  # the bar is in the body: one message
            self.body.value = body
        if snap.state != self._state:  # the header and buttons change only with the state
            self._state = snap.state
            self.header.value = header_html(snap, self._hint)
            self._set_buttons(snap)

    def _set_buttons(self, snap: Snapshot) -> None:
        if not self.buttons:
            return
        live = snap.finished is None and snap.state in ("starting", "running", "paused")
        self.buttons["pause"].disabled = not (live and snap.state != "paused")
        self.buttons["resume"].disabled = not (live and snap.state == "paused")
        self.buttons["cancel"].disabled = not live
        self.buttons["cancel"].button_style = "danger" if live else ""  # no red when inert

    def send_state(self) -> None:
        """Send every control's whole state again."""
        for widget in self._widgets():
            widget.send_state()

    def close(self) -> None:
        """Close every widget of the panel: the front end drops their models, and a notebook
        saved afterwards holds none that a reopened page could not find."""
        for widget in self._widgets():
            widget.close()

    def _widgets(self) -> list:
        return [self.box, *self.box.children, *self.buttons.values()]

    # -- fallbacks: what is shown where widgets are not rendered ------------------------------------

    def _repr_mimebundle_(self, **kwargs) -> dict:
        data = self.box._repr_mimebundle_(**kwargs) or {}
        data["text/plain"] = render_text(self.snap)
        data["text/html"] = render_html(self.snap)
        return data

    def _repr_html_(self) -> str:
        return render_html(self.snap)

    def _repr_pretty_(self, p, cycle: bool) -> None:
        p.text(render_text(self.snap))

    def widget_state(self) -> list[dict]:
        """The state of every widget in the panel (what a saved notebook would hold)."""
        return [wid.get_state() for wid in self._widgets()]


class StaticPanel:
    """The panel without widgets: HTML and text only. A kernel without ipywidgets redraws it
    through a display handle (with ``hint``); every finished run leaves one behind."""

    HINT = "pip install 'batchmagic[notebook]' (ipywidgets) for a live panel with controls"

    def __init__(self, snap: Snapshot, hint: str = ""):
        self.snap = snap
        self.hint = hint

    def _repr_mimebundle_(self, **kwargs) -> dict:
        return {"text/plain": render_text(self.snap),
                "text/html": render_html(self.snap, hint=self.hint)}

    def _repr_html_(self) -> str:
        return render_html(self.snap, hint=self.hint)

    def _repr_pretty_(self, p, cycle: bool) -> None:
        p.text(render_text(self.snap))

    def __repr__(self) -> str:
        return render_text(self.snap)
