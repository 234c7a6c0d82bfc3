"""Batch APIs in the simulator: OpenAI-shaped files + batches, and an Ark-shaped job API over an
object-store stand-in, on a time scale so a "24h" job ends in seconds.

OpenAI shape (``/v1/files``, ``/v1/batches``): multipart upload with purpose ``batch``; create,
retrieve, list (newest first, ``limit`` / ``after``) and cancel batches; ``/v1/files/{id}/content``.
Each input line is checked as the real APIs check it (JSON, unique ``custom_id``, ``POST``, the
batch's ``url``, one model) and answered by the same code as the online endpoints, so missing
models and context overflows come back as they would. Statuses follow the documented life:
validating -> in_progress -> finalizing -> completed, or failed (bad file), expired (the window
ran out: finished rows kept, the rest in the error file as ``batch_expired``), cancelling ->
cancelled. Outputs are written in reversed order (clients must join by ``custom_id``).

Ark shape (``POST /?Action=...&Version=2024-01-01``): CreateBatchInferenceJob,
GetBatchInferenceJob, ListBatchInferenceJobs (filtered by Name, Ids or Phases, in pages),
StopBatchInferenceJob, every call's Volcengine signature verified (``HMAC-SHA256``, service
``ark``) with the configured Access Key pair. Its
files live in a TOS stand-in: PUT / GET of ``/<key>`` on ``Host: <bucket>.<host>``, signed with
TOS's ``TOS4-HMAC-SHA256``. Results land in ``{OutputDir}{Id}/output/results.jsonl`` and
``.../error/errors.jsonl``.

Time: a batch spends ``batch_seconds`` processing its lines evenly; one simulated day of its
completion window lasts ``batch_day_seconds``. ``batch_error_rate`` lines come back with status 400
and ``"error": null`` in the output file; ``batch_fault_rate`` lines fail into the error file.
Everything is computed from the clock when asked, so no task runs in the background.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import itertools
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ..batchapi._sign import (
    OPENAPI_ALGORITHM,
    TOS_ALGORITHM,
    canonical_request,
    parse_authorization,
    sha256_hex,
    signature,
)
from ._endpoints import BUILD, PREPARE
from ._http import ApiError, error_obj, json_response

if TYPE_CHECKING:
    from ._app import SimState

ENDPOINT_KINDS = {"/v1/chat/completions": "chat", "/v1/completions": "completion",
                  "/v1/embeddings": "embedding"}
MAX_SKEW_S = 900  # a signature's X-Date may be this far from the server's clock
ARK_VERSION = "2024-01-01"


@dataclass
class SimFile:
    id: str
    data: bytes
    filename: str
    purpose: str
    created: int

    def obj(self) -> dict:
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created,
                "filename": self.filename, "purpose": self.purpose, "status": "processed"}


@dataclass
class SimBatch:
    id: str
    shape: str  # "openai" | "ark"
    kind: str
    endpoint: str
    window: str
    window_s: float
    created_wall: float
    created: float  # monotonic
    lines: list[dict]  # valid input lines, in input order
    problems: list[dict]  # validation errors (the batch fails)
    outcomes: list[str]  # per line: ok | error400 | fault | api (PREPARE refused it)
    input_ref: str
    meta: dict = field(default_factory=dict)  # OpenAI metadata / Ark Name, Tags, output dir
    model: str | None = None  # Ark: the job's model
    cancel_at: float | None = None
    final: dict | None = None  # set once the batch ends: status, files, counts
    api_errors: dict[int, ApiError] = field(default_factory=dict)


class BatchStore:
    """Every file, object and batch one simulator holds (cleared with the process)."""

    def __init__(self) -> None:
        self.files: dict[str, SimFile] = {}
        self.batches: dict[str, SimBatch] = {}
        self.objects: dict[tuple[str, str], bytes] = {}
        self.ids = itertools.count(1)
        self.created = 0  # batches created, for tests that count double spends

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self.ids):06d}{hashlib.sha256(str(time.time_ns()).encode()).hexdigest()[:10]}"


def store_of(st: SimState) -> BatchStore:
    store = getattr(st, "batch_store", None)
    if store is None:
        store = st.batch_store = BatchStore()
    return store


# ---------------------------------------------------------------------- timing and answers
def _unit(seed: int, text: str) -> float:
    digest = hashlib.sha256(f"{seed}\0{text}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def _timeline(st: SimState, b: SimBatch, now: float) -> tuple[str, int]:
    """(phase, lines processed) at ``now``. Phases: validating, failed, in_progress, finalizing,
    completed, expired, cancelling, cancelled."""
    cfg = st.cfg
    work = max(cfg.batch_seconds, 1e-6)
    validate = min(0.1 * work, 0.5)
    finalize = min(0.05 * work, 0.2)
    start = b.created + validate
    expire_at = b.created + b.window_s
    n = len(b.lines)

    def processed(t: float) -> int:
        return max(0, min(n, int(n * (t - start) / work)))

    if b.problems:
        return ("validating", 0) if now < start else ("failed", 0)
    if b.cancel_at is not None and b.cancel_at < start + work:
        cancel_delay = min(0.1 * work, 0.5)
        done = processed(b.cancel_at)
        return ("cancelling", done) if now < b.cancel_at + cancel_delay else ("cancelled", done)
    if expire_at < start + work:
        if now >= expire_at:
            return "expired", processed(expire_at)
    if now < start:
        return "validating", 0
    if now < start + work:
        return "in_progress", processed(now)
    if now < start + work + finalize:
        return "finalizing", n
    return "completed", n


def _answer(st: SimState, b: SimBatch, pos: int) -> tuple[str, dict]:
    """("output" | "error", the result line) for input line ``pos``."""
    line = b.lines[pos]
    cid = line["custom_id"]
    req_id = f"req_{hashlib.sha256(f'{b.id}{cid}'.encode()).hexdigest()[:16]}"
    outcome = b.outcomes[pos]
    if outcome == "fault":
        if b.shape == "openai" and _unit(st.cfg.seed + 1, cid) < 0.5:
            # the error file carries some failures as a response with a 5xx status ...
            response = {"status_code": 500, "request_id": req_id, "body": error_obj(
                "The server had an error while processing your request.", "server_error")}
            return "error", {"id": f"batch_{req_id}", "custom_id": cid, "response": response,
                             "error": None}
        # ... and others as an error object with no response
        return "error", {"id": f"batch_{req_id}", "custom_id": cid, "response": None,
                         "error": {"code": "server_error", "type": "InternalServiceError",
                                   "message": "The service had an internal error."}}
    if outcome == "error400":
        response = {"status_code": 400, "request_id": req_id, "body": error_obj(
            "Invalid request: the simulator refused this line.", "invalid_request_error",
            "invalid_value")}
    elif outcome == "api":
        e = b.api_errors[pos]
        response = {"status_code": e.status, "request_id": req_id, "body": e.body}
    else:
        body = dict(line["body"])
        if b.model:
            body["model"] = b.model
        job = PREPARE[b.kind](st, body, st.cfg)
        response = {"status_code": 200, "request_id": req_id,
                    "body": BUILD[b.kind](st, job, None)}
    if b.shape == "ark" and response["status_code"] != 200:
        # Ark writes failed requests to errors.jsonl, as an error object
        err = response["body"].get("error") or {}
        return "error", {"id": f"batch_{req_id}", "custom_id": cid, "response": None,
                         "error": {"code": err.get("code") or "InvalidParameter",
                                   "type": "BadRequest", "message": err.get("message") or ""}}
    return "output", {"id": f"batch_{req_id}", "custom_id": cid, "response": response,
                      "error": None}


def _counts(b: SimBatch, done: int) -> tuple[int, int]:
    ok = sum(1 for o in b.outcomes[:done] if o == "ok")
    return ok, done - ok


def _finalize(st: SimState, store: BatchStore, b: SimBatch, phase: str, done: int) -> dict:
    """Write the batch's files, once, when it first ends."""
    if b.final is not None:
        return b.final
    out_lines: list[bytes] = []
    err_lines: list[bytes] = []
    if phase != "failed":
        for pos in range(done):
            where, line = _answer(st, b, pos)
            (out_lines if where == "output" else err_lines).append(orjson.dumps(line))
        if b.shape == "openai":  # rows never run: in the error file, as OpenAI writes them
            code = "batch_expired" if phase == "expired" else "batch_cancelled"
            text = ("This request could not be executed before the completion window expired."
                    if phase == "expired" else "This request was cancelled before it ran.")
            for pos in range(done, len(b.lines)):
                cid = b.lines[pos]["custom_id"]
                err_lines.append(orjson.dumps({"id": f"batch_req_{b.id}_{pos}", "custom_id": cid,
                                               "response": None,
                                               "error": {"code": code, "message": text}}))
    if st.cfg.batch_reverse:  # providers promise no order: make sure clients never rely on one
        out_lines.reverse()
        err_lines.reverse()
    ok, failed = _counts(b, done)
    final: dict[str, Any] = {"status": phase, "done": done, "completed": ok, "failed": failed,
                             "output": None, "error": None, "at": int(time.time())}
    if b.shape == "openai":
        for name, lines, purpose in (("output", out_lines, "batch_output"),
                                     ("error", err_lines, "batch_output")):
            if lines:
                f = SimFile(store.new_id("file-"), b"\n".join(lines) + b"\n",
                            f"{b.id}_{name}.jsonl", purpose, int(time.time()))
                store.files[f.id] = f
                final[name] = f.id
    else:
        bucket, prefix = b.meta["out_bucket"], b.meta["out_key"]
        if out_lines or phase == "completed":
            store.objects[(bucket, f"{prefix}{b.id}/output/results.jsonl")] = \
                b"\n".join(out_lines) + (b"\n" if out_lines else b"")
        if err_lines:
            store.objects[(bucket, f"{prefix}{b.id}/error/errors.jsonl")] = \
                b"\n".join(err_lines) + b"\n"
    b.final = final
    return final


