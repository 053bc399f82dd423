"""Streaming per-channel statistics for activation capture.

Activations arrive in batches ``x [tokens, channels]``; the caller owns a
:class:`ChannelStats` state and feeds every batch to
:func:`update_channel_stats`, which updates it in place (the one sanctioned
in-place write of this package). Memory stays bounded: per channel a count,
min, max, absmax, mean and the central moment sums M2, M3, M4, a fixed-bin
histogram of ``log10|x|`` and a count of skipped NaN/Inf values.

Each batch is reduced with a two-pass algorithm (mean first, then central
moments), and merged into the running state with the pairwise formulas of
Chan et al. (1979) and Pébay (2008), so the result does not depend on how the
data was split into batches (up to float64 rounding).

Histogram: ``n_bins`` equal bins of ``log10|x|`` over ``[lo, hi)``; values below
``10**lo`` (including exact zeros) count in the first bin, values at or above
``10**hi`` in the last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from ._bits import U64
from ._checks import check_array, check_int

__all__ = [
    "ChannelStats",
    "ChannelSummary",
    "new_channel_stats",
    "update_channel_stats",
    "merge_channel_stats",
    "finalize_channel_stats",
]

_BLOCK = 64  # channels per parallel task


@dataclass(eq=False)
class ChannelStats:
    """Running statistics for ``channels`` channels; arrays are updated in place.

    Attributes
    ----------
    count : np.ndarray
        int64 ``[channels]``: finite values seen.
    min, max, absmax : np.ndarray
        float64 ``[channels]`` (``+inf``, ``-inf``, ``0`` before any value).
    mean, m2, m3, m4 : np.ndarray
        float64 ``[channels]``: running mean and sums of 2nd/3rd/4th powers of deviations.
    hist : np.ndarray
        int64 ``[channels, n_bins]``: counts of ``log10|x|`` in ``n_bins`` bins over ``[lo, hi)``.
    nonfinite : np.ndarray
        int64 ``[channels]``: NaN/Inf values skipped.
    lo, hi : float
        log10 edges of the histogram.
    """

    count: np.ndarray  # [channels] int64
    min: np.ndarray  # [channels] float64
    max: np.ndarray  # [channels] float64
    absmax: np.ndarray  # [channels] float64
    mean: np.ndarray  # [channels] float64
    m2: np.ndarray  # [channels] float64
    m3: np.ndarray  # [channels] float64
    m4: np.ndarray  # [channels] float64
    hist: np.ndarray  # [channels, n_bins] int64
    nonfinite: np.ndarray  # [channels] int64
    lo: float
    hi: float

    @property
    def channels(self) -> int:
        """Number of channels."""
        return self.count.shape[0]

    @property
    def bin_edges(self) -> np.ndarray:
        """float64 ``[n_bins + 1]``: histogram edges in log10|x|."""
        return np.linspace(self.lo, self.hi, self.hist.shape[1] + 1)


@dataclass(frozen=True, eq=False)
class ChannelSummary:
    """Final per-channel statistics (float64 ``[channels]`` each; NaN where undefined).

    ``std`` is the population standard deviation (ddof=0); ``kurtosis`` is Pearson's
    (a normal distribution gives 3); ``skewness`` is the Fisher-Pearson coefficient.
    """

    count: np.ndarray
    min: np.ndarray
    max: np.ndarray
    absmax: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    skewness: np.ndarray
    kurtosis: np.ndarray
    nonfinite: np.ndarray


def new_channel_stats(channels, n_bins=64, lo=-8.0, hi=4.0) -> ChannelStats:
    """Create an empty running state for ``channels`` channels.

    Parameters
    ----------
    channels : int
        Number of channels (columns of the batches to come).
    n_bins : int
        Histogram bins of ``log10|x|``.
    lo, hi : float
        Histogram range in log10 units (default ``1e-8 .. 1e4``).

    Returns
    -------
    ChannelStats

    Examples
    --------
    >>> st = new_channel_stats(3)
    >>> st.hist.shape
    (3, 64)
    """
    channels = check_int(channels, "channels", 1, 2**40, " Pass the number of channels.")
    n_bins = check_int(n_bins, "n_bins", 1, 1 << 20)
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(
            f"histogram edges lo={lo}, hi={hi} are invalid: expected finite log10 values with "
            f"lo < hi, e.g. lo=-8.0, hi=4.0 for |x| from 1e-8 to 1e4."
        )
    return ChannelStats(
        count=np.zeros(channels, np.int64),
        min=np.full(channels, np.inf),
        max=np.full(channels, -np.inf),
        absmax=np.zeros(channels),
        mean=np.zeros(channels),
        m2=np.zeros(channels),
        m3=np.zeros(channels),
        m4=np.zeros(channels),
        hist=np.zeros((channels, n_bins), np.int64),
        nonfinite=np.zeros(channels, np.int64),
        lo=lo,
        hi=hi,
    )


@njit(cache=True)
def _merge_one(na, ma, m2a, m3a, m4a, nb, mb, m2b, m3b, m4b):
    """Pébay's pairwise update of (n, mean, M2, M3, M4); returns the merged tuple."""
    if nb == 0:
        return na, ma, m2a, m3a, m4a
    if na == 0:
        return nb, mb, m2b, m3b, m4b
    n = na + nb
    fa = np.float64(na)
    fb = np.float64(nb)
    fn = np.float64(n)
    d = mb - ma
    dn = d / fn
    mean = ma + dn * fb
    m2 = m2a + m2b + d * dn * fa * fb
    m3 = m3a + m3b + d * dn * dn * fa * fb * (fa - fb) + 3.0 * dn * (fa * m2b - fb * m2a)
    m4 = (m4a + m4b + d * dn * dn * dn * fa * fb * (fa * fa - fa * fb + fb * fb)
          + 6.0 * dn * dn * (fa * fa * m2b + fb * fb * m2a) + 4.0 * dn * (fa * m3b - fb * m3a))
    return n, mean, m2, m3, m4


