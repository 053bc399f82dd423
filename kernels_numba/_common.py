"""Pieces shared by several kernels: error statistics and float16 scale rounding."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from ._bits import ABS_MASK, I32, U64, f32_bits, span

F16_MAX = 65504.0
F16_MIN_SUBNORMAL = 2.0**-24  # smallest positive float16
F32_MIN_NORMAL = 2.0**-126  # smallest normal float32; 1/scale stays finite above it


@dataclass(frozen=True)
class ErrorStats:
    """Reconstruction error of a quantizer, accumulated in float64 in the kernel pass.

    Attributes
    ----------
    sse : float
        Sum of squared errors, ``sum((x_hat - x)**2)``.
    signal : float
        Signal energy, ``sum(x**2)``.
    max_abs_err : float
        ``max(|x_hat - x|)``.
    n : int
        Number of elements.
    """

    sse: float
    signal: float
    max_abs_err: float
    n: int

    @property
    def mse(self) -> float:
        """Mean squared error, ``sse / n`` (0.0 for an empty input)."""
        return self.sse / self.n if self.n else 0.0

    @property
    def sqnr_db(self) -> float:
        """Signal-to-quantization-noise ratio ``10*log10(signal/sse)`` in dB (+inf when sse == 0)."""
        if self.sse == 0.0:
            return math.inf
        if self.signal == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.signal / self.sse)


def error_stats(sse, signal, max_abs_err, n: int) -> ErrorStats:
    """Build an :class:`ErrorStats` from per-row partial sums (arrays or scalars)."""
    return ErrorStats(
        sse=float(np.sum(sse, dtype=np.float64)),
        signal=float(np.sum(signal, dtype=np.float64)),
        max_abs_err=float(np.max(max_abs_err)) if np.size(max_abs_err) else 0.0,
        n=int(n),
    )


@njit(cache=True)
def round_to_f16(v):
    """Round a non-negative float64 to the nearest float16 value (ties to even).

    Returns ``inf`` past float16's range (>= 65520) and handles float16
    subnormals (spacing 2**-24). Equal to ``np.float16(v)`` for every finite v >= 0.
    """
    if v == 0.0:
        return 0.0
    m, e = math.frexp(v)  # v = m * 2**e, 0.5 <= m < 1
    s = e - 11  # float16 keeps 11 significant bits
    if s < -24:  # subnormal range: fixed spacing 2**-24
        s = -24
    r = math.ldexp(np.rint(math.ldexp(v, -s)), s)
    if r > F16_MAX:
        return np.inf
    return r


@njit(cache=True)
def f16_spacing(r):
    """Gap between the positive float16 value ``r`` and the next float16 above it."""
    if r < 2.0**-14:  # subnormal float16: fixed spacing
        return F16_MIN_SUBNORMAL
    m, e = math.frexp(r)  # r = m * 2**e, 0.5 <= m < 1
    return math.ldexp(1.0, e - 11)


@njit(cache=True)
def store_scale(scale, f16, steps):
    """Round a positive float64 scale to its storage dtype; never returns 0 or NaN.

    ``steps`` is how many steps of the grid span the range the scale was made
    for (``2**bits - 1`` asymmetric, ``2**(bits-1) - 1`` symmetric). The scale
    rounds to the nearest float16 unless that would make the grid stop short of
    the range by more than half a step (possible only among float16's
    subnormals, below 6.1e-5, where the relative spacing is coarse); then it
    rounds up, so every value in the range stays within half a step of a code.
    A zero scale (all-zero group) becomes 1.0, so codes equal the zero point and
    dequantize to exactly 0. A scale below the storage dtype's smallest usable
    value is raised to it. Returns +inf when a float16 scale overflows (the
    wrapper reports it).
    """
    if scale == 0.0:
        return 1.0
    if f16:
        r = round_to_f16(scale)
        if r == 0.0:
            r = F16_MIN_SUBNORMAL
        if (scale - r) * steps > 0.5 * r:
            r = r + f16_spacing(r)
        return r
    r = np.float64(np.float32(scale))
    if r < F32_MIN_NORMAL:
        r = F32_MIN_NORMAL
    return r


@njit(cache=True, fastmath={"reassoc"})
def err_sums(x, r, c0, y, yr, yc0, n):
    """Error sums of ``y[yr, yc0:yc0+n]`` (x_hat) against ``x[r, c0:c0+n]``, both float32.

    Returns ``(sum (y-x)**2, sum x**2, max |y-x| as float32 bits)``. The sums are float64;
    "reassoc" only reorders them so that they vectorise. x_hat is read from memory, computed
    beforehand by strict (flag-free) code.
    """
    sse = 0.0
    sig = 0.0
    mx = I32(0)
    cu = U64(c0)
    yu = U64(yc0)
    for k in span(0, n):
        v = x[r, cu + k]
        xh = y[yr, yu + k]
        v64 = np.float64(v)
        d = np.float64(xh) - v64
        sse += d * d
        sig += v64 * v64
        mx = I32(max(mx, I32(f32_bits(xh - v) & ABS_MASK)))
    return sse, sig, mx
