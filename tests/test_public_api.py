"""The public surface of ``batchmagic``: exactly what ``__all__`` says, and a light import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import types

import batchmagic as bm

EXPECTED_ALL = [
    "BadRequestError",
    "BatchError",
    "BatchJob",
    "BatchTask",
    "Breaker",
    "BudgetExceededError",
    "CancelledRowError",
    "CircuitOpenError",
    "ColumnClashError",
    "ConfigError",
    "ConnectError",
    "ConnectionLostError",
    "ContextLengthError",
    "DeadlineError",
    "Estimate",
    "FatalProviderError",
    "GeneratedImage",
    "InputError",
    "JournalError",
    "NotSentError",
    "ProviderError",
    "RESULT_COLUMNS",
    "RateLimitError",
    "ResponseError",
    "RowError",
    "RunError",
    "SchemaError",
    "ServerError",
    "TemplateError",
    "TransportError",
    "__version__",
    "abatch",
    "batch",
    "clear_journal",
    "estimate",
    "job",
    "jobs",
    "raise_for_errors",
    "runs",
    "submit",
    "unload",
]


def test_all_is_pinned():
    assert sorted(bm.__all__) == EXPECTED_ALL
    assert len(set(bm.__all__)) == len(bm.__all__), "duplicate names in __all__"


def test_every_name_in_all_exists():
    for name in bm.__all__:
        assert hasattr(bm, name), name


def test_no_module_is_exported():
    for name in bm.__all__:
        assert not isinstance(getattr(bm, name), types.ModuleType), name


def test_public_module_attributes_are_only_batchmagic_subpackages():
    """Any module reachable under a public name is a batchmagic subpackage, never a foreign
    library nor one of the private ``_x`` modules under another name."""
    for name in dir(bm):
        if name.startswith("_"):
            continue
        value = getattr(bm, name)
        if isinstance(value, types.ModuleType):
            assert value.__name__ == f"batchmagic.{name}", (name, value.__name__)
            assert not any(part.startswith("_") for part in value.__name__.split(".")[1:])


def test_exported_objects_come_from_batchmagic():
    for name in bm.__all__:
        value = getattr(bm, name)
        module = getattr(value, "__module__", None)
        if module is not None and isinstance(value, type | types.FunctionType):
            assert module.startswith("batchmagic."), (name, module)


def test_error_tree_shape():
    assert issubclass(bm.ConfigError, ValueError)
    assert issubclass(bm.TemplateError, bm.ConfigError)
    assert issubclass(bm.ColumnClashError, bm.ConfigError)
    for cls in (bm.InputError, bm.NotSentError, bm.CancelledRowError, bm.ProviderError,
                bm.TransportError, bm.ResponseError):
        assert issubclass(cls, bm.RowError)
    for cls in (bm.RateLimitError, bm.ServerError, bm.ContextLengthError, bm.BadRequestError,
                bm.FatalProviderError):
        assert issubclass(cls, bm.ProviderError)
    for cls in (bm.ConnectError, bm.DeadlineError, bm.ConnectionLostError):
        assert issubclass(cls, bm.TransportError)
    for name in bm.__all__:
        value = getattr(bm, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, bm.BatchError), name


def test_result_columns():
    assert bm.RESULT_COLUMNS == ("output", "error", "finish_reason", "input_tokens",
                                 "output_tokens", "cost", "latency", "attempts")


def test_import_is_light_and_fast():
    code = textwrap.dedent(
        """
        import json, sys, time
        t0 = time.perf_counter()
        import batchmagic
        wall = time.perf_counter() - t0
        heavy = ["ipywidgets", "tqdm.notebook", "aiohttp", "httpx2", "IPython"]
        print(json.dumps({"wall": wall, "loaded": [m for m in heavy if m in sys.modules]}))
        """
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    outer = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [], f"import batchmagic pulled in {report['loaded']}"
    assert report["wall"] < 2.0, f"import batchmagic took {report['wall']:.2f} s"
    # the whole interpreter start is bounded too (generously: CI machines vary)
    assert outer < 10.0
