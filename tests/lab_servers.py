"""Real Jupyter servers for the extension's tests: JupyterLab, Notebook 7 or a bare Jupyter
server, on 127.0.0.1 with a random port and a token, isolated in a temporary folder (config,
data, runtime, settings, workspaces: nothing of the user's leaks in).

The batchmagic server extension is enabled the way the package enables it (its
``jupyter-config`` file in the config folder), and the lab extension is the one built in this
tree (``batchmagic/labextension``), linked into the data folder, so the tests run the code under
test whatever an earlier install put in the environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILT = ROOT / "batchmagic" / "labextension"
SERVER_CONFIG = ROOT / "jupyter-config" / "server-config" / "batchmagic.json"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
APPS = {"lab": "jupyterlab", "notebook": "notebook", "server": "jupyter_server"}


def built() -> bool:
    """Whether this tree's lab extension is built (the first install command builds it)."""
    return (BUILT / "package.json").is_file() and (BUILT / "static").is_dir()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    token: str
    root: Path
    log_path: Path
    proc: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def request(self, path: str, *, method: str = "GET", token: bool = True,
                body: bytes | None = None) -> tuple[int, bytes]:
        """``(status, body)`` of a request to the server (``path`` after the base URL)."""
        if body is None and method != "GET":
            body = b""
        req = urllib.request.Request(f"{self.url}/{path.lstrip('/')}", method=method, data=body)
        if token:
            req.add_header("Authorization", f"token {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def json(self, path: str, **kwargs) -> dict:
        status, body = self.request(path, **kwargs)
        assert status == 200, (status, body[:500], self.log())
        return json.loads(body)


def _isolate(tmp: Path, env: dict) -> None:
    for var, name in {"JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data",
                      "JUPYTER_RUNTIME_DIR": "runtime", "JUPYTERLAB_SETTINGS_DIR": "settings",
                      "JUPYTERLAB_WORKSPACES_DIR": "workspaces", "IPYTHONDIR": "ipython"}.items():
        (tmp / name).mkdir(parents=True, exist_ok=True)
        env[var] = str(tmp / name)
    env.pop("BATCHMAGIC_JOURNAL_DIR", None)  # kernels use their folder's .batchmagic/
    # the server extension, enabled as the package's jupyter-config file enables it
    conf = tmp / "config" / "jupyter_server_config.d"
    conf.mkdir(exist_ok=True)
    shutil.copy(SERVER_CONFIG, conf / "batchmagic.json")
    # this tree's build of the lab extension
    exts = tmp / "data" / "labextensions"
    exts.mkdir(exist_ok=True)
    if built():
        (exts / "batchmagic").symlink_to(BUILT, target_is_directory=True)
    # this interpreter as the notebooks' kernel, whatever else is installed
    spec = tmp / "data" / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    settings = tmp / "settings" / "@jupyterlab"
    # no news or update toasts over the notebook; every cell stays in the page
    for plugin, name, value in (
            ("apputils-extension", "notification", {"fetchNews": "false",
                                                    "checkForUpdates": False}),
            ("notebook-extension", "tracker", {"windowingMode": "none"})):
        (settings / plugin).mkdir(parents=True, exist_ok=True)
        (settings / plugin / f"{name}.jupyterlab-settings").write_text(json.dumps(value))


@contextlib.contextmanager
def jupyter(app: str, tmp: Path, *, env: dict | None = None, args: tuple[str, ...] = (),
            startup_timeout: float = 120.0) -> Iterator[Server]:
    """A running ``app`` ("lab", "notebook" or "server") with its root at ``tmp/root``;
    ``args`` go to its command line."""
    full = dict(os.environ, **(env or {}))
    _isolate(tmp, full)
    root = tmp / "root"
    root.mkdir(exist_ok=True)
    token = secrets.token_hex(16)
    port = _free_port()
    cmd = [sys.executable, "-m", APPS[app], "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", "--ServerApp.password=",
           f"--ServerApp.root_dir={root}", "--ServerApp.terminals_enabled=False"]
    if app == "lab":
        cmd.append("--LabApp.extension_manager=readonly")
    cmd.extend(args)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI runs as root
    log_path = tmp / f"{app}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full, cwd=root)
    server = Server(f"http://127.0.0.1:{port}", token, root, log_path, proc)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{app} exited with {proc.returncode}:\n{server.log()}")
            try:
                urllib.request.urlopen(f"{server.url}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{app} did not answer within {startup_timeout:g} s:\n"
                                         f"{server.log()}") from None
                time.sleep(0.3)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
