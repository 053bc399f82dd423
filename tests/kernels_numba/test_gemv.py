"""kernels_numba.gemv against dequantize-then-matmul (float64 reference)."""

from __future__ import annotations

import numpy as np
import pytest

import kernels_numba as kn


def ref_gemv(codes, scale, zero, x, group_size):
    """Materialise W_hat in float64 and multiply."""
    w = (codes.astype(np.float64) - np.repeat(zero, group_size, axis=1)) * np.repeat(scale, group_size, axis=1)
    return w @ x.astype(np.float64)


def make(rows, cols, group_size, seed=0, symmetric=False):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal(cols).astype(np.float32)
    codes, qp, _ = kn.quantize_with_stats(w, 4, group_size, symmetric)
    return codes, qp, x


@pytest.mark.parametrize("rows", [1, 3, 16, 37, 130])
@pytest.mark.parametrize("group_size", [2, 6, 32, 64, 128, 256])
def test_int4_equals_dequantize_matmul(rows, group_size):
    cols = 768
    codes, qp, x = make(rows, cols, group_size, seed=rows)
    y = kn.gemv_int4(kn.pack(codes, 4), qp.scale, qp.zero, x, group_size)
    ref = ref_gemv(codes, qp.scale, qp.zero, x, group_size)
    assert y.shape == (rows,) and y.dtype == np.float32
    bound = 2e-6 * (np.abs(kn.dequantize(codes, *qp, 4)) @ np.abs(x)) + 1e-6
    assert np.all(np.abs(y - ref) <= bound)
    np.testing.assert_allclose(y, kn.dequantize(codes, *qp, 4) @ x, rtol=1e-4, atol=1e-3)


def test_int4_symmetric_and_single_group():
    codes, qp, x = make(9, 64, None, symmetric=True)
    y = kn.gemv_int4(kn.pack(codes, 4), qp.scale, qp.zero, x, 64)
    np.testing.assert_allclose(y, ref_gemv(codes, qp.scale, qp.zero, x, 64), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 5, 64, 100])
def test_int8_equals_dequantize_matmul(rows):
    rng = np.random.default_rng(rows)
    w = rng.standard_normal((rows, 300)).astype(np.float32)
    x = rng.standard_normal(300).astype(np.float32)
    for sym in (False, True):
        codes, qp, _ = kn.quantize_with_stats(w, 8, None, sym)
        y = kn.gemv_int8(codes, qp.scale, qp.zero, x)
        np.testing.assert_allclose(y, ref_gemv(codes, qp.scale, qp.zero, x, 300), rtol=1e-5, atol=1e-4)
        y1 = kn.gemv_int8(codes, qp.scale[:, 0].copy(), qp.zero[:, 0].copy(), x)  # [rows] form
        np.testing.assert_array_equal(y, y1)


def test_bad_input():
    codes, qp, x = make(4, 64, 32)
    packed = kn.pack(codes, 4)
    with pytest.raises(ValueError, match=r"x has 63 entries but the weight has 64 columns"):
        kn.gemv_int4(packed, qp.scale, qp.zero, x[:63], 32)
    with pytest.raises(ValueError, match=r"group_size=24 must be even and divide the row length 64"):
        kn.gemv_int4(packed, qp.scale, qp.zero, x, 24)
    with pytest.raises(ValueError, match=r"scale \(4, 2\) and zero \(4, 2\) must both have shape \(4, 4\)"):
        kn.gemv_int4(packed, qp.scale, qp.zero, x, 16)
    bad = x.copy()
    bad[5] = np.nan
    with pytest.raises(ValueError, match=r"x contains 1 NaN/Inf value\(s\) \(first at index \[5\]"):
        kn.gemv_int4(packed, qp.scale, qp.zero, bad, 32)
    with pytest.raises(TypeError, match="x has dtype float64, expected float32"):
        kn.gemv_int4(packed, qp.scale, qp.zero, x.astype(np.float64), 32)
    with pytest.raises(ValueError, match="x must be 1-D"):
        kn.gemv_int8(codes, qp.scale[:, :1].copy(), qp.zero[:, :1].copy(), x[None])
