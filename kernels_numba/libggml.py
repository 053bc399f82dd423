"""llama.cpp's ggml library through ctypes: its C quantizers, the peer the GGUF kernels are checked against.

The library comes with llama-cpp-python (``pip install 'qviz[llamacpp]'``, built from source)
or from any llama.cpp build named by ``QVIZ_LIBGGML=/path/to/libggml-base.so``. The tests of
:mod:`kernels_numba.gguf` and ``benchmarks/gguf_kernels.py`` both load it here.

Examples
--------
>>> lib, why = load_libggml()
>>> lib is not None or why.startswith("llama")
True
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pathlib

__all__ = ["load_libggml"]


def load_libggml() -> tuple[ctypes.CDLL | None, str]:
    """``(library, "")`` with ``ggml_quantize_chunk``'s signature declared, or ``(None, why it was not found)``.

    ``QVIZ_LIBGGML`` names the file; otherwise the ``libggml-base`` that llama-cpp-python installed.

    Examples
    --------
    >>> isinstance(load_libggml()[1], str)
    True
    """
    path = os.environ.get("QVIZ_LIBGGML")
    if not path:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or spec.origin is None:
            return None, ("llama.cpp is not available: install llama-cpp-python (pip install 'qviz[llamacpp]') "
                          "or set QVIZ_LIBGGML to a libggml-base.so")
        found = sorted(pathlib.Path(spec.origin).parent.glob("lib/libggml-base.*"))
        if not found:
            return None, "llama-cpp-python is installed without libggml-base (a build without shared ggml libraries)"
        path = str(found[0])
    lib = ctypes.CDLL(path)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    return lib, ""
