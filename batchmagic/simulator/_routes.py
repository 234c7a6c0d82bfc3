"""HTTP plumbing: the request dispatcher, GET and admin endpoints, and a quiet aiohttp server."""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ._app import SimState
from ._batches import batch_handler
from ._config import SimConfig
from ._endpoints import MAX_IMAGES_KEPT, PATHS
from ._faults import model_not_found
from ._http import error_obj, json_response

MAX_BODY_BYTES = 64 * 1024 * 1024


# ---------------------------------------------------------------------- GET + admin handlers
def _unauthorized() -> web.Response:
    return json_response(401, error_obj("Incorrect API key provided.", "invalid_request_error",
                                        "invalid_api_key"))


async def _models(request: web.BaseRequest, st: SimState) -> web.Response:
    if not st.authorized(request):
        return _unauthorized()
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "batchmagic-sim"}
            for m in st.models if m not in st.missing]
    return json_response(200, {"object": "list", "data": data})


async def _model(request: web.BaseRequest, st: SimState, name: str) -> web.Response:
    if not st.authorized(request):
        return _unauthorized()
    if name in st.missing:
        return json_response(404, model_not_found(name))
    return json_response(200, {"id": name, "object": "model", "created": 0,
                               "owned_by": "batchmagic-sim"})


async def _image(request: web.BaseRequest, st: SimState, name: str) -> web.Response:
    image_id = name.removesuffix(".png")
    png = st.images.get(image_id)
    if png is None:
        return json_response(404, error_obj("image not found (the simulator keeps the last "
                                            f"{MAX_IMAGES_KEPT})", "invalid_request_error"))
    st.images.move_to_end(image_id)  # LRU: a fetched image stays longer
    return web.Response(body=png, headers={"Content-Type": "image/png"})


def _admin_allowed(request: web.BaseRequest, st: SimState) -> bool:
    """Loopback peers may use /_sim/; a remote peer needs the API key (none set = refused)."""
    peer = request.remote
    try:
        if peer is not None and ipaddress.ip_address(peer).is_loopback:
            return True
    except ValueError:
        pass
    return st._auth is not None and st.authorized(request)


async def _admin_calls(request: web.BaseRequest, st: SimState) -> web.Response:
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        return json_response(400, error_obj("since must be an integer", "invalid_request_error"))
    return json_response(200, st.calls[max(0, since):])


async def _admin_stats(request: web.BaseRequest, st: SimState) -> web.Response:
    return json_response(200, st.stats())


async def _admin_get_config(request: web.BaseRequest, st: SimState) -> web.Response:
    return json_response(200, st.cfg.public_dict())


async def _admin_set_config(request: web.BaseRequest, st: SimState) -> web.Response:
    try:
        patch = orjson.loads(await request.read())
        if not isinstance(patch, dict):
            raise ValueError("expected a JSON object of config fields")
        cfg = st.apply_patch(patch)
    except (ValueError, TypeError) as e:
        # Messages name fields, never the api_key value.
        msg = str(e)[:300]
        return json_response(400, error_obj(f"bad config patch: {msg}", "invalid_request_error"))
    return json_response(200, cfg.public_dict())


async def _admin_reset(request: web.BaseRequest, st: SimState) -> web.Response:
    st.reset()
    return json_response(200, {"ok": True})


async def _admin_health(request: web.BaseRequest, st: SimState) -> web.Response:
    return json_response(200, {"status": "ok", "uptime_s": round(time.monotonic() - st.t0, 3)})


_ADMIN = {
    ("GET", "/_sim/calls"): _admin_calls,
    ("GET", "/_sim/stats"): _admin_stats,
    ("GET", "/_sim/config"): _admin_get_config,
    ("POST", "/_sim/config"): _admin_set_config,
    ("POST", "/_sim/reset"): _admin_reset,
    ("GET", "/_sim/health"): _admin_health,
}
_V1_POST = {path: kind for kind, path in PATHS.items()}


def make_dispatcher(st: SimState) -> Any:
    """The single request handler: a dict lookup instead of aiohttp's router (hot path)."""

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        method, path = request.method, request.path
        if method == "POST":
            kind = _V1_POST.get(path)
            if kind is not None:
                return await st.handle(request, kind)
        elif method == "GET":
            if path == "/v1/models":
                return await _models(request, st)
            if path.startswith("/v1/models/"):
                return await _model(request, st, path[len("/v1/models/"):])
            if path.startswith("/v1/sim-images/"):
                return await _image(request, st, path[len("/v1/sim-images/"):])
        batch = batch_handler(request, st)  # files, batches, Ark jobs, the TOS stand-in
        if batch is not None:
            return await batch
        admin = _ADMIN.get((method, path))
        if admin is not None:
            if not _admin_allowed(request, st):
                return json_response(403, error_obj(
                    "admin endpoints need a loopback client or the API key",
                    "invalid_request_error"))
            return await admin(request, st)
        known = path in _V1_POST or path.startswith("/_sim/") or path.startswith("/v1/models")
        status = 405 if known else 404
        # The path is not echoed back: the body stays free of anything the client sent.
        return json_response(status, error_obj(
            "Invalid method for this URL." if known else "Invalid URL.",
            "invalid_request_error"))

    return dispatch


# ---------------------------------------------------------------------- quiet HTTP layer
#: aiohttp's server logger would print malformed request lines (which can hold an API key)
SERVER_LOG = logging.getLogger("batchmagic.simulator.server")


def _drop_client_errors(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, HttpProcessingError)


SERVER_LOG.addFilter(_drop_client_errors)


class _QuietRequestHandler(web.RequestHandler):
    """Answers malformed HTTP with a generic 400: aiohttp's own page quotes the bad header."""

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):
            message = f"{status}: malformed HTTP request"
        return super().handle_error(request, status, exc, message)


class SimServer(web.Server):
    """aiohttp's low-level server with the quiet handler and a larger body limit."""

    def __init__(self, cfg: SimConfig) -> None:
        self.state = SimState(cfg)
        super().__init__(make_dispatcher(self.state), request_factory=self._make_request_big,
                         handler_cancellation=True, access_log=None, logger=SERVER_LOG)

    def _make_request_big(self, message: Any, payload: Any, protocol: Any, writer: Any,
                          task: Any) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, self._loop,
                               client_max_size=MAX_BODY_BYTES)

    def __call__(self) -> web.RequestHandler:
        return _QuietRequestHandler(self, loop=self._loop, **self._kwargs)
