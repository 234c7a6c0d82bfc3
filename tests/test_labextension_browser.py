"""The JupyterLab extension (labextension/) in a real JupyterLab and a real Notebook 7, in a real
browser (Debian's chromium driven by Playwright), with this tree's build of the extension.

- the editor: a ``%%batch`` cell's first line is styled as options and its body as a prompt
  template, ``{column}`` fields marked and no Python keyword styling left on its words;
- the "Batch runs" sidebar: a run made by a real ``%%batch`` against the simulator, a live
  background run, and a Batch API job made against the simulator by a process that has gone,
  all read from the notebook folder's journal; another folder picked by hand; the job refreshed,
  cancelled, downloaded as CSV and loaded by an inserted cell;
- the status bar: the kernel's live run with its progress, gone once the run is cancelled;
- Notebook 7: the same editor styling and the sidebar, opened from the command palette;
- completion: Tab inside ``{`` of a ``%%batch`` template offers the ``--on`` frame's columns;
- no console errors anywhere, no key in any page.

One server per app serves the module. Screenshots go under ``test-artifacts/``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import nbformat
import pandas as pd
import pytest
from lab_servers import CHROMIUM, CHROMIUM_ARGS, built, jupyter
from test_lab_browser import _CONTRAST_JS, ARTIFACTS, _run_all, _use_theme

import batchmagic as bm
from batchmagic.simulator import SimulatorThread

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not built(), reason="the lab extension is not built: "
                       "pip install -e . (or jlpm build in labextension/) builds it"),
]

SENTINEL = "sk-sentinel-4f8a2c6e1b9d"
TIMEOUT_MS = 90_000

JOB_SCRIPT = """
import sys, pandas as pd, batchmagic as bm
rows = pd.DataFrame({"text": [f"row {i}" for i in range(6)]})
job = bm.submit(rows, "Say: {text}", model="qwen-plus", provider="simulator",
                base_url=sys.argv[1], cache=sys.argv[2], mode="batch-api", progress=False,
                batch_options={"poll_interval": 0.05, "max_poll_interval": 0.2})
