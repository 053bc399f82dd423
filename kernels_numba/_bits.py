"""Bit-level views of float32 scalars inside JIT code.

Integer compares on the bit patterns give NaN-proof, vectorisable min/max and
finiteness tests (LLVM does not vectorise float min/max reductions for Numba).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

I32 = np.int32
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


@njit(cache=True)
def order_key(b):
    """Map float32 bits to an int32 that sorts like the float (an involution)."""
    return I32(b ^ I32(I32(b >> I32(31)) & ABS_MASK))


@njit(cache=True)
def lohi_finite(xs):
    """``(min(x_min, 0), max(x_max, 0), all finite)`` over a 1-D float32 array.

    lo/hi are meaningless when a value is NaN/Inf; callers check the flag first.
    """
    lo = I32(0)
    hi = I32(0)
    ex = I32(0)
    for j in range(xs.shape[0]):
        b = f32_bits(xs[j])
        t = order_key(b)
        ex = I32(max(ex, I32(b & EXP_MASK)))
        lo = I32(min(lo, t))
        hi = I32(max(hi, t))
    return bits_f32(order_key(lo)), bits_f32(order_key(hi)), ex != EXP_MASK


@njit(cache=True)
def all_finite(xs):
    """True if the 1-D float32 array has no NaN/Inf."""
    ex = I32(0)
    for j in range(xs.shape[0]):
        ex = I32(max(ex, I32(f32_bits(xs[j]) & EXP_MASK)))
    return ex != EXP_MASK


@njit(cache=True)
def absmax_finite(xs):
    """``(max |x|, all finite)`` over a 1-D float32 array."""
    m = I32(0)
    for j in range(xs.shape[0]):
        m = I32(max(m, I32(f32_bits(xs[j]) & ABS_MASK)))
    return bits_f32(m), m < EXP_MASK
