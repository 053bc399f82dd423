"""Static pictures of the widgets: what a notebook shows without a kernel.

A live widget needs its kernel. So that a notebook reopened without one, an
HTML export and a review on GitHub still show a picture, every explorer also
prints a static HTML fallback: heatmaps as PNG images (encoded here with
``zlib``, no imaging library), bar charts as plain HTML, tables as tables. The
live view hides the fallback when it is on screen (``widgets/frame.js``).

Examples
--------
>>> import numpy as np
>>> png = heatmap_png(np.array([[1.0, 10.0], [100.0, np.nan]]))
>>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
True
"""

from __future__ import annotations

import base64
import html
import struct
import zlib
from collections.abc import Sequence

import numpy as np

# plotly's Viridis, the colour scale the canvas uses too (widgets/heatmap.js)
VIRIDIS = np.array(
    [[68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142],
     [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37]],
    dtype=np.float64,
)
HIGHLIGHT = np.array([214, 39, 40], dtype=np.uint8)
NAN_RGB = np.array([235, 235, 235], dtype=np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an ``[height, width, 3]`` uint8 image.

    Examples
    --------
    >>> len(encode_png(np.zeros((2, 2, 3), np.uint8))) > 40
    True
    """
    img = np.asarray(rgb)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or 0 in img.shape:
        raise ValueError(f"encode_png takes a non-empty uint8 [height, width, 3] array; got {img.dtype} {img.shape}.")
    h, w, _ = img.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, w * 3)], axis=1)  # filter byte 0 per row
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + _chunk(b"IEND", b"")


def colourize(values: np.ndarray, log: bool = True, threshold: float = 0.0) -> np.ndarray:
    """Map ``[rows, cols]`` numbers to Viridis RGB as the canvas does (NaN grey, ``|v| > threshold`` red)."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        shown = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan) if log else v
    ok = np.isfinite(shown)
    lo, hi = (float(shown[ok].min()), float(shown[ok].max())) if ok.any() else (0.0, 1.0)
    if hi == lo:
        hi = lo + 1.0
    t = np.clip((np.where(ok, shown, lo) - lo) / (hi - lo), 0, 1) * (len(VIRIDIS) - 1)
    k = np.minimum(np.floor(t).astype(int), len(VIRIDIS) - 2)
    f = (t - k)[..., None]
    rgb = np.rint(VIRIDIS[k] + f * (VIRIDIS[k + 1] - VIRIDIS[k])).astype(np.uint8)
    rgb[~ok] = NAN_RGB
    if threshold > 0:
        with np.errstate(invalid="ignore"):
            rgb[np.abs(v) > threshold] = HIGHLIGHT
    return rgb


def heatmap_png(values: np.ndarray, log: bool = True, threshold: float = 0.0, max_width: int = 900) -> bytes:
    """A PNG of a ``[rows, cols]`` heatmap, each cell enlarged to whole pixels (at most ``max_width`` wide).

    Examples
    --------
    >>> heatmap_png(np.ones((3, 4)))[12:16]
    b'IHDR'
    """
    rgb = colourize(values, log=log, threshold=threshold)
    rows, cols = rgb.shape[:2]
    sx = max(1, max_width // cols)
    sy = max(1, min(14, 500 // max(rows, 1)))
    return encode_png(np.repeat(np.repeat(rgb, sy, axis=0), sx, axis=1))


def png_img(png: bytes, alt: str) -> str:
    """An ``<img>`` tag with the PNG inline (a data URI)."""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" '
        'style="max-width:100%;image-rendering:pixelated;border:1px solid #ccc"/>'
    )


def bars_html(labels: Sequence[str], values: Sequence[float], unit: str = "", highlight: int | None = None) -> str:
    """A horizontal bar chart in plain HTML (no script), one row per label.

    Examples
    --------
    >>> "width:100.0%" in bars_html(["a", "b"], [1.0, 2.0])
    True
    """
    vals = np.asarray(values, dtype=np.float64)
    finite = vals[np.isfinite(vals)]
    top = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
    rows = []
    for i, (label, v) in enumerate(zip(labels, vals, strict=True)):
        width = 0.0 if not np.isfinite(v) else round(100.0 * abs(v) / top, 1)
        colour = "#d62728" if i == highlight else "#1f77b4"
        text = "n/a" if not np.isfinite(v) else f"{v:.4g}{unit}"
        rows.append(
            f'<tr><td style="text-align:right;padding-right:6px;font-size:11px">{html.escape(str(label))}</td>'
            f'<td style="width:60%"><div style="background:{colour};height:10px;width:{width}%"></div></td>'
            f'<td style="font-size:11px;padding-left:6px">{text}</td></tr>'
        )
    return '<table style="border-collapse:collapse;width:100%">' + "".join(rows) + "</table>"


def table_html(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain HTML table with the ``qviz-table`` class.

    Examples
    --------
    >>> table_html(["a"], [[1]]).count("<td>")
    1
    """
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f'<table class="qviz-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _fmt(v: object) -> str:
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "n/a"
        return f"{v:.4g}"
    return str(v)


def fallback_html(static_id: str, title: str, parts: Sequence[str]) -> str:
    """The static fallback block: a title, the parts, and a note that controls need a kernel."""
    body = "".join(f'<div style="margin:6px 0">{p}</div>' for p in parts)
    return (
        f'<div class="qviz-static" data-qviz-static="{html.escape(static_id)}" '
        'style="font-family:sans-serif;font-size:12px;border:1px solid #ddd;padding:8px;max-width:960px">'
        f'<div style="font-size:14px;font-weight:600">{html.escape(title)}</div>'
        f"{body}"
        '<div style="color:#777;font-size:11px">Static picture; run the cell with a kernel for the live controls.</div>'
        "</div>"
    )
