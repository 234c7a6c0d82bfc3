"""``schema=``: the type an answer must have, whatever form the user gives it in.

``schema_for(x)`` takes a pydantic model class, a JSON Schema dict, or a type pydantic can
describe (``Literal["positive", "negative"]``, ``int``, ``bool``, ``list[str]``, a TypedDict, an
Enum, a dataclass) and gives a ``Schema``:

* ``wire``: the JSON Schema sent to the provider or the engine. Its root is always an object
  (OpenAI's strict mode requires one): a schema whose root is not an object is sent wrapped as
  ``{"value": <schema>}`` and unwrapped after parsing, so ``Literal`` answers are plain values.
* ``response_format(mode)``: the request's ``response_format`` for a provider that takes a JSON
  Schema (strict when the schema allows it) or only JSON mode (then ``instructions()`` goes into
  the system message: JSON mode needs the word JSON and says nothing of the shape).
* ``parse(text)``: the validated value (the pydantic instance, the typed value, or the parsed
  JSON), or ``InvalidAnswer`` saying what did not fit. Lenient about the wrapping a model puts
  around JSON (code fences, a sentence before it), strict about the JSON itself.
* ``fields``: an object schema's top-level fields, which become columns of the result frame.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from ._errors import ConfigError

_WRAP = "value"  # the field a non-object schema is sent under
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


class InvalidAnswer(ValueError):
    """An answer that is not JSON, or not of the schema's shape."""


@dataclass(frozen=True, eq=False)
class Schema:
    name: str
    wire: dict  # the JSON Schema sent (an object at the root)
    wrapped: bool  # the user's schema is wire["properties"]["value"]
    fields: tuple[str, ...]  # top-level fields spread into columns
    _validate: Any  # callable: the JSON value -> the validated value (raises on a mismatch)
    source: Any = None  # what the user gave

    def response_format(self, mode: str) -> dict:
        if mode == "json_object":
            return {"type": "json_object"}
        return {"type": "json_schema",
                "json_schema": {"name": self.name, "schema": self.wire,
                                "strict": _strict_ok(self.wire)}}

    def instructions(self) -> str:
        """The schema in the system message, for providers that only offer JSON mode."""
        return ("Answer with JSON only, no other text, matching this JSON Schema:\n"
                + json.dumps(self.wire, ensure_ascii=False, separators=(",", ":")))

    @property
    def key_text(self) -> str:
        """The schema as it shapes requests (what the row key sees)."""
        return orjson.dumps(self.wire, option=orjson.OPT_SORT_KEYS).decode()

    def parse(self, text: Any) -> Any:
        if not isinstance(text, str):
            raise InvalidAnswer(f"the answer is {type(text).__name__}, not text")
        data = _json_in(text)
        if self.wrapped:
            if not isinstance(data, dict) or _WRAP not in data:
                data = {_WRAP: data}  # a model that answered the bare value
            data = data[_WRAP]
        try:
            return self._validate(data)
        except Exception as exc:  # pydantic / jsonschema say what did not fit
            raise InvalidAnswer(_first_lines(str(exc))) from None

    def columns(self, value: Any) -> dict[str, Any]:
        """An object answer's top-level fields, for the frame's columns."""
        if not self.fields:
            return {}
        if isinstance(value, dict):
            return {f: value.get(f) for f in self.fields}
        return {f: getattr(value, f, None) for f in self.fields}


def schema_for(spec: Any) -> Schema:
    """The ``Schema`` of what the user passed as ``schema=`` (a ConfigError if it is none)."""
    if isinstance(spec, Schema):
        return spec
    if isinstance(spec, dict):
        return _from_json_schema(spec)
    if isinstance(spec, (str, bytes)) or spec is None:
        raise ConfigError("schema= takes a pydantic model, a JSON Schema dict or a type such as "
                          "Literal['yes', 'no'] or list[str]; for a name in the notebook use "
                          "%%batch --schema NAME", option="schema")
    try:
        from pydantic import BaseModel, TypeAdapter
    except ImportError:  # pragma: no cover - pydantic is a dependency
        raise ConfigError("schema= needs pydantic: pip install pydantic") from None
    if isinstance(spec, type) and issubclass(spec, BaseModel):
        wire = _tightened(spec.model_json_schema())
        return _schema(spec.__name__, wire, spec.model_validate, spec)
    try:
        adapter = TypeAdapter(spec)
        wire = _tightened(adapter.json_schema())
    except Exception as exc:
        raise ConfigError(f"schema= cannot describe {spec!r} as JSON: {_first_lines(str(exc))}",
                          option="schema") from None
    return _schema(_name_of(spec), wire, adapter.validate_python, spec)


