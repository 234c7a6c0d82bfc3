"""``%%batch`` in an IPython shell: flags, defaults and their precedence, misuse as UsageError,
dry runs, -o binding, background runs and the line magics (against the simulator in-process)."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time

import pandas as pd
import pytest
from conftest import wait_until
from IPython.core.error import UsageError
from IPython.testing import globalipapp

import batchmagic as bm
from batchmagic import _magic
from batchmagic.simulator import SimulatorThread


def start_ipython():
    """IPython's test shell (started once per process)."""
    return globalipapp.start_ipython() or globalipapp.get_ipython()


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(latency=0.0) as s:
        yield s


@pytest.fixture
def ip(tmp_path, monkeypatch):
    """The test shell with a fresh BatchMagics, no %config left from other tests, no BATCHMAGIC_*
    defaults from the environment, and a working directory without a pyproject.toml."""
    shell = start_ipython()
    for var in list(os.environ):
        if var.startswith("BATCHMAGIC_") and var != "BATCHMAGIC_JOURNAL_DIR":
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    shell.config.pop("BatchMagics", None)
    magics = _magic.BatchMagics(shell=shell)
    shell.register_magics(magics)
    shell.batch_magics = magics
    yield shell
    shell.config.pop("BatchMagics", None)
    for name in ("texts", "reviews", "out", "labeled", "notes"):
        shell.user_ns.pop(name, None)


def cell(ip, line: str, body: str = ""):
    return ip.run_cell_magic("batch", line, body)


def point_at(ip, sim) -> None:
    ip.run_line_magic("config", "BatchMagics.provider = 'simulator'")
    ip.run_line_magic("config", f"BatchMagics.base_url = {sim.base_url!r}")


# -- loading ---------------------------------------------------------------------------------------


def test_load_ext_registers_the_magics():
    shell = start_ipython()
    shell.run_line_magic("load_ext", "batchmagic")
    assert "batch" in shell.magics_manager.magics["cell"]
    assert "batch" in shell.magics_manager.magics["line"]
    for name in ("batch_runs", "batch_cancel", "batch_pause", "batch_resume", "batch_wait"):
        assert name in shell.magics_manager.magics["line"], name
    assert bm.BatchMagics is _magic.BatchMagics


def test_every_option_is_a_configurable_traitlet_with_help():
    traits = _magic.BatchMagics.class_traits(config=True)
    assert set(traits) == set(_magic.CONFIGURABLE)
    for name, trait in traits.items():
        assert trait.help, name


def test_help_is_usable(ip, capsys):
    ip.run_cell("%batch?")
    text = capsys.readouterr().out
    for needle in ("--on VAR", "-o VAR", "--bg", "--dry-run", "--no-cache", "--max-tokens",
                   "%config BatchMagics", "pyproject.toml", "BATCHMAGIC_"):
        assert needle in text, needle


# -- running ---------------------------------------------------------------------------------------


def test_cell_into_variable(ip, sim):
    point_at(ip, sim)
    ip.user_ns["reviews"] = pd.DataFrame({"text": ["good", "bad", "meh"]}, index=[10, 20, 30])
    ret = cell(ip, "chat --on reviews -o labeled -m m --max-tokens 8 --temperature 0",
               "Sentiment of: {text}\n")
    assert ret is None
    df = ip.user_ns["labeled"]
    assert list(df.index) == [10, 20, 30]
    assert df["output"].tolist() == [f"echo: Sentiment of: {t}" for t in ("good", "bad", "meh")]
    assert df["error"].isna().all()
    facts = df.attrs["batchmagic"]
    assert (facts["model"], facts["provider"], facts["kind"]) == ("m", "simulator", "chat")


def test_without_output_the_frame_is_the_cell_value(ip, sim):
    point_at(ip, sim)
    ip.user_ns["texts"] = ["x", "y"]
    df = cell(ip, "--on texts -m m", "Say {}")
    assert isinstance(df, pd.DataFrame) and df["output"].tolist() == ["echo: Say x", "echo: Say y"]
    result = ip.run_cell("%%batch --on texts -m m\nSay {}")
    assert result.success and isinstance(result.result, pd.DataFrame)


def test_without_on_the_cell_is_one_prompt(ip, sim):
    point_at(ip, sim)
    df = cell(ip, "-m m", "What is {braces} doing here?\n")
    assert len(df) == 1 and df["output"].iloc[0] == "echo: What is {braces} doing here?"


