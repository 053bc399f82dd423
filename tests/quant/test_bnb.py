"""bitsandbytes methods: real modules, their outputs and the stored bytes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qviz
from qviz.quant.bnb import unpack_4bit
from qviz.quant.config import BnbFP4, BnbNF4


def test_unpack_4bit_layout():
    packed = torch.tensor([[0xAB], [0xC0]], dtype=torch.uint8)
    assert unpack_4bit(packed, (1, 3)).tolist() == [[10, 11, 12]]


def test_int8_module_is_real_and_keeps_bias():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 16))
    q = qviz.quantize(net, qviz.BnbInt8(threshold=6.0), progress=False)
    layer = q.module[0]
    import bitsandbytes as bnb

    assert isinstance(layer, bnb.nn.Linear8bitLt) and layer.weight.dtype == torch.int8
    x = torch.randn(4, 32)
    with torch.no_grad():
        y = q.module(x)
    assert y.dtype == torch.float32 and layer.bias.dtype == torch.float32
    torch.testing.assert_close(y, net(x), atol=0.02, rtol=0.05)


def test_4bit_module_output_equals_dequantized_weight():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.Conv1d(1, 1, 3))
    for cfg in (qviz.BnbNF4(), qviz.BnbFP4(blocksize=128, double_quant=True)):
        q = qviz.quantize(net, cfg, progress=False)
        assert "only linear" in q.quantization.skipped["1"]
        x = torch.randn(3, 64)
        w_hat = qviz.fake_quantize(net[0].weight, cfg)
        with torch.no_grad():
            torch.testing.assert_close(q.module[0](x), x @ w_hat.T + net[0].bias, rtol=1e-5, atol=1e-5)
        assert q.quantization.layers["0"].nbytes == qviz.quantize_tensor(net[0].weight, cfg).nbytes


_STORAGE_CFGS = [qviz.RTN(bits=3, group_size=None), qviz.RTN(bits=4, group_size=32, symmetric=True),
                 qviz.RTN(bits=2, group_size="tensor"), BnbNF4(blocksize=64), BnbNF4(blocksize=32, double_quant=True),
                 BnbFP4(blocksize=4096, double_quant=True), BnbFP4(blocksize=256)]
_STORAGE_CASES = [(shape, cfg) for shape in [(3, 5), (16, 64), (100, 333), (384, 1536)] for cfg in _STORAGE_CFGS
                  # RTN groups must divide the row; bitsandbytes blocks run over the flattened weight
                  if not (isinstance(cfg, qviz.RTN) and isinstance(cfg.group_size, int) and shape[1] % cfg.group_size)]


@pytest.mark.parametrize("shape,cfg", _STORAGE_CASES, ids=[f"{s[0]}x{s[1]}-{c.label}" for s, c in _STORAGE_CASES])
def test_storage_formula_equals_the_bytes_really_stored(shape, cfg):
    from qviz.quant.registry import method_for

    method = method_for(cfg)
    w = torch.randn(*shape)
    assert method.storage_nbytes(shape, cfg) == qviz.quantize_tensor(w, cfg).nbytes
