"""Shared pieces of the recording stand-ins (see README.md): not any engine's code."""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace


def record(kind: str, kwargs: dict) -> None:
    path = os.environ.get("BM_STANDIN_RECORD")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"class": kind, "kwargs": kwargs}, default=_shown) + "\n")


def _shown(value):
    """A recorded argument that is itself a recording object: its class and arguments."""
    if isinstance(value, RecordingParams):
        return {"class": type(value).__name__, **value.kwargs}
    return str(value)


class RecordingParams:
    """Records its keyword arguments; holds them as attributes like the real classes."""

    engine = "stand-in"

    def __init__(self, **kwargs):
        record(f"{self.engine}.{type(self).__name__}", kwargs)
        self.kwargs = kwargs
        for k, v in kwargs.items():
            setattr(self, k, v)


class RecordingSamplingParams(RecordingParams):
    """Recorded as ``<engine>.SamplingParams``."""

    def __init__(self, **kwargs):
        record(f"{self.engine}.SamplingParams", kwargs)
        self.kwargs = kwargs
        for k, v in kwargs.items():
            setattr(self, k, v)


class CharTokenizer:
    """One token per character; a chat template that marks roles and honours enable_thinking."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, **kwargs):
        record("chat_template", {"messages": messages, **kwargs})
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        if add_generation_prompt:
            text += "<assistant>"
        if kwargs.get("enable_thinking"):
            text += "<think>"
        return text

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]


def behave(prompt: str) -> None:
    """The special prompts: CRASH ends the process, SLOW takes two seconds."""
    if "CRASH" in prompt:
        marker = os.environ.get("BM_STANDIN_CRASH_ONCE")
        if marker is None or not os.path.exists(marker):
            if marker is not None:
                open(marker, "w").close()
            os._exit(9)
    if "SLOW" in prompt:
        time.sleep(2.0)


def answer(prompt: str, max_tokens: int, sample: int = 0) -> tuple[str, list[int]]:
    """The echoed answer: the user's last words, or a reasoning trace when thinking is on;
    choice ``sample`` of several ends in ``#sample``."""
    if prompt.endswith("<think>"):
        text = "weighing it up</think>echo"
    elif "<user>" in prompt:
        text = "echo:" + prompt.split("<user>")[-1].split("<assistant>")[0]
    else:
        text = "echo:" + prompt
    if sample:
        text += f"#{sample}"
    text = text[:max_tokens]
    return text, [ord(c) for c in text]


def metrics() -> SimpleNamespace:
    return SimpleNamespace(arrival_time=100.0, first_scheduled_time=100.25, first_token_time=100.5,
                           time_in_queue=0.25)