def _state(st: SimState, b: SimBatch) -> tuple[str, int, dict | None]:
    if b.final is not None:  # ended: a later batch_seconds must not set it running again
        return b.final["status"], b.final["done"], b.final
    store = store_of(st)
    phase, done = _timeline(st, b, time.monotonic())
    final = None
    if phase in ("completed", "failed", "expired", "cancelled"):
        final = _finalize(st, store, b, phase, done)
    return phase, done, final


# ---------------------------------------------------------------------- input checks
def _check_lines(st: SimState, data: bytes, shape: str, endpoint: str | None,
                 model: str | None) -> tuple[list[dict], list[dict]]:
    """(lines, problems) as the providers judge a file."""
    lines: list[dict] = []
    problems: list[dict] = []
    seen: set[str] = set()
    models: set[str] = set()
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            problems.append({"code": "invalid_json_line", "line": n,
                             "message": f"line {n} is not valid JSON"})
            continue
        if not isinstance(line, dict):
            problems.append({"code": "invalid_request", "line": n,
                             "message": f"line {n} is not a JSON object"})
            continue
        cid = line.get("custom_id")
        if not isinstance(cid, str) or not cid:
            problems.append({"code": "missing_required_parameter", "line": n, "param": "custom_id",
                             "message": f"line {n} has no custom_id"})
        elif cid in seen:
            problems.append({"code": "duplicate_custom_id", "line": n,
                             "message": f"custom_id {cid!r} is not unique"})
        seen.add(cid if isinstance(cid, str) else "")
        body = line.get("body")
        if not isinstance(body, dict):
            problems.append({"code": "invalid_request", "line": n, "param": "body",
                             "message": f"line {n}: body must be an object"})
            continue
        if shape == "openai":
            if line.get("method") != "POST" or line.get("url") != endpoint:
                problems.append({"code": "invalid_url", "line": n,
                                 "message": f"line {n}: method must be POST and url {endpoint}"})
            if isinstance(body.get("model"), str):
                models.add(body["model"])
        lines.append(line)
    if len(models) > 1:
        problems.append({"code": "mismatched_model", "line": None,
                         "message": "all requests in a batch file must use the same model"})
    if not lines and not problems:
        problems.append({"code": "empty_file", "line": None, "message": "the file has no requests"})
    return lines, problems


