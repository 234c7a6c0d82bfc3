"""Paths the REST API is given, confined to the Jupyter server's root.

A path comes in as the front end names files: relative to the root, ``/``-separated. It is
refused when absolute, when a part is ``..``, or when it resolves (through a symlink anywhere on
the way) outside the root; the journal file and its side files are checked the same way.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from tornado.web import HTTPError

from .._journal import DEFAULT_DIR

JOURNAL_FILE = "journal.sqlite3"


def inside(root: Path, path: Path) -> bool:
    """Whether ``path`` resolves to ``root`` or below it (``root`` already resolved)."""
    return path.resolve() == root or path.resolve().is_relative_to(root)


def folder_in_root(root_dir: str, api_path: str) -> Path:
    """The folder ``api_path`` names, resolved; 403 for one outside the root, 404 for none."""
    root = Path(root_dir).resolve()
    text = api_path.strip()
    rel = PurePosixPath(text or ".")
    if rel.is_absolute() or ".." in rel.parts or "\\" in text or "\0" in text:
        raise HTTPError(403, "the folder must be a path inside the server's root (relative, "
                             "no '..')")
    folder = root.joinpath(*rel.parts)
    if not inside(root, folder):
        raise HTTPError(403, "the folder is outside the server's root (a symlink leads out)")
    if not folder.is_dir():
        raise HTTPError(404, f"no folder {text!r} under the server's root")
    return folder.resolve()


def journal_folder(root_dir: str, folder: Path) -> Path:
    """The journal folder a kernel started in ``folder`` uses: ``folder`` itself when it holds a
    journal, else ``BATCHMAGIC_JOURNAL_DIR`` (relative to ``folder``) or ``.batchmagic/``.
    403 when it, its file or the file's side files lead outside the root."""
    root = Path(root_dir).resolve()
    if (folder / JOURNAL_FILE).is_file():
        found = folder
    else:
        found = folder / (os.environ.get("BATCHMAGIC_JOURNAL_DIR") or DEFAULT_DIR)
    for path in (found, *(found / f"{JOURNAL_FILE}{side}" for side in ("", "-wal", "-shm"))):
        if not inside(root, path):
            raise HTTPError(403, "the journal is outside the server's root")
    return found


def relative(root_dir: str, path: Path) -> str:
    """``path`` as the front end names it: relative to the root, ``/``-separated."""
    rel = Path(os.path.relpath(path, Path(root_dir).resolve()))
    return "" if str(rel) == "." else rel.as_posix()
