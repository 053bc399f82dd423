"""Tests for qviz.plot.dashboard: pure figures from a cmp Dataset."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import xarray as xr

import importlib

import qviz

# qviz.plot.dashboard is the figure function; the module that defines it is reached by name.
D = importlib.import_module("qviz.plot._dashboard")


def _cmp(text: bool = False) -> xr.Dataset:
    configs = ["fp32", "RTN w8", "RTN w4", "RTN w2"]
    eps = [0.0, 0.05, 0.1]
    attacks = ["PGD white-box (STE)", "PGD transfer from fp32"]
    asr = np.array([[[0, 0.1 * k + 0.05 * a, 0.3 * k + 0.1 * a] for a in range(2)] for k in range(1, 5)])
    ds = xr.Dataset(
        {
            "accuracy": ("config", [0.98, 0.98, 0.95, 0.40], {"long_name": "accuracy", "units": "fraction"}),
            "agreement": ("config", [1.0, 0.99, 0.95, 0.4], {"long_name": "agreement", "units": "fraction"}),
            "size_bytes": ("config", [4e6, 1.05e6, 0.55e6, 0.60e6], {"long_name": "size", "units": "B"}),
            "bits_per_weight": ("config", [32, 8.1, 4.2, 2.2], {"long_name": "bits", "units": "bit"}),
            "latency_ms": ("config", [1.0, 0.8, 1.1, 1.1], {"long_name": "latency", "units": "ms"}),
            "throughput": ("config", [900.0, 1000, 850, 850], {"long_name": "throughput", "units": "image/s"}),
            "usd_per_1m": ("config", [0.03, 0.02, 0.03, 0.03], {"long_name": "USD per million", "units": "USD"}),
            "kernel": ("config", np.array(["full precision (torch float32)", "real kernel: numba INT8 GEMV",
                                           "simulated (fake-quant)", "simulated (fake-quant)"], dtype=object)),
            "kernel_class": ("config", np.array(["full precision", "real kernel", "simulated", "simulated"], dtype=object)),
            "attack_success_rate": (("config", "attack", "eps"), asr, {"long_name": "success", "units": "fraction"}),
            "error_amplification": (("config", "layer"), np.array([[1.0, 2.0], [1.0, 2.1], [1.1, 2.5], [1.5, 4.0]])),
        },
        coords={"config": configs, "attack": attacks, "eps": ("eps", eps, {"long_name": "ε", "units": "L∞"}),
                "layer": ["enc.fc1", "enc.fc2"]},
        attrs={"model": "toy", "task": "digits", "amplification_eps": 0.05},
    )
    if text:
        ds["token_attack_success_rate"] = (("config", "token_attack", "n_tokens"), np.tile([0.2, 0.5, 0.7], (4, 2, 1)))
        ds = ds.assign_coords(token_attack=["HotFlip white-box", "HotFlip transfer"], n_tokens=[1, 2, 3])
    return ds


def test_pareto_front_mask():
    assert D.pareto_front(np.array([4, 1.05, 0.55, 0.6]), np.array([0.98, 0.98, 0.95, 0.4])).tolist() == [False, True, True, False]
    assert D.pareto_front(np.array([1.0, np.nan]), np.array([0.5, 0.9])).tolist() == [True, False]


def test_pareto_figure_marks_front_and_labels_axes():
    fig = D.pareto(_cmp())
    assert isinstance(fig, go.Figure)
    front = [t for t in fig.data if t.name == "Pareto front"][0]
    np.testing.assert_allclose(front.x, [0.55, 1.05])
    filled = {t.name for t in fig.data if t.mode == "markers+text" and t.marker.symbol == "circle"}
    assert filled == {"RTN w8", "RTN w4"}
    assert "MB" in fig.layout.xaxis.title.text


def test_cost_bars_say_real_or_simulated():
    fig = D.cost_bars(_cmp(), "latency_ms")
    names = {t.name: list(t.x) for t in fig.data}
    assert names == {"full precision": ["fp32"], "real kernel": ["RTN w8"], "simulated": ["RTN w4", "RTN w2"]}
    assert all(t.text[0] == t.name for t in fig.data)
    with pytest.raises(ValueError, match="cost_bars plots one of"):
        D.cost_bars(_cmp(), "accuracy")


def test_attack_curves_one_line_per_config_and_attack():
    fig = D.attack_curves(_cmp())
    assert len(fig.data) == 4 * 2
    assert fig.data[0].x.tolist() == [0.0, 0.05, 0.1]
    dashes = {t.line.dash for t in fig.data}
    assert dashes == {"solid", "dash"}
    fig_text = D.attack_curves(_cmp(text=True))
    assert len(fig_text.data) == 4 * 2 + 4 * 2


def test_dashboard_has_all_panels_and_survives_missing_metrics():
    fig = qviz.plot.dashboard(_cmp())
    kinds = {type(t).__name__ for t in fig.data}
    assert kinds == {"Scatter", "Bar", "Table"}
    table = [t for t in fig.data if isinstance(t, go.Table)][0]
    assert list(table.cells.values[0]) == ["fp32", "RTN w8", "RTN w4", "RTN w2"]
    assert "kernel" in table.header.values
    html = fig.to_html(full_html=False, include_plotlyjs=False)
    assert "Pareto" in html
    small = _cmp()[["accuracy", "size_bytes"]]
    assert {type(t).__name__ for t in qviz.plot.dashboard(small).data} == {"Scatter", "Table"}


def test_amplification_and_summary_table():
    fig = D.amplification(_cmp())
    assert [t.name for t in fig.data] == ["fp32", "RTN w8", "RTN w4", "RTN w2"]
    assert list(fig.data[0].x) == ["fc1", "fc2"]
    t = D.summary_table(_cmp())
    assert t.data[0].cells.values[1][3] == "0.400"


def test_bad_input():
    with pytest.raises(TypeError, match="takes the Dataset"):
        D.dashboard({"accuracy": 1})
    with pytest.raises(ValueError, match="no 'config' dim"):
        D.pareto(xr.Dataset({"accuracy": ("x", [1.0])}))
    with pytest.raises(ValueError, match="has no 'attack_success_rate'"):
        D.attack_curves(_cmp()[["accuracy"]])


def test_summary_and_curves_show_the_intervals():
    from qviz.evaluate.intervals import annotate, wilson

    ds = _cmp()
    ds["accuracy_n"] = ("config", [200, 200, 200, 200])
    ds["attack_n"] = ("config", [20, 20, 20, 8])
    ds["attack_success_rate"] = (ds.attack_success_rate * ds.attack_n).round().clip(max=ds.attack_n) / ds.attack_n
    ds = annotate(ds)
    header = [h for h in D.summary_table(ds).data[0].header.values]
    cells = dict(zip(header, D.summary_table(ds).data[0].cells.values))
    acc = cells["accuracy [95% CI] (n=200)"]
    _, low, high = wilson(190, 200)
    assert acc[2] == f"0.950 [{low:.2f}, {high:.2f}]"          # 0.95 vs 0.98: within the noise of 200
    assert acc[3].endswith(" *")                                 # 0.40 vs 0.98: beyond it
    attack = [v for h, v in cells.items() if h.startswith("PGD white-box (STE) @")][0]
    assert "(n=8)" in attack[3]
    curve = [t for t in D.attack_curves(ds).data if t.name == "RTN w2 · PGD white-box (STE)"][0]
    assert curve.error_y.array is not None and len(curve.error_y.arrayminus) == 3
    assert D.attack_curves(_cmp()).data[0].error_y.array is None  # no counts, no bars