def test_line_magic_sends_each_text_as_is(ip, sim):
    point_at(ip, sim)
    ip.user_ns["texts"] = pd.Series(["first", "second"], name="q")
    ip.run_line_magic("batch", "--on texts -o out -m m")
    assert ip.user_ns["out"]["output"].tolist() == ["echo: first", "echo: second"]


def test_flags_map_onto_batch_arguments(ip, sim, monkeypatch):
    point_at(ip, sim)
    seen = {}
    real = _magic._api.batch

    def spy(inputs, prompt, **kwargs):
        seen.update(kwargs, inputs=inputs, prompt=prompt)
        return real(inputs, prompt, **kwargs)

    monkeypatch.setattr(_magic._api, "batch", spy)
    ip.user_ns["texts"] = ["a long enough prompt to be cut short"]
    cell(ip, 'completion --on texts -o out -m m --max-tokens 2 --temperature 0.5 -c 3 --rpm 100 '
             '--tpm 5000 --no-cache', "{}")
    assert seen["params"] == {"max_tokens": 2, "temperature": 0.5}
    assert (seen["kind"], seen["concurrency"], seen["rpm"], seen["tpm"], seen["cache"]) == \
        ("completion", 3, 100.0, 5000.0, False)
    assert seen["prompt"] == "{}" and seen["inputs"] is ip.user_ns["texts"]
    df = ip.user_ns["out"]
    assert df["finish_reason"].iloc[0] == "length" and df["output_tokens"].iloc[0] <= 2
    seen.clear()
    cell(ip, '-m m --system "Be brief." -o out', "hi")
    assert seen["system"] == "Be brief." and "cache" not in seen


def test_dry_run_sends_nothing(ip, sim, capsys):
    point_at(ip, sim)
    sim.reset()
    ip.user_ns["reviews"] = pd.DataFrame({"text": ["good", "good", "bad"]})
    ret = cell(ip, "--on reviews -m m --dry-run -o out --temperature 0", "Label: {text}")
    assert ret is None and "out" not in ip.user_ns
    text = capsys.readouterr().out
    assert "nothing was sent" in text
    assert "3 rows" in text and "2 unique requests" in text  # de-duplicated
    assert "Label: good" in text  # the first rendered prompt
    assert f"{sim.base_url}/chat/completions" in text
    assert sim.calls() == []


def test_dry_run_names_the_key_variable_never_its_value(ip, monkeypatch, capsys):
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-sentinel-dry-run-0123456789")
    cell(ip, "-p dashscope -m qwen-plus --dry-run", "hello")
    text = capsys.readouterr().out
    assert "from DASHSCOPE_API_KEY" in text and "sentinel" not in text
    monkeypatch.delenv("DASHSCOPE_API_KEY")
    cell(ip, "-p dashscope -m qwen-plus --dry-run", "hello")  # no key: no prompt, no error
    assert "none found" in capsys.readouterr().out


def test_background_binds_a_frame_that_fills_in(ip, sim):
    point_at(ip, sim)
    sim.configure(latency=0.05)
    try:
        ip.user_ns["texts"] = [f"t{i}" for i in range(40)]
        ret = cell(ip, "--on texts -o out -m m -c 4 --bg --no-cache", "Echo {}")
        assert ret is None
        live = ip.user_ns["out"]
        assert live.shape[0] == 40 and "output" in live.columns and "error" in live.columns
        assert live["output"].isna().sum() > 20  # returned at once, long before the run ends
        runs = ip.run_line_magic("batch_runs", "")
        run_id = runs["run_id"].iloc[-1]
        assert runs["background"].iloc[-1]
        ip.run_line_magic("batch_wait", f"{run_id} --timeout 30")
        assert ip.user_ns["out"] is live  # the same object, now complete
        assert live["output"].tolist() == [f"echo: Echo t{i}" for i in range(40)]
        assert live.attrs["batchmagic"]["state"] == "done"
    finally:
        sim.configure(latency=0.0)


def test_background_without_output_returns_the_task(ip, sim):
    point_at(ip, sim)
    ip.user_ns["texts"] = ["a"]
    task = cell(ip, "--on texts -m m --bg", "{}")
    assert isinstance(task, bm.BatchTask)
    assert task.wait(10)["output"].tolist() == ["echo: a"]


