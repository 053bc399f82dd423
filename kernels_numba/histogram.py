"""One-pass error statistics and the histogram of the reconstruction, for the live widgets.

A control change re-quantizes one layer; for a 4096 × 4096 layer numpy would
walk the 16.7M weights four times (difference, squares, histogram, maximum).
:func:`error_and_histogram` does it in one parallel pass.

Examples
--------
>>> import numpy as np
>>> w = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
>>> st = error_and_histogram(w, w + np.float32(0.5), lo=0.0, hi=4.0, n_bins=4)
>>> st.sse, st.signal, st.hist.tolist()
(1.0, 14.0, [1, 1, 1, 1])
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from ._common import ErrorStats

__all__ = ["ErrorHistogram", "error_and_histogram"]


@njit(parallel=True, cache=True, nogil=True)
def _err_hist_kernel(w, w_hat, lo, inv_width, hist, sse, signal, maxerr):  # pragma: no cover - jitted
    # w, w_hat: [n] float32; hist: [chunks, bins] int64; sse, signal, maxerr: [chunks] float64
    chunks, n_bins = hist.shape
    n = w.size
    step = (n + chunks - 1) // chunks
    for c in prange(chunks):
        s = 0.0
        g = 0.0
        m = 0.0
        for i in range(c * step, min(n, (c + 1) * step)):
            x = np.float64(w[i])
            y = np.float64(w_hat[i])
            d = y - x
            s += d * d
            g += x * x
            if abs(d) > m:
                m = abs(d)
            t = (y - lo) * inv_width
            k = 0
            if t >= n_bins:
                k = n_bins - 1
            elif t > 0:
                k = int(t)
            hist[c, k] += 1
        sse[c] = s
        signal[c] = g
        maxerr[c] = m


@dataclass(frozen=True)
class ErrorHistogram(ErrorStats):
    """Error of ``w_hat`` against ``w`` (an :class:`ErrorStats`: ``.mse``, ``.sqnr_db``) and the histogram of ``w_hat``.

    Attributes
    ----------
    sse, signal, max_abs_err, n
        As in :class:`ErrorStats`: ``sum((w_hat - w)^2)``, ``sum(w^2)``, ``max|w_hat - w|``, weights.
    hist : np.ndarray
        int64 ``[n_bins]`` counts of ``w_hat`` (values outside the range land in the end bins).
    edges : np.ndarray
        float64 ``[n_bins + 1]`` bin edges.
    """

    hist: np.ndarray
    edges: np.ndarray


def error_and_histogram(w: np.ndarray, w_hat: np.ndarray, lo: float, hi: float, n_bins: int = 120) -> ErrorHistogram:
    """Error statistics of ``w_hat`` against ``w`` and the histogram of ``w_hat`` on ``[lo, hi]``, in one pass.

    Parameters
    ----------
    w, w_hat
        Arrays of the same shape (read as float32; not modified).
    lo, hi
        Histogram range (``hi > lo``).
    n_bins
        Number of equal-width bins.

    Examples
    --------
    >>> h = error_and_histogram(np.zeros(4, np.float32), np.full(4, 0.5, np.float32), lo=-1.0, hi=1.0, n_bins=2)
    >>> h.sse, h.max_abs_err, h.hist.tolist()
    (1.0, 0.5, [0, 4])
    """
    a = np.ascontiguousarray(w, dtype=np.float32).reshape(-1)
    b = np.ascontiguousarray(w_hat, dtype=np.float32).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"w and w_hat must have the same shape; got {np.shape(w)} and {np.shape(w_hat)}.")
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"The histogram range must be finite with hi > lo; got [{lo}, {hi}].")
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int; got {n_bins!r}.")
    chunks = max(1, min(64, numba.get_num_threads() * 4, a.size))
    hist = np.zeros((chunks, n_bins), np.int64)
    sse, signal, maxerr = np.zeros(chunks), np.zeros(chunks), np.zeros(chunks)
    _err_hist_kernel(a, b, float(lo), n_bins / (hi - lo), hist, sse, signal, maxerr)
    return ErrorHistogram(
        float(sse.sum()), float(signal.sum()), float(maxerr.max()) if maxerr.size else 0.0,
        int(a.size), hist.sum(0), np.linspace(lo, hi, n_bins + 1),
    )
