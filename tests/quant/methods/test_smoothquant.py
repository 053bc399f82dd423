"""SmoothQuant: the formula, exactness of the migration, folding vs explicit scales, W8A8 against naive, the sweep."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import qviz
from qviz.quant.methods._model import clone_model
from qviz.quant.methods.smoothquant import (
    SmoothQuantMethod,
    _apply_smoothing_,
    _smoothing_plan,
    smoothing_factors,
    smoothing_ranges,
    smoothquant_alpha_sweep,
)


class PreNorm(nn.Module):
    """LayerNorm -> two Linear layers reading it (like q/k), then a Linear after a nonlinearity."""

    def __init__(self, outlier: float = 30.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(32)
        self.a = nn.Linear(32, 16)
        self.b = nn.Linear(32, 16)
        self.out = nn.Linear(16, 4)
        with torch.no_grad():
            self.norm.weight[:2] *= outlier  # two outlier activation channels, as in real transformers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return self.out(torch.relu(self.a(h)) + self.b(h))


def test_factors_formula_by_hand():
    act = torch.tensor([16.0, 1.0, 0.25])
    w = torch.tensor([1.0, 4.0, 0.25])
    # alpha = 0.5: sqrt(act / w)
    assert torch.allclose(smoothing_factors(act, w, 0.5), torch.tensor([4.0, 0.5, 1.0]))
    # alpha = 1: all difficulty to the weights (s = act); alpha = 0: s = 1 / w
    assert torch.allclose(smoothing_factors(act, w, 1.0), act)
    assert torch.allclose(smoothing_factors(act, w, 0.0), 1.0 / w)
    # a dead channel gets a finite factor
    assert torch.isfinite(smoothing_factors(torch.tensor([0.0]), torch.tensor([0.0]), 0.5)).all()


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_alpha_outside_unit_interval(alpha):
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        smoothing_factors(torch.ones(3), torch.ones(3), alpha)
    if alpha == alpha:  # NaN is not a valid dataclass check target either way
        with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]"):
            qviz.SmoothQuant(alpha=alpha)


def test_factor_shapes_and_values_checked():
    with pytest.raises(ValueError, match="act_absmax has 3 channels but w_absmax has 2"):
        smoothing_factors(torch.ones(3), torch.ones(2), 0.5)
    with pytest.raises(ValueError, match="finite maxima >= 0"):
        smoothing_factors(torch.tensor([-1.0]), torch.ones(1), 0.5)
    with pytest.raises(ValueError, match="1-D tensor"):
        smoothing_factors(torch.ones(2, 2), torch.ones(2), 0.5)


def test_ranges_show_the_migration():
    act = torch.tensor([50.0, 1.0, 1.0, 1.0])
    W = torch.ones(8, 4) * 0.1
    ds = smoothing_ranges(act, W, 0.5)
    assert float(ds.act_ratio.sel(stage="before")) == pytest.approx(50.0)
    assert float(ds.act_ratio.sel(stage="after")) < 10.0  # flatter activations ...
    assert float(ds.w_ratio.sel(stage="after")) > float(ds.w_ratio.sel(stage="before"))  # ... rougher weights
    # the product of the two ranges per channel is unchanged
    prod = ds.act_absmax * ds.w_absmax
    assert np.allclose(prod.sel(stage="before"), prod.sel(stage="after"), rtol=1e-5)


def _fp_model(net):
    return qviz.load(net)


@pytest.mark.parametrize("fold", ["auto", "never"])
def test_smoothing_leaves_full_precision_output_unchanged(fold):
    torch.manual_seed(0)
    model = _fp_model(PreNorm())
    x = torch.randn(64, 32)
    absmax, groups = _smoothing_plan(model, x, ["a", "b", "out"])
    assert [g.layers for g in groups] == [["a", "b"], ["out"]]
    assert groups[0].foldable and groups[0].predecessor == "norm" and not groups[1].foldable
    copy = clone_model(model)
    state = _apply_smoothing_(copy, qviz.SmoothQuant(alpha=0.6, fold=fold), absmax, groups)
    assert state["a"]["folded"] is (fold == "auto")
    # with the folded scales (and explicit 1/s where kept explicit), no quantization: same function
    for name, entry in state.items():
        if not entry["folded"]:
            layer = copy.module.get_submodule(name)
            with torch.no_grad():
                layer.weight.mul_(entry["s"][None, :])
            layer.register_forward_pre_hook(lambda mod, inp, s=entry["s"]: (inp[0] / s,))
    with torch.no_grad():
        assert torch.allclose(copy.module(x), model.module(x), rtol=1e-5, atol=1e-5)
    assert not torch.equal(copy.module.norm.weight, model.module.norm.weight) or fold == "never"


def test_w8a8_per_tensor_beats_naive_on_outlier_activations():
    torch.manual_seed(0)
    net = PreNorm(outlier=60.0)
    x = torch.randn(256, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "out" keeps an explicit scale
        sq = qviz.quantize(net, qviz.SmoothQuant(alpha=0.5, a_bits=8, act_scheme="per-tensor"), calib=x, progress=False)
    naive = qviz.quantize(net, qviz.ActQuant(8, "per-tensor"), progress=False)
    with torch.no_grad():
        ref = net(x)
        e_sq = float(((sq.module(x) - ref) ** 2).mean())
        e_naive = float(((naive.module(x) - ref) ** 2).mean())
    assert e_sq < 0.5 * e_naive
    assert sq.quantization.layers["a"].info["smooth_folded"] == 1.0
    assert sq.quantization.layers["a"].info["act_ratio_after"] < sq.quantization.layers["a"].info["act_ratio_before"]
    assert sq.quantization.layers["a"].kernel == "simulated W8A8 (fake-quant)"
    assert "explicit input scale" in sq.quantization.layers["out"].kernel
    # per-channel symmetric int8 weights: 1 byte each + a float16 scale per row (+ 2 bytes per input if explicit)
    assert sq.quantization.layers["a"].nbytes == 16 * 32 + 16 * 2
    assert sq.quantization.layers["out"].nbytes == 4 * 16 + 4 * 2 + 16 * 2


def test_layer_output_and_weight_hat_are_in_the_prepared_layers_basis():
    torch.manual_seed(0)
    net = PreNorm()
    x = torch.randn(128, 32)
    cfg = qviz.SmoothQuant(alpha=0.5, a_bits=None)  # weights only: the output is XŴᵀ exactly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = qviz.load(net)
        copy = clone_model(model)
        method = SmoothQuantMethod()
        state = method.prepare(copy, cfg, x, {n: copy.module.get_submodule(n) for n in ("a", "b", "out")})
    h = copy.module.norm(x).detach()  # input of "a" in the prepared copy (1/s folded into the norm)
    lq = method.quantize_layer("a", copy.module.a, cfg, None, state)
    assert torch.allclose(method.layer_output(lq, h), h @ lq.weight_hat.T, rtol=1e-4, atol=1e-5)
    h0 = net.norm(x).detach()  # ... which is the original input divided by s
    assert torch.allclose(h, h0 / state["layers"]["a"]["s"], rtol=1e-4, atol=1e-6)
    lq_out = method.quantize_layer("out", copy.module.out, cfg, None, state)  # explicit: original basis
    g = torch.relu(net.a(h0)) + net.b(h0)
    assert torch.allclose(method.layer_output(lq_out, g.detach()), g.detach() @ lq_out.weight_hat.T, rtol=1e-4,
                          atol=1e-5)


def test_fold_require_names_layers_without_a_foldable_predecessor():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"1 layer\(s\) have no foldable predecessor \(out: its input is made by"):
        qviz.quantize(PreNorm(), qviz.SmoothQuant(fold="require"), calib=torch.randn(16, 32), progress=False)


def test_auto_fold_warns_and_explains():
    with pytest.warns(UserWarning, match="explicit input scale on 1 of 3 layer.*operation between modules"):
        qviz.quantize(PreNorm(), qviz.SmoothQuant(), calib=torch.randn(16, 32), progress=False)


def test_needs_calibration_data():
    with pytest.raises(ValueError, match="calibration"):
        qviz.quantize(PreNorm(), qviz.SmoothQuant(), progress=False)
    with pytest.raises(ValueError, match="no smoothing factors"):
        SmoothQuantMethod().quantize_layer("a", nn.Linear(4, 4), qviz.SmoothQuant(), None, {"layers": {}})


def test_residual_reader_blocks_folding():
    class PostNorm(nn.Module):  # BERT-like: the norm's output feeds a Linear AND the residual
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(8)
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            h = self.norm(x)
            return h + self.fc(h)

    _, groups = _smoothing_plan(qviz.load(PostNorm()), torch.randn(4, 8), ["fc"])
    assert groups[0].predecessor == "norm" and not groups[0].foldable
    assert "residual" in groups[0].reason


def test_alpha_sweep_dataset():
    torch.manual_seed(0)
    net = PreNorm(outlier=60.0)
    model = qviz.load(net)
    calib, held = torch.randn(128, 32), torch.randn(64, 32)
    ds = smoothquant_alpha_sweep(model, calib, [0.0, 0.5, 0.9], held, batch_size=1)
    assert list(ds.alpha.values) == [0.0, 0.5, 0.9]
    assert ds.cosine.attrs["units"] == "1" and ds.naive_cosine.dims == ()
    assert float(ds.cosine.sel(alpha=0.5)) > float(ds.naive_cosine)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        smoothquant_alpha_sweep(model, calib, [1.2], held)


@pytest.mark.slow
def test_gpt2_blocks_fold_into_their_layernorms():
    m = qviz.load("tiny-gpt2")
    calib = qviz.calibration_data(m, 8)
    with pytest.warns(UserWarning, match="explicit input scale"):
        q = qviz.quantize(m, qviz.SmoothQuant(alpha=0.5), calib=calib, progress=False)
    folded = {n for n, r in q.quantization.layers.items() if r.info["smooth_folded"] == 1.0}
    assert {"transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc"} <= folded
    ev, _ = qviz.eval_data(m, 8)
    cos = torch.nn.functional.cosine_similarity(q.outputs(ev), m.outputs(ev), dim=-1).mean()
    assert float(cos) > 0.99


def test_static_activation_scale_is_calibrated_and_robust_to_outlier_rows():
    torch.manual_seed(0)
    net = PreNorm(outlier=60.0)
    x = torch.randn(256, 32)
    cfg = qviz.SmoothQuant(alpha=0.5, act_static=True)
    assert cfg.label == "SmoothQuant a0.5 w8a8/tensor static"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qviz.quantize(net, cfg, calib=x, progress=False)
    layer = q.module.a
    h = q.module.norm(x).detach()  # the smoothed input of "a"
    assert float(layer.act_scale) == pytest.approx(float(h.abs().max()) / 127, rel=1e-5)
    assert "static" in q.quantization.layers["a"].kernel
    # a batch with one wild row (a padding token, say): the dynamic per-tensor scale follows it and
    # coarsens every other row; the static one is unmoved (the wild row clips)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dyn = qviz.quantize(net, qviz.SmoothQuant(alpha=0.5), calib=x, progress=False).module.a
    wild = torch.cat([h[:8], 1000 * h[8:9]])
    with torch.no_grad():
        assert torch.equal(layer(wild)[:8], layer(h[:8]))
        assert not torch.allclose(dyn(wild)[:8], dyn(h[:8]), atol=1e-3)
    with pytest.raises(ValueError, match="act_static must be True or False, and True only with"):
        qviz.SmoothQuant(act_static=True, act_scheme="per-token")
