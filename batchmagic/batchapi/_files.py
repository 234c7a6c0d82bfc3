"""Batch input files: one JSONL line per unique request, validated before upload, sharded.

Two line formats:

* ``openai`` (OpenAI, DashScope, Qianfan, vLLM / LiteLLM and other compatible servers):
  ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {...}}``; every line of
  a file names the same model (providers refuse mixed files).
* ``ark`` (Volcengine Ark batch jobs): ``{"custom_id", "body": {...}}``; the model is named once,
  by the job (``ModelReference``), so bodies carry none.

``custom_id`` is derived from the row key (``bm-`` + 32 hex characters): safe characters, well
under the 64-character limit, and identical requests share one line. Results are joined back by
it, never by position.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from .._errors import ConfigError

CUSTOM_ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
#: problems listed in a validation error before "and N more"
_SHOWN = 5


def custom_id_for(key: str) -> str:
    return f"bm-{key}"


def request_line(custom_id: str, body: dict, url: str, fmt: str) -> bytes:
    if fmt == "ark":
        body = {k: v for k, v in body.items() if k != "model"}
        return orjson.dumps({"custom_id": custom_id, "body": body}) + b"\n"
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url,
                         "body": body}) + b"\n"


@dataclass
class Sharding:
    shards: list[list[int]]  # positions (into the lines given) per shard
    too_large: list[int]  # lines larger than a whole file may be


def shard_lines(sizes: list[int], max_requests: int, max_bytes: int) -> Sharding:
    """Split lines (by their byte sizes) into files of at most ``max_requests`` lines and
    ``max_bytes`` bytes, keeping their order. A line that alone exceeds ``max_bytes`` cannot be
    sent at all."""
    from .._units import pack_indexes

    too_large = [pos for pos, size in enumerate(sizes) if size > max_bytes]
    fits = [pos for pos, size in enumerate(sizes) if size <= max_bytes]
    shards = pack_indexes(fits, lambda pos: 0, lambda pos: sizes[pos], max_requests, max_bytes)
    return Sharding(shards, too_large)


def validate_lines(data: bytes, fmt: str, *, url: str | None = None) -> list[dict]:
    """Check a whole input file the way providers do, before uploading it: one JSON object per
    line, a safe and unique ``custom_id``, a ``body`` object, ``method``/``url`` (openai format)
    and one model per file. Returns the parsed lines; raises ``ConfigError`` listing problems."""
    problems: list[str] = []
    seen: set[str] = set()
    models: set[str] = set()
    lines: list[dict] = []
    for n, raw in enumerate(data.split(b"\n"), start=1):  # U+2028 inside JSON is not a line break
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            problems.append(f"line {n}: not JSON")
            continue
        if not isinstance(line, dict):
            problems.append(f"line {n}: not a JSON object")
            continue
        cid = line.get("custom_id")
        if not isinstance(cid, str) or not cid:
            problems.append(f"line {n}: no custom_id")
        elif not CUSTOM_ID_RE.match(cid):
            problems.append(f"line {n}: custom_id {cid[:80]!r} must be 1-64 characters of "
                            "letters, digits, '_', '-', '.', ':'")
        elif cid in seen:
            problems.append(f"line {n}: custom_id {cid!r} repeats an earlier line")
        else:
            seen.add(cid)
        body = line.get("body")
        if not isinstance(body, dict):
            problems.append(f"line {n}: body must be a JSON object")
        elif fmt != "ark":
            model = body.get("model")
            if not isinstance(model, str) or not model:
                problems.append(f"line {n}: body has no model")
            else:
                models.add(model)
        if fmt != "ark":
            if line.get("method") != "POST":
                problems.append(f"line {n}: method must be POST")
            if url is not None and line.get("url") != url:
                problems.append(f"line {n}: url must be {url!r} like every line of the file")
        lines.append(line)
    if len(models) > 1:
        problems.append(f"a batch file holds one model; this one has {len(models)}: "
                        f"{', '.join(sorted(models))}")
    if not lines and not problems:
        problems.append("the file has no requests")
    if problems:
        more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
        raise ConfigError("the batch input file is not valid: "
                          + "; ".join(problems[:_SHOWN]) + more)
    return lines


def read_request_lines(lines: Iterable[dict]) -> tuple[list[str], list[dict]]:
    """User-supplied batch lines (e.g. ``batchmagic jobs create --input``) -> their custom_ids and
    bodies."""
    ids, bodies = [], []
    for line in lines:
        ids.append(line["custom_id"])
        bodies.append(dict(line["body"]))
    return ids, bodies
