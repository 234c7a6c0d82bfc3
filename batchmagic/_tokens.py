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

_CJK = re.compile(
    r"[\u1100-\u11ff\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u3400-\u4dbf"
    r"\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]"
)
_WORD = re.compile(r"[^\W_]+|[^\w\s]|_")


def estimate_text_tokens(text: str) -> int:
    if not text:
        return 0
    cjk = len(_CJK.findall(text))
    if cjk:
        text = _CJK.sub(" ", text)
    n = cjk
    for word in _WORD.findall(text):
        n += (len(word) + 3) // 4
    return n


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
