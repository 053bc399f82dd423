"""Quantization figures are pure functions of the Datasets."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
import xarray as xr
from torch import nn

import qviz
from qviz.plot import quant as qplot


@pytest.fixture(scope="module")
def datasets():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 8))
    x = torch.randn(32, 128)
    errors = qviz.layer_error(net, [qviz.RTN(bits=8, group_size=None), qviz.RTN(bits=3, group_size=None)], calib=x)
    lim = qviz.limits(net, bits=[2, 4, 8])
    return errors, lim


def test_layer_error_bars(datasets):
    errors, _ = datasets
    before = errors.copy(deep=True)
    fig = qplot.layer_error(errors)
    assert isinstance(fig, go.Figure) and [t.name for t in fig.data] == list(errors.config.values)
    np.testing.assert_array_equal(fig.data[1].y, errors.output_rel_err.sel(config="RTN w3 ch asym").values)
    assert fig.layout.yaxis.type == "log"
    assert qplot.layer_error(errors, "weight_sqnr_db").layout.yaxis.type == "linear"
    single = qplot.layer_error(errors.isel(config=0).drop_vars("config"))
    assert len(single.data) == 1
    assert errors.identical(before)  # figures never change their input
    with pytest.raises(ValueError, match="no variable 'nope'"):
        qplot.layer_error(errors, "nope")
    with pytest.raises(TypeError, match="xarray Dataset"):
        qplot.layer_error({"output_rel_err": 1})


def test_bits_heatmap(datasets):
    errors, lim = datasets
    fig = qplot.bits_heatmap(lim)
    z = np.asarray(fig.data[0].z)
    np.testing.assert_array_equal(z, lim.sqnr_db.isel(scheme=0).transpose("layer", "bits").values)
    assert list(fig.data[0].x) == ["2", "4", "8"]
    fig2 = qplot.bits_heatmap(errors, "output_rel_err")
    np.testing.assert_allclose(np.asarray(fig2.data[0].z), np.log10(errors.output_rel_err.values))
    with pytest.raises(ValueError, match="unknown scheme"):
        qplot.bits_heatmap(lim, scheme="nope")


def test_sqnr_vs_bits(datasets):
    _, lim = datasets
    fig = qplot.sqnr_vs_bits(lim)
    names = [t.name for t in fig.data]
    assert names[0].startswith("Shannon lower bound") and len(fig.data) == 3 + 2 * lim.sizes["scheme"]
    np.testing.assert_allclose(fig.data[0].y, lim.shannon_bound_db.mean("layer").values)
    one = qplot.sqnr_vs_bits(lim, layer="0")
    np.testing.assert_allclose(one.data[3].y, lim.sqnr_db.sel(layer="0").isel(scheme=0).values)
    np.testing.assert_allclose(one.data[3].x, lim.bits_per_weight.sel(layer="0").isel(scheme=0).values)
    with pytest.raises(ValueError, match="unknown layer"):
        qplot.sqnr_vs_bits(lim, layer="zz")


def test_recommendation_figure():
    ds = xr.Dataset(
        {"assignment": ("layer", ["a", "b", "a"]), "bits_per_weight": ("layer", [8.1, 2.2, 8.1]),
         "sensitivity": ("layer", [0.0, 0.1, 0.0]), "predicted": 0.1, "measured": 0.12,
         "budget_bits_per_weight": 6.0},
        coords={"layer": ["x.0", "x.1", "x.2"]},
    )
    fig = qplot.recommendation(ds)
    assert [t.name for t in fig.data] == ["a", "b"] and "0.12" in fig.layout.title.text
    with pytest.raises(ValueError, match="qviz.recommend"):
        qplot.recommendation(ds.drop_vars("measured"))


def test_reached_through_qviz_plot(datasets):
    errors, _ = datasets
    assert isinstance(qviz.plot.layer_error(errors), go.Figure)
    assert qviz.plot.sqnr_vs_bits is qplot.sqnr_vs_bits
