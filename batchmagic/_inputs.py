"""Inputs + template -> a plan: one request body per unique request, each with a stable row key.

Everything that can be checked before spending is checked here: template columns, missing values,
text JSON cannot carry, image references. A problem with one row becomes that row's ``InputError``;
a problem with the call as a whole raises ``ConfigError`` / ``TemplateError``.

The row key is a hash of everything that shapes the request (endpoint, kind, the body with model
and parameters) and nothing else: it is the de-duplication key, the cache/resume key and the
source of Batch API ``custom_id``s. Identical requests are planned once and fanned out.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pandas as pd

from . import _kinds, _tokens
from ._errors import ConfigError, InputError, TemplateError
from ._media import MediaError, image_url
from ._template import parse_template

ON_MISSING = ("error", "skip", "empty")
_DUMP_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


@dataclass(slots=True)
class Item:
    """One unique request."""

    key: str
    body: dict
    prompt_tokens: int  # estimated
    max_output: int  # worst case, for pacing and budgets
    rows: list[int] = field(default_factory=list)  # positions of the input rows it answers


@dataclass
class Plan:
    kind: str
    endpoint: str
    index: pd.Index
    frame: pd.DataFrame  # the input columns the result frame starts with
    items: list[Item]
    row_item: list[int]  # per input position: index into items, or -1
    row_errors: dict[int, InputError]
    skipped: set[int]
    template: str | None = None

    @property
    def n_rows(self) -> int:
        return len(self.row_item)


def row_key(endpoint: str, kind: str, body: dict) -> str:
    raw = orjson.dumps(body, option=_DUMP_OPTS)
    return hashlib.sha256(b"%s\0%s\0%s" % (endpoint.encode(), kind.encode(), raw)).hexdigest()[:32]


def is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def make_plan(
    inputs: Any,
    template: str | None,
    *,
    kind: str,
    endpoint: str,
    model: str | None,
    params: Mapping[str, Any] | None,
    system: str | None,
    on_missing: str = "error",
    images: str | None = None,
    allow_private_urls: bool = False,
) -> Plan:
    if kind not in _kinds.KINDS:
        raise ConfigError(f"kind must be one of {', '.join(_kinds.KINDS)}; got {kind!r}")
    if on_missing not in ON_MISSING:
        raise ConfigError(f"on_missing must be one of {', '.join(ON_MISSING)}; got {on_missing!r}")
    params = dict(params or {})
    for reserved in ("model", "messages", "prompt", "input"):
        if reserved in params:
            raise ConfigError(f"params may not set {reserved!r}; it comes from the call itself")
    if system is not None and kind != "chat":
        raise ConfigError(f"system= applies to chat only, not {kind}")

    shape, index, frame, rows = _normalise(inputs, kind)
    builder = _Builder(kind, endpoint, model, params, system)
    row_errors: dict[int, InputError] = {}
    skipped: set[int] = set()

    if shape == "frame":
        tmpl = _frame_template(template, frame)
        fields = tmpl.fields
        # template fields are strings; column labels may not be (pd.DataFrame(list) has column 0)
        by_str = {str(c): c for c in frame.columns}
        missing_cols = [f for f in fields if f not in frame.columns and f not in by_str]
        if missing_cols:
            raise TemplateError(_missing_columns_message(missing_cols, frame.columns))
        if images is not None and images not in frame.columns:
            raise TemplateError(_missing_columns_message([images], frame.columns, what="images="))
        labels = [f if f in frame.columns else by_str[f] for f in fields]
        sub = frame[labels] if fields else frame.iloc[:, :0]
        na = sub.isna().to_numpy() if fields else None
        columns = list(fields)
        image_values = frame[images].tolist() if images is not None else None
        for pos, values in enumerate(sub.itertuples(index=False, name=None)):
            if na is not None and na[pos].any():
                bad = [c for c, m in zip(columns, na[pos]) if m]
                if on_missing == "skip":
                    skipped.add(pos)
                    continue
                if on_missing == "error":
                    row_errors[pos] = InputError(
                        f"missing value in column{'s' if len(bad) > 1 else ''} "
                        f"{', '.join(map(repr, bad))}; pass on_missing='skip' or 'empty' to change this",
                        row=index[pos],
                    )
                    continue
                values = tuple("" if m else v for v, m in zip(values, na[pos]))
            try:
                prompt = tmpl.render(dict(zip(columns, values)))
            except (ValueError, TypeError) as exc:
                row_errors[pos] = InputError(f"the template cannot format this row: {exc}",
                                             row=index[pos])
                continue
            builder.add(pos, prompt, image_values[pos] if image_values is not None else None,
                        allow_private_urls, row_errors, index)
        return builder.plan(index, frame, len(rows) if rows is not None else len(frame),
                            row_errors, skipped, tmpl.source)

    if images is not None:
        raise ConfigError("images= names a column, so it needs a DataFrame input")

    if shape == "texts":
        tmpl = parse_template(template) if template is not None else None
        if tmpl is not None and len(tmpl.fields) > 1:
            raise TemplateError(
                f"a list or Series of texts fills one template field, but the template has "
                f"{len(tmpl.fields)}: {', '.join('{' + f + '}' for f in tmpl.fields)}; "
                "pass a DataFrame to fill several columns"
            )
        if tmpl is not None and not tmpl.fields:
            raise TemplateError(
                "the template has no field for the text; add {} or {text} where each text goes"
            )
        name = tmpl.fields[0] if tmpl is not None else None
        for pos, value in enumerate(rows):
            if is_missing(value):
                if on_missing == "skip":
                    skipped.add(pos)
                    continue
                if on_missing == "error":
                    row_errors[pos] = InputError(
                        "missing value; pass on_missing='skip' or 'empty' to change this",
                        row=index[pos],
                    )
                    continue
                value = ""
            try:
                prompt = tmpl.render({name: value}) if tmpl is not None else (
                    value if isinstance(value, str) else str(value))
            except (ValueError, TypeError) as exc:
                row_errors[pos] = InputError(f"the template cannot format this row: {exc}",
                                             row=index[pos])
                continue
            builder.add(pos, prompt, None, allow_private_urls, row_errors, index)
        return builder.plan(index, frame, len(rows), row_errors, skipped,
                            tmpl.source if tmpl else None)

    if template is not None:
        raise TemplateError(
            "a template applies to texts or DataFrame rows; message lists and request bodies are "
            "sent as they are, so pass prompt=None"
        )
    if shape == "messages":
        if kind != "chat":
            raise ConfigError(f"message lists are chat inputs, but kind={kind!r}")
        for pos, messages in enumerate(rows):
            bad = _check_messages(messages)
            if bad:
                row_errors[pos] = InputError(bad, row=index[pos])
                continue
            builder.add(pos, messages, None, allow_private_urls, row_errors, index)
    else:  # bodies
        for pos, body in enumerate(rows):
            if not isinstance(body, Mapping):
                row_errors[pos] = InputError(
                    f"a request body must be a dict, not {type(body).__name__}", row=index[pos])
                continue
            builder.add_body(pos, dict(body), row_errors, index)
    return builder.plan(index, frame, len(rows), row_errors, skipped, None)


class _Builder:
    def __init__(self, kind: str, endpoint: str, model: str | None, params: dict,
                 system: str | None):
        self.kind, self.endpoint, self.model = kind, endpoint, model
        self.params, self.system = params, system
        self.items: list[Item] = []
        self.by_key: dict[str, int] = {}
        self.row_item: dict[int, int] = {}
        self.max_output = _tokens.max_output_tokens(kind, params)

    def add(self, pos: int, prompt: Any, image_refs: Any, allow_private: bool,
            row_errors: dict[int, InputError], index: pd.Index) -> None:
        urls = None
        if image_refs is not None and not (isinstance(image_refs, float) and math.isnan(image_refs)):
            refs = [image_refs] if isinstance(image_refs, str) else list(image_refs)
            try:
                urls = [image_url(r, allow_private=allow_private) for r in refs]
            except MediaError as exc:
                row_errors[pos] = InputError(str(exc), row=index[pos])
                return
        body = _kinds.build_body(self.kind, prompt, self.model, self.params, self.system, urls)
        self._add(pos, body, row_errors, index)

    def add_body(self, pos: int, body: dict, row_errors: dict[int, InputError],
                 index: pd.Index) -> None:
        if self.model and "model" not in body:
            body["model"] = self.model
        for k, v in self.params.items():
            body.setdefault(k, v)
        if self.kind == "chat" and not isinstance(body.get("messages"), list):
            row_errors[pos] = InputError("a chat request body needs a 'messages' list", row=index[pos])
            return
        self._add(pos, body, row_errors, index)

    def _add(self, pos: int, body: dict, row_errors: dict[int, InputError], index: pd.Index) -> None:
        try:
            key = row_key(self.endpoint, self.kind, body)
        except (orjson.JSONEncodeError, TypeError) as exc:
            row_errors[pos] = InputError(_unencodable_message(exc), row=index[pos])
            return
        at = self.by_key.get(key)
        if at is None:
            at = self.by_key[key] = len(self.items)
            max_out = self.max_output
            if "max_tokens" in body or "max_completion_tokens" in body:
                max_out = _tokens.max_output_tokens(self.kind, body)
            self.items.append(Item(key, body, _tokens.estimate_prompt_tokens(self.kind, body), max_out))
        self.items[at].rows.append(pos)
        self.row_item[pos] = at

    def plan(self, index, frame, n, row_errors, skipped, template) -> Plan:
        row_item = [-1] * n
        for pos, at in self.row_item.items():
            row_item[pos] = at
        return Plan(self.kind, self.endpoint, index, frame, self.items, row_item, row_errors,
                    skipped, template)


def _unencodable_message(exc: Exception) -> str:
    text = str(exc)
    if "surrogates" in text or "UTF-8" in text:
        return ("the row's text contains a lone surrogate (half of a UTF-16 pair), which JSON "
                "cannot carry; clean it with s.encode('utf-8', 'replace').decode()")
    return f"the row cannot be encoded as JSON: {text}"


def _check_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "a chat row must be a non-empty list of messages"
    for m in messages:
        if not isinstance(m, Mapping) or "role" not in m:
            return "each message must be a dict with a 'role' and 'content'"
    return None


def _frame_template(template: str | None, frame: pd.DataFrame):
    if template is None:
        if frame.shape[1] == 1:
            return parse_template("{" + str(frame.columns[0]).replace("{", "{{").replace("}", "}}") + "}")
        raise TemplateError(
            f"a DataFrame with {frame.shape[1]} columns needs a prompt template naming its columns, "
            f"e.g. prompt='Summarise: {{{frame.columns[0] if len(frame.columns) else 'text'}}}'"
        )
    return parse_template(template)


def _missing_columns_message(missing, columns, what: str = "the template") -> str:
    have = ", ".join(repr(str(c)) for c in list(columns)[:30])
    more = f" (and {len(columns) - 30} more)" if len(columns) > 30 else ""
    names = ", ".join(repr(m) for m in missing)
    return f"{what} names column{'s' if len(missing) > 1 else ''} {names}, which the DataFrame " \
           f"does not have; its columns are: {have}{more}"


def _normalise(inputs: Any, kind: str) -> tuple[str, pd.Index, pd.DataFrame, list | None]:
    """(shape, index, input frame for the result, per-row values for non-frame shapes)."""
    if inputs is None:
        raise ConfigError("inputs is None; pass a DataFrame, a Series, or a list of prompts")
    if isinstance(inputs, pd.DataFrame):
        if not inputs.columns.is_unique:
            dup = inputs.columns[inputs.columns.duplicated()].tolist()
            raise ConfigError(f"the DataFrame has duplicate column names: {dup}")
        return "frame", inputs.index, inputs, None
    if isinstance(inputs, pd.Series):
        name = inputs.name if inputs.name is not None else "input"
        return "texts", inputs.index, inputs.to_frame(name=name), inputs.tolist()
    if isinstance(inputs, str):
        rows: list = [inputs]
    elif isinstance(inputs, Mapping):
        raise ConfigError("a dict is not a list of rows; pass a DataFrame, or a list of request bodies")
    elif isinstance(inputs, Iterable):
        rows = list(inputs)
    else:
        raise ConfigError(f"cannot take rows from a {type(inputs).__name__}")
    index = pd.RangeIndex(len(rows))
    frame = pd.DataFrame({"input": pd.Series(rows, index=index, dtype=object)})
    if not rows:
        return "texts", index, frame, rows
    kinds = {_element_shape(r) for r in rows}
    kinds.discard("missing")
    if len(kinds) > 1:
        raise ConfigError(
            "the list mixes texts, message lists and request bodies; pass one kind of element"
        )
    shape = kinds.pop() if kinds else "texts"
    return shape, index, frame, rows


def _element_shape(value: Any) -> str:
    if isinstance(value, str):
        return "texts"
    if isinstance(value, Mapping):
        return "bodies"
    if isinstance(value, (list, tuple)):
        return "messages"
    if is_missing(value):
        return "missing"
    return "texts"  # numbers and other scalars are rendered as text
