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
import sys
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


def _plain_param(name: str, value: Any) -> Any:
    """A generation parameter as JSON can carry it: numpy scalars become plain numbers (the wire
    encoder refuses them, and ``max_tokens`` budgets read ints), NaN and inf are refused (JSON has
    neither; they would go out as null)."""
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        value = value.tolist()  # a scalar or an array, as plain Python
    if isinstance(value, Mapping):
        return {k: _plain_param(f"{name}[{k!r}]", v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_param(f"{name}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return value


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
    params = {k: _plain_param(f"params[{k!r}]", v) for k, v in (params or {}).items()}
    for name in ("max_tokens", "max_completion_tokens", "max_new_tokens", "n"):
        value = params.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):
            raise ConfigError(f"params[{name!r}] must be a positive integer, got {value!r}")
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
        if images is None:  # with images= each row still differs by its pictures
            _require_a_field(tmpl, frame.columns)
        labels = _field_columns(fields, frame.columns)
        if images is not None and images not in frame.columns:
            raise TemplateError(_missing_columns_message([images], frame.columns, what="images="))
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
        if tmpl is not None:
            _require_a_field(tmpl, None)
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
        if self.kind == "embedding" and _nothing_to_embed(prompt):
            row_errors[pos] = InputError(NOTHING_TO_EMBED, row=index[pos])
            return
        body = _kinds.build_body(self.kind, prompt, self.model, self.params, self.system, urls)
        self._add(pos, body, row_errors, index)

    def add_body(self, pos: int, body: dict, row_errors: dict[int, InputError],
                 index: pd.Index) -> None:
        if self.model and "model" not in body:
            body["model"] = self.model
        for k, v in self.params.items():
            body.setdefault(k, v)
        problem = _body_problem(self.kind, body, self.system)
        if problem:
            row_errors[pos] = InputError(problem, row=index[pos])
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


#: why an empty text is refused before sending, not left to the provider: embedding inputs are
#: packed many to a request, and one blank input fails the whole request (OpenAI 400 "'$.input'
#: is invalid"). Whitespace-only counts as blank: SGLang, NVIDIA NIM and SiliconFlow's bge-m3
#: refuse it too, and its vector would mean nothing anyway.
NOTHING_TO_EMBED = ("the text is empty or only whitespace, so there is nothing to embed (a "
                    "provider would refuse it, and with it every row packed into the same request)")


def _nothing_to_embed(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, list) and (not value or all(_nothing_to_embed(v) for v in value))


def _body_problem(kind: str, body: dict, system: str | None) -> str | None:
    """Why a whole request body (Qianfan's ``body_list`` style) cannot be sent, or None."""
    if kind == "embedding":
        return NOTHING_TO_EMBED if _nothing_to_embed(body.get("input")) else None
    if kind != "chat":
        return None
    if not isinstance(body.get("messages"), list):
        return "a chat request body needs a 'messages' list"
    return _check_messages(body["messages"]) or _system_into_messages(body, system)


def _system_into_messages(body: dict, system: str | None) -> str | None:
    """Qianfan's v1 API took ``system`` as a body field; its OpenAI-compatible v2 (like every
    server we send to) wants a leading system message, so the field becomes one. ``system=``
    fills in where a body has neither, as it does for message lists. Returns why not, or None."""
    own = body.pop("system", None)
    if own is not None and not isinstance(own, str):
        return f"the body's 'system' field must be text, not {type(own).__name__}"
    messages = body["messages"]
    lead = messages[0]
    if lead.get("role") in ("system", "developer"):
        if own and lead.get("content") != own:
            return ("the body has a 'system' field and a different leading system message; "
                    "keep one of them")
        return None
    text = own or system
    if text:
        body["messages"] = [{"role": "system", "content": text}, *messages]  # the caller's list stays
    return None


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


def _require_a_field(tmpl, columns: pd.Index | None) -> None:
    """One rule for texts and DataFrames: a template with no field would send every row the same
    prompt (one request, its answer copied to every row), which is never what was meant."""
    if tmpl.fields:
        return
    if columns is None:
        raise TemplateError(
            "the template has no field for the text; add {} or {text} where each text goes")
    names = ", ".join("{" + str(c) + "}" for c in list(columns)[:5]) or "{column}"
    raise TemplateError(
        f"the template has no field, so every row would get the same prompt; name the columns "
        f"each row fills in, e.g. {names} (or pass images= for a prompt about each row's images)")


def _field_columns(fields: tuple[str, ...], columns: pd.Index) -> list:
    """The column label each template field reads. Fields are strings, labels may not be
    (``pd.DataFrame(list)`` has column 0); ``{}`` reads the only column of a one-column frame."""
    by_str = {str(c): c for c in columns}
    labels, missing = [], []
    for f in fields:
        if f == "" and len(columns) != 1:
            raise TemplateError(
                "{} stands for the one text of each row, but the DataFrame has "
                f"{len(columns)} columns; name the column instead, e.g. "
                f"{{{columns[0] if len(columns) else 'text'}}}")
        if f == "":
            labels.append(columns[0])
        elif f in columns:
            labels.append(f)
        elif f in by_str:
            labels.append(by_str[f])
        else:
            missing.append(f)
    if missing:
        raise TemplateError(_missing_columns_message(missing, columns))
    return labels


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
    inputs = _from_table_library(inputs)
    if isinstance(inputs, pd.DataFrame):
        if not inputs.columns.is_unique:
            dup = inputs.columns[inputs.columns.duplicated()].tolist()
            raise ConfigError(f"the DataFrame has duplicate column names: {dup}")
        return "frame", inputs.index, inputs, None
    if isinstance(inputs, pd.Series):
        name = inputs.name if inputs.name is not None else "input"
        return "texts", inputs.index, inputs.to_frame(name=name), inputs.tolist()
    rows = _rows_of(inputs)
    index = pd.RangeIndex(len(rows))
    frame = pd.DataFrame({"input": pd.Series(rows, index=index, dtype=object)})
    if not rows:
        return "texts", index, frame, rows
    kinds = {_element_shape(r) for r in rows}
    kinds.discard("missing")
    if "bytes" in kinds:
        raise ConfigError("the list holds bytes, not text; decode them first, e.g. "
                          "[b.decode('utf-8') for b in data]")
    if len(kinds) > 1:
        raise ConfigError(
            "the list mixes texts, message lists and request bodies; pass one kind of element"
        )
    shape = kinds.pop() if kinds else "texts"
    return shape, index, frame, rows


def is_foreign_table(value: Any) -> bool:
    """A polars or pyarrow table or column: rows to read, though not a pandas object."""
    classes: list[type] = []
    pl = sys.modules.get("polars")
    if pl is not None:
        classes += [pl.DataFrame, pl.Series, pl.LazyFrame]
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        classes += [pa.Table, pa.RecordBatch, pa.Array, pa.ChunkedArray]
    return isinstance(value, tuple(classes))


def _from_table_library(inputs: Any) -> Any:
    """A polars or pyarrow table (or column) as its pandas twin; anything else unchanged.

    Neither library is imported for this: an object of theirs means its library is loaded
    already. Iterating them would be wrong: a polars DataFrame iterates its columns."""
    pl = sys.modules.get("polars")
    if pl is not None:
        if isinstance(inputs, pl.DataFrame):
            return _frame_of_columns(inputs.columns,
                                     [inputs.get_column(c).to_list() for c in inputs.columns])
        if isinstance(inputs, pl.Series):
            return pd.Series(_column(inputs.to_list()), name=inputs.name or None)
        if isinstance(inputs, pl.LazyFrame):
            raise ConfigError("a polars LazyFrame has no rows until it is collected; "
                              "pass lazy_frame.collect()")
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        if isinstance(inputs, (pa.Table, pa.RecordBatch)):
            if inputs.schema.pandas_metadata:  # written from pandas: its index and dtypes return
                return inputs.to_pandas()
            return _frame_of_columns(inputs.column_names,
                                     [c.to_pylist() for c in inputs.columns])
        if isinstance(inputs, (pa.Array, pa.ChunkedArray)):
            return pd.Series(_column(inputs.to_pylist()))
    return inputs


def _frame_of_columns(names: list[str], columns: list[list]) -> pd.DataFrame:
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"the table has duplicate column names: {dup}")
    return pd.DataFrame({n: _column(v) for n, v in zip(names, columns)},
                        index=pd.RangeIndex(len(columns[0]) if columns else 0))


def _column(values: list) -> pd.Series:
    """Nulls stay missing without changing the other values: pandas would turn a column of
    ints with one null into floats, and ``{n}`` would then read ``2.0``."""
    if any(v is None for v in values):
        return pd.Series(values, dtype=object)
    return pd.Series(values)


def _rows_of(inputs: Any) -> list:
    """The rows of a list-like input, in order; a ConfigError for what has no clear rows."""
    if isinstance(inputs, str):
        return [inputs]
    if isinstance(inputs, (bytes, bytearray, memoryview)):
        raise ConfigError(f"inputs is {type(inputs).__name__}, not text (it would be one row per "
                          "byte); decode it first, e.g. data.decode('utf-8')")
    if isinstance(inputs, Mapping):
        if any(k in inputs for k in ("messages", "prompt", "input")):
            raise ConfigError("a dict is one request body; pass a list of them, e.g. [body]")
        raise ConfigError("a dict is not a list of rows; for columns pass pd.DataFrame(d), "
                          "for request bodies a list of dicts")
    if isinstance(inputs, (set, frozenset)):
        raise ConfigError("a set has no order, so results could not follow the inputs; "
                          "pass a list, e.g. sorted(s)")
    ndim = getattr(inputs, "ndim", 1)
    if ndim != 1:
        raise ConfigError(f"a {ndim}-dimensional array has no rows of text; pass a 1-D array "
                          "of texts, or pd.DataFrame(array, columns=[...]) with a template")
    if hasattr(inputs, "__dataframe__") or hasattr(inputs, "__arrow_c_stream__"):
        raise ConfigError(f"a {type(inputs).__module__}.{type(inputs).__name__} is a table "
                          "batchmagic does not read directly; convert it to pandas first "
                          "(e.g. its .to_pandas())")
    if isinstance(inputs, Iterable):
        return list(inputs)
    raise ConfigError(f"cannot take rows from a {type(inputs).__name__}; pass a DataFrame, "
                      "a Series or a list of prompts")


def _element_shape(value: Any) -> str:
    if isinstance(value, str):
        return "texts"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(value, Mapping):
        return "bodies"
    if isinstance(value, (list, tuple)):
        return "messages"
    if is_missing(value):
        return "missing"
    return "texts"  # numbers and other scalars are rendered as text
