"""kernels_numba.gguf against llama.cpp's own C quantizers (ggml_quantize_chunk in libggml-base).

The library comes with llama-cpp-python (``pip install 'qviz[llamacpp]'``, built from
source) or from any llama.cpp build named by ``QVIZ_LIBGGML=/path/to/libggml-base.so``.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from kernels_numba.gguf import GGUF_TYPES, quantize_gguf
from kernels_numba.libggml import load_libggml


def _libggml() -> ctypes.CDLL:
    lib, why = load_libggml()
    if lib is None:
        pytest.skip(why)
    return lib


@pytest.fixture(scope="module")
def lib():
    return _libggml()


@pytest.mark.parametrize("with_imatrix", [False, True])
@pytest.mark.parametrize("name", list(GGUF_TYPES))
def test_bytes_equal_llama_cpp(lib, name, with_imatrix):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((48, 1024)) * 0.02).astype(np.float32)
    x[:, rng.integers(0, 1024, 4)] *= 20  # outlier columns
    x[0, :256] = 0.0
    qw = (rng.random(1024) ** 3 * 5).astype(np.float32) if with_imatrix else None
    t = GGUF_TYPES[name]
    want = np.zeros((x.shape[0], x.shape[1] // t.block * t.type_size), np.uint8)
    lib.ggml_quantize_init(t.ggml_type)
    lib.ggml_quantize_chunk(t.ggml_type, x.ctypes.data, want.ctypes.data, 0, x.shape[0], x.shape[1],
                            None if qw is None else qw.ctypes.data)
    np.testing.assert_array_equal(quantize_gguf(x, name, qw), want)


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_scan_order_ties_equal_llama_cpp(lib, name):
    # signed zeros and equal largest |x|: ggml keeps the first one it meets
    from tests.kernels_numba.test_gguf import ties

    x = ties()
    t = GGUF_TYPES[name]
    want = np.zeros((x.shape[0], x.shape[1] // t.block * t.type_size), np.uint8)
    lib.ggml_quantize_init(t.ggml_type)
    lib.ggml_quantize_chunk(t.ggml_type, x.ctypes.data, want.ctypes.data, 0, x.shape[0], x.shape[1], None)
    np.testing.assert_array_equal(quantize_gguf(x, name), want)
