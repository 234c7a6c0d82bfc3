"""The Jupyter server extension behind the JupyterLab / Notebook 7 extension (``labextension/``).

It serves a small REST API under the server's base URL, behind Jupyter's own authentication
(``/batchmagic/api/...``), for the "Batch runs" sidebar and the status bar item:

* ``GET runs?path=FOLDER``: the runs and Batch API jobs of the journal of ``FOLDER`` (a folder
  relative to the server's root; its ``.batchmagic/`` journal, or the folder itself when it is a
  journal folder), read-only;
* ``GET kernel?kernel_id=ID&path=FOLDER``: the runs of that kernel's process still running;
* ``POST jobs/JOB_ID/refresh`` and ``POST jobs/JOB_ID/cancel`` (``?path=FOLDER``): the provider
  asked about one job (a job that has ended there is harvested into the journal), or told to stop
  it; ``GET jobs/JOB_ID/result.csv`` / ``result.parquet``: the job's result frame as a file.

The journal is the source of truth, so all of it works across kernel restarts and with no
kernel at all. Listing opens the journal read-only; only the job actions open it for writing.
Paths stay inside the server's root (no ``..``, no symlink out); no answer ever holds a key (keys
come from the server's environment, as a kernel's do).

``_paths`` confines paths to the root, ``_views`` turns journal records and frames into what the
front end shows or downloads, ``_handlers`` holds the routes.
"""

from __future__ import annotations

from typing import Any


def _load_jupyter_server_extension(server_app: Any) -> None:
    from ._handlers import setup_handlers

    setup_handlers(server_app)
    server_app.log.info("batchmagic: the Batch runs API is at %sbatchmagic/api/",
                        server_app.base_url)
