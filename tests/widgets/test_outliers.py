"""OutlierExplorer: every control driven through set_state, as the browser would."""

from __future__ import annotations

import numpy as np
import pytest

from qviz.widgets.outliers import OutlierExplorer, top_table_rows


@pytest.fixture()
def explorer(outlier_net, outlier_batch):
    return OutlierExplorer(outlier_net, outlier_batch, debounce=0)


def test_builds_with_the_outlier_layer_selected(explorer):
    assert explorer.last_error is None
    assert explorer.layer_select.value == "norm"  # the input with channels 5 and 17 scaled up
    assert explorer.heatmap.shape[0] == 4 and explorer.heatmap.row_labels == ["norm", "fc1", "fc2", "fc3"]
    assert explorer.threshold_slider.value == 6.0
    assert "<td>5</td>" in explorer.table.value  # the largest channel leads the top-k table
    assert explorer.tokens.shape[0] > 0  # the token x channel map of the selected layer


def test_threshold_slider_recomputes_outliers_without_the_model(explorer, outlier_net):
    calls = []
    handle = outlier_net.register_forward_hook(lambda *a: calls.append(1))
    try:
        before = int(explorer.stats["n_over_threshold"].sel(layer="fc1"))
        explorer.threshold_slider.set_state({"value": 0.5})
        after = int(explorer.stats["n_over_threshold"].sel(layer="fc1"))
    finally:
        handle.remove()
    assert calls == []  # the model did not run again
    assert explorer.heatmap.threshold == 0.5 and explorer.tokens.threshold == 0.5
    assert after > before
    colours = explorer.profile.figure["data"][0]["marker"]["color"]
    assert "#d62728" in list(colours)


def test_layer_dropdown_switches_profile_table_and_token_map(explorer):
    old_title = explorer.profile.title
    explorer.layer_select.set_state({"index": 2})
    assert explorer.layer_select.value == "fc2"
    assert "fc2" in explorer.profile.title and explorer.profile.title != old_title
    assert explorer.heatmap.selected_row == 2
    assert explorer.tokens.shape[1] == 128 and "fc2" in explorer.tokens.title


def test_clicking_a_heatmap_row_selects_that_layer(explorer):
    explorer.heatmap.set_state({"selected_row": 3})
    assert explorer.layer_select.value == "fc3"


def test_statistic_dropdown_sends_new_heatmap_data(explorer, record):
    before = explorer.heatmap.matrix().copy()
    with record(explorer.heatmap) as sent:
        explorer.var_select.set_state({"index": explorer.var_select.options.index("std")})
    assert explorer.heatmap.value_name == "std"
    assert not np.allclose(before, explorer.heatmap.matrix(), equal_nan=True)
    raw = explorer.heatmap.matrix().nbytes
    assert sum(b for _, b in sent) == raw  # the matrix travels once, as a binary buffer
    assert sum(j for j, _ in sent) < 512  # plus a little JSON (shape, title, threshold); see the MiniLM test for 1.1x


def test_top_k_slider_and_log_toggle(explorer):
    explorer.top_k_slider.set_state({"value": 3})
    assert explorer.stats.sizes["rank"] == 3 and explorer.table.value.count("<tr>") == 1 + 3
    explorer.log_toggle.set_state({"value": False})
    assert explorer.heatmap.log_scale is False


def test_a_broken_update_shows_a_message_and_keeps_the_figures(explorer, monkeypatch):
    import qviz.widgets.outliers as mod

    title = explorer.profile.title
    matrix = explorer.heatmap.matrix().copy()

    def boom(*a, **k):
        raise ValueError("threshold must be a positive number")

    monkeypatch.setattr(mod, "outlier_summary", boom)
    explorer.threshold_slider.set_state({"value": 2.0})
    assert "threshold must be a positive number" in explorer.message.value
    assert "Traceback" not in explorer.message.value
    assert explorer.profile.title == title and np.array_equal(explorer.heatmap.matrix(), matrix, equal_nan=True)


def test_static_fallback_has_the_heatmap_picture_and_table(explorer):
    page = explorer.static_html()
    assert page.count("data:image/png;base64,") == 2 and "Top channels" in page and "<script" not in page


def test_displaying_prints_the_static_picture_then_the_live_widget(explorer, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False: shown.append(obj))
    explorer._ipython_display_()
    assert "text/html" in shown[0] and "application/vnd.jupyter.widget-view+json" in shown[1]


def test_explore_a_saved_stats_dataset(outlier_net, outlier_batch):
    from qviz.activations.capture import capture

    stats = capture(outlier_net, outlier_batch, progress=False, sample="fc1")
    ex = OutlierExplorer(stats=stats, debounce=0, threshold=2.0)
    assert ex.model is None and ex.stats.attrs["threshold"] == 2.0
    ex.layer_select.value = "fc1"
    assert ex.tokens.shape[1] == 64


def test_bad_arguments_raise_clear_errors(outlier_net, outlier_batch):
    with pytest.raises(ValueError, match="needs a model and a calibration batch"):
        OutlierExplorer(outlier_net)
    with pytest.raises(TypeError, match="stats Dataset"):
        OutlierExplorer(stats="not a dataset")
    with pytest.raises(ValueError, match="max_channels"):
        OutlierExplorer(outlier_net, outlier_batch, max_channels=0)
    with pytest.raises(ValueError, match="threshold"):
        OutlierExplorer(outlier_net, outlier_batch, threshold=-1.0)


def test_top_table_rows_marks_channels_over_the_threshold(explorer):
    rows = top_table_rows(explorer.stats, "norm", 6.0)
    assert rows[0][1] == 5 and rows[0][6] == "yes"
    assert all(r[6] == ("yes" if r[2] > 6.0 else "no") for r in rows)


@pytest.mark.slow
def test_minilm_outlier_explorer(minilm, minilm_calib, record):
    ex = OutlierExplorer(minilm, minilm_calib, debounce=0)
    assert ex.last_error is None and ex.heatmap.shape[0] == ex.stats.sizes["layer"]
    assert ex.heatmap.shape[1] <= 512 and ex.heatmap.n_cols_total == 1536
    with record(ex.heatmap) as sent:
        ex.var_select.value = "kurtosis"
    raw = ex.heatmap.matrix().nbytes
    assert sum(j + b for j, b in sent) <= 1.1 * raw
    ex.threshold_slider.value = 20.0
    assert int(ex.stats.attrs["threshold"]) == 20
