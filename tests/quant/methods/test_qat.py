"""QAT: straight-through fake-quant layers, the distillation loop, recovery on digits-cnn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qviz
from qviz.quant.methods.qat import QATConv2d, QATLinear, QATMethod, distillation_loss, qat_finetune
from qviz.quant.granularity import PerGroup, granularity_of
from qviz.quant.primitives import fake_quantize_codes, fake_quantize_ste


@pytest.mark.parametrize("group_size,symmetric", [(None, False), (8, False), (8, True)])
def test_forward_is_rtn_and_gradient_passes_straight_through(group_size, symmetric):
    torch.manual_seed(0)
    w = torch.randn(6, 16, requires_grad=True)
    w_hat = fake_quantize_ste(w, granularity_of(group_size), 3, symmetric=symmetric)  # the torch backend
    assert torch.equal(w_hat.detach(), fake_quantize_codes(w.detach(), granularity_of(group_size), 3,
                                                           symmetric=symmetric)[0])  # the Numba kernels
    g = torch.randn(6, 16)
    (w_hat * g).sum().backward()
    assert torch.equal(w.grad, g)


def test_qat_linear_and_conv_match_their_originals_in_shape_and_rtn_value():
    torch.manual_seed(0)
    lin = nn.Linear(16, 4)
    q = QATLinear.from_float(lin, bits=4, group_size=8)
    x = torch.randn(3, 16)
    w_hat = fake_quantize_codes(lin.weight.detach(), PerGroup(8), 4)[0]
    assert torch.allclose(q(x), x @ w_hat.T + lin.bias, atol=1e-6)
    assert q.weight.data_ptr() != lin.weight.data_ptr()  # a copy, never shared
    conv = nn.Conv2d(2, 3, 3, padding=1)
    qc = QATConv2d.from_float(conv, bits=8)
    img = torch.randn(1, 2, 5, 5)
    assert torch.allclose(qc(img), conv(img), atol=0.05)


def test_gpt2_conv1d_is_transposed_into_a_linear():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    c = Conv1D(6, 4)  # nf=6 outputs, nx=4 inputs, weight [4, 6]
    q = QATLinear.from_float(c, bits=8)
    x = torch.randn(2, 4)
    assert q.weight.shape == (6, 4)
    assert torch.allclose(q(x), c(x), atol=0.05)


def test_freeze_fixes_the_weight():
    q = QATLinear.from_float(nn.Linear(8, 4), bits=2)
    q.freeze()
    before = q.quantized_weight().clone()
    with torch.no_grad():
        q.weight.add_(1.0)
    assert torch.equal(q.quantized_weight(), before)


def test_activation_fake_quant_option():
    torch.manual_seed(0)
    lin = nn.Linear(8, 2)
    q = QATLinear.from_float(lin, bits=8, act_bits=2)
    x = torch.randn(4, 8, requires_grad=True)
    q(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert not torch.allclose(q(x), lin(x), atol=1e-2)  # 2-bit inputs are coarse


def test_distillation_losses():
    t = torch.randn(4, 10)
    assert float(distillation_loss("image-classifier", t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss("image-classifier", t * 0, t)) > 0
    e = nn.functional.normalize(torch.randn(4, 8), dim=-1)
    assert float(distillation_loss("text-encoder", e, e)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss("module", t + 1, t)) == pytest.approx(1.0)


def test_finetune_pulls_a_perturbed_student_back_to_the_teacher():
    torch.manual_seed(0)
    fp = qviz.load(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)))
    layers = [QATLinear.from_float(fp.module[0], bits=8), nn.ReLU(), QATLinear.from_float(fp.module[2], bits=8)]
    with torch.no_grad():
        for q in (layers[0], layers[2]):
            q.weight.add_(0.2 * torch.randn_like(q.weight))  # start away from the teacher
    student = fp.with_module(nn.Sequential(*layers))
    data = torch.randn(256, 16)

    def full_loss():
        with torch.no_grad():
            return float(distillation_loss("module", student.module(data), fp.module(data)))

    before = full_loss()
    losses = qat_finetune(student, fp, data, list(student.module.parameters()), steps=100, lr=1e-2,
                          batch_size=64, progress=False)
    assert len(losses) == 100
    assert full_loss() < 0.2 * before
    assert all(p.requires_grad for p in fp.module.parameters())  # teacher left as it was


def test_method_updates_weight_hat_after_finetune_and_leaves_the_model_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    before = [p.clone() for p in net.parameters()]
    q = qviz.quantize(net, qviz.QAT(bits=3, steps=20, lr=1e-2, batch_size=32), calib=torch.randn(128, 16),
                      progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert isinstance(q.module[0], QATLinear) and q.module[0].frozen
    extra = q.quantization.extra["QAT w3 ch 20 steps lr 0.01"]
    assert extra["qat"].loss.dims == ("step",) and extra["qat"].sizes["step"] == 20
    assert q.quantization.layers["0"].bits_per_weight == pytest.approx(3 + 3 * 8 / 16)


def test_layer_error_measures_the_fine_tuned_layers():
    """layer_error with QAT runs the whole fine-tune on a copy and measures the trained layers."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    before = [p.clone() for p in net.parameters()]
    calib = torch.randn(256, 16)
    untrained = qviz.QAT(bits=2, steps=0)
    trained = qviz.QAT(bits=2, steps=60, lr=1e-2, batch_size=64)
    ds = qviz.layer_error(net, [untrained, trained], calib)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    q = qviz.quantize(net, untrained, calib=calib, progress=False)
    assert ds.weight_mse.sel(config=untrained.label, layer="0").item() == pytest.approx(
        float(((q.module[0].quantized_weight() - net[0].weight) ** 2).mean()), rel=1e-5)
    # the numbers are those of the fine-tuned layers: the same fine-tune through qviz.quantize gives them
    assert (ds.weight_mse.sel(config=trained.label) != ds.weight_mse.sel(config=untrained.label)).all()
    torch.manual_seed(1)
    again = qviz.layer_error(net, trained, calib)
    torch.manual_seed(1)
    qt = qviz.quantize(net, trained, calib=calib, progress=False)
    for name in ("0", "2"):
        w_fine = qt.module.get_submodule(name).quantized_weight()
        assert again.weight_mse.sel(layer=name).item() == pytest.approx(
            float(((w_fine - net.get_submodule(name).weight) ** 2).mean()), rel=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="QAT steps must be an int >= 0"):
        qviz.QAT(steps=-1)
    with pytest.raises(ValueError, match="bits must be an int from 2 to 8"):
        QATLinear.from_float(nn.Linear(4, 4), bits=1)
    with pytest.raises(ValueError, match="does not divide the row length 4"):
        QATLinear.from_float(nn.Linear(4, 4), group_size=3)
    with pytest.raises(TypeError, match="must be indexable"):
        QATMethod().prepare(qviz.load(nn.Linear(4, 4)), qviz.QAT(), iter([torch.ones(1, 4)]), {})
    with pytest.raises(ValueError, match="calibration"):
        qviz.quantize(nn.Sequential(nn.Linear(4, 4)), qviz.QAT(steps=5), progress=False)


