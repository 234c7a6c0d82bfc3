"""Volcengine Ark batch jobs: JSONL in TOS object storage, jobs through Ark's signed OpenAPI.

Ark has no ``/files`` + ``/batches``. Its Batch Job API (docs 82379/1339603 and neighbours) is
``POST https://ark.cn-beijing.volcengineapi.com/?Action=<Action>&Version=2024-01-01`` with a JSON
body, signed with an Access Key / Secret Key (``Authorization: HMAC-SHA256 Credential=AK/date/
cn-beijing/ark/request, ...``; Ark API keys are not accepted there):

    CreateBatchInferenceJob  {Name, ModelReference, InputFileTosLocation, OutputDirTosLocation,
                              CompletionWindow ("1d".."28d"), Tags, ProjectName} -> {Id}
    GetBatchInferenceJob     {Id} -> the job: Status{Phase, Message}, RequestCounts{Total,
                              Completed, Failed}, ErrorFileTosLocation, ExpireTime, ...
    ListBatchInferenceJobs   {Filter{Name, Ids, Phases}, PageNumber, PageSize}
    StopBatchInferenceJob    {Id}

Phases: Queued, (Initializing,) Running, Completed, Terminating, Terminated, Failed. Results go to
``{OutputDir}{Id}/output/results.jsonl`` and ``{OutputDir}{Id}/error/errors.jsonl``.

Files move through TOS's own REST API (PutObject / GetObject), signed with TOS's V4 signature
(``TOS4-HMAC-SHA256``, headers ``x-tos-date`` / ``x-tos-content-sha256``), virtual-hosted style
(``https://<bucket>.tos-cn-beijing.volces.com/<key>``); not the S3-compatible endpoint, so no
S3 library is needed. An endpoint given as an IP address (a local stand-in) cannot carry the
bucket in DNS, so the bucket then goes in the Host header, which is what the signature covers.

The job's nonce goes into its ``Name`` and a ``Tags`` entry, so a job created just before a crash
is found again (``ListBatchInferenceJobs`` by name) instead of being paid for twice.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import re
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from .._errors import BadRequestError, ConfigError, ResponseError
from .._secrets import Secret
from ._client import (
    FILE_DEADLINE,
    LIST_PAGES,
    MAX_FILE_BYTES,
    ApiCaller,
    RemoteBatch,
    check_status,
)
from ._sign import sign

OPENAPI_URL = "https://ark.cn-beijing.volcengineapi.com"
TOS_ENDPOINT = "https://tos-cn-beijing.volces.com"
REGION = "cn-beijing"
VERSION = "2024-01-01"
#: environment variables for the Access Key pair (the names Ark's own SDK examples read)
AK_ENV = ("VOLC_ACCESSKEY", "VOLCENGINE_ACCESS_KEY")
SK_ENV = ("VOLC_SECRETKEY", "VOLCENGINE_SECRET_KEY")
NAME_PREFIX = "batchmagic-"
TAG_KEY = "batchmagic-nonce"
ARK_STATES = {
    "Queued": "pending", "Initializing": "pending", "Running": "running",
    "Completed": "completed", "Terminating": "cancelling", "Failed": "failed",
}
#: a status filter -> the ListBatchInferenceJobs ``Filter.Phases`` value that holds it (the
#: filter takes Queued, Running, Completed, Terminating, Terminated, Failed)
FILTER_PHASES = {
    "queued": "Queued", "running": "Running", "completed": "Completed",
    "terminating": "Terminating", "cancelling": "Terminating", "terminated": "Terminated",
    "cancelled": "Terminated", "expired": "Terminated", "failed": "Failed",
}


def ark_window(window: str) -> str:
    """Ark counts whole days ("1d".."28d"); "24h" / "48h" convert."""
    m = re.fullmatch(r"(\d+)([hd])", window.strip())
    if not m:
        raise ConfigError(f"completion_window {window!r}: Ark takes whole days, e.g. '1d' or '24h'")
    n, unit = int(m.group(1)), m.group(2)
    days = n if unit == "d" else n / 24
    if days != int(days) or not 1 <= days <= 28:
        raise ConfigError(f"completion_window {window!r}: Ark takes whole days from 1d to 28d")
    return f"{int(days)}d"


def model_reference(model: str | None, options: dict) -> dict:
    """Ark names the job's model once: a custom model id, or a foundation model name and version
    (``batch_options={"model_version": "250615"}``, or a model given as ``name-YYMMDD``)."""
    if options.get("custom_model_id"):
        return {"CustomModelId": str(options["custom_model_id"])}
    if not model:
        raise ConfigError("model= is required: which Ark foundation model should answer?")
    version = options.get("model_version")
    name = model
    if not version:
        m = re.fullmatch(r"(.+)-(\d{6})", model)
        if not m:
            raise ConfigError(
                f"Ark batch jobs name a model by name and version: pass model='{model}' with "
                "batch_options={'model_version': 'YYMMDD'}, or model='name-YYMMDD', or "
                "batch_options={'custom_model_id': ...}")
        name, version = m.group(1), m.group(2)
    return {"FoundationModel": {"Name": name, "ModelVersion": str(version)}}


def _secret(options: dict, key: str, envs: tuple[str, ...], what: str) -> Secret:
    value = options.get(key)
    if isinstance(value, Secret):
        return value
    if value:
        return Secret(str(value))
    for env in envs:
        if os.environ.get(env, "").strip():
            return Secret(os.environ[env])
    raise ConfigError(f"Ark batch jobs are signed with an Access Key pair, not the API key: set "
                      f"{' / '.join(envs)} or pass batch_options={{'{key}': ...}} ({what}; never "
                      "printed, logged or stored)")


def ark_credentials(options: dict) -> tuple[Secret, Secret]:
    return (_secret(options, "access_key", AK_ENV, "the Access Key ID"),
            _secret(options, "secret_key", SK_ENV, "the Secret Access Key"))


def _ip_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class ArkBatch:
    """Ark batch jobs over TOS, behind the same interface as ``OpenAIBatch``."""

    line_format = "ark"

    def __init__(self, *, name: str, options: dict, wire: Any, model: str | None,
                 creating: bool = True):
        """``creating=False``: a client that only looks at, lists, stops and collects jobs made
        elsewhere (no bucket or model needed: each job names its own output location)."""
        self.name = name
        self.access_key, self.secret_key = ark_credentials(options)
        bucket = options.get("bucket")
        if not bucket and creating:
            raise ConfigError("Ark batch jobs read and write TOS: pass batch_options={'bucket': "
                              "'your-bucket'} (in cn-beijing, like the job)")
        self.bucket = str(bucket or "")
        self.output_bucket = str(options.get("output_bucket") or bucket or "")
        prefix = str(options.get("prefix", "batchmagic/"))
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.region = str(options.get("region") or REGION)
        self.openapi = str(options.get("openapi_url") or OPENAPI_URL).rstrip("/")
        self.tos = str(options.get("tos_endpoint") or TOS_ENDPOINT).rstrip("/")
        self.project = options.get("project_name")
        self.model_ref = model_reference(model, options) if creating else None
        self.wire = wire
        self.caller = ApiCaller(name, wire, "ark", [self.access_key, self.secret_key])

    def __repr__(self) -> str:
        return f"<ArkBatch {self.name} tos://{self.bucket}/{self.prefix}>"

    # -- the signed OpenAPI ---------------------------------------------------------------------

    async def _action(self, action: str, payload: dict, *, retry: bool = True) -> dict:
        body = orjson.dumps(payload)
        parts = urlsplit(self.openapi)
        params = {"Action": action, "Version": VERSION}
        url = f"{self.openapi}/?Action={action}&Version={VERSION}"

        def signed() -> dict:
            return sign(access_key=self.access_key.reveal(), secret_key=self.secret_key.reveal(),
                        method="POST", host=parts.netloc, path="/", params=params, body=body,
                        region=self.region, service="ark", tos=False,
                        content_type="application/json")

        resp = await self.caller.call("POST", url, body, {"Accept": "application/json"},
                                      retry=retry, sign=signed)
        try:
            data = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            raise ResponseError(f"{self.name}: the answer to {action} is not JSON", attempts=1,
                                status=resp.status, provider=self.name) from None
        error = (data.get("ResponseMetadata") or {}).get("Error") if isinstance(data, dict) else None
        if error:  # an error envelope inside a 2xx
            raise BadRequestError(self.caller.clean(f"{self.name}: {error.get('Message') or error}"),
                                  attempts=1, status=resp.status, provider=self.name,
                                  code=self.caller.clean(str(error.get("Code") or "")) or None)
        result = data.get("Result") if isinstance(data, dict) else None
        return result if isinstance(result, dict) else {}

    # -- TOS ------------------------------------------------------------------------------------

    def _object(self, bucket: str, key: str) -> tuple[str, str, str]:
        """(url, Host header, path to sign) of an object, virtual-hosted style. The signature
        covers the unescaped path (it escapes it itself, as TOS's SDK does)."""
        parts = urlsplit(self.tos)
        quoted = "/" + quote(key, safe="/~")
        host = f"{bucket}.{parts.netloc}"
        if _ip_host(parts.hostname or ""):
            return f"{parts.scheme}://{parts.netloc}{quoted}", host, "/" + key
        return f"{parts.scheme}://{host}{quoted}", host, "/" + key

    def _tos_sign(self, method: str, host: str, path: str, body: bytes,
                  content_type: str | None = None):
        def signed() -> dict:
            return sign(access_key=self.access_key.reveal(), secret_key=self.secret_key.reveal(),
                        method=method, host=host, path=path, params={}, body=body,
                        region=self.region, service="tos", tos=True, content_type=content_type)
        return signed

    async def upload(self, data: bytes, filename: str) -> str:
        key = self.prefix + filename
        url, host, path = self._object(self.bucket, key)
        await self.caller.call("PUT", url, data, {}, deadline=FILE_DEADLINE,
                               sign=self._tos_sign("PUT", host, path, data, "application/jsonl"))
        return f"tos://{self.bucket}/{key}"

    async def download(self, file_ref: str) -> bytes | None:
        bucket, key = _split_ref(file_ref)
        url, host, path = self._object(bucket, key)
        resp = await self.caller.call("GET", url, None, {}, deadline=FILE_DEADLINE,
                                      max_bytes=MAX_FILE_BYTES, missing_ok=True,
                                      sign=self._tos_sign("GET", host, path, b""))
        return None if resp is None else resp.body

    # -- jobs -----------------------------------------------------------------------------------

    async def create(self, file_ref: str, *, endpoint: str, window: str, model: str | None,
                     nonce: str, job_id: str, shard: int) -> RemoteBatch:
        bucket, key = _split_ref(file_ref)
        payload: dict[str, Any] = {
            "Name": NAME_PREFIX + nonce,
            "Description": f"batchmagic job {job_id}, part {shard + 1}",
            "ModelReference": self.model_ref,
            "InputFileTosLocation": {"BucketName": bucket, "ObjectKey": key},
            "OutputDirTosLocation": {"BucketName": self.output_bucket,
                                     "ObjectKey": self.prefix + "output/"},
            "CompletionWindow": ark_window(window),
            "Tags": [{"Key": TAG_KEY, "Value": nonce}],
        }
        if self.project:
            payload["ProjectName"] = self.project
        result = await self._action("CreateBatchInferenceJob", payload, retry=False)
        job = result.get("Id")
        if not isinstance(job, str):
            raise ResponseError(f"{self.name}: CreateBatchInferenceJob answered without an Id",
                                attempts=1, provider=self.name)
        return await self.retrieve(job)

    async def retrieve(self, batch_id: str) -> RemoteBatch:
        return self._job(await self._action("GetBatchInferenceJob", {"Id": batch_id}))

    async def find(self, nonce: str, since: float) -> RemoteBatch | None:
        payload: dict[str, Any] = {"Filter": {"Name": NAME_PREFIX + nonce}, "PageNumber": 1,
                                   "PageSize": 100}
        if self.project:
            payload["ProjectName"] = self.project
        result = await self._action("ListBatchInferenceJobs", payload)
        for item in result.get("Items") or []:
            if isinstance(item, dict) and self._nonce(item) == nonce:
                return await self.retrieve(item["Id"])
        return None

    async def list_batches(self, *, status: str | None = None, limit: int = 100,
                           page_size: int = 100) -> list[RemoteBatch]:
        """The account's jobs (in ``project_name``), newest first, up to ``limit``. A status
        that is one of ListBatchInferenceJobs' filter phases is filtered by Ark; the rest
        ("pending" takes in Initializing, which the filter does not list; expired and cancelled
        are both Terminated) are sorted out here. The order of Ark's pages is not documented,
        so the jobs are sorted by CreateTime here."""
        status = check_status(status, [*ARK_STATES, "Terminated"])
        payload: dict[str, Any] = {"PageSize": max(1, min(100, page_size))}
        phase = FILTER_PHASES.get(status or "")
        if phase:
            payload["Filter"] = {"Phases": [phase]}
        if self.project:
            payload["ProjectName"] = self.project
        found: list[RemoteBatch] = []
        for number in range(1, LIST_PAGES + 1):
            result = await self._action("ListBatchInferenceJobs", {**payload, "PageNumber": number})
            items = [i for i in result.get("Items") or [] if isinstance(i, dict)]
            found += [job for job in map(self._job, items) if job.matches(status)]
            total = result.get("TotalCount")
            seen = number * payload["PageSize"]
            if len(items) < payload["PageSize"] or (isinstance(total, int) and seen >= total):
                break
        found.sort(key=lambda job: job.created or 0.0, reverse=True)
        return found[:limit]

    async def cancel(self, batch_id: str) -> RemoteBatch:
        await self._action("StopBatchInferenceJob", {"Id": batch_id})
        return await self.retrieve(batch_id)

    @staticmethod
    def _nonce(item: dict) -> str | None:
        for tag in item.get("Tags") or []:
            if isinstance(tag, dict) and tag.get("Key") == TAG_KEY:
                return str(tag.get("Value"))
        name = item.get("Name")
        if isinstance(name, str) and name.startswith(NAME_PREFIX):
            return name[len(NAME_PREFIX):]
        return None

    def _job(self, item: dict) -> RemoteBatch:
        if not isinstance(item.get("Id"), str):
            raise ResponseError(f"{self.name}: the job answer has no Id", attempts=1,
                                provider=self.name)
        status = item.get("Status") or {}
        phase = str(status.get("Phase") or "")
        state = ARK_STATES.get(phase, "running")
        if phase == "Terminated":  # stopped by hand, or its window ran out
            state = "expired" if _past(item.get("ExpireTime")) else "cancelled"
        counts = item.get("RequestCounts") or {}
        out = item.get("OutputDirTosLocation") or {}
        out_bucket = out.get("BucketName") or self.output_bucket
        out_key = out.get("ObjectKey") or self.prefix + "output/"
        job = item["Id"]
        err = item.get("ErrorFileTosLocation") or {}
        error_ref = (f"tos://{err['BucketName']}/{err['ObjectKey']}"
                     if err.get("BucketName") and err.get("ObjectKey")
                     else f"tos://{out_bucket}/{out_key}{job}/error/errors.jsonl")
        terminal_ish = state in ("completed", "expired", "cancelled", "failed")
        return RemoteBatch(
            id=job, status=phase, state=state,
            total=counts.get("Total"), completed=counts.get("Completed"),
            failed=counts.get("Failed"),
            output_ref=f"tos://{out_bucket}/{out_key}{job}/output/results.jsonl" if terminal_ish
            else None,
            error_ref=error_ref if terminal_ish else None,
            message=self.caller.clean(str(status.get("Message") or "")),
            nonce=self._nonce(item),
            created=_stamp(item.get("CreateTime")),
            endpoint="/v1/chat/completions",  # Ark's batch jobs answer chat requests
            name=item.get("Name") if isinstance(item.get("Name"), str) else None,
        )

    async def aclose(self) -> None:
        await self.wire.aclose()


def _split_ref(ref: str) -> tuple[str, str]:
    if not ref.startswith("tos://"):
        raise ConfigError(f"not a TOS location: {ref!r}")
    bucket, _, key = ref[len("tos://"):].partition("/")
    return bucket, key


def _stamp(stamp: Any) -> float | None:
    """An RFC 3339 time (Ark's CreateTime, ExpireTime) as a UNIX time."""
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        when = _dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.timestamp()


def _past(stamp: Any) -> bool:
    when = _stamp(stamp)
    return when is not None and when <= _dt.datetime.now(_dt.timezone.utc).timestamp()
