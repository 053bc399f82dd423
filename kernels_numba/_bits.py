"""Bit-level views of float32 scalars, and the group scans built on them, for JIT code.

Integer compares on the bit patterns give NaN-proof, vectorisable min/max and
finiteness tests (LLVM does not vectorise float min/max reductions for Numba).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

I32 = np.int32
U64 = np.uint64
EXP_MASK = np.int32(0x7F800000)  # exponent bits all set <=> NaN or Inf
ABS_MASK = np.int32(0x7FFFFFFF)


@intrinsic
def f32_bits(typingctx, v):
    """The bit pattern of a float32 as an int32 (a free bitcast)."""
    if v != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def bits_f32(typingctx, v):
    """The float32 whose bit pattern is the int32 ``v``."""
    if v != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def trunc_i32(typingctx, v):
    """C's ``(int)`` cast of a float32 or float64 (toward zero) straight to int32.

    ``np.int32(v)`` goes through int64, which AVX2 cannot convert packed, so a
    loop of such casts stays scalar; this one vectorises (``cvttps2dq``).
    Defined only where the value fits in int32.
    """
    if v not in (types.float32, types.float64):
        return None

    def codegen(context, builder, signature, args):
        return builder.fptosi(args[0], ir.IntType(32))

    return types.int32(v), codegen


@intrinsic
def min_i32(typingctx, a, b):
    """``min(a, b)`` of two int32 as a select, which LLVM vectorises (Numba's ``min`` branches)."""
    if a != types.int32 or b != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.select(builder.icmp_signed("<", args[0], args[1]), args[0], args[1])

    return types.int32(types.int32, types.int32), codegen


@njit(cache=True)
def order_key(b):
    """Map float32 bits to an int32 that sorts like the float (an involution)."""
    return I32(b ^ I32(I32(b >> I32(31)) & ABS_MASK))


# Hot loops index 2-D arrays as ``x[r, c0 + j]`` with unsigned ``j`` (from ``span``): unsigned
# indices skip Numba's negative-index wraparound, so LLVM sees contiguous loads and vectorises,
# and no slice (a new view with an atomic reference-count update, contended between threads)
# is made per group.


@njit(cache=True)
def span(c0, n):
    """``range(c0, c0 + n)`` over unsigned 64-bit integers."""
    return range(U64(c0), U64(c0) + U64(n))


@njit(cache=True)
def lohi_finite(x, r, c0, n):
    """``(min(x_min, 0), max(x_max, 0), all finite)`` over ``x[r, c0:c0+n]`` (float32).

    lo/hi are meaningless when a value is NaN/Inf; callers check the flag first.
    """
    lo = I32(0)
    hi = I32(0)
    ex = I32(0)
    for j in span(c0, n):
        b = f32_bits(x[r, j])
        t = order_key(b)
        ex = I32(max(ex, I32(b & EXP_MASK)))
        lo = I32(min(lo, t))
        hi = I32(max(hi, t))
    return bits_f32(order_key(lo)), bits_f32(order_key(hi)), ex != EXP_MASK


@njit(cache=True)
def all_finite(x, r, c0, n):
    """True if ``x[r, c0:c0+n]`` (float32) has no NaN/Inf."""
    ex = I32(0)
    for j in span(c0, n):
        ex = I32(max(ex, I32(f32_bits(x[r, j]) & EXP_MASK)))
    return ex != EXP_MASK


@njit(cache=True)
def absmax_finite(x, r, c0, n):
    """``(max |x|, all finite)`` over ``x[r, c0:c0+n]`` (float32)."""
    m = I32(0)
    for j in span(c0, n):
        m = I32(max(m, I32(f32_bits(x[r, j]) & ABS_MASK)))
    return bits_f32(m), m < EXP_MASK


@njit(cache=True)
def f32_to_f16_bits(f):
    """The float16 bit pattern (as an int) nearest to the float32 ``f``, ties to even (IEEE, as numpy)."""
    b = np.int64(f32_bits(f)) & 0xFFFFFFFF
    sign = (b >> 16) & 0x8000
    a = b & 0x7FFFFFFF
    if a >= 0x7F800000:  # inf / nan
        return sign | 0x7C00 | (0x200 if a > 0x7F800000 else 0)
    if a >= 0x477FF000:  # rounds past 65504
        return sign | 0x7C00
    if a < 0x38800000:  # float16 subnormal (or zero)
        if a < 0x33000000:
            return sign
        e = a >> 23
        m = (a & 0x7FFFFF) | 0x800000
        shift = 126 - e
        h = m >> shift
        rem = m & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if rem > half or (rem == half and (h & 1) == 1):
            h += 1
        return sign | h
    h = (a - 0x38000000) >> 13
    rem = a & 0x1FFF
    if rem > 0x1000 or (rem == 0x1000 and (h & 1) == 1):
        h += 1
    return sign | h
