"""Shared pieces of the methods: torch RTN arithmetic against the kernels, sizes, replacement modules, checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import kernels_numba
from qviz.methods._common import (
    ScaledFakeQuantLinear,
    check_alpha,
    check_matrix,
    group_params,
    quantize_with,
    replacement_for,
    rtn_quantize,
    weight_nbytes,
)


@pytest.mark.parametrize("bits,group_size,symmetric", [(2, None, False), (3, 8, False), (4, 16, True), (8, None, True)])
def test_torch_params_and_rounding_equal_the_kernels(bits, group_size, symmetric):
    gen = torch.Generator().manual_seed(bits)
    w = torch.randn(16, 32, generator=gen) * torch.logspace(-3, 1, 16)[:, None]  # rows of very different ranges
    w[3] = 0.0  # an all-zero row: scale 1, dequantizes to 0
    p = group_params(w, bits, group_size, symmetric)
    codes, w_hat = quantize_with(w, p, group_size)
    qp = kernels_numba.choose_qparams(w.numpy(), bits, group_size, symmetric)
    assert np.array_equal(p.scale.numpy(), qp.scale)
    assert np.array_equal(p.zero.numpy().astype(np.uint8), qp.zero)
    assert np.array_equal(codes.numpy(), kernels_numba.quantize(w.numpy(), qp))
    assert torch.equal(w_hat, rtn_quantize(w, bits, group_size, symmetric)[0])


def test_weight_nbytes():
    assert weight_nbytes(384, 1536, 4, 128, False) == 384 * 1536 // 2 + 384 * 12 * 3
    assert weight_nbytes(10, 10, 3, None, True) == 10 * 4 + 10 * 2  # rows of ceil(30 / 8) bytes + fp16 scale per row
    from qviz.quant.config import RTN
    from qviz.quant.rtn import rtn_nbytes

    for shape, cfg in [((384, 1536), RTN(bits=3, group_size=128)), ((10, 30), RTN(bits=3, group_size=None, symmetric=True))]:
        assert weight_nbytes(*shape, cfg.bits, cfg.group_size, cfg.symmetric) == rtn_nbytes(shape, cfg)


def test_scaled_linear_applies_its_input_scale_first():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    s = torch.tensor([2.0, 0.5, 1.0, 4.0])
    q = replacement_for(lin, lin.weight.detach() * s, input_scale=1.0 / s)
    assert isinstance(q, ScaledFakeQuantLinear)
    x = torch.randn(5, 4)
    assert torch.allclose(q(x), lin(x), atol=1e-6)
    assert "input_scale=explicit" in repr(q)
    with pytest.raises(TypeError, match="needs a Linear layer"):
        replacement_for(nn.Conv2d(1, 1, 1), torch.ones(1, 1), input_scale=torch.ones(1))


def test_checks_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        check_alpha(1.01)
    with pytest.raises(TypeError, match="must be a number"):
        check_alpha("0.5")
    with pytest.raises(ValueError, match="must be 2-D"):
        check_matrix(torch.ones(3), "X")
    with pytest.raises(ValueError, match="has 3 columns but 4 were expected"):
        check_matrix(torch.ones(2, 3), "X", cols=4)
    with pytest.raises(ValueError, match="2 NaN/Inf"):
        check_matrix(torch.tensor([[float("nan"), float("inf")]]), "X")
