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


def frame_html(df) -> str | None:
    """HTML for a result frame holding images: thumbnails in place of image cells, every other
    cell escaped as pandas would, and the notebook's usual row / column truncation."""
    import html as _html

    import pandas as pd

    def cell(value) -> str:
        if isinstance(value, GeneratedImage):
            return value.thumbnail_html()
        return _html.escape(str(value))

    image_cols = [c for c in df.columns if df[c].dtype == object
                  and any(isinstance(v, GeneratedImage) for v in df[c].head(50))]
    if not image_cols:
        return None
    from pandas.api import types

    # everything that is not a number, bool or date goes through ``cell`` (escaped): with
    # escape=False, a text column left to pandas would be raw HTML
    formatters = {c: cell for c in df.columns
                  if not (types.is_numeric_dtype(df[c]) or types.is_bool_dtype(df[c])
                          or types.is_datetime64_any_dtype(df[c]))}
    return df.to_html(
        escape=False, formatters=formatters, notebook=True,
        max_rows=pd.get_option("display.max_rows"), max_cols=pd.get_option("display.max_columns"),
        show_dimensions=pd.get_option("display.show_dimensions"),
    )


_registered = False


def register_html_formatter() -> None:
    """In IPython, show result frames that hold images with thumbnails. Other frames keep their
    own HTML: the formatter hands them straight back to pandas."""
    global _registered
    if _registered:
        return
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return
    import pandas as pd

    def html(df):
        if "batchmagic" in getattr(df, "attrs", {}):
            out = frame_html(df)
            if out is not None:
                return out
        return df._repr_html_()

    ip.display_formatter.formatters["text/html"].for_type(pd.DataFrame, html)
    _registered = True
