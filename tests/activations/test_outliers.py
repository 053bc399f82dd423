"""outlier_summary: derived per-layer figures, recomputable without the model."""

import numpy as np
import pytest
import xarray as xr

import qviz
from qviz.activations.outliers import recurring_channels


def _stats():
    absmax = np.array([[1.0, 2.0, 1.0, 30.0], [0.0, 1.0, 8.0, 1.0], [1.0, 1.0, 1.0, np.nan]])
    return xr.Dataset({"absmax": (("layer", "channel"), absmax)}, coords={"layer": ["a", "b", "c"]})


def test_summary_values():
    s = qviz.outlier_summary(_stats(), threshold=6.0, top_k=2)
    np.testing.assert_allclose(s["outlier_ratio"].values, [30 / 1.5, 8.0, 1.0])
    assert s["n_over_threshold"].values.tolist() == [1, 1, 0]
    assert s["n_dead_channels"].values.tolist() == [0, 1, 0]
    assert s["top_channels"].values[:, 0].tolist() == [3, 2, 0]
    assert s.attrs["threshold"] == 6.0


def test_threshold_is_recomputed_without_mutation():
    base = qviz.outlier_summary(_stats(), threshold=6.0)
    low = qviz.outlier_summary(base, threshold=1.5)
    assert low["n_over_threshold"].values.tolist() == [2, 1, 0]
    assert base["n_over_threshold"].values.tolist() == [1, 1, 0]


def test_recurrence():
    s = qviz.outlier_summary(_stats(), top_k=1)
    assert recurring_channels(s, min_layers=1) == [(0, 1), (2, 1), (3, 1)]


def test_bad_input():
    with pytest.raises(TypeError, match="stats Dataset"):
        qviz.outlier_summary(xr.Dataset())
    with pytest.raises(ValueError, match="threshold"):
        qviz.outlier_summary(_stats(), threshold=0)
    with pytest.raises(ValueError, match="top_k"):
        qviz.outlier_summary(_stats(), top_k=0)
