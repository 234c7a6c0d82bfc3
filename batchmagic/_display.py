"""Chooses how a run's progress is shown and throttles updates.

Renderers read ``Progress.snapshot()`` on the run's one refresh timer (at most
``MAX_UPDATES_PER_S``), so per-row work never touches the display and a 100,000-row run prints no
line per row. The choice (as tqdm.autonotebook makes it):

- inside a real ipykernel with ipywidgets importable: the widget panel (``_widget.Panel``), at
  most two comm messages per update, its mimebundle carrying text and HTML for front ends that
  do not render widgets;
- inside a kernel without ipywidgets: the same panel as static HTML, redrawn through a display
  handle at most once a second;
- anywhere else (plain Python, a terminal): a tqdm bar on stderr, or for a background run (the
  prompt is the user's while it goes on) one line when it ends.

When a run ends, its panel is replaced by the static HTML and text rendering of its final state
and the widgets are closed: a saved notebook, ``nbconvert --execute``, an HTML export or a static
viewer shows the result with no widget model, script or network.

Displays are created in the thread that starts the run: in a kernel, that ties the output to the
cell that started it (the loop thread has no cell of its own).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable

from ._progress import Snapshot

MAX_UPDATES_PER_S = 4  # panel: at most 2 comm messages per update, so <= 8 a second
_NOISY_LOGGERS = ("httpx", "httpcore", "httpx2", "httpcore2", "aiohttp", "openai", "urllib3")


class TextDisplay:
    """A tqdm bar: rows done, rows/s, ok / failed / retries, tokens/s."""

    def __init__(self, snap: Snapshot, file=None):
        from tqdm.std import tqdm

        self.bar = tqdm(total=snap.rows, desc=snap.title or "batch", unit="row",
                        file=file if file is not None else sys.stderr, dynamic_ncols=True,
                        mininterval=1.0 / MAX_UPDATES_PER_S, leave=True)
        self._last = -1
        self._message = ""

    def update(self, snap: Snapshot) -> None:
        if snap.done == self._last and snap.state == "running" and snap.message == self._message:
            return
        self._last = snap.done
        self._message = snap.message
        if snap.title and snap.title != self.bar.desc:  # e.g. a limit learned while running
            self.bar.set_description_str(snap.title, refresh=False)
        if snap.rows and snap.rows != self.bar.total:  # rows counted as a cluster reads them
            self.bar.total = snap.rows
        self.bar.n = snap.done
        self.bar.set_postfix_str(_postfix(snap), refresh=False)
        self.bar.refresh()

    def close(self, snap: Snapshot) -> None:
        self.bar.n = snap.done
        self.bar.set_postfix_str(_postfix(snap), refresh=False)
        self.bar.close()
        line = summary_line(snap)
        if line:
            print(line, file=self.bar.fp)


def _postfix(s: Snapshot) -> str:
    parts = [f"ok={s.ok}"]
    if s.failures:
        parts.append(f"failed={s.failures}")
    if s.retries:
        parts.append(f"retries={s.retries}")
    if s.rate_limited:
        parts.append(f"429s={s.rate_limited}")
    if s.cached:
        parts.append(f"cached={s.cached}")
    if s.input_tokens or s.output_tokens:
        parts.append(f"tok/s={s.tokens_per_s:,.0f}")
    if s.state == "paused":
        parts.append("PAUSED")
    elif s.message and s.state == "running":  # e.g. a Batch API job's provider status
        parts.append(s.message if len(s.message) <= 80 else s.message[:77] + "...")
    return " ".join(parts)


def _tally(s: Snapshot) -> str:
    """"12 ok, 4 cancelled in flight, 64 not started of 80 rows (errors)": counts in rows."""
    parts = [f"{s.ok} ok"]
    if s.stop_kinds:
        parts += [f"{s.cut_off} cancelled in flight", f"{s.not_started} not started"]
        if s.failures:
            parts.append(f"{s.failures} failed")
    else:
        parts.append(f"{s.failed} failed")
    text = f"{', '.join(parts)} of {s.rows} rows"
    if s.cached:
        text += f" ({s.cached} from the journal)"
    errs = ", ".join(f"{k} x{v}" for k, v in sorted(s.errors.items(), key=lambda kv: -kv[1])
                     if k not in s.stop_kinds)
    if errs:
        text += f" ({errs})"
    if s.stop_reason:  # said once: the error list above names the class only
        text += f"; reason: {s.stop_reason}"
    elif s.message:
        text += f"; {s.message}"
    return text


def summary_line(s: Snapshot) -> str:
    """One line for the end of a run with failures or a stop; empty when all went well. A stop
    says what it cost: rows cut off in flight (possibly billed) and rows never sent."""
    if not s.failed and s.state == "done":
        return ""
    head = {"cancelled": "batch cancelled", "aborted": "batch stopped"}.get(s.state, "batch finished")
    return f"{head}: {_tally(s)}"


def end_line(s: Snapshot) -> str:
    """The one line a background run prints when it ends outside a notebook."""
    from ._widget import duration, state_word

    return f"{s.title or 'batch'} {state_word(s)}: {_tally(s)} in {duration(s.elapsed)}"


class WidgetDisplay:
    """The ipywidgets panel under the cell that started the run."""

    def __init__(self, snap: Snapshot, control: Callable[[str], None] | None, background: bool):
        from IPython.display import display

        from ._widget import Panel

        self.panel = Panel(snap, control, background=background)
        self.handle = display(self.panel, display_id=True)

    def update(self, snap: Snapshot) -> None:
        self.panel.update(snap)

    def close(self, snap: Snapshot) -> None:
        """Replace the live panel by its static rendering, then close its widgets (in that
        order: a view whose model closed first would show an error until replaced)."""
        self.panel.update(snap)
        if self.handle is not None:
            self.handle.update(_final(snap))
        self.panel.close()

    def republish(self, snap: Snapshot) -> None:
        """Publish the final static panel again from the calling cell. A background run's
        messages belong to the cell that started it, which has finished; a notebook executed
        headless (nbclient, nbconvert) records only the messages of the cell it is running."""
        if self.handle is not None:
            self.handle.update(_final(snap))


class HtmlDisplay:
    """A kernel without ipywidgets: the panel as static HTML, redrawn at most once a second."""

    MIN_INTERVAL = 1.0

    def __init__(self, snap: Snapshot):
        from IPython.display import display

        from ._widget import StaticPanel

        self.view = StaticPanel(snap, hint=StaticPanel.HINT)
        self.handle = display(self.view, display_id=True)
        self._last = time.monotonic()

    def update(self, snap: Snapshot) -> None:
        now = time.monotonic()
        if now - self._last < self.MIN_INTERVAL and snap.state == self.view.snap.state:
            return
        self._last = now
        self.view.snap = snap
        if self.handle is not None:
            self.handle.update(self.view)

    def close(self, snap: Snapshot) -> None:
        if self.handle is not None:  # the final panel, as every finished run leaves it
            self.handle.update(_final(snap))

    republish = close


class EndLineDisplay:
    """A background run outside a notebook: nothing while it runs (the prompt is the user's, a
    bar would redraw under what they type), one line when it ends."""

    def __init__(self, snap: Snapshot, file=None):
        self.file = file

    def update(self, snap: Snapshot) -> None:
        pass

    def close(self, snap: Snapshot) -> None:
        print(end_line(snap), file=self.file if self.file is not None else sys.stderr,
              flush=True)


def _final(snap: Snapshot):
    """What a finished run leaves in the notebook: the panel as HTML and text, no widget."""
    from ._widget import StaticPanel

    return StaticPanel(snap)


def in_kernel() -> bool:
    """True inside a running ipykernel (not a terminal IPython, not plain Python)."""
    if "ipykernel" not in sys.modules or "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _have_ipywidgets() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def make_display(progress: bool, snap: Snapshot, *, control: Callable[[str], None] | None = None,
                 background: bool = False):
    """The display for a run, or None. ``control(action)`` pauses, resumes or cancels the run;
    ``background`` says the kernel stays free while it runs (so the panel's buttons work)."""
    if not progress:
        return None
    if in_kernel():
        if _have_ipywidgets():
            return WidgetDisplay(snap, control, background)
        return HtmlDisplay(snap)
    return EndLineDisplay(snap) if background else TextDisplay(snap)


@contextlib.contextmanager
def quiet_logs():
    """Silence HTTP client INFO logs during a run (one line per request otherwise)."""
    saved = []
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)
