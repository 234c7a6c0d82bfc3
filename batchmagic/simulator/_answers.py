"""Deterministic outputs of the simulator: token counts, replies, embeddings and PNG images.

Everything here is a pure function of its inputs so that a client test can predict what the
simulator answers (``expected reply == "echo: " + prompt``, ``image colour == image_color(p)``).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import struct
import sys
import zlib
from array import array
from functools import lru_cache
from typing import Any

# CJK ideographs, kana and hangul: one token per character (BPE vocabularies of GPT-4o, Qwen
# and DeepSeek spend about one token on each such character).
_CJK_RANGES = (
    "\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f"
)
# One alternative per token class; ``\w`` also matches CJK, so words exclude those ranges.
_TOKEN_RE = re.compile(rf"[{_CJK_RANGES}]|[^\W{_CJK_RANGES}]+|[^\w\s]")

#: tokens charged for each image part of a chat message (OpenAI's "low detail" price)
IMAGE_PART_TOKENS = 85
#: framing tokens per chat message and per chat request
MESSAGE_OVERHEAD_TOKENS = 3
REQUEST_OVERHEAD_TOKENS = 3


def count_tokens(text: str) -> int:
    """A deterministic, tokenizer-free estimate of the BPE token count of ``text``.

    * each CJK ideograph, hiragana, katakana or hangul character is one token;
    * other text is split with the regex ``\\w+|[^\\w\\s]``: each word counts
      ``ceil(len(word) / 4)`` tokens and each punctuation character one token;
    * whitespace is free.

    The simulator uses it for ``usage`` and for TPM limits; chat requests add
    3 tokens per message plus 3 per request (see :func:`chat_prompt_tokens`).
    """
    if not text:
        return 0
    n = 0
    for word in _TOKEN_RE.findall(text):
        n += (len(word) + 3) >> 2
    return n


def truncate_tokens(text: str, max_tokens: int) -> tuple[str, int, bool]:
    """Cut ``text`` after ``max_tokens`` tokens (as counted by :func:`count_tokens`).

    Returns ``(text, tokens, truncated)``; a word is cut inside at a 4-character boundary,
    so the kept prefix counts exactly ``max_tokens`` tokens.
    """
    n = 0
    kept = 0  # end of the last whole token kept: no trailing whitespace after a cut
    for m in _TOKEN_RE.finditer(text):
        start, end = m.span()
        size = (end - start + 3) >> 2
        if n + size > max_tokens:
            cut = start + (max_tokens - n) * 4 if max_tokens > n else kept
            return text[:cut], max_tokens, True
        n += size
        kept = end
    return text, n, False


def content_text(content: Any) -> tuple[str, int]:
    """The text of a chat message ``content`` and its number of image parts.

    Text parts of a list content are joined with a single space.
    """
    if content is None:
        return "", 0
    if isinstance(content, str):
        return content, 0
    if isinstance(content, list):
        texts: list[str] = []
        images = 0
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if kind in ("image_url", "input_image", "image"):
                    images += 1
                else:
                    text = part.get("text")
                    if isinstance(text, str):
                        texts.append(text)
        return " ".join(texts), images
    return str(content), 0


# Pseudo-words of at most 4 characters: each is exactly one token, so "length:N" gives N tokens.
_VOCAB = (
    "the of and to in is for on it be as at by we or an so if do go up my me no he us "
    "data row cell text word code test fast slow load send call save read list file node "
    "blue red gold gray mint rose sand teal lime navy cyan pink iron wood salt rain snow "
    "star moon sun sky sea map key box cup pen ink hat bag car bus van jet ship boat"
).split()


def reply_text(mode: str, prompt: str) -> str:
    """The full (untruncated) answer to ``prompt`` under the configured reply mode.

    * ``"echo"``: ``"echo: " + prompt``;
    * ``"fixed:<text>"``: ``<text>``;
    * ``"length:<N>"``: N one-token pseudo-words, seeded by sha256 of the prompt.
    """
    if mode == "echo":
        return "echo: " + prompt
    if mode.startswith("fixed:"):
        return mode[6:]
    if mode.startswith("length:"):
        return _pseudo_words(int(mode[7:]), prompt)
    raise ValueError(f"unknown reply mode {mode!r}")


def sample_text(mode: str, prompt: str, index: int) -> str:
    """The answer of choice ``index`` when a request asks for several (``n``).

    Choice 0 is :func:`reply_text`; the others differ from it and from each other:
    ``"echo <i>: " + prompt``, ``"<text> (<i>)"``, or pseudo-words seeded by the prompt and ``i``.
    """
    if index == 0:
        return reply_text(mode, prompt)
    if mode == "echo":
        return f"echo {index}: {prompt}"
    if mode.startswith("fixed:"):
        return f"{mode[6:]} ({index})"
    return _pseudo_words(int(mode[7:]), f"{prompt}\x00{index}")


def split_tokens(text: str) -> list[str]:
    """``text`` cut into the tokens :func:`count_tokens` counts (words in 4-character pieces),
    each carrying the whitespace before it, so ``"".join(split_tokens(t)) == t``.

    Stream chunks and logprobs are one entry per token. Text with no token at all is one piece.
    """
    pieces: list[str] = []
    pos = 0
    for m in _TOKEN_RE.finditer(text):
        start, end = m.span()
        for cut in range(start, end, 4):
            pieces.append(text[pos:min(cut + 4, end)])
            pos = min(cut + 4, end)
    if pos < len(text):  # trailing whitespace rides on the last token
        if pieces:
            pieces[-1] += text[pos:]
        else:
            pieces.append(text)
    return pieces


@lru_cache(maxsize=4096)
def _pseudo_words(n: int, prompt: str) -> str:
    seed = int.from_bytes(hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()[:8], "big")
    return " ".join(random.Random(seed).choices(_VOCAB, k=n))


def embedding_vector(text: str, dim: int) -> list[float]:
    """Unit-normalised, float32-exact embedding of ``text``: a pure function of (text, dim).

    The components come from SHAKE-256 of the UTF-8 text read as int16 values; they are rounded
    to float32 so the JSON floats and the base64 float32 encoding carry identical values.
    """
    raw = hashlib.shake_256(text.encode("utf-8", "surrogatepass")).digest(2 * dim)
    ints = array("h")
    ints.frombytes(raw)
    norm = math.sqrt(sum(x * x for x in ints))
    if norm == 0.0:
        vec = [0.0] * dim
        vec[0] = 1.0
        return vec
    return array("f", [x / norm for x in ints]).tolist()


def embedding_b64(vec: list[float]) -> bytes:
    """Little-endian float32 bytes of ``vec`` (what ``encoding_format="base64"`` encodes)."""
    arr = array("f", vec)
    if sys.byteorder != "little":
        arr.byteswap()
    return arr.tobytes()


def image_color(prompt: str) -> tuple[int, int, int]:
    """The solid RGB colour of every image generated for ``prompt`` (first 3 bytes of sha256)."""
    d = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()
    return d[0], d[1], d[2]


@lru_cache(maxsize=512)
def solid_png(rgb: tuple[int, int, int], width: int, height: int) -> bytes:
    """A valid RGB PNG of one solid colour, built by hand (no Pillow)."""
    row = b"\x00" + bytes(rgb) * width  # filter type 0 (None) then the pixels
    raw = row * height

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
