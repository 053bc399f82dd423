"""Figures of the outlier-aware methods: built from real method outputs, and bad input."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
import torch
import xarray as xr

import qviz
from qviz.quant.methods import awq_search, smoothing_ranges
from qviz.quant.methods.gptq import gptq_loss_dataset
from qviz.quant.methods.qat import qat_loss_dataset


def test_smoothing_ranges_figure():
    ds = smoothing_ranges(torch.tensor([40.0, 1.0, 2.0, 1.5]), torch.rand(8, 4) + 0.1, 0.5)
    fig = qviz.plot.smoothing_ranges(ds)
    assert isinstance(fig, go.Figure) and len(fig.data) == 4
    assert fig.data[0].name == "before (max/median 22.9)"  # 40 / median(1, 1.5, 2, 40) = 40 / 1.75
    assert list(fig.data[1].y) == pytest.approx(list(ds.act_absmax.sel(stage="after").values))


def test_awq_search_figure():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(128, 16, generator=gen)
    X[:, 0] *= 10
    ds = awq_search(torch.randn(8, 16, generator=gen), X, bits=3, group_size=8, n_grid=6)
    fig = qviz.plot.awq_search(ds)
    assert list(fig.data[0].x) == pytest.approx(list(ds.alpha.values))
    assert fig.data[1].x[0] == float(ds.best_alpha)
    assert len(fig.data) == 4  # scale curve, chosen point, clip curve, per-group best


def test_gptq_loss_figure_marks_flagged_layers():
    layers = {f"enc.l{i}": {"gptq_loss": 1.0, "gptq_rel_loss": 0.01, "rtn_rel_loss": 0.03, "n_tokens": 50.0}
              for i in range(4)}
    layers["enc.odd"] = {"gptq_loss": 9.0, "gptq_rel_loss": 0.5, "rtn_rel_loss": 0.6, "n_tokens": 50.0}
    fig = qviz.plot.gptq_loss(gptq_loss_dataset(layers))
    assert list(fig.data[1].marker.color).count("#d62728") == 1
    assert "1 flagged" in fig.layout.title.text
    assert list(fig.data[0].x) == ["l0", "l1", "l2", "l3", "odd"]


def test_alpha_sweep_and_qat_figures():
    ds = xr.Dataset({"cosine": ("alpha", [0.97, 0.99, 0.98]), "naive_cosine": ((), 0.95)},
                    coords={"alpha": [0.3, 0.5, 0.7]}, attrs={"act_scheme": "per-tensor"})
    fig = qviz.plot.alpha_sweep(ds)
    assert fig.layout.annotations[0].text == "best alpha 0.5"
    fig = qviz.plot.qat_loss(qat_loss_dataset([1.0, 0.8, 0.5, 0.4]))
    assert list(fig.data[0].y) == [1.0, 0.8, 0.5, 0.4]


def test_method_wins_counts_layers():
    ds = xr.Dataset({"output_rel_err": (("layer", "config"), [[0.02, 0.01, 0.03], [0.04, 0.02, 0.01]])},
                    coords={"layer": ["a", "b"], "config": ["GPTQ w4", "RTN w4", "AWQ w4"]})
    fig = qviz.plot.method_wins(ds)
    assert [t.name for t in fig.data] == ["GPTQ w4: wins on 0/2 layers", "AWQ w4: wins on 1/2 layers"]
    with pytest.raises(ValueError, match="baseline 'nope' is not a config"):
        qviz.plot.method_wins(ds, baseline="nope")


@pytest.mark.parametrize("fn", ["smoothing_ranges", "alpha_sweep", "awq_search", "gptq_loss", "qat_loss", "method_wins"])
def test_bad_input(fn):
    figure = getattr(qviz.plot, fn)
    with pytest.raises(TypeError, match="takes an xarray Dataset"):
        figure({"loss": [1.0]})
    with pytest.raises(ValueError, match="the Dataset lacks"):
        figure(xr.Dataset({"other": ("x", [1.0])}))
