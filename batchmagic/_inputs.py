"""Inputs + template -> a plan: one request body per unique request, each with a stable row key.

Planning runs in two stages. A *shape step* (one per input shape: a DataFrame with a template,
texts, message lists, whole request bodies) reads the rows and hands on each row's request in one
common form, a :data:`Draft`. The *shared steps* (:class:`_Planner`) then run once per row,
whatever its shape: the missing-value rule, image references, the request body, blank embedding
input, the row key (which fails for text JSON cannot carry), and de-duplication with token
estimates. Tables from polars or pyarrow are turned into pandas before any of it.

Everything that can be checked before spending is checked here. A problem with one row becomes
that row's ``InputError``; a problem with the call as a whole raises ``ConfigError`` /
``TemplateError``.

The row key is a hash of everything that shapes the request (endpoint, kind, the body with model
and parameters) and nothing else: it is the de-duplication key, the cache/resume key and the
source of Batch API ``custom_id``s. Identical requests are planned once and fanned out when
their answer is deterministic (temperature 0, embeddings) or ``dedupe=True``; otherwise each row
is its own draw, and ``samples=K`` asks K draws per row: a later draw's key is derived from the
request's (``draw_key``), so re-runs and resumes find the same answers.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd

from . import _kinds, _tokens
from ._errors import ConfigError, InputError, TemplateError
from ._media import MediaError, image_url
from ._requests import (
    Encoded,
    NoSlot,
    RequestTable,
    Slot,
    encode_texts,
    hash_keys,
    hex_keys,
    make_slot,
    text_parts,
)
from ._template import Template, parse_template

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
    # an answer drawn again for the same request (samples, or rows that are not de-duplicated):
    # the key of the request itself, and which draw of it this is (0 for the first)
    base: str | None = None
    draw: int = 0


class Plan:
    """The rows of a run and the unique requests that answer them.

    Requests are ``Item`` objects, or, for rows planned with a slot (``_requests``), the columns
    of a ``RequestTable`` (``table``). Hot paths read either through the accessors below (``key``,
    ``keys``, ``rows_of``, ``rows_for``, ``item_rows``); ``items`` is always there for the
    readers that want objects: asking it for an element builds them once from the table, and
    the plan keeps them (``len(plan.items)`` builds nothing).
    """

    def __init__(self, kind: str, endpoint: str, index: pd.Index, frame: pd.DataFrame,
                 items: list[Item] | None, row_item: Any, row_errors: dict[int, InputError],
                 skipped: set[int], template: str | None = None, samples: int = 1, *,
                 table: RequestTable | None = None):
        self.kind = kind
        self.endpoint = endpoint
        self.index = index
        self.frame = frame  # the input columns the result frame starts with
        self.row_errors = row_errors
        self.skipped = skipped
        self.template = template
        self.samples = samples  # output rows per input row (each its own answer)
        self.table = table
        self._items = items
        self._row_item = np.asarray(row_item, dtype=np.int64)  # per output row: item, or -1
        self._by_item: tuple[np.ndarray, np.ndarray] | None = None
        self._identity: bool | None = None

    @property
    def n_rows(self) -> int:
        return len(self._row_item)

    @property
    def n_items(self) -> int:
        return len(self.table) if self.table is not None else len(self._items or ())

    @property
    def row_item(self) -> np.ndarray:
        """Per output row: the index of the request that answers it, or -1."""
        return self._row_item

    @property
    def items(self) -> Sequence[Item]:
        if self.table is None:
            return self._items  # type: ignore[return-value]
        return _Items(self)

    def materialize(self) -> list[Item]:
        """The requests as ``Item`` objects, built once from the table; the plan keeps them."""
        table = self.table
        if table is not None:
            tokens = table.prompt_tokens.tolist()
            max_output = table.slot.max_output
            self._items = []
            for i in range(len(table)):
                key = table.key(i)
                self._items.append(Item(
                    key, table.body(i), tokens[i], max_output, self.rows_of(i),
                    base=table.base[i].decode() if table.base is not None else key,
                    draw=int(table.draw[i]) if table.draw is not None else 0))
            self.table = None
        return self._items  # type: ignore[return-value]

    def key(self, i: int) -> str:
        return self.table.key(i) if self.table is not None else self._items[i].key

    @property
    def keys(self) -> Sequence[str] | np.ndarray:
        """Every request's row key, in item order (an ``S32`` array for a table)."""
        if self.table is not None:
            return self.table.keys
        return [item.key for item in self._items or ()]

    @property
    def identity(self) -> bool:
        """Each row answered by a request of its own, in order (request i answers row i)."""
        if self._identity is None:  # the rows and their requests do not change once planned
            self._identity = self.n_items == self.n_rows and (
                self.n_rows == 0 or bool((self._row_item == np.arange(self.n_rows)).all()))
        return self._identity

    def _rows_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows sorted by their request, where each request's rows start): request ``i``
        answers ``rows[starts[i]:starts[i + 1]]``, in row order."""
        if self._by_item is None:
            taken = np.flatnonzero(self._row_item >= 0)
            order = taken[np.argsort(self._row_item[taken], kind="stable")]
            counts = np.bincount(self._row_item[taken], minlength=self.n_items)
            starts = np.zeros(self.n_items + 1, dtype=np.int64)
            np.cumsum(counts, out=starts[1:])
            self._by_item = (order, starts)
        return self._by_item

    def rows_of(self, i: int) -> list[int]:
        """The output rows request ``i`` answers."""
        if self.table is None:
            return self._items[i].rows
        if self.identity:
            return [i]
        order, starts = self._rows_index()
        return order[starts[i]:starts[i + 1]].tolist()

    def rows_for(self, items: np.ndarray) -> np.ndarray:
        """The output rows requests ``items`` answer (for each request, its rows, in order)."""
        if self.table is None:
            return np.array([r for i in items.tolist() for r in self._items[i].rows],
                            dtype=np.int64)
        if self.identity:
            return np.asarray(items, dtype=np.int64)
        order, starts = self._rows_index()
        if not len(items):
            return np.zeros(0, dtype=np.int64)
        counts = starts[items + 1] - starts[items]
        at = np.repeat(starts[items] - np.cumsum(counts) + counts, counts) + \
            np.arange(int(counts.sum()))
        return order[at]

    def item_rows(self) -> np.ndarray:
        """How many output rows each request answers."""
        if self.table is None:
            return np.array([len(item.rows) for item in self._items or ()], dtype=np.int64)
        order, starts = self._rows_index()
        return np.diff(starts)

    def prompt_tokens(self, items: list[int]) -> int:
        """The estimated prompt tokens of requests ``items`` together."""
        if self.table is not None:
            return self.table.tokens_of(items)
        return sum(self._items[i].prompt_tokens for i in items)

    def max_output(self, items: list[int]) -> int:
        """The most output tokens requests ``items`` may produce together."""
        if self.table is not None:
            return self.table.slot.max_output * len(items)
        return sum(self._items[i].max_output for i in items)

    def add_prompt_tokens(self, extra: int) -> None:
        """Count ``extra`` more prompt tokens in every request (a schema providers count)."""
        if self.table is not None:
            self.table.extra_tokens += extra
            return
        for item in self._items or ():
            item.prompt_tokens += extra

    def first_body(self) -> dict | None:
        """The first request's body (for showing), or None."""
        if not self.n_items:
            return None
        return self.table.body(0) if self.table is not None else self._items[0].body


