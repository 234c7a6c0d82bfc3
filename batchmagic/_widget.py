"""The notebook panel of a run: an ipywidgets box, with text and HTML renderings of the same state.

The panel only draws ``Snapshot`` objects handed to it (``_display.py`` decides when); it keeps no
counters of its own. Each ``update`` sends at most two comm messages (the bar's value, style and
percentage in one, the body's HTML in the other); the header and the buttons change only when the
run's state does. ``render_text`` / ``render_html`` need no ipywidgets: they are the fallback for
nbconvert, front ends without widget support and kernels without ipywidgets.

Nothing here ever sees an API key: the title names the provider and model, and error messages
reach the progress state already scrubbed.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from ._progress import Snapshot

#: error classes listed in the text rendering (the HTML lists them all: there are few classes)
SHOWN_CLASSES = 8
_COLORS = {"success": "#2e7d32", "danger": "#c62828", "warning": "#e65100", "info": "#1565c0",
           "": "#1565c0"}
_BG_TOOLTIP = "Run the cell with --bg (or use bm.submit) for live controls"
_FG_TOOLTIP = ("The kernel is busy running this cell: interrupt the kernel to stop it "
               "(finished rows are kept). " + _BG_TOOLTIP + ".")


def _n(value: int) -> str:
    return f"{value:,}"


def _duration(seconds: float | None) -> str:
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


def outcome(s: Snapshot) -> tuple[str, str]:
    """(bar style, short state text): green when all succeeded, red on failures or a stop."""
    if s.state == "done":
        if s.failed:
            return "danger", f"finished, {_n(s.failed)} failed"
        return "success", "done"
    if s.state == "cancelled":
        return "danger" if _failed(s) else "warning", "cancelled"
    if s.state == "aborted":
        return "danger", "stopped"
    if s.state == "paused":
        return "warning", "paused"
    return "info", s.state


def _stopped(s: Snapshot) -> int:
    """Rows that failed only because the run was stopped (not sent or cut off)."""
    return s.errors.get("NotSentError", 0) + s.errors.get("CancelledRowError", 0)


def answered(s: Snapshot) -> int:
    """Rows that got an answer or a real failure: what the bar shows. A stop marks the rest
    done too (not sent, cut off); they do not fill the bar."""
    return s.done - _stopped(s) if s.state in ("cancelled", "aborted") else s.done


def _failed(s: Snapshot) -> int:
    return s.failed - _stopped(s) if s.state in ("cancelled", "aborted") else s.failed


def _percent(s: Snapshot) -> int:
    return 100 if not s.rows else int(100 * answered(s) / s.rows)


def _requests(s: Snapshot) -> str:
    return f"{_n(s.requests_done)}/{_n(s.requests)} requests"


def _rates(s: Snapshot) -> list[str]:
    parts = [f"{s.rate:,.1f} req/s"]
    if s.input_tokens or s.output_tokens:
        parts.append(f"{s.tokens_per_s:,.0f} tok/s")
    if s.finished is None and s.state in ("running", "starting"):
        parts.append(f"ETA {_duration(s.eta)}")
    parts.append(f"elapsed {_duration(s.elapsed)}")
    if s.cost:
        parts.append(f"spent {_money(s.cost)}")
    return parts


def _counts(s: Snapshot) -> list[tuple[str, int, str]]:
    """(label, value, color) for the count chips; zero counts of rare kinds are left out."""
    chips = [("ok", s.ok, _COLORS["success"]), ("failed", _failed(s), _COLORS["danger"])]
    if s.finished is None:
        chips += [("retrying", s.retrying, _COLORS["warning"]),
                  ("in flight", s.in_flight, _COLORS["info"]), ("queued", s.queued, "#616161")]
    if s.cached:
        chips.append(("cached", s.cached, "#6a1b9a"))
    return chips


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


def _stop_line(s: Snapshot) -> str:
    if not s.stop_kinds:
        return ""
    cut, unsent = (s.errors.get(k, 0) for k in s.stop_kinds)
    return f"{s.state}: {_n(cut)} cancelled in flight, {_n(unsent)} not started"


def error_groups(s: Snapshot) -> list[tuple[str, int, str]]:
    """(class, count, first message seen for it) per error class, the most frequent first."""
    groups = []
    for name, count in sorted(s.errors.items(), key=lambda kv: -kv[1]):
        if name in s.stop_kinds:
            continue
        first = next((m for m in s.first_errors if m.startswith(name + ": ")), "")
        groups.append((name, count, first[len(name) + 2:] if first else ""))
    return groups


def render_text(s: Snapshot, width: int = 30) -> str:
    """A few plain lines: what a terminal, nbconvert's text output or a log shows."""
    _, state = outcome(s)
    filled = width if not s.rows else int(width * answered(s) / s.rows)
    lines = [
        f"{s.title or 'batch'}: {state}",
        f"[{'#' * filled}{'.' * (width - filled)}] {_n(answered(s))}/{_n(s.rows)} rows "
        f"({_percent(s)}%) · {_requests(s)} · " + " · ".join(_rates(s)),
        " · ".join([f"{label} {_n(v)}" for label, v, _ in _counts(s)] + _limits(s)),
    ]
    if _stop_line(s):
        lines.append(_stop_line(s))
    if error_groups(s):
        lines.append("errors:")
        lines += [f"  {name} x{count}" + (f": {message[:160]}" if message else "")
                  for name, count, message in error_groups(s)[:SHOWN_CLASSES]]
    if s.message:
        lines.append(s.message)
    return "\n".join(lines)


