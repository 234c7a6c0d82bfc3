"""The panel in a real JupyterLab, in a real browser (Debian's chromium driven by Playwright).

JupyterLab runs on 127.0.0.1 with a random port, no token, and its own temporary config, data,
runtime, settings and workspace folders (nothing of the user's leaks in); one server serves the
module. A notebook runs ``%%batch`` cells against the simulator; the test checks that finished runs
left their static panel (bar at 100 %, counts, no buttons), that Pause / Resume / Cancel work on a
background run, that the panel's text reads at 4.5:1 or more in the light and dark themes, and that
the saved notebook reopens with every panel and no "model not found". A notebook executed with
``jupyter nbconvert --execute --to html`` shows its final panels in a browser with the network off.
Screenshots go under ``test-artifacts/``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
SENTINEL = "sk-sentinel-2b9e7c4d1a6f"
TIMEOUT_MS = 90_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook(path: Path) -> None:
    code = nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[
        code("from batchmagic.simulator import SimulatorThread\n"
             "sim = SimulatorThread(latency=0.02).start()\n"
             "%load_ext batchmagic\n"
             "%config BatchMagics.provider = 'simulator'\n"
             "%config BatchMagics.base_url = sim.base_url\n"
             "%config BatchMagics.model = 'qwen-plus'\n"
             "import pandas as pd\n"
             "reviews = pd.DataFrame({'text': [f'review number {i}' for i in range(120)]})"),
        code("%%batch chat --on reviews -o labeled -c 16 --no-cache\n"
             "Classify the sentiment of this review as positive, negative or mixed: {text}"),
        code("_ = sim.configure(faults={'500': 0.1, '400_context': 0.1}, fault_seed=2)"),
        code("%%batch chat --on reviews -o risky -c 16 --no-cache\n"
             "In one word, what product is this review about? {text}"),
        # each request of the background run takes a minute: it is still running whenever the
        # test gets to its buttons, however slow the machine; Cancel ends it
        code("_ = sim.configure(faults={}, latency=60.0)"),
        code("%%batch chat --on reviews -o summaries -c 2 --bg --no-cache\n"
             "Summarise in five words: {text}"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                "language": "python"}})
    nbformat.write(nb, path)


def _isolated_jupyter(tmp_path: Path) -> dict:
    """An environment with Jupyter's folders under tmp_path and this interpreter as the
    notebook's kernel, whatever else is installed."""
    env = dict(os.environ, BATCHMAGIC_SIM_API_KEY=SENTINEL)
    for var, name in {"JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data",
                      "JUPYTER_RUNTIME_DIR": "runtime", "JUPYTERLAB_SETTINGS_DIR": "settings",
                      "JUPYTERLAB_WORKSPACES_DIR": "workspaces", "IPYTHONDIR": "ipython",
                      "BATCHMAGIC_JOURNAL_DIR": "journal"}.items():
        (tmp_path / name).mkdir()
        env[var] = str(tmp_path / name)
    spec = tmp_path / "data" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    return env


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server isolated in a temporary folder; yields (url, log_text_function)."""
    tmp_path = tmp_path_factory.mktemp("lab")
    env = _isolated_jupyter(tmp_path)
    # no news or update toasts over the notebook
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # every cell stays in the page: "full" windowing would detach cells scrolled out of view
    tracker = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    root = tmp_path / "root"
    root.mkdir()
    _notebook(root / "panel.ipynb")
    port = _free_port()
    log_path = tmp_path / "lab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={root}",
           "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False",
           "--LabApp.expose_app_in_browser=True"]  # to switch themes and save from the test
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI runs as root
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)

    def log_text() -> str:
        return log_path.read_text(errors="replace")[-6000:]

    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log_text()}")
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within 90 s:\n{log_text()}")
                time.sleep(0.3)
        yield url, log_text
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# Every check below is a Playwright locator with auto-waiting (``expect``): JupyterLab re-renders a
# panel when its cell's display is updated (the final update at the end of a run draws a new
# widget view), so an element handle kept across that points at a node no longer in the page
# ("Element is not attached to the DOM"), and text read once may be from before the update.


def _run_all(page) -> None:
    """Run > Run All Cells once the kernel is connected and idle; again only if Lab dropped the
    request (a run issued while the kernel is still connecting leaves every cell unexecuted)."""
    from playwright.sync_api import expect

    prompts = page.locator(".jp-Cell .jp-InputPrompt")
    started = prompts.filter(has_text=re.compile(r"\[[*0-9]+\]"))
    for attempt in range(3):
        expect(page.get_by_text(re.compile(r"Python 3.* \| Idle")).first).to_be_visible()
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            # Lab marks queued cells [*] at once, before the kernel answers
            expect(started.first).to_be_visible(timeout=30_000)
            return
        except AssertionError:
            if attempt == 2 or started.count():  # never run the cells twice
                raise


def _expect_text(locator, *needles) -> None:
    from playwright.sync_api import expect

    for needle in needles:
        expect(locator).to_contain_text(needle)


#: every text element of the panels on the page: its text, its colour and the WCAG contrast of
#: that colour over the backgrounds beneath it (alpha composited, as the browser paints them)
_CONTRAST_JS = """() => {
  const parse = c => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const over = (top, bottom) => [0, 1, 2].map(i => top[3] * top[i] + (1 - top[3]) * bottom[i])
    .concat([1]);
  const backdrop = el => { const chain = []; for (let e = el; e; e = e.parentElement) chain.push(e);
    let bg = [255, 255, 255, 1];
    for (const e of chain.reverse()) { const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c[3] > 0) bg = over(c, bg); }
    return bg; };
  const lum = c => { const l = [0, 1, 2].map(i => { const v = c[i] / 255;
    return v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
    return 0.2126 * l[0] + 0.7152 * l[1] + 0.0722 * l[2]; };
  const found = [];
  for (const panel of document.querySelectorAll('.jp-OutputArea-output .batchmagic-panel')) {
    for (const el of panel.querySelectorAll('*')) {
      if (el.closest('button')) continue;  // ipywidgets' own buttons, not the panel's drawing
      if (![...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
      const bg = backdrop(el); const fg = over(parse(getComputedStyle(el).color), bg);
      const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
      found.push({text: el.textContent.trim().slice(0, 40), ratio: (hi + 0.05) / (lo + 0.05)});
    }
  }
  return found;
}"""


def _contrast(page, theme: str) -> float:
    """The lowest contrast of any text in the panels; prints it for the record."""
    found = page.evaluate(_CONTRAST_JS)
    assert found, "no panel text on the page"
    worst = min(found, key=lambda f: f["ratio"])
    print(f"\n{theme}: {len(found)} text elements, lowest contrast {worst['ratio']:.2f}:1 "
          f"({worst['text']!r})")
    return worst["ratio"]


def _use_theme(page, theme: str) -> None:
    page.evaluate(f"window.jupyterapp.commands.execute('apputils:change-theme', "
                  f"{{theme: {theme!r}}}).then(() => true)")
    light = "true" if "Light" in theme else "false"
    page.wait_for_function(f"document.body.dataset.jpThemeLight === '{light}'")
    page.locator("#jupyterlab-splash").wait_for(state="detached")  # the theme is painted


def test_panel_in_jupyterlab(lab):
    from playwright.sync_api import expect, sync_playwright

    url, log_text = lab
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "lab-failure.png").unlink(missing_ok=True)  # only this run's failure, if any
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            page.goto(f"{url}/lab/tree/panel.ipynb")
            expect(page.locator(".jp-Notebook .jp-Cell").first).to_be_visible()
            _run_all(page)

            panels = page.locator(".jp-OutputArea-output .batchmagic-panel")
            green = panels.nth(0)
            # a finished run left its static panel: the final state, no widget, no buttons
            _expect_text(green, "done", "chat qwen-plus @ simulator", "120 rows · 120 sent",
                         "120/120 rows (100%)", "120/120 requests", "ok 120", "req/s", "tok/s")
            expect(green).not_to_contain_text("failed")  # a count of zero is left out
            expect(green.locator(".batchmagic-bar .batchmagic-ok")).to_have_attribute(
                "style", re.compile(r"width:\s*100\.000%"))
            expect(green.locator("button")).to_have_count(0)
            expect(green).not_to_have_class(re.compile(r"widget-vbox"))
            green.screenshot(path=str(ARTIFACTS / "panel.png"))

            red = panels.nth(1)
            _expect_text(red, re.compile(r"finished, \d+ failed"), "ContextLengthError",
                         "120/120 requests")
            # a stacked bar: most rows ok, the failed ones red, never a bar red whole
            expect(red.locator(".batchmagic-bar .batchmagic-ok")).to_be_visible()
            expect(red.locator(".batchmagic-bar .batchmagic-failed")).to_be_visible()
            red.screenshot(path=str(ARTIFACTS / "panel-errors.png"))

            bg = panels.nth(2)  # a background run still going: the live widget, with buttons
            expect(bg).to_have_class(re.compile(r"widget-vbox"))
            pause, resume, cancel = (bg.locator("button", has_text=n) for n in
                                     ("Pause", "Resume", "Cancel"))
            _expect_text(bg, "running")
            expect(pause).to_be_enabled()
            pause.click()
            _expect_text(bg, "paused")
            expect(resume).to_be_enabled()
            bg.screenshot(path=str(ARTIFACTS / "panel-paused.png"))
            resume.click()
            _expect_text(bg, "running")
            expect(cancel).to_be_enabled()
            cancel.click()
            _expect_text(bg, "cancelled", "cancelled in flight", "not started")
            expect(bg.locator("button")).to_have_count(0)  # ended: the static panel
            bg.screenshot(path=str(ARTIFACTS / "panel-background.png"))
            expect(panels).to_have_count(3)
            page.screenshot(path=str(ARTIFACTS / "lab.png"), full_page=True)
            assert SENTINEL not in page.content()

            assert _contrast(page, "JupyterLab Light") >= 4.5
            _use_theme(page, "JupyterLab Dark")
            assert _contrast(page, "JupyterLab Dark") >= 4.5
            page.screenshot(path=str(ARTIFACTS / "lab-dark.png"), full_page=True)

            # saved and reopened: every panel is there, none reads "model not found"
            page.evaluate("window.jupyterapp.commands.execute('docmanager:save')"
                          ".then(() => true)")
            expect(page.locator(".lm-TabBar-tab.jp-mod-dirty")).to_have_count(0)
            page.reload()
            expect(panels).to_have_count(3)
            _expect_text(panels.nth(0), "done", "ok 120")
            _expect_text(panels.nth(2), "cancelled", "not started")
            expect(page.get_by_text(re.compile("Error displaying widget|model not found"))
                   ).to_have_count(0)
            _use_theme(page, "JupyterLab Light")
        except Exception as exc:
            page.screenshot(path=str(ARTIFACTS / "lab-failure.png"), full_page=True)
            raise AssertionError(f"{exc}\n--- JupyterLab log (tail) ---\n{log_text()}") from exc
        finally:
            browser.close()


def _export_notebook(path: Path) -> None:
    code = nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[
        code("from batchmagic.simulator import SimulatorThread\n"
             "sim = SimulatorThread(latency=0.01).start()\n"
             "%load_ext batchmagic\n"
             "%config BatchMagics.provider = 'simulator'\n"
             "%config BatchMagics.base_url = sim.base_url\n"
             "%config BatchMagics.model = 'qwen-plus'\n"
             "import pandas as pd\n"
             "reviews = pd.DataFrame({'text': [f'review {i}' for i in range(20)]})"),
        code("%%batch chat --on reviews -o labeled --no-cache\nLabel: {text}"),
        code("%%batch chat --on reviews -o summaries --no-cache --bg -c 2\nSummarise: {text}"),
        code("%batch_wait --timeout 60\nsim.stop()"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                "language": "python"}})
    nbformat.write(nb, path)


def test_an_executed_and_exported_notebook_shows_its_panels_offline(tmp_path):
    """``jupyter nbconvert --execute --to html``, then the HTML in a browser with the network
    off: both runs' final panels are there (a widget would need a script from a CDN)."""
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    env = _isolated_jupyter(tmp_path)
    _export_notebook(tmp_path / "export.ipynb")
    done = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html",
                           "--execute", "export.ipynb"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    exported = tmp_path / "export.html"
    assert SENTINEL not in exported.read_text()
    asked: list[str] = []
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(offline=True)

        def only_the_file(route):
            if not route.request.url.startswith("file://"):
                asked.append(route.request.url)
                route.abort()
            else:
                route.continue_()

        context.route("**/*", only_the_file)
        page = context.new_page()
        try:
            page.goto(exported.as_uri())
            panels = page.locator(".batchmagic-panel")
            expect(panels).to_have_count(2)
            _expect_text(panels.nth(0), "chat qwen-plus @ simulator", "done", "20 rows · 20 sent",
                         "20/20 rows (100%)", "ok 20")
            _expect_text(panels.nth(1), "done", "ok 20")  # the background run's final state
            expect(panels.nth(0).locator(".batchmagic-bar .batchmagic-ok")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "export-offline.png"), full_page=True)
        finally:
            browser.close()
    print(f"\nrequests refused while the export was shown: {len(asked)}")
