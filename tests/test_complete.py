"""Completion of ``%%batch`` and ``%batch``: flags, kinds, choices, provider presets, models known
for the chosen provider, the notebook's variables after ``--on`` and the ``--on`` frame's columns
inside ``{`` in the template. In IPython's own test shell (the completer every front end asks), and
in a real kernel through ``complete_request`` and ``inspect_request``, as JupyterLab, Notebook 7
and VS Code send them."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from IPython.core.completer import provisionalcompleter
from IPython.testing import globalipapp

import batchmagic as bm
from batchmagic import _complete, _magic
from batchmagic.providers._presets import PRESETS
from batchmagic.simulator import SimulatorThread


@pytest.fixture
def ip(monkeypatch, tmp_path):
    shell = globalipapp.start_ipython() or globalipapp.get_ipython()
    for var in list(os.environ):
        if var.startswith("BATCHMAGIC_") and var != "BATCHMAGIC_JOURNAL_DIR":
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    shell.config.pop("BatchMagics", None)
    shell.register_magics(_magic.BatchMagics(shell=shell))
    shell.user_ns.update(
        reviews=pd.DataFrame({"text": ["great"], "stars": [5], "product name": ["mug"]}),
        notes=["a", "b"], titles=pd.Series(["x"]), settings={"a": 1}, count=3, _hidden=[1],
    )
    yield shell
    shell.config.pop("BatchMagics", None)
    for name in ("reviews", "notes", "titles", "settings", "count", "_hidden", "Label"):
        shell.user_ns.pop(name, None)


def complete(ip, text: str) -> dict[str, tuple[str, str]]:
    """{candidate: (the text it replaces, its type)} with the cursor at the end of ``text``."""
    with provisionalcompleter():
        found = list(ip.Completer.completions(text, len(text)))
    return {c.text: (text[c.start:c.end], c.type) for c in found}


def test_flags_complete_on_the_magic_line(ip):
    found = complete(ip, "%%batch --pro")
    assert found == {"--provider": ("--pro", "flag")}
    found = complete(ip, "%%batch --on notes --o")
    assert "--output" in found and "--on" not in found  # a flag given is not offered again
    found = complete(ip, "%%batch ")
    assert {"chat", "completion", "embedding", "image", "--on", "--bg"} <= set(found)


def test_kinds_and_choices(ip):
    assert complete(ip, "%%batch emb") == {"embedding": ("emb", "kind")}
    assert set(complete(ip, "%%batch chat --mode ")) == {"online", "batch-api", "batch-chat"}
    assert set(complete(ip, "%%batch --http=httpx")) == {"httpx", "httpx2"}
    assert "chat" not in complete(ip, "%%batch chat ")  # the kind is given


def test_provider_presets(ip):
    assert set(complete(ip, "%%batch -p ")) == set(PRESETS)
    assert set(complete(ip, "%%batch --provider dash")) == {"dashscope", "dashscope-intl"}


def test_models_known_for_the_chosen_provider(ip):
    found = complete(ip, "%%batch -p openai -m gpt-4o-m")
    assert "gpt-4o-mini" in found and found["gpt-4o-mini"] == ("gpt-4o-m", "model")
    others = complete(ip, "%%batch -p dashscope -m gpt-4o-m")  # another provider's models
    assert not [text for text, (_, kind) in others.items() if kind == "model"]
    ip.run_line_magic("config", "BatchMagics.provider = 'deepseek'")
    assert "deepseek-chat" in complete(ip, "%%batch -m deepseek-c")


def test_models_this_kernel_and_the_journal_used(ip, tmp_path):
    with SimulatorThread(latency=0.0) as sim:
        bm.batch(["a"], provider="simulator", base_url=sim.base_url, model="house-model-7",
                 progress=False)
    assert "house-model-7" in complete(ip, "%%batch -p simulator -m house")
    journal = Path(os.environ["BATCHMAGIC_JOURNAL_DIR"])
    assert _complete._journal_models(journal, "simulator") == ["house-model-7"]
    assert _complete._journal_models(journal, "openai") == []


def test_a_completion_creates_no_journal(ip, tmp_path, monkeypatch):
    folder = tmp_path / "no-journal-here"
    monkeypatch.setenv("BATCHMAGIC_JOURNAL_DIR", str(folder))
    complete(ip, "%%batch -p openai -m gpt")
    assert not folder.exists()


def test_variables_after_on(ip):
    found = complete(ip, "%%batch --on ")
    assert {"reviews", "notes", "titles"} <= set(found)
    assert not {"settings", "count", "_hidden"} & set(found)  # no rows there, or private
    assert complete(ip, "%%batch chat --on rev") == {"reviews": ("rev", "variable")}
    assert complete(ip, "labeled = %batch --on no") == {"notes": ("no", "variable")}


def test_schema_names(ip):
    ip.run_cell("from typing import Literal\nLabel = Literal['yes', 'no']")
    assert complete(ip, "%%batch --on reviews --schema La") == {"Label": ("La", "schema")}


def test_columns_of_the_on_frame_inside_braces(ip):
    found = complete(ip, "%%batch --on reviews -o out\nClassify {")
    assert found == {"text": ("", "column"), "stars": ("", "column"),
                     "product name": ("", "column")}
    found = complete(ip, "%%batch --on reviews\nRate this:\n{stars}: {te")
    assert found == {"text": ("te", "column")}
    assert "text" not in complete(ip, "%%batch --on reviews\nLiteral {{te")  # an escaped brace
    assert "text" not in complete(ip, "%%batch --on reviews\n{text:")  # a format spec
    # a Series or a list of texts fills the template's one field
    assert complete(ip, "%%batch --on notes\nSay {t") == {"text": ("t", "column")}
    # the --on of %config when the cell names none
    ip.run_line_magic("config", "BatchMagics.on = 'reviews'")
    assert "stars" in complete(ip, "%%batch\n{st")


def test_image_column_choices(ip):
    assert set(complete(ip, "%%batch --on reviews --images ")) == {"text", "stars",
                                                                    "product name"}


def test_outside_the_magic_nothing_changes(ip):
    assert _complete.locate("import os", 0, 9) is None
    assert _complete.locate("%batch_runs ", 0, 12) is None
    assert "reviews" in complete(ip, "len(rev")  # Python completion as before


def test_completion_and_inspection_in_a_real_kernel(tmp_path):
    """What JupyterLab, Notebook 7 and VS Code send: complete_request and inspect_request."""
    from jupyter_client.manager import start_new_kernel

    env = dict(os.environ, IPYTHONDIR=str(tmp_path / "ipython"))
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path), env=env)
    try:
        reply = kc.execute_interactive(textwrap.dedent("""
            %load_ext batchmagic
            import pandas as pd
            reviews = pd.DataFrame({"text": ["great"], "stars": [5]})
        """), timeout=60)
        assert reply["content"]["status"] == "ok"
        code = "%%batch chat --on reviews -o labeled\nClassify {te"
        content = kc.complete(code, len(code), reply=True, timeout=30)["content"]
        assert content["matches"] == ["text"]
        assert content["cursor_start"] == len(code) - 2 and content["cursor_end"] == len(code)
        code = "%%batch --on rev"
        content = kc.complete(code, len(code), reply=True, timeout=30)["content"]
        assert content["matches"] == ["reviews"]
        code = "%%batch --on reviews -p "
        content = kc.complete(code, len(code), reply=True, timeout=30)["content"]
        assert set(content["matches"]) == set(PRESETS)
        # hovering / Shift+Tab on the magic shows every flag
        content = kc.inspect("%%batch --on reviews", 3, reply=True, timeout=30)["content"]
        assert content["found"]
        text = content["data"]["text/plain"]
        assert "--on VAR" in text and "-p PROVIDER" in text
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
