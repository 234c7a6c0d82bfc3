"""Completion for ``%%batch`` and ``%batch``, kernel side: an IPython matcher, so every front end
that asks the kernel (JupyterLab, Notebook 7, VS Code, a terminal IPython) gets the same.

What is offered depends on where the cursor is:

- on the magic's line, a word starting with ``-``: the flags not given yet;
- the first word after the magic: the kinds (and, before anything is typed, the flags);
- after a flag that takes a value: its choices (``--kind``, ``--mode``, ``--http``,
  ``--on-missing``), the provider presets (``-p``), the models known for the chosen provider
  (``-m``), the engines (``--engine``), the notebook's DataFrames, Series and lists (``--on``),
  its schemas (``--schema``), the ``--on`` frame's columns (``--images``);
- in the cell body, inside ``{``: the columns of the ``--on`` frame.

Models known for a provider are the ones this kernel and this project's journal have used with
it, then those of the price list (genai-prices) where it knows the provider. Nothing here sends a
request, writes a file or reads a key; a failure to find candidates offers none.
"""

from __future__ import annotations

import re
import shlex
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IDENTIFIER = "batchmagic.magic_matcher"
#: above IPython's own matchers, whose Python completions mean nothing on a magic's line
PRIORITY = 100
_CELL_MAGIC = re.compile(r"\s*%%batch(?=\s|$)")
_LINE_MAGIC = re.compile(r"(?:^|[\s=(])%batch(?=\s|$)")
_MODELS_SHOWN = 200  # genai-prices lists hundreds for some providers


@dataclass(frozen=True)
class Where:
    """The cursor's place in a ``%%batch`` cell or ``%batch`` line."""

    part: str  # "line" (the magic's flags) or "body" (the template)
    before: str  # the magic's line from after its name up to the cursor, or the body line's
    header: str  # the magic's whole line after its name (for --on, -p)
    after: str  # the rest of the cursor's line


def locate(full_text: str, line_no: int, column: int) -> Where | None:
    """Where the cursor is, or None outside ``%%batch`` / ``%batch``."""
    lines = full_text.split("\n")
    if not 0 <= line_no < len(lines):
        return None
    line = lines[line_no]
    first = next((i for i, text in enumerate(lines) if text.strip()), None)
    magic = _CELL_MAGIC.match(lines[first]) if first is not None else None
    if magic is not None and line_no >= first:
        header = lines[first][magic.end():]
        if line_no == first:
            return Where("line", line[magic.end():column], header, line[column:])
        return Where("body", line[:column], header, line[column:])
    found = _LINE_MAGIC.search(line[:column])
    if found is None:
        return None
    return Where("line", line[found.end():column], line[found.end():], line[column:])


def _words(text: str) -> list[str]:
    """Shell words, as the magic reads them; an unfinished quote falls back to spaces."""
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def _flag_value(words: list[str], flags: tuple[str, ...]) -> str | None:
    """The value given to any of ``flags`` in ``words`` (``-p x``, ``--provider=x``), the last."""
    value = None
    for i, word in enumerate(words):
        name, eq, rest = word.partition("=")
        if name in flags:
            if eq:
                value = rest
            elif i + 1 < len(words):
                value = words[i + 1]
    return value


