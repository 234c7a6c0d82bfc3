"""Image outputs render as thumbnails in a result frame's HTML; every other cell stays escaped."""

from __future__ import annotations

import pandas as pd

from batchmagic import GeneratedImage
from batchmagic._image import frame_html, register_html_formatter
from batchmagic.simulator import solid_png


def test_thumbnails_and_escaping():
    img = GeneratedImage(solid_png((0, 128, 255), 8, 8))
    df = pd.DataFrame({"prompt": ["<script>x</script>"], "score": [1.5], "output": [img],
                       "tag": pd.Categorical(["<i>"])})
    html = frame_html(df)
    assert html is not None
    assert '<img src="data:image/png;base64,' in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "&lt;i&gt;" in html and "1.5" in html
    assert img.size == (8, 8) and img._repr_png_() == img.data


def test_frames_without_images_keep_pandas_html():
    assert frame_html(pd.DataFrame({"a": ["<b>"]})) is None


def test_formatter_in_ipython():
    from IPython.testing.globalipapp import get_ipython, start_ipython

    ip = start_ipython() or get_ipython()  # None when the test shell is already running
    register_html_formatter()
    # the terminal shell disables HTML output, so call the registered printer itself
    fmt = ip.display_formatter.formatters["text/html"].lookup_by_type(pd.DataFrame)
    plain = pd.DataFrame({"a": [1]})
    assert fmt(plain) == plain._repr_html_()
    with_img = pd.DataFrame({"output": [GeneratedImage(solid_png((1, 2, 3), 4, 4))]})
    with_img.attrs["batchmagic"] = {"kind": "image"}
    assert "<img" in fmt(with_img)