_FONT = ("font-family: var(--jp-ui-font-family, -apple-system, 'Segoe UI', Roboto, sans-serif); "
         "font-size: var(--jp-ui-font-size1, 13px); line-height: 1.5; "
         "color: var(--jp-ui-font-color1, #212121)")
_MUTED = "color: var(--jp-ui-font-color2, #616161)"
_MONO = ("font-family: var(--jp-code-font-family, monospace); font-size: 0.9em; "
         "white-space: nowrap; overflow: hidden; text-overflow: ellipsis")


def header_html(s: Snapshot) -> str:
    style, state = outcome(s)
    color = _COLORS[style]
    return (
        f'<div style="{_FONT}; display: flex; align-items: center; gap: 10px">'
        f'<span style="font-weight: 600">{html.escape(s.title or "batch")}</span>'
        f'<span style="{_MUTED}">{_n(s.rows)} rows → {_n(s.requests)} requests</span>'
        f'<span style="margin-left: auto; padding: 1px 9px; border-radius: 10px; color: white; '
        f'background: {color}; font-size: 0.9em">{html.escape(state)}</span></div>'
    )


def body_html(s: Snapshot) -> str:
    chips = "".join(
        f'<span style="display: inline-block; margin: 0 6px 2px 0; padding: 0 8px; '
        f'border-radius: 4px; border: 1px solid {color}40; background: {color}14">'
        f'<span style="{_MUTED}">{label}</span> '
        f'<b style="color: {color if value else "inherit"}">{_n(value)}</b></span>'
        for label, value, color in _counts(s)
    )
    lines = [
        f'<div><b>{_n(answered(s))}</b> / {_n(s.rows)} rows ({_percent(s)}%) · {_requests(s)} · '
        + " · ".join(html.escape(p) for p in _rates(s)) + "</div>",
        f"<div>{chips}</div>",
    ]
    limits = _limits(s)
    if limits:
        lines.append(f'<div style="{_MUTED}">' + " · ".join(limits) + "</div>")
    if _stop_line(s):
        lines.append(f"<div><b>{html.escape(_stop_line(s))}</b></div>")
    if error_groups(s):
        rows = "".join(
            f'<b style="color: {_COLORS["danger"]}; white-space: nowrap">{html.escape(name)} '
            f'×{_n(count)}</b><span style="{_MONO}" title="{html.escape(message)}">'
            f"{html.escape(message)}</span>"
            for name, count, message in error_groups(s)
        )
        lines.append(
            f'<div style="margin-top: 4px; padding: 3px 8px; border-left: 3px solid '
            f'{_COLORS["danger"]}; background: {_COLORS["danger"]}0d; display: grid; '
            f'grid-template-columns: max-content minmax(0, 1fr); gap: 0 10px">{rows}</div>'
        )
    if s.message:
        lines.append(f'<div style="{_MUTED}">{html.escape(s.message)}</div>')
    return f'<div style="{_FONT}; min-width: 0; overflow: hidden">' + "".join(lines) + "</div>"


def render_html(s: Snapshot, hint: str = "") -> str:
    """The whole panel as static HTML (no widgets): a bar drawn with divs, counts, errors."""
    style, _ = outcome(s)
    bar = (
        f'<div style="height: 10px; margin: 6px 0; border-radius: 5px; '
        f'background: var(--jp-layout-color3, #e0e0e0); overflow: hidden">'
        f'<div style="width: {_percent(s)}%; height: 100%; background: {_COLORS[style]}"></div>'
        "</div>"
    )
    extra = f'<div style="{_FONT}; {_MUTED}; font-size: 0.85em">{html.escape(hint)}</div>' \
        if hint else ""
    return (
        '<div class="batchmagic-panel" style="max-width: 760px; padding: 8px 12px; '
        'border: 1px solid var(--jp-border-color2, #e0e0e0); border-radius: 6px">'
        f"{header_html(s)}{bar}{body_html(s)}{extra}</div>"
    )


