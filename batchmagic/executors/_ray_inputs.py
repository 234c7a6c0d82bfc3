"""The inputs of a Ray run, and how planning splits between the driver and the workers.

With ``executor="ray"`` a run also takes a path of Parquet / CSV / JSONL files (one file, a
folder of them, or a glob) or a ``ray.data.Dataset``. Where the rows are planned depends on where
the result goes:

* **no** ``output_path=``: the result is a pandas frame on the driver, which holds every input
  row anyway, so the rows are read there (files with pyarrow, a Dataset with ``to_pandas()``)
  and planned there like a DataFrame: the journal, de-duplication and resume work as in one
  process, and the workers get units (request bytes or engine bodies);
* ``output_path=`` (a DataFrame, files or a Dataset): nothing is read whole on the driver. It
  reads the first rows only (``SAMPLE_ROWS``), plans them to check the template, the options and
  the columns before anything is sent, and counts the rows where that is cheap (Parquet
  footers). The workers plan each block as Ray Data reads it (``_ray_blocks``).

Nothing here imports Ray unless the input is already a Ray object or is read by it.
"""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .._errors import ColumnClashError, ConfigError

#: rows read on the driver to check an output_path run before anything is sent
SAMPLE_ROWS = 20
#: the column of an output file that identifies a row (its request and its own values)
KEY_COLUMN = "_bm_key"
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "json",
            ".json": "json", ".ndjson": "json"}
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")


@dataclass
class BlockSource:
    """Rows planned per block on the workers (an ``output_path=`` run)."""

    kind: str  # "frame", "files" or "dataset"
    data: Any  # the DataFrame, the file paths, or the Dataset
    fmt: str | None  # "parquet", "csv" or "json" for files
    total: int | None  # rows, where known without reading them all
    output_path: str
    template: str | None = None
    plan_args: dict = field(default_factory=dict)  # _inputs.make_plan's keywords
    extra_tokens: int = 0  # prompt tokens each request carries beyond its body (a schema)

    def __repr__(self) -> str:
        # Ray Data keys its actor classes by this repr; the rows travel without ``data``
        what = f"{len(self.data)} files" if self.kind == "files" and self.data else self.kind
        return f"BlockSource({what}, {self.total} rows, output_path={self.output_path!r})"


def is_dataset(value: Any) -> bool:
    """A ``ray.data.Dataset`` (told without importing Ray)."""
    ray_data = sys.modules.get("ray.data")
    return ray_data is not None and isinstance(value, ray_data.Dataset)


def is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def ray_inputs(inputs: Any, o: Any) -> tuple[Any, BlockSource | None]:
    """(what the driver plans, the block source or None). Without ``output_path`` files and
    Datasets are read into a DataFrame here; with it, the driver gets a sample."""
    if o.output_path is None:
        if is_path(inputs):
            return read_files(*files_of(inputs)), None
        if is_dataset(inputs):
            return inputs.to_pandas(), None
        return inputs, None
    output_path = os.fspath(o.output_path)
    if is_path(inputs):
        paths, fmt = files_of(inputs)
        sample = read_files(paths[:1], fmt, rows=SAMPLE_ROWS)
        return sample, BlockSource("files", paths, fmt, _count(paths, fmt), output_path)
    if is_dataset(inputs):
        return inputs.limit(SAMPLE_ROWS).to_pandas(), \
            BlockSource("dataset", inputs, None, None, output_path)
    from .._inputs import _from_table_library

    table = _from_table_library(inputs)
    if not isinstance(table, pd.DataFrame):
        raise ConfigError("output_path= writes the input columns with each answer, so it needs "
                          "a table: a DataFrame, Parquet / CSV / JSONL files or a "
                          "ray.data.Dataset (e.g. pd.DataFrame({'text': texts}))",
                          option="output_path")
    return table.head(SAMPLE_ROWS), BlockSource("frame", table, None, len(table), output_path)


def defer(sample_plan: Any, source: BlockSource, template: str | None, plan_args: dict,
          extra_tokens: int) -> Any:
    """The plan of an output_path run: no rows on the driver, the source to plan per block
    (``blocks``). ``sample_plan`` (the first rows, planned) has checked the call; its columns
    stay."""
    from .._inputs import Plan

    if KEY_COLUMN in sample_plan.frame.columns:
        raise ColumnClashError(f"the input has a column {KEY_COLUMN!r}, which output files use "
                               "for each row's key; rename it first")
    source.template, source.plan_args, source.extra_tokens = template, plan_args, extra_tokens
    plan = Plan(sample_plan.kind, sample_plan.endpoint, sample_plan.index[:0],
                sample_plan.frame.iloc[:0], [], [], {}, set(), sample_plan.template,
                sample_plan.samples)
    plan.blocks = source  # what the run and the Ray executor look for
    return plan


# -- files ----------------------------------------------------------------------------------------


def files_of(path: str | os.PathLike) -> tuple[list[str], str]:
    """The files a path names (a file, a folder, a glob; a URI as it is) and their format."""
    text = os.fspath(path)
    if "://" in text:
        return [text], _format_of(text)
    if os.path.isdir(text):
        found = sorted(os.path.join(text, f) for f in os.listdir(text)
                       if _format_of(f, strict=False) and not f.startswith((".", "_")))
    elif glob.has_magic(text):
        found = sorted(f for f in glob.glob(text) if os.path.isfile(f))
    else:
        found = [text] if os.path.isfile(text) else []
    if not found:
        raise ConfigError(f"no Parquet, CSV or JSONL file at {text!r} (executor='ray' reads a "
                          "file, a folder of them, or a glob such as 'data/*.parquet')")
    formats = {_format_of(f) for f in found}
    if len(formats) > 1:
        raise ConfigError(f"{text!r} holds files of several formats ({', '.join(sorted(formats))});"
                          " pass one kind at a time")
    return [os.path.abspath(f) for f in found], formats.pop()


def _format_of(name: str, *, strict: bool = True) -> str | None:
    base = name.lower()
    for suffix in _COMPRESSED:
        base = base.removesuffix(suffix)
    fmt = _FORMATS.get(os.path.splitext(base)[1])
    if fmt is None and strict:
        raise ConfigError(f"{name!r} is not a Parquet, CSV or JSONL file (by its name: .parquet, "
                          ".csv, .jsonl / .json)")
    return fmt


def read_files(paths: list[str], fmt: str, *, rows: int | None = None) -> pd.DataFrame:
    """The files' rows on this machine, in order (all of them, or the first ``rows``)."""
    frames = []
    for path in paths:
        if fmt == "parquet":
            frames.append(_parquet_head(path, rows) if rows else pd.read_parquet(path))
        elif fmt == "csv":
            frames.append(pd.read_csv(path, nrows=rows))
        else:
            frames.append(pd.read_json(path, lines=True, nrows=rows))
        if rows is not None and sum(len(f) for f in frames) >= rows:
            break
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return frame.head(rows) if rows is not None else frame


def _parquet_head(path: str, rows: int) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as f:
        for batch in f.iter_batches(batch_size=rows):
            return pa.Table.from_batches([batch]).to_pandas()
        return f.schema_arrow.empty_table().to_pandas()


def _count(paths: list[str], fmt: str) -> int | None:
    """Rows in Parquet files, from their footers; None for formats that must be read to tell."""
    if fmt != "parquet":
        return None
    import pyarrow.parquet as pq

    try:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    except (OSError, ValueError):
        return None