class _Items(Sequence):
    """``plan.items`` of a plan with a table: its length at once, anything more builds the
    ``Item`` objects (once)."""

    def __init__(self, plan: Plan):
        self._plan = plan

    def __len__(self) -> int:
        return self._plan.n_items

    def __getitem__(self, i):  # noqa: ANN001
        return self._plan.materialize()[i]

    def __iter__(self):  # noqa: ANN204
        return iter(self._plan.materialize())


def row_key(endpoint: str, kind: str, body: dict) -> str:
    raw = orjson.dumps(body, option=_DUMP_OPTS)
    return hashlib.sha256(b"%s\0%s\0%s" % (endpoint.encode(), kind.encode(), raw)).hexdigest()[:32]


def draw_key(base: str, draw: int) -> str:
    """The key of another answer to the same request: the first draw keeps the request's own
    key (so a plain run and a first sample share their cache), later draws a key of their own,
    the same on every run (so a re-run finds the same K answers, and a resumed run asks only
    for the missing ones)."""
    if draw == 0:
        return base
    return hashlib.sha256(b"%s\0draw\0%d" % (base.encode(), draw)).hexdigest()[:32]


def deterministic(kind: str, body: dict) -> bool:
    """Whether identical requests get identical answers: embeddings, or temperature 0."""
    return kind == "embedding" or body.get("temperature") == 0


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
    samples: int = 1,
    dedupe: bool | None = None,
) -> Plan:
    """Check the call, read the rows by their shape, then run the shared steps over each row.
    ``samples`` answers per row become as many output rows; identical requests are sent once
    when ``dedupe`` says so (None: when the answer is deterministic)."""
    call = _Call(kind, model, _checked_params(kind, on_missing, params, system), system)
    table = _normalise(inputs)
    tmpl, drafts = _SHAPE_STEPS[table.shape](table, template, images, call)
    index, frame = table.index, table.frame
    if samples > 1:  # each input row K times, in order, with its own label
        index = index.repeat(samples)
        frame = frame.iloc[[pos for pos in range(len(frame)) for _ in range(samples)]]
    source = tmpl.source if tmpl is not None else None
    slot = _slot_for(call, endpoint, table.shape, images, samples)
    if slot is not None:  # every row one text in the same body: planned all at once
        planner = _SlotPlanner(slot, call, on_missing, index, dedupe)
        texts = table.values if tmpl is None and _all_text(table.values) else None
        request_table, row_item = planner.plan(len(index), drafts, texts)
        return Plan(kind, endpoint, index, frame, None, row_item, planner.row_errors,
                    planner.skipped, source, samples, table=request_table)
    planner = _Planner(call, endpoint, on_missing, allow_private_urls, index, samples, dedupe)
    for pos, request, image_refs, missing in drafts:
        planner.take(pos, request, image_refs, missing)
    return Plan(kind, endpoint, index, frame, planner.items, planner.row_item,
                planner.row_errors, planner.skipped, source, samples)


