"""kernels_numba.gptq (GPTQ's block of columns) against a plain python/numpy transcription."""

from __future__ import annotations

import numpy as np
import pytest

import kernels_numba as kn


def ref_params(lo: float, hi: float, bits: int, symmetric: bool) -> tuple[float, float]:
    """Scale (nearest float16, up where nearest would leave the grid short by over half a step) and zero."""
    steps = 2 ** (bits - 1) - 1 if symmetric else 2**bits - 1
    s = (max(-lo, hi) if symmetric else hi - lo) / steps
    if s == 0.0:
        return 1.0, float(2 ** (bits - 1)) if symmetric else 0.0
    h = np.float16(s)
    h = np.float16(2.0**-24) if h == 0 else h
    if (s - float(h)) * steps > 0.5 * float(h):
        h = np.nextafter(h, np.float16(np.inf))
    if symmetric:
        return float(h), float(2 ** (bits - 1))
    return float(h), float(min(max(np.rint(-lo / float(h)), 0.0), 2**bits - 1))


def ref_gptq_block(W, U, i1, i2, group_size, dynamic, bits, symmetric, scale, zero, gidx, Q, codes, err, loss):
    """The block loop written out one row and one column at a time, float32 as documented."""
    rows, cols = W.shape
    qmin, qmax = (1 if symmetric else 0), 2**bits - 1
    for r in range(rows):
        if dynamic:
            for j in range(i1, i2):
                if j % group_size == 0:
                    blk = W[r, j:min(j + group_size, cols)]
                    lo, hi = min(float(blk.min()), 0.0), max(float(blk.max()), 0.0)
                    s, z = ref_params(lo, hi, bits, symmetric)
                    scale[r, j // group_size], zero[r, j // group_size] = s, z
        acc = 0.0
        for j in range(i1, i2):
            s32, z32 = np.float32(scale[r, gidx[j]]), np.float32(zero[r, gidx[j]])
            w = np.float32(W[r, j])
            q = np.clip(np.rint(w * (np.float32(1.0) / s32)) + z32, np.float32(qmin), np.float32(qmax))
            qh = np.float32((q - z32) * s32)
            Q[r, j], codes[r, j] = qh, np.uint8(q)
            e = np.float32((w - qh) / U[j, j])
            acc += float(e) * float(e) / 2.0
            err[r, j - i1] = e
            for k in range(j + 1, i2):
                W[r, k] = np.float32(W[r, k] - e * U[j, k])
        loss[r] += acc


def _problem(rows, cols, seed):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((rows, cols)).astype(np.float32)
    X = rng.standard_normal((4 * cols, cols)).astype(np.float64)
    H = X.T @ X / len(X) + 0.01 * np.eye(cols)
    U = np.linalg.cholesky(np.linalg.inv(H)).T.astype(np.float32)  # upper factor of H^-1
    return W, np.ascontiguousarray(U)


def _buffers(rows, cols, n_groups, i1, i2):
    return (np.zeros((rows, cols), np.float32), np.zeros((rows, cols), np.uint8),
            np.zeros((rows, i2 - i1), np.float32), np.zeros(rows, np.float64))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size,dynamic", [(8, True), (16, True), (32, False), (8, False)])
def test_block_equals_reference(bits, symmetric, group_size, dynamic):
    rows, cols = 7, 32
    W, U = _problem(rows, cols, seed=bits)
    n_groups = cols // group_size
    if dynamic:
        scale, zero = np.zeros((rows, n_groups), np.float32), np.zeros((rows, n_groups), np.float32)
    else:  # static parameters, made beforehand (as GPTQ does with act_order or one group per row)
        sc, zp = kn.choose_qparams(W, bits, group_size, symmetric)
        scale, zero = sc.copy(), zp.astype(np.float32)
    gidx = (np.arange(cols) // group_size).astype(np.int64)
    got = [W.copy(), scale.copy(), zero.copy(), *_buffers(rows, cols, n_groups, 0, 16)]
    ref = [W.copy(), scale.copy(), zero.copy(), *_buffers(rows, cols, n_groups, 0, 16)]
    for i1, i2 in [(0, 16), (16, 32)]:
        for out in (got, ref):
            out[5] = np.zeros((rows, i2 - i1), np.float32)
        kn.gptq_block(got[0], U, i1, i2, group_size, dynamic, bits, symmetric, got[1], got[2], gidx,
                      got[3], got[4], got[5], got[6])
        ref_gptq_block(ref[0], U, i1, i2, group_size, dynamic, bits, symmetric, ref[1], ref[2], gidx,
                       ref[3], ref[4], ref[5], ref[6])
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got[3][:, :16], (got[4][:, :16] - got[2].repeat(group_size, 1)[:, :16])
                                  * got[1].repeat(group_size, 1)[:, :16])


def test_dynamic_params_are_the_rtn_params_of_the_block_start():
    # with U = I there is no error feedback: the block's parameters are RTN's of W itself
    rows, cols = 5, 16
    W = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    scale, zero = np.zeros((rows, 2), np.float32), np.zeros((rows, 2), np.float32)
    Q, codes, err, loss = _buffers(rows, cols, 2, 0, cols)
    kn.gptq_block(W.copy(), np.eye(cols, dtype=np.float32), 0, cols, 8, True, 4, False, scale, zero,
                  (np.arange(cols) // 8).astype(np.int64), Q, codes, err, loss)
    c_ref, (s_ref, z_ref), _ = kn.quantize_with_stats(W, 4, 8)
    np.testing.assert_array_equal(scale, s_ref)
    np.testing.assert_array_equal(zero, z_ref.astype(np.float32))
    np.testing.assert_array_equal(codes, c_ref)


def test_bad_input():
    rows, cols = 2, 8
    W, U = _problem(rows, cols, 0)
    scale, zero = np.ones((rows, 1), np.float32), np.zeros((rows, 1), np.float32)
    gidx = np.zeros(cols, np.int64)
    Q, codes, err, loss = _buffers(rows, cols, 1, 0, cols)
    with pytest.raises(TypeError, match="W must be a C-contiguous float32 array, got float64"):
        kn.gptq_block(W.astype(np.float64), U, 0, cols, cols, False, 4, False, scale, zero, gidx, Q, codes, err, loss)
    with pytest.raises(ValueError, match=r"err has shape \(2, 8\), expected \(2, 4\)"):
        kn.gptq_block(W, U, 0, 4, cols, False, 4, False, scale, zero, gidx, Q, codes, err, loss)
    with pytest.raises(ValueError, match="the block 4:2 must lie inside the 8 columns"):
        kn.gptq_block(W, U, 4, 2, cols, False, 4, False, scale, zero, gidx, Q, codes, err, loss)
    with pytest.raises(ValueError, match="group_size=3 must divide 8"):
        kn.gptq_block(W, U, 0, cols, 3, False, 4, False, scale, zero, gidx, Q, codes, err, loss)