@njit(cache=True, parallel=True)
def _update_kernel(x, count, mn, mx, amax, mean, m2, m3, m4, hist, nonfinite, lo, hi):
    # x [tokens, channels] float32; state arrays [channels]; hist [channels, n_bins]
    # x is read as x[t, c0 + k] with unsigned offsets: no per-token slice (an atomic
    # reference-count update each) and no negative-index wraparound
    tokens, channels = x.shape
    n_bins = hist.shape[1]
    scale = n_bins / (hi - lo)
    n_blocks = (channels + _BLOCK - 1) // _BLOCK
    for blk in prange(n_blocks):
        c0 = blk * _BLOCK
        c1 = min(c0 + _BLOCK, channels)
        w = c1 - c0
        bn = np.zeros(w, np.int64)  # batch count
        bs = np.zeros(w)  # batch sum
        bmin = np.full(w, np.inf)
        bmax = np.full(w, -np.inf)
        bbad = np.zeros(w, np.int64)
        # pass 1: count, sum, min, max, histogram, non-finite
        cu = U64(c0)
        for t in range(tokens):
            for k in range(w):
                v = np.float64(x[t, cu + U64(k)])
                if not math.isfinite(v):
                    bbad[k] += 1
                    continue
                bn[k] += 1
                bs[k] += v
                bmin[k] = min(bmin[k], v)
                bmax[k] = max(bmax[k], v)
                a = abs(v)
                if a == 0.0:
                    b = 0
                else:
                    f = (math.log10(a) - lo) * scale
                    if f < 0.0:
                        b = 0
                    elif f >= n_bins:
                        b = n_bins - 1
                    else:
                        b = int(f)
                hist[c0 + k, b] += 1
        bmean = np.zeros(w)
        for k in range(w):
            if bn[k] > 0:
                bmean[k] = bs[k] / bn[k]
        # pass 2: central moments of the batch around its own mean
        b2 = np.zeros(w)
        b3 = np.zeros(w)
        b4 = np.zeros(w)
        for t in range(tokens):
            for k in range(w):
                v = np.float64(x[t, cu + U64(k)])
                if not math.isfinite(v):
                    continue
                d = v - bmean[k]
                d2 = d * d
                b2[k] += d2
                b3[k] += d2 * d
                b4[k] += d2 * d2
        # merge the batch into the running state
        for k in range(w):
            c = c0 + k
            nonfinite[c] += bbad[k]
            if bn[k] == 0:
                continue
            mn[c] = min(mn[c], bmin[k])
            mx[c] = max(mx[c], bmax[k])
            amax[c] = max(amax[c], max(-bmin[k], bmax[k]))
            n, mu, s2, s3, s4 = _merge_one(count[c], mean[c], m2[c], m3[c], m4[c],
                                           bn[k], bmean[k], b2[k], b3[k], b4[k])
            count[c] = n
            mean[c] = mu
            m2[c] = s2
            m3[c] = s3
            m4[c] = s4


# Finite inputs only, so NaN/Inf need not be honoured; but no "contract" (FMA where the CPU
# has it) and no "reassoc": the statistics are the same bits on every x86 CPU
# (tests/kernels_numba/test_cpu_independence.py). The loops vectorise across channels.
_FINITE_MATH = {"nnan", "ninf", "nsz"}


