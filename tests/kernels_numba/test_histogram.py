"""kernels_numba.histogram (the widgets' one-pass error and histogram) against plain numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

import kernels_numba as kn


def ref_error_and_histogram(w, w_hat, lo, hi, n_bins):
    """sse, signal, max |err| in float64, and the histogram of w_hat with out-of-range values in the end bins."""
    a = np.asarray(w, np.float32).ravel().astype(np.float64)
    b = np.asarray(w_hat, np.float32).ravel().astype(np.float64)
    d = b - a
    t = (b - lo) * (n_bins / (hi - lo))
    k = np.where(t >= n_bins, n_bins - 1, np.where(t > 0, np.floor(t), 0)).astype(np.int64)
    hist = np.bincount(k, minlength=n_bins)
    return float((d * d).sum()), float((a * a).sum()), float(np.abs(d).max()) if d.size else 0.0, hist


@pytest.mark.parametrize("shape", [(1,), (7, 3), (64, 129), (300, 300)])
@pytest.mark.parametrize("n_bins", [1, 5, 120])
def test_equals_reference(shape, n_bins):
    rng = np.random.default_rng(n_bins)
    w = rng.standard_normal(shape).astype(np.float32)
    w_hat = (w + rng.normal(scale=0.1, size=shape)).astype(np.float32)
    lo, hi = -2.0, 2.5  # some values fall outside: they land in the end bins
    got = kn.error_and_histogram(w, w_hat, lo, hi, n_bins)
    sse, signal, mx, hist = ref_error_and_histogram(w, w_hat, lo, hi, n_bins)
    np.testing.assert_array_equal(got.hist, hist)
    assert got.hist.sum() == w.size and got.n == w.size
    assert got.max_abs_err == mx  # a maximum does not depend on the order
    assert got.sse == pytest.approx(sse, rel=1e-12) and got.signal == pytest.approx(signal, rel=1e-12)
    np.testing.assert_array_equal(got.edges, np.linspace(lo, hi, n_bins + 1))
    assert got.mse == pytest.approx(sse / w.size, rel=1e-12)
    assert got.sqnr_db == pytest.approx(10 * math.log10(signal / sse), rel=1e-12)


def test_is_an_error_stats_with_the_same_properties():
    w = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    h = kn.error_and_histogram(w, w, 0.0, 4.0, 4)
    assert isinstance(h, kn.ErrorStats)
    assert h.sse == 0.0 and h.sqnr_db == math.inf and h.hist.tolist() == [1, 1, 1, 1]
    z = kn.error_and_histogram(np.zeros(3, np.float32), np.ones(3, np.float32), 0.0, 1.0, 2)
    assert z.sqnr_db == -math.inf and z.hist.tolist() == [0, 3]


def test_bad_input():
    w = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="same shape"):
        kn.error_and_histogram(w, np.zeros(3, np.float32), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"finite with hi > lo; got \[1.0, 1.0\]"):
        kn.error_and_histogram(w, w, 1.0, 1.0)
    with pytest.raises(ValueError, match="n_bins must be a positive int; got 0"):
        kn.error_and_histogram(w, w, 0.0, 1.0, 0)
