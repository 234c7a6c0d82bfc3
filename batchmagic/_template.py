"""Prompt templates: ``{column}`` fields over a row, data values inserted verbatim.

A template is parsed once. Values are never parsed again, so braces or ``{name}`` inside the data
stay data. Fields may carry a format spec (``{price:.2f}``) or a conversion (``{x!r}``). A field is
looked up as a column name, literally: ``{a.b}`` is the column ``"a.b"``, never attribute access,
because a template is not code.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from ._errors import TemplateError


@dataclass(frozen=True)
class Template:
    source: str
    parts: tuple[tuple[str, str | None, str, str | None], ...]  # (literal, field, spec, conversion)

    @property
    def fields(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for _, field, _, _ in self.parts:
            if field is not None:
                seen.setdefault(field, None)
        return tuple(seen)

    def render(self, values: dict) -> str:
        out: list[str] = []
        for literal, field, spec, conversion in self.parts:
            out.append(literal)
            if field is None:
                continue
            value = values[field]
            if conversion == "r":
                value = repr(value)
            elif conversion == "a":
                value = ascii(value)
            elif conversion == "s":
                value = str(value)
            out.append(format(value, spec) if spec else (value if type(value) is str else str(value)))
        return "".join(out)


def parse_template(source: str) -> Template:
    if not isinstance(source, str):
        raise TemplateError(f"the prompt template must be a string, not {type(source).__name__}")
    parts = []
    try:
        for literal, field, spec, conversion in string.Formatter().parse(source):
            if field is not None:
                if spec and ("{" in spec):
                    raise TemplateError(f"template field {{{field}}} has a nested field in its format spec")
            parts.append((literal, field, spec or "", conversion))
    except ValueError as exc:  # unbalanced braces
        raise TemplateError(
            f"the prompt template is malformed ({exc}); write {{{{ and }}}} for literal braces"
        ) from None
    return Template(source, tuple(parts))

