"""layer_error: the errors Dataset, its numbers against direct computation, and minilm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qviz
from qviz.quant.modules import fake_quant_activation


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32), nn.Conv2d(1, 4, 3))


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(2, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16, 10)

    def forward(self, x):  # [batch, 2, 4, 4] -> [batch, 10]
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_single_config_dims_and_attrs():
    net = Tiny()
    x = torch.randn(32, 2, 4, 4)
    err = qviz.layer_error(net, qviz.RTN(bits=4, group_size=None), calib=x)
    assert dict(err.sizes) == {"layer": 2} and err.attrs["config"] == "RTN w4 ch asym"
    for v in ("weight_mse", "weight_sqnr_db", "output_rel_err", "bits_per_weight", "nbytes", "max_abs_err"):
        assert err[v].attrs["long_name"] and "units" in err[v].attrs
    assert list(err.layer_type.values) == ["conv2d", "linear"]
    assert int(err.calib_rows.sel(layer="conv")) == 32 * 16  # pixel positions


def test_numbers_match_direct_computation():
    net = Tiny()
    x = torch.randn(16, 2, 4, 4)
    cfgs = [qviz.RTN(bits=3, group_size=None), qviz.ActQuant(8, "per-token"), qviz.RTN(bits=4, group_size=16)]
    err = qviz.layer_error(net, cfgs, calib=x, layers="fc")
    assert dict(err.sizes) == {"layer": 1, "config": 3}
    with torch.no_grad():
        h = torch.relu(net.conv(x)).flatten(1)  # the fc layer's input
        w = net.fc.weight
        for cfg in cfgs:
            w_hat = qviz.fake_quantize(w, cfg)
            xq = fake_quant_activation(h, cfg.act_bits) if cfg.act_bits else h
            ref = h @ w.T
            rel = float(((ref - xq @ w_hat.T) ** 2).sum() / (ref**2).sum())
            e = err.sel(layer="fc", config=cfg.label)
            assert float(e.output_rel_err) == pytest.approx(rel, rel=1e-4)
            assert float(e.weight_mse) == pytest.approx(float(((w_hat - w) ** 2).mean()), rel=1e-5)
            sqnr = 10 * np.log10(float((w**2).sum() / ((w_hat - w) ** 2).sum()))
            assert float(e.weight_sqnr_db) == pytest.approx(sqnr, abs=1e-4)
            assert float(e.max_abs_err) == pytest.approx(float((w_hat - w).abs().max()), rel=1e-6)
            assert float(e.bits_per_weight) == pytest.approx(8 * float(e["nbytes"]) / w.numel())


def test_conv_output_error_uses_the_layer_itself():
    net = Tiny()
    x = torch.randn(8, 2, 4, 4)
    cfg = qviz.ActQuant(8, "per-tensor")
    err = qviz.layer_error(net, cfg, calib=x, layers="conv")
    with torch.no_grad():
        ref = nn.functional.conv2d(x, net.conv.weight, None, padding=1)
        got = nn.functional.conv2d(fake_quant_activation(x, 8, "per-tensor", 1),
                                   qviz.fake_quantize(net.conv.weight, cfg), None, padding=1)
    rel = float(((ref - got) ** 2).sum() / (ref**2).sum())
    assert float(err.output_rel_err.sel(layer="conv")) == pytest.approx(rel, rel=1e-4)


def test_bnb_int8_output_error_is_the_real_llm_int8_layer():
    from qviz.quant.modules import bnb_int8_linear

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 48))
    x = torch.randn(40, 64)
    x[:, 3] *= 30  # an outlier feature above the threshold
    err = qviz.layer_error(net, [qviz.BnbInt8(6.0), qviz.BnbInt8(0.0)], calib=x)
    with torch.no_grad():
        ref = x @ net[0].weight.T
        for t in (6.0, 0.0):
            layer = bnb_int8_linear(net[0].weight, None, t, torch.device("cpu"))
            rel = float(((ref - layer(x)) ** 2).sum() / (ref**2).sum())
            assert float(err.output_rel_err.sel(config=f"bnb int8 t{t}", layer="0")) == pytest.approx(rel, rel=1e-5)
    # the outlier column kept in float16 makes the decomposition better than plain int8
    e = err.output_rel_err.sel(layer="0")
    assert float(e.sel(config="bnb int8 t6.0")) < float(e.sel(config="bnb int8 t0.0"))


def test_skipped_layers_are_nan_with_reasons(mlp):
    x = torch.randn(10, 64)
    net = mlp[:3]
    err = qviz.layer_error(net, [qviz.RTN(bits=8, group_size=None), qviz.BnbNF4()], calib=x)
    assert np.isfinite(err.output_rel_err.values).all()
    tiny = Tiny()
    err2 = qviz.layer_error(tiny, [qviz.RTN(bits=8, group_size=None), qviz.BnbNF4()], calib=torch.randn(4, 2, 4, 4))
    assert np.isnan(float(err2.output_rel_err.sel(layer="conv", config="bnb nf4 b64")))
    assert "only linear" in err2.attrs["skipped"]


def test_bad_input():
    net = Tiny()
    with pytest.raises(ValueError, match="needs calibration inputs"):
        qviz.layer_error(net, qviz.RTN(), calib=None)
    with pytest.raises(ValueError, match="empty"):
        qviz.layer_error(net, [], calib=torch.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match="appear more than once"):
        qviz.layer_error(net, [qviz.RTN(bits=4, group_size=None)] * 2, calib=torch.randn(2, 2, 4, 4))
    with pytest.raises(TypeError, match="Known configs"):
        qviz.layer_error(net, ["rtn"], calib=torch.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match="does not divide the row length 18 of layer 'conv'"):
        qviz.layer_error(net, qviz.RTN(bits=4, group_size=16), calib=torch.randn(2, 2, 4, 4))


@pytest.mark.slow
def test_minilm_all_configs(minilm, minilm_calib):
    cfgs = [qviz.RTN(bits=b, group_size=128) for b in (8, 4, 3, 2)]
    cfgs += [qviz.BnbInt8(), qviz.BnbNF4(), qviz.BnbFP4(), qviz.ActQuant(8)]
    err = qviz.layer_error(minilm, cfgs, calib=minilm_calib[:16], layers="encoder.layer.0.*")
    assert err.sizes["layer"] == 6 and err.sizes["config"] == 8
    assert np.isfinite(err.output_rel_err.values).all()
    rel = err.output_rel_err
    for a, b in (("RTN w8 g128 asym", "RTN w4 g128 asym"), ("RTN w4 g128 asym", "RTN w3 g128 asym"),
                 ("RTN w3 g128 asym", "RTN w2 g128 asym")):
        assert (rel.sel(config=a) < rel.sel(config=b)).all()
    assert (rel.sel(config="bnb nf4 b64") < rel.sel(config="bnb fp4 b64")).all()
    assert (rel.sel(config="bnb int8 t6.0") < 1e-3).all()
    # W8A8 adds activation error on top of 8-bit per-channel weights
    w8 = qviz.layer_error(minilm, qviz.RTN(bits=8, group_size=None, symmetric=True), calib=minilm_calib[:16],
                          layers="encoder.layer.0.*")
    assert (rel.sel(config="RTN w8 ch sym a8/token") > w8.output_rel_err).all()
    np.testing.assert_allclose(err.bits_per_weight.sel(config="RTN w4 g128 asym"), 4 + 3 * 8 / 128)


def test_gram_path_equals_direct_product():
    """With more calibration rows than inputs the weight-only error goes through X^T X; same number."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(24, 40))
    x = torch.randn(500, 24) + 3.0  # a large common mean: the quadratic form must not cancel badly
    cfgs = [qviz.RTN(bits=8, group_size=None), qviz.RTN(bits=2, group_size=8), qviz.BnbNF4()]
    err = qviz.layer_error(net, cfgs, calib=x)
    with torch.no_grad():
        ref = x.double() @ net[0].weight.double().T
        for cfg in cfgs:
            got = x.double() @ qviz.fake_quantize(net[0].weight, cfg).double().T
            rel = float(((ref - got) ** 2).sum() / (ref**2).sum())
            assert float(err.output_rel_err.sel(layer="0", config=cfg.label)) == pytest.approx(rel, rel=1e-4)


def test_errors_dataset_survives_netcdf(tmp_path):
    net = Tiny()
    err = qviz.layer_error(net, [qviz.RTN(bits=4, group_size=None), qviz.BnbNF4()], calib=torch.randn(4, 2, 4, 4))
    path = qviz.save(err, tmp_path / "errors.nc")
    assert qviz.open_dataset(path).identical(err)
