"""Image references in chat rows (vision models): URLs passed on, local files inlined.

A URL is handed to the provider, which fetches it, so a URL naming loopback, private, link-local
or cloud-metadata addresses is refused unless the user allows it: a self-hosted server would
otherwise fetch from inside its own network on a row's behalf. Names are checked as written
(literal addresses and local names); no DNS lookup is made before a run.
"""

from __future__ import annotations

import base64
import ipaddress
import mimetypes
import os
from urllib.parse import urlsplit

MAX_IMAGE_BYTES = 20 * 1024 * 1024
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "metadata.google.internal")
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


class MediaError(ValueError):
    pass


def image_url(ref: object, *, allow_private: bool = False) -> str:
    """A URL a provider accepts for an image reference: http(s) or data URL, or a local path."""
    if isinstance(ref, os.PathLike):
        ref = os.fspath(ref)
    if not isinstance(ref, str) or not ref.strip():
        raise MediaError(f"an image reference must be a URL or a file path, not {type(ref).__name__}")
    ref = ref.strip()
    scheme = ref.split(":", 1)[0].lower() if ":" in ref[:12] else ""
    if scheme == "data":
        return ref
    if scheme in ("http", "https"):
        if not allow_private:
            _refuse_private(ref)
        return ref
    if scheme and len(scheme) > 1:  # not a Windows drive letter
        raise MediaError(f"image URLs must be http(s) or data URLs, not {scheme}:")
    return _inline_file(ref)


def _refuse_private(url: str) -> None:
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    if not host:
        raise MediaError(f"the image URL {url!r} has no host")
    if host in _LOCAL_NAMES or host.endswith(_LOCAL_SUFFIXES):
        raise MediaError(
            f"the image URL names a local host ({host}); pass allow_private_urls=True to allow it"
        )
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return
    if addr.is_loopback or addr.is_private or addr.is_link_local or addr.is_reserved \
            or addr.is_unspecified or addr.is_multicast:
        raise MediaError(
            f"the image URL names a non-public address ({host}); pass allow_private_urls=True "
            "to allow it"
        )


def _inline_file(path: str) -> str:
    path = os.path.expanduser(path)
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise MediaError(f"cannot read image file {path!r}: {exc.strerror}") from None
    if size > MAX_IMAGE_BYTES:
        raise MediaError(f"image file {path!r} is {size:,} bytes, over the {MAX_IMAGE_BYTES:,} cap")
    mime = mimetypes.guess_type(path)[0] or "image/png"
    with open(path, "rb") as fh:
        data = fh.read(MAX_IMAGE_BYTES + 1)
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
