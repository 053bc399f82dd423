"""The RTN method: byte accounting, W8A8 modules, GPT-2 Conv1D layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qviz
from qviz.quant.primitives import rtn_nbytes
from qviz.quant.registry import method_for


@pytest.mark.parametrize(
    ("cfg", "expect"),
    [
        (qviz.RTN(bits=4, group_size=128), 256 * 512 // 2 + 256 * 4 * 3),
        (qviz.RTN(bits=4, group_size=128, symmetric=True), 256 * 512 // 2 + 256 * 4 * 2),
        (qviz.RTN(bits=3, group_size=None), 256 * 192 + 256 * 3),
        (qviz.RTN(bits=8, group_size="tensor", symmetric=True), 256 * 512 + 2),
        (qviz.RTN(bits=2, group_size=64), 256 * 128 + 256 * 8 * 3),
    ],
)
def test_bytes(cfg, expect):
    assert rtn_nbytes((256, 512), cfg.bits, cfg.group_size, cfg.symmetric) == expect
    assert method_for(cfg).storage_nbytes((256, 512), cfg) == expect


def test_w8a8_modules_quantize_activations():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    q = qviz.quantize(net, qviz.ActQuant(8, "per-tensor"), progress=False)
    assert q.module[0].act_bits == 8 and q.module[0].act_scheme == "per-tensor"
    x = torch.randn(5, 16)
    w_only = qviz.quantize(net, qviz.RTN(bits=8, group_size=None, symmetric=True), progress=False)
    with torch.no_grad():
        assert not torch.equal(q.module(x), w_only.module(x))
        torch.testing.assert_close(q.module(x), w_only.module(x), atol=0.02, rtol=0.02)


def test_gpt2_decoder_quantizes_conv1d_layers():
    model = qviz.load("tiny-gpt2")
    texts = qviz.calibration_data(model, n=4)
    q = qviz.quantize(model, qviz.RTN(bits=8, group_size=None), progress=False)
    assert "transformer.h.0.attn.c_attn" in q.quantization.layers
    assert q.quantization.layers["transformer.h.0.attn.c_attn"].n_weights == 64 * 192
    ref, out = model.outputs(texts), q.outputs(texts)
    assert float(((out - ref) ** 2).mean() / (ref**2).mean()) < 1e-3
