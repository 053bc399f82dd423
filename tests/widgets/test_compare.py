"""CompareDashboard on a comparison Dataset shaped like qviz.compare's (no model runs)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from qviz.widgets.compare import CompareDashboard, compare_figure, pareto_front


@pytest.fixture()
def cmp():
    configs = ["fp32", "RTN w8 ch asym", "RTN w4 g128 asym", "bnb nf4 b64", "RTN w2 g128 asym"]
    eps = [0.0, 0.01, 0.03]
    rng = np.random.default_rng(0)
    asr = np.sort(rng.random((5, 3)), axis=1)
    asr[:, 0] = 0.0
    ds = xr.Dataset(
        {
            "accuracy": ("config", [0.95, 0.95, 0.93, 0.94, 0.40], {"long_name": "accuracy", "units": "1"}),
            "agreement": ("config", [1.0, 0.99, 0.96, 0.97, 0.45], {"long_name": "agreement with fp32", "units": "1"}),
            "size_bytes": ("config", [4e6, 1.1e6, 0.6e6, 0.6e6, 0.35e6], {"long_name": "model size", "units": "byte"}),
            "bits_per_weight": ("config", [32.0, 8.4, 4.2, 4.5, 2.2], {"long_name": "bits per weight", "units": "bit"}),
            "attack_success_rate": (("config", "eps"), asr, {"long_name": "attack success rate", "units": "1"}),
        },
        coords={"config": configs, "eps": eps},
        attrs={"model": "digits-cnn"},
    )
    return ds


def test_pareto_front_marks_the_non_dominated_configs(cmp):
    front = pareto_front(cmp.size_bytes.values, cmp.accuracy.values)
    # fp32 is beaten by RTN w8 (same accuracy, smaller); w4 and nf4 tie on size, nf4 is more accurate
    assert front.tolist() == [False, True, False, True, True]
    assert pareto_front([1.0, np.nan], [1.0, 2.0]).tolist() == [True, False]


def test_dashboard_builds_with_size_and_accuracy(cmp):
    d = CompareDashboard(cmp, debounce=0)
    assert d.last_error is None
    assert (d.x_select.value, d.y_select.value) == ("size_bytes", "accuracy")
    assert len(d.robustness.figure["data"]) == 5 and d.table.value.count("<tr>") == 1 + 5


def test_config_checkboxes(cmp):
    d = CompareDashboard(cmp, debounce=0)
    d.checkboxes["RTN w2 g128 asym"].set_state({"value": False})
    assert "RTN w2 g128 asym" not in list(d.pareto.figure["data"][1]["text"])
    assert len(d.robustness.figure["data"]) == 4 and d.table.value.count("<tr>") == 1 + 4


def test_metric_choice(cmp):
    d = CompareDashboard(cmp, debounce=0)
    d.y_select.set_state({"index": list(d.y_select.options).index("agreement")})
    d.x_select.set_state({"index": list(d.x_select.options).index("bits_per_weight")})
    assert list(d.pareto.figure["data"][1]["y"]) == pytest.approx(cmp.agreement.values.tolist())
    assert list(d.pareto.figure["data"][1]["x"]) == pytest.approx(cmp.bits_per_weight.values.tolist())
    assert "agreement vs bits_per_weight" in d.pareto.title
    d.curve_select.set_state({"index": 0})
    assert d.curve_select.value == "attack_success_rate"


def test_unticking_every_config_shows_a_message_and_keeps_the_chart(cmp):
    d = CompareDashboard(cmp, debounce=0)
    for name in d.configs[:-1]:
        d.checkboxes[name].value = False
    kept = list(d.pareto.figure["data"][1]["text"])
    d.checkboxes[d.configs[-1]].set_state({"value": False})
    assert "tick at least one config" in d.message.value
    assert list(d.pareto.figure["data"][1]["text"]) == kept


def test_static_picture_and_figure(cmp):
    d = CompareDashboard(cmp, debounce=0)
    assert "fp32" in d.static_html() and "<script" not in d.static_html()
    fig = compare_figure(cmp)
    assert len(fig.data) == 2 + 5


def test_bad_input(cmp):
    with pytest.raises(TypeError, match="qviz.compare"):
        CompareDashboard("not a dataset")
    with pytest.raises(ValueError, match="not a per-config variable"):
        CompareDashboard(cmp, x="sizes_bytes")
    with pytest.raises(ValueError, match="no numeric variable"):
        CompareDashboard(xr.Dataset(coords={"config": ["a"]}))
