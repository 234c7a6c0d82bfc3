"""The routes of the Batch runs API, under the server's base URL, behind Jupyter's own
authentication and authorization (the ``contents`` resource: these read and change files
under the root)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

import tornado
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado.web import HTTPError

from .._errors import BatchError, ConfigError
from . import _views
from ._paths import folder_in_root, journal_folder, relative

JOB_ID = r"(?P<job_id>[A-Za-z0-9_-]{1,64})"
MAX_LIMIT = 500


class _JournalHandler(APIHandler):
    auth_resource = "contents"

    @property
    def root_dir(self) -> str:
        return self.contents_manager.root_dir

    def journal(self):
        """The folder asked about (``?path=``) and its journal folder, both inside the root."""
        folder = folder_in_root(self.root_dir, self.get_query_argument("path", ""))
        return folder, journal_folder(self.root_dir, folder)

    async def blocking(self, work, *args: Any) -> Any:
        """``work(*args)`` in a worker thread; batchmagic's errors as HTTP errors with their
        message (which never holds a key), anything else by its class name only."""
        try:
            return await asyncio.to_thread(work, *args)
        except ConfigError as exc:
            raise HTTPError(400, str(exc)) from None
        except BatchError as exc:
            raise HTTPError(502, str(exc)) from None
        except sqlite3.Error as exc:
            raise HTTPError(503, f"the journal cannot be read now ({exc})") from None
        except TimeoutError:
            raise HTTPError(504, "the provider did not answer in time") from None

    def write_json(self, data: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


class RunsHandler(_JournalHandler):
    """``GET runs?path=FOLDER&limit=N``: the folder's journal, its runs and jobs."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        folder, journal = self.journal()
        limit = _limit(self.get_query_argument("limit", "50"))
        view = await self.blocking(_views.overview, journal, limit)
        view["folder"] = relative(self.root_dir, folder)
        view["journal"] = relative(self.root_dir, journal)
        self.write_json(view)


class KernelHandler(_JournalHandler):
    """``GET kernel?kernel_id=ID&path=FOLDER``: that kernel's runs still running."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        kernel_id = self.get_query_argument("kernel_id", "")
        if kernel_id not in self.kernel_manager:
            raise HTTPError(404, "no such kernel")
        provisioner = getattr(self.kernel_manager.get_kernel(kernel_id), "provisioner", None)
        pid = getattr(provisioner, "pid", None)  # None for a kernel on another machine
        _, journal = self.journal()
        view = await self.blocking(_views.overview, journal, 50)
        self.write_json(_views.kernel_runs(view, pid))


class JobActionHandler(_JournalHandler):
    """``POST jobs/ID/refresh`` and ``POST jobs/ID/cancel`` (``?path=FOLDER``)."""

    @tornado.web.authenticated
    @authorized
    async def post(self, job_id: str, action: str) -> None:
        _, journal = self.journal()
        work = _views.refresh if action == "refresh" else _views.cancel
        self.write_json(await self.blocking(work, journal, job_id))


class JobResultHandler(_JournalHandler):
    """``GET jobs/ID/result.csv`` or ``result.parquet`` (``?path=FOLDER``)."""

    @tornado.web.authenticated
    @authorized
    async def get(self, job_id: str, fmt: str) -> None:
        _, journal = self.journal()
        data = await self.blocking(_views.result_file, journal, job_id, fmt)
        kind = "text/csv; charset=utf-8" if fmt == "csv" else "application/vnd.apache.parquet"
        self.set_header("Content-Type", kind)
        self.set_header("Content-Disposition", f'attachment; filename="job-{job_id}.{fmt}"')
        self.finish(data)


def _limit(text: str) -> int:
    try:
        return max(1, min(MAX_LIMIT, int(text)))
    except ValueError:
        raise HTTPError(400, "limit must be a whole number") from None


def setup_handlers(server_app: Any) -> None:
    web_app = server_app.web_app
    api = url_path_join(web_app.settings["base_url"], "batchmagic", "api")
    web_app.add_handlers(".*$", [
        (url_path_join(api, "runs"), RunsHandler),
        (url_path_join(api, "kernel"), KernelHandler),
        (url_path_join(api, "jobs", JOB_ID, r"(?P<action>refresh|cancel)"), JobActionHandler),
        (url_path_join(api, "jobs", JOB_ID, r"result\.(?P<fmt>csv|parquet)"), JobResultHandler),
    ])
