"""Explorer plumbing: debouncing, background jobs, figure sync, the static fallback, assets."""

from __future__ import annotations

import threading
import time

import numpy as np
import plotly.graph_objects as go
import pytest

from qviz.widgets._assets import read_asset, static_dir
from qviz.widgets._base import BackgroundJob, Debouncer, PlotPane
from qviz.widgets._static import bars_html, colourize, encode_png, fallback_html, heatmap_png


def test_assets_are_found_and_are_es_modules():
    assert (static_dir() / "heatmap.js").is_file()
    for name in ("heatmap.js", "frame.js"):
        assert "export default" in read_asset(name)
    assert ".qviz-heatmap" in read_asset("qviz.css")


def test_unknown_asset_names_the_files_there():
    with pytest.raises(FileNotFoundError, match="heatmap.js"):
        read_asset("nope.js")


def test_debouncer_coalesces_a_burst_into_one_call():
    calls = []
    d = Debouncer(lambda: calls.append(time.perf_counter()), delay=0.05)
    for _ in range(10):
        d()
    d.flush()
    assert len(calls) == 1


def test_debouncer_zero_delay_is_synchronous_and_bad_delay_raises():
    calls = []
    Debouncer(lambda: calls.append(1), delay=0)()
    assert calls == [1]
    with pytest.raises(ValueError, match="seconds >= 0"):
        Debouncer(lambda: None, delay=-1)


def test_background_job_reports_progress_and_can_be_cancelled():
    job = BackgroundJob()
    started = threading.Event()
    steps = []

    def slow(job):
        for i in range(100):
            if job.cancelled:
                return
            started.set()
            time.sleep(0.01)
            steps.append(i)
            job.advance(f"step {i}")

    job.start(slow, total=100)
    assert started.wait(5)
    assert not job.cancel_button.disabled
    job.cancel_button.click()  # what the Cancel button in the browser does
    job.wait()
    assert 0 < len(steps) < 100
    assert job.progress.bar_style == "warning" and job.status.value == "cancelled"


def test_a_new_job_supersedes_the_old_one():
    job = BackgroundJob()
    seen = []
    gate = threading.Event()

    def first(job):
        gate.wait(5)
        seen.append(("first", job.cancelled))

    job.start(first, total=1)
    job.start(lambda j: j.advance("second"), total=1)
    gate.set()
    time.sleep(0.1)
    job.wait()
    assert ("first", True) in seen
    assert job.progress.value == 1 and job.status.value == "second"


def test_background_job_shows_an_error_instead_of_dying_silently():
    job = BackgroundJob()

    def bad(job):
        raise ValueError("bits out of range")

    job.start(bad, total=1)
    job.wait()
    assert isinstance(job.error, ValueError)
    assert "bits out of range" in job.status.value and job.progress.bar_style == "danger"


def test_plot_pane_sends_plotly_json_in_one_message(record):
    pane = PlotPane()
    with record(pane) as sent:
        pane.show({"data": [{"type": "bar", "y": np.array([1.0, np.nan, 3.0])}]})
    assert len(sent) == 1
    out = pane.figure
    assert out["data"][0]["y"] == [1.0, None, 3.0]  # NaN is not JSON: it becomes null
    assert "template" in out["layout"]
    pane.show(go.Figure(go.Scatter(y=[1]), layout={"title": {"text": "new"}}))
    assert pane.title == "new" and len(pane.figure["data"]) == 1


def test_plot_pane_sends_plotly_js_once_when_the_browser_asks():
    pane = PlotPane()
    sent = []
    pane.send = lambda content, buffers=None: sent.append((content, buffers))
    pane._on_front_end_message(pane, {"kind": "need-plotly"}, [])
    pane._on_front_end_message(pane, {"kind": "something else"}, [])
    assert len(sent) == 1 and sent[0][0] == {"kind": "plotly-js"}
    bundle = sent[0][1][0]
    assert len(bundle) > 1_000_000 and b"plotly" in bundle[:2000].lower()


def test_png_encoder_writes_a_valid_png():
    png = heatmap_png(np.array([[1.0, 10.0, np.nan], [100.0, 0.5, 2.0]]), threshold=50.0)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and b"IEND" in png
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((2, 2, 3), np.float32))


def test_colourize_marks_nan_grey_and_outliers_red():
    rgb = colourize(np.array([[1.0, np.nan, 100.0]]), threshold=50.0)
    assert rgb[0, 1].tolist() == [235, 235, 235]
    assert rgb[0, 2].tolist() == [214, 39, 40]


def test_static_fallback_is_script_free_html():
    out = fallback_html("abc", "title", [bars_html(["a", "b"], [1.0, 3.0], highlight=1)])
    assert 'data-qviz-static="abc"' in out and "<script" not in out


def test_plot_pane_sends_nothing_when_the_figure_is_unchanged(record):
    pane = PlotPane()
    spec = {"data": [{"type": "bar", "y": [1, 2]}], "layout": {"title": {"text": "same"}}}
    pane.show(spec)
    with record(pane) as sent:
        pane.show(spec)
    assert sent == []
