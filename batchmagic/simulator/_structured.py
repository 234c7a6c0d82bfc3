"""Structured answers: a JSON value valid for a JSON Schema, derived from the prompt.

``structured_answer(schema, prompt, index)`` is a pure function, so a client test can predict
what the simulator answers to a ``response_format`` of type ``json_schema`` (and to a tool's
``parameters``). Strings are made of the prompt's words, enums and numbers are drawn from a
generator seeded by the prompt and the choice index. Handled: ``type`` (one or a list),
``const``, ``enum``, ``$ref`` into ``$defs`` / ``definitions`` (recursive ones too), ``anyOf``,
``oneOf``, ``allOf``, ``properties`` with ``required`` (optional properties are present on a coin
flip), ``minProperties``, ``items`` / ``prefixItems`` with ``minItems`` / ``maxItems`` /
``uniqueItems``, ``minimum`` / ``maximum`` (and exclusive ones), ``multipleOf``, ``minLength`` /
``maxLength`` and the common string ``format``\\ s. ``pattern`` is not honoured.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
import uuid
from typing import Any

import orjson

#: nesting past which only what the schema demands is generated (keeps recursion finite)
SOFT_DEPTH = 6
#: nesting past which generation gives up on a schema with no finite instance
HARD_DEPTH = 48
#: where batchmagic (and most clients) put the schema in JSON mode: the system message
SCHEMA_MARKER = "JSON Schema:"
_WORD_RE = re.compile(r"\w+")
_SCALARS = ("null", "boolean", "integer", "number", "string")


def structured_answer(schema: Any, prompt: str, index: int = 0) -> Any:
    """A JSON value valid for ``schema``, a pure function of (schema, prompt, index)."""
    return _Generator(schema, prompt, f"{index}").value(schema, 0)


def tool_arguments(parameters: Any, prompt: str, name: str, index: int = 0) -> Any:
    """The arguments of a call to tool ``name``: valid for its ``parameters`` schema."""
    if not isinstance(parameters, dict) or not parameters:
        return {}
    return _Generator(parameters, prompt, f"{name}\x00{index}").value(parameters, 0)


def schema_in_text(text: str) -> dict | None:
    """The JSON Schema written after ``"JSON Schema:"`` in a message (JSON mode), or None."""
    at = text.find(SCHEMA_MARKER)
    if at < 0:
        return None
    start = text.find("{", at)
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def strict_problem(schema: Any) -> str | None:
    """Why OpenAI's strict mode would refuse ``schema`` (None when it would accept it).

    Strict mode needs an object at the root, and every object listing all its properties in
    ``required`` and setting ``additionalProperties`` to false.
    """
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return "the root must be a JSON Schema of 'type: \"object\"'"
    return _strict_walk(schema, ())


def _strict_walk(node: Any, where: tuple[str, ...]) -> str | None:
    if isinstance(node, list):
        for i, item in enumerate(node):
            problem = _strict_walk(item, (*where, str(i)))
            if problem:
                return problem
        return None
    if not isinstance(node, dict):
        return None
    if node.get("type") == "object" or "properties" in node:
        context = "(" + ", ".join(repr(w) for w in where) + ")"
        if node.get("additionalProperties") is not False:
            return (f"In context={context}, 'additionalProperties' is required to be supplied "
                    "and to be false")
        missing = sorted(set(node.get("properties") or {}) - set(node.get("required") or ()))
        if missing:
            return (f"In context={context}, 'required' is required to be supplied and to be an"
                    f" array including every key in properties. Missing '{missing[0]}'")
    for key, value in node.items():
        if key not in ("enum", "const", "default", "examples"):
            problem = _strict_walk(value, (*where, key))
            if problem:
                return problem
    return None


class _Generator:
    """One walk over a schema; draws come from a generator seeded by the prompt and a salt."""

    def __init__(self, root: Any, prompt: str, salt: str) -> None:
        self.root = root
        self.words = _WORD_RE.findall(prompt) or ["sim"]
        digest = hashlib.sha256(f"{salt}\x00{prompt}".encode("utf-8", "surrogatepass")).digest()
        self.rng = random.Random(int.from_bytes(digest[:8], "big"))

    # ------------------------------------------------------------------ dispatch
    def value(self, s: Any, depth: int) -> Any:
        if depth > HARD_DEPTH:
            return None  # a schema with no finite instance: give up, never loop
        if s is True or s is None:
            s = {}
        if not isinstance(s, dict):
            return None  # the false schema has no instance at all
        if "$ref" in s:
            return self.value(self._resolved(s), depth + 1)
        if "const" in s:
            return s["const"]
        if isinstance(s.get("enum"), list) and s["enum"]:
            return self.rng.choice(s["enum"])
        if isinstance(s.get("allOf"), list):
            return self.value(_merged(s), depth)
        for key in ("anyOf", "oneOf"):
            branches = s.get(key)
            if isinstance(branches, list) and branches:
                return self.value(self._branch(s, branches, depth), depth + 1)
        kind = self._type(s, depth)
        return getattr(self, "_" + kind)(s, depth)

    def _resolved(self, s: dict) -> Any:
        target = _pointer(self.root, s["$ref"])
        siblings = {k: v for k, v in s.items() if k != "$ref"}
        if siblings and isinstance(target, dict):
            return {**target, **siblings}
        return target

    def _branch(self, s: dict, branches: list, depth: int) -> Any:
        """A branch of anyOf / oneOf (with the keywords beside it); past SOFT_DEPTH a terminal
        one (a scalar without $ref) so recursive schemas end."""
        if depth > SOFT_DEPTH:
            terminal = [b for b in branches if _is_terminal(b)]
            branch = terminal[0] if terminal else branches[0]
        else:
            branch = self.rng.choice(branches)
        rest = {k: v for k, v in s.items() if k not in ("anyOf", "oneOf")}
        if rest and isinstance(branch, dict):
            return {**rest, **branch}
        return branch

    def _type(self, s: dict, depth: int) -> str:
        kind = s.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k in _SCALARS or k in ("object", "array")]
            if not kinds:
                return "string"
            if depth > SOFT_DEPTH and "null" in kinds:
                return "null"
            return self.rng.choice(kinds)
        if kind in _SCALARS or kind in ("object", "array"):
            return kind
        if "properties" in s or "required" in s:
            return "object"
        if "items" in s or "prefixItems" in s:
            return "array"
        return "string"

    # ------------------------------------------------------------------ scalars
    def _null(self, s: dict, depth: int) -> None:
        return None

    def _boolean(self, s: dict, depth: int) -> bool:
        return self.rng.random() < 0.5

    def _integer(self, s: dict, depth: int) -> int:
        lo, hi = _bounds(s, integral=True)
        step = s.get("multipleOf")
        if isinstance(step, (int, float)) and step > 0:
            return self._multiple(lo, hi, step, integral=True)
        return self.rng.randint(math.ceil(lo), max(math.ceil(lo), math.floor(hi)))

    def _number(self, s: dict, depth: int) -> float | int:
        lo, hi = _bounds(s, integral=False)
        step = s.get("multipleOf")
        if isinstance(step, (int, float)) and step > 0:
            return self._multiple(lo, hi, step, integral=False)
        if hi <= lo:
            return lo
        x = round(self.rng.uniform(lo, hi), 2)
        return x if lo <= x <= hi else lo

    def _multiple(self, lo: float, hi: float, step: float, integral: bool) -> Any:
        first, last = math.ceil(lo / step), math.floor(hi / step)
        if last < first:
            return math.ceil(lo)
        start = self.rng.randint(first, last)
        tries = itertools.islice(itertools.chain(range(start, last + 1), range(first, start)), 64)
        for k in tries:
            for x in (round(k * step, 10), k * step):  # the short decimal when it is exact
                if integral and x != int(x):
                    continue
                x = int(x) if integral or float(x).is_integer() else x
                if lo <= x <= hi and (x / step) == int(x / step):  # validators divide
                    return x
        return 0

    def _string(self, s: dict, depth: int) -> str:
        make = _FORMATS.get(s.get("format"))
        text = make(self) if make is not None else self._phrase()
        low = s.get("minLength")
        if isinstance(low, int) and len(text) < low:
            filler = " ".join(self.words)
            while len(text) < low:
                text = f"{text} {filler}"
        high = s.get("maxLength")
        if isinstance(high, int) and high >= 0:
            text = text[:high]
        return text

    def _phrase(self) -> str:
        words = self.words
        start = self.rng.randrange(len(words))
        return " ".join(words[start:start + self.rng.randint(1, 4)])

    # ------------------------------------------------------------------ containers
    def _array(self, s: dict, depth: int) -> list:
        items = s.get("items")
        prefix = s.get("prefixItems")
        if isinstance(items, list):  # the draft-7 tuple form
            prefix, items = items, s.get("additionalItems", True)
        prefix = prefix if isinstance(prefix, list) else []
        low = s.get("minItems") if isinstance(s.get("minItems"), int) else 0
        high = s.get("maxItems") if isinstance(s.get("maxItems"), int) else None
        want = low if depth > SOFT_DEPTH else max(low, self.rng.randint(1, 3))
        if items is False:
            want = min(want, len(prefix))
        if high is not None:
            want = min(want, high)
        unique = s.get("uniqueItems") is True
        if unique and not prefix and isinstance(items, dict) and isinstance(
                items.get("enum"), list):  # distinct options, drawn without replacement
            options = items["enum"]
            return self.rng.sample(options, min(want, len(options)))
        out: list = []
        seen: set[bytes] = set()
        for _ in range(4 * want + 4):
            if len(out) >= want:
                break
            i = len(out)
            sub = prefix[i] if i < len(prefix) else items
            x = self.value(sub, depth + 1)
            if unique:
                key = orjson.dumps(x, option=orjson.OPT_SORT_KEYS)
                if key in seen:
                    continue
                seen.add(key)
            out.append(x)
        return out

    def _object(self, s: dict, depth: int) -> dict:
        props = s.get("properties") if isinstance(s.get("properties"), dict) else {}
        required = [r for r in s.get("required") or () if isinstance(r, str)]
        deep = depth > SOFT_DEPTH
        out: dict[str, Any] = {}
        for name, sub in props.items():
            if _impossible(sub):
                continue  # a property that may not appear at all
            if name in required or (not deep and self.rng.random() < 0.5):
                out[name] = self.value(sub, depth + 1)
        extra = s.get("additionalProperties")
        for name in required:
            if name not in out:
                out[name] = self.value(extra if isinstance(extra, dict) else {}, depth + 1)
        low = s.get("minProperties")
        if isinstance(low, int):
            for name, sub in props.items():
                if len(out) >= low:
                    break
                if name not in out and not _impossible(sub):
                    out[name] = self.value(sub, depth + 1)
        return out


# ---------------------------------------------------------------------- helpers
def _pointer(root: Any, ref: Any) -> Any:
    """The schema a local ``$ref`` (``#/$defs/Name``) points at; ``{}`` for anything else."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return {}
    node = root
    for part in ref[1:].split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return {}
    return node


def _merged(s: dict) -> dict:
    """allOf folded into one schema: properties and required joined, other keywords layered."""
    out = {k: v for k, v in s.items() if k != "allOf"}
    props = dict(out.get("properties") or {})
    required = list(out.get("required") or ())
    for part in s["allOf"]:
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                props.update(value)
            elif key == "required" and isinstance(value, list):
                required += [r for r in value if r not in required]
            elif key not in out:
                out[key] = value
    if props:
        out["properties"] = props
    if required:
        out["required"] = required
    return out


def _impossible(s: Any) -> bool:
    """The false schema, or ``{"not": {}}``: no value is valid."""
    return s is False or (isinstance(s, dict) and s.get("not") in ({}, True))


def _is_terminal(s: Any) -> bool:
    return isinstance(s, dict) and "$ref" not in s and (
        s.get("type") in _SCALARS or "const" in s or "enum" in s)


def _bounds(s: dict, integral: bool) -> tuple[float, float]:
    """[low, high] from minimum / maximum and the exclusive ones (draft 4's booleans too)."""
    nudge = 1 if integral else 0.01
    low = _number_or_none(s.get("minimum"))
    high = _number_or_none(s.get("maximum"))
    ex_low, ex_high = s.get("exclusiveMinimum"), s.get("exclusiveMaximum")
    if ex_low is True and low is not None:
        low += nudge
    elif _number_or_none(ex_low) is not None:
        low = max(low, ex_low + nudge) if low is not None else ex_low + nudge
    if ex_high is True and high is not None:
        high -= nudge
    elif _number_or_none(ex_high) is not None:
        high = min(high, ex_high - nudge) if high is not None else ex_high - nudge
    if low is None and high is None:
        return 0, 100
    if low is None:
        return high - 100, high
    if high is None:
        return low, low + 100
    return low, max(low, high)


def _number_or_none(x: Any) -> float | None:
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _day(g: _Generator) -> str:
    return f"2024-{g.rng.randint(1, 12):02d}-{g.rng.randint(1, 28):02d}"


def _clock(g: _Generator) -> str:
    return f"{g.rng.randint(0, 23):02d}:{g.rng.randint(0, 59):02d}:{g.rng.randint(0, 59):02d}"


def _slug(g: _Generator) -> str:
    return (g.rng.choice(g.words).lower().encode("ascii", "ignore").decode() or "sim")


_FORMATS = {
    "date": _day,
    "time": lambda g: _clock(g) + "Z",
    "date-time": lambda g: f"{_day(g)}T{_clock(g)}Z",
    "email": lambda g: f"{_slug(g)}@example.com",
    "uri": lambda g: f"https://example.com/{_slug(g)}",
    "url": lambda g: f"https://example.com/{_slug(g)}",
    "hostname": lambda g: f"{_slug(g)}.example.com",
    "uuid": lambda g: str(uuid.UUID(int=g.rng.getrandbits(128), version=4)),
    "ipv4": lambda g: ".".join(str(g.rng.randint(1, 254)) for _ in range(4)),
    "ipv6": lambda g: "2001:db8::" + format(g.rng.getrandbits(16), "x"),
}
