"""QuantExplorer: every control through set_state, bad input, background work, agreement with layer_error."""

from __future__ import annotations

import html
import math

import numpy as np
import pytest

import qviz
from qviz.widgets._lab import LayerLab, check_fits, make_config, parse_group_size
from qviz.widgets.quant import QuantExplorer


@pytest.fixture()
def explorer(outlier_net, outlier_batch):
    return QuantExplorer(outlier_net, outlier_batch, layer="fc2", group_size=32, debounce=0, background=False)


def test_builds_and_measures_the_selected_layer(explorer):
    assert explorer.last_error is None
    assert explorer.current.layer == "fc2" and explorer.current.config == "RTN w4 g32 asym"
    assert sum(explorer.current.hist.hist) == 96 * 128
    ys = [v for v in explorer.hist.figure["data"][1]["y"] if v is not None]
    assert sum(ys) == 2 * 96 * 128  # each bin is a step: two points per bin
    assert "fc2" in explorer.summary.value and "dB" in explorer.summary.value


def test_bits_control_moves_the_error(explorer):
    sqnr4 = explorer.current.weight_sqnr_db
    explorer.bits_box.set_state({"value": 8})
    sqnr8 = explorer.current.weight_sqnr_db
    explorer.bits_box.set_state({"value": 2})
    sqnr2 = explorer.current.weight_sqnr_db
    assert sqnr2 < sqnr4 < sqnr8 and sqnr8 - sqnr4 > 18  # about 6 dB per bit
    assert explorer.sqnr.figure["data"][2]["y"][0] == pytest.approx(sqnr2)


def test_group_size_and_symmetric_controls(explorer):
    explorer.group_box.set_state({"value": "channel"})
    assert explorer.current.config == "RTN w4 ch asym"
    explorer.symmetric_box.set_state({"value": True})
    assert explorer.current.config == "RTN w4 ch sym"
    explorer.group_box.set_state({"value": "tensor"})
    assert explorer.current.config == "RTN w4 tensor sym"


def test_layer_control_switches_the_histogram(explorer):
    explorer.layer_select.set_state({"index": explorer.layer_select.options.index("fc1")})
    assert explorer.current.layer == "fc1"
    assert sum(v for v in explorer.hist.figure["data"][0]["y"] if v is not None) == 2 * 128 * 64
    assert "fc1" in explorer.hist.title


@pytest.mark.parametrize(
    ("method", "label"),
    [("NF4", "bnb nf4 b32"), ("FP4", "bnb fp4 b32"), ("Int8", "bnb int8 t6.0")],
)
def test_method_control(explorer, method, label):
    explorer.method_select.set_state({"index": explorer.method_select.options.index(method)})
    assert explorer.last_error is None, explorer.last_error
    assert explorer.current.config == label
    assert explorer.bits_box.disabled  # fixed-width formats ignore the bits box


def test_threshold_and_alpha_controls(explorer):
    explorer.method_select.value = "Int8"
    explorer.threshold_box.set_state({"value": 3.0})
    assert explorer.current.config == "bnb int8 t3.0"
    explorer.method_select.value = "SmoothQuant"
    explorer.alpha_slider.set_state({"value": 0.8})
    assert explorer.last_error is None, explorer.last_error
    assert explorer.current.config.startswith("SmoothQuant a0.8")
    assert not explorer.alpha_slider.disabled and explorer.threshold_box.disabled


def test_metric_control_changes_what_the_bars_show(explorer):
    explorer.metric_select.set_state({"index": list(explorer.metric_select.options).index("bits per weight")})
    bars = [v for v in explorer.bars.figure["data"][0]["y"] if v is not None]
    assert bars == [pytest.approx(explorer.current.bits_per_weight)]
    assert "bits per weight" in explorer.bars.title


@pytest.mark.parametrize(
    ("control", "value", "message"),
    [
        ("group_box", "5", "group size 5 does not divide the 128 input columns of fc2"),
        ("group_box", "12x", "group size '12x' is not understood"),
        ("bits_box", 9, "bits must be an int from 2 to 8; got 9"),
        ("bits_box", 1, "bits must be an int from 2 to 8; got 1"),
        ("threshold_box", -1.0, "threshold must be a number >= 0"),
    ],
)
def test_bad_input_shows_a_message_and_keeps_the_previous_figure(explorer, control, value, message):
    if control == "threshold_box":
        explorer.method_select.value = "Int8"
    before = (explorer.current.config, list(explorer.hist.figure["data"][1]["y"]), explorer.summary.value)
    getattr(explorer, control).set_state({"value": value})
    assert message in explorer.last_error and html.escape(message) in explorer.message.value
    assert "Traceback" not in explorer.message.value
    assert (explorer.current.config, list(explorer.hist.figure["data"][1]["y"]), explorer.summary.value) == before
    # a good value clears the message
    getattr(explorer, control).set_state({"value": {"group_box": "32", "bits_box": 4, "threshold_box": 6.0}[control]})
    assert explorer.message.value == "" and explorer.last_error is None


