"""The five legacy GGUF types without an importance matrix, one fused pass per row.

``quantize_row_q{4,5}_{0,1}_ref`` and ``quantize_row_q8_0_ref`` of ggml, bit for
bit, written so that LLVM vectorises every loop over a 32-weight block: the
scans run on the float32 bit patterns (integer max/min, no float compares),
the block's type is a compile-time constant of each kernel, and the finiteness
check rides along in the first scan (the wrapper raises on the flag, so the
input is read once). :mod:`kernels_numba.gguf` calls these for
Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 when no importance matrix is given; the searches
(imatrix, IQ4_NL) stay in its general row kernel.

Ties are ggml's: the signed value of the first largest ``|x|`` (Q4_0, Q5_0),
the first of equal minima and maxima (Q4_1, Q5_1, which matters only for the
sign of a zero), C's truncating float-to-int casts, and ``roundf`` (half away
from zero) for Q8_0.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._bits import ABS_MASK, EXP_MASK, I32, U64, bits_f32, f32_bits, f32_to_f16_bits, min_i32, order_key, span, trunc_i32

F = np.float32
U32 = np.uint32


@njit(cache=True, inline="always")
def _put16(out, o, f):
    h = f32_to_f16_bits(f)
    out[o] = h & 0xFF
    out[o + U64(1)] = h >> 8


@njit(cache=True, inline="always")
def _block_range(x, xo):
    """``(min, max, exponent bits)`` of x[xo:xo+32] from integer keys that sort like the floats (vectorises)."""
    lo_key = I32(0x7FFFFFFF)
    hi_key = I32(-0x80000000)
    ex = I32(0)
    for j in span(xo, 32):
        bits = f32_bits(x[j])
        t = order_key(bits)
        lo_key = I32(min(lo_key, t))
        hi_key = I32(max(hi_key, t))
        ex = I32(max(ex, I32(bits & EXP_MASK)))
    return bits_f32(order_key(lo_key)), bits_f32(order_key(hi_key)), ex


@njit(cache=True, inline="always")
def _first_with_abs(x, xo, m):
    """Index (0..31) of the first ``|x[xo + j]|`` whose bits are ``m``."""
    first = I32(32)
    for j in range(32):
        if I32(f32_bits(x[xo + U64(j)]) & ABS_MASK) == m:
            first = min(first, I32(j))
    return first


@njit(cache=True, inline="always")
def _pack(q, out, qs, qh_at, five, blk):
    """Codes ``q[32]`` as ggml stores them: nibbles (j low, j + 16 high) at ``qs``; with ``five`` the 5th bits at ``qh_at``."""
    h = U64(blk // 2)
    for j in span(0, h):
        out[qs + j] = (q[j] & 0xF) | ((q[j + h] & 0xF) << 4)
    if five:
        qh = I32(0)
        for j in range(blk):
            qh |= ((q[j] >> 4) & 1) << j
        for k in range(4):
            out[qh_at + U64(k)] = (qh >> (8 * k)) & 0xFF


@njit(cache=True, inline="always")
def _row_symmetric(x, out, nmax, five, blk):
    """Q4_0 (nmax 8) or Q5_0 (nmax 16, ``five``): d = (first largest |x|, signed) / -nmax; False if not finite."""
    q = np.empty(32, np.int32)
    ts = U64(22) if five else U64(18)
    top = I32(2 * nmax - 1)
    half = F(nmax + 0.5)
    ex = I32(0)
    for b in range(x.shape[0] // 32):
        xo = U64(32 * b)
        o = ts * U64(b)
        mn, mx, e = _block_range(x, xo)
        ex = I32(max(ex, e))
        a_mn = I32(f32_bits(mn) & ABS_MASK)
        a_mx = I32(f32_bits(mx) & ABS_MASK)
        if a_mn == a_mx:  # -a and +a (or all zeros): ggml keeps the first one, and +0.0 for zeros
            mx = x[xo + U64(_first_with_abs(x, xo, a_mx))] if a_mx != 0 else F(0.0)
        else:  # the side with the larger |x| (a select, not a branch)
            mx = bits_f32(I32(f32_bits(mn)) if a_mn > a_mx else I32(f32_bits(mx)))
        d = mx / F(-nmax)
        idd = F(1.0) / d if d != F(0.0) else F(0.0)
        _put16(out, o, d)
        qs = o + U64(6) if five else o + U64(2)
        for j in span(0, blk):
            q[j] = min_i32(top, trunc_i32(x[xo + j] * idd + half))  # C's (int8_t) cast truncates
        _pack(q, out, qs, o + U64(2), five, blk)
    return ex != EXP_MASK


@njit(cache=True, inline="always")
def _first_zero(x, xo):
    """The first zero (either sign) of x[xo:xo+32]: C's ``v < min`` keeps the first of equal values."""
    return x[xo + U64(_first_with_abs(x, xo, I32(0)))]


