"""One attempt at one unit against an OpenAI-compatible endpoint, classified into an ``Outcome``.

This is the only place that reads HTTP answers. It never raises for a request problem: a failure
becomes an ``Outcome`` with a category (see ``_backend``) and whether the provider may have billed
it. A 2xx answer whose body is cut off, not JSON, not UTF-8 or the wrong shape was probably
processed (and billed), so it is marked ``possibly_billed``; errors the provider reports are not.
"""

from __future__ import annotations

from typing import Any

import orjson

from .. import _kinds
from .._backend import FATAL, OK, RATE_LIMIT, ROW, TRANSIENT, Outcome, Unit
from .._errors import ResponseError
from .._limits import RateInfo, parse_retry_after
from .._secrets import Secret
from ._dialects import classify
from ._wire import WireFailure

MAX_IMAGE_DOWNLOAD = 50 * 1024 * 1024


class OpenAICompatible:
    """A backend for any OpenAI-compatible HTTP endpoint."""

    def __init__(self, *, name: str, base_url: str, kind: str, api_key: Secret | None,
                 dialect: str, wire: Any, timeout: float, headers: dict[str, str] | None = None):
        self.name = name
        self.kind = kind
        self.dialect = dialect
        self.wire = wire
        self.timeout = timeout
        self.url = base_url.rstrip("/") + _kinds.path_for(kind)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if headers:
            self._headers.update(headers)
        if api_key is not None:
            self._headers["Authorization"] = f"Bearer {api_key.reveal()}"
        self._secret = api_key
        self._parse = _kinds.PARSERS.get(kind)

    def __repr__(self) -> str:  # the headers hold the key: never show them
        return f"<OpenAICompatible {self.name} {self.kind}>"

    async def call(self, unit: Unit) -> Outcome:
        try:
            resp = await self.wire.post(self.url, unit.body, self._headers, self.timeout)
        except WireFailure as f:
            return Outcome(TRANSIENT, error_type=f.error_type, message=self._clean(f.message),
                           possibly_billed=f.possibly_billed)
        headers = resp.headers
        info = RateInfo.from_headers(headers)
        status = resp.status
        payload: Any = None
        not_json = None
        if resp.body is not None:
            try:
                payload = orjson.loads(resp.body)
            except orjson.JSONDecodeError as exc:
                not_json = _describe_bad_body(resp.body, exc)

        if 200 <= status < 300:
            if resp.body is None:
                return Outcome(TRANSIENT, error_type=ResponseError, status=status, rate_info=info,
                               message=resp.body_problem or "the answer was incomplete",
                               possibly_billed=True)
            if not_json:
                return Outcome(TRANSIENT, error_type=ResponseError, status=status, rate_info=info,
                               message=not_json, possibly_billed=True)
            found = classify(self.dialect, status, payload)
            if found is not None:  # an error envelope inside HTTP 200 (Qianfan style)
                return self._error(found, status, headers, info)
            try:
                results = await self._results(payload, len(unit.items))
            except _kinds.ShapeError as exc:
                return Outcome(TRANSIENT, error_type=ResponseError, status=status, rate_info=info,
                               message=f"the answer has the wrong shape: {exc}", possibly_billed=True)
            except WireFailure as f:
                return Outcome(TRANSIENT, error_type=ResponseError, status=status, rate_info=info,
                               message=f"could not download the image: {f.message}",
                               possibly_billed=True)
            return Outcome(OK, results=results, status=status, rate_info=info)

        if 300 <= status < 400:  # applies to every row: never re-send paid requests elsewhere
            return Outcome.failure(FATAL, self._redirect_message(status, headers.get("location")),
                                   status=status, rate_info=info)
        found = classify(self.dialect, status, payload if isinstance(payload, dict) else None)
        if found is None:  # the dialect saw no error in a non-2xx answer: judge by the status
            from ._dialects import Classified

            found = Classified(TRANSIENT if status >= 500 or status in (408, 409) else ROW, None,
                               f"HTTP {status}")
        return self._error(found, status, headers, info)

    def _redirect_message(self, status: int, location: str | None) -> str:
        where = f" to {self._clean(location)[:200]}" if location else ""
        return (f"HTTP {status}: {self.url} redirects{where}. batchmagic does not follow "
                "redirects of paid requests: set base_url to the address the server names "
                "(http:// to https://? a missing or extra /v1?)")

    def _error(self, found, status: int, headers, info) -> Outcome:
        category = found.category
        message = self._clean(found.message) or f"HTTP {status}"
        retry_after = parse_retry_after(headers) if category in (RATE_LIMIT, TRANSIENT) else None
        overloaded = status in (503, 529) or category == RATE_LIMIT
        return Outcome.failure(category, message, status=status,
                               code=self._clean(found.code) if found.code else None,
                               retry_after=retry_after, overloaded=overloaded, rate_info=info)

    async def _results(self, payload: Any, n: int) -> list:
        if self.kind == "embedding":
            vectors, prompt_tokens = _kinds.parse_embeddings(payload, n)
            shares = _share(prompt_tokens, n)
            return [_kinds.Parsed(v, None, s, 0) for v, s in zip(vectors, shares)]
        parsed = self._parse(payload)
        if parsed.image_url is not None:
            parsed.output = await self._download(parsed.image_url)
        return [parsed]

    async def _download(self, url: str):
        from .._image import GeneratedImage

        if not url.startswith(("http://", "https://")):
            raise _kinds.ShapeError("the image URL is not http(s)")
        resp = await self.wire.get(url, self.timeout, MAX_IMAGE_DOWNLOAD)
        if resp.status != 200 or resp.body is None:
            raise WireFailure("protocol", resp.body_problem or f"HTTP {resp.status}", True)
        return GeneratedImage(resp.body, url=url)

    def _clean(self, text: str) -> str:
        return self._secret.redact(text) if self._secret is not None else text

    async def aclose(self) -> None:
        await self.wire.aclose()


def _share(total: int | None, n: int) -> list[int | None]:
    """Split a packed request's prompt tokens over its items (exact when it divides evenly)."""
    if total is None:
        return [None] * n
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


def _describe_bad_body(body: bytes, exc: Exception) -> str:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as ue:
        return f"the answer is not valid UTF-8 (byte {ue.start})"
    head = body[:60].decode("utf-8", "replace").strip()
    if head.startswith("<"):
        return "the answer is HTML, not JSON (a proxy or gateway error page?)"
    return f"the answer is not JSON ({str(exc)[:80]})"
