"""Volcengine request signing: the OpenAPI signature (Ark's job API) and TOS's V4 signature.

Both follow the same four-step HMAC-SHA256 chain, as Volcengine documents it ("签名方法",
https://www.volcengine.com/docs/6369/67269) and as its TOS SDK implements it (``tos/auth.py``):

    kDate    = HMAC(SK, YYYYMMDD)
    kRegion  = HMAC(kDate, region)
    kService = HMAC(kRegion, service)          # "ark" for the job API, "tos" for object storage
    kSigning = HMAC(kService, "request")
    Signature = hex(HMAC(kSigning, StringToSign))

    StringToSign     = Algorithm \\n RequestDate \\n Date/region/service/request \\n hex(SHA256(CanonicalRequest))
    CanonicalRequest = METHOD \\n URI \\n sorted query \\n "name:value\\n" per signed header \\n
                       signed header names ";"-joined \\n payload hash

The OpenAPI uses the algorithm name ``HMAC-SHA256`` and headers ``X-Date`` / ``X-Content-Sha256``;
TOS uses ``TOS4-HMAC-SHA256`` and ``x-tos-date`` / ``x-tos-content-sha256``. The simulator verifies
signatures with these functions too, so the tests also check them against the published example
and an independent implementation of the documented steps.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import quote

OPENAPI_ALGORITHM = "HMAC-SHA256"
TOS_ALGORITHM = "TOS4-HMAC-SHA256"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    k = _hmac(secret_key.encode("utf-8"), date)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "request")


def canonical_query(params: Mapping[str, str]) -> str:
    return "&".join(f"{quote(str(k), safe='-_.~')}={quote(str(v), safe='-_.~')}"
                    for k, v in sorted(params.items()))


def canonical_request(method: str, path: str, params: Mapping[str, str],
                      headers: Mapping[str, str], signed: list[str], payload_hash: str) -> str:
    lower = {k.lower(): v for k, v in headers.items()}
    lines = "".join(f"{name}:{str(lower.get(name, '')).strip()}\n" for name in signed)
    return "\n".join([method.upper(), quote(path or "/", safe="/~"), canonical_query(params),
                      lines, ";".join(signed), payload_hash])


def signature(secret_key: str, algorithm: str, x_date: str, region: str, service: str,
              creq: str) -> str:
    scope = f"{x_date[:8]}/{region}/{service}/request"
    to_sign = "\n".join([algorithm, x_date, scope, sha256_hex(creq.encode("utf-8"))])
    key = signing_key(secret_key, x_date[:8], region, service)
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def x_date(now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ")


def sign(*, access_key: str, secret_key: str, method: str, host: str, path: str,
         params: Mapping[str, str], body: bytes, region: str, service: str, tos: bool,
         content_type: str | None = None, now: _dt.datetime | None = None) -> dict[str, str]:
    """The headers that authenticate one request (``Host`` included: it is signed)."""
    date = x_date(now)
    payload = sha256_hex(body)
    prefix = "x-tos-" if tos else "x-"
    headers = {"host": host, f"{prefix}date": date, f"{prefix}content-sha256": payload}
    if content_type:
        headers["content-type"] = content_type
    signed = sorted(headers)
    creq = canonical_request(method, path, params, headers, signed, payload)
    algorithm = TOS_ALGORITHM if tos else OPENAPI_ALGORITHM
    sig = signature(secret_key, algorithm, date, region, service, creq)
    scope = f"{date[:8]}/{region}/{service}/request"
    out = {("Host" if k == "host" else k): v for k, v in headers.items()}
    out["Authorization"] = (f"{algorithm} Credential={access_key}/{scope}, "
                            f"SignedHeaders={';'.join(signed)}, Signature={sig}")
    return out


def parse_authorization(value: str) -> dict[str, str] | None:
    """``{"algorithm", "access_key", "date", "region", "service", "signed", "signature"}`` from an
    Authorization header, or None when it is not a Volcengine signature."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm not in (OPENAPI_ALGORITHM, TOS_ALGORITHM):
        return None
    parts = {}
    for piece in rest.split(","):
        name, _, val = piece.strip().partition("=")
        parts[name] = val
    cred = parts.get("Credential", "").split("/")
    if len(cred) != 5 or cred[4] != "request" or "SignedHeaders" not in parts:
        return None
    return {"algorithm": algorithm, "access_key": cred[0], "date": cred[1], "region": cred[2],
            "service": cred[3], "signed": parts["SignedHeaders"],
            "signature": parts.get("Signature", "")}
