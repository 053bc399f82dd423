"""Replacement modules: activation fake-quant, fake-quant layers, packed layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qviz.quant.granularity import PerChannel, PerGroup, PerTensor
from qviz.quant.modules import (
    FakeQuantConv2d,
    FakeQuantLinear,
    PackedLinear,
    fake_quant_activation,
    fake_quant_module,
    packed_nbytes,
)
from qviz.quant.primitives import choose_qparams, quantize


def test_activation_per_token_reference():
    x = torch.randn(5, 7, 16)
    got = fake_quant_activation(x, 8, "per-token")
    amax = x.abs().amax(-1, keepdim=True)
    scale = amax / 127
    want = torch.clamp(torch.round(x / scale), -127, 127) * scale
    assert torch.equal(got, want)
    err = (got - x).abs() / scale
    assert float(err.max()) <= 0.5 + 1e-5


def test_activation_per_tensor_zero_and_grad():
    x = torch.zeros(3, 4)
    assert torch.equal(fake_quant_activation(x, 8, "per-tensor"), x)
    x = torch.randn(3, 4, requires_grad=True)
    fake_quant_activation(x, 4, "per-tensor").sum().backward()
    assert torch.equal(x.grad, torch.ones(3, 4))  # straight-through
    with pytest.raises(ValueError, match="from 2 to 8"):
        fake_quant_activation(x, 1)
    with pytest.raises(ValueError, match="scheme"):
        fake_quant_activation(x, 8, "per-channel")


def test_activation_static_scale_rounds_clips_and_passes_gradients():
    x = torch.tensor([[0.26, -0.74, 3.0]], requires_grad=True)
    got = fake_quant_activation(x, 2, "per-tensor", scale=torch.tensor(0.5))  # levels -1, 0, 1 (x 0.5)
    assert got.tolist() == [[0.5, -0.5, 0.5]]  # 3.0 lies beyond the calibrated range: it clips
    got.sum().backward()
    assert torch.equal(x.grad, torch.ones(1, 3))
    with pytest.raises(ValueError, match="one positive number for scheme='per-tensor'"):
        fake_quant_activation(x, 8, "per-token", scale=torch.tensor(0.5))
    with pytest.raises(ValueError, match="one positive number"):
        fake_quant_activation(x, 8, "per-tensor", scale=torch.tensor(0.0))


def test_fake_quant_linear_and_conv():
    lin = nn.Linear(6, 3)
    w_hat = torch.randn(3, 6)
    fq = fake_quant_module(lin, w_hat, act_bits=8)
    assert isinstance(fq, FakeQuantLinear) and isinstance(fq, nn.Linear)
    x = torch.randn(2, 6)
    torch.testing.assert_close(fq(x), fake_quant_activation(x, 8) @ w_hat.T + lin.bias)
    assert torch.equal(fq.bias, lin.bias) and fq.bias is not lin.bias
    conv = nn.Conv2d(2, 4, 3, padding=1, stride=2)
    fc = fake_quant_module(conv, torch.randn(4, 18))
    assert isinstance(fc, FakeQuantConv2d) and fc.stride == (2, 2)
    x = torch.randn(1, 2, 6, 6)
    torch.testing.assert_close(fc(x), nn.functional.conv2d(x, fc.weight, conv.bias, stride=2, padding=1))
    with pytest.raises(TypeError, match="Cannot build"):
        fake_quant_module(nn.LayerNorm(4), torch.randn(4, 4))


def test_gpt2_conv1d_becomes_linear():
    from transformers.pytorch_utils import Conv1D

    c = Conv1D(5, 3)  # weight [in=3, out=5]
    nn.init.normal_(c.weight)
    fq = fake_quant_module(c, c.weight.detach().t())
    x = torch.randn(2, 4, 3)
    torch.testing.assert_close(fq(x), c(x))


@pytest.mark.parametrize(("bits", "gran"), [(4, PerGroup(32)), (4, PerChannel()), (4, PerTensor()), (8, PerChannel()),
                                            (8, PerGroup(32)), (3, PerGroup(32)), (2, PerChannel())])
def test_packed_linear(bits, gran):
    torch.manual_seed(bits)
    w = torch.randn(24, 96)
    qp = choose_qparams(w, gran, bits)
    codes = quantize(w, qp)
    layer = PackedLinear(codes, qp, torch.randn(24))
    assert torch.equal(layer.codes(), codes)
    assert layer.packed.numel() == packed_nbytes(24, 96, bits)
    expect = layer.packed.numel() + 2 * qp.scale.numel() + qp.zero.numel()
    assert layer.nbytes == expect
    x = torch.randn(96)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.weight_hat() @ x + layer.bias, rtol=1e-5, atol=1e-5)
        xb = torch.randn(3, 5, 96)
        torch.testing.assert_close(layer(xb), xb @ layer.weight_hat().T + layer.bias, rtol=1e-5, atol=1e-5)
    assert ("GEMV" in layer.kernel) == ((bits == 4) or (bits == 8 and isinstance(gran, PerChannel)))


def test_packed_gradient_flows_through_float_path():
    w = torch.randn(8, 32)
    qp = choose_qparams(w, PerGroup(16), 4)
    layer = PackedLinear(quantize(w, qp), qp)
    x = torch.randn(32, requires_grad=True)
    layer(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), layer.weight_hat().sum(0).numpy(), rtol=1e-5)