def _plan_outcomes(st: SimState, b: SimBatch) -> None:
    """Each line's fate, drawn from what it asks (its body, and which copy of that body in the
    file it is), not from its custom_id: batchmagic's ids hash the endpoint, whose port changes
    from run to run, and a demo's "15% of lines fail" must not come out as none at all on one
    run in twenty. The same line in a resubmitted file meets the same fate."""
    cfg = st.cfg
    copies: dict[bytes, int] = {}
    for pos, line in enumerate(b.lines):
        asked = orjson.dumps(line.get("body"), option=orjson.OPT_SORT_KEYS)
        copy = copies[asked] = copies.get(asked, -1) + 1
        u = _unit(cfg.seed, f"{asked.decode()}\0{copy}")
        if u < cfg.batch_fault_rate:
            b.outcomes.append("fault")
            continue
        if u < cfg.batch_fault_rate + cfg.batch_error_rate:
            b.outcomes.append("error400")
            continue
        body = dict(line["body"])
        if b.model:
            body["model"] = b.model
        try:
            PREPARE[b.kind](st, body, cfg)
        except ApiError as e:
            b.api_errors[pos] = e
            b.outcomes.append("api")
            continue
        b.outcomes.append("ok")


def _window_seconds(st: SimState, window: str) -> float | None:
    m = re.fullmatch(r"(\d+)([hd])", window or "")
    if not m:
        return None
    days = int(m.group(1)) / (24 if m.group(2) == "h" else 1)
    return days * st.cfg.batch_day_seconds


