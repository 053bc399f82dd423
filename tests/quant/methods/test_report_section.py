"""The methods section of ``qviz report``: items, Datasets and figures on a real model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qviz
from qviz.report_sections.methods import section, wins_table


@pytest.mark.slow
def test_section_on_digits_cnn(digits, digits_calib):
    ctx = {"datasets": {}, "methods_alphas": [0.5, 0.8]}
    items = section(digits, digits_calib, ctx)
    titles = [t for t, _ in items]
    assert titles[0] == "Summary" and any(t.startswith("AWQ search on") for t in titles)
    assert all(isinstance(body, str) and body for _, body in items)
    assert all("<script" not in body or "plotly" in body.lower() for _, body in items)
    assert {"method_errors", "smoothing_ranges", "awq_search", "gptq_loss", "smoothquant_sweep"} <= set(ctx["datasets"])
    errors = ctx["datasets"]["method_errors"]
    assert set(errors.layer.values) == {"fc1", "fc2"}  # the Linear layers
    sweep = ctx["datasets"]["smoothquant_sweep"]
    assert "accuracy" in sweep
    # the layer-by-layer SmoothQuant is the sweep's best alpha, and the summary says so
    best = float(sweep.alpha.values[int(sweep.cosine.argmax())])
    assert qviz.SmoothQuant(alpha=best, act_scheme="per-tensor").label in list(errors.config.values)
    assert f"SmoothQuant uses alpha = {best:g}, the best of the held-out sweep" in items[0][1]


def test_section_without_linear_layers_says_so():
    items = section(qviz.load(nn.Sequential(nn.Conv2d(1, 2, 3))), torch.randn(4, 1, 5, 5), {"datasets": {}})
    assert items == [("Summary", "<p>The model has no Linear layer; the outlier-aware methods quantize Linear layers.</p>")]


def test_wins_table_counts():
    import xarray as xr

    errors = xr.Dataset({"output_rel_err": (("layer", "config"), [[0.1, 0.2], [0.3, 0.1], [0.2, 0.4]])},
                        coords={"layer": ["a", "b", "c"], "config": ["RTN", "GPTQ"]})
    assert "<td>2/3 (67%)</td>" in wins_table(errors, [("RTN", "GPTQ")])
