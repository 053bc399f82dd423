"""Before/after outlier figures."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import qviz


def stats(rows: list[list[float]], names=("a", "b")) -> xr.Dataset:
    return xr.Dataset({"absmax": (("layer", "channel"), np.array(rows))}, coords={"layer": list(names)})


def test_outlier_change_and_figures():
    before = stats([[1, 1, 1, 100], [2, 2, np.nan, np.nan]])  # a narrower layer is NaN-padded
    after = stats([[1, 2, 3, 4], [2, 2, 2, 2]])
    ch = qviz.plot.outlier_change(before, after)
    assert ch.outlier_ratio.dims == ("layer", "stage") and list(ch.stage.values) == ["original", "rotated"]
    np.testing.assert_allclose(ch.reduction.values, [(100 / 1) / (4 / 2.5), 1.0])
    fig = qviz.plot.outlier_ratio_change(before, after, labels=("naive", "smoothed"))
    assert [t.name for t in fig.data] == ["naive", "smoothed"] and "median reduction 31.8x" in fig.layout.title.text
    heat = qviz.plot.heatmap_change(before, after)
    assert len(heat.data) == 2 and heat.data[0].zmin == heat.data[1].zmin == 0.0
    assert heat.data[0].zmax == pytest.approx(2.0)


def test_bad_input():
    with pytest.raises(ValueError, match="share no layer"):
        qviz.plot.outlier_change(stats([[1, 2]], ["a"]), stats([[1, 2]], ["z"]))
    with pytest.raises(ValueError, match="two different strings"):
        qviz.plot.outlier_change(stats([[1, 2]], ["a"]), stats([[1, 2]], ["a"]), labels=("x", "x"))
    with pytest.raises(TypeError, match="qviz.capture"):
        qviz.plot.heatmap_change({}, stats([[1, 2]], ["a"]))
