"""Shared helpers: an httpx MockTransport "server" and canned OpenAI-shaped answers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import batchmagic as bm

BASE_URL = "http://test/v1"


@pytest.fixture(autouse=True)
def _private_journal(tmp_path_factory, monkeypatch):
    """Every test gets its own empty journal (the default is .batchmagic/ in the working
    directory, which would make a second test run answer from the first run's cache). Child
    processes inherit it through the environment."""
    folder = tmp_path_factory.mktemp("journal")
    monkeypatch.setenv("BATCHMAGIC_JOURNAL_DIR", str(folder))
    return folder


def chat_answer(content: Any = "ok", *, finish_reason: str = "stop", prompt_tokens: int = 3,
                completion_tokens: int = 2, **message: Any) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, **message},
                     "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


def user_text(body: dict) -> Any:
    """The content of the last user message of a chat request body."""
    return [m for m in body["messages"] if m["role"] == "user"][-1]["content"]


class Server:
    """Wraps a handler ``fn(request, body) -> httpx.Response`` and records every request.

    The handler runs on batchmagic's loop thread, so the record is guarded by a lock.
    """

    def __init__(self, fn: Callable[[httpx.Request, Any], Any] | None = None):
        self.fn = fn or (lambda req, body: httpx.Response(200, json=chat_answer("ok")))
        self.requests: list[httpx.Request] = []
        self.bodies: list[Any] = []
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self.requests)

    def _record(self, request: httpx.Request) -> Any:
        body = json.loads(request.content) if request.content else None
        with self._lock:
            self.requests.append(request)
            self.bodies.append(body)
        return body

    def handler(self, request: httpx.Request):
        body = self._record(request)
        return self.fn(request, body)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)


class AsyncServer(Server):
    """Like ``Server``, but ``fn`` is a coroutine function (MockTransport awaits it)."""

    async def _ahandler(self, request: httpx.Request):
        body = self._record(request)
        return await self.fn(request, body)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._ahandler)


def echo_chat(request: httpx.Request, body: Any) -> httpx.Response:
    """Answers each chat request with "echo:" + its user text."""
    return httpx.Response(200, json=chat_answer("echo:" + str(user_text(body))))


def run(inputs: Any, prompt: str | None = None, *, server: Server, **kw: Any):
    """``bm.batch`` against the mock server, no progress bar, fast retries where it matters."""
    kw.setdefault("base_url", BASE_URL)
    kw.setdefault("model", "m")
    kw.setdefault("progress", False)
    return bm.batch(inputs, prompt, transport=server.transport, **kw)


@pytest.fixture
def server() -> Server:
    return Server(echo_chat)


def wait_until(condition: Callable[[], Any], what: str = "the condition",
               timeout: float = 120.0) -> Any:
    """Wait for ``condition()`` to be truthy and return its value, checked every 20 ms. The
    deadline only ends a test that would hang: on a loaded machine slow is not wrong."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value
