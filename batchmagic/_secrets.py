"""API keys are toxic data: held in a ``Secret`` that never shows its value.

``reveal()`` is called in exactly one place, where the Authorization header is built. ``redact``
scrubs the key (and any long piece of it) from text that came back from a provider before it goes
into an exception, a log or a frame.

A key is checked where it is first accepted (``api_key=``, an environment variable, a prompt): a
line break, NUL or other control character cannot go in an HTTP header, and the HTTP client's
complaint about it would quote the key. ``check_headers`` does the same for ``headers=``. Neither
error shows a character of the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._errors import ConfigError


def _unsendable(value: str) -> str | None:
    """Why ``value`` cannot be an HTTP header value, or None. Says nothing about the value."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return "holds a line break, NUL or other control character"
    if not value.isascii():
        return "holds a non-ASCII character (often a quote or dash changed when it was copied)"
    return None


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str, name: str = "the API key"):
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, not {type(value).__name__} "
                              "(its value is not shown)")
        value = value.strip()
        if not value:
            raise ConfigError(f"{name} is empty")
        problem = _unsendable(value)
        if problem:
            raise ConfigError(f"{name} {problem}, which an HTTP header cannot carry: copy the key "
                              "again (its characters are not shown)")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        if not text:
            return text
        value = self._value
        if value in text:
            text = text.replace(value, "***")
        # providers sometimes echo part of a key ("sk-abc...xyz"): scrub any 12+ char piece
        if len(value) >= 16:
            for size in (len(value) // 2, 12):
                for start in range(0, len(value) - size + 1):
                    piece = value[start:start + size]
                    if piece in text:
                        text = text.replace(piece, "***")
        return text

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("an API key cannot be pickled")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


def check_headers(headers: Any) -> None:
    """Refuse ``headers=`` that the HTTP client would reject per row (quoting the value).

    Header values often hold credentials (``x-api-key``), so no value is ever shown; a name is
    shown only when it is itself sendable.
    """
    if headers is None:
        return
    if not isinstance(headers, Mapping):
        raise ConfigError(f"headers must be a dict of name -> value strings, "
                          f"not {type(headers).__name__}")
    for name, value in headers.items():
        if not isinstance(name, str) or not _is_token(name):
            raise ConfigError("headers= has a name that is not a valid HTTP header name "
                              "(letters, digits and -_.!#$%&'*+^`|~ only)")
        if not isinstance(value, str):
            raise ConfigError(f"header {name!r} must have a string value, not "
                              f"{type(value).__name__} (its value is not shown)")
        problem = _unsendable(value)
        if problem:
            raise ConfigError(f"the value of header {name!r} {problem}, which an HTTP header "
                              "cannot carry (its characters are not shown)")


_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                         "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _is_token(name: str) -> bool:
    """RFC 9110 token: the characters a header name may use, at least one."""
    return bool(name) and all(ch in _TOKEN_CHARS for ch in name)