def _slot_for(call: _Call, endpoint: str, shape: str, images: str | None,
              samples: int) -> Slot | None:
    """The slot body when every row is one text in the same body (texts or a DataFrame's
    template, no images, one answer per row), else None: rows are then planned one by one."""
    if shape not in ("texts", "frame") or images is not None or samples != 1:
        return None
    try:
        return make_slot(call.kind, endpoint, call.model, call.params, call.system)
    except NoSlot:
        return None


def _all_text(values: list | None) -> bool:
    return values is not None and set(map(type, values)) <= {str}


@dataclass(frozen=True, slots=True)
class _Call:
    """What every row's request shares: the kind, the model, its parameters, the system prompt."""

    kind: str
    model: str | None
    params: dict
    system: str | None


def _checked_params(kind: str, on_missing: str, params: Mapping[str, Any] | None,
                    system: str | None) -> dict:
    """The call's own checks, before any row is read; ``params`` as JSON can carry them."""
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
    return params


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


# -- the common form a shape step hands on ----------------------------------------------------------


class _Refused(Exception):
    """Why a row cannot become a request. A shape step hands one on in the request's place, a
    shared step raises one; either way the row gets an ``InputError`` and nothing is sent."""


#: One row after its shape step: ``(position, request, image references, missing)``.
#: ``request`` is a rendered prompt (text), a message list, a whole request body (a dict), or a
#: ``_Refused``. ``missing`` is None, or the template fields whose values were missing (empty for
#: a text, which has no field to name); the request was then rendered with them blank, which is
#: what ``on_missing='empty'`` sends.
Draft = tuple[int, Any, Any, "tuple[str, ...] | None"]
#: a shape step: (the table, the template, images=, the call) -> (the template used, the drafts)
_ShapeStep = Callable[["_Table", "str | None", "str | None", _Call],
                      "tuple[Template | None, Iterable[Draft]]"]

