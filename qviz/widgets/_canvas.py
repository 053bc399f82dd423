"""The canvas heatmap: a large matrix crosses to the browser as one float32 buffer.

Plotly sends a heatmap as JSON lists of numbers (and draws thousands of cells
slowly); :class:`HeatmapCanvas` sends the raw float32 bytes (a ``traitlets.Bytes``
trait travels as a binary buffer) and ``widgets/heatmap.js`` paints them on a
``<canvas>``, one pixel per cell, with hover read-out and click-to-select-row.

Examples
--------
>>> import numpy as np
>>> hm = HeatmapCanvas()
>>> hm.set_matrix(np.arange(6.0).reshape(2, 3), row_labels=["a", "b"])
>>> hm.shape, len(hm.values)
([2, 3], 24)
"""

from __future__ import annotations

from collections.abc import Sequence

import anywidget
import numpy as np
import traitlets

from qviz.plot import downsample_max
from qviz.widgets._assets import read_asset


def matrix_payload(
    values: np.ndarray, row_labels: Sequence[str] | None = None, max_cols: int = 512
) -> dict[str, object]:
    """The trait values that carry ``values`` ``[rows, cols]`` to the canvas.

    Columns beyond ``max_cols`` are merged in blocks that keep their maximum
    (:func:`qviz.plot.downsample_max`), so an outlier never vanishes.
    NaN stays NaN (drawn grey: padding).

    Parameters
    ----------
    values
        2-D array of numbers.
    row_labels
        One label per row (default ``"0", "1", ...``).
    max_cols
        Most columns sent.

    Returns
    -------
    dict
        ``values`` (float32 bytes, row-major), ``shape``, ``row_labels``,
        ``col_starts`` (first original column of each block; empty when not
        merged) and ``n_cols_total``.

    Examples
    --------
    >>> p = matrix_payload(np.array([[1.0, 5.0, 2.0, 0.0]]), max_cols=2)
    >>> p["shape"], p["col_starts"], np.frombuffer(p["values"], np.float32).tolist()
    ([1, 2], [0, 2], [5.0, 2.0])
    """
    arr = np.asarray(values)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"The heatmap needs a non-empty 2-D array [rows, cols]; got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"The heatmap needs real numbers; got dtype {arr.dtype}.")
    rows, cols = arr.shape
    labels = [str(i) for i in range(rows)] if row_labels is None else [str(r) for r in row_labels]
    if len(labels) != rows:
        raise ValueError(f"row_labels has {len(labels)} entries for {rows} rows; give one label per row.")
    if cols > max_cols:
        reduced, starts = downsample_max(arr, max_cols)
        col_starts = [int(s) for s in starts]
    else:
        reduced, col_starts = arr, []
    data = np.ascontiguousarray(reduced, dtype=np.float32)  # [rows, blocks]
    return {
        "values": data.tobytes(),
        "shape": [int(data.shape[0]), int(data.shape[1])],
        "row_labels": labels,
        "col_starts": col_starts,
        "n_cols_total": int(cols),
    }


class HeatmapCanvas(anywidget.AnyWidget):
    """A matrix drawn on a canvas in the browser, fed by binary buffers.

    Traits
    ------
    values : bytes
        float32 ``[rows, cols]`` row-major.
    threshold : float
        Cells whose ``|value|`` exceeds it are painted red (0: no highlight).
    selected_row : int
        Row outlined in black; set by clicking a row in the browser (-1: none).

    Examples
    --------
    >>> import numpy as np
    >>> hm = HeatmapCanvas(title="absmax", threshold=6.0)
    >>> hm.set_matrix(np.array([[1.0, 9.0]]), row_labels=["fc1"])
    >>> hm.row_labels
    ['fc1']
    """

    _esm = read_asset("heatmap.js")
    _css = read_asset("qviz.css")

    values = traitlets.Bytes(b"").tag(sync=True)
    shape = traitlets.List(traitlets.Int(), default_value=[0, 0]).tag(sync=True)
    row_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    col_starts = traitlets.List(traitlets.Int()).tag(sync=True)
    n_cols_total = traitlets.Int(0).tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)
    row_name = traitlets.Unicode("row").tag(sync=True)
    col_name = traitlets.Unicode("column").tag(sync=True)
    value_name = traitlets.Unicode("value").tag(sync=True)
    hint = traitlets.Unicode("hover for values").tag(sync=True)
    threshold = traitlets.Float(0.0).tag(sync=True)
    log_scale = traitlets.Bool(True).tag(sync=True)
    colorscale = traitlets.Unicode("viridis").tag(sync=True)
    selected_row = traitlets.Int(-1).tag(sync=True)
    row_px = traitlets.Int(14).tag(sync=True)
    max_height = traitlets.Int(640).tag(sync=True)

    def set_matrix(
        self,
        values: np.ndarray,
        row_labels: Sequence[str] | None = None,
        max_cols: int = 512,
        **traits: object,
    ) -> None:
        """Send a new matrix (and any other traits, e.g. ``title=``) in one message."""
        payload = matrix_payload(values, row_labels, max_cols)
        with self.hold_sync():
            for key, value in {**payload, **traits}.items():
                setattr(self, key, value)

    def matrix(self) -> np.ndarray:
        """The matrix as the browser has it: float32 ``[rows, cols]``."""
        rows, cols = self.shape
        return np.frombuffer(self.values, dtype=np.float32).reshape(rows, cols)
