"""kernels_numba.rtn against a plain-numpy reference, torch's fake_quantize, and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kernels_numba as kn
from kernels_numba._common import round_to_f16, store_scale

HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------- reference


def ref_store_scale(s: float, f16: bool, steps: int) -> float:
    """Storage rounding of one float64 scale, written with numpy's own casts.

    Nearest float16, except that a grid of ``steps`` steps may not stop short of
    the range by more than half a step: then the next float16 up.
    """
    if s == 0.0:
        return 1.0
    if f16:
        with np.errstate(over="ignore"):
            h = np.float16(s)
        if h == 0:
            h = np.float16(2.0**-24)
        if (s - float(h)) * steps > 0.5 * float(h):
            h = np.nextafter(h, np.float16(np.inf))
        return float(h)
    return max(float(np.float32(s)), 2.0**-126)


def ref_params(lo: float, hi: float, ratio: float, bits: int, symmetric: bool, f16: bool):
    lo, hi = lo * ratio, hi * ratio
    if symmetric:
        half = 2 ** (bits - 1)
        return ref_store_scale(max(-lo, hi) / (half - 1), f16, half - 1), float(half)
    qmax = 2**bits - 1
    s = ref_store_scale((hi - lo) / qmax, f16, qmax)
    return s, float(min(max(np.rint(-lo / s), 0.0), qmax))


def ref_codes(xg: np.ndarray, s: float, z: float, qmin: int, qmax: int):
    """float32 arithmetic exactly as documented: clamp(rint(x * (1/scale)) + zero)."""
    inv = np.float32(1.0) / np.float32(s)
    q = np.clip(np.rint(xg * inv) + np.float32(z), np.float32(qmin), np.float32(qmax))
    xh = (q - np.float32(z)) * np.float32(s)
    return q.astype(np.uint8), xh.astype(np.float32)


def ref_rtn(x, bits, group_size=None, symmetric=False, clip_search=False, f16=True):
    """Codes, scale, zero and x_hat, one group at a time in plain numpy."""
    rows, cols = x.shape
    qmin, qmax = (1 if symmetric else 0), 2**bits - 1
    ratios = kn.CLIP_RATIOS if clip_search else [1.0]
    if group_size == "tensor":
        groups = [(slice(None), slice(None))]
        pshape = (1, 1)
    else:
        gs = cols if group_size is None else group_size
        groups = [(r, slice(g * gs, (g + 1) * gs)) for r in range(rows) for g in range(cols // gs)]
        pshape = (rows, cols // gs)
    scale = np.empty(len(groups))
    zero = np.empty(len(groups))
    codes = np.empty(x.shape, np.uint8)
    xhat = np.empty(x.shape, np.float32)
    for i, idx in enumerate(groups):
        xg = x[idx]
        lo, hi = min(float(xg.min()), 0.0), max(float(xg.max()), 0.0)
        best = None
        for ratio in ratios:
            s, z = ref_params(lo, hi, ratio, bits, symmetric, f16)
            _, xh = ref_codes(xg, s, z, qmin, qmax)
            err = float(np.sum((xh.astype(np.float64) - xg) ** 2))
            if best is None or err < best[0]:
                best = (err, s, z)
        _, s, z = best
        codes[idx], xhat[idx] = ref_codes(xg, s, z, qmin, qmax)
        scale[i], zero[i] = s, z
    return codes, scale.reshape(pshape).astype(np.float32), zero.reshape(pshape).astype(np.uint8), xhat


def ref_stats(x, xhat):
    d = xhat.astype(np.float64) - x.astype(np.float64)
    return float(np.sum(d * d)), float(np.sum(x.astype(np.float64) ** 2)), float(np.abs(d).max())


def rand(shape, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32) * np.float32(scale)
    x[..., 0] *= 4  # an outlier column, so groups differ
    return x


# ----------------------------------------------------------------------------- equality with the reference

GROUPS = [None, 32, 64, 128, "tensor"]


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", GROUPS)
def test_codes_equal_reference(bits, symmetric, group_size):
    x = rand((7, 384), seed=bits)
    codes, qp, stats = kn.quantize_with_stats(x, bits, group_size, symmetric)
    rc, rs, rz, rx = ref_rtn(x, bits, group_size, symmetric)
    np.testing.assert_array_equal(qp.scale, rs)
    np.testing.assert_array_equal(qp.zero, rz)
    np.testing.assert_array_equal(codes, rc)
    x_hat, st2 = kn.fake_quantize(x, bits, group_size, symmetric)
    np.testing.assert_array_equal(x_hat, rx)
    sse, sig, mx = ref_stats(x, rx)
    for s in (stats, st2):
        assert s.sse == pytest.approx(sse, rel=1e-9)
        assert s.signal == pytest.approx(sig, rel=1e-9)
        assert s.max_abs_err == pytest.approx(mx, rel=1e-6)
        assert s.n == x.size
        assert s.mse == pytest.approx(sse / x.size, rel=1e-9)
        assert s.sqnr_db == pytest.approx(10 * math.log10(sig / sse), rel=1e-9)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 97), (3, 1000), (33, 64)])
@pytest.mark.parametrize("group_size", [None, "tensor"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_odd_shapes_equal_reference(shape, group_size, symmetric):
    x = rand(shape, seed=shape[1])
    codes, qp, _ = kn.quantize_with_stats(x, 3, group_size, symmetric)
    rc, rs, rz, rx = ref_rtn(x, 3, group_size, symmetric)
    np.testing.assert_array_equal(codes, rc)
    np.testing.assert_array_equal(qp.scale, rs)
    np.testing.assert_array_equal(qp.zero, rz)
    np.testing.assert_array_equal(kn.fake_quantize(x, 3, group_size, symmetric)[0], rx)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [None, 32, "tensor"])
def test_clip_search_equal_reference(bits, symmetric, group_size):
    x = rand((5, 128), seed=10 + bits)
    codes, qp, st = kn.quantize_with_stats(x, bits, group_size, symmetric, clip_search=True)
    rc, rs, rz, rx = ref_rtn(x, bits, group_size, symmetric, clip_search=True)
    np.testing.assert_array_equal(qp.scale, rs)
    np.testing.assert_array_equal(qp.zero, rz)
    np.testing.assert_array_equal(codes, rc)
    # clipping never does worse than the full range
    _, st_full = kn.fake_quantize(x, bits, group_size, symmetric)
    assert st.sse <= st_full.sse * (1 + 1e-12)


@pytest.mark.parametrize("group_size", [None, 64, "tensor"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_trio_matches_fused(group_size, symmetric):
    x = rand((9, 256), seed=3)
    qp = kn.choose_qparams(x, 4, group_size, symmetric)
    codes = kn.quantize(x, *qp, 4, symmetric)
    x_hat = kn.dequantize(codes, *qp, 4, symmetric)
    c2, qp2, _ = kn.quantize_with_stats(x, 4, group_size, symmetric)
    np.testing.assert_array_equal(codes, c2)
    np.testing.assert_array_equal(qp.scale, qp2.scale)
    np.testing.assert_array_equal(x_hat, kn.fake_quantize(x, 4, group_size, symmetric)[0])
    expected_shape = (1, 1) if group_size == "tensor" else (9, 256 // (group_size or 256))
    assert qp.scale.shape == qp.zero.shape == expected_shape
    assert qp.scale.dtype == np.float32 and qp.zero.dtype == np.uint8


def test_scale_dtype_float32_equal_reference():
    x = rand((4, 128), seed=5, scale=1e30)
    codes, qp, _ = kn.quantize_with_stats(x, 4, 32, scale_dtype=np.float32)
    rc, rs, rz, _ = ref_rtn(x, 4, 32, f16=False)
    np.testing.assert_array_equal(codes, rc)
    np.testing.assert_array_equal(qp.scale, rs)
    np.testing.assert_array_equal(qp.zero, rz)


def test_out_argument_and_input_untouched():
    x = rand((4, 64))
    x0 = x.copy()
    out = np.full_like(x, np.nan)
    x_hat, _ = kn.fake_quantize(x, 4, 32, out=out)
    assert x_hat is out and np.isfinite(out).all()
    np.testing.assert_array_equal(x, x0)
    # non-contiguous input is read, not modified
    xt = np.asfortranarray(x)
    np.testing.assert_array_equal(kn.fake_quantize(xt, 4, 32)[0], out)


# ----------------------------------------------------------------------------- peer: torch


@pytest.mark.parametrize("bits", [8, 6, 4, 2])
@pytest.mark.parametrize("symmetric", [False, True])
def test_matches_torch_fake_quantize_per_channel(bits, symmetric):
    torch = pytest.importorskip("torch")
    x = rand((16, 300), seed=bits)
    x[3] = 0.0  # an all-zero channel
    x[4] = 0.7  # a constant channel
    x_hat, _ = kn.fake_quantize(x, bits, None, symmetric)
    qp = kn.choose_qparams(x, bits, None, symmetric)
    ref = torch.fake_quantize_per_channel_affine(
        torch.from_numpy(x),
        torch.from_numpy(qp.scale[:, 0].copy()),
        torch.from_numpy(qp.zero[:, 0].astype(np.int32)),
        0,
        1 if symmetric else 0,
        2**bits - 1,
    ).numpy()
    np.testing.assert_array_equal(x_hat, ref)


# ----------------------------------------------------------------------------- scale rounding


def test_round_to_f16_matches_numpy():
    rng = np.random.default_rng(0)
    vals = np.concatenate([
        np.exp(rng.uniform(np.log(1e-9), np.log(7e4), 20000)),
        [2.0**-24, 2.0**-25, 3 * 2.0**-26, 2.0**-14, 65504.0, 65519.99, 65520.0, 1e6, 0.1, 1 / 3],
    ])
    # exact float16 midpoints round to even
    h = np.arange(1, 2000, dtype=np.uint16).view(np.float16).astype(np.float64)
    vals = np.concatenate([vals, (h[:-1] + h[1:]) / 2])
    got = np.array([round_to_f16(float(v)) for v in vals])
    with np.errstate(over="ignore"):
        want = vals.astype(np.float16).astype(np.float64)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("s", [0.0, 1e-12, 1e-3, 1.0, 1e5, 1e-5 / 31, 3.3e-7, 5e-6])
@pytest.mark.parametrize("steps", [1, 7, 31, 255])
def test_store_scale_never_zero_or_nan(s, steps):
    for f16 in (True, False):
        r = store_scale(s, f16, steps)
        assert r > 0 and not math.isnan(r)
        assert r == ref_store_scale(s, f16, steps) or (f16 and s > 65504 and math.isinf(r))
        if s > 0 and not math.isinf(r):  # the grid reaches its range to within half a step
            assert (s - r) * steps <= 0.5 * r


def test_tiny_constant_row_is_within_half_a_step():
    """A constant row of 1e-5 at 5 bits: its float16 scale is subnormal, rounding it to nearest
    would stop the grid 7.6e-7 short of the value (found by hypothesis in CI)."""
    x = np.full((1, 1), 1e-5, np.float32)
    x_hat, _ = kn.fake_quantize(x, 5, None, False)
    qp = kn.choose_qparams(x, 5, None, False)
    assert abs(float(x_hat[0, 0]) - 1e-5) <= float(qp.scale[0, 0]) / 2


# ----------------------------------------------------------------------------- properties


def _in_range_error_ok(x, x_hat, qp, bits, symmetric):
    """|x - x_hat| <= scale/2 wherever x lies inside the representable range."""
    rows, cols = x.shape
    per_group = cols // qp.scale.shape[1]
    scale = np.broadcast_to(np.repeat(qp.scale, per_group, axis=1), x.shape)
    zero = np.broadcast_to(np.repeat(qp.zero, per_group, axis=1), x.shape)
    s64 = scale.astype(np.float64)
    lo = ((1 if symmetric else 0) - zero.astype(np.float64)) * s64
    hi = (2**bits - 1 - zero.astype(np.float64)) * s64
    inside = (x >= lo) & (x <= hi)
    err = np.abs(x_hat.astype(np.float64) - x)
    assert np.all(err[inside] <= s64[inside] / 2 * (1 + 1e-6) + 1e-300)
    assert np.all(np.isfinite(x_hat))


@st.composite
def matrices(draw):
    rows = draw(st.integers(1, 6))
    groups = draw(st.integers(1, 4))
    gsize = draw(st.sampled_from([1, 2, 3, 8, 32]))
    magnitude = draw(st.sampled_from([1e-30, 1e-6, 1.0, 1e3, 1e30]))
    base = draw(hnp.arrays(np.float32, (rows, groups * gsize),
                           elements=st.floats(-1, 1, width=32)))
    x = (base.astype(np.float64) * magnitude).astype(np.float32)
    return x, gsize, magnitude


@HYP
@given(matrices(), st.integers(2, 8), st.booleans(), st.sampled_from(["group", None, "tensor"]))
def test_roundtrip_error_bounded(data, bits, symmetric, mode):
    x, gsize, magnitude = data
    group_size = gsize if mode == "group" else mode
    scale_dtype = np.float32 if magnitude > 1e3 else np.float16
    x0 = x.copy()
    codes, qp, stats = kn.quantize_with_stats(x, bits, group_size, symmetric, scale_dtype=scale_dtype)
    np.testing.assert_array_equal(x, x0)
    assert np.all(qp.scale > 0) and np.all(np.isfinite(qp.scale))
    if scale_dtype == np.float16:
        np.testing.assert_array_equal(qp.scale, qp.scale.astype(np.float16).astype(np.float32))
    assert codes.min() >= (1 if symmetric else 0) and codes.max() <= 2**bits - 1
    x_hat = kn.dequantize(codes, *qp, bits, symmetric)
    _in_range_error_ok(x, x_hat, qp, bits, symmetric)
    np.testing.assert_array_equal(x_hat[x == 0], 0.0)  # zero is exact
    sse, sig, mx = ref_stats(x, x_hat)
    assert stats.sse == pytest.approx(sse, rel=1e-9, abs=1e-300)
    assert stats.signal == pytest.approx(sig, rel=1e-9, abs=1e-300)
    assert stats.max_abs_err == pytest.approx(mx, rel=1e-6, abs=1e-300)


@HYP
@given(st.floats(-1e4, 1e4, width=32), st.integers(1, 5), st.integers(1, 70), st.integers(2, 8),
       st.booleans())
def test_constant_rows(c, rows, cols, bits, symmetric):
    x = np.full((rows, cols), c, np.float32)
    x_hat, stats = kn.fake_quantize(x, bits, None, symmetric)
    qp = kn.choose_qparams(x, bits, None, symmetric)
    assert np.all(qp.scale > 0) and np.all(np.isfinite(qp.scale))
    if c == 0:
        np.testing.assert_array_equal(x_hat, 0.0)
        assert stats.sse == 0 and stats.sqnr_db == math.inf
    else:
        assert np.all(np.abs(x_hat - c) <= qp.scale[0, 0] / 2 * (1 + 1e-6))


def test_all_zero_groups_dequantize_to_zero():
    x = rand((3, 64))
    x[1] = 0.0
    x[2, :32] = 0.0
    for sym in (False, True):
        for gs in (None, 32, "tensor"):
            codes, qp, _ = kn.quantize_with_stats(np.zeros((2, 64), np.float32), 4, gs, sym)
            assert np.all(qp.scale == 1.0)
            np.testing.assert_array_equal(kn.dequantize(codes, *qp, 4, sym), 0.0)
            x_hat, _ = kn.fake_quantize(x, 4, gs, sym)
            np.testing.assert_array_equal(x_hat[1], 0.0)
            if gs == 32:
                np.testing.assert_array_equal(x_hat[2, :32], 0.0)


def test_tiny_values_with_float16_scales():
    x = rand((2, 32), scale=1e-30)
    x_hat, stats = kn.fake_quantize(x, 4, None)
    qp = kn.choose_qparams(x, 4, None)
    assert np.all(qp.scale == np.float32(2.0**-24))  # float16's smallest step
    np.testing.assert_array_equal(x_hat, 0.0)
    assert stats.sqnr_db == pytest.approx(0.0, abs=1e-6)


def test_error_stats_derived_values():
    s = kn.ErrorStats(sse=2.0, signal=200.0, max_abs_err=1.0, n=4)
    assert s.mse == 0.5 and s.sqnr_db == pytest.approx(20.0)
    assert kn.ErrorStats(0.0, 1.0, 0.0, 1).sqnr_db == math.inf
    assert kn.ErrorStats(1.0, 0.0, 1.0, 1).sqnr_db == -math.inf
    with pytest.raises(AttributeError):
        s.sse = 1.0  # frozen


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bits", [1, 9, 0, -3])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError, match=rf"bits={bits} is out of range: expected an int from 2 to 8"):
        kn.fake_quantize(rand((2, 8)), bits)


@pytest.mark.parametrize("bits", [4.0, "4", True, None])
def test_bits_wrong_type(bits):
    with pytest.raises(TypeError, match="bits must be an int from 2 to 8"):
        kn.choose_qparams(rand((2, 8)), bits)


def test_group_size_must_divide_row():
    with pytest.raises(ValueError, match=r"group_size=48 does not divide the row length 128 .*32, 64, 128"):
        kn.fake_quantize(rand((2, 128)), 4, 48)
    with pytest.raises(ValueError, match="must be positive"):
        kn.fake_quantize(rand((2, 128)), 4, 0)
    with pytest.raises(ValueError, match="'channel' is not understood"):
        kn.fake_quantize(rand((2, 128)), 4, "channel")
    with pytest.raises(TypeError, match="group_size must be None, an int or 'tensor'"):
        kn.fake_quantize(rand((2, 128)), 4, 32.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("group_size", [None, 32, "tensor"])
def test_nonfinite_input(bad, group_size):
    x = rand((3, 64))
    x[2, 40] = bad
    for fn in (kn.fake_quantize, kn.quantize_with_stats, kn.choose_qparams):
        with pytest.raises(ValueError, match=r"x contains 1 NaN/Inf value\(s\) \(first at index \[2, 40\]"):
            fn(x, 4, group_size)
    qp = kn.choose_qparams(rand((3, 64)), 4, group_size)
    with pytest.raises(ValueError, match="NaN/Inf"):
        kn.quantize(x, *qp, 4)


def test_wrong_dtype_ndim_type():
    with pytest.raises(TypeError, match=r"x has dtype float64, expected float32. Convert it with x.astype\(np.float32\)"):
        kn.fake_quantize(np.zeros((2, 8)), 4)
    with pytest.raises(ValueError, match=r"x must be 2-D, got a 1-D array of shape \(8,\); reshape it"):
        kn.fake_quantize(np.zeros(8, np.float32), 4)
    with pytest.raises(ValueError, match="x must be 2-D, got a 3-D array"):
        kn.fake_quantize(np.zeros((2, 2, 2), np.float32), 4)
    with pytest.raises(TypeError, match="x must be a numpy.ndarray, got list"):
        kn.fake_quantize([[1.0, 2.0]], 4)
    with pytest.raises(ValueError, match="at least one row and one column"):
        kn.fake_quantize(np.zeros((0, 8), np.float32), 4)


def test_float16_scale_overflow_is_explained():
    x = np.full((2, 32), 1e6, np.float32)
    with pytest.raises(ValueError, match=r"float16's maximum 65504.*scale_dtype=np.float32"):
        kn.fake_quantize(x, 4)
    x_hat, _ = kn.fake_quantize(x, 4, scale_dtype=np.float32)
    np.testing.assert_allclose(x_hat, x, rtol=1e-6)
    with pytest.raises(ValueError, match="scale_dtype=float64 is not supported"):
        kn.fake_quantize(x, 4, scale_dtype=np.float64)


def test_bad_out_and_qparams():
    x = rand((2, 32))
    with pytest.raises(ValueError, match=r"out must be a writeable C-contiguous float32 array of shape \(2, 32\)"):
        kn.fake_quantize(x, 4, out=np.empty((2, 16), np.float32))
    with pytest.raises(TypeError, match="out must be a float32 numpy array"):
        kn.fake_quantize(x, 4, out=np.empty((2, 32)))
    with pytest.raises(ValueError, match="out overlaps x"):
        kn.fake_quantize(x, 4, out=x)
    qp = kn.choose_qparams(x, 4)
    with pytest.raises(ValueError, match=r"scale \(2, 1\) and zero \(2, 1\) do not fit x of shape \(3, 32\)"):
        kn.quantize(rand((3, 32)), *qp, 4)
    with pytest.raises(ValueError, match=r"do not fit x of shape \(2, 32\)"):
        kn.quantize(x, np.ones((2, 5), np.float32), np.zeros((2, 5), np.uint8), 4)
    with pytest.raises(TypeError, match="scale has dtype float64, expected float32"):
        kn.quantize(x, qp.scale.astype(np.float64), qp.zero, 4)
    with pytest.raises(TypeError, match="bits must be an int from 2 to 8"):
        kn.quantize(x, *qp, 4.0)
    with pytest.raises(TypeError, match="symmetric must be True or False"):
        kn.quantize(x, *qp, 4, "no")
    with pytest.raises(ValueError, match="codes contain 16, above the largest 4-bit code 15"):
        kn.dequantize(np.full((2, 32), 16, np.uint8), *qp, 4)


def _halfway_cases(n_scales=40, bits=4):
    """Rows whose scale is a chosen float16 value s and which hold values x with
    x * (1/s) exactly at k + 0.5 while x / s is not: the two roundings differ there."""
    rng = np.random.default_rng(7)
    qmax = 2**bits - 1
    rows = []
    for s in rng.uniform(0.01, 2.0, n_scales).astype(np.float16).astype(np.float32):
        inv = np.float32(1) / s
        found = []
        for k in range(qmax):
            t = np.float32(k + 0.5)
            x = np.float32(t / inv)
            for _ in range(4):
                for cand in (x, np.nextafter(x, np.float32(0)), np.nextafter(x, np.float32(99))):
                    if cand * inv == t and np.rint(cand * inv) != np.rint(np.float64(cand) / np.float64(s)):
                        found.append(cand)
                x = np.nextafter(x, np.float32(99))
        if found:
            row = np.zeros(16, np.float32)
            row[0] = s * np.float32(qmax)  # range [0, s*qmax]: the scale is exactly s
            row[1:1 + min(15, len(found))] = found[:15]
            rows.append(row)
    return np.array(rows)


def test_rounding_uses_float32_reciprocal_like_torch():
    torch = pytest.importorskip("torch")
    x = _halfway_cases()
    assert len(x) > 3, "the search should find rows where x*(1/s) and x/s round differently"
    qp = kn.choose_qparams(x, 4)
    inv = np.float32(1) / qp.scale
    expected = np.clip(np.rint(x * inv) + qp.zero.astype(np.float32), 0, 15).astype(np.uint8)
    np.testing.assert_array_equal(kn.quantize(x, *qp, 4), expected)
    np.testing.assert_array_equal(kn.quantize_with_stats(x, 4)[0], expected)
    ref = torch.fake_quantize_per_channel_affine(
        torch.from_numpy(x), torch.from_numpy(qp.scale[:, 0].copy()),
        torch.from_numpy(qp.zero[:, 0].astype(np.int32)), 0, 0, 15).numpy()
    np.testing.assert_array_equal(kn.fake_quantize(x, 4)[0], ref)
    np.testing.assert_array_equal(kn.dequantize(expected, *qp, 4), ref)
