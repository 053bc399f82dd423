"""The five legacy GGUF types without an importance matrix, one fused pass per row.

``quantize_row_q{4,5}_{0,1}_ref`` and ``quantize_row_q8_0_ref`` of ggml, bit for
bit. The work on a 32-weight block is LLVM vector code: the range scans of
:mod:`._bits` (integer min/max of the float32 bit patterns), and here the
rounding of the 32 weights, their nibble packing and the store, in one step
(:func:`_put_nibbles32`, :func:`_put_round32`). The float16 scales come from
the branch-free :func:`._bits.f32_to_f16_bits`. Finiteness costs nothing
extra: the block scans already give each row's extremes (as order keys, where
NaN and Inf sort beyond every finite value, or as ``|x|`` bits for Q8_0), and
the wrapper raises on a row's flag, so the input is read once.
:mod:`kernels_numba.gguf` calls these for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 when no
importance matrix is given; the searches (imatrix, IQ4_NL) stay in its general
row kernel.

Ties are ggml's: the signed value of the first largest ``|x|`` (Q4_0, Q5_0),
the first of equal minima and maxima (Q4_1, Q5_1, which matters only for the
sign of a zero), C's truncating float-to-int casts, and ``roundf`` (half away
from zero) for Q8_0.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._bits import (
    ABS_MASK,
    EXP_MASK,
    I32,
    NEG_INF_KEY,
    U64,
    abs_bits_max32,
    bits_f32,
    block_vector,
    f32_bits,
    f32_to_f16_bits,
    is_f32_vector_source,
    key_range32,
    order_key,
    splat,
    store_vector,
    vector_reduce,
)

F = np.float32


def _is_u8_row(a) -> bool:
    return isinstance(a, types.Array) and a.dtype == types.uint8 and a.ndim == 1 and a.layout == "C"


def _codes(builder, v, shift, idd, add, top):
    """Codegen: ``min(top, (int32)((v - shift) * idd + add))`` lane by lane (float32 mul and add, as C without FMA)."""
    n = v.type.count
    scaled = builder.fmul(builder.fsub(v, splat(builder, shift, n)), splat(builder, idd, n))
    t = builder.fadd(scaled, splat(builder, add, n))
    c = builder.fptosi(t, ir.VectorType(ir.IntType(32), n))  # C's (int8_t) cast truncates
    top_v = splat(builder, top, n)
    return builder.select(builder.icmp_signed("<", c, top_v), c, top_v)


@intrinsic
def _put_nibbles32(typingctx, x, xo, shift, idd, add, top, out, qs):
    """Codes ``min(top, trunc((x - shift) * idd + add))`` of ``x[xo:xo+32]``, stored as ggml does; returns the 5th bits.

    Byte ``j`` of ``out[qs:qs+16]`` holds weight j's low nibble and weight j + 16's
    high nibble; bit ``j`` of the returned int32 is the 5th bit of weight j's code
    (Q5_0/Q5_1 store it; for the 4-bit types it is unused and LLVM drops it). No
    bounds checks: the row kernels keep both ranges inside their arrays.
    """
    f32 = types.float32
    if not (is_f32_vector_source(x) and _is_u8_row(out) and shift == f32 and idd == f32 and add == f32
            and top == types.int32 and isinstance(xo, types.Integer) and isinstance(qs, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        xt, xot, _, _, _, _, ot, qst = signature.args
        vx, vxo, vshift, vidd, vadd, vtop, vout, vqs = args
        i32 = ir.IntType(32)
        lo_x = block_vector(context, builder, xt, vx, xot, vxo, 16, ir.FloatType())
        hi_at = builder.add(vxo, ir.Constant(vxo.type, 16))
        hi_x = block_vector(context, builder, xt, vx, xot, hi_at, 16, ir.FloatType())
        lo = _codes(builder, lo_x, vshift, vidd, vadd, vtop)
        hi = _codes(builder, hi_x, vshift, vidd, vadd, vtop)
        m4 = splat(builder, ir.Constant(i32, 0xF), 16)
        four = splat(builder, ir.Constant(i32, 4), 16)
        one = splat(builder, ir.Constant(i32, 1), 16)
        byte = builder.or_(builder.and_(lo, m4), builder.shl(builder.and_(hi, m4), four))
        store_vector(context, builder, ot, vout, qst, vqs, builder.trunc(byte, ir.VectorType(ir.IntType(8), 16)))
        at_lo = ir.Constant(ir.VectorType(i32, 16), list(range(16)))  # weight j's 5th bit goes to bit j
        at_hi = ir.Constant(ir.VectorType(i32, 16), list(range(16, 32)))
        lo5 = builder.shl(builder.and_(builder.lshr(lo, four), one), at_lo)
        hi5 = builder.shl(builder.and_(builder.lshr(hi, four), one), at_hi)
        return vector_reduce(builder, "or", builder.or_(lo5, hi5))

    return types.int32(x, xo, shift, idd, add, top, out, qs), codegen


@intrinsic
def _put_round32(typingctx, x, xo, idd, out, o):
    """Store ``roundf(x[xo + j] * idd)`` (the float32 product, rounded half away from zero) as int8 at ``out[o + j]``.

    For j < 32. The rounding adds ``copysign(0.5, v)`` in float64, where it is
    exact, then truncates. No bounds checks.
    """
    if not (is_f32_vector_source(x) and _is_u8_row(out) and idd == types.float32
            and isinstance(xo, types.Integer) and isinstance(o, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        xt, xot, _, ot, oty = signature.args
        vx, vxo, vidd, vout, vo = args
        f64 = ir.DoubleType()
        v = builder.fmul(block_vector(context, builder, xt, vx, xot, vxo, 32, ir.FloatType()), splat(builder, vidd, 32))
        vd = builder.fpext(v, ir.VectorType(f64, 32))
        vt = ir.VectorType(f64, 32)
        cs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt]), "llvm.copysign.v32f64")
        r = builder.fadd(vd, builder.call(cs, [splat(builder, ir.Constant(f64, 0.5), 32), vd]))
        c = builder.fptosi(r, ir.VectorType(ir.IntType(32), 32))
        store_vector(context, builder, ot, vout, oty, vo, builder.trunc(c, ir.VectorType(ir.IntType(8), 32)))
        return context.get_dummy_value()

    return types.none(x, xo, idd, out, o), codegen


@njit(cache=True, inline="always")
def _put16(out, o, f):
    h = f32_to_f16_bits(f)
    out[o] = h & 0xFF
    out[o + U64(1)] = h >> 8


@njit(cache=True, inline="always")
def _put32(out, o, v):
    for k in range(4):
        out[o + U64(k)] = (v >> (8 * k)) & 0xFF


@njit(cache=True, inline="always")
def _first_with_abs(x, xo, m):
    """Index (0..31) of the first ``|x[xo + j]|`` whose bits are ``m``."""
    first = I32(32)
    for j in range(32):
        if I32(f32_bits(x[xo + U64(j)]) & ABS_MASK) == m:
            first = min(first, I32(j))
    return first


@njit(cache=True, inline="always")
def _row_symmetric(x, out, nmax, five):
    """Q4_0 (nmax 8) or Q5_0 (nmax 16, ``five``): d = (first largest |x|, signed) / -nmax; False if not finite."""
    ts = U64(22) if five else U64(18)
    top = I32(2 * nmax - 1)
    half = F(nmax + 0.5)
    row_lo = I32(0x7FFFFFFF)
    row_hi = I32(-0x80000000)
    for b in range(x.shape[0] // 32):
        xo = U64(32 * b)
        o = ts * U64(b)
        lo, hi = key_range32(x, xo)
        row_lo = I32(min(row_lo, lo))
        row_hi = I32(max(row_hi, hi))
        mn = bits_f32(order_key(lo))
        mx = bits_f32(order_key(hi))
        a_mn = I32(f32_bits(mn) & ABS_MASK)
        a_mx = I32(f32_bits(mx) & ABS_MASK)
        if a_mn == a_mx:  # -a and +a (or all zeros): ggml keeps the first one, and +0.0 for zeros
            mx = x[xo + U64(_first_with_abs(x, xo, a_mx))] if a_mx != 0 else F(0.0)
        else:  # the side with the larger |x| (a select, not a branch)
            mx = bits_f32(I32(f32_bits(mn)) if a_mn > a_mx else I32(f32_bits(mx)))
        d = mx / F(-nmax)
        idd = F(1.0) / d if d != F(0.0) else F(0.0)
        _put16(out, o, d)
        qh = _put_nibbles32(x, xo, F(0.0), idd, half, top, out, o + U64(6) if five else o + U64(2))
        if five:
            _put32(out, o + U64(2), qh)
    return row_lo > NEG_INF_KEY and row_hi < EXP_MASK


@njit(cache=True, inline="always")
def _first_zero(x, xo):
    """The first zero (either sign) of x[xo:xo+32]: C's ``v < min`` keeps the first of equal values."""
    return x[xo + U64(_first_with_abs(x, xo, I32(0)))]