@njit(cache=True, inline="always")
def _row_affine(x, out, nmax, five, blk):
    """Q4_1 (nmax 8) or Q5_1 (nmax 16, ``five``): d = (max - min) / (2 nmax - 1), m = min; False if not finite."""
    q = np.empty(32, np.int32)
    ts = U64(24) if five else U64(20)
    top = I32(2 * nmax - 1)
    levels = F(2 * nmax - 1)
    ex = I32(0)
    for b in range(x.shape[0] // 32):
        xo = U64(32 * b)
        o = ts * U64(b)
        mn, mx, e = _block_range(x, xo)
        ex = I32(max(ex, e))
        if mn == F(0.0):  # -0.0 and 0.0 compare equal in C: the first one seen is kept
            mn = _first_zero(x, xo)
        if mx == F(0.0):
            mx = _first_zero(x, xo)
        d = (mx - mn) / levels
        idd = F(1.0) / d if d != F(0.0) else F(0.0)
        _put16(out, o, d)
        _put16(out, o + U64(2), mn)
        qs = o + U64(8) if five else o + U64(4)
        for j in span(0, blk):
            q[j] = min_i32(top, trunc_i32((x[xo + j] - mn) * idd + F(0.5)))
        _pack(q, out, qs, o + U64(4), five, blk)
    return ex != EXP_MASK


@njit(cache=True, inline="always")
def _row_q8_0(x, out, blk):
    """Q8_0: d = max |x| / 127, codes roundf(x / d); False if not finite."""
    ex = I32(0)
    for b in range(x.shape[0] // 32):
        xo = U64(32 * b)
        o = U64(34 * b)
        mn, mx, e = _block_range(x, xo)
        ex = I32(max(ex, e))
        d = max(abs(mn), abs(mx)) / F(127.0)
        idd = F(1.0) / d if d != F(0.0) else F(0.0)
        _put16(out, o, d)
        for j in span(0, blk):
            v = np.float64(x[xo + j] * idd)  # roundf: half away from zero (exact in float64)
            out[o + U64(2) + j] = trunc_i32(v + np.copysign(0.5, v)) & 0xFF
    return ex != EXP_MASK


@njit(cache=True, parallel=True)
def q4_0_rows(x, out, finite, blk):
    # x [rows, cols] float32 C-contiguous; out [rows, cols // 32 * 18] uint8; finite [rows] bool
    # blk: 32, passed at run time so LLVM vectorises the block loops with run-time alias checks
    # (a constant trip count gets them fully unrolled, and then x, out and the codes might alias)
    for r in prange(x.shape[0]):
        finite[r] = _row_symmetric(x[r], out[r], 8, False, blk)


@njit(cache=True, parallel=True)
def q5_0_rows(x, out, finite, blk):
    for r in prange(x.shape[0]):
        finite[r] = _row_symmetric(x[r], out[r], 16, True, blk)


@njit(cache=True, parallel=True)
def q4_1_rows(x, out, finite, blk):
    for r in prange(x.shape[0]):
        finite[r] = _row_affine(x[r], out[r], 8, False, blk)


@njit(cache=True, parallel=True)
def q5_1_rows(x, out, finite, blk):
    for r in prange(x.shape[0]):
        finite[r] = _row_affine(x[r], out[r], 16, True, blk)


@njit(cache=True, parallel=True)
def q8_0_rows(x, out, finite, blk):
    for r in prange(x.shape[0]):
        finite[r] = _row_q8_0(x[r], out[r], blk)


ROWS = {"Q4_0": q4_0_rows, "Q4_1": q4_1_rows, "Q5_0": q5_0_rows, "Q5_1": q5_1_rows, "Q8_0": q8_0_rows}
"""type name -> ``kernel(x, out, finite, 32)``: quantize every row, flag the rows that are all finite."""
