"""Package-level contract of kernels_numba: no torch, cached kernels, runnable examples."""

from __future__ import annotations

import doctest
import importlib
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from numba.core.dispatcher import Dispatcher

import kernels_numba as kn

MODULES = ["rtn", "pack", "nf4", "stats", "gemv", "gptq", "histogram", "gguf", "_gguf_search", "_gguf_legacy", "_bits", "_common", "_checks"]
PKG = pathlib.Path(kn.__file__).parent


def test_no_torch_import():
    code = "import sys, kernels_numba; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PKG.parent)
    for path in PKG.glob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "from torch" not in text, path


@pytest.mark.parametrize("name", MODULES)
def test_every_kernel_is_cached(name):
    mod = importlib.import_module(f"kernels_numba.{name}")
    kernels = [v for v in vars(mod).values() if isinstance(v, Dispatcher) and v.__module__ == mod.__name__]
    for k in kernels:
        assert k._cache.__class__.__name__ != "NullCache", f"{k.__name__} lacks cache=True"


@pytest.mark.parametrize("name", ["rtn", "pack", "nf4", "stats", "gemv", "gptq", "histogram"])
def test_docstring_examples_run(name):
    mod = importlib.import_module(f"kernels_numba.{name}")
    result = doctest.testmod(mod, extraglobs={"np": np}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_public_api():
    assert sorted(kn.__all__) == sorted(set(kn.__all__))
    for name in kn.__all__:
        obj = getattr(kn, name)
        if callable(obj) and not isinstance(obj, type):
            assert obj.__doc__ and "Examples" in obj.__doc__, f"{name} lacks an example"