def _from_json_schema(spec: dict) -> Schema:
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema is a dependency
        raise ConfigError("a JSON Schema dict needs jsonschema: pip install jsonschema") from None
    try:
        cls = jsonschema.validators.validator_for(spec)
        cls.check_schema(spec)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"schema= is not a valid JSON Schema: {exc.message}",
                          option="schema") from None
    validator = cls(spec)

    def validate(data: Any) -> Any:
        error = jsonschema.exceptions.best_match(validator.iter_errors(data))
        if error is not None:
            where = "/".join(map(str, error.absolute_path))
            raise ValueError(f"{where + ': ' if where else ''}{error.message}")
        return data

    return _schema(str(spec.get("title") or "answer"), spec, validate, spec)


def _schema(name: str, schema: dict, validate: Any, source: Any) -> Schema:
    is_object = schema.get("type") == "object" and "properties" in schema
    if is_object:
        return Schema(_safe_name(name), schema, False, tuple(schema["properties"]), validate,
                      source)
    schema = dict(schema)  # never change the user's dict
    defs = schema.pop("$defs", None)
    wire: dict = {"type": "object", "properties": {_WRAP: schema}, "required": [_WRAP],
                  "additionalProperties": False}
    if defs:
        wire["$defs"] = defs
    return Schema(_safe_name(name), wire, True, (), validate, source)


def _json_in(text: str) -> Any:
    """The JSON value in an answer: the whole text, else inside a code fence, else the span
    from the first bracket to its last partner."""
    try:  # the usual answer: JSON and nothing else
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    candidates = []
    fence = _FENCE.search(text)
    if fence:
        candidates.append(fence.group(1).strip())
    starts = [(text.find(open_), open_, close) for open_, close in ("{}", "[]")]
    starts = [s for s in starts if s[0] >= 0]
    if starts:  # the value that begins first: never a fragment from inside a broken one
        start, _, close = min(starts)
        end = text.rfind(close)
        if start < end:
            candidates.append(text[start:end + 1])
    for candidate in candidates:
        try:
            return orjson.loads(candidate)
        except orjson.JSONDecodeError:
            continue
    shown = text.strip()[:80]
    raise InvalidAnswer(f"the answer is not JSON: {shown!r}" if shown else "the answer is empty")


def _strict_ok(schema: Any) -> bool:
    """Whether OpenAI's strict mode accepts the schema: every object lists all its properties
    as required and allows no others."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "properties" in schema:
            props = schema.get("properties", {})
            if schema.get("additionalProperties") is not False:
                return False
            if set(schema.get("required", ())) != set(props):
                return False
        return all(_strict_ok(v) for k, v in schema.items() if k != "enum" and k != "const")
    if isinstance(schema, list):
        return all(_strict_ok(v) for v in schema)
    return True


def _name_of(spec: Any) -> str:
    if isinstance(spec, type) and issubclass(spec, enum.Enum):
        return spec.__name__
    return getattr(spec, "__name__", None) or "answer"


def _safe_name(name: str) -> str:
    """Providers take ``[a-zA-Z0-9_-]{1,64}`` as a schema's name."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64]
    return cleaned or "answer"


def _first_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines()
             if line.strip() and not line.strip().startswith("For further information")]
    return " / ".join(lines[:n])[:300]


def _tightened(schema: Any) -> Any:
    """A copy in which every object whose properties are all required also allows no others
    (pydantic leaves ``additionalProperties`` out): what strict mode needs, same meaning for a
    model that ignores unknown fields anyway."""
    if isinstance(schema, list):
        return [_tightened(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _tightened(v) for k, v in schema.items()}
    props = out.get("properties")
    if isinstance(props, dict) and "additionalProperties" not in out \
            and set(out.get("required", ())) == set(props):
        out["additionalProperties"] = False
    return out