job._wait_submitted()
print(job.id)
"""

BATCH_CELL = ("%%batch chat --on reviews -o labeled --max-tokens 20 --bg\n"
              "Is this {text} good or bad, as in is it worth it? Say {{yes}} or no.\n"
              "For {title!r:>10} from llama.cpp")


def _notebook(path, *sources: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(s) for s in sources],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}})
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lab")
    with jupyter("lab", tmp, env={"BATCHMAGIC_SIM_API_KEY": SENTINEL},
                 args=("--LabApp.expose_app_in_browser=True",)) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class _Page:
    """A page that records console errors and uncaught exceptions."""

    def __init__(self, browser, name: str):
        self.name = name
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                           accept_downloads=True)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error"
                     else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is not None:
            self.page.screenshot(path=str(ARTIFACTS / f"{self.name}-failure.png"),
                                 full_page=True)
        self.context.close()


#: every text node of a cell's editor: its line's classes, the classes of the batchmagic mark
#: around it, and its computed colour and weight next to its line's own
_TOKENS_JS = """cell => {
  const out = [];
  for (const line of cell.querySelectorAll('.cm-line')) {
    const lineStyle = getComputedStyle(line);
    const walker = document.createTreeWalker(line, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      const el = n.parentElement; const s = getComputedStyle(el);
      const mark = el.closest('[class*="cm-batchmagic-"]:not(.cm-line)');
      out.push({text: n.textContent, line: line.className,
                mark: mark ? mark.className : '', color: s.color, weight: s.fontWeight,
                lineColor: lineStyle.color});
    }
  }
  return out;
}"""


#: the sidebar's text over its background, as the panel's contrast check measures it
_SIDEBAR_CONTRAST_JS = _CONTRAST_JS.replace("'.jp-OutputArea-output .batchmagic-panel'",
                                            "'#batchmagic-runs'")


def _tokens(page, index: int) -> list[dict]:
    cell = page.locator(".jp-Notebook .jp-Cell .cm-content").nth(index)
    return cell.evaluate(_TOKENS_JS)


def _check_highlighting(page) -> None:
    """Cell 0 is plain Python, cell 1 a ``%%batch`` cell (BATCH_CELL)."""
    from playwright.sync_api import expect

    expect(page.locator(".cm-batchmagic-field").first).to_be_visible()
    # plain Python keeps Python's styling: the check below would see it if it leaked
    python = _tokens(page, 0)
    assert any(t["weight"] != "400" or t["color"] != t["lineColor"]
               for t in python if t["text"].strip()), python
    assert not any("batchmagic" in t["line"] for t in python)
    tokens = _tokens(page, 1)
    options = [t for t in tokens if "cm-batchmagic-options" in t["line"]]
    prompt = [t for t in tokens if "cm-batchmagic-prompt" in t["line"]]
    assert options and prompt and len(options) + len(prompt) == len(tokens), tokens

    def marked(kind: str, part: list[dict]) -> list[str]:
        """The words marked ``kind``: neighbouring text nodes of one kind joined (a Python
        token inside a mark splits it into several nodes)."""
        groups: list[list] = []
        for t in part:
            k = re.search(r"cm-batchmagic-(\w+)", t["mark"])
            k = k.group(1) if k else ""
            if groups and groups[-1][0] == k and groups[-1][2] == t["line"]:
                groups[-1][1] += t["text"]
            else:
                groups.append([k, t["text"], t["line"]])
        return [w for k2, text, _ in groups if k2 == kind for w in text.split()]

    assert marked("magic", options) == ["%%batch"]
    assert marked("kind", options) == ["chat"]
    assert marked("flag", options) == ["--on", "-o", "--max-tokens", "--bg"]
    assert marked("value", options) == ["reviews", "labeled", "20"]
    assert marked("field", prompt) == ["{text}", "{title!r:>10}"]
    assert marked("escape", prompt) == ["{{", "}}"]
    # the prompt's words (is, as, in, or, for, from, llama.cpp) read as plain text
    plain = [t for t in prompt if "cm-batchmagic-" not in t["mark"] and t["text"].strip()]
    assert "or" in " ".join(t["text"] for t in plain)
    for t in plain:
        assert (t["color"], t["weight"]) == (t["lineColor"], "400"), t
    fields = [t for t in prompt if "cm-batchmagic-field" in t["mark"]]
    assert all(t["color"] != t["lineColor"] for t in fields), fields


def _open_notebook(page, url: str) -> None:
    from playwright.sync_api import expect

    if "/lab/" in url:
        # a fresh workspace: JupyterLab reopens the last test's notebooks otherwise, and "Run All
        # Cells" could then run the wrong one (seen in a full run: none of this one's cells ran)
        url += ("&" if "?" in url else "?") + "reset"
    page.goto(url)
    expect(page.locator(".jp-Notebook .jp-Cell").first).to_be_visible()


def test_batch_cells_are_styled_as_options_and_template(lab, browser):
    _notebook(lab.root / "edit.ipynb",
              "import pandas as pd\nx = [i for i in range(3) if i is not None or True]",
              BATCH_CELL)
    with _Page(browser, "lab-editor") as p:
        page = p.page
        _open_notebook(page, f"{lab.url}/lab/tree/edit.ipynb?token={lab.token}")
        _check_highlighting(page)
        cells = page.locator(".jp-Notebook .jp-Cell").nth(1)
        cells.screenshot(path=str(ARTIFACTS / "lab-editor.png"))
        _use_theme(page, "JupyterLab Dark")
        _check_highlighting(page)
        cells.screenshot(path=str(ARTIFACTS / "lab-editor-dark.png"))
        _use_theme(page, "JupyterLab Light")
    assert not p.errors, p.errors


def _job(sim, journal) -> str:
    made = subprocess.run([sys.executable, "-c", JOB_SCRIPT, sim.base_url, str(journal)],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, BATCHMAGIC_SIM_API_KEY=SENTINEL))
    assert made.returncode == 0, made.stderr
    return made.stdout.split()[-1]


def test_sidebar_and_status_bar(lab, browser):
    """Runs and a job of the notebook folder's journal in the sidebar; the job acted on; the
    live run in the status bar; another folder picked."""
    from playwright.sync_api import expect

    folder = lab.root / "proj"
    # the job stays in progress until it is cancelled: a line every ten minutes, and its "24h"
    # window lasts two hours here
    with SimulatorThread(latency=0.01, batch_seconds=3600.0, batch_day_seconds=7200.0) as sim:
        # a job submitted by a process that has gone, still running at the provider
        job_id = _job(sim, folder / ".batchmagic")
        bm.batch(["a", "b", "c", "d"], provider="simulator", base_url=sim.base_url,
                 api_key=SENTINEL, model="qwen-plus", progress=False,
                 cache=lab.root / "elsewhere" / ".batchmagic")
        _notebook(folder / "runs.ipynb",
                  "from batchmagic.simulator import SimulatorThread\n"
                  "sim = SimulatorThread(latency=0.01).start()\n"
                  "%load_ext batchmagic\n"
                  "%config BatchMagics.provider = 'simulator'\n"
                  "%config BatchMagics.base_url = sim.base_url\n"
                  "%config BatchMagics.model = 'qwen-plus'\n"
                  "import pandas as pd\n"
                  "reviews = pd.DataFrame({'text': [f'review {i}' for i in range(30)]})",
                  "%%batch chat --on reviews -o labeled\nClassify: {text}",
                  # each request of the background run takes a minute: live until cancelled
                  "_ = sim.configure(latency=60.0)",
                  "%%batch chat --on reviews -o slow -c 2 --bg\nSummarise: {text}")
        with _Page(browser, "lab-sidebar") as p:
            page = p.page
            _open_notebook(page, f"{lab.url}/lab/tree/proj/runs.ipynb?token={lab.token}")
            _run_all(page)
            live_panel = page.locator(".jp-OutputArea-output .batchmagic-panel").nth(1)
            expect(live_panel.locator("button", has_text="Cancel")).to_be_enabled()

            # the sidebar's styles stay in the sidebar: the panel's state badge (same class
            # name) gets no second dot
            badge = page.locator(".jp-OutputArea-output .batchmagic-panel .batchmagic-state")
            assert badge.first.evaluate(
                "e => getComputedStyle(e, '::before').content") in ("none", "normal")

            # the status bar: this kernel's live run and its progress
            status = page.locator(".batchmagic-status")
            expect(status).to_contain_text(re.compile(r"batchmagic: 1 run · \d+/30 rows"))
            page.locator("#jp-main-statusbar").screenshot(path=str(ARTIFACTS / "lab-status.png"))

            # the sidebar follows the notebook's folder
            page.locator('.jp-SideBar .lm-TabBar-tab[data-id="batchmagic-runs"]').click()
            side = page.locator("#batchmagic-runs")
            expect(side.locator(".batchmagic-folder-input")).to_have_value("proj")
            expect(side.locator(".batchmagic-journal")).to_contain_text("proj/.batchmagic")
            # the kernel's two runs, and the run that submitted the job (its process gone)
            runs = side.locator("tr.batchmagic-run")
            expect(runs).to_have_count(3)
            done = side.locator("tr.batchmagic-state-done")
            expect(done.locator("td")).to_have_text(
                ["done", "30", "30", "0", re.compile(r"\$|—"), "qwen-plus", re.compile(r"\d")])
            expect(side.locator("tr.batchmagic-state-running")).to_contain_text(
                re.compile(r"running\s*\d+/30"))
            job = side.locator(f'.batchmagic-job[data-job-id="{job_id}"]')
            expect(job).to_contain_text("0/6 requests done")
            expect(job.locator(".batchmagic-state")).to_have_text("running")
            expect(side).to_have_attribute("data-live", "true")
            side.screenshot(path=str(ARTIFACTS / "lab-sidebar.png"))

            # the job: the provider asked, then the job cancelled (after a confirmation)
            message = job.locator(".batchmagic-job-message")
            job.locator("button", has_text="Refresh status").click()
            expect(message).to_contain_text("in_progress")
            job.locator("button", has_text="Cancel").click()
            page.locator(".jp-Dialog button", has_text="Cancel job").click()
            expect(message).to_contain_text("cancel")
            [remote] = sim._admin("GET", "/_sim/batches")["batches"]
            assert remote["cancelled"]
            # asked again until harvested (the provider ends a cancelled batch in its own time)
            deadline = time.monotonic() + 60
            refresh = job.locator("button", has_text="Refresh status")
            while job.locator(".batchmagic-state").inner_text() != "finished":
                assert time.monotonic() < deadline, "the cancelled job was never harvested"
                expect(refresh).to_be_enabled()
                refresh.click()
                expect(refresh).to_be_enabled()
            expect(job.locator("button", has_text="Cancel")).to_be_disabled()

            with page.expect_download() as download:
                job.locator("button", has_text="CSV").click()
            assert download.value.suggested_filename == f"job-{job_id}.csv"
            frame = pd.read_csv(download.value.path())
            assert frame["text"].tolist() == [f"row {i}" for i in range(6)]
            cancelled = frame["error"].str.contains("cancelled", na=False)
            assert cancelled.any() and (cancelled | frame["error"].isna()).all(), frame

            # a cell that loads the job's result, inserted into the notebook and run there
            job.locator("button", has_text="Insert cell").click()
            inserted = page.locator(".jp-Notebook .jp-Cell", has_text="bm.job(")
            expect(inserted).to_contain_text(f'bm.job("{job_id}", cache=".batchmagic")')
            inserted.locator(".jp-InputPrompt").click()
            page.keyboard.press("Shift+Enter")
            expect(inserted.locator(".jp-OutputArea-output").last).to_contain_text("row 5")

            # the live run cancelled from its panel: gone from the status bar, the sidebar
            # shows it stopped
            live_panel.locator("button", has_text="Cancel").click()
            expect(side.locator("tr.batchmagic-state-running")).to_have_count(0)
            expect(side.locator("tr.batchmagic-state-cancelled")).to_have_count(1)
            expect(status).to_be_hidden()

            # any folder picked by hand, then back to the notebook's
            side.locator(".batchmagic-folder-input").fill("elsewhere")
            side.locator(".batchmagic-folder-input").press("Enter")
            expect(side.locator("tr.batchmagic-run")).to_have_count(1)
            expect(side.locator("tr.batchmagic-state-done td").nth(1)).to_have_text("4")
            expect(side.locator(".batchmagic-empty")).to_contain_text("No Batch API jobs")
            side.locator("button", has_text="Notebook's folder").click()
            expect(side.locator(".batchmagic-folder-input")).to_have_value("proj")
            expect(side.locator("tr.batchmagic-run")).to_have_count(3)

            worst = min(page.evaluate(_SIDEBAR_CONTRAST_JS), key=lambda r: r["ratio"])
            _use_theme(page, "JupyterLab Dark")
            worst_dark = min(page.evaluate(_SIDEBAR_CONTRAST_JS), key=lambda r: r["ratio"])
            print(f"\nsidebar text, lowest contrast: light {worst}, dark {worst_dark}")
            assert min(worst["ratio"], worst_dark["ratio"]) >= 4.5
            side.screenshot(path=str(ARTIFACTS / "lab-sidebar-dark.png"))
            _use_theme(page, "JupyterLab Light")
            assert SENTINEL not in page.content()
    assert not p.errors, p.errors


NOTEBOOK7_OWN_ERROR = "uncaught: Cannot read properties of undefined (reading 'schema')"


@pytest.fixture(scope="module")
def notebook7(tmp_path_factory):
    pytest.importorskip("notebook", minversion="7")
    tmp = tmp_path_factory.mktemp("notebook7")
    with jupyter("notebook", tmp, env={"BATCHMAGIC_SIM_API_KEY": SENTINEL},
                 args=("--JupyterNotebookApp.expose_app_in_browser=True",)) as server:
        yield server


def test_notebook7_styles_batch_cells_and_has_the_sidebar(notebook7, browser):
    from playwright.sync_api import expect

    server = notebook7
    _notebook(server.root / "nb7" / "edit.ipynb",
              "import pandas as pd\nx = [i for i in range(3) if i is not None or True]",
              BATCH_CELL)
    with _Page(browser, "notebook7") as p:
        page = p.page
        page.goto(f"{server.url}/tree?token={server.token}")  # the file browser page loads too
        expect(page.locator(".jp-DirListing-item", has_text="nb7")).to_be_visible()
        _open_notebook(page, f"{server.url}/notebooks/nb7/edit.ipynb")
        _check_highlighting(page)
        page.evaluate("window.jupyterapp.commands.execute('batchmagic:open-runs')"
                      ".then(() => true)")
        side = page.locator("#batchmagic-runs")
        expect(side).to_be_visible()
        expect(side.locator(".batchmagic-folder-input")).to_have_value("nb7")
        expect(side.locator(".batchmagic-journal")).to_contain_text(
            "no journal in nb7 yet (nb7/.batchmagic/)")
        page.screenshot(path=str(ARTIFACTS / "notebook7.png"))
    # Notebook 7.6's own settings code throws this on every page load, with this extension
    # absent too (and with jupytext disabled); any other error fails the test
    errors = [e for e in p.errors if e != NOTEBOOK7_OWN_ERROR]
    assert not errors, errors


def test_completion_offers_the_on_frames_columns_in_the_browser(lab, browser):
    """Tab inside ``{`` of a ``%%batch`` template offers the ``--on`` frame's columns: the kernel
    answers JupyterLab's complete_request with batchmagic's matcher."""
    from playwright.sync_api import expect

    _notebook(lab.root / "complete.ipynb",
              "%load_ext batchmagic\nimport pandas as pd\n"
              "reviews = pd.DataFrame({'text': ['great'], 'title': ['mug'], 'stars': [5]})", "")
    with _Page(browser, "lab-complete") as p:
        page = p.page
        _open_notebook(page, f"{lab.url}/lab/tree/complete.ipynb?token={lab.token}")
        _run_all(page)
        first = page.locator(".jp-Notebook .jp-Cell").nth(0)
        expect(first.locator(".jp-InputPrompt")).to_contain_text("[1]")
        page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".cm-content").click()
        page.keyboard.type("%%batch --on reviews")
        page.keyboard.press("Enter")
        page.keyboard.type("Say {t")
        page.keyboard.press("Tab")
        items = page.locator(".jp-Completer .jp-Completer-item")
        expect(items.first).to_be_visible()
        offered = sorted(t.strip() for t in items.locator(".jp-Completer-match").all_inner_texts())
        assert offered == ["text", "title"], offered  # 'stars' does not start with 't'
        expect(items.first).to_contain_text("column")  # the kind shown beside each
        page.locator(".jp-Completer").screenshot(path=str(ARTIFACTS / "lab-complete.png"))
    assert not p.errors, p.errors
