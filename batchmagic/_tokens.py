"""A tokenizer-free estimate of token counts, used before a run (TPM pacing, estimates).

Real tokenizers cannot be fetched at run time here (tiktoken downloads its encodings), so the
estimate is a documented rule of thumb that holds within about 25% for common BPE tokenizers:

* each CJK ideograph, kana or hangul syllable counts one token (BPE vocabularies of Qwen, GPT-4o,
  DeepSeek spend 0.7-1.3 tokens on one such character);
* other text counts one token per four characters, rounded up per whitespace-separated word, and
  one per punctuation mark (English averages about four characters per token);
* a chat message adds four tokens of framing, a chat request three more, an image 85.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

_CJK = re.compile(
    r"[\u1100-\u11ff\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u3400-\u4dbf"
    r"\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]"
)
_WORD = re.compile(r"[^\W_]+|[^\w\s]|_")


def estimate_text_tokens(text: str) -> int:
    if not text:
        return 0
    if len(text) > 2048 and text.isascii():  # many texts joined: counted over their bytes
        marks, _, words = _ascii_counts(text.encode("ascii"))
        return len(marks) + int(words.sum())
    cjk = len(_CJK.findall(text))
    if cjk:
        text = _CJK.sub(" ", text)
    n = cjk
    for word in _WORD.findall(text):
        n += (len(word) + 3) // 4
    return n


def estimate_texts_tokens(texts: list[str]) -> np.ndarray:
    """``estimate_text_tokens`` of each text, as one array: ASCII texts are counted together over
    their bytes (no Python object per word); others one by one."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    joined = "\n".join(texts)
    if not joined.isascii():
        return np.fromiter(map(estimate_text_tokens, texts), dtype=np.int64, count=len(texts))
    marks, firsts, words = _ascii_counts(joined.encode("ascii"))
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    starts = np.zeros(len(texts), dtype=np.int64)
    np.cumsum(lengths[:-1] + 1, out=starts[1:])  # a line break between texts: not in a word
    n = len(texts)
    out = np.bincount(np.searchsorted(starts, marks, "right") - 1, minlength=n)
    out += np.bincount(np.searchsorted(starts, firsts, "right") - 1, weights=words,
                       minlength=n).astype(np.int64)
    return out


#: per byte of ASCII: 1 a letter or digit (a word's), 2 whitespace as ``re``'s ``\s`` has it,
#: 0 anything else (a mark, ``_`` or a control character: one token each, as ``_WORD`` counts)
_ASCII_CLASS = np.array([1 if chr(c).isalnum() else 2 if re.match(r"\s", chr(c)) else 0
                         for c in range(128)], dtype=np.uint8)


def _ascii_counts(raw: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rule of ``estimate_text_tokens`` over ASCII bytes: (where the marks are, one token
    each; where each word of letters and digits starts; its tokens, ``(L + 3) // 4``)."""
    cls = _ASCII_CLASS[np.frombuffer(raw, dtype=np.uint8)]
    marks = np.flatnonzero(cls == 0)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], cls == 1, [0])).astype(np.int8)))
    firsts = edges[0::2]
    return marks, firsts, (edges[1::2] - firsts + 3) // 4


def estimate_prompt_tokens(kind: str, body: dict) -> int:
    """Estimated prompt tokens of one item body."""
    if kind == "chat":
        n = 3
        for message in body.get("messages") or ():
            n += 4 + _content_tokens(message.get("content") if isinstance(message, dict) else message)
        return n
    if kind == "embedding":
        return _content_tokens(body.get("input"))
    return _content_tokens(body.get("prompt"))


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return estimate_text_tokens(content)
    if isinstance(content, list):
        n = 0
        for part in content:
            if isinstance(part, dict):
                if part.get("type") in ("image_url", "input_image", "image"):
                    n += 85
                else:
                    n += estimate_text_tokens(str(part.get("text", "")))
            else:
                n += _content_tokens(part)
        return n
    return estimate_text_tokens(str(content))


def max_output_tokens(kind: str, params: dict) -> int:
    """The most output tokens one request may produce, for worst-case pacing and budgets."""
    if kind in ("embedding", "image"):
        return 0
    for name in ("max_completion_tokens", "max_tokens", "max_new_tokens"):
        value = params.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_OUTPUT


#: assumed when a chat or completion row sets no max_tokens (used for pacing, refunded after)
DEFAULT_MAX_OUTPUT = 512
