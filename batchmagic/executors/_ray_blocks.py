"""Blocks of an ``output_path=`` run: planned, answered and written by the worker that reads them.

``BlockWorker`` is the Ray Data UDF (``map_batches`` over an actor pool; each actor has one
``Pump``, so its window stays full across blocks). For each block it:

1. plans the rows with the call's template and options (``_inputs.make_plan``, exactly as the
   driver would) and gives each output row its key, ``_bm_key``: the request's key and a hash of
   the row's own values, so identical requests from different rows stay apart;
2. leaves out the rows already written: those in the files that were in ``output_path`` when the
   run started (a re-run), and those in files this run wrote for the same block (Ray retried a
   block whose worker died: what that worker wrote is not bought again);
3. sends the rest through the pump, writing the finished rows every ``FLUSH_SECONDS`` and at the
   block's end. Rows never sent, or cut off in flight by a cancel, are not written, so a re-run
   sends them; every other row is written once, with its answer or its error;
4. returns one summary row (counts, files, errors by class) for the driver's summary frame.

Files are ``part-<block>-<worker>-<n>.parquet``, written under a dot-name and renamed, so no
reader sees half a file. In them ``error`` is the error's text and ``error_type`` its class;
values Arrow cannot hold as they are (validated objects, tool calls, logprobs) are JSON text,
an image its PNG bytes. Rows of one block are in input order; blocks are in no order.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pandas as pd

from .._dispatch import ItemResults
from .._errors import CancelledRowError, ConfigError, NotSentError
from ._ray_inputs import KEY_COLUMN
from ._ray_worker import ANSWER_FIELDS, Pump, WorkerSpec

#: seconds between writes of a block's finished rows (a killed worker loses at most these)
FLUSH_SECONDS = 5.0
_UNSENT = (NotSentError, CancelledRowError)
#: result columns that are text even when a file's rows have none (all null): files of one
#: folder must agree on their types for a reader to open the folder as one table
_TEXT_COLUMNS = ("error", "error_type", "finish_reason", "reasoning")


class BlockWorker:
    """Ray Data's UDF for ``output_path=`` runs (see the module)."""

    def __init__(self, spec: WorkerSpec, coordinator: Any, source: Any, preset: Any,
                 previous: list[str]):
        self.pump = Pump(spec, coordinator)
        self.source = source
        self.preset = preset
        self.folder = Folder(source.output_path)
        self.done = KeySet(self.folder, previous)
        self._files = 0
        for name in ("blocks_active", "blocks_done", "rows_written", "rows_seen",
                     "files_written"):
            self.pump.extra[name] = 0

    async def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        pump = self.pump
        await pump.ensure_open()
        pump.extra["blocks_active"] += 1
        try:
            summary = await self._block(frame.reset_index(drop=True))
        finally:
            pump.extra["blocks_active"] -= 1
            pump.extra["blocks_done"] += 1
        return pd.DataFrame([summary])

    async def _block(self, frame: pd.DataFrame) -> dict:
        t0 = time.monotonic()
        src, pump = self.source, self.pump
        samples = src.plan_args.get("samples", 1)
        summary = dict(rows=len(frame) * samples, already=0, written=0, ok=0, failed=0,
                       skipped=0, not_sent=0, input_tokens=0, output_tokens=0, cost=0.0,
                       files="[]", errors="{}", problem=None, wall_s=0.0)
        pump.extra["rows_seen"] += summary["rows"]
        pump.progress.rows += summary["rows"]
        if pump.closed_by is not None:  # cancelled or stopped: this block is left for a re-run
            summary["not_sent"] = summary["rows"]
            return summary
        try:
            plan = await asyncio.to_thread(self._plan, frame)
        except ConfigError as exc:  # this block's values break the call (a column's type)
            summary.update(not_sent=summary["rows"], problem=str(exc)[:500])
            return summary
        block = _Block(plan, self._row_keys(plan, frame))
        block.mark_done(await asyncio.to_thread(self._already, block.keys))
        self._count_final_rows(block, summary)
        await self._send(block)
        files = await self._write_while_answered(block)
        return self._summary(block, summary, files, t0)

    # -- planning ------------------------------------------------------------------------------

    def _plan(self, frame: pd.DataFrame) -> Any:
        from .._inputs import make_plan

        src = self.source
        plan = make_plan(frame, src.template, **src.plan_args)
        if src.extra_tokens:
            for item in plan.items:
                item.prompt_tokens += src.extra_tokens
        return plan

    @staticmethod
    def _row_keys(plan: Any, frame: pd.DataFrame) -> np.ndarray:
        """Each output row's key: 16 hex digits of its request's key, 16 of its own values."""
        hashes = row_hashes(frame)
        samples = plan.samples
        keys = np.empty(plan.n_rows, dtype="S32")
        for pos, item in enumerate(plan.row_item):
            own = int(hashes[pos // samples]) + pos % samples
            head = plan.items[item].key[:16] if item >= 0 else "-" * 16
            keys[pos] = f"{head}{own & 0xFFFFFFFFFFFFFFFF:016x}".encode()
        return keys

    def _already(self, keys: np.ndarray) -> np.ndarray:
        """Rows written before this run, or by this run for the same block (a retried block)."""
        done = self.done.contains(keys)
        own = self.folder.keys_of_block(block_id(keys))
        if len(own):
            done |= np.isin(keys, own)
        return done

    # -- sending -------------------------------------------------------------------------------

    def _count_final_rows(self, block: _Block, summary: dict) -> None:
        """Rows already written, and rows final before sending (input errors, skipped)."""
        plan, progress = block.plan, self.pump.progress
        summary["already"] = already = int(block.done_before.sum())
        progress.done += already
        progress.ok += already
        progress.cached += already
        for pos, err in plan.row_errors.items():
            if not block.done_before[pos]:
                progress.done += 1
                progress.failed += 1
                progress.error(err)
        for pos in plan.skipped:
            if not block.done_before[pos]:
                progress.done += 1
                progress.skipped += 1

    async def _send(self, block: _Block) -> None:
        plan, pump = block.plan, self.pump
        todo = block.items_to_send()
        if not todo:
            block.all_back.set()
            return
        first = pump.new_ids(len(plan.items))
        rp = SimpleNamespace(plan=plan, engine=pump.spec.engine, price=pump.spec.price,
                             target=SimpleNamespace(preset=self.preset),
                             options=SimpleNamespace(mode=None))
        from .._planning import build_units

        units = build_units(rp, todo)
        for u in units:
            u.items = [first + i for i in u.items]
        rows = {first + i: block.rows_to_answer(i) for i in todo}
        block.waiting = len(todo)

        def back(pid: int, answer: tuple) -> None:
            block.answered(pid - first, answer)

        await pump.put(units, rows, back)

    async def _write_while_answered(self, block: _Block) -> list[str]:
        files: list[str] = []
        while not block.all_back.is_set():
            try:
                await asyncio.wait_for(block.all_back.wait(), FLUSH_SECONDS)
            except asyncio.TimeoutError:
                pass
            files += await self._flush(block)
        return files + await self._flush(block)

    async def _flush(self, block: _Block) -> list[str]:
        positions = block.take_writable()
        if not len(positions):
            return []
        frame = block.frame_of(positions, self.pump.spec.schema)
        self._files += 1
        name = f"part-{block.id}-{self.pump.worker}-{self._files:05d}.parquet"
        text = _TEXT_COLUMNS + (("output",) if self.pump.spec.kind in ("chat", "completion")
                                else ())
        await asyncio.to_thread(self.folder.write, name, frame, text)
        self.pump.extra["rows_written"] += len(positions)
        self.pump.extra["files_written"] += 1
        return [name]

    def _summary(self, block: _Block, summary: dict, files: list[str], t0: float) -> dict:
        r, plan = block.results, block.plan
        errors: dict[str, int] = {}
        for pos in block.written_positions():
            item = plan.row_item[pos]
            err = plan.row_errors.get(pos) or (r.error[item] if item >= 0 else None)
            if pos in plan.skipped:
                summary["skipped"] += 1
            elif err is None:
                summary["ok"] += 1
            else:
                summary["failed"] += 1
                errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
        for i in range(len(plan.items)):
            if block.sent[i] and r.done[i]:
                summary["input_tokens"] += r.input_tokens[i] or 0
                summary["output_tokens"] += r.output_tokens[i] or 0
                summary["cost"] += r.cost[i] or 0.0
        summary["written"] = summary["ok"] + summary["failed"] + summary["skipped"]
        summary["not_sent"] = summary["rows"] - summary["already"] - summary["written"]
        summary.update(files=json.dumps(files), errors=json.dumps(errors),
                       wall_s=round(time.monotonic() - t0, 3))
        return summary


class _Block:
    """One block's plan, keys and results while its rows are answered."""

    def __init__(self, plan: Any, keys: np.ndarray):
        self.plan = plan
        self.keys = keys
        self.id = block_id(keys)
        n = plan.n_rows
        self.done_before = np.zeros(n, dtype=bool)
        self.written = np.zeros(n, dtype=bool)
        self.results = ItemResults(len(plan.items))
        self.sent = bytearray(len(plan.items))
        self.waiting = 0
        self.all_back = asyncio.Event()

    def mark_done(self, mask: np.ndarray) -> None:
        self.done_before = mask
        self.written |= mask

    def items_to_send(self) -> list[int]:
        """Items with at least one row not written yet."""
        todo = []
        for i, item in enumerate(self.plan.items):
            if any(not self.done_before[pos] for pos in item.rows):
                todo.append(i)
                self.sent[i] = 1
        return todo

    def rows_to_answer(self, i: int) -> int:
        return sum(1 for pos in self.plan.items[i].rows if not self.done_before[pos])

    def answered(self, i: int, answer: tuple) -> None:
        a = dict(zip(ANSWER_FIELDS, answer))
        r = self.results
        if a["error"] is None:
            r.answer(i, a["output"], a["finish_reason"], a["reasoning"], a["input_tokens"],
                     a["output_tokens"], cost=a["cost"], latency=a["latency"],
                     attempts=a["attempts"], value=a["value"], tool_calls=a["tool_calls"],
                     logprobs=a["logprobs"], ttft=a["ttft"])
        else:
            r.error[i] = a["error"]
            r.attempts[i] = a["attempts"] or 0
            r.done[i] = 1
            r.input_tokens[i], r.output_tokens[i] = a["input_tokens"], a["output_tokens"]
        self.waiting -= 1
        if self.waiting <= 0:
            self.all_back.set()

    def take_writable(self) -> np.ndarray:
        """Rows final now and not written yet (never a row that was not sent)."""
        plan, r = self.plan, self.results
        ready = []
        for pos in np.flatnonzero(~self.written):
            item = plan.row_item[pos]
            if item < 0:
                ready.append(pos)
            elif r.done[item] and not isinstance(r.error[item], _UNSENT):
                ready.append(pos)
        positions = np.asarray(ready, dtype=np.int64)
        self.written[positions] = True
        return positions

    def written_positions(self) -> np.ndarray:
        return np.flatnonzero(self.written & ~self.done_before)

    def frame_of(self, positions: np.ndarray, schema: Any) -> pd.DataFrame:
        from .._frame import build_frame

        frame = build_frame(self.plan, self.results, schema=schema)
        part = frame.iloc[positions].reset_index(drop=True)
        part[KEY_COLUMN] = self.keys[positions].astype(str)
        return arrow_safe(part)


def block_id(keys: np.ndarray) -> str:
    """A block's identity: the same rows make the same id on a retry."""
    return hashlib.sha256(keys.tobytes()).hexdigest()[:12]


def row_hashes(frame: pd.DataFrame) -> np.ndarray:
    """One 64-bit hash per row of its values (the index left out)."""
    try:
        return pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
    except TypeError:  # unhashable cells (lists, dicts): hash their JSON
        out = np.empty(len(frame), dtype=np.uint64)
        for pos, row in enumerate(frame.itertuples(index=False, name=None)):
            raw = orjson.dumps(list(row), default=str, option=orjson.OPT_SERIALIZE_NUMPY)
            out[pos] = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")
        return out


# -- what Parquet holds -------------------------------------------------------------------------


def arrow_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with columns Arrow can write: errors as their text (and class), embedding
    vectors as lists, images as PNG bytes, any other object as JSON text."""
    out = frame.copy()
    if "error" in out.columns:
        errors = out["error"].tolist()
        out["error"] = pd.Series([str(e) if e is not None else None for e in errors],
                                 dtype=object)
        out["error_type"] = pd.Series([type(e).__name__ if e is not None else None
                                       for e in errors], dtype=object)
    for name in out.columns:
        col = out[name]
        if col.dtype == object and not _plain(col):
            out[name] = pd.Series([_as_arrow(v) for v in col.tolist()], dtype=object)
    return out


def _plain(col: pd.Series) -> bool:
    kinds = {type(v) for v in col.tolist() if v is not None}
    return kinds <= {str} or kinds <= {int, float, bool} or kinds <= {bytes}


def _as_arrow(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value.tolist()
    data = getattr(value, "data", None)
    if isinstance(data, bytes) and hasattr(value, "mime"):  # a GeneratedImage
        return data
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    return orjson.dumps(value, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()


# -- the output folder --------------------------------------------------------------------------


class Folder:
    """``output_path`` on its filesystem (a local folder, or any URI pyarrow opens)."""

    def __init__(self, path: str):
        import pyarrow.fs as pafs

        self.fs, self.root = pafs.FileSystem.from_uri(_absolute(path))

    def parts(self) -> list[str]:
        """The result files in the folder now (never a file being written)."""
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        except FileNotFoundError:
            return []
        return sorted(i.base_name for i in infos
                      if i.type == pafs.FileType.File and i.base_name.startswith("part-")
                      and i.base_name.endswith(".parquet"))

    def keys_of(self, name: str) -> np.ndarray:
        import pyarrow.parquet as pq

        table = pq.read_table(f"{self.root}/{name}", columns=[KEY_COLUMN], filesystem=self.fs)
        return table.column(KEY_COLUMN).to_numpy(zero_copy_only=False).astype("S32")

    def keys_of_block(self, block: str) -> np.ndarray:
        names = [n for n in self.parts() if n.startswith(f"part-{block}-")]
        if not names:
            return np.empty(0, dtype="S32")
        return np.concatenate([self.keys_of(n) for n in names])

    def write(self, name: str, frame: pd.DataFrame, text: tuple[str, ...] = ()) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.fs.create_dir(self.root, recursive=True)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        for i, column in enumerate(table.schema):
            if column.name in text and pa.types.is_null(column.type):
                table = table.set_column(i, pa.field(column.name, pa.string()),
                                         table.column(i).cast(pa.string()))
        temporary = f"{self.root}/.{uuid.uuid4().hex}.parquet"
        pq.write_table(table, temporary, filesystem=self.fs)
        self.fs.move(temporary, f"{self.root}/{name}")


def _absolute(path: str) -> str:
    import os

    return path if "://" in path else os.path.abspath(path)


class KeySet:
    """The keys of the files that were in the folder when the run started: a sorted array,
    32 bytes a row, loaded on first use."""

    def __init__(self, folder: Folder, names: list[str]):
        self.folder = folder
        self.names = list(names)
        self._keys: np.ndarray | None = None

    def contains(self, keys: np.ndarray) -> np.ndarray:
        if self._keys is None:
            loaded = [self.folder.keys_of(n) for n in self.names]
            self._keys = np.sort(np.concatenate(loaded)) if loaded else np.empty(0, dtype="S32")
        known = self._keys
        if not len(known):
            return np.zeros(len(keys), dtype=bool)
        at = np.minimum(np.searchsorted(known, keys), len(known) - 1)
        return known[at] == keys
