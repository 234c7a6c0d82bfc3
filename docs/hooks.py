"""MkDocs hooks: the pages' generated parts, rendered from the code at build time.

A page holds a marker where a generated part goes; the hook replaces it, so the manual cannot
drift from the code it describes:

    <!-- options -->              the option table (``batchmagic._options.OPTIONS``), one table per group
    <!-- magic-options -->        the options only ``%%batch`` takes, and its two flags for ``params``
    <!-- presets -->              the provider presets (``batchmagic.providers._presets.PRESETS``)
    <!-- error-tree -->           the exception tree drawn in ``batchmagic/_errors.py``'s docstring
    <!-- result-columns -->       the result frame's columns, from ``batchmagic/_frame.py``'s docstring
    <!-- cli-help run -->         ``batchmagic run --help`` (any subcommand words after cli-help)
    <!-- magic-help -->           the ``%%batch`` flags, as ``%batch?`` lists them

A marker whose source is missing fails the build (``mkdocs build --strict``) instead of
rendering an empty section.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the package from this checkout, as mkdocstrings reads it
    sys.path.insert(0, str(ROOT))

_MARKER = re.compile(r"<!--\s*(options|magic-options|presets|error-tree|result-columns|magic-help|cli-help(?:\s+[a-z-]+)*)\s*-->")
HELP_WIDTH = "96"  # columns for argparse, so the help reads the same on every machine


class DocsBuildError(Exception):
    """A generated part could not be rendered; the build stops."""


# -- MkDocs entry point -----------------------------------------------------------------------------


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace each marker on the page with the part it names."""
    return _MARKER.sub(lambda m: render_marker(m.group(1).split()), markdown)


def render_marker(words: list[str]) -> str:
    name, args = words[0], words[1:]
    if name == "options":
        from batchmagic._options import OPTIONS

        return options_tables(OPTIONS)
    if name == "magic-options":
        from batchmagic._magic import MAGIC_ONLY
        from batchmagic._options import PARAM_FLAGS

        return option_table([*MAGIC_ONLY, *PARAM_FLAGS])
    if name == "presets":
        from batchmagic.providers._presets import ALIASES, PRESETS

        return presets_table(PRESETS, ALIASES)
    if name == "error-tree":
        from batchmagic import _errors

        return error_tree(_errors.__doc__ or "")
    if name == "result-columns":
        from batchmagic import _frame

        return result_columns(_frame.__doc__ or "", _frame.RESULT_COLUMNS)
    if name == "magic-help":
        from batchmagic._magic import BatchMagics

        return magic_help(BatchMagics.batch.parser)
    return cli_help(args)


# -- the option table ---------------------------------------------------------------------------------


def options_tables(options: Iterable[Any]) -> str:
    """One Markdown table per group, in the order the groups first appear in the table."""
    groups: dict[str, list[Any]] = {}
    for option in options:
        groups.setdefault(option.group, []).append(option)
    if not groups:
        raise DocsBuildError("the option table is empty")
    parts = [f"### {group[:1].upper()}{group[1:]}\n\n" + option_table(members)
             for group, members in groups.items()]
    return "\n".join(parts)


def option_table(options: Iterable[Any]) -> str:
    rows = ["| option | type | default | magic / CLI | notebook default | what it does |",
            "|---|---|---|---|---|---|"]
    rows += [_option_row(o) for o in options]
    if len(rows) == 2:
        raise DocsBuildError("no options to show")
    return "\n".join(rows) + "\n"


def _option_row(option: Any) -> str:
    flags = ", ".join(f"`{flag}`" for flag in option.flags) or "Python only"
    config = (f"`BatchMagics.{option.name}`, `BATCHMAGIC_{option.name.upper()}`"
              if option.config else "-")
    return (f"| `{option.name}` | `{_cell(option.annotation)}` | `{_cell(repr(option.default))}` "
            f"| {flags} | {config} | {_cell(option.doc)} |")


