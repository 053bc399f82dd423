"""Outlier figures: built from a stats Dataset, maxima preserved, hover carries the values."""

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from torch import nn

import qviz
from qviz.plot import downsample_max


@pytest.fixture(scope="module")
def stats():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 600), nn.ReLU(), nn.LayerNorm(600), nn.Linear(600, 4))
    x = torch.randn(64, 8)
    x[:, 3] *= 40
    return qviz.capture(net, x, sample="3", progress=False)


def test_downsample_keeps_the_true_maximum():
    rng = np.random.default_rng(0)
    values = rng.random((3, 1000))
    values[1, 777] = 1e6
    reduced, starts = downsample_max(values, 100)
    assert reduced.shape == (3, 100) and starts[0] == 0
    assert reduced.max() == 1e6 and reduced[1, 777 // 10] == 1e6
    np.testing.assert_array_equal(reduced.max(1), values.max(1))
    same, idx = downsample_max(values[:, :50], 100)
    np.testing.assert_array_equal(same, values[:, :50])
    with pytest.raises(ValueError, match="max_cols"):
        downsample_max(values, 0)


def test_heatmap_log_colour_and_hover(stats):
    fig = qviz.plot.heatmap(stats, max_channels=100)
    trace = fig.data[0]
    assert isinstance(trace, go.Heatmap) and list(trace.y) == ["0", "2", "3"]
    assert trace.z.shape[1] <= 100
    # the largest value survives downsampling, on a log10 scale
    np.testing.assert_allclose(np.nanmax(trace.z), np.log10(np.nanmax(stats["absmax"].values)))
    assert "layer %{y}" in trace.hovertemplate and "channel" in trace.hovertemplate
    with pytest.raises(ValueError, match="var must be"):
        qviz.plot.heatmap(stats, var="nope")


def test_outlier_bars_profile_recurrence_and_dashboard(stats):
    bars = qviz.plot.outlier_bars(stats)
    ys = np.concatenate([np.asarray(t.y, dtype=float) for t in bars.data])
    np.testing.assert_allclose(np.sort(ys), np.sort(stats["outlier_ratio"].values))
    prof = qviz.plot.channel_profile(stats, "0", threshold=6.0)
    red = [c for c in prof.data[0].marker.color if c == "#d62728"]
    assert len(red) == int((stats["absmax"].sel(layer="0").values[:8] > 6).sum()) >= 1
    assert isinstance(qviz.plot.channel_recurrence(stats), go.Figure)
    dash = qviz.plot.outliers(stats)
    assert len(dash.data) == 1 + len(bars.data)
    with pytest.raises(ValueError, match="Unknown layer"):
        qviz.plot.channel_profile(stats, "99")


def test_token_map_needs_a_sample(stats):
    fig = qviz.plot.token_map(stats, "3")
    assert fig.data[0].z.shape == (64, 300)  # 600 channels in blocks of 2
    with pytest.raises(ValueError, match="no token × channel sample"):
        qviz.plot.token_map(stats.drop_vars("sample"))
    with pytest.raises(ValueError, match="No sample was kept"):
        qviz.plot.token_map(stats, "0")


def test_unknown_figure_name():
    with pytest.raises(AttributeError, match="has no figure"):
        qviz.plot.not_a_figure  # noqa: B018
