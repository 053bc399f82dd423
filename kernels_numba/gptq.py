"""GPTQ's inner loop: one block of columns, every row in parallel.

Inside a block, GPTQ's error feedback only moves weights along a row (the
update of row ``r`` uses row ``r``'s error and a row of ``U``), so rows are
independent and run in parallel with ``prange``; each row walks the block's
columns in order, as the reference's column loop does. The update of the
columns after the block (the "lazy batch" update) is one matrix product and is
left to BLAS by the caller.

Numeric conventions are the project's RTN ones, from the same JIT helpers
(:mod:`kernels_numba.rtn`): a group's scale and zero point come from its range
(0 included) by ``rtn._params``, ``code = clamp(rint(w * (1/scale)) + zero,
qmin, qmax)`` in float32, scales rounded from float64 to float16 values.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .rtn import _params

__all__ = ["gptq_block"]


def gptq_block(W, U, i1, i2, group_size, dynamic, bits, symmetric, scale, zero, gidx, Q, codes, err, loss):
    """Quantize columns ``i1:i2`` of every row with error feedback inside the block (in place).

    All arrays are written in place and must be C-contiguous with the dtypes below; the
    arguments are checked here, before the JIT kernel.

    W      [rows, cols] float32 working weights (permuted order); columns i1+1..i2-1 are updated
    U      [cols, cols] float32 upper Cholesky factor of the (damped) inverse Hessian
    scale  [rows, n_groups] float32, zero like it (integer values); written here when ``dynamic``
           for each group that starts in this block, from the weights as they are at block start
    gidx   [cols] int64 group of each (permuted) column
    Q      [rows, cols] float32 dequantized output; codes [rows, cols] uint8 output
    err    [rows, i2 - i1] float32 output: (w - q) / U[j, j], the rows of the lazy update
    loss   [rows] float64, accumulates (w - q)**2 / U[j, j]**2 / 2

    Examples
    --------
    >>> W = np.array([[0.8, -0.35, 1.0]], np.float32)
    >>> U = np.eye(3, dtype=np.float32)  # an identity Hessian: no error feedback, plain rounding
    >>> scale, zero = np.full((1, 1), 1.0, np.float32), np.full((1, 1), 2.0, np.float32)
    >>> Q, codes, err = np.empty((1, 3), np.float32), np.empty((1, 3), np.uint8), np.empty((1, 3), np.float32)
    >>> loss = np.zeros(1)
    >>> gptq_block(W, U, 0, 3, 3, False, 2, True, scale, zero, np.zeros(3, np.int64), Q, codes, err, loss)
    >>> Q.tolist()
    [[1.0, 0.0, 1.0]]
    """
    if not isinstance(W, np.ndarray) or W.ndim != 2:
        raise TypeError(f"W must be a 2-D float32 numpy array [rows, cols], got {type(W).__name__} "
                        f"of shape {getattr(W, 'shape', None)}.")
    rows, cols = W.shape
    if not 0 <= i1 < i2 <= cols:
        raise ValueError(f"the block {i1}:{i2} must lie inside the {cols} columns, with i1 < i2.")
    want = {"W": (W, np.float32, (rows, cols)), "U": (U, np.float32, (cols, cols)),
            "scale": (scale, np.float32, None), "zero": (zero, np.float32, scale.shape),
            "gidx": (gidx, np.int64, (cols,)), "Q": (Q, np.float32, (rows, cols)),
            "codes": (codes, np.uint8, (rows, cols)), "err": (err, np.float32, (rows, i2 - i1)),
            "loss": (loss, np.float64, (rows,))}
    for name, (a, dtype, shape) in want.items():
        if not isinstance(a, np.ndarray) or a.dtype != dtype or not a.flags.c_contiguous:
            got = (f"a non-contiguous {a.dtype} array" if isinstance(a, np.ndarray) and a.dtype == dtype
                   else getattr(a, "dtype", type(a).__name__))
            raise TypeError(f"{name} must be a C-contiguous {np.dtype(dtype).name} array, got {got}; "
                            f"allocate it with np.empty(..., np.{np.dtype(dtype).name}) (or np.ascontiguousarray).")
        if shape is not None and a.shape != tuple(shape):
            raise ValueError(f"{name} has shape {a.shape}, expected {tuple(shape)}.")
    if not 2 <= bits <= 8 or group_size < 1 or cols % group_size or scale.shape != (rows, cols // group_size):
        raise ValueError(
            f"bits={bits} must be 2..8 and group_size={group_size} must divide {cols}, with scale of "
            f"shape ({rows}, {cols} // group_size); got scale {scale.shape}."
        )
    _gptq_block_kernel(W, U, int(i1), int(i2), int(group_size), bool(dynamic), int(bits), bool(symmetric),
                       scale, zero, gidx, Q, codes, err, loss)


@njit(cache=True, parallel=True)
def _gptq_block_kernel(W, U, i1, i2, group_size, dynamic, bits, symmetric, scale, zero, gidx, Q, codes, err,
                       loss):
    # shapes and dtypes as in gptq_block
    rows = W.shape[0]
    cols = W.shape[1]
    qmax = (1 << bits) - 1
    qmin = 1 if symmetric else 0
    for r in prange(rows):
        if dynamic:
            for j in range(i1, i2):
                if j % group_size == 0:
                    lo = np.float32(0.0)
                    hi = np.float32(0.0)
                    for k in range(j, min(j + group_size, cols)):
                        lo = min(lo, W[r, k])
                        hi = max(hi, W[r, k])
                    s, z = _params(lo, hi, 1.0, bits, symmetric, True)  # lo <= 0 <= hi
                    scale[r, j // group_size] = np.float32(s)
                    zero[r, j // group_size] = np.float32(z)
        acc = 0.0
        for j in range(i1, i2):
            g = gidx[j]
            s32 = scale[r, g]
            z32 = zero[r, g]
            inv = np.float32(1.0) / s32
            w = W[r, j]
            q = min(max(np.rint(w * inv) + z32, np.float32(qmin)), np.float32(qmax))
            qh = (q - z32) * s32
            Q[r, j] = qh
            codes[r, j] = np.uint8(q)
            e = (w - qh) / U[j, j]
            acc += np.float64(e) * np.float64(e) / 2.0
            err[r, j - i1] = e
            for k in range(j + 1, i2):
                W[r, k] -= e * U[j, k]
        loss[r] += acc
