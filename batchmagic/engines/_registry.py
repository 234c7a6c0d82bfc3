"""Every offline engine batchmagic can run, one record each.

A record holds all the facts about one engine: the names ``engine=`` accepts for it, the kinds it
serves, the load options and generation parameters it takes, the library it needs and how to
install it, where it runs, and the ``Engine`` class that runs it (imported only when used, so
reading the table loads no engine). Every lookup goes through ``find``; ``ENGINES`` lists every
accepted name.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from .._errors import ConfigError
from . import _models

__all__ = ["ENGINES", "EngineInfo", "REGISTRY", "find"]

#: the generation parameters every engine takes (OpenAI names, after ``_params``'s aliases):
#: ``response_format`` constrains decoding and ``n`` asks for several choices on every engine
COMMON_PARAMS = frozenset({"temperature", "top_p", "top_k", "min_p", "max_tokens", "stop", "seed",
                           "response_format", "n"})


@dataclass(frozen=True)
class EngineInfo:
    name: str  # the canonical name: "llama.cpp"
    aliases: tuple[str, ...]  # other names engine= accepts for it (matched case-insensitively)
    kinds: tuple[str, ...]  # the kinds it serves
    library: str  # the module it imports, checked before anything loads
    install: str  # how to get that module
    in_process: bool  # False: a subprocess batchmagic owns, maybe in another Python environment
    # engine_options it understands; None: handed to the engine's own constructor, which checks them
    load_options: frozenset[str] | None
    params: frozenset[str]  # generation parameters it takes (besides those, a ConfigError)
    implementation: str  # "module:Class" in this package: the Engine subclass that runs it
    has_default_model: bool = False  # False: model= is required
    embeds_apart: bool = False  # embeddings load a model instance of their own (llama.cpp)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def engine_class(self) -> type:
        module, cls = self.implementation.split(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), cls)

    def check_kind(self, kind: str) -> None:
        if kind not in self.kinds:
            raise ConfigError(f"the {self.name} engine serves {', '.join(self.kinds)}, "
                              f"not kind={kind!r}")

    def check_options(self, options: dict | None) -> dict:
        """The load options, checked without loading anything; a copy."""
        options = dict(options or {})
        if not all(isinstance(k, str) for k in options):
            raise ConfigError("engine_options keys must be strings")
        if self.load_options is not None:
            unknown = sorted(set(options) - self.load_options)
            if unknown:
                raise ConfigError(
                    f"the {self.name} engine does not take {', '.join(map(repr, unknown))}; "
                    f"its engine_options are {', '.join(sorted(self.load_options))}")
        elif "python" in options and not _is_file(options["python"]):
            raise ConfigError(f"engine_options['python'] must be a Python executable; got "
                              f"{options['python']!r}")
        return options

    def check_model(self, model: str | None) -> None:
        if model is None and not self.has_default_model:
            raise ConfigError(f"model= is required with engine={self.name!r}: a local model "
                              "folder or a model id the engine can load")

    def require_library(self, options: dict) -> None:
        """A ConfigError when the engine's library is missing here (a subprocess engine given
        ``engine_options["python"]`` runs in that environment instead, which is not checked)."""
        if "python" not in options:
            _models.require(self.library, self.name, self.install)

    def locate_model(self, model: str | None) -> str:
        """The model this engine will load for ``model=`` (``None``: its default), or a
        ConfigError; nothing is downloaded or loaded."""
        return self.engine_class().locate_model(model)

    def default_concurrency(self, options: dict) -> int:
        """Rows worth keeping in flight to keep this engine busy with these load options."""
        return self.engine_class().concurrency_for(options)


def _is_file(path: object) -> bool:
    return isinstance(path, str) and os.path.isfile(path)


_LLAMA_CPP = EngineInfo(
    name="llama.cpp",
    aliases=("llamacpp", "llama-cpp", "llama_cpp"),
    kinds=("chat", "completion", "embedding"),
    library="llama_cpp",
    install=('CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" '
             'pip install "batchmagic[local]"'),
    in_process=True,
    load_options=frozenset({"n_ctx", "n_threads", "n_threads_batch", "n_contexts", "n_batch",
                            "n_ubatch", "n_gpu_layers", "flash_attn", "pooling", "chat_format",
                            "use_mmap", "use_mlock"}),
    params=COMMON_PARAMS | {"repetition_penalty", "presence_penalty", "frequency_penalty",
                            "typical_p"},
    implementation="_llamacpp:LlamaCppEngine",
    has_default_model=True,
    embeds_apart=True,
)

_TRANSFORMERS = EngineInfo(
    name="transformers",
    aliases=("hf",),
    kinds=("chat", "completion", "embedding"),
    library="transformers",
    install=('pip install "batchmagic[transformers]" (install a CPU torch first on machines '
             'without a GPU)'),
    in_process=True,
    load_options=frozenset({"device", "dtype", "max_batch", "max_model_len", "torch_threads",
                            "attn_implementation", "trust_remote_code"}),
    params=COMMON_PARAMS | {"min_tokens", "repetition_penalty", "chat_template_kwargs"},
    implementation="_transformers:TransformersEngine",
    has_default_model=True,
)

_VLLM = EngineInfo(
    name="vllm",
    aliases=(),
    kinds=("chat", "completion"),
    library="vllm",
    install=('pip install "batchmagic[gpu]" vllm, or engine_options={"python": '
             '"/path/to/env/bin/python"} to run vLLM from another environment'),
    in_process=False,
    load_options=None,
    params=COMMON_PARAMS | {"min_tokens", "presence_penalty", "frequency_penalty",
                            "repetition_penalty", "stop_token_ids", "bad_words", "ignore_eos",
                            "skip_special_tokens", "include_stop_str_in_output",
                            "chat_template_kwargs"},
    implementation="_subprocess:VllmEngine",
)

_FASTDEPLOY = EngineInfo(
    name="fastdeploy",
    aliases=(),
    kinds=("chat", "completion"),
    library="fastdeploy",
    install=("install FastDeploy (fastdeploy-gpu) for your CUDA version, or "
             'engine_options={"python": ...} to run it from another environment'),
    in_process=False,
    load_options=None,
    params=COMMON_PARAMS | {"min_tokens", "presence_penalty", "frequency_penalty",
                            "repetition_penalty", "stop_token_ids", "bad_words",
                            "reasoning_max_tokens", "chat_template_kwargs"},
    implementation="_subprocess:FastDeployEngine",
)

#: canonical name -> record
REGISTRY: dict[str, EngineInfo] = {
    info.name: info for info in (_LLAMA_CPP, _TRANSFORMERS, _VLLM, _FASTDEPLOY)
}
_BY_NAME = {name.lower(): info for info in REGISTRY.values() for name in info.names}

#: every name ``engine=`` accepts, aliases included
ENGINES: tuple[str, ...] = tuple(name for info in REGISTRY.values() for name in info.names)


def find(engine: object) -> EngineInfo:
    """The record for ``engine`` (any accepted name, any case), or a ConfigError listing them."""
    info = _BY_NAME.get(engine.lower()) if isinstance(engine, str) else None
    if info is None:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    return info
