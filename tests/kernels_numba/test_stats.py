"""kernels_numba.stats: streaming state equals numpy on the concatenated data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels_numba as kn


def ref_stats(x: np.ndarray, n_bins: int, lo: float, hi: float):
    """Per-channel statistics of all tokens at once, skipping NaN/Inf, in float64 numpy."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return _ref_stats(x.astype(np.float64), n_bins, lo, hi)


def _ref_stats(x, n_bins, lo, hi):
    finite = np.isfinite(x)
    out = {"count": finite.sum(0), "nonfinite": (~finite).sum(0)}
    xm = np.where(finite, x, np.nan)
    out["min"] = np.nanmin(xm, 0)
    out["max"] = np.nanmax(xm, 0)
    out["absmax"] = np.nanmax(np.abs(xm), 0)
    mean = np.nanmean(xm, 0)
    d = xm - mean
    m2 = np.nanmean(d**2, 0)
    out["mean"] = mean
    out["std"] = np.sqrt(m2)
    out["skewness"] = np.nanmean(d**3, 0) / m2**1.5
    out["kurtosis"] = np.nanmean(d**4, 0) / m2**2
    f = (np.log10(np.abs(xm)) - lo) * (n_bins / (hi - lo))
    b = np.clip(np.floor(np.nan_to_num(f, nan=0.0, neginf=-1.0)), 0, n_bins - 1).astype(int)
    hist = np.zeros((x.shape[1], n_bins), np.int64)
    for c in range(x.shape[1]):
        hist[c] = np.bincount(b[finite[:, c], c], minlength=n_bins)
    out["hist"] = hist
    return out


def make(tokens=500, channels=70, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, channels)).astype(np.float32)
    x *= np.float32(10.0) ** rng.uniform(-3, 2, channels).astype(np.float32)  # varied scales
    x[:, 1] = rng.standard_t(3, tokens) * 5 + 2  # heavy tails, offset mean
    x[:, 2] = np.abs(x[:, 2]) ** 3  # skewed
    x[::7, 3] = 0.0  # exact zeros
    x[5, 4] = np.nan
    x[9, 4] = np.inf
    x[11, 5] = -np.inf
    return x


SPLITS = [[500], [1, 499], [250, 250], [3, 97, 400], [100] * 5, [499, 1]]


@pytest.mark.parametrize("split", SPLITS)
def test_streaming_equals_numpy(split):
    x = make()
    state = kn.new_channel_stats(x.shape[1], n_bins=32, lo=-6.0, hi=3.0)
    start = 0
    for n in split:
        kn.update_channel_stats(state, x[start:start + n])
        start += n
    ref = ref_stats(x, 32, -6.0, 3.0)
    summ = kn.finalize_channel_stats(state)
    np.testing.assert_array_equal(state.count, ref["count"])
    np.testing.assert_array_equal(state.nonfinite, ref["nonfinite"])
    np.testing.assert_array_equal(state.hist, ref["hist"])
    np.testing.assert_array_equal(summ.min, ref["min"])
    np.testing.assert_array_equal(summ.max, ref["max"])
    np.testing.assert_array_equal(summ.absmax, ref["absmax"])
    for key in ("mean", "std", "skewness", "kurtosis"):
        np.testing.assert_allclose(getattr(summ, key), ref[key], rtol=1e-9, atol=1e-12, err_msg=key)
    assert state.hist.sum() == state.count.sum()


def test_merge_equals_single_pass():
    x = make(seed=1)
    whole = kn.update_channel_stats(kn.new_channel_stats(x.shape[1]), x)
    a = kn.update_channel_stats(kn.new_channel_stats(x.shape[1]), x[:123])
    b = kn.update_channel_stats(kn.new_channel_stats(x.shape[1]), x[123:])
    kn.merge_channel_stats(a, b)
    np.testing.assert_array_equal(a.count, whole.count)
    np.testing.assert_array_equal(a.hist, whole.hist)
    for key in ("mean", "m2", "m3", "m4", "min", "max", "absmax"):
        np.testing.assert_allclose(getattr(a, key), getattr(whole, key), rtol=1e-9, atol=1e-9)
    # merging an empty state changes nothing
    before = a.mean.copy()
    kn.merge_channel_stats(a, kn.new_channel_stats(x.shape[1]))
    np.testing.assert_array_equal(a.mean, before)


def test_empty_and_constant_channels():
    x = np.zeros((10, 3), np.float32)
    x[:, 1] = 2.5
    x[:, 2] = np.nan
    st = kn.update_channel_stats(kn.new_channel_stats(3), x)
    s = kn.finalize_channel_stats(st)
    assert s.mean[1] == 2.5 and s.std[1] == 0.0
    assert np.isnan(s.kurtosis[1]) and np.isnan(s.kurtosis[0])  # zero variance
    assert st.count[2] == 0 and st.nonfinite[2] == 10
    assert np.isnan(s.mean[2]) and np.isnan(s.min[2]) and np.isnan(s.absmax[2])
    assert st.hist[0, 0] == 10  # zeros land in the first bin
    # a batch with no tokens is a no-op
    kn.update_channel_stats(st, np.zeros((0, 3), np.float32))
    assert st.count[1] == 10


def test_kurtosis_of_normal_is_three():
    rng = np.random.default_rng(0)
    st = kn.new_channel_stats(4)
    for _ in range(20):
        kn.update_channel_stats(st, rng.standard_normal((5000, 4)).astype(np.float32))
    s = kn.finalize_channel_stats(st)
    np.testing.assert_allclose(s.kurtosis, 3.0, atol=0.05)
    np.testing.assert_allclose(s.std, 1.0, atol=0.01)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=5), st.integers(1, 9),
       st.sampled_from([1e-20, 1.0, 1e20]), st.integers(0, 2**31))
def test_any_split_property(sizes, channels, magnitude, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((sum(sizes), channels)) * magnitude + magnitude).astype(np.float32)
    state = kn.new_channel_stats(channels, n_bins=8, lo=-25.0, hi=25.0)
    start = 0
    for n in sizes:
        kn.update_channel_stats(state, x[start:start + n])
        start += n
    if x.shape[0] == 0:
        assert state.count.sum() == 0
        return
    ref = ref_stats(x, 8, -25.0, 25.0)
    np.testing.assert_array_equal(state.count, ref["count"])
    np.testing.assert_array_equal(state.hist, ref["hist"])
    np.testing.assert_allclose(state.mean, ref["mean"], rtol=1e-9)
    np.testing.assert_allclose(kn.finalize_channel_stats(state).std, ref["std"], rtol=1e-6,
                               atol=1e-12 * magnitude)


def test_input_untouched():
    x = make()
    x0 = x.copy()
    kn.update_channel_stats(kn.new_channel_stats(x.shape[1]), x)
    np.testing.assert_array_equal(x, x0, strict=True)


def test_bad_input():
    st = kn.new_channel_stats(4)
    with pytest.raises(ValueError, match=r"x has 5 channels \(shape \(2, 5\)\) but the state tracks 4"):
        kn.update_channel_stats(st, np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match="x has dtype float64, expected float32"):
        kn.update_channel_stats(st, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="x must be 2-D"):
        kn.update_channel_stats(st, np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="state must be a ChannelStats"):
        kn.update_channel_stats({}, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="histogram edges lo=3.0, hi=1.0 are invalid"):
        kn.new_channel_stats(4, lo=3.0, hi=1.0)
    with pytest.raises(ValueError, match="cannot merge states with different layouts"):
        kn.merge_channel_stats(st, kn.new_channel_stats(4, n_bins=8))
