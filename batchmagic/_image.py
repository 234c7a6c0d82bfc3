"""The output of a text-to-image row: the image bytes, shown as a thumbnail, savable as a file."""

from __future__ import annotations

import base64
import os
import struct

_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF8": "image/gif",
    b"RIFF": "image/webp",
}


def sniff_mime(data: bytes) -> str:
    for sig, mime in _SIGNATURES.items():
        if data.startswith(sig):
            return mime
    return "application/octet-stream"


class GeneratedImage:
    """An image a model made. Renders as a thumbnail in notebooks and in result frames."""

    __slots__ = ("data", "mime", "url", "prompt")

    def __init__(self, data: bytes, *, mime: str | None = None, url: str | None = None,
                 prompt: str | None = None):
        self.data = data
        self.mime = mime or sniff_mime(data)
        self.url = url
        self.prompt = prompt

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) for PNG images, read from the header; None when unknown."""
        if self.mime == "image/png" and len(self.data) >= 24:
            return struct.unpack(">II", self.data[16:24])
        return None

    def save(self, path: str | os.PathLike) -> str:
        with open(path, "wb") as fh:
            fh.write(self.data)
        return os.fspath(path)

    def to_pil(self):
        """A Pillow image (needs the ``pillow`` package)."""
        import io

        from PIL import Image  # lazy: Pillow is optional

        return Image.open(io.BytesIO(self.data))

    def data_url(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode()}"

    def thumbnail_html(self, height: int = 64) -> str:
        return f'<img src="{self.data_url()}" style="height:{height}px" alt="generated image"/>'

    def _repr_html_(self) -> str:
        return self.thumbnail_html(256)

    def _repr_png_(self) -> bytes | None:
        return self.data if self.mime == "image/png" else None

    def _repr_jpeg_(self) -> bytes | None:
        return self.data if self.mime == "image/jpeg" else None

    def __repr__(self) -> str:
        size = self.size
        dims = f" {size[0]}x{size[1]}" if size else ""
        src = " (from a URL)" if self.url else ""
        return f"<GeneratedImage {self.mime}{dims}, {len(self.data):,} bytes{src}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GeneratedImage) and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)