# ---------------------------------------------------------------------- OpenAI shape
def _unauthorized() -> web.Response:
    return json_response(401, error_obj("Incorrect API key provided.", "invalid_request_error",
                                        "invalid_api_key"))


def _bad(message: str, code: str | None = None, status: int = 400) -> web.Response:
    return json_response(status, error_obj(message, "invalid_request_error", code))


def _batch_obj(st: SimState, b: SimBatch) -> dict:
    phase, done, final = _state(st, b)
    ok, failed = (final["completed"], final["failed"]) if final else _counts(b, done)
    created = int(b.created_wall)
    return {
        "id": b.id, "object": "batch", "endpoint": b.endpoint,
        "errors": {"object": "list", "data": b.problems} if b.problems else None,
        "input_file_id": b.input_ref, "completion_window": b.window, "status": phase,
        "output_file_id": final["output"] if final else None,
        "error_file_id": final["error"] if final else None,
        "created_at": created, "in_progress_at": created if phase != "validating" else None,
        "expires_at": int(b.created_wall + b.window_s),
        "finalizing_at": None, "completed_at": final["at"] if phase == "completed" else None,
        "failed_at": final["at"] if phase == "failed" else None,
        "expired_at": final["at"] if phase == "expired" else None,
        "cancelling_at": int(b.created_wall) if b.cancel_at is not None else None,
        "cancelled_at": final["at"] if phase == "cancelled" else None,
        "request_counts": {"total": len(b.lines), "completed": ok, "failed": failed},
        "metadata": b.meta or None,
    }


async def _upload(request: web.BaseRequest, st: SimState) -> web.Response:
    store = store_of(st)
    try:
        form = await request.post()
    except ValueError:
        return _bad("expected a multipart/form-data body with purpose and file")
    purpose = form.get("purpose")
    upload = form.get("file")
    if purpose != "batch":
        return _bad("purpose must be 'batch'", "invalid_purpose")
    if upload is None or not hasattr(upload, "file"):
        return _bad("a file is required", "missing_required_parameter")
    f = SimFile(store.new_id("file-"), upload.file.read(), upload.filename or "input.jsonl",
                "batch", int(time.time()))
    store.files[f.id] = f
    return json_response(200, f.obj())


