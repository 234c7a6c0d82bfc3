"""The panel in a real JupyterLab, in a real browser (Debian's chromium driven by Playwright).

JupyterLab runs on 127.0.0.1 with a random port, no token, and its own temporary config, data,
runtime, settings and workspace folders (nothing of the user's leaks in). A notebook runs
``%%batch`` cells against the simulator; the test checks that the widget panel rendered (bar at
100 %, counts, buttons), that Pause / Resume / Cancel work on a background run, and saves
screenshots under ``test-artifacts/``.
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


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server isolated in tmp_path; yields (url, log_text_function)."""
    env = dict(os.environ, BATCHMAGIC_SIM_API_KEY=SENTINEL)
    for var, name in {"JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data",
                      "JUPYTER_RUNTIME_DIR": "runtime", "JUPYTERLAB_SETTINGS_DIR": "settings",
                      "JUPYTERLAB_WORKSPACES_DIR": "workspaces", "IPYTHONDIR": "ipython",
                      "BATCHMAGIC_JOURNAL_DIR": "journal"}.items():
        (tmp_path / name).mkdir()
        env[var] = str(tmp_path / name)
    # this interpreter as the notebook's kernel, whatever else is installed
    spec = tmp_path / "data" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
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
           "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
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


def _expect_buttons(panel, *, enabled: bool) -> None:
    from playwright.sync_api import expect

    buttons = panel.locator("button")
    expect(buttons).to_have_text(["Pause", "Resume", "Cancel"])
    for i in range(3):
        if enabled:
            expect(buttons.nth(i)).to_be_enabled()
        else:
            expect(buttons.nth(i)).to_be_disabled()


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

            panels = page.locator(".batchmagic-panel.widget-vbox")  # the widget, not a fallback
            green = panels.nth(0)
            _expect_text(green, "done", "chat qwen-plus @ simulator", "120 rows → 120 requests",
                         "120 / 120 rows (100%)", "120/120 requests", "ok 120", "failed 0",
                         "req/s", "tok/s")
            bar = green.locator(".widget-hprogress .progress-bar")
            expect(bar).to_have_attribute("style", re.compile(r"width:\s*100%"))
            expect(bar).to_have_class(re.compile(r"\bprogress-bar-success\b"))
            _expect_buttons(green, enabled=False)  # foreground: interrupt the kernel instead
            green.screenshot(path=str(ARTIFACTS / "panel.png"))

            red = panels.nth(1)
            _expect_text(red, re.compile(r"finished, \d+ failed"), "ContextLengthError",
                         "120/120 requests")
            expect(red.locator(".widget-hprogress .progress-bar")).to_have_class(
                re.compile(r"\bprogress-bar-danger\b"))
            red.screenshot(path=str(ARTIFACTS / "panel-errors.png"))

            bg = panels.nth(2)
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
            _expect_text(bg, "cancelled", "not started")
            _expect_buttons(bg, enabled=False)
            bg.screenshot(path=str(ARTIFACTS / "panel-background.png"))
            expect(panels).to_have_count(3)
            page.screenshot(path=str(ARTIFACTS / "lab.png"), full_page=True)
            assert SENTINEL not in page.content()
        except Exception as exc:
            page.screenshot(path=str(ARTIFACTS / "lab-failure.png"), full_page=True)
            raise AssertionError(f"{exc}\n--- JupyterLab log (tail) ---\n{log_text()}") from exc
        finally:
            browser.close()