@njit(cache=True, parallel=True, fastmath=_FINITE_MATH)
def _update_kernel_finite(x, xbits, edges, count, mn, mx, amax, mean, m2, m3, m4, hist, lo, hi):
    # x [tokens, channels] float32, every value finite (the wrapper checks); xbits: the same
    # memory as int32; edges [n_bins + 1] float64: 10**(bin edge), the exact bin thresholds.
    # One pass: sums of powers of (x - K) about a per-channel shift K (the running mean, or the
    # batch's first value), converted to central moments at the end; min/max; the histogram bin
    # from the float's exponent and mantissa bits (log2 to within 0.09), corrected against edges.
    tokens, channels = x.shape
    n_bins = hist.shape[1]
    scale = n_bins / (hi - lo)
    l10_2 = 0.30102999566398120
    n_blocks = (channels + _BLOCK - 1) // _BLOCK
    for blk in prange(n_blocks):
        c0 = blk * _BLOCK
        c1 = min(c0 + _BLOCK, channels)
        w = c1 - c0
        shift = np.empty(w)
        for k in range(w):
            shift[k] = mean[c0 + k] if count[c0 + k] > 0 else np.float64(x[0, c0 + k])
        s1 = np.zeros(w)
        s2 = np.zeros(w)
        s3 = np.zeros(w)
        s4 = np.zeros(w)
        bmin = np.full(w, np.inf)
        bmax = np.full(w, -np.inf)
        for t in range(tokens):
            for k in range(w):  # vectorisable: no branches
                v = np.float64(x[t, c0 + k])
                d = v - shift[k]
                d2 = d * d
                s1[k] += d
                s2[k] += d2
                s3[k] += d2 * d
                s4[k] += d2 * d2
                bmin[k] = min(bmin[k], v)
                bmax[k] = max(bmax[k], v)
            for k in range(w):
                bits = xbits[t, c0 + k] & 0x7FFFFFFF
                if bits == 0:
                    b = 0
                else:
                    l2 = ((bits >> 23) - 127) + (bits & 0x7FFFFF) * (1.0 / 8388608.0)
                    f = (l2 * l10_2 - lo) * scale
                    b = 0 if f < 0.0 else (n_bins - 1 if f >= n_bins else int(f))
                    a = abs(np.float64(x[t, c0 + k]))
                    while b + 1 < n_bins and a >= edges[b + 1]:
                        b += 1
                    while b > 0 and a < edges[b]:
                        b -= 1
                hist[c0 + k, b] += 1
        fn = np.float64(tokens)
        for k in range(w):
            c = c0 + k
            md = s1[k] / fn
            bm2 = s2[k] - fn * md * md
            bm3 = s3[k] - 3.0 * md * s2[k] + 2.0 * fn * md * md * md
            bm4 = s4[k] - 4.0 * md * s3[k] + 6.0 * md * md * s2[k] - 3.0 * fn * md * md * md * md
            mn[c] = min(mn[c], bmin[k])
            mx[c] = max(mx[c], bmax[k])
            amax[c] = max(amax[c], max(-bmin[k], bmax[k]))
            n, mu, t2, t3, t4 = _merge_one(count[c], mean[c], m2[c], m3[c], m4[c],
                                           tokens, shift[k] + md, max(bm2, 0.0), bm3, max(bm4, 0.0))
            count[c] = n
            mean[c] = mu
            m2[c] = t2
            m3[c] = t3
            m4[c] = t4


@njit(cache=True, parallel=True)
def _merge_kernel(count, mn, mx, amax, mean, m2, m3, m4, hist, nonfinite,
                  count_b, mn_b, mx_b, amax_b, mean_b, m2_b, m3_b, m4_b, hist_b, nonfinite_b):
    # every array [channels] (hist [channels, n_bins]); the first set is updated in place
    for c in prange(count.shape[0]):
        n, mu, s2, s3, s4 = _merge_one(count[c], mean[c], m2[c], m3[c], m4[c],
                                       count_b[c], mean_b[c], m2_b[c], m3_b[c], m4_b[c])
        count[c] = n
        mean[c] = mu
        m2[c] = s2
        m3[c] = s3
        m4[c] = s4
        mn[c] = min(mn[c], mn_b[c])
        mx[c] = max(mx[c], mx_b[c])
        amax[c] = max(amax[c], amax_b[c])
        nonfinite[c] += nonfinite_b[c]
        for b in range(hist.shape[1]):
            hist[c, b] += hist_b[c, b]


def _check_state(state, name="state") -> ChannelStats:
    if not isinstance(state, ChannelStats):
        raise TypeError(
            f"{name} must be a ChannelStats from new_channel_stats(), got {type(state).__name__}."
        )
    return state