def test_background_fills_every_layer_and_the_sweep(outlier_net, outlier_batch):
    ex = QuantExplorer(outlier_net, outlier_batch, group_size=32, debounce=0)
    ex.flush()
    assert ex.job.error is None and ex.job.progress.value == ex.job.progress.max
    assert all(v is not None for v in ex.bars.figure["data"][0]["y"])
    res = ex.results[("RTN w4 g32 asym", "fc1")]
    assert math.isfinite(res.output_rel_err) and res.lq is None  # replacement modules are not kept
    curve = ex.sweeps[next(iter(ex.sweeps))]
    assert [b for b, _, _ in curve] == [2, 3, 4, 5, 6, 7, 8]
    assert np.all(np.diff([s for _, _, s in curve]) > 0)
    assert set(ex.refs["fc1"]) >= {"bnb nf4 b64", "bnb int8 t6.0"}
    assert ex.static_html().count("<tr>") >= len(ex.lab.names)


def test_a_control_change_cancels_the_stale_background_job(outlier_net, outlier_batch):
    ex = QuantExplorer(outlier_net, outlier_batch, group_size=32, debounce=0)
    ex.bits_box.value = 3
    ex.flush()
    assert ex.current.config == "RTN w3 g32 asym"
    assert ex.bars.title.startswith("weight SQNR per layer · RTN w3 g32 asym (3/3")


def test_set_changes_several_controls_in_one_update(explorer):
    explorer.set(method="RTN", bits=6, group_size=64, symmetric=True)
    assert explorer.current.config == "RTN w6 g64 sym"
    with pytest.raises(ValueError, match="Unknown control"):
        explorer.set(colour="red")


def test_layer_numbers_match_layer_error(outlier_net, outlier_batch):
    cfg = qviz.RTN(bits=4, group_size=32)
    lab = LayerLab(outlier_net, outlier_batch)
    res = lab.quantize("fc2", cfg)
    lab.output_error(res, cfg)
    from qviz.measure.error import layer_error

    ref = layer_error(outlier_net, cfg, calib=outlier_batch, layers=["fc2"])
    assert res.weight_sqnr_db == pytest.approx(float(ref.weight_sqnr_db.sel(layer="fc2")), rel=1e-9)
    assert res.weight_mse == pytest.approx(float(ref.weight_mse.sel(layer="fc2")), rel=1e-6)
    assert res.bits_per_weight == pytest.approx(float(ref.bits_per_weight.sel(layer="fc2")))
    assert res.output_rel_err == pytest.approx(float(ref.output_rel_err.sel(layer="fc2")), rel=1e-6)


def test_user_model_is_not_changed(outlier_net, outlier_batch):
    before = {k: v.clone() for k, v in outlier_net.state_dict().items()}
    ex = QuantExplorer(outlier_net, outlier_batch, debounce=0, group_size=32)
    ex.set(method="SmoothQuant", alpha=0.3)
    ex.set(method="NF4")
    ex.flush()
    after = outlier_net.state_dict()
    assert all(torch_equal(before[k], after[k]) for k in before)
    assert not any(len(m._forward_hooks) for m in outlier_net.modules())


def torch_equal(a, b):
    return bool((a == b).all())


def test_bad_arguments_raise(outlier_net, outlier_batch):
    with pytest.raises(ValueError, match="Unknown layer 'fc9'"):
        QuantExplorer(outlier_net, outlier_batch, layer="fc9")
    with pytest.raises(ValueError, match="Unknown method"):
        QuantExplorer(outlier_net, outlier_batch, method="magic")
    with pytest.raises(ValueError, match="empty calibration batch"):
        QuantExplorer(outlier_net, [])


def test_parse_group_size_and_make_config():
    assert parse_group_size(" 64 ") == 64 and parse_group_size("") is None and parse_group_size(None) is None
    assert make_config("GPTQ", bits=3, group_size="channel").label.startswith("GPTQ w3 ch")
    with pytest.raises(ValueError, match="Unknown method"):
        make_config("magic")
    with pytest.raises(ValueError, match="not 'tensor'"):
        make_config("NF4", group_size="tensor")
    with pytest.raises(ValueError, match="divisor such as 32, 64, 128"):
        check_fits(make_config("RTN", group_size=100), "layer", 384)


@pytest.mark.slow
def test_minilm_quant_explorer_big_layer(minilm, minilm_calib):
    ex = QuantExplorer(minilm, minilm_calib, layer="encoder.layer.0.intermediate.dense", debounce=0, background=False)
    assert ex.last_error is None and ex.lab.shape(ex.layer_select.value) == (1536, 384)
    ex.bits_box.value = 3
    assert ex.current.config == "RTN w3 g128 asym" and 10 < ex.current.weight_sqnr_db < 20
    ex.group_box.value = "100"
    assert "does not divide the 384 input columns" in ex.message.value


def test_revisiting_a_config_gives_the_same_numbers(outlier_net, outlier_batch):
    lab = LayerLab(outlier_net, outlier_batch)
    cfg = qviz.RTN(bits=3, group_size=32)
    first = lab.quantize("fc1", cfg)  # quantize_tensor: codes and storage
    again = lab.quantize("fc1", cfg)  # storage known: the fused fake-quant pass
    assert again.weight_sqnr_db == first.weight_sqnr_db and again.bits_per_weight == first.bits_per_weight
    assert np.array_equal(again.hist.hist, first.hist.hist)
