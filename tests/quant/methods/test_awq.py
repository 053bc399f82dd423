"""AWQ: scale formula, search returns data, apply is separate, folding in a model, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import qviz
from qviz.quant.methods.awq import AWQMethod, _sq_err, awq_apply, awq_scales, awq_search
from qviz.quant.granularity import PerGroup
from qviz.quant.primitives import fake_quantize_codes


def _outlier_problem(seed=0, tokens=512, cols=64, rows=32):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, cols, generator=gen)
    X[:, :4] *= 20.0  # a few salient input channels
    W = torch.randn(rows, cols, generator=gen) * 0.05
    return W, X


def test_scales_formula_and_normalisation():
    s = awq_scales(torch.tensor([1.0, 4.0, 16.0]), 0.5)
    expected = torch.tensor([1.0, 2.0, 4.0]) / 2.0  # sqrt(max * min) = sqrt(4 * 1) = 2
    assert torch.allclose(s, expected)
    assert torch.equal(awq_scales(torch.tensor([3.0, 7.0]), 0.0), torch.ones(2))


def test_search_returns_a_dataset_and_never_loses_to_rtn():
    W, X = _outlier_problem()
    ds = awq_search(W, X, bits=3, group_size=16, n_grid=10)
    assert isinstance(ds, xr.Dataset)
    assert ds.sizes == {"alpha": 10, "channel": 64, "row": 32, "group": 4, "ratio": 10}
    assert all("long_name" in ds[v].attrs and "units" in ds[v].attrs for v in ds.data_vars)
    # alpha = 0 is s = 1: plain RTN
    rtn = fake_quantize_codes(W, PerGroup(16), 3)[0]
    ref = float(((X @ W.T) ** 2).sum())
    assert float(ds.loss.sel(alpha=0.0)) == pytest.approx(float(((X @ (W - rtn).T) ** 2).sum()) / ref, rel=1e-4)
    assert float(ds.rtn_rel_err) == float(ds.loss[0])
    # the outlier channels make a positive alpha win, and protect those channels most
    assert float(ds.best_alpha) > 0
    assert float(ds.scaled_rel_err) < float(ds.rtn_rel_err)
    assert float(ds.rel_err) <= float(ds.scaled_rel_err) * (1 + 1e-6) or float(ds.rel_err) < float(ds.rtn_rel_err)
    assert int(np.argmax(ds.scale.values)) < 4


def test_apply_is_separate_and_consistent():
    W, X = _outlier_problem()
    ds = awq_search(W, X, bits=4, group_size=32, n_grid=8)
    res = awq_apply(W, ds)
    assert torch.allclose(res.weight_hat * res.input_scale, res.weight_scaled_hat, rtol=1e-6, atol=1e-7)
    # the effective weight reproduces the error the search reported
    assert _sq_err(W - res.weight_hat, X, None) / float(((X @ W.T) ** 2).sum()) == pytest.approx(float(ds.rel_err),
                                                                                                rel=1e-4)
    gs = 32
    zero = res.zero.float().repeat_interleave(gs, 1)
    assert torch.equal((res.codes.float() - zero) * res.scale.repeat_interleave(gs, 1), res.weight_scaled_hat)


def test_clip_search_shrinks_a_group_with_a_lone_outlier_weight():
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(4, 32, generator=gen) * 0.1
    W[0, 5] = 3.0  # one huge weight whose input is tiny: clipping it costs little, helps the rest
    X = torch.randn(256, 32, generator=gen)
    X[:, 5] *= 0.01
    ds = awq_search(W, X, bits=3, group_size=32, n_grid=1)
    assert float(ds["clip_ratio"].values[0, 0]) < 1.0
    assert float(ds.rel_err) < float(ds.rtn_rel_err)


def test_gram_and_direct_errors_agree():
    W, X = _outlier_problem(tokens=100)
    E = W * 0.01
    assert _sq_err(E, X, X.T @ X) == pytest.approx(_sq_err(E, X, None), rel=1e-4)
    few = awq_search(W, X[:40], bits=4, group_size=16, n_grid=4)  # tokens < in: direct products
    many = awq_search(W, torch.cat([X[:40]] * 3), bits=4, group_size=16, n_grid=4)  # same rows thrice: Gram path
    assert np.allclose(few.loss.values, many.loss.values, rtol=1e-4)
    assert np.array_equal(few["clip_ratio"].values, many["clip_ratio"].values)


def test_inputs_not_modified():
    W, X = _outlier_problem()
    W0, X0 = W.clone(), X.clone()
    awq_apply(W, awq_search(W, X, bits=4, group_size=16, n_grid=3))
    assert torch.equal(W, W0) and torch.equal(X, X0)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"group_size": 24}, ValueError, "does not divide the row length 64"),
        ({"n_grid": 0}, ValueError, "n_grid must be a positive int"),
        ({"max_shrink": 1.0}, ValueError, "max_shrink must be in"),
        ({"bits": 1}, ValueError, "bits must be an int from 2 to 8"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    W, X = _outlier_problem()
    with pytest.raises(exc, match=match):
        awq_search(W, X, **({"group_size": 16} | kwargs))


def test_bad_shapes_and_data():
    W, X = _outlier_problem()
    with pytest.raises(ValueError, match="has 63 columns but 64 were expected"):
        awq_search(W, X[:, :63], group_size=None)
    with pytest.raises(ValueError, match="output is zero"):
        awq_search(W, torch.zeros(8, 64), group_size=None)
    ds = awq_search(W, X, group_size=16, n_grid=2)
    with pytest.raises(ValueError, match=r"made for a \[32, 64\] weight"):
        awq_apply(W[:8], ds)
    with pytest.raises(TypeError, match="returned by awq_search"):
        awq_apply(W, xr.Dataset())


def test_method_in_a_pre_norm_block_folds_into_the_norm():
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(32)
            self.q = nn.Linear(32, 32)
            self.k = nn.Linear(32, 32)
            self.out = nn.Linear(32, 8)

        def forward(self, x):
            h = self.norm(x)
            return self.out(torch.relu(self.q(h) * self.k(h))) + x[:, :8]

    net = Block()
    with torch.no_grad():
        net.norm.weight.mul_(torch.linspace(0.1, 10, 32))  # uneven channel ranges
    norm_before = net.norm.weight.clone()
    x = torch.randn(300, 32)
    with pytest.warns(UserWarning, match="explicit input scale on 1 layer"):
        q = qviz.quantize(net, qviz.AWQ(bits=4, group_size=16), calib=x, progress=False)
    recs = q.quantization.layers
    assert recs["q"].info["awq_folded"] == 1.0 and recs["k"].info["awq_folded"] == 1.0
    assert recs["out"].info["awq_folded"] == 0.0
    assert recs["q"].info["awq_alpha"] == recs["k"].info["awq_alpha"]  # one scale for the shared input
    assert not torch.equal(q.module.norm.weight, norm_before)  # 1/s went into the copy's norm ...
    assert torch.equal(net.norm.weight, norm_before)  # ... and the original is untouched
    # packed 4-bit codes + float16 scale + uint8 zero per group of 16; the explicit scale adds 2 bytes per input
    assert recs["q"].nbytes == 32 * 32 // 2 + 64 * 3
    assert recs["out"].nbytes == 8 * 32 // 2 + 16 * 3 + 2 * 32
    for rec in recs.values():  # on its calibration inputs AWQ never does worse than RTN
        assert rec.info["awq_rel_err"] <= rec.info["awq_rtn_rel_err"] * (1 + 1e-6)
    with torch.no_grad():  # the folded model still computes the same function, up to quantization
        assert torch.allclose(q.module(x), net(x), atol=0.2 * float(net(x).abs().max()))


def test_explicit_scale_layer_output_matches_effective_weight():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    x = torch.randn(200, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qviz.quantize(net, qviz.AWQ(bits=4, group_size=16), calib=x, progress=False)
    layer = q.module[2]
    h = torch.nn.functional.gelu(net[0](x)).detach()
    lq_out = layer(h) - layer.bias
    # weight_hat in the original basis gives the same output as the module with its input scale
    method = AWQMethod()
    state = {"folded": {}, "search": {}, "reasons": {}}
    lq = method.quantize_layer("2", net[2], qviz.AWQ(bits=4, group_size=16), h, state)
    assert torch.allclose(h @ lq.weight_hat.T, lq_out, atol=1e-5)
    assert q.quantization.layers["2"].nbytes == lq.nbytes == 8 * 32 // 2 + 3 * 8 * 2 + 2 * 32


@pytest.mark.slow
def test_awq_on_tiny_llama_folds_qkv_and_mlp():
    m = qviz.load("tiny-llama")
    calib = qviz.calibration_data(m, 8)
    with pytest.warns(UserWarning, match="explicit input scale"):
        q = qviz.quantize(m, qviz.AWQ(bits=4, group_size=16), calib=calib, progress=False)
    folded = {n for n, r in q.quantization.layers.items() if r.info["awq_folded"] == 1.0}
    assert "model.layers.0.self_attn.q_proj" in folded and "model.layers.0.mlp.up_proj" in folded
    assert "model.layers.0.self_attn.o_proj" not in folded
    assert "awq_search" in q.quantization.extra["AWQ w4 g16"]
