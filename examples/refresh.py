"""Execute the cookbook notebooks and write them back with their outputs, so the committed outputs
are those of a real run (the test suite executes each notebook the same way and checks that the
committed outputs have the shape a fresh run gives).

    python examples/refresh.py                    # every notebook
    python examples/refresh.py embeddings.ipynb   # some

Each notebook runs in a fresh kernel in its own scratch copy of this folder, with a journal of
its own, so no answer comes from an earlier run and nothing the notebooks write (journals,
``out/``) lands here. It prints each notebook's wall time and the CPU time its kernel and that
kernel's children used (the figure that does not depend on what else the machine is doing).
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
CELL_TIMEOUT_S = 600  # a loaded machine can be several times slower than a quiet one
SKIP = shutil.ignore_patterns(".batchmagic", "out", "__pycache__", ".ipynb_checkpoints",
                              "*.ipynb")


def notebooks() -> list[str]:
    return sorted(p.name for p in HERE.glob("*.ipynb"))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def execute(name: str, scratch: Path, env: dict[str, str] | None = None
            ) -> tuple[nbformat.NotebookNode, float, float, Path]:
    """Run ``name`` in a copy of this folder under ``scratch``: the executed notebook, its wall
    and CPU seconds, and the folder it ran in (what it wrote is there)."""
    work = scratch / Path(name).stem
    shutil.copytree(HERE, work, ignore=SKIP)
    nb = nbformat.read(HERE / name, as_version=4)
    saved = dict(os.environ)
    # a journal of its own: an inherited BATCHMAGIC_JOURNAL_DIR would answer from older runs
    os.environ["BATCHMAGIC_JOURNAL_DIR"] = str(work / ".batchmagic")
    # shell cells (`!python ...`, `!batchmagic run ...`) find this environment's commands first,
    # as in an activated virtual environment
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = os.pathsep.join([bindir, os.environ.get("PATH", "")])
    os.environ.update(env or {})
    try:
        cpu0, t0 = _children_cpu(), time.monotonic()
        # no widget state: every panel is replaced by its static HTML when its run ends
        client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                store_widget_state=False,
                                resources={"metadata": {"path": str(work)}})
        client.execute()  # shuts the kernel down (and reaps it) before returning
        wall, cpu = time.monotonic() - t0, _children_cpu() - cpu0
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return nb, wall, cpu, work


def main(names: list[str]) -> int:
    names = names or notebooks()
    total_wall = total_cpu = 0.0
    with tempfile.TemporaryDirectory(prefix="cookbook-") as scratch:
        for name in names:
            nb, wall, cpu, _ = execute(name, Path(scratch))
            nb.metadata.pop("widgets", None)
            nbformat.write(nb, HERE / name)
            total_wall, total_cpu = total_wall + wall, total_cpu + cpu
            print(f"{name}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    print(f"all: {total_wall:.1f} s wall, {total_cpu:.1f} s CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main([Path(a).name for a in sys.argv[1:]]))