@pytest.mark.slow
def test_digits_cnn_qat_recovers_at_least_half_of_rtn_loss(digits):
    x_cal = qviz.calibration_data(digits, n=512)
    x, y = qviz.eval_data(digits)

    def acc(m):
        return float((m.outputs(x).argmax(-1) == y).float().mean())

    fp = acc(digits)
    rtn = acc(qviz.quantize(digits, qviz.RTN(bits=2, group_size=None), progress=False))
    qat = acc(qviz.quantize(digits, qviz.QAT(bits=2, steps=150, lr=1e-3, batch_size=64), calib=x_cal,
                            progress=False))
    assert fp - rtn > 0.01  # RTN at 2 bits loses accuracy ...
    assert qat - rtn >= 0.5 * (fp - rtn)  # ... and QAT wins back at least half of it


@pytest.mark.slow
def test_minilm_qat_runs(minilm, minilm_calib):
    cfg = qviz.QAT(bits=4, group_size=128, steps=2, batch_size=4)
    q = qviz.quantize(minilm, cfg, calib=minilm_calib[:8], layers="encoder.layer.0.attention.self.*", progress=False)
    losses = q.quantization.extra[cfg.label]["qat"].loss.values
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert q.outputs(minilm_calib[:2]).shape == (2, 384)
