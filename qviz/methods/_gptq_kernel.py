"""The numba kernel of GPTQ's inner loop: one block of columns, every row in parallel.

Inside a block, GPTQ's error feedback only moves weights along a row (the
update of row ``r`` uses row ``r``'s error and a row of ``U``), so rows are
independent and run in parallel with ``prange``; each row walks the block's
columns in order, as the reference's column loop does. The update of the
columns after the block (the "lazy batch" update) is one matrix product and is
left to BLAS by the caller.

Numeric conventions are the project's RTN ones (``kernels_numba.rtn``):
``code = clamp(rint(w * (1/scale)) + zero, qmin, qmax)`` in float32, scales
rounded from float64 to float16 values.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels_numba._common import store_scale


@njit(cache=True)
def _range_params(lo, hi, bits, symmetric):
    """Scale (float16 value) and zero point for the range [min(lo, 0), max(hi, 0)]."""
    lo64 = min(np.float64(lo), 0.0)
    hi64 = max(np.float64(hi), 0.0)
    if symmetric:
        half = 1 << (bits - 1)
        scale = store_scale(max(-lo64, hi64) / (half - 1), True, half - 1)
        return scale, np.float64(half)
    qmax = (1 << bits) - 1
    scale = store_scale((hi64 - lo64) / qmax, True, qmax)
    zero = min(max(np.rint(-lo64 / scale), 0.0), np.float64(qmax))
    return scale, zero


@njit(cache=True, parallel=True)
def gptq_block(W, U, i1, i2, group_size, dynamic, bits, symmetric, scale, zero, gidx, Q, codes, err, loss):
    """Quantize columns ``i1:i2`` of every row with error feedback inside the block.

    W      [rows, cols] float32 working weights (permuted order); columns i1+1..i2-1 are updated
    U      [cols, cols] float32 upper Cholesky factor of the (damped) inverse Hessian
    scale  [rows, n_groups] float32, zero like it (integer values); written here when ``dynamic``
           for each group that starts in this block, from the weights as they are at block start
    gidx   [cols] int64 group of each (permuted) column
    Q      [rows, cols] float32 dequantized output; codes [rows, cols] uint8 output
    err    [rows, i2 - i1] float32 output: (w - q) / U[j, j], the rows of the lazy update
    loss   [rows] float64, accumulates (w - q)**2 / U[j, j]**2 / 2
    """
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
                    s, z = _range_params(lo, hi, bits, symmetric)
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