async def _create(request: web.BaseRequest, st: SimState) -> web.Response:
    store = store_of(st)
    try:
        p = orjson.loads(await request.read())
        if not isinstance(p, dict):
            raise ValueError
    except ValueError:
        return _bad("We could not parse the JSON body of your request.")
    endpoint = p.get("endpoint")
    if endpoint not in ENDPOINT_KINDS:
        return _bad(f"endpoint must be one of {', '.join(ENDPOINT_KINDS)}", "invalid_value")
    window = p.get("completion_window")
    window_s = _window_seconds(st, window) if isinstance(window, str) else None
    hours = window_s / st.cfg.batch_day_seconds * 24 if window_s is not None else 0
    if window_s is None or not 24 <= hours <= 336:  # OpenAI: 24h; DashScope: up to 336h
        return _bad("completion_window must be between 24h and 336h", "invalid_value")
    meta = p.get("metadata") or {}
    if not isinstance(meta, dict) or len(meta) > 16 or any(
            not isinstance(k, str) or len(k) > 64 or not isinstance(v, str) or len(v) > 512
            for k, v in meta.items()):
        return _bad("metadata takes at most 16 string pairs (keys up to 64 characters, values "
                    "up to 512)", "invalid_value")
    f = store.files.get(p.get("input_file_id"))
    if f is None or f.purpose != "batch":
        return _bad("input_file_id names no file uploaded with purpose 'batch'", status=404,
                    code="file_not_found")
    lines, problems = _check_lines(st, f.data, "openai", endpoint, None)
    b = SimBatch(store.new_id("batch_"), "openai", ENDPOINT_KINDS[endpoint], endpoint, window,
                 window_s, time.time(), time.monotonic(), lines, problems, [], f.id, dict(meta))
    if not problems:
        _plan_outcomes(st, b)
    store.batches[b.id] = b
    store.created += 1
    return json_response(200, _batch_obj(st, b))