def test_pause_resume_cancel_line_magics(ip, sim, capsys):
    point_at(ip, sim)
    sim.configure(latency=0.2)
    try:
        ip.user_ns["texts"] = [f"slow {i}" for i in range(60)]
        cell(ip, "--on texts -o out -m m -c 2 --bg --no-cache", "{}")
        run_id = ip.run_line_magic("batch_runs", "")["run_id"].iloc[-1]
        ip.run_line_magic("batch_pause", run_id[:6])  # a prefix is enough
        ip.run_line_magic("batch_resume", run_id)
        ip.run_line_magic("batch_cancel", run_id)
        ip.run_line_magic("batch_wait", "--timeout 20")
        df = ip.user_ns["out"]
        assert df.attrs["batchmagic"]["state"] == "cancelled"
        kinds = {type(e).__name__ for e in df["error"] if e is not None}
        assert kinds <= {"NotSentError", "CancelledRowError"} and "NotSentError" in kinds
        assert f"cancel: {run_id}" in capsys.readouterr().out
        with pytest.raises(UsageError, match="no run 'zzz'"):
            ip.run_line_magic("batch_cancel", "zzz")
        with pytest.raises(UsageError, match="RUN_ID"):
            ip.run_line_magic("batch_cancel", "")
    finally:
        sim.configure(latency=0.0)


def test_line_magics_act_on_the_only_run_going_and_batch_runs_counts_as_the_panel(ip, sim):
    """No id needed when one run is going; %batch_runs lists a cancelled run's rows as its panel
    does: nothing failed, the rows in flight cancelled, the rest not started."""
    from batchmagic import _widget

    point_at(ip, sim)
    sim.configure(latency=60.0)  # every answer takes a minute: the run is going until cancelled
    try:
        sim.reset()
        ip.user_ns["texts"] = [f"wait {i}" for i in range(20)]
        cell(ip, "--on texts -o out -m m -c 2 --bg --no-cache", "{}")
        wait_until(lambda: len(sim.calls()) >= 2)  # both slots hold a request
        ip.run_line_magic("batch_pause", "")
        ip.run_line_magic("batch_resume", "")
        ip.run_line_magic("batch_cancel", "")
        ip.run_line_magic("batch_wait", "--timeout 30")
        assert ip.user_ns["out"].attrs["batchmagic"]["state"] == "cancelled"
        listed = ip.run_line_magic("batch_runs", "").iloc[-1]
        run = bm._api.recent_runs()[-1]
        shown = dict(_widget.counts(run.progress.snapshot()))
        assert shown == {"cancelled in flight": 2, "not started": 18}
        assert listed["state"] == "cancelled"
        assert (listed["ok"], listed["failed"], listed["cancelled_in_flight"],
                listed["not_started"]) == (0, 0, 2, 18)
        with pytest.raises(UsageError, match="running now: none"):
            ip.run_line_magic("batch_cancel", "")  # nothing going: say so
    finally:
        sim.configure(latency=0.0)


def test_a_stopped_run_is_listed_as_the_panel_says_it(ip, monkeypatch):
    """A run stopped by its provider (a wrong key): "stopped", its failed rows apart from the
    rows it never sent."""
    with SimulatorThread(latency=0.0, api_key="sk-right") as keyed:
        ip.run_line_magic("config", "BatchMagics.provider = 'simulator'")
        ip.run_line_magic("config", f"BatchMagics.base_url = {keyed.base_url!r}")
        monkeypatch.setenv("BATCHMAGIC_SIM_API_KEY", "sk-wrong")
        ip.user_ns["texts"] = [f"k{i}" for i in range(30)]
        cell(ip, "--on texts -o out -m m -c 1 --no-cache", "{}")
    df = ip.user_ns["out"]
    assert df.attrs["batchmagic"]["state"] == "aborted"
    listed = ip.run_line_magic("batch_runs", "").iloc[-1]
    kinds = df["error"].map(lambda e: type(e).__name__).value_counts().to_dict()
    assert listed["state"] == "stopped"
    assert listed["failed"] == kinds.get("FatalProviderError", 0) >= 1
    assert listed["not_started"] == kinds.get("NotSentError", 0)
    assert listed["failed"] + listed["not_started"] + listed["cancelled_in_flight"] == 30