class Completer:
    """Candidates for one cursor place; ``magics`` is the kernel's ``BatchMagics``."""

    def __init__(self, magics: Any):
        from ._magic import MAGIC_OPTIONS

        self.magics = magics
        self.options = {flag: opt for opt in MAGIC_OPTIONS.values() for flag in opt.flags}

    @property
    def namespace(self) -> dict:
        return self.magics.shell.user_ns

    def complete(self, where: Where) -> tuple[str, list[tuple[str, str]]]:
        """(the text the candidates replace, [(candidate, type)])."""
        if where.part == "body":
            return self._in_template(where)
        return self._on_magic_line(where)

    # -- the template ---------------------------------------------------------------------------

    def _in_template(self, where: Where) -> tuple[str, list[tuple[str, str]]]:
        opened = where.before.rfind("{")
        if opened < 0 or "}" in where.before[opened:] or where.before[opened - 1:opened] == "{":
            return "", []
        fragment = where.before[opened + 1:]
        if any(c in fragment for c in "!:"):  # past the field's name: a conversion or a spec
            return fragment, []
        columns = self._columns(_flag_value(_words(where.header), ("--on",)))
        return fragment, [(c, "column") for c in columns if c.startswith(fragment)]

    def _columns(self, name: str | None) -> list[str]:
        """The field names a template over the ``--on`` value can use."""
        if name is None:
            name = getattr(self.magics, "on", None)  # %config BatchMagics.on
        value = self.namespace.get(name) if name else None
        if value is None:
            return []
        columns = getattr(value, "columns", None)  # pandas, polars
        if columns is None:
            columns = getattr(value, "column_names", None)  # pyarrow
        if columns is None:  # a Series or a list of texts fills the one field
            return ["text"]
        return [str(c) for c in columns]

    # -- the magic's line -----------------------------------------------------------------------

    def _on_magic_line(self, where: Where) -> tuple[str, list[tuple[str, str]]]:
        before = where.before
        fragment = "" if before[-1:].isspace() or not before else before.split()[-1]
        words = _words(before[:len(before) - len(fragment)])
        if fragment.startswith("--") and "=" in fragment:  # --provider=dash
            flag, _, value = fragment.partition("=")
            return value, self._values(flag, value, words + [flag])
        if words and words[-1] in self.options and self.options[words[-1]].text is not bool:
            return fragment, self._values(words[-1], fragment, words)
        if fragment.startswith("-"):
            return fragment, self._flags(fragment, words)
        found: list[tuple[str, str]] = []
        if not self._positionals(words):
            from ._options import KINDS

            found += [(k, "kind") for k in KINDS if k.startswith(fragment)]
        if not fragment:
            found += self._flags("--", words)
        return fragment, found

    def _positionals(self, words: list[str]) -> list[str]:
        """The words that are neither flags nor a flag's value (the kind)."""
        found, skip = [], False
        for word in words:
            if skip:
                skip = False
            elif word.startswith("-"):
                opt = self.options.get(word.split("=", 1)[0])
                skip = opt is not None and opt.text is not bool and "=" not in word
            else:
                found.append(word)
        return found

    def _flags(self, fragment: str, words: list[str]) -> list[tuple[str, str]]:
        given = {self.options[w.split("=", 1)[0]].name for w in words
                 if w.split("=", 1)[0] in self.options}
        flags = [flag for flag, opt in self.options.items()
                 if opt.name not in given and flag.startswith(fragment)]
        # long flags first: they say what they do
        return [(f, "flag") for f in sorted(flags, key=lambda f: (not f.startswith("--"), f))]

    def _values(self, flag: str, fragment: str, words: list[str]) -> list[tuple[str, str]]:
        opt = self.options.get(flag)
        if opt is None:
            return []
        finder = self._finders().get(opt.name)
        if finder is not None:
            candidates = finder(words)
        elif opt.choices:
            candidates = [(c, "choice") for c in opt.choices]
        else:
            return []
        return [(text, kind) for text, kind in candidates if text.startswith(fragment)]

    def _finders(self) -> dict[str, Callable[[list[str]], list[tuple[str, str]]]]:
        return {"on": self._tables, "provider": self._providers, "model": self._models,
                "engine": self._engines, "schema": self._schemas, "images": self._image_columns}

    def _tables(self, words: list[str]) -> list[tuple[str, str]]:
        from ._magic import _has_rows

        return [(name, "variable") for name in self._user_names() if _has_rows(self.namespace[name])]

    def _schemas(self, words: list[str]) -> list[tuple[str, str]]:
        return [(name, "schema") for name in self._user_names()
                if _looks_like_schema(self.namespace[name])]

    def _image_columns(self, words: list[str]) -> list[tuple[str, str]]:
        return [(c, "column") for c in self._columns(_flag_value(words, ("--on",)))]

    def _user_names(self) -> list[str]:
        hidden = getattr(self.magics.shell, "user_ns_hidden", {})
        return sorted(name for name in self.namespace
                      if not name.startswith("_") and name not in hidden)

    @staticmethod
    def _providers(words: list[str]) -> list[tuple[str, str]]:
        from .providers._presets import PRESETS

        return [(name, "provider") for name in sorted(PRESETS)]

    @staticmethod
    def _engines(words: list[str]) -> list[tuple[str, str]]:
        from .engines._registry import REGISTRY

        return [(name, "engine") for name in REGISTRY]  # canonical names, not the aliases

    def _models(self, words: list[str]) -> list[tuple[str, str]]:
        provider = _flag_value(words, ("-p", "--provider"))
        if provider is None and _flag_value(words, ("--base-url", "--engine")) is None:
            provider = getattr(self.magics, "provider", None)  # %config BatchMagics.provider
        if provider is None:
            return []
        try:
            from .providers._presets import get_preset

            name = get_preset(provider).name
        except KeyError:
            return []
        return [(m, "model") for m in known_models(name, self._journal_folder())]

    def _journal_folder(self) -> Path | None:
        from ._journal import folder_for

        try:
            return folder_for(getattr(self.magics, "cache", None) is not False)
        except TypeError:
            return None


