"""API keys are toxic data: held in a ``Secret`` that never shows its value.

``reveal()`` is called in exactly one place, where the Authorization header is built. ``redact``
scrubs the key (and any long piece of it) from text that came back from a provider before it goes
into an exception, a log or a frame.
"""

from __future__ import annotations


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str):
        if not isinstance(value, str) or not value.strip():
            raise ValueError("an API key must be a non-empty string")
        self._value = value.strip()

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
