"""Figures of the explorers as pure functions: numbers in, Plotly figure out.

Each ``*_spec`` function returns a plain figure dict (``{"data": [...],
"layout": {...}}``) that a long-lived plot pane shows in one message without
plotly re-validating it (:class:`qviz.widgets._base.PlotPane`); the
matching ``*_figure`` wraps it in a validated ``go.Figure`` for notebooks and
reports.

Examples
--------
>>> fig = error_bars_figure(["fc1", "fc2"], [30.0, 12.5], "weight SQNR", "dB", selected="fc2")
>>> fig.data[0].marker.color
('#1f77b4', '#d62728')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

BLUE, RED, GREY, ORANGE = "#1f77b4", "#d62728", "#9a9a9a", "#ff7f0e"


def _clean(values: Sequence[float]) -> list[float | None]:
    """Plotly JSON wants None where a value is missing (NaN/Inf are not JSON)."""
    return [float(v) if v is not None and np.isfinite(v) else None for v in values]


def error_bars_spec(
    names: Sequence[str], values: Sequence[float], metric: str, units: str, selected: str | None = None,
    config: str = "", log: bool = False,
) -> dict:
    """Per-layer bars of one error metric; the selected layer in red, layers not measured yet left empty."""
    names = [str(n) for n in names]
    colours = [RED if n == selected else BLUE for n in names]
    short = [_short(n) for n in names]
    done = sum(v is not None and np.isfinite(v) for v in values)
    return {
        "data": [{
            "type": "bar", "x": short, "y": _clean(values), "customdata": names,
            "marker": {"color": colours},
            "hovertemplate": "%{customdata}<br>" + metric + " %{y:.4g} " + units + "<extra></extra>",
        }],
        "layout": {
            "title": {"text": f"{metric} per layer · {config} ({done}/{len(names)} layers measured)"},
            "yaxis": {"title": {"text": f"{metric} ({units})" if units else metric}, "type": "log" if log else "linear"},
            "xaxis": {"tickangle": -60, "tickfont": {"size": 9}, "categoryorder": "array", "categoryarray": short},
            "height": 360, "margin": {"l": 60, "r": 10, "t": 50, "b": 120}, "showlegend": False,
        },
    }


def _short(name: str) -> str:
    """``encoder.layer.3.attention.self.query`` -> ``3.attention.self.query`` (keeps labels readable)."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[i:])
    return name


def histogram_spec(edges: np.ndarray, before: np.ndarray, after: np.ndarray, layer: str, config: str) -> dict:
    """The layer's weight histogram before (grey) and after (blue) quantization, log counts.

    Drawn as two filled step lines (two SVG paths, however many bins), which the
    browser redraws far faster than hundreds of bars.
    """
    e = np.asarray(edges, dtype=np.float64)

    def steps(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = np.asarray(counts, dtype=np.float64)
        x = np.repeat(e, 2)[1:-1]  # [2 * bins]: each bin's left and right edge
        y = np.repeat(np.where(c > 0, c, np.nan), 2)  # empty bins leave a gap on the log axis
        return x, y

    xb, yb = steps(before)
    xa, ya = steps(after)
    return {
        "data": [
            {"type": "scatter", "mode": "lines", "x": xb, "y": yb, "name": "float weight", "fill": "tozeroy",
             "line": {"color": GREY, "width": 1}, "connectgaps": False,
             "hovertemplate": "w ≈ %{x:.4g}<br>%{y} weights<extra>float</extra>"},
            {"type": "scatter", "mode": "lines", "x": xa, "y": ya, "name": "quantized", "fill": "tozeroy",
             "line": {"color": BLUE, "width": 1}, "opacity": 0.8, "connectgaps": False,
             "hovertemplate": "w ≈ %{x:.4g}<br>%{y} weights<extra>quantized</extra>"},
        ],
        "layout": {
            "title": {"text": f"Weights of {_short(layer)} before / after {config}"},
            "xaxis": {"title": {"text": "weight value"}},
            "yaxis": {"title": {"text": "weights (log)"}, "type": "log"},
            "height": 340, "margin": {"l": 60, "r": 10, "t": 50, "b": 45},
            "legend": {"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"},
        },
    }


def sqnr_bits_spec(
    curve: Sequence[tuple[int, float, float]], refs: Mapping[str, tuple[float, float]],
    current: tuple[float, float] | None, layer: str, method: str, config: str,
) -> dict:
    """Weight SQNR against stored bits per weight.

    ``curve``: ``(bits, bits_per_weight, sqnr_db)`` of the current method at each
    bit width; ``refs``: label -> ``(bits_per_weight, sqnr_db)`` of fixed formats;
    ``current``: the point of the current config.
    """
    data: list[dict] = [{
        "type": "scatter", "mode": "lines+markers", "name": f"{method} at 2–8 bits",
        "x": [c[1] for c in curve], "y": _clean([c[2] for c in curve]),
        "text": [f"{c[0]} bits" for c in curve], "line": {"color": BLUE},
        "hovertemplate": "%{text}: %{y:.2f} dB at %{x:.3g} bits/weight<extra></extra>",
    }]
    labels = list(refs)
    data.append({
        "type": "scatter", "mode": "markers+text", "name": "fixed formats",
        "x": [refs[k][0] for k in labels], "y": _clean([refs[k][1] for k in labels]), "text": labels,
        "textposition": "top center", "marker": {"color": ORANGE, "size": 9, "symbol": "diamond"},
        "hovertemplate": "%{text}: %{y:.2f} dB at %{x:.3g} bits/weight<extra></extra>",
    })
    data.append({
        "type": "scatter", "mode": "markers", "name": "current",
        "x": [current[0]] if current else [], "y": _clean([current[1]]) if current else [],
        "marker": {"color": RED, "size": 15, "symbol": "star"}, "text": [config],
        "hovertemplate": "%{text}: %{y:.2f} dB at %{x:.3g} bits/weight<extra></extra>",
    })
    return {
        "data": data,
        "layout": {
            "title": {"text": f"Weight SQNR vs bits · {_short(layer)}"},
            "xaxis": {"title": {"text": "stored bits per weight"}},
            "yaxis": {"title": {"text": "weight SQNR (dB)"}},
            "height": 340, "margin": {"l": 60, "r": 10, "t": 50, "b": 45},
            "legend": {"orientation": "h", "y": -0.25},
        },
    }


def error_bars_figure(*args: object, **kwargs: object) -> go.Figure:
    """:func:`error_bars_spec` as a ``go.Figure``."""
    return go.Figure(error_bars_spec(*args, **kwargs))  # type: ignore[arg-type]


def histogram_figure(*args: object, **kwargs: object) -> go.Figure:
    """:func:`histogram_spec` as a ``go.Figure``."""
    return go.Figure(histogram_spec(*args, **kwargs))  # type: ignore[arg-type]


def sqnr_bits_figure(*args: object, **kwargs: object) -> go.Figure:
    """:func:`sqnr_bits_spec` as a ``go.Figure``."""
    return go.Figure(sqnr_bits_spec(*args, **kwargs))  # type: ignore[arg-type]
