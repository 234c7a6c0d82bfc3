"""One record per engine: every name engine= accepts is listed, every listed name is accepted,
and every lookup (kinds, options, parameters, library, the class that runs it) reads the record."""

from __future__ import annotations

import subprocess
import sys

import pytest

import batchmagic as bm
from batchmagic import engines
from batchmagic.engines import _base, _params
from batchmagic.engines._registry import ENGINES, REGISTRY, find

ALL_KINDS = {"chat", "completion", "embedding", "image"}


def test_every_listed_name_is_accepted_in_any_case():
    for name in ENGINES:
        for spelling in (name, name.upper(), name.title()):
            assert name in find(spelling).names
    assert "llama_cpp" in ENGINES  # accepted before it was listed


def test_every_accepted_name_is_listed_once():
    names = [name for info in REGISTRY.values() for name in info.names]
    assert sorted(names) == sorted(ENGINES) and len(set(ENGINES)) == len(ENGINES)
    assert len({n.lower() for n in names}) == len(names)  # no name points at two engines
    assert all(info.name == key for key, info in REGISTRY.items())
    with pytest.raises(bm.ConfigError) as refused:
        find("llama")
    assert all(name in str(refused.value) for name in ENGINES)
    assert all(f"``{name}``" in engines.__doc__ for name in ENGINES)  # the table users read
    with pytest.raises(bm.ConfigError, match="one of"):
        find(None)


def test_each_record_names_a_real_engine_class():
    for info in REGISTRY.values():
        cls = info.engine_class()
        assert issubclass(cls, _base.Engine), info.name
        assert set(info.kinds) <= ALL_KINDS and info.kinds
        assert info.install and info.library
        assert info.in_process == (info.load_options is not None)
    assert find("hf").engine_class().name == "transformers"


def test_aliases_resolve_to_the_canonical_engine():
    for alias in ("llama_cpp", "LLAMA-CPP", "llamacpp"):
        assert engines.resolve(alias, None, "chat").engine == "llama.cpp"
    assert engines.resolve("HF", None, "embedding").engine == "transformers"


def test_generation_parameters_are_the_records():
    for info in REGISTRY.values():
        unknown = "logit_bias"
        assert unknown not in info.params
        with pytest.raises(bm.ConfigError, match="does not take 'logit_bias'"):
            _params.check(info.name, "chat", {unknown: {}})
    assert _params.check("hf", "chat", {"min_tokens": 2}) == {"min_tokens": 2}  # an alias too


def test_kinds_and_load_options_are_the_records():
    with pytest.raises(bm.ConfigError, match="serves chat, completion, not kind='embedding'"):
        engines.resolve("vllm", "m", "embedding", {"python": sys.executable})
    with pytest.raises(bm.ConfigError, match="does not take 'n_gpu'.*n_ctx"):
        engines.resolve("llama.cpp", None, "chat", {"n_gpu": 1})
    with pytest.raises(bm.ConfigError, match="must be a Python executable"):
        engines.resolve("fastdeploy", "m", "chat", {"python": "/no/such/python"})


def test_subprocess_engines_size_their_window_from_their_own_options():
    here = {"python": sys.executable}  # runs there: the library is not needed here
    vllm = engines.resolve("vllm", "some/model", "chat", {**here, "max_num_seqs": 8})
    assert vllm.default_concurrency == 16 and vllm.model == "some/model"
    fastdeploy = engines.resolve("fastdeploy", "m", "completion", {**here, "workers": 5})
    assert fastdeploy.default_concurrency == 5
    assert engines.resolve("fastdeploy", "m", "chat", here).default_concurrency == 64


def test_reading_the_registry_loads_no_engine_library():
    code = ("import sys; from batchmagic.engines import _registry; "
            "[i.names for i in _registry.REGISTRY.values()]; "
            "print(sorted(m for m in ('llama_cpp', 'torch', 'transformers', 'vllm') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