async def _list(request: web.BaseRequest, st: SimState) -> web.Response:
    store = store_of(st)
    try:
        limit = max(1, min(100, int(request.query.get("limit", "20"))))
    except ValueError:
        return _bad("limit must be an integer")
    items = [b for b in reversed(store.batches.values()) if b.shape == "openai"]
    after = request.query.get("after")
    if after:
        ids = [b.id for b in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    data = [_batch_obj(st, b) for b in page]
    return json_response(200, {"object": "list", "data": data,
                               "first_id": data[0]["id"] if data else None,
                               "last_id": data[-1]["id"] if data else None,
                               "has_more": len(items) > limit})


async def _cancel(st: SimState, b: SimBatch) -> web.Response:
    phase, _, _ = _state(st, b)
    if phase in ("completed", "failed", "expired", "cancelled"):
        return _bad(f"Cannot cancel a batch with status '{phase}'.", "invalid_state")
    if b.cancel_at is None:
        b.cancel_at = time.monotonic()
    return json_response(200, _batch_obj(st, b))


async def _openai(request: web.BaseRequest, st: SimState, method: str,
                  path: str) -> web.StreamResponse | None:
    store = store_of(st)
    if not st.authorized(request):
        return _unauthorized()
    if path == "/v1/files" and method == "POST":
        return await _upload(request, st)
    if path == "/v1/batches":
        if method == "POST":
            return await _create(request, st)
        if method == "GET":
            return await _list(request, st)
    m = re.fullmatch(r"/v1/files/([^/]+)(/content)?", path)
    if m and method == "GET":
        f = store.files.get(m.group(1))
        if f is None:
            return _bad("No such File object.", status=404)
        if m.group(2):
            return web.Response(body=f.data, headers={"Content-Type": "application/jsonl"})
        return json_response(200, f.obj())
    m = re.fullmatch(r"/v1/batches/([^/]+)(/cancel)?", path)
    if m:
        b = store.batches.get(m.group(1))
        if b is None or b.shape != "openai":
            return _bad("No such Batch object.", status=404)
        if m.group(2) and method == "POST":
            return await _cancel(st, b)
        if not m.group(2) and method == "GET":
            return json_response(200, _batch_obj(st, b))
    return _bad("Invalid method for this URL.", status=405)


# ---------------------------------------------------------------------- Volcengine signatures
def _verify(request: web.BaseRequest, body: bytes, st: SimState, tos: bool) -> str | None:
    """None when the request carries a valid signature; else why not (never echoing secrets)."""
    cfg = st.cfg
    auth = parse_authorization(request.headers.get("Authorization", ""))
    if auth is None or auth["algorithm"] != (TOS_ALGORITHM if tos else OPENAPI_ALGORITHM):
        return "MissingAuthenticationToken"
    if cfg.ark_secret_key is None or not hmac.compare_digest(auth["access_key"],
                                                             cfg.ark_access_key):
        return "InvalidAccessKey"
    date_header = "x-tos-date" if tos else "x-date"
    hash_header = "x-tos-content-sha256" if tos else "x-content-sha256"
    x_date = request.headers.get(date_header, "")
    signed = auth["signed"].split(";")
    if "host" not in signed or date_header not in signed or x_date[:8] != auth["date"]:
        return "SignatureDoesNotMatch"
    try:
        when = _dt.datetime.strptime(x_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        return "SignatureDoesNotMatch"
    if abs((_dt.datetime.now(_dt.timezone.utc) - when).total_seconds()) > MAX_SKEW_S:
        return "RequestExpired"
    payload = request.headers.get(hash_header) or ("UNSIGNED-PAYLOAD" if tos else sha256_hex(body))
    if payload != "UNSIGNED-PAYLOAD" and payload != sha256_hex(body):
        return "SignatureDoesNotMatch"  # the body is not the one that was signed
    headers = {k.lower(): v for k, v in request.headers.items()}
    creq = canonical_request(request.method, request.path, dict(request.query), headers, signed,
                             payload)
    expected = signature(cfg.ark_secret_key, auth["algorithm"], x_date, auth["region"],
                         auth["service"], creq)
    if auth["service"] != ("tos" if tos else "ark"):
        return "SignatureDoesNotMatch"
    if not hmac.compare_digest(expected, auth["signature"]):
        return "SignatureDoesNotMatch"
    return None


# ---------------------------------------------------------------------- TOS stand-in
def _tos_error(status: int, code: str, message: str) -> web.Response:
    return json_response(status, {"Code": code, "Message": message,
                                  "RequestId": f"sim{time.time_ns()}", "HostId": "batchmagic-sim"})


async def _tos(request: web.BaseRequest, st: SimState) -> web.StreamResponse:
    store = store_of(st)
    body = await request.read()
    problem = _verify(request, body, st, tos=True)
    if problem is not None:
        return _tos_error(403, problem, "The request signature we calculated does not match "
                          "the signature you provided." if problem == "SignatureDoesNotMatch"
                          else "Access denied.")
    host = request.headers.get("Host", "")
    bucket = host.split(".", 1)[0] if "." in host else ""
    key = request.path.lstrip("/")
    if not bucket or not key:
        return _tos_error(400, "InvalidRequest", "a bucket (in Host) and an object key are needed")
    if request.method == "PUT":
        store.objects[(bucket, key)] = body
        return web.Response(status=200, headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"'})
    if request.method == "GET":
        data = store.objects.get((bucket, key))
        if data is None:
            return _tos_error(404, "NoSuchKey", "The specified key does not exist.")
        return web.Response(body=data, headers={"Content-Type": "application/octet-stream"})
    return _tos_error(405, "MethodNotAllowed", "only PUT and GET are simulated")


# ---------------------------------------------------------------------- Ark job API
def _ark_reply(action: str, result: dict | None = None, error: tuple[int, str, str] | None = None
               ) -> web.Response:
    meta: dict[str, Any] = {"RequestId": f"sim{time.time_ns()}", "Action": action,
                            "Version": ARK_VERSION, "Service": "ark", "Region": "cn-beijing"}
    if error is not None:
        status, code, message = error
        meta["Error"] = {"Code": code, "Message": message}
        return json_response(status, {"ResponseMetadata": meta})
    return json_response(200, {"ResponseMetadata": meta, "Result": result or {}})


_ARK_PHASES = {"validating": "Queued", "in_progress": "Running", "finalizing": "Running",
               "completed": "Completed", "failed": "Failed", "expired": "Terminated",
               "cancelling": "Terminating", "cancelled": "Terminated"}


#: the phases ListBatchInferenceJobs filters on (Initializing is reported, not filterable)
_FILTER_PHASES = frozenset({"Queued", "Running", "Completed", "Terminating", "Terminated", "Failed"})


def _rfc3339(wall: float) -> str:
    return _dt.datetime.fromtimestamp(wall, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ark_job(st: SimState, b: SimBatch) -> dict:
    phase, done, final = _state(st, b)
    ok, failed = (final["completed"], final["failed"]) if final else _counts(b, done)
    expire_wall = b.created_wall + b.window_s
    if phase == "expired":
        expire_wall = min(expire_wall, time.time())
    message = "; ".join(p["message"] for p in b.problems[:3]) if b.problems else ""
    bucket, key = b.input_ref.split("/", 1)
    job = {
        "Id": b.id, "Name": b.meta["name"], "Description": b.meta.get("description", ""),
        "ModelReference": b.meta["model_ref"],
        "InputFileTosLocation": {"BucketName": bucket, "ObjectKey": key},
        "OutputDirTosLocation": {"BucketName": b.meta["out_bucket"],
                                 "ObjectKey": b.meta["out_key"]},
        "CompletionWindow": b.window,
        "Status": {"Phase": _ARK_PHASES[phase], "PhaseTime": _rfc3339(time.time()),
                   "Message": message},
        "RequestCounts": {"Total": len(b.lines), "Completed": ok, "Failed": failed},
        "Tags": b.meta.get("tags", []), "ProjectName": b.meta.get("project", "default"),
        "CreateTime": _rfc3339(b.created_wall), "UpdateTime": _rfc3339(time.time()),
        "ExpireTime": _rfc3339(expire_wall),
    }
    if final is not None and (b.meta["out_bucket"], f"{b.meta['out_key']}{b.id}/error/errors.jsonl") \
            in store_of(st).objects:
        job["ErrorFileTosLocation"] = {"BucketName": b.meta["out_bucket"],
                                       "ObjectKey": f"{b.meta['out_key']}{b.id}/error/errors.jsonl"}
    return job


async def _ark(request: web.BaseRequest, st: SimState) -> web.StreamResponse:
    store = store_of(st)
    action = request.query.get("Action", "")
    body = await request.read()
    problem = _verify(request, body, st, tos=False)
    if problem is not None:
        return _ark_reply(action, error=(401 if problem != "RequestExpired" else 403, problem,
                                         "The request signature is not valid."))
    if request.query.get("Version") != ARK_VERSION:
        return _ark_reply(action, error=(400, "InvalidVersion", f"Version must be {ARK_VERSION}"))
    try:
        p = orjson.loads(body or b"{}")
        if not isinstance(p, dict):
            raise ValueError
    except ValueError:
        return _ark_reply(action, error=(400, "InvalidParameter", "the body must be a JSON object"))
    if action == "CreateBatchInferenceJob":
        return _ark_create(st, store, p)
    if action in ("GetBatchInferenceJob", "StopBatchInferenceJob"):
        b = store.batches.get(str(p.get("Id")))
        if b is None or b.shape != "ark":
            return _ark_reply(action, error=(404, "NotFound.BatchInferenceJob",
                                             "the batch inference job does not exist"))
        if action == "StopBatchInferenceJob":
            phase, _, _ = _state(st, b)
            if phase in ("completed", "failed", "expired", "cancelled"):
                return _ark_reply(action, error=(400, "InvalidState",
                                                 f"cannot stop a job in phase {_ARK_PHASES[phase]}"))
            if b.cancel_at is None:
                b.cancel_at = time.monotonic()
            return _ark_reply(action, {})
        return _ark_reply(action, _ark_job(st, b))
    if action == "ListBatchInferenceJobs":
        flt = p.get("Filter") or {}
        items = [b for b in reversed(store.batches.values()) if b.shape == "ark"]
        if flt.get("Name"):
            items = [b for b in items if str(flt["Name"]) in b.meta["name"]]
        if flt.get("Ids"):
            items = [b for b in items if b.id in flt["Ids"]]
        if flt.get("Phases"):
            phases = flt["Phases"]
            if not isinstance(phases, list) or not set(phases) <= _FILTER_PHASES:
                return _ark_reply(action, error=(400, "InvalidParameter.Filter.Phases",
                                                 f"Phases takes {', '.join(sorted(_FILTER_PHASES))}"))
            items = [b for b in items if _ARK_PHASES[_state(st, b)[0]] in phases]
        size = max(1, min(100, int(p.get("PageSize") or 10)))
        number = max(1, int(p.get("PageNumber") or 1))
        page = items[(number - 1) * size:number * size]
        return _ark_reply(action, {"Items": [_ark_job(st, b) for b in page], "PageNumber": number,
                                   "PageSize": size, "TotalCount": len(items)})
    return _ark_reply(action, error=(400, "InvalidAction", f"unknown Action {action!r}"))


def _ark_create(st: SimState, store: BatchStore, p: dict) -> web.Response:
    action = "CreateBatchInferenceJob"
    name = p.get("Name")
    src = p.get("InputFileTosLocation") or {}
    out = p.get("OutputDirTosLocation") or {}
    ref = p.get("ModelReference") or {}
    if not isinstance(name, str) or not name:
        return _ark_reply(action, error=(400, "MissingParameter.Name", "Name is required"))
    model = ref.get("CustomModelId") or (ref.get("FoundationModel") or {}).get("Name")
    if not model:
        return _ark_reply(action, error=(400, "MissingParameter.ModelReference",
                                         "ModelReference needs FoundationModel or CustomModelId"))
    if ref.get("FoundationModel"):
        version = ref["FoundationModel"].get("ModelVersion")
        model = f"{model}-{version}" if version else model
    window = p.get("CompletionWindow") or "28d"
    window_s = _window_seconds(st, window)
    if window_s is None or not window.endswith("d") or not 1 <= int(window[:-1]) <= 28:
        return _ark_reply(action, error=(400, "InvalidParameter.CompletionWindow",
                                         "CompletionWindow takes 1d to 28d"))
    data = store.objects.get((str(src.get("BucketName")), str(src.get("ObjectKey"))))
    if data is None:
        return _ark_reply(action, error=(400, "InvalidParameter.InputFileTosLocation",
                                         "the input file does not exist in TOS"))
    if not out.get("BucketName") or out.get("ObjectKey") is None:
        return _ark_reply(action, error=(400, "MissingParameter.OutputDirTosLocation",
                                         "OutputDirTosLocation is required"))
    lines, problems = _check_lines(st, data, "ark", None, None)
    job_id = "bi-" + time.strftime("%Y%m%d%H%M%S") + "-" + store.new_id("")[-5:]
    meta = {"name": name, "description": p.get("Description") or "", "model_ref": ref,
            "out_bucket": out["BucketName"], "out_key": out["ObjectKey"],
            "tags": p.get("Tags") or [], "project": p.get("ProjectName") or "default"}
    b = SimBatch(job_id, "ark", "chat", "/v1/chat/completions", window, window_s, time.time(),
                 time.monotonic(), lines, problems, [],
                 f"{src['BucketName']}/{src['ObjectKey']}", meta, model=model)
    if not problems:
        _plan_outcomes(st, b)
    store.batches[b.id] = b
    store.created += 1
    return _ark_reply(action, {"Id": b.id})


# ---------------------------------------------------------------------- routing
def batch_handler(request: web.BaseRequest, st: SimState):
    """The coroutine answering ``request`` if it is a batch, file, Ark or TOS call, else None."""
    path, method = request.path, request.method
    if path.startswith(("/v1/files", "/v1/batches")):
        return _openai(request, st, method, path)
    auth = request.headers.get("Authorization", "")
    if auth.startswith(TOS_ALGORITHM) or "x-tos-date" in request.headers:
        return _tos(request, st)
    if path == "/" and "Action" in request.query:
        return _ark(request, st)
    if path == "/_sim/batches" and method == "GET":
        from ._routes import _admin_allowed

        if not _admin_allowed(request, st):
            return None  # the router answers 403/404 as for any admin path
        return _admin(st)
    return None


async def _admin(st: SimState) -> web.Response:
    store = store_of(st)
    batches = []
    for b in store.batches.values():
        phase, done, _ = _state(st, b)
        batches.append({"id": b.id, "shape": b.shape, "status": phase, "requests": len(b.lines),
                        "done": done, "nonce": (b.meta.get("batchmagic_nonce")
                                                or b.meta.get("name")),
                        "cancelled": b.cancel_at is not None})
    return json_response(200, {"created": store.created, "files": len(store.files),
                               "objects": len(store.objects), "batches": batches})
