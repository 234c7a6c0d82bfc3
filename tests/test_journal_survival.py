"""The journal never reports durability that is not there: a journal deleted or replaced during a
run is started again and written again; a damaged one (any part of it) is moved aside."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import wait_until

import batchmagic as bm
from batchmagic._journal import decode_result, open_journal
from batchmagic.simulator import SimulatorProcess

TEMPLATE_ROWS = [f"kept row {i} " + "words " * 40 for i in range(400)]


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess() as s:
        yield s


@pytest.fixture
def fresh(sim, caplog):
    sim.reset()
    sim.configure(faults={}, latency=0.0, api_key=None, rpm=None, tpm=None)
    caplog.set_level(logging.WARNING, logger="batchmagic")
    return sim


def options(sim, **kw):
    kw.setdefault("model", "sim-chat")
    kw.setdefault("progress", False)
    return dict(provider="simulator", base_url=sim.base_url, **kw)


def kept_answers(folder: Path) -> set:
    """The answers in the journal file now at ``folder``, read the way a new process would."""
    conn = sqlite3.connect(f"file:{folder / 'journal.sqlite3'}?mode=ro", uri=True)
    try:  # answers one per row (as the Batch API writes them), and many per answers row
        lines = [r for (r,) in conn.execute("SELECT result FROM rows WHERE status = 'ok'")]
        for (outputs,) in conn.execute("SELECT outputs FROM answers"):
            lines += outputs.split("\n")
    finally:
        conn.close()
    return {decode_result(line)[0] for line in lines}


def echoes(rows: list[str]) -> set:
    return {f"echo: {text}" for text in rows}


# -- deleted or replaced during a run ---------------------------------------------------------------


def _start_then_remove(sim, folder: Path, rows, remove) -> bm.BatchTask:
    """Start a run, let some rows finish, then take its journal away with ``remove(folder)``."""
    sim.configure(latency=0.02)
    task = bm.submit(rows, **options(sim, cache=str(folder), concurrency=4))
    wait_until(lambda: task.finished_count() >= 30)
    task.pause()  # the rest of the run surely comes after the removal
    remove(folder)
    task.resume()
    return task


def _remove_folder(folder: Path) -> None:
    trash = folder.with_name("trash")
    os.rename(folder, trash)  # at once, as the run sees it (rmtree goes file by file)
    shutil.rmtree(trash)


def _remove_file(folder: Path) -> None:
    (folder / "journal.sqlite3").unlink()


def _replace_file(folder: Path) -> None:
    other = folder.with_name("other")
    conn = sqlite3.connect(other)  # an unrelated (valid, empty) database copied over the journal
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    os.replace(other, folder / "journal.sqlite3")


@pytest.mark.parametrize("remove", [_remove_folder, _remove_file, _replace_file],
                         ids=["folder", "file", "replaced"])
def test_journal_removed_during_a_run_keeps_every_answer(fresh, tmp_path, caplog, remove):
    rows = [f"gone {remove.__name__} {i}" for i in range(200)]
    folder = tmp_path / ".batchmagic"
    task = _start_then_remove(fresh, folder, rows, remove)
    out = task.wait(timeout=120)
    assert out["error"].isna().all()
    assert out.attrs["batchmagic"]["state"] == "done"
    # every answer is in the file now at the path, the ones from before the removal included
    assert kept_answers(folder) == echoes(rows)
    paid = len(fresh.calls())
    assert paid == len(rows)
    again = bm.batch(rows, **options(fresh, cache=str(folder)))
    assert len(fresh.calls()) == paid  # no row the first run reported done is paid again
    assert again.attrs["batchmagic"]["cached"] == len(rows)
    assert again["output"].tolist() == out["output"].tolist()
    assert "deleted or replaced" in caplog.text  # and the user was told


def test_journal_that_cannot_be_started_again_stops_the_run(fresh, tmp_path):
    def block(folder: Path) -> None:
        _remove_folder(folder)
        folder.write_text("a file where the journal folder was")  # nothing can be made there

    rows = [f"blocked {i}" for i in range(200)]
    task = _start_then_remove(fresh, tmp_path / ".batchmagic", rows, block)
    out = task.wait(timeout=120)
    facts = out.attrs["batchmagic"]
    assert facts["state"] == "aborted"
    assert "journal was deleted or replaced" in facts["stopped_by"]
    assert "cannot be started" in facts["stopped_by"]
    assert len(out) == len(rows)
    assert any(isinstance(e, bm.NotSentError) for e in out["error"])
    assert len(fresh.calls()) < len(rows)  # it stopped buying answers it could not keep


def test_changing_directory_during_a_run_does_not_move_its_journal(fresh, tmp_path, caplog,
                                                                    monkeypatch):
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(start)
    rows = [f"cd {i}" for i in range(200)]
    task = _start_then_remove(fresh, Path("journal"), rows, lambda folder: os.chdir(elsewhere))
    assert task.wait(timeout=120)["error"].isna().all()
    assert "deleted or replaced" not in caplog.text
    assert kept_answers(start / "journal") == echoes(rows)
    assert not (elsewhere / "journal").exists()


# -- damaged --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(sim, tmp_path_factory) -> Path:
    """A checkpointed journal holding the answers to TEMPLATE_ROWS (about 120 pages). One
    request at a time: each answer is its own write, so the answers table has many pages."""
    folder = tmp_path_factory.mktemp("template")
    sim.reset()
    bm.batch(TEMPLATE_ROWS, **options(sim, cache=str(folder), concurrency=1))
    conn = sqlite3.connect(folder / "journal.sqlite3")
    assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone() == (0, 0, 0)
    conn.close()
    return folder / "journal.sqlite3"


def _pages(path: Path, page_type: int) -> list[int]:
    """Numbers of the non-root pages of a b-tree page type (0x0d table leaf, 0x0a index leaf):
    with one big table and its key index, they are that table's or that index's pages."""
    data = path.read_bytes()
    size = int.from_bytes(data[16:18], "big")
    conn = sqlite3.connect(path)
    roots = {n for (n,) in conn.execute("SELECT rootpage FROM sqlite_master WHERE rootpage > 0")}
    conn.close()
    return [n for n in range(2, len(data) // size + 1)
            if data[(n - 1) * size] == page_type and n not in roots]


def _overwrite_page(path: Path, page: int) -> None:
    size = int.from_bytes(path.read_bytes()[16:18], "big")
    with open(path, "r+b") as fh:
        fh.seek((page - 1) * size)
        fh.write(b"\xa5" * size)


def _damage_header(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.write(b"\x00garbage" * 12)


def _damage_table_page(path: Path) -> None:
    pages = _pages(path, 0x0D)
    assert len(pages) >= 10
    _overwrite_page(path, pages[len(pages) // 2])


def _damage_index_page(path: Path) -> None:
    pages = _pages(path, 0x0A)
    assert len(pages) >= 2
    _overwrite_page(path, pages[len(pages) // 2])


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size * 6 // 10)


def _foreign_wal(path: Path) -> None:
    """Put beside the journal the WAL of another journal (a different history): SQLite cannot
    tell, and lays that journal's pages over this one's."""
    other = path.with_name("other.sqlite3")
    conn = sqlite3.connect(other, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE rows (key TEXT PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO rows VALUES (?, ?)",
                     [(f"{i:064x}", "x" * 500) for i in range(600)])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.executemany("UPDATE rows SET v = ? WHERE key = ?",
                     [("y" * 300, f"{i:064x}") for i in range(0, 600, 7)])
    shutil.copyfile(Path(str(other) + "-wal"), Path(str(path) + "-wal"))
    conn.close()
    other.unlink()


@pytest.mark.parametrize("damage", [_damage_header, _damage_table_page, _damage_index_page,
                                    _truncate, _foreign_wal],
                         ids=["header", "table-page", "index-page", "truncated", "foreign-wal"])
def test_damaged_journal_is_moved_aside_and_a_new_one_started(fresh, tmp_path, caplog, template,
                                                              damage):
    folder = tmp_path / "damaged"
    folder.mkdir()
    shutil.copyfile(template, folder / "journal.sqlite3")
    damage(folder / "journal.sqlite3")
    out = bm.batch(TEMPLATE_ROWS, **options(fresh, cache=str(folder)))
    assert out["error"].isna().all()
    assert out["output"].tolist() == [f"echo: {t}" for t in TEMPLATE_ROWS]
    assert len(fresh.calls()) == len(TEMPLATE_ROWS)  # the damaged file's answers are asked again
    assert len(list(folder.glob("journal.corrupt-*.sqlite3"))) == 1
    assert "is damaged" in caplog.text
    if damage is _foreign_wal:  # the WAL goes aside with its file
        assert len(list(folder.glob("journal.corrupt-*.sqlite3-wal"))) == 1
    assert kept_answers(folder) == echoes(TEMPLATE_ROWS)  # the new journal holds them all


def test_damage_found_later_by_a_read_moves_the_journal_aside(fresh, tmp_path, caplog):
    """Damage SQLite meets only when it reads the page (after the check at open): the run that
    reads it moves the journal aside and asks again, instead of raising a raw sqlite3 error."""
    folder = tmp_path / "later"
    rows = TEMPLATE_ROWS[:300]
    bm.batch(rows, **options(fresh, cache=str(folder), concurrency=1))  # many pages, as above
    path = folder / "journal.sqlite3"
    other = sqlite3.connect(path)
    assert other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone() == (0, 0, 0)
    _damage_table_page(path)
    # a write by another connection makes the open journal drop its page cache and read again
    other.execute("INSERT INTO meta VALUES ('touched', '1')")
    other.commit()
    other.close()
    journal = open_journal(folder)
    out = bm.batch(rows, **options(fresh, cache=str(folder)))
    assert out["error"].isna().all()
    assert out["output"].tolist() == [f"echo: {t}" for t in rows]
    assert len(fresh.calls()) == 2 * len(rows)
    assert "is damaged" in caplog.text
    assert list(folder.glob("journal.corrupt-*.sqlite3"))
    assert open_journal(folder) is journal and journal.generation == 1  # same object, new file
    assert kept_answers(folder) == echoes(rows)
