"""Planning rows: image references of every kind a column holds, and which rule wins when a row
has both a missing value and a template that cannot format it (against the simulator on
loopback, or the pure planning step)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import batchmagic as bm
from batchmagic._inputs import make_plan
from batchmagic.simulator import SimulatorThread

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
IMAGE_TOKENS = 85  # what the simulator counts for each image part it receives


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(latency=0.0) as s:
        yield s


@pytest.fixture
def picture(tmp_path) -> Path:
    path = tmp_path / "cat.png"
    path.write_bytes(PNG)
    return path


def _describe(sim, refs: list) -> pd.DataFrame:
    sim.reset()
    frame = pd.DataFrame({"q": [f"row {i}" for i in range(len(refs))],
                          "img": pd.Series(refs, dtype=object)})
    return bm.batch(frame, "describe {q}", images="img", provider="simulator",
                    base_url=sim.base_url, model="m", progress=False, cache=False)


def test_path_objects_in_the_images_column_are_sent_as_images(sim, picture):
    """A column of ``pathlib.Path`` (what ``Path.glob`` gives) once crashed planning with
    "'PosixPath' object is not iterable"."""
    df = _describe(sim, [None, picture, [picture, "https://example.com/b.png"]])
    assert df["error"].isna().all(), df["error"].tolist()
    assert list(df["output"]) == ["echo: describe row 0", "echo: describe row 1",
                                  "echo: describe row 2"]
    tokens = df["input_tokens"].tolist()
    assert tokens[1] - tokens[0] == IMAGE_TOKENS
    assert tokens[2] - tokens[0] == 2 * IMAGE_TOKENS
    assert sim.stats()["total"] == 3


@pytest.mark.parametrize("missing", [None, np.nan, pd.NA, pd.NaT])
def test_a_missing_image_reference_means_the_row_has_no_image(sim, picture, missing):
    """pd.NA and pd.NaT in an object column once crashed planning ("'NAType' object is not
    iterable"); like None and NaN they mean the row has no picture."""
    df = _describe(sim, [str(picture), missing])
    assert df["error"].isna().all(), df["error"].tolist()
    assert df["input_tokens"][0] - df["input_tokens"][1] == IMAGE_TOKENS


def test_an_image_reference_of_the_wrong_type_is_a_row_error(sim, picture):
    """A number is not a reference: that row gets an InputError, the others are sent (it once
    crashed the whole call with "'int' object is not iterable")."""
    df = _describe(sim, [str(picture), 42])
    assert df["error"][0] is None and df["output"][0] == "echo: describe row 0"
    err = df["error"][1]
    assert isinstance(err, bm.InputError) and err.row == 1
    assert "URL or a file path, not int" in str(err)
    assert sim.stats()["total"] == 1


def _plan(on_missing: str):
    frame = pd.DataFrame({"item": ["tea", "cake"], "price": [2.5, None]}, index=["a", "b"])
    return make_plan(frame, "{item}: {price:.2f}", kind="chat", endpoint="http://127.0.0.1:9/v1",
                     model="m", params=None, system=None, on_missing=on_missing)


def test_the_missing_value_rule_comes_before_the_template():
    """A blank cannot take a number format; the row is still a missing value (or skipped), and
    only on_missing='empty', which asks for the blank, meets the template's refusal."""
    errors = _plan("error").row_errors
    assert list(errors) == [1] and "missing value in column 'price'" in str(errors[1])
    skipping = _plan("skip")
    assert skipping.skipped == {1} and not skipping.row_errors
    emptied = _plan("empty").row_errors
    assert list(emptied) == [1] and "the template cannot format this row" in str(emptied[1])
    assert [item.rows for item in _plan("empty").items] == [[0]]