class Panel:
    """The live panel: title, progress bar, counts and rates, errors, Pause / Resume / Cancel.

    ``control(action)`` is called with "pause", "resume" or "cancel" when a button is clicked.
    Clicks reach the kernel only while it is idle, so the buttons are live for background runs;
    a foreground run shows them disabled with a tooltip saying how to stop it.
    """

    def __init__(self, snap: Snapshot, control: Callable[[str], None] | None = None, *,
                 background: bool = False):
        import ipywidgets as w

        self.snap = snap
        self._control = control
        self._live_controls = background and control is not None
        # min_width 0 lets long error lines be cut off with an ellipsis instead of widening the box
        self.header = w.HTML(header_html(snap), layout=w.Layout(width="100%", min_width="0"))
        self.bar = w.IntProgress(value=0, min=0, max=max(snap.rows, 1), description="0%",
                                 bar_style="info", style={"description_width": "3.2em"},
                                 layout=w.Layout(width="100%"))
        self.body = w.HTML(body_html(snap), layout=w.Layout(width="100%", min_width="0"))
        self.buttons = {
            "pause": w.Button(description="Pause", icon="pause", tooltip="Pause the run: "
                              "requests in flight finish, no new ones start"),
            "resume": w.Button(description="Resume", icon="play", tooltip="Resume sending"),
            "cancel": w.Button(description="Cancel", icon="stop", button_style="danger",
                               tooltip="Cancel the run; finished rows are kept"),
        }
        for action, button in self.buttons.items():
            button.layout = w.Layout(width="auto")
            button.on_click(lambda _b, a=action: self._click(a))
            if not self._live_controls:
                button.tooltip = _FG_TOOLTIP if control is not None else _BG_TOOLTIP
        self.box = w.VBox(
            [self.header, self.bar, self.body, w.HBox(list(self.buttons.values()))],
            layout=w.Layout(max_width="760px", padding="8px 12px", margin="2px 0",
                            border="1px solid var(--jp-border-color2, #e0e0e0)"),
        )
        self.box.add_class("batchmagic-panel")
        self._state = None
        self.update(snap)

    def _click(self, action: str) -> None:
        if self._control is not None and self._live_controls:
            self._control(action)

    def update(self, snap: Snapshot) -> None:
        self.snap = snap
        style, _ = outcome(snap)
        with self.bar.hold_sync():  # value, style and percentage in one message
            self.bar.max = max(snap.rows, 1)
            self.bar.value = answered(snap) if snap.rows else 1
            self.bar.bar_style = style
            self.bar.description = f"{_percent(snap)}%"
        body = body_html(snap)
        if body != self.body.value:
            self.body.value = body
        if snap.state != self._state:  # the header and buttons change only with the state
            self._state = snap.state
            self.header.value = header_html(snap)
            running = snap.finished is None and snap.state in ("starting", "running", "paused")
            live = running and self._live_controls
            self.buttons["pause"].disabled = not (live and snap.state != "paused")
            self.buttons["resume"].disabled = not (live and snap.state == "paused")
            self.buttons["cancel"].disabled = not live
            self.buttons["cancel"].button_style = "danger" if live else ""  # no red when inert

    def send_state(self) -> None:
        """Send every control's whole state again (see ``WidgetDisplay.republish``)."""
        for widget in (self.header, self.bar, self.body, *self.buttons.values()):
            widget.send_state()

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
        widgets = [self.box, self.header, self.bar, self.body, *self.buttons.values(),
                   *self.box.children]
        return [wid.get_state() for wid in widgets]


class StaticPanel:
    """The panel without widgets (a kernel without ipywidgets): redrawn through a display handle."""

    HINT = "pip install 'batchmagic[notebook]' (ipywidgets) for a live panel with controls"

    def __init__(self, snap: Snapshot):
        self.snap = snap

    def _repr_html_(self) -> str:
        return render_html(self.snap, hint=self.HINT)

    def _repr_pretty_(self, p, cycle: bool) -> None:
        p.text(render_text(self.snap))

    def __repr__(self) -> str:
        return render_text(self.snap)