_NO_FIELD: tuple[str, ...] = ()  # a missing text: missing, with no column to name


def _cannot_format(exc: Exception) -> _Refused:
    """A format spec that does not fit the row's value (``{price:.2f}`` over text)."""
    return _Refused(f"the template cannot format this row: {exc}")


# -- shape: a DataFrame and a template naming its columns ---------------------------------------------


def _frame_drafts(table: _Table, template: str | None, images: str | None,
                  call: _Call) -> tuple[Template, Iterable[Draft]]:
    frame = table.frame
    tmpl = _frame_template(template, frame)
    if images is None:  # with images= each row still differs by its pictures
        _require_a_field(tmpl, frame.columns)
    labels = _field_columns(tmpl.fields, frame.columns)
    if images is not None and images not in frame.columns:
        raise TemplateError(_missing_columns_message([images], frame.columns, what="images="))
    image_refs = frame[images].tolist() if images is not None else itertools.repeat(None)
    return tmpl, _frame_rows(tmpl, frame[labels], image_refs)


def _frame_rows(tmpl: Template, fields_frame: pd.DataFrame,
                image_refs: Iterable[Any]) -> Iterator[Draft]:
    names, render = tmpl.fields, tmpl.render
    missing_at = fields_frame.isna().to_numpy()
    row_has_missing = missing_at.any(axis=1).tolist()  # at once: a numpy call per row is slow
    rows = fields_frame.itertuples(index=False, name=None)
    for pos, (values, refs) in enumerate(zip(rows, image_refs)):
        missing = None
        if row_has_missing[pos]:
            missing = tuple(n for n, m in zip(names, missing_at[pos]) if m)
            values = tuple("" if m else v for v, m in zip(values, missing_at[pos]))
        try:
            prompt = render(dict(zip(names, values)))
        except (ValueError, TypeError) as exc:
            prompt = _cannot_format(exc)
        yield pos, prompt, refs, missing


def _frame_template(template: str | None, frame: pd.DataFrame) -> Template:
    if template is None:
        if frame.shape[1] == 1:
            return parse_template("{" + str(frame.columns[0]).replace("{", "{{").replace("}", "}}") + "}")
        raise TemplateError(
            f"a DataFrame with {frame.shape[1]} columns needs a prompt template naming its columns, "
            f"e.g. prompt='Summarise: {{{frame.columns[0] if len(frame.columns) else 'text'}}}'"
        )
    return parse_template(template)


def _require_a_field(tmpl: Template, columns: pd.Index | None) -> None:
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


# -- shape: texts (a Series or a list), filling the template's one field or sent as they are ---------


def _text_drafts(table: _Table, template: str | None, images: str | None,
                 call: _Call) -> tuple[Template | None, Iterable[Draft]]:
    _refuse_images(images)
    tmpl = _text_template(template)
    return tmpl, _text_rows(table.values, tmpl)