def update_channel_stats(state: ChannelStats, x) -> ChannelStats:
    """Fold one batch of activations into ``state``, in place.

    NaN/Inf values are skipped and counted in ``state.nonfinite``.

    Parameters
    ----------
    state : ChannelStats
        From :func:`new_channel_stats`; its arrays are updated in place.
    x : np.ndarray
        float32 ``[tokens, channels]`` (flatten batch and sequence dims into tokens first).

    Returns
    -------
    ChannelStats
        ``state`` itself, for chaining.

    Examples
    --------
    >>> st = new_channel_stats(2)
    >>> _ = update_channel_stats(st, np.array([[1.0, -2.0], [3.0, 4.0]], np.float32))
    >>> st.mean, st.absmax
    (array([2., 1.]), array([3., 4.]))
    """
    state = _check_state(state)
    x = check_array(x, "x", dtype=np.float32, ndim=2)  # [tokens, channels]
    if x.shape[1] != state.channels:
        raise ValueError(
            f"x has {x.shape[1]} channels (shape {x.shape}) but the state tracks "
            f"{state.channels}; expected x of shape [tokens, {state.channels}]. Reshape to "
            f"x.reshape(-1, {state.channels}) or create the state with new_channel_stats({x.shape[1]})."
        )
    s = state
    if x.shape[0] and np.isfinite(x).all():
        x = np.ascontiguousarray(x)
        edges = 10.0 ** np.linspace(s.lo, s.hi, s.hist.shape[1] + 1)  # [n_bins + 1] thresholds
        _update_kernel_finite(x, x.view(np.int32), edges, s.count, s.min, s.max, s.absmax, s.mean,
                              s.m2, s.m3, s.m4, s.hist, s.lo, s.hi)
    else:  # the general kernel skips and counts NaN/Inf
        _update_kernel(x, s.count, s.min, s.max, s.absmax, s.mean, s.m2, s.m3, s.m4, s.hist,
                       s.nonfinite, s.lo, s.hi)
    return state


def merge_channel_stats(state: ChannelStats, other: ChannelStats) -> ChannelStats:
    """Merge ``other`` (e.g. from another worker) into ``state``, in place.

    Parameters
    ----------
    state, other : ChannelStats
        Same number of channels and the same histogram bins.

    Returns
    -------
    ChannelStats
        ``state``.

    Examples
    --------
    >>> a, b = new_channel_stats(1), new_channel_stats(1)
    >>> _ = update_channel_stats(a, np.array([[1.0]], np.float32))
    >>> _ = update_channel_stats(b, np.array([[3.0]], np.float32))
    >>> merge_channel_stats(a, b).mean
    array([2.])
    """
    state = _check_state(state)
    other = _check_state(other, "other")
    if (other.hist.shape != state.hist.shape or other.lo != state.lo or other.hi != state.hi):
        raise ValueError(
            f"cannot merge states with different layouts: hist {state.hist.shape} over "
            f"[{state.lo}, {state.hi}) vs {other.hist.shape} over [{other.lo}, {other.hi}); "
            f"create both with the same new_channel_stats(channels, n_bins, lo, hi)."
        )
    a, b = state, other
    _merge_kernel(a.count, a.min, a.max, a.absmax, a.mean, a.m2, a.m3, a.m4, a.hist, a.nonfinite,
                  b.count, b.min, b.max, b.absmax, b.mean, b.m2, b.m3, b.m4, b.hist, b.nonfinite)
    return state


def finalize_channel_stats(state: ChannelStats) -> ChannelSummary:
    """Mean, std, skewness and kurtosis per channel from a running state (not modified).

    Parameters
    ----------
    state : ChannelStats

    Returns
    -------
    ChannelSummary
        NaN for the moments of channels with no finite value; NaN skewness/kurtosis
        where the variance is 0.

    Examples
    --------
    >>> st = new_channel_stats(1)
    >>> _ = update_channel_stats(st, np.array([[1.0], [2.0], [3.0], [4.0]], np.float32))
    >>> round(float(finalize_channel_stats(st).kurtosis[0]), 2)
    1.64
    """
    s = _check_state(state)
    n = s.count.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        has = n > 0
        var = np.where(has, s.m2 / n, np.nan)
        mean = np.where(has, s.mean, np.nan)
        pos = has & (s.m2 > 0)
        skew = np.where(pos, np.sqrt(n) * s.m3 / s.m2**1.5, np.nan)
        kurt = np.where(pos, n * s.m4 / (s.m2 * s.m2), np.nan)
    return ChannelSummary(
        count=s.count.copy(),
        min=np.where(has, s.min, np.nan),
        max=np.where(has, s.max, np.nan),
        absmax=np.where(has, s.absmax, np.nan),
        mean=mean,
        std=np.sqrt(var),
        skewness=skew,
        kurtosis=kurt,
        nonfinite=s.nonfinite.copy(),
    )
