"""The wheel carries the JupyterLab extension prebuilt and enables the server extension: built
from this tree, installed (without dependencies) under a fresh prefix, Jupyter's own commands
find both enabled and OK there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from lab_servers import ROOT, built

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not built(), reason="the lab extension is not built: "
                       "pip install -e . (or jlpm build in labextension/) builds it"),
]


def _run(*cmd: str, env: dict | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    assert done.returncode == 0, (cmd, done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout + done.stderr


def test_the_wheel_ships_the_extensions_and_jupyter_finds_them(tmp_path):
    # the build backend of this environment (no isolation: nothing is downloaded); the hook
    # reuses the extension already built in the tree
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT))
    [wheel] = (tmp_path / "dist").glob("batchmagic-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    data = "batchmagic-0.1.0.data/data/"
    ext = f"{data}share/jupyter/labextensions/batchmagic/"
    assert f"{ext}package.json" in names and f"{ext}install.json" in names
    assert f"{ext}static/style.js" in names
    assert any(n.startswith(f"{ext}static/remoteEntry.") for n in names)
    assert f"{data}etc/jupyter/jupyter_server_config.d/batchmagic.json" in names
    assert not any("node_modules" in n or n.startswith("labextension/") for n in names)

    # a fresh environment that sees this one's packages (JupyterLab, ...) behind its own
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = str(venv / "bin" / "python")
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                     env={}).strip())
    (site / "_outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: without it pip uninstalls this environment's own batchmagic (the
    # editable install the rest of the suite runs) before installing under the prefix
    _run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q",
         "--ignore-installed", "--prefix", str(venv), str(wheel))
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith("JUPYTER")}
    env.update(JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_DATA_DIR=str(tmp_path / "d"))
    # Jupyter's commands run by that environment's Python (`jupyter X` would find this one's)
    def jupyter(module: str, *args: str) -> str:
        code = f"import sys; from {module} import main; sys.argv[1:] = {list(args)!r}; main()"
        return _run(python, "-c", code, env=env, cwd=tmp_path)

    labext = jupyter("jupyterlab.labextensions", "list")
    assert str(venv / "share" / "jupyter" / "labextensions") in labext, labext
    assert re.search(r"batchmagic v0\.1\.0 (\x1b\[32m)?enabled(\x1b\[0m)? (\x1b\[32m)?OK", labext), \
        labext
    server = jupyter("jupyter_server.extension.serverextension", "list")
    assert f"Config dir: {venv / 'etc' / 'jupyter'}" in server, server
    assert re.search(r"batchmagic (\x1b\[32m)?enabled", server), server
    assert re.search(r"batchmagic 0\.1\.0 (\x1b\[32m)?OK", server), server
    # the package Jupyter loaded is the wheel's, not this tree's
    where = _run(python, "-c", "import batchmagic; print(batchmagic.__file__)", env=env,
                 cwd=tmp_path)
    assert where.strip().startswith(str(site)), where
    # and this environment still has its own
    mine = _run(sys.executable, "-c", "import batchmagic; print(batchmagic.__file__)",
                cwd=tmp_path)
    assert mine.strip().startswith(str(ROOT)), mine
