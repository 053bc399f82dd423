"""The quantization section of qviz report."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

import qviz
from qviz.report_sections.quant import default_configs, section


@pytest.mark.slow
def test_section_on_digits(digits, digits_calib):
    ctx = {"datasets": {}}
    items = section(digits, digits_calib[:16], ctx)
    titles = [t for t, _ in items]
    assert titles[0] == "Summary" and "SQNR vs rate beside the limits" in titles
    assert isinstance(items[0][1], str) and "<table" in items[0][1]
    assert all(isinstance(c, (str, go.Figure)) for _, c in items)
    assert {"errors", "limits", "sensitivity", "recommendation"} <= set(ctx["datasets"])
    errors = ctx["datasets"]["errors"]
    assert errors.sizes["config"] == 6 and errors.sizes["layer"] == 4
    # digits-cnn rows (9, 144) do not divide by 128: per-channel RTN is chosen
    assert "RTN w4 ch asym" in [c.label for c in default_configs(digits)]
    html = items[1][1].to_html(full_html=False, include_plotlyjs=False)
    assert "<div" in html


def test_section_configs_from_ctx():
    from torch import nn

    net = qviz.load(nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)))
    import torch

    ctx = {"quant_configs": [qviz.RTN(bits=8, group_size=None), qviz.RTN(bits=2, group_size=None)],
           "quant_sensitivity": False}
    items = section(net, torch.randn(16, 16), ctx)
    assert ctx["datasets"]["errors"].sizes["config"] == 2 and "sensitivity" not in ctx["datasets"]
    assert len(items) == 5