def _text_rows(values: list, tmpl: Template | None) -> Iterator[Draft]:
    """Each text as its prompt: filled into the template's one field, or as it is."""
    render, name = (tmpl.render, tmpl.fields[0]) if tmpl is not None else (None, "")
    for pos, value in enumerate(values):
        missing = None
        if type(value) is not str and is_missing(value):  # a str, the usual row, never is
            value, missing = "", _NO_FIELD
        try:
            if render is not None:
                prompt = render({name: value})
            else:
                prompt = value if isinstance(value, str) else str(value)
        except (ValueError, TypeError) as exc:
            prompt = _cannot_format(exc)
        yield pos, prompt, None, missing


def _text_template(template: str | None) -> Template | None:
    if template is None:
        return None
    tmpl = parse_template(template)
    if len(tmpl.fields) > 1:
        raise TemplateError(
            f"a list or Series of texts fills one template field, but the template has "
            f"{len(tmpl.fields)}: {', '.join('{' + f + '}' for f in tmpl.fields)}; "
            "pass a DataFrame to fill several columns"
        )
    _require_a_field(tmpl, None)
    return tmpl


def _refuse_images(images: str | None) -> None:
    if images is not None:
        raise ConfigError("images= names a column, so it needs a DataFrame input")


def _refuse_template(template: str | None) -> None:
    if template is not None:
        raise TemplateError(
            "a template applies to texts or DataFrame rows; message lists and request bodies are "
            "sent as they are, so pass prompt=None"
        )


# -- shape: chat message lists, sent as they are ------------------------------------------------------


def _message_drafts(table: _Table, template: str | None, images: str | None,
                    call: _Call) -> tuple[None, Iterable[Draft]]:
    _refuse_images(images)
    _refuse_template(template)
    if call.kind != "chat":
        raise ConfigError(f"message lists are chat inputs, but kind={call.kind!r}")
    return None, ((pos, _checked_messages(messages), None, None)
                  for pos, messages in enumerate(table.values))


def _checked_messages(messages: Any) -> list | _Refused:
    problem = _messages_problem(messages)
    return _Refused(problem) if problem else messages