@njit(cache=True, inline="always")
def _row_affine(x, out, nmax, five):
    """Q4_1 (nmax 8) or Q5_1 (nmax 16, ``five``): d = (max - min) / (2 nmax - 1), m = min; False if not finite."""
    ts = U64(24) if five else U64(20)
    top = I32(2 * nmax - 1)
    levels = F(2 * nmax - 1)
    row_lo = I32(0x7FFFFFFF)
    row_hi = I32(-0x80000000)
    for b in range(x.shape[0] // 32):
        xo = U64(32 * b)
        o = ts * U64(b)
        lo, hi = key_range32(x, xo)
        row_lo = I32(min(row_lo, lo))
        row_hi = I32(max(row_hi, hi))
        mn = bits_f32(order_key(lo))
        mx = bits_f32(order_key(hi))
        if mn == F(0.0):  # -0.0 and 0.0 compare equal in C: the first one seen is kept
            mn = _first_zero(x, xo)
        if mx == F(0.0):
            mx = _first_zero(x, xo)
        d = (mx - mn) / levels
        idd = F(1.0) / d if d != F(0.0) else F(0.0)
        _put16(out, o, d)
        _put16(out, o + U64(2), mn)
        qh = _put_nibbles32(x, xo, mn, idd, F(0.5), top, out, o + U64(8) if five else o + U64(4))
        if five:
            _put32(out, o + U64(4), qh)
    return row_lo > NEG_INF_KEY and row_hi < EXP_MASK


@njit(cache=True, inline="always")
def _row_q8_0(x, out):
    """Q8_0: d = max |x| / 127, codes roundf(x / d); False if not finite."""
    row_amax = I32(0)
    for b in range(x.shape[0] // 32):
        xo = U64(32 * b)
        o = U64(34 * b)
        amax = abs_bits_max32(x, xo)  # NaN and Inf have the largest |x| bits
        row_amax = I32(max(row_amax, amax))
        d = bits_f32(amax) / F(127.0)
        idd = F(1.0) / d if d != F(0.0) else F(0.0)
        _put16(out, o, d)
        _put_round32(x, xo, idd, out, o + U64(2))
    return row_amax < EXP_MASK


@njit(cache=True, parallel=True)
def q4_0_rows(x, out, finite):
    # x [rows, cols] float32 C-contiguous, cols % 32 == 0; out [rows, cols // 32 * 18] uint8; finite [rows] bool
    for r in prange(x.shape[0]):
        finite[r] = _row_symmetric(x[r], out[r], 8, False)


@njit(cache=True, parallel=True)
def q5_0_rows(x, out, finite):
    for r in prange(x.shape[0]):
        finite[r] = _row_symmetric(x[r], out[r], 16, True)


@njit(cache=True, parallel=True)
def q4_1_rows(x, out, finite):
    for r in prange(x.shape[0]):
        finite[r] = _row_affine(x[r], out[r], 8, False)


@njit(cache=True, parallel=True)
def q5_1_rows(x, out, finite):
    for r in prange(x.shape[0]):
        finite[r] = _row_affine(x[r], out[r], 16, True)


@njit(cache=True, parallel=True)
def q8_0_rows(x, out, finite):
    for r in prange(x.shape[0]):
        finite[r] = _row_q8_0(x[r], out[r])


ROWS = {"Q4_0": q4_0_rows, "Q4_1": q4_1_rows, "Q5_0": q5_0_rows, "Q5_1": q5_1_rows, "Q8_0": q8_0_rows}
"""type name -> ``kernel(x, out, finite)``: quantize every row, flag the rows that are all finite."""
