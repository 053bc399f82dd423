"""The canvas heatmap: binary payload, downsampling that keeps maxima, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from qviz.widgets._canvas import HeatmapCanvas, matrix_payload


def test_payload_is_raw_float32_bytes_row_major():
    values = np.arange(12, dtype=np.float64).reshape(3, 4)
    p = matrix_payload(values, ["a", "b", "c"])
    assert p["shape"] == [3, 4] and p["col_starts"] == []
    assert np.array_equal(np.frombuffer(p["values"], np.float32).reshape(3, 4), values.astype(np.float32))


def test_payload_downsampling_keeps_each_blocks_maximum():
    values = np.zeros((2, 1000))
    values[1, 777] = 50.0
    p = matrix_payload(values, max_cols=100)
    m = np.frombuffer(p["values"], np.float32).reshape(p["shape"])
    assert p["shape"][1] <= 100 and m.max() == 50.0
    block = int(np.argmax(m[1]))
    assert p["col_starts"][block] <= 777 < (p["col_starts"][block + 1] if block + 1 < len(p["col_starts"]) else 1000)


@pytest.mark.parametrize(
    ("values", "labels", "err", "match"),
    [
        (np.zeros(5), None, ValueError, "2-D"),
        (np.zeros((0, 3)), None, ValueError, "non-empty"),
        (np.zeros((2, 2)), ["only one"], ValueError, "one label per row"),
        (np.array([["a", "b"]]), None, TypeError, "real numbers"),
    ],
)
def test_payload_rejects_bad_input(values, labels, err, match):
    with pytest.raises(err, match=match):
        matrix_payload(values, labels)


def test_canvas_sends_the_matrix_as_one_binary_buffer(record):
    hm = HeatmapCanvas()
    values = np.random.default_rng(0).random((40, 300))
    with record(hm) as sent:
        hm.set_matrix(values, [f"layer{i}" for i in range(40)], title="absmax")
    raw = values.size * 4
    assert len(sent) == 1  # one message for data, shape, labels and title together
    n_json, n_buf = sent[0]
    assert n_buf == raw
    with record(hm) as sent:  # new values, same labels: only the buffer (and a little JSON) travels
        hm.set_matrix(values * 2, [f"layer{i}" for i in range(40)], title="absmax")
    n_json, n_buf = sent[0]
    assert n_buf == raw and (n_json + n_buf) <= 1.1 * raw
    assert np.allclose(hm.matrix(), (values * 2).astype(np.float32))


def test_row_click_from_the_browser_updates_the_trait():
    hm = HeatmapCanvas()
    hm.set_matrix(np.ones((3, 3)))
    hm.set_state({"selected_row": 2})
    assert hm.selected_row == 2
