"""The manual's generated parts (``docs/hooks.py``): each marker in a page renders from the code
it names, and the rendering says what the code says. ``mkdocs build --strict`` itself runs in CI
(``.ci/run``); these tests need no MkDocs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _hooks():
    spec = importlib.util.spec_from_file_location("batchmagic_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _hooks()


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_every_marker_in_the_manual_renders():
    seen = []
    for page in _pages():
        text = page.read_text()
        for match in hooks._MARKER.finditer(text):
            seen.append(match.group(1))
        out = hooks.on_page_markdown(text, page=None, config=None, files=None)
        assert not hooks._MARKER.search(out), page
    # the parts the manual promises are generated, not written by hand
    for marker in ("options", "magic-options", "presets", "error-tree", "result-columns",
                   "cli-help run", "magic-help"):
        assert marker in seen, marker


def test_a_marker_that_cannot_render_stops_the_build():
    with pytest.raises(hooks.DocsBuildError):
        hooks.error_tree("no drawing here")
    with pytest.raises(hooks.DocsBuildError):
        hooks.cli_help(["run"], main=lambda argv: print("nothing like a usage line"))


def test_presets_table_names_every_preset_and_where_its_key_comes_from():
    from batchmagic.providers._presets import ALIASES, PRESETS

    table = hooks.presets_table(PRESETS, ALIASES)
    rows = table.splitlines()[2:]  # after the header and its rule
    assert len(rows) == len(PRESETS)
    for name, preset in PRESETS.items():
        row = next(r for r in rows if r.startswith(f"| `{name}`"))
        assert preset.base_url in row
        for var in preset.key_env:
            assert f"`{var}`" in row
    dashscope = next(r for r in rows if r.startswith("| `dashscope`"))
    assert "`bailian`" in dashscope and "24h to 336h" in dashscope and "50,000 requests" in dashscope
    ollama = next(r for r in rows if r.startswith("| `ollama`"))
    assert "none needed" in ollama


def test_cli_help_is_what_the_command_prints():
    text = hooks.cli_help(["run"])
    assert text.startswith("```text\nusage: batchmagic run")
    assert "--no-cache" in text and "--output" in text
    jobs = hooks.cli_help(["jobs", "list"])
    assert "usage: batchmagic jobs list" in jobs and "--provider" in jobs


def test_magic_help_is_the_magics_own_flags():
    pytest.importorskip("IPython")
    from batchmagic._magic import BatchMagics

    text = hooks.magic_help(BatchMagics.batch.parser)
    assert text.startswith("```text\n%batch [")
    for flag in ("--on VAR", "--output VAR", "--bg", "--dry-run", "--no-cache"):
        assert flag in text, flag
    assert "Run an LLM over every row" not in text  # the docstring is the page's, not repeated


def test_error_tree_draws_every_error():
    import batchmagic
    from batchmagic import _errors

    tree = hooks.error_tree(_errors.__doc__)
    for name in _errors.__all__:
        assert re.search(rf"\b{name}\b", tree), name
        assert name in batchmagic.__all__


def test_result_columns_describe_every_column_the_frame_has():
    from batchmagic import _frame

    table = hooks.result_columns(_frame.__doc__, _frame.RESULT_COLUMNS)
    for column in _frame.RESULT_COLUMNS:
        assert f"| `{column}` |" in table
    without_cost = "\n".join(line for line in _frame.__doc__.splitlines()
                             if not line.startswith("``cost``"))
    with pytest.raises(hooks.DocsBuildError, match="cost"):
        hooks.result_columns(without_cost, _frame.RESULT_COLUMNS)


def test_option_reference_has_every_option_once_under_its_group():
    options = pytest.importorskip("batchmagic._options").OPTIONS
    text = hooks.options_tables(options)
    for option in options:
        rows = [line for line in text.splitlines() if line.startswith(f"| `{option.name}` |")]
        assert len(rows) == 1, option.name
        row = rows[0]
        assert option.annotation.replace("|", "\\|") in row
        if option.flags:
            assert all(f"`{flag}`" in row for flag in option.flags)
        else:
            assert "Python only" in row
        assert (f"`BATCHMAGIC_{option.name.upper()}`" in row) == bool(option.config)
    groups = list(dict.fromkeys(o.group for o in options))
    headings = re.findall(r"^### (.+)$", text, flags=re.M)
    assert [h.lower() for h in headings] == [g.lower() for g in groups]


def test_pages_link_only_to_pages_that_exist():
    """The same check `mkdocs build --strict` makes, for relative links between pages."""
    link = re.compile(r"\]\(([^)#\s]+\.md)(#[^)]*)?\)")
    for page in _pages():
        for target, _ in link.findall(page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).resolve().is_file(), (page, target)
