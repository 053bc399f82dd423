"""Bit-level views of float32 scalars, and the group scans built on them, for JIT code.

Integer compares on the bit patterns give NaN-proof, vectorisable min/max and
finiteness tests (LLVM does not vectorise float min/max reductions for Numba).
The scans of one 32-weight block (:func:`key_range32`, :func:`abs_bits_max32`)
are written as LLVM vector code: a loop of 32 gets fully unrolled before LLVM's
loop vectoriser sees it, and whether the unrolled reduction is then vectorised
depends on what else the loop does, so kernels built on a plain loop ran at
scalar speed after unrelated edits. :func:`block_vector`,
:func:`vector_reduce` and :func:`splat` are the codegen helpers for such
intrinsics (LLVM lowers the vectors to whatever width the CPU has, SSE2 up).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
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


# ----------------------------------------------------------------------------- 32-weight blocks as vectors


def is_f32_vector_source(x) -> bool:
    """Typing test of the block intrinsics: a 1-D C-contiguous float32 array."""
    return isinstance(x, types.Array) and x.dtype == types.float32 and x.ndim == 1 and x.layout == "C"


def block_vector(context, builder, aryty, ary, idxty, idx, n, elem):
    """Codegen: load ``ary[idx:idx+n]`` as an LLVM ``<n x elem>`` vector (the array's bits, no bounds check)."""
    a = context.make_array(aryty)(context, builder, value=ary)
    i = context.cast(builder, idx, idxty, types.intp)
    vt = ir.VectorType(elem, n)
    p = builder.bitcast(builder.gep(a.data, [i], inbounds=True), vt.as_pointer())
    return builder.load(p, align=aryty.dtype.bitwidth // 8)


def store_vector(context, builder, aryty, ary, idxty, idx, vec):
    """Codegen: store the vector ``vec`` (of ``ary``'s element type) at ``ary[idx:idx+len(vec)]`` (no bounds check)."""
    a = context.make_array(aryty)(context, builder, value=ary)
    i = context.cast(builder, idx, idxty, types.intp)
    p = builder.bitcast(builder.gep(a.data, [i], inbounds=True), vec.type.as_pointer())
    builder.store(vec, p, align=aryty.dtype.bitwidth // 8)


def vector_reduce(builder, op, vec):
    """Codegen: ``llvm.vector.reduce.<op>`` (``smin``, ``smax``, ``or``, ...) of an integer vector."""
    et = vec.type.element
    name = f"llvm.vector.reduce.{op}.v{vec.type.count}i{et.width}"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(et, [vec.type]), name)
    return builder.call(fn, [vec])


def splat(builder, value, n):
    """Codegen: the ``<n x type>`` vector with every lane ``value`` (an LLVM value or constant)."""
    if isinstance(value, ir.Constant):
        return ir.Constant(ir.VectorType(value.type, n), [value.constant] * n)
    vt = ir.VectorType(value.type, n)
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    lane0 = ir.Constant(ir.VectorType(ir.IntType(32), n), [0] * n)
    return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined), lane0)


def _order_keys(builder, b):
    """Codegen of :func:`order_key` on a vector of int32 bit patterns."""
    n = b.type.count
    i32 = ir.IntType(32)
    sign = builder.ashr(b, splat(builder, ir.Constant(i32, 31), n))
    return builder.xor(b, builder.and_(sign, splat(builder, ir.Constant(i32, 0x7FFFFFFF), n)))


@intrinsic
def key_range32(typingctx, x, start):
    """``(lo, hi)``: the least and greatest :func:`order_key` of ``x[start:start+32]``, as int32.

    ``x`` is a 1-D C-contiguous float32 array; no bounds check (the caller keeps
    ``start + 32 <= len(x)``). ``bits_f32(order_key(lo))`` is the block's minimum
    (NaN-proof: NaN and Inf keys sort beyond every finite one, see :data:`NEG_INF_KEY`).
    """
    if not (is_f32_vector_source(x) and isinstance(start, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        b = block_vector(context, builder, signature.args[0], args[0], signature.args[1], args[1], 32, ir.IntType(32))
        keys = _order_keys(builder, b)
        lo = vector_reduce(builder, "smin", keys)
        hi = vector_reduce(builder, "smax", keys)
        return context.make_tuple(builder, signature.return_type, [lo, hi])

    return types.UniTuple(types.int32, 2)(x, start), codegen


@intrinsic
def abs_bits_max32(typingctx, x, start):
    """The greatest ``|x|`` bit pattern of ``x[start:start+32]`` as int32 (``>= EXP_MASK`` iff a NaN/Inf is there).

    ``x`` is a 1-D C-contiguous float32 array; no bounds check. ``bits_f32`` of it is ``max |x|``.
    """
    if not (is_f32_vector_source(x) and isinstance(start, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        b = block_vector(context, builder, signature.args[0], args[0], signature.args[1], args[1], 32, ir.IntType(32))
        a = builder.and_(b, splat(builder, ir.Constant(ir.IntType(32), 0x7FFFFFFF), 32))
        return vector_reduce(builder, "smax", a)

    return types.int32(x, start), codegen


NEG_INF_KEY = I32(-0x7F800001)
""":func:`order_key` of -inf (bits 0xFF800000); the keys of negative NaNs lie below it, those of
+inf (``EXP_MASK``) and positive NaNs at or above ``EXP_MASK``: keys strictly between the two are finite."""


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


_F16_BIAS = I32(0x38000000)  # float32 bits of 2**-15: (exponent 127 - 15) << 23 re-biases to float16
_F16_MIN_NORMAL = I32(0x38800000)  # float32 bits of 2**-14, the smallest normal float16
_F16_INF = I32(0x7C00)
_F16_QNAN = I32(0x7E00)
_HALF_BITS = I32(0x3F000000)  # float32 bits of 0.5, whose ulp is 2**-24: the float16 subnormal step


@njit(cache=True)
def f32_to_f16_bits(f):
    """The float16 bit pattern (as an int32) nearest to the float32 ``f``, ties to even (IEEE, as numpy).

    Only selects, no branches, so a loop of these vectorises. Normal float16s keep
    the top 10 of the 23 mantissa bits: adding ``0xFFF`` plus the lowest kept bit
    before the shift carries into the kept bits exactly when the dropped part is
    over half, or half with an odd kept part (round to even); a carry out of the
    largest finite value gives the infinity pattern, and anything larger is clamped
    to it. Below ``2**-14`` the float16 is subnormal, a multiple of ``2**-24``: the
    float32 sum ``|f| + 0.5`` rounds ``|f|`` to that step (ties to even), and its
    bits less those of 0.5 are the multiple. NaN becomes the quiet NaN ``0x7E00``.
    """
    b = f32_bits(f)
    a = I32(b & ABS_MASK)
    sign = I32(I32(b >> I32(16)) & I32(0x8000))
    normal = min_i32(I32(I32(a - _F16_BIAS + I32(0x0FFF) + I32(I32(a >> I32(13)) & I32(1))) >> I32(13)), _F16_INF)
    sub = I32(f32_bits(bits_f32(a) + np.float32(0.5)) - _HALF_BITS)
    h = sub if a < _F16_MIN_NORMAL else normal
    h = _F16_QNAN if a > EXP_MASK else h
    return I32(sign | h)
