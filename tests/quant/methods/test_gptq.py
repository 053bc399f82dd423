"""GPTQ: against a plain torch transcription of the algorithm, hand-checkable cases, bad input, the method."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import qviz
from qviz.quant.granularity import granularity_of
from qviz.quant.primitives import fake_quantize_codes, qparams_from_range
from qviz.quant.methods.gptq import (
    GPTQMethod,
    gptq_hessian,
    gptq_loss_dataset,
    gptq_quantize_weight,
    hessian_loss,
)


def reference_gptq(W, H, bits, group_size, act_order, damp, block_size, symmetric):
    """The algorithm written out column by column in torch (float64), for comparison."""
    W = W.double().clone()
    H = H.double().clone()
    rows, cols = W.shape
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    gs = cols if group_size is None else group_size
    static = act_order or group_size is None
    scale = torch.zeros(rows, cols // gs)
    zero = torch.zeros(rows, cols // gs)
    if static:
        for g in range(cols // gs):
            blk = W[:, g * gs:(g + 1) * gs].float()
            scale[:, g], zero[:, g] = qparams_from_range(blk.amin(1), blk.amax(1), bits, symmetric=symmetric)
    perm = torch.argsort(H.diagonal(), descending=True, stable=True) if act_order else torch.arange(cols)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * H.diagonal().mean() * torch.eye(cols, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    qmax = 2**bits - 1
    qmin = 1 if symmetric else 0
    Q = torch.zeros_like(W)
    loss = 0.0
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        E = torch.zeros_like(W1)
        for j in range(i2 - i1):
            c = i1 + j
            if not static and c % gs == 0:
                blk = W[:, c:c + gs].float()  # as at block start (the in-block updates live in W1)
                scale[:, c // gs], zero[:, c // gs] = qparams_from_range(blk.amin(1), blk.amax(1), bits,
                                                                         symmetric=symmetric)
            g = (perm[c] // gs) if static else c // gs
            s, z = scale[:, g].double(), zero[:, g].double()
            w = W1[:, j]
            inv = (1.0 / s.float()).double()
            q = (torch.clamp(torch.round((w.float() * inv.float()).double()) + z, qmin, qmax) - z) * s
            Q[:, c] = q
            e = (w - q) / U[c, c]
            loss += float((e**2).sum() / 2)
            W1[:, j:] -= e[:, None] * U[c, c:i2][None, :]
            E[:, j] = e
        W[:, i2:] -= E @ U[i1:i2, i2:]
    return Q[:, torch.argsort(perm)].float(), loss


def _problem(rows=24, cols=64, tokens=200, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=gen) / cols**0.5
    X = torch.randn(tokens, cols, generator=gen) @ (torch.eye(cols) + 2 * mix)  # correlated inputs
    X[:, 3] *= 8.0  # one loud channel
    W = torch.randn(rows, cols, generator=gen) * 0.1
    return W, X


@pytest.mark.parametrize(
    "group_size,act_order,symmetric,block_size",
    [(None, False, False, 16), (16, False, False, 16), (16, True, False, 16), (32, False, True, 8), (8, True, True, 32)],
)
def test_matches_plain_torch_transcription(group_size, act_order, symmetric, block_size):
    W, X = _problem()
    H = gptq_hessian(X)
    res = gptq_quantize_weight(W, H, bits=3, group_size=group_size, act_order=act_order, damp=0.01,
                               block_size=block_size, symmetric=symmetric)
    Q_ref, loss_ref = reference_gptq(W, H, 3, group_size, act_order, 0.01, block_size, symmetric)
    same = (res.weight_hat - Q_ref).abs() < 1e-5
    assert same.float().mean() > 0.995  # float32 vs float64 error feedback may flip a rare tie
    assert res.loss == pytest.approx(loss_ref, rel=2e-3)


def test_codes_scales_and_zeros_reconstruct_weight_hat():
    W, X = _problem()
    for act_order, g in itertools.product([False, True], [None, 16]):
        res = gptq_quantize_weight(W, gptq_hessian(X), bits=4, group_size=g, act_order=act_order)
        gs = W.shape[1] if g is None else g
        scale = res.scale.repeat_interleave(gs, 1)
        zero = res.zero.float().repeat_interleave(gs, 1)
        assert torch.equal((res.codes.float() - zero) * scale, res.weight_hat)
        assert res.codes.dtype == torch.uint8 and res.zero.dtype == torch.uint8
        assert torch.equal(res.scale, res.scale.half().float())  # float16-exact scales


def test_two_weight_problem_finds_the_known_optimum():
    # levels {-1, 0, 1} (2-bit symmetric, the row's absmax is 1); inputs 0 and 1 correlate (rho 0.9),
    # input 2 is independent. RTN rounds w1 = -0.35 to 0; GPTQ moves it by the error of w0 and picks -1,
    # which is the best of all 27 code combinations under the Hessian.
    W = torch.tensor([[0.8, -0.35, 1.0]])
    H = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]])
    res = gptq_quantize_weight(W, H, bits=2, group_size=None, act_order=False, symmetric=True, damp=1e-6)
    assert res.weight_hat.tolist() == [[1.0, -1.0, 1.0]]
    best = min(itertools.product([-1.0, 0.0, 1.0], repeat=3),
               key=lambda q: hessian_loss(W - torch.tensor([q]), H))
    assert list(best) == [1.0, -1.0, 1.0]
    rtn = fake_quantize_codes(W, granularity_of(None), 2, symmetric=True)[0]
    assert rtn.tolist() == [[1.0, 0.0, 1.0]]
    assert hessian_loss(W - res.weight_hat, H) < hessian_loss(W - rtn, H)


def test_loss_equals_hessian_weighted_error():
    W, X = _problem()
    H = gptq_hessian(X)
    for act_order in (False, True):
        res = gptq_quantize_weight(W, H, bits=3, group_size=16, act_order=act_order, damp=0.05)
        assert res.loss == pytest.approx(hessian_loss(W - res.weight_hat, H, damp=0.05), rel=1e-4)


def test_identity_hessian_is_plain_rtn():
    # no correlation between inputs: no error feedback, so GPTQ rounds exactly as RTN does
    W, _ = _problem()
    for g, sym in [(None, False), (16, False), (16, True)]:
        res = gptq_quantize_weight(W, torch.eye(W.shape[1]), bits=4, group_size=g, act_order=False, symmetric=sym)
        w_hat, codes, qp = fake_quantize_codes(W, granularity_of(g), 4, symmetric=sym)
        assert torch.equal(res.codes, codes) and torch.equal(res.scale, qp.scale) and torch.equal(res.zero, qp.zero)


def test_act_order_permutation_is_undone():
    # per-channel params do not depend on column order, so permuting the problem permutes the answer
    W, X = _problem(seed=3)
    H = gptq_hessian(X)
    perm = torch.randperm(W.shape[1], generator=torch.Generator().manual_seed(1))
    a = gptq_quantize_weight(W, H, bits=3, group_size=None, act_order=True)
    b = gptq_quantize_weight(W[:, perm], H[perm][:, perm], bits=3, group_size=None, act_order=True)
    assert torch.allclose(a.weight_hat[:, perm], b.weight_hat, atol=1e-6)


def test_dead_input_gets_zero_weight():
    W, X = _problem()
    X[:, 5] = 0.0
    res = gptq_quantize_weight(W, gptq_hessian(X), bits=4, group_size=16)
    assert torch.all(res.weight_hat[:, 5] == 0)


def test_beats_rtn_on_held_out_inputs():
    W, X = _problem(tokens=600)
    fit, held = X[:400], X[400:]
    for g in (None, 16):
        res = gptq_quantize_weight(W, gptq_hessian(fit), bits=3, group_size=g)
        rtn = fake_quantize_codes(W, granularity_of(g), 3)[0]
        err = lambda w_hat: float(((held @ (W - w_hat).T) ** 2).sum())  # noqa: E731
        assert err(res.weight_hat) < 0.8 * err(rtn)


def test_inputs_not_modified():
    W, X = _problem()
    H = gptq_hessian(X)
    W0, H0 = W.clone(), H.clone()
    gptq_quantize_weight(W, H, bits=3, group_size=16)
    assert torch.equal(W, W0) and torch.equal(H, H0)


def test_fewer_tokens_than_features_warns_and_still_works():
    W, X = _problem(tokens=20)
    with pytest.warns(UserWarning, match="20 calibration tokens for 64 input features"):
        H = gptq_hessian(X, name="fc")
    res = gptq_quantize_weight(W, H, bits=4, group_size=16)
    assert torch.isfinite(res.weight_hat).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"H": torch.eye(3)}, r"H must be the \[64, 64\] Hessian"),
        ({"damp": 0.0}, "damp must be in"),
        ({"damp": 1.5}, "damp must be in"),
        ({"group_size": 24}, "does not divide the row length 64"),
        ({"bits": 9}, "bits must be an int from 2 to 8"),
        ({"block_size": 0}, "block_size must be a positive int"),
    ],
)
def test_bad_input(kwargs, match):
    W, X = _problem()
    args = {"W": W, "H": gptq_hessian(X), "group_size": 16} | kwargs
    with pytest.raises(ValueError, match=match):
        gptq_quantize_weight(**args)


def test_nan_weight_and_non_pd_hessian():
    W, X = _problem()
    bad = W.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        gptq_quantize_weight(bad, gptq_hessian(X), group_size=16)
    H = -torch.eye(64)
    H.diagonal().fill_(1.0)
    H[0, 1] = H[1, 0] = 5.0  # indefinite
    with pytest.raises(ValueError, match="not positive definite"):
        gptq_quantize_weight(W, H, group_size=None, damp=0.001)


def test_flagging_rule():
    layers = {f"l{i}": {"gptq_loss": 1.0, "gptq_rel_loss": 0.01, "rtn_rel_loss": 0.02, "n_tokens": 100.0} for i in range(5)}
    layers["l5"] = {"gptq_loss": 50.0, "gptq_rel_loss": 0.5, "rtn_rel_loss": 0.9, "n_tokens": 100.0}  # 50x median
    layers["l6"] = {"gptq_loss": 1.0, "gptq_rel_loss": 0.012, "rtn_rel_loss": 0.011, "n_tokens": 100.0}  # worse than RTN
    ds = gptq_loss_dataset(layers)
    assert list(ds.layer.values[ds.flagged.values]) == ["l5", "l6"]
    assert ds.gptq_rel_loss.attrs["units"] == "1"


def test_finalize_warns_about_unusual_layers():
    method = GPTQMethod()
    state = {"layers": {f"l{i}": {"gptq_loss": 1.0, "gptq_rel_loss": 0.01, "rtn_rel_loss": 0.02, "n_tokens": 9.0}
                        for i in range(4)}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "gptq" in method.finalize(None, qviz.GPTQ(), None, state)
    state["layers"]["odd"] = {"gptq_loss": 9.0, "gptq_rel_loss": 0.4, "rtn_rel_loss": 0.5, "n_tokens": 9.0}
    with pytest.warns(UserWarning, match="unusually high on 1 layer.*odd.*calibration data"):
        method.finalize(None, qviz.GPTQ(), None, state)


def test_method_needs_inputs():
    with pytest.raises(ValueError, match="needs its calibration inputs"):
        GPTQMethod().quantize_layer("fc", nn.Linear(8, 4), qviz.GPTQ(group_size=None), None, {})


def test_quantize_end_to_end_on_a_small_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    x = torch.randn(256, 32)
    before = [p.clone() for p in net.parameters()]
    cfg = qviz.GPTQ(bits=3, group_size=16)
    q = qviz.quantize(net, cfg, calib=x, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))  # untouched
    rtn = qviz.quantize(net, qviz.RTN(bits=3, group_size=16), progress=False)
    with torch.no_grad():
        assert float(((q.module(x) - net(x)) ** 2).mean()) < float(((rtn.module(x) - net(x)) ** 2).mean())
    rec = q.quantization.layers["2"]
    assert rec.info["gptq_rel_loss"] < rec.info["rtn_rel_loss"]
    assert rec.bits_per_weight == pytest.approx(3 + 3 * 8 / 16)  # codes + fp16 scale + uint8 zero per 16
    assert "gptq" in q.quantization.extra[cfg.label]


def test_conv_layers_are_quantized_with_patches():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))
    x = torch.rand(16, 2, 6, 6)
    with pytest.warns(UserWarning, match="16 calibration tokens for 288 input features"):  # the Linear's inputs
        q = qviz.quantize(net, qviz.GPTQ(bits=4, group_size=None), calib=x, progress=False)
    assert set(q.quantization.layers) == {"0", "3"}
    assert q.quantization.layers["0"].info["n_tokens"] == 16 * 36  # one row per pixel position
    with torch.no_grad():
        assert torch.allclose(q.module(x), net(x), atol=0.1 * float(net(x).abs().max()))


@pytest.mark.slow
def test_gptq_on_minilm_layers_beats_rtn(minilm, minilm_calib):
    layers = ["encoder.layer.0.attention.self.query", "encoder.layer.0.output.dense"]
    with pytest.warns(UserWarning, match="calibration tokens for (384|1536) input features"):  # 16 sentences: 272 tokens
        q = qviz.quantize(minilm, qviz.GPTQ(bits=3, group_size=128), calib=minilm_calib[:16], layers=layers,
                          progress=False)
    recs = q.quantization.layers
    assert len(recs) == 2
    wins = [r.info["gptq_rel_loss"] < r.info["rtn_rel_loss"] for r in recs.values()]
    assert all(wins)
    assert np.isfinite(q.outputs(minilm_calib[:4]).numpy()).all()