def _messages_problem(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "a chat row must be a non-empty list of messages"
    for m in messages:
        if not isinstance(m, Mapping) or "role" not in m:
            return "each message must be a dict with a 'role' and 'content'"
    return None


# -- shape: whole request bodies (Qianfan's ``body_list``) --------------------------------------------


def _body_drafts(table: _Table, template: str | None, images: str | None,
                 call: _Call) -> tuple[None, Iterable[Draft]]:
    _refuse_images(images)
    _refuse_template(template)
    return None, ((pos, _whole_body(body, call), None, None)
                  for pos, body in enumerate(table.values))


def _whole_body(body: Any, call: _Call) -> dict | _Refused:
    """The body as sent: a copy (the caller's dict stays as it was) with the call's model and
    parameters filling what it leaves out."""
    if not isinstance(body, Mapping):
        return _Refused(f"a request body must be a dict, not {type(body).__name__}")
    body = dict(body)
    if call.model and "model" not in body:
        body["model"] = call.model
    for k, v in call.params.items():
        body.setdefault(k, v)
    if call.kind != "chat":
        return body
    if not isinstance(body.get("messages"), list):
        return _Refused("a chat request body needs a 'messages' list")
    problem = _messages_problem(body["messages"]) or _system_into_messages(body, call.system)
    return _Refused(problem) if problem else body


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


_SHAPE_STEPS: dict[str, _ShapeStep] = {
    "frame": _frame_drafts,
    "texts": _text_drafts,
    "messages": _message_drafts,
    "bodies": _body_drafts,
}


# -- the steps every shape shares ---------------------------------------------------------------------


class _Planner:
    """Takes each row's draft through the shared steps, in this order: the missing-value rule,
    the row's own refusal, image references, the request body, blank embedding input, the row
    key (JSON must carry the body), then one ``Item`` per unique key."""

    def __init__(self, call: _Call, endpoint: str, on_missing: str, allow_private_urls: bool,
                 index: pd.Index, samples: int = 1, dedupe: bool | None = None):
        self.samples, self.dedupe = samples, dedupe
        self.seen: dict[str, int] = {}  # requests not de-duplicated: rows that made each so far
        # the call's fields as plain attributes: they are read for every row
        self.kind, self.model, self.params, self.system = (call.kind, call.model, call.params,
                                                           call.system)
        self.endpoint, self.on_missing, self.index = endpoint, on_missing, index
        self.allow_private_urls = allow_private_urls
        self.items: list[Item] = []
        self.by_key: dict[str, int] = {}
        self.row_item = [-1] * len(index)
        self.row_errors: dict[int, InputError] = {}
        self.skipped: set[int] = set()
        self.max_output = _tokens.max_output_tokens(call.kind, call.params)

    def take(self, pos: int, request: Any, image_refs: Any,
             missing: tuple[str, ...] | None) -> None:
        """One row's draft through the shared steps; a refusal at any step is its InputError.
        Input row ``pos`` has the output rows ``pos * samples + s``."""
        if missing is not None and self.on_missing != "empty":
            self._apply_missing_rule(pos, missing)
            return
        try:
            if isinstance(request, _Refused):  # its shape step refused it
                raise request
            whole = isinstance(request, dict)  # prompts are text or message lists, never dicts
            body = request if whole else _kinds.build_body(
                self.kind, request, self.model, self.params, self.system,
                None if image_refs is None else _image_urls(image_refs, self.allow_private_urls))
            if self.kind == "embedding" and _nothing_to_embed(body.get("input")):
                raise _Refused(NOTHING_TO_EMBED)
            self._add(pos, body, whole)
        except _Refused as why:
            for out in self._outputs(pos):
                self.row_errors[out] = InputError(str(why), row=self.index[out])

    def _outputs(self, pos: int) -> range:
        return range(pos * self.samples, (pos + 1) * self.samples)

    def _apply_missing_rule(self, pos: int, missing: tuple[str, ...]) -> None:
        """The one place ``on_missing`` is read ('empty' sends the row as its step rendered it)."""
        if self.on_missing == "skip":
            self.skipped.update(self._outputs(pos))
            return
        for out in self._outputs(pos):
            self.row_errors[out] = InputError(_missing_message(missing), row=self.index[out])

    def _add(self, pos: int, body: dict, whole: bool) -> None:
        """The row's output rows join the items of their draws, or start them (JSON must carry
        the body). De-duplicated rows share draws ``0..K-1``; a row that is not gets draws of
        its own after those of the identical rows before it."""
        try:
            base = row_key(self.endpoint, self.kind, body)
        except (orjson.JSONEncodeError, TypeError) as exc:
            raise _Refused(_unencodable_message(exc)) from None
        shared = self.dedupe if self.dedupe is not None else deterministic(self.kind, body)
        first = 0
        if not shared:
            first = self.seen.get(base, 0) * self.samples
            self.seen[base] = self.seen.get(base, 0) + 1
        for s, out in enumerate(self._outputs(pos)):
            at = self._item(base, first + s, body, whole)
            self.items[at].rows.append(out)
            self.row_item[out] = at

    def _item(self, base: str, draw: int, body: dict, whole: bool) -> int:
        key = draw_key(base, draw)
        at = self.by_key.get(key)
        if at is None:
            at = self.by_key[key] = len(self.items)
            max_output = self._own_max_output(body) if whole else self.max_output
            tokens = _tokens.estimate_prompt_tokens(self.kind, body)
            self.items.append(Item(key, body, tokens, max_output, base=base, draw=draw))
        return at

    def _own_max_output(self, body: dict) -> int:
        """A whole body may set its own output limit; built bodies carry the call's."""
        if "max_tokens" in body or "max_completion_tokens" in body:
            return _tokens.max_output_tokens(self.kind, body)
        return self.max_output


class _SlotPlanner:
    """The shared steps for rows planned with a slot (``_requests``), over all rows at once:
    the missing-value rule and refusals row by row (they are few), then one encoding of every
    text, a hash per row, and de-duplication over the keys. The same rules as ``_Planner``, the
    same keys, the same requests."""

    def __init__(self, slot: Slot, call: _Call, on_missing: str, index: pd.Index,
                 dedupe: bool | None):
        self.slot, self.kind, self.on_missing, self.index = slot, call.kind, on_missing, index
        self.shared = dedupe if dedupe is not None else deterministic(call.kind, slot.body)
        self.row_errors: dict[int, InputError] = {}
        self.skipped: set[int] = set()

    def plan(self, n_rows: int, drafts: Iterable[Draft],
             texts: list[str] | None) -> tuple[RequestTable, np.ndarray]:
        """(the requests, each row's request or -1). ``texts``: every row's text, when the rows
        are texts sent as they are (no draft needed)."""
        if texts is not None:
            rows = np.arange(n_rows, dtype=np.int64)
            if self.kind == "embedding" and not all(map(str.strip, texts)):
                rows, texts = self._embeddable(rows, texts)
        else:
            rows, texts = self._texts(drafts)
        encoded, rows, texts = self._encoded(rows, texts)
        item_of, first, keys, base, draw = self._unique(texts, encoded)
        row_item = np.full(n_rows, -1, dtype=np.int64)
        row_item[rows] = item_of
        unique_texts = texts if len(first) == len(texts) else [texts[j] for j in first.tolist()]
        return RequestTable(self.slot, unique_texts, encoded, first, keys, base, draw), row_item

    def _texts(self, drafts: Iterable[Draft]) -> tuple[np.ndarray, list[str]]:
        """The rows with a text to send, and their texts; the others get their InputError or
        are skipped, as ``_Planner.take`` does it."""
        rows: list[int] = []
        texts: list[str] = []
        blank = self.kind == "embedding"
        for pos, request, _refs, missing in drafts:
            if missing is not None and self.on_missing != "empty":
                self._missing(pos, missing)
            elif isinstance(request, _Refused):
                self._refuse(pos, str(request))
            elif blank and not request.strip():
                self._refuse(pos, NOTHING_TO_EMBED)
            else:
                rows.append(pos)
                texts.append(request)
        return np.array(rows, dtype=np.int64), texts

    def _embeddable(self, rows: np.ndarray, texts: list[str]) -> tuple[np.ndarray, list[str]]:
        keep = [j for j, t in enumerate(texts) if t.strip()]
        for j in sorted(set(range(len(texts))) - set(keep)):
            self._refuse(int(rows[j]), NOTHING_TO_EMBED)
        return rows[keep], [texts[j] for j in keep]

    def _encoded(self, rows: np.ndarray, texts: list[str]):  # noqa: ANN202
        """The texts encoded in one call; a text JSON cannot carry is its row's InputError."""
        try:
            return encode_texts(texts), rows, texts
        except (orjson.JSONEncodeError, TypeError):
            pass
        keep = []
        for j, text in enumerate(texts):
            try:
                orjson.dumps(text)
                keep.append(j)
            except (orjson.JSONEncodeError, TypeError) as exc:
                self._refuse(int(rows[j]), _unencodable_message(exc))
        texts = [texts[j] for j in keep]
        return encode_texts(texts), rows[keep], texts

    def _unique(self, texts: list[str], encoded: Encoded):  # noqa: ANN202
        """(each text's request, the first text of each request, the keys or None, base,
        draw). Identical texts (identical keys: the rest of the body is the same) share a
        request when the answer is the same for all (``shared``); otherwise each is another
        draw of it, with a key of its own (``draw_key``). Keys are left to the table to hash
        when asked for, but for draws: theirs are made here."""
        n = len(texts)
        if len(set(texts)) == n:
            every = np.arange(n, dtype=np.int64)
            return every, every, None, None, None
        if self.shared:
            first: dict[str, int] = {}
            item_of = np.fromiter((first.setdefault(t, len(first)) for t in texts),
                                  dtype=np.int64, count=n)
            _, firsts = np.unique(item_of, return_index=True)  # each request's first text
            return item_of, firsts, None, None, None
        digests = hash_keys(self.slot, text_parts(encoded, 0, n))
        seen: dict[bytes, int] = {}
        keys, draws = [], np.zeros(n, dtype=np.int64)
        bases = hex_keys(digests)
        for j, d in enumerate(digests):
            draws[j] = seen.get(d, 0)
            seen[d] = draws[j] + 1
            keys.append(d.hex() if draws[j] == 0 else draw_key(d.hex(), int(draws[j])))
        every = np.arange(n, dtype=np.int64)
        return every, every, np.array(keys, dtype="S32"), bases, draws

    def _missing(self, pos: int, missing: tuple[str, ...]) -> None:
        if self.on_missing == "skip":
            self.skipped.add(pos)
        else:
            self.row_errors[pos] = InputError(_missing_message(missing), row=self.index[pos])

    def _refuse(self, pos: int, why: str) -> None:
        self.row_errors[pos] = InputError(why, row=self.index[pos])


def _missing_message(missing: tuple[str, ...]) -> str:
    where = (f" in column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"
             if missing else "")
    return f"missing value{where}; pass on_missing='skip' or 'empty' to change this"


def _image_urls(refs: Any, allow_private: bool) -> list[str] | None:
    """The URLs of a row's images: one reference (a path or URL) or a list of them; a missing
    value means the row has none."""
    if is_missing(refs):
        return None
    if isinstance(refs, (str, os.PathLike)) or not isinstance(refs, Iterable):
        refs = [refs]
    try:
        return [image_url(r, allow_private=allow_private) for r in refs]
    except MediaError as exc:
        raise _Refused(str(exc)) from None


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


# -- reading the inputs: which shape, which rows --------------------------------------------------------


@dataclass
class _Table:
    """The inputs, read: their shape, the row labels, the input columns the result frame starts
    with, and (for every shape but a DataFrame) each row's value."""

    shape: str  # a key of _SHAPE_STEPS
    index: pd.Index
    frame: pd.DataFrame
    values: list | None = None


def _normalise(inputs: Any) -> _Table:
    if inputs is None:
        raise ConfigError("inputs is None; pass a DataFrame, a Series, or a list of prompts")
    inputs = _from_table_library(inputs)
    if isinstance(inputs, pd.DataFrame):
        if not inputs.columns.is_unique:
            dup = inputs.columns[inputs.columns.duplicated()].tolist()
            raise ConfigError(f"the DataFrame has duplicate column names: {dup}")
        return _Table("frame", inputs.index, inputs)
    if isinstance(inputs, pd.Series):
        name = inputs.name if inputs.name is not None else "input"
        return _Table("texts", inputs.index, inputs.to_frame(name=name), inputs.tolist())
    rows = _rows_of(inputs)
    index = pd.RangeIndex(len(rows))
    frame = pd.DataFrame({"input": pd.Series(rows, index=index, dtype=object)})
    return _Table(_list_shape(rows), index, frame, rows)


def _list_shape(rows: list) -> str:
    """The one shape of a list's elements (missing values fit any); an empty list is texts."""
    if set(map(type, rows)) <= {str}:  # the usual list, told without a Python call per row
        return "texts"
    kinds = {_element_shape(r) for r in rows}
    kinds.discard("missing")
    if "bytes" in kinds:
        raise ConfigError("the list holds bytes, not text; decode them first, e.g. "
                          "[b.decode('utf-8') for b in data]")
    if len(kinds) > 1:
        raise ConfigError(
            "the list mixes texts, message lists and request bodies; pass one kind of element"
        )
    return kinds.pop() if kinds else "texts"


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