def _looks_like_schema(value: Any) -> bool:
    """What ``--schema`` may name: a class (pydantic model, TypedDict, Enum), a JSON Schema dict,
    or a typing form such as ``Literal['a', 'b']``."""
    import typing

    if isinstance(value, type):
        return not value.__module__.startswith(("builtins", "pandas", "numpy"))
    if isinstance(value, dict):
        return any(k in value for k in ("type", "properties", "$defs", "enum", "anyOf"))
    return typing.get_origin(value) is not None


def known_models(provider: str, journal: Path | None) -> list[str]:
    """Models used with ``provider`` in this kernel and in the journal, newest first, then the
    price list's; each once."""
    from . import _api

    seen: dict[str, None] = {}
    for run in reversed(_api.recent_runs()):
        summary = run.summary()
        if summary.get("where") == provider and summary.get("model"):
            seen.setdefault(summary["model"], None)
    for model in _journal_models(journal, provider):
        seen.setdefault(model, None)
    for model in _price_list_models(provider):
        seen.setdefault(model, None)
    return list(seen)[:_MODELS_SHOWN]


def _journal_models(folder: Path | None, provider: str) -> list[str]:
    """Models the journal's runs table records for ``provider``, read-only: a completion never
    creates or changes a journal."""
    path = None if folder is None else Path(folder) / "journal.sqlite3"
    if path is None or not path.is_file():
        return []
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=0.2)
        try:
            rows = conn.execute("SELECT model FROM runs WHERE provider = ? AND model IS NOT NULL "
                                "GROUP BY model ORDER BY MAX(started) DESC LIMIT 50",
                                (provider,)).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return []
    return [model for (model,) in rows]


_price_models: dict[str, list[str]] = {}


def _price_list_models(provider: str) -> list[str]:
    """The models genai-prices lists for the provider (where batchmagic uses its prices)."""
    from ._cost import _GENAI_PROVIDERS

    price_id = _GENAI_PROVIDERS.get(provider)
    if price_id is None:
        return []
    if price_id not in _price_models:
        try:
            from genai_prices import data
        except ImportError:
            return []
        # an id ending in "-" is a prefix the price list matches (fine-tuned models), no model
        found = [m.id for p in data.providers if p.id == price_id for m in p.models
                 if not m.id.endswith(("-", "."))]
        _price_models[price_id] = sorted(found)
    return _price_models[price_id]


def matcher_for(magics: Any) -> Callable:
    """The IPython matcher (API v2) completing ``%%batch`` for this ``BatchMagics``."""
    from IPython.core.completer import SimpleCompletion, context_matcher

    completer = Completer(magics)

    @context_matcher(identifier=IDENTIFIER, priority=PRIORITY)
    def batch_matcher(context) -> dict:
        where = locate(context.full_text, context.cursor_line, context.cursor_position)
        if where is None:
            return {"completions": [], "suppress": False}
        fragment, found = completer.complete(where)
        return {"completions": [SimpleCompletion(text, type=kind) for text, kind in found],
                "matched_fragment": fragment, "suppress": bool(found), "ordered": True}

    return batch_matcher


def register(shell: Any, magics: Any) -> None:
    """Add the matcher to the shell's completer, replacing one an earlier load added."""
    completer = getattr(shell, "Completer", None)
    if completer is None:
        return
    kept = [m for m in completer.custom_matchers
            if getattr(m, "matcher_identifier", None) != IDENTIFIER]
    completer.custom_matchers[:] = [*kept, matcher_for(magics)]