def test_a_background_run_in_a_terminal_prints_one_line_when_it_ends(tmp_path):
    """A terminal IPython: the prompt is the user's while a --bg run goes on, so no bar is
    redrawn under it; one line says how the run ended."""
    import subprocess
    import sys

    script = textwrap.dedent("""\
        from batchmagic.simulator import SimulatorThread
        sim = SimulatorThread(latency=0.05).start()
        %load_ext batchmagic
        %config BatchMagics.provider = 'simulator'
        %config BatchMagics.base_url = sim.base_url
        texts = [f"t{i}" for i in range(30)]
        %batch --on texts -o out -m m -c 4 --bg --no-cache
        %batch_wait --timeout 60
        print("answered", int(out["output"].notna().sum()))
        sim.stop()
    """)
    env = dict(os.environ, IPYTHONDIR=str(tmp_path / "ipython"), TERM="xterm")
    done = subprocess.run([sys.executable, "-m", "IPython", "--simple-prompt", "--no-banner",
                           "--colors=nocolor"], input=script, capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert "answered 30" in done.stdout, done.stdout + done.stderr
    printed = done.stdout + done.stderr
    assert "\r" not in printed  # no bar redrawn
    ends = [ln for ln in printed.splitlines() if "30 ok" in ln]
    assert len(ends) == 1 and "chat m @ simulator done: 30 ok, 0 failed of 30 rows" in ends[0]


# -- misuse: UsageError, no traceback --------------------------------------------------------------


@pytest.mark.parametrize("line, body, message", [
    ("--on review -m m", "{text}", "no variable named 'review'.*did you mean reviews"),
    ("--on reviews -m m", "Label {txt}", "names column 'txt'.*columns are: 'text'"),
    ("--on notes -m m", "{text}", "notes is a dict"),
    ("--on reviews -m m --rpm fast", "{text}", "invalid float value: 'fast'"),
    ("--on reviews -m m --bogus", "{text}", "--bogus: no such flag"),
    ("--on reviews -m m --max-tokns 5", "{text}", "--max-tokns: no such flag; did you mean "
                                                  "--max-tokens\\?"),
    ("chatty --on reviews -m m", "{text}", "invalid choice: 'chatty'"),
    ("--on reviews -m m -o 1x", "{text}", "-o needs a variable name"),
    ("--on reviews", "{text}", "^-m/--model is required: which simulator model"),
    ("--on reviews -m m -c 0", "{text}", "^-c/--concurrency must be a positive integer"),
    ("--on reviews -m m --budget -1", "{text}", "budget must be a positive number"),
    ("--on reviews -m m --engine no-such-engine", "{text}", "engine"),
])
def test_misuse_raises_usage_error(ip, sim, line, body, message):
    point_at(ip, sim)
    ip.user_ns["reviews"] = pd.DataFrame({"text": ["a"]})
    ip.user_ns["notes"] = {"text": "a"}
    with pytest.raises(UsageError, match=message):
        cell(ip, line, body)


def test_usage_errors_print_no_traceback(ip, capsys):
    ip.user_ns["reviews"] = pd.DataFrame({"text": ["a"]})
    result = ip.run_cell("%%batch --on reviews -m m -p simulator --base-url http://127.0.0.1:9/v1\n"
                         "{nope}")
    assert isinstance(result.error_in_exec, UsageError)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "UsageError" in text and "names column 'nope'" in text
    assert "Traceback" not in text


def test_a_line_magic_without_on_needs_a_prompt(ip):
    with pytest.raises(UsageError, match="needs a prompt"):
        ip.run_line_magic("batch", "-m m")


def test_no_destination_is_a_usage_error(ip):
    with pytest.raises(UsageError, match="say where to send the rows"):
        cell(ip, "-m m", "hello")


# -- defaults and their precedence -----------------------------------------------------------------


def _pyproject(folder, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(textwrap.dedent(body))


def test_precedence_flag_config_pyproject_env(ip, tmp_path, monkeypatch):
    project = tmp_path / "project"
    _pyproject(project, """
        [project]
        name = "demo"
        [tool.batchmagic]
        model = "from-pyproject"
        rpm = 600
        max-tokens = 32
        concurrency = 3
        bg = false
    """)
    nested = project / "notebooks" / "deep"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)  # the nearest pyproject.toml is searched upward
    monkeypatch.setenv("BATCHMAGIC_MODEL", "from-env")
    monkeypatch.setenv("BATCHMAGIC_RPM", "60")
    monkeypatch.setenv("BATCHMAGIC_TPM", "9000")
    monkeypatch.setenv("BATCHMAGIC_TEMPERATURE", "0.25")
    monkeypatch.setenv("BATCHMAGIC_CACHE", "0")
    m = ip.batch_magics
    opts = m.resolve({})
    assert opts["model"] == "from-pyproject" and opts["rpm"] == 600.0  # pyproject over env
    assert opts["tpm"] == 9000.0 and opts["temperature"] == 0.25 and opts["cache"] is False
    assert opts["max_tokens"] == 32 and opts["concurrency"] == 3 and opts["bg"] is False
    ip.run_line_magic("config", "BatchMagics.model = 'from-config'")
    ip.run_line_magic("config", "BatchMagics.concurrency = 5")
    opts = m.resolve({})
    assert opts["model"] == "from-config" and opts["concurrency"] == 5  # %config over pyproject
    assert opts["rpm"] == 600.0  # untouched layers still apply
    opts = m.resolve({"model": "from-flag", "concurrency": None})
    assert opts["model"] == "from-flag" and opts["concurrency"] == 5  # a flag over everything


def test_precedence_end_to_end(ip, sim, tmp_path, monkeypatch):
    _pyproject(tmp_path, """
        [tool.batchmagic]
        model = "py-model"
        provider = "simulator"
    """)
    monkeypatch.setenv("BATCHMAGIC_BASE_URL", "http://127.0.0.1:9/v1")  # a lower layer: unused
    ip.run_line_magic("config", f"BatchMagics.base_url = {sim.base_url!r}")
    ip.run_line_magic("config", "BatchMagics.provider = 'simulator'")
    df = cell(ip, "", "hi")
    assert df.attrs["batchmagic"]["model"] == "py-model"
    df = cell(ip, "-m flag-model", "hi")
    assert df.attrs["batchmagic"]["model"] == "flag-model"


def test_where_options_come_from_one_layer(ip, sim):
    """A --base-url in the cell is never combined with a provider preset from %config (which
    would send that provider's key to another server)."""
    ip.run_line_magic("config", "BatchMagics.provider = 'dashscope'")
    opts = ip.batch_magics.resolve({"base_url": sim.base_url})
    assert opts["base_url"] == sim.base_url and opts["provider"] is None
    df = cell(ip, f"-m m --base-url {sim.base_url}", "hi")
    assert df.attrs["batchmagic"]["provider"] == "127.0.0.1"
    opts = ip.batch_magics.resolve({})
    assert opts["provider"] == "dashscope" and opts.get("base_url") is None


def test_pyproject_mistakes_are_usage_errors(ip, tmp_path):
    _pyproject(tmp_path, """
        [tool.batchmagic]
        temprature = 0
    """)
    with pytest.raises(UsageError, match="unknown option 'temprature' .*did you mean 'temperature'"):
        cell(ip, "-m m", "hi")
    _pyproject(tmp_path, """
        [tool.batchmagic]
        rpm = "fast"
    """)
    with pytest.raises(UsageError, match=r"rpm must be a number"):
        cell(ip, "-m m", "hi")


def test_pyproject_without_a_batchmagic_table_is_fine(tmp_path):
    _pyproject(tmp_path, """
        [project]
        name = "x"
    """)
    assert _magic.pyproject_defaults(tmp_path) == {}
    assert _magic.find_pyproject(tmp_path) == tmp_path / "pyproject.toml"


def test_env_mistakes_are_usage_errors(ip, monkeypatch):
    monkeypatch.setenv("BATCHMAGIC_CONCURRENCY", "lots")
    with pytest.raises(UsageError, match="BATCHMAGIC_CONCURRENCY: concurrency must be a whole"):
        cell(ip, "-m m", "hi")
    monkeypatch.setenv("BATCHMAGIC_CONCURRENCY", "4")
    monkeypatch.setenv("BATCHMAGIC_BG", "maybe")
    with pytest.raises(UsageError, match="BATCHMAGIC_BG: bg must be true or false"):
        cell(ip, "-m m", "hi")


def test_config_rejects_a_bad_kind(ip):
    ip.run_line_magic("config", "BatchMagics.kind = 'embedding'")
    assert ip.batch_magics.kind == "embedding"
    from traitlets import TraitError

    with pytest.raises(TraitError):
        ip.batch_magics.kind = "poem"


def test_foreground_interrupt_assigns_partial_frame_and_says_it_once(ip, sim, capsys,
                                                                     monkeypatch):
    """A KeyboardInterrupt during the wait: the run is cancelled, -o gets the finished rows."""
    point_at(ip, sim)
    sim.configure(latency=0.3)
    from batchmagic import _display, _loop

    monkeypatch.setattr(_display, "in_kernel", lambda: True)  # a kernel: the magic reports
    monkeypatch.setattr(_display, "_have_ipywidgets", lambda: False)
    real_run_sync = _loop.run_sync

    def interrupted(coro, on_interrupt):
        # a real SIGINT (Ctrl-C / a kernel interrupt) while the cell waits, once a few rows are
        # answered (not after a fixed delay: on a loaded machine the run may not have started)
        def interrupt_when_under_way():
            deadline = time.monotonic() + 30
            while len(sim.calls()) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt_when_under_way, daemon=True).start()
        return real_run_sync(coro, on_interrupt)

    monkeypatch.setattr(_loop, "run_sync", interrupted)
    # Ctrl-C as a terminal or kernel delivers it: an earlier test in the session (a library it
    # drives) may have left SIGINT ignored, which would swallow the simulated interrupt
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sim.reset()
        ip.user_ns["texts"] = [f"i{i}" for i in range(60)]
        cell(ip, "--on texts -o out -m m -c 2 --no-cache", "{}")
        df = ip.user_ns["out"]
        assert len(df) == 60 and df.attrs["batchmagic"]["state"] == "cancelled"
        assert df["output"].notna().sum() >= 2  # finished rows kept
        out = capsys.readouterr().out
        lines = [ln for ln in out.splitlines() if ln.startswith("batch cancelled")]
        assert len(lines) == 1, out
        assert "not started" in lines[0] and "cancelled in flight" in lines[0]
        assert lines[0].endswith("the finished rows are in out")
    finally:
        signal.signal(signal.SIGINT, previous)
        sim.configure(latency=0.0)


