"""HQQ against a small reference of the half-quadratic solver, and against RTN on real weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qviz
from qviz.quant.hqq import hqq_dequantize, hqq_qparams, hqq_quantize


def reference_hqq(w: np.ndarray, bits: int, group: int, p=0.7, beta=10.0, kappa=1.01, iters=20):
    """The solver written out on numpy float32: min/max scale, zero from the half-quadratic iterations."""
    wg = w.reshape(w.shape[0], -1, group).astype(np.float32)
    qmax = 2 ** bits - 1
    lo, hi = wg.min(-1, keepdims=True), wg.max(-1, keepdims=True)
    s = np.where(hi > lo, (hi - lo) / np.float32(qmax), np.float32(1)).astype(np.float32)
    z = (-lo / s).astype(np.float32)
    best = np.inf
    for _ in range(iters):
        q = np.clip(np.round(wg / s + z), 0, qmax)
        wr = s * (q - z)
        d = wg - wr
        e = np.sign(d) * np.maximum(np.abs(d) - np.power(np.abs(d) + np.float32(1e-8), np.float32(p - 1)) / np.float32(beta), 0)
        z = np.mean(q - (wg - e) / s, axis=-1, keepdims=True, dtype=np.float32)
        beta *= kappa
        err = float(np.abs(d).mean())
        if err < best:
            best = err
        else:
            break
    return s[..., 0].astype(np.float16).astype(np.float32), z[..., 0].astype(np.float16).astype(np.float32)


@pytest.mark.parametrize(("bits", "group"), [(4, 64), (3, 32), (2, 128), (8, 64)])
def test_matches_reference_solver(bits, group):
    w = torch.randn(24, 256, generator=torch.Generator().manual_seed(bits))
    qp = hqq_qparams(w, qviz.HQQ(bits=bits, group_size=group))
    s, z = reference_hqq(w.numpy(), bits, group)
    np.testing.assert_allclose(qp.scale.numpy(), s, rtol=1e-3)
    np.testing.assert_allclose(qp.zero.numpy(), z, atol=2e-2, rtol=1e-3)  # float16 zero of an iterated mean
    codes = hqq_quantize(w, qp)
    assert codes.max() <= 2 ** bits - 1
    torch.testing.assert_close(hqq_dequantize(codes, qp), qviz.fake_quantize(w, qviz.HQQ(bits=bits, group_size=group)))


def test_lowers_weight_error_vs_rtn_on_minilm():
    from qviz.models import layer_type, quantizable_layers, weight_matrix

    model = qviz.load("minilm")
    layers = [m for m in quantizable_layers(model).values() if layer_type(m) == "linear"][:4]  # q, k, v, attn out
    for bits in (4, 3):
        for mod in layers:
            w = weight_matrix(mod).float()
            e_hqq = ((qviz.fake_quantize(w, qviz.HQQ(bits=bits, group_size=64)) - w) ** 2).mean()
            e_rtn = ((qviz.fake_quantize(w, qviz.RTN(bits=bits, group_size=64)) - w) ** 2).mean()
            assert e_hqq < 0.97 * e_rtn


def test_storage_and_drivers():
    qt = qviz.quantize_tensor(torch.randn(32, 128), qviz.HQQ(bits=4, group_size=64))
    assert qt.bits_per_weight == 4.5
    assert qviz.project_size(1e9, qviz.HQQ(bits=3, group_size=128)) == 1e9 * (3 + 0.25) / 8
    net = torch.nn.Sequential(torch.nn.Linear(64, 32))
    err = qviz.layer_error(net, [qviz.HQQ(bits=4, group_size=32), qviz.HQQ(bits=4, group_size=32, act_bits=8)],
                           calib=torch.randn(16, 64))
    assert err.sizes["config"] == 2 and bool((err.output_rel_err > 0).all())
    assert qviz.HQQ(lp_norm=0.5).label == "HQQ w4 g64 lp_norm=0.5"
    for bad in ({"bits": 1}, {"group_size": 0}, {"lp_norm": 1.5}, {"kappa": 0.5}, {"iters": 0}):
        with pytest.raises(ValueError, match="HQQ"):
            qviz.HQQ(**bad)
