"""Batch-1 matrix-vector products on quantized weights, without materialising W_hat.

``y = W_hat @ x`` where ``W_hat[r, j] = (code[r, j] - zero[r, g]) * scale[r, g]``.
Per group the kernel accumulates ``sum_j code_j * x_j`` in float32 and applies
``scale * (acc - zero * sum_j x_j)`` (the group sums of ``x`` are shared by all
rows), so the inner loop is a load, a mask, an int-to-float conversion and an
FMA per weight. INT4 reads 8x fewer weight bytes than float32, which is what a
memory-bound GEMV is paid in.

Summation order differs from a dense matmul: results agree with
``dequantize(...) @ x`` to float32 rounding, not bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._bits import I32, U64, span
from ._checks import check_array, check_int, raise_nonfinite

__all__ = ["gemv_int4", "gemv_int8"]

# Reassociation lets the dot products vectorise; only the float32 summation order changes.
_FASTMATH = {"reassoc", "contract"}
_ROWS_PER_TASK = 16


# Loops index with unsigned offsets (kernels_numba._bits.span) rather than slicing: no
# negative-index wraparound (so loads vectorise) and no per-chunk views (whose reference
# counts would be updated atomically, contended between threads).
#
# With b = 16*hi + lo (hi, lo the nibbles of a byte), hi*xo + lo*xe = b*xb + lo*xa where
# xb = xo/16 (exact) and xa = xe - xo/16: one mask per byte, no shift.


@njit(cache=True, fastmath=_FASTMATH)
def _dot_bytes(packed, r, o, xa, xb, n):
    # sum over bytes k < n of packed[r, o+k] as (lo nibble) * xa[o+k] + (byte) * xb[o+k]
    acc = np.float32(0.0)
    ou = U64(o)
    for k in span(0, n):
        b = I32(packed[r, ou + k])
        acc += np.float32(I32(b & I32(15))) * xa[ou + k] + np.float32(b) * xb[ou + k]
    return acc


@njit(cache=True, fastmath=_FASTMATH)
def _term(packed, r, i, xa, xb):
    # (low nibble of packed[r, i]) * xa[i] + packed[r, i] * xb[i]
    b = I32(packed[r, i])
    return np.float32(I32(b & I32(15))) * xa[i] + np.float32(b) * xb[i]


@njit(cache=True, fastmath=_FASTMATH)
def _dot_bytes_32(packed, r, o, xa, xb):
    # _dot_bytes for exactly 32 bytes (64 weights): a constant trip count that LLVM unrolls
    # into straight vector code; two accumulators halve the dependent FMA chain
    a0 = np.float32(0.0)
    a1 = np.float32(0.0)
    ou = U64(o)
    for k in range(U64(16)):
        a0 += _term(packed, r, ou + k, xa, xb)
        a1 += _term(packed, r, ou + k + U64(16), xa, xb)
    return a0 + a1


@njit(cache=True, fastmath=_FASTMATH)
def _dot_bytes_64(packed, r, o, xa, xb):
    # as _dot_bytes_32 for exactly 64 bytes (128 weights, one group of 128)
    a0 = np.float32(0.0)
    a1 = np.float32(0.0)
    ou = U64(o)
    for k in range(U64(32)):
        a0 += _term(packed, r, ou + k, xa, xb)
        a1 += _term(packed, r, ou + k + U64(32), xa, xb)
    return a0 + a1


@njit(cache=True, fastmath=_FASTMATH)
def _row_fast(packed, scale, zero, xa, xb, xsum, half, r):
    # y[r] for half % 32 == 0 (unrolled 64- or 32-byte bodies)
    wide = half % 64 == 0
    width = 64 if wide else 32
    chunks = half // width
    acc = np.float32(0.0)
    for g in range(scale.shape[1]):
        d = np.float32(0.0)
        for c in range(chunks):
            o = (g * chunks + c) * width
            if wide:
                d += _dot_bytes_64(packed, r, o, xa, xb)
            else:
                d += _dot_bytes_32(packed, r, o, xa, xb)
        acc += scale[r, g] * (d - np.float32(zero[r, g]) * xsum[g])
    return acc


@njit(cache=True, fastmath=_FASTMATH)
def _row_generic(packed, scale, zero, xa, xb, xsum, half, r):
    # y[r] for any even group size
    acc = np.float32(0.0)
    for g in range(scale.shape[1]):
        d = _dot_bytes(packed, r, g * half, xa, xb, half)
        acc += scale[r, g] * (d - np.float32(zero[r, g]) * xsum[g])
    return acc


@njit(cache=True, parallel=True)
def _gemv_int4_kernel(packed, scale, zero, xa, xb, xsum, group_size, y):
    # packed [rows, cols // 2] uint8; scale [rows, n_groups] float32; zero [rows, n_groups] uint8
    # xa, xb [cols // 2] float32: x[0::2] - x[1::2]/16, x[1::2]/16; xsum [n_groups] float32
    # y [rows] float32
    rows = packed.shape[0]
    half = group_size // 2
    fast = half % 32 == 0
    n_tasks = (rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for t in prange(n_tasks):
        for r in range(t * _ROWS_PER_TASK, min((t + 1) * _ROWS_PER_TASK, rows)):
            if fast:
                y[r] = _row_fast(packed, scale, zero, xa, xb, xsum, half, r)
            else:
                y[r] = _row_generic(packed, scale, zero, xa, xb, xsum, half, r)


@njit(cache=True, fastmath=_FASTMATH)
def _dot_u8(codes, r, x):
    # sum_j codes[r, j] * x[j]
    acc = np.float32(0.0)
    for j in span(0, x.shape[0]):
        acc += np.float32(I32(codes[r, j])) * x[j]
    return acc


@njit(cache=True, parallel=True, fastmath=_FASTMATH)
def _gemv_int8_kernel(codes, scale, zero, x, xsum, y):
    # codes [rows, cols] uint8; scale [rows] float32; zero [rows] uint8; x [cols]; y [rows]
    rows = codes.shape[0]
    n_tasks = (rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for t in prange(n_tasks):
        r0 = t * _ROWS_PER_TASK
        r1 = min(r0 + _ROWS_PER_TASK, rows)
        for r in range(r0, r1):
            d = _dot_u8(codes, r, x)
            y[r] = scale[r] * (d - np.float32(zero[r]) * xsum)


def _check_x(x, cols):
    x = check_array(x, "x", dtype=np.float32, ndim=1)  # [cols]
    if x.shape[0] != cols:
        raise ValueError(
            f"x has {x.shape[0]} entries but the weight has {cols} columns; expected x of "
            f"shape ({cols},) (batch 1; for a batch loop over rows of X or use a matmul)."
        )
    if not np.isfinite(x).all():
        raise_nonfinite(x, "x")
    return x


def _check_params(scale, zero, shape, name_shape):
    scale = check_array(scale, "scale", dtype=np.float32)
    zero = check_array(zero, "zero", dtype=np.uint8)
    if scale.shape != shape or zero.shape != shape:
        raise ValueError(
            f"scale {scale.shape} and zero {zero.shape} must both have shape {shape} "
            f"({name_shape}); pass the qparams made for this weight."
        )
    return scale, zero


def gemv_int4(packed, scale, zero, x, group_size) -> np.ndarray:
    """``y = W_hat @ x`` for a group-wise asymmetric INT4 weight packed two codes per byte.

    Parameters
    ----------
    packed : np.ndarray
        uint8 ``[rows, cols // 2]``: codes packed along the row, low nibble first
        (``pack(codes, 4)``).
    scale : np.ndarray
        float32 ``[rows, cols // group_size]``.
    zero : np.ndarray
        uint8 ``[rows, cols // group_size]``.
    x : np.ndarray
        float32 ``[cols]``.
    group_size : int
        Even, dividing ``cols``.

    Returns
    -------
    np.ndarray
        float32 ``[rows]``.

    Examples
    --------
    >>> from kernels_numba import dequantize, pack, quantize_with_stats
    >>> w = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
    >>> x = np.arange(8, dtype=np.float32)
    >>> codes, qp, _ = quantize_with_stats(w, bits=4, group_size=4)
    >>> y = gemv_int4(pack(codes, 4), qp.scale, qp.zero, x, 4)
    >>> np.allclose(y, dequantize(codes, *qp, bits=4) @ x, rtol=1e-5)
    True
    """
    packed = check_array(packed, "packed", dtype=np.uint8, ndim=2)  # [rows, cols // 2]
    rows, half_cols = packed.shape
    cols = 2 * half_cols
    group_size = check_int(group_size, "group_size", 2, max(cols, 2),
                           f" Expected an even divisor of the row length {cols}.")
    if group_size % 2 or cols % group_size:
        raise ValueError(
            f"group_size={group_size} must be even and divide the row length {cols} "
            f"(packed has {half_cols} bytes per row); pass the group size used to quantize."
        )
    n_groups = cols // group_size
    scale, zero = _check_params(scale, zero, (rows, n_groups), "[rows, cols // group_size]")
    x = _check_x(x, cols)
    xb = x[1::2] * np.float32(1 / 16)  # [cols // 2], exact
    xa = x[0::2] - xb  # [cols // 2]
    xsum = x.reshape(n_groups, group_size).sum(axis=1, dtype=np.float64).astype(np.float32)
    y = np.empty(rows, np.float32)
    _gemv_int4_kernel(packed, scale, zero, xa, xb, xsum, group_size, y)
    return y


def gemv_int8(codes, scale, zero, x) -> np.ndarray:
    """``y = W_hat @ x`` for a per-row INT8 weight: ``W_hat[r] = (codes[r] - zero[r]) * scale[r]``.

    Parameters
    ----------
    codes : np.ndarray
        uint8 ``[rows, cols]``.
    scale : np.ndarray
        float32 ``[rows]`` or ``[rows, 1]`` (as ``choose_qparams(..., group_size=None)`` gives).
    zero : np.ndarray
        uint8, same shape as ``scale`` (128 for symmetric 8-bit).
    x : np.ndarray
        float32 ``[cols]``.

    Returns
    -------
    np.ndarray
        float32 ``[rows]``.

    Examples
    --------
    >>> codes = np.array([[130, 126], [128, 255]], np.uint8)
    >>> gemv_int8(codes, np.full(2, 0.5, np.float32), np.full(2, 128, np.uint8),
    ...           np.array([1.0, 2.0], np.float32))
    array([ -1., 127.], dtype=float32)
    """
    codes = check_array(codes, "codes", dtype=np.uint8, ndim=2)  # [rows, cols]
    rows, cols = codes.shape
    shape = np.shape(scale)
    if shape == (rows, 1):
        scale, zero = np.reshape(scale, rows), np.reshape(zero, rows)
    scale, zero = _check_params(scale, zero, (rows,), "[rows] or [rows, 1], one per row")
    x = _check_x(x, cols)
    xsum = np.float32(x.sum(dtype=np.float64))
    y = np.empty(rows, np.float32)
    _gemv_int8_kernel(codes, scale, zero, x, xsum, y)
    return y