def _cell(text: str) -> str:
    """Text that stays inside one table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


# -- the provider presets -----------------------------------------------------------------------------


def presets_table(presets: dict[str, Any], aliases: dict[str, str]) -> str:
    rows = ["| `provider=` | base URL | key from | kinds | files + batches API | Batch Chat "
            "| concurrency ceiling | error dialect |",
            "|---|---|---|---|---|---|---|---|"]
    for name, p in presets.items():
        also = sorted(alias for alias, target in aliases.items() if target == name)
        label = f"`{name}`" + (f" ({', '.join(f'`{a}`' for a in also)})" if also else "")
        keys = ", ".join(f"`{k}`" for k in p.key_env) or "-"
        if not p.needs_key:
            keys = f"{keys} (optional)" if p.key_env else "none needed"
        url = f"[{p.base_url}]({p.docs})" if p.docs else p.base_url
        if p.base_url_env:
            url += " (or " + ", ".join(f"`{e}`" for e in p.base_url_env) + ")"
        rows.append(f"| {label} | {url} | {keys} | {', '.join(sorted(p.kinds))} "
                    f"| {_batch_api(p)} | {'yes' if p.batch_chat_base_url else '-'} "
                    f"| {p.default_max_concurrency} | {p.dialect} |")
    return "\n".join(rows) + "\n"


def _batch_api(p: Any) -> str:
    if not p.batch_api:
        return "-"
    windows = p.batch_completion_windows
    window = windows[0] if len(windows) == 1 else f"{windows[0]} to {windows[-1]}" if windows else ""
    limits = [f"{p.batch_max_requests:,} requests" if p.batch_max_requests else "",
              f"{p.batch_max_bytes / 1e6:,.0f} MB" if p.batch_max_bytes else ""]
    facts = ", ".join(x for x in (window, " / ".join(x for x in limits if x)) if x)
    return f"yes ({facts})" if facts else "yes"


# -- the error tree ---------------------------------------------------------------------------------


def error_tree(docstring: str) -> str:
    """The indented drawing at the top of the errors module's docstring, as a code block."""
    lines = docstring.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("BatchError")), None)
    if start is None:
        raise DocsBuildError("the errors module's docstring draws no tree")
    tree = []
    for line in lines[start:]:
        if not line.strip():
            break
        tree.append(line[4:] if line.startswith("    ") else line)
    return "```text\n" + "\n".join(tree) + "\n```\n"


# -- the result columns -------------------------------------------------------------------------------


def result_columns(docstring: str, required: Iterable[str]) -> str:
    """The column table of the frame module's docstring (reStructuredText) as Markdown; every
    column the frame always has must be in it."""
    rows: list[list[str]] = []
    rules = 0
    for line in docstring.splitlines():
        if line.startswith("==="):
            rules += 1
            continue
        if rules != 2 or not line.strip():  # the body lies between the second and third rule
            continue
        if line.startswith("``"):
            name, _, meaning = line.partition("  ")
            rows.append([name.strip().replace("``", "`"), meaning.strip()])
        elif rows:
            rows[-1][1] += " " + line.strip()
    names = {name.strip("`") for name, _ in rows}
    missing = [c for c in required if c not in names]
    if missing:
        raise DocsBuildError(f"the frame's docstring does not describe {', '.join(missing)}")
    table = ["| column | meaning |", "|---|---|"]
    table += [f"| {name} | {_cell(meaning.replace('``', '`'))} |" for name, meaning in rows]
    return "\n".join(table) + "\n"


# -- the command line -------------------------------------------------------------------------------


def magic_help(parser: Any) -> str:
    """The magic's usage and flags (IPython's parser, without the docstring it also holds)."""
    with _columns(HELP_WIDTH):
        usage = parser.format_usage()
        text = parser.format_help()
    start = text.find("positional arguments:")
    if start < 0:
        start = text.find("options:")
    if start < 0 or "%batch" not in usage:
        raise DocsBuildError("the %%batch parser printed no flags")
    usage = textwrap.dedent(usage.replace("::", "", 1).strip("\n")).rstrip()
    return f"```text\n{usage}\n\n{text[start:].rstrip()}\n```\n"


@contextlib.contextmanager
def _columns(width: str):
    """argparse wraps at $COLUMNS: the same width on every machine."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = width
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def cli_help(words: list[str], main: Callable[[list[str]], Any] | None = None) -> str:
    """``batchmagic WORDS --help`` as the command prints it, in a code block."""
    if main is None:
        from batchmagic.cli import main
    out = io.StringIO()
    with _columns(HELP_WIDTH), contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([*words, "--help"])
    text = out.getvalue().strip()
    if not text.startswith("usage:"):
        raise DocsBuildError(f"`batchmagic {' '.join(words)} --help` printed no usage")
    return f"```text\n{text}\n```\n"