# -- bad input caught before sending -----------------------------------------------------------------


def test_a_template_without_a_field_over_a_frame_is_a_usage_error(ip, sim):
    """A forgotten {text} used to send one request and copy its answer to every row."""
    point_at(ip, sim)
    sim.reset()
    ip.user_ns["reviews"] = pd.DataFrame({"text": ["good", "bad"], "stars": [5, 1]})
    for line in ("--on reviews -m m", "--on reviews -m m --dry-run", "--on reviews -m m --bg"):
        with pytest.raises(UsageError, match="same prompt.*[{]text[}]"):
            cell(ip, line, "Classify the sentiment of this review.\n")
    assert sim.stats()["total"] == 0
    assert "out" not in ip.user_ns


@pytest.mark.parametrize("flags, option", [
    ("--rpm nan", "rpm"),
    ("--tpm inf", "tpm"),
    ("--budget nan", "budget"),
    ("--temperature nan", "temperature"),
    ("--budget inf --dry-run", "budget"),
])
def test_non_finite_numbers_in_flags_are_usage_errors(ip, sim, flags, option):
    point_at(ip, sim)
    sim.reset()
    ip.user_ns["reviews"] = pd.DataFrame({"text": ["a"]})
    with pytest.raises(UsageError, match=rf"{option}\W.*must be .*finite"):
        cell(ip, f"--on reviews -m m {flags}", "{text}")
    assert sim.stats()["total"] == 0


def test_a_non_finite_configured_default_is_a_usage_error(ip, sim):
    point_at(ip, sim)
    sim.reset()
    ip.run_line_magic("config", "BatchMagics.rpm = float('nan')")
    ip.user_ns["reviews"] = pd.DataFrame({"text": ["a"]})
    with pytest.raises(UsageError, match="rpm must be a positive number"):
        cell(ip, "--on reviews -m m", "{text}")
    assert sim.stats()["total"] == 0


def test_on_takes_a_polars_frame(ip, sim):
    pl = pytest.importorskip("polars")
    point_at(ip, sim)
    ip.user_ns["reviews"] = pl.DataFrame({"text": ["good", "bad"]})
    df = cell(ip, "--on reviews -m m", "Sentiment of: {text}")
    assert df["output"].tolist() == ["echo: Sentiment of: good", "echo: Sentiment of: bad"]
    assert list(df.index) == [0, 1]
