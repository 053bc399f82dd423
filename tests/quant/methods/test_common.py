"""Shared pieces of the methods: replacement modules and input checks (the arithmetic: tests/quant/test_primitives.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qviz.quant.methods._common import ScaledFakeQuantLinear, check_alpha, check_matrix, replacement_for


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
