"""Outlier figures from a ``stats`` Dataset (:func:`qviz.capture`).

Examples
--------
>>> import qviz
>>> stats = qviz.capture(qviz.load("minilm"), qviz.calibration_data("minilm", n=32))  # doctest: +SKIP
>>> qviz.plot.outliers(stats).show()                                                  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from qviz.activations.outliers import _check_stats

__all__ = [
    "outliers",
    "heatmap",
    "outlier_bars",
    "channel_profile",
    "token_map",
    "channel_recurrence",
    "downsample_max",
]

TYPE_COLOURS = {
    "linear": "#1f77b4",
    "conv2d": "#9467bd",
    "conv1d": "#8c564b",
    "embedding": "#2ca02c",
    "norm": "#ff7f0e",
}


def downsample_max(values: np.ndarray, max_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Shrink the last axis to at most ``max_cols`` columns, keeping each block's maximum.

    The true maxima survive downsampling, so an outlier channel never
    disappears from a heatmap. NaN (padding) is ignored within a block.

    Parameters
    ----------
    values
        ``[..., cols]`` array.
    max_cols
        Largest number of columns to keep.

    Returns
    -------
    (reduced, starts)
        ``reduced`` is ``[..., n_blocks]``; ``starts[i]`` is the first original
        column of block ``i`` (blocks are ``starts[i]`` to ``starts[i+1] - 1``).

    Examples
    --------
    >>> r, starts = downsample_max(np.array([[1., 5., 2., 0.]]), 2)
    >>> r.tolist(), starts.tolist()
    ([[5.0, 2.0]], [0, 2])
    """
    if not isinstance(max_cols, (int, np.integer)) or max_cols < 1:
        raise ValueError(f"max_cols must be a positive int; got {max_cols!r}.")
    values = np.asarray(values, dtype=float)
    cols = values.shape[-1]
    if cols <= max_cols:
        return values.copy(), np.arange(cols)
    block = -(-cols // max_cols)
    n_blocks = -(-cols // block)
    pad = n_blocks * block - cols
    padded = np.concatenate([values, np.full((*values.shape[:-1], pad), np.nan)], axis=-1)
    blocks = padded.reshape(*values.shape[:-1], n_blocks, block)
    with np.errstate(invalid="ignore"), _ignore_all_nan():
        reduced = np.nanmax(blocks, axis=-1)
    return reduced, np.arange(0, cols, block)


class _ignore_all_nan:
    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.filterwarnings("ignore", "All-NaN slice encountered")

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def _layer_sel(stats: xr.Dataset, layer: str | int | None) -> str:
    names = [str(n) for n in stats.layer.values]
    if layer is None:
        return names[int(np.nanargmax(stats["outlier_ratio"].values))] if "outlier_ratio" in stats else names[0]
    if isinstance(layer, (int, np.integer)):
        if not -len(names) <= layer < len(names):
            raise IndexError(f"layer index {layer} is out of range for {len(names)} layers.")
        return names[layer]
    if layer not in names:
        from qviz._errors import did_you_mean

        raise ValueError(f"Unknown layer {layer!r}.{did_you_mean(layer, names)} Layers: stats.layer.values.")
    return layer


def _log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    lo_i, hi_i = int(np.floor(lo)), int(np.ceil(hi))
    vals = list(range(lo_i, hi_i + 1))
    return [float(v) for v in vals], [f"1e{v}" if v not in (0, 1, 2) else str(10**v) for v in vals]


def heatmap(stats: xr.Dataset, var: str = "absmax", max_channels: int = 384, layers: list[str] | None = None) -> go.Figure:
    """Layer × channel heatmap of a per-channel statistic on a log colour scale.

    Channels beyond ``max_channels`` are grouped with :func:`downsample_max`
    (the block maximum is shown, so outliers stay visible); hover shows the
    layer, the channel (range) and the value.

    Examples
    --------
    >>> fig = heatmap(stats)   # doctest: +SKIP
    """
    _check_stats(stats)
    if var not in stats or stats[var].dims != ("layer", "channel"):
        choices = [v for v in stats.data_vars if stats[v].dims == ("layer", "channel")]
        raise ValueError(f"var must be a (layer, channel) variable of stats, one of {choices}; got {var!r}.")
    ds = stats if layers is None else stats.sel(layer=layers)
    values = np.abs(ds[var].values)
    reduced, starts = downsample_max(values, max_channels)
    ends = np.append(starts[1:], values.shape[1]) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.log10(np.where(reduced > 0, reduced, np.nan))
    names = [str(n) for n in ds.layer.values]
    labels = [f"{s}" if s == e else f"{s}–{e}" for s, e in zip(starts, ends, strict=True)]
    custom = np.dstack([np.broadcast_to(np.array(labels, dtype=object), reduced.shape), reduced])
    finite = z[np.isfinite(z)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    tickvals, ticktext = _log_ticks(lo, hi)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=np.arange(len(starts)),
            y=names,
            customdata=custom,
            colorscale="Viridis",
            zmin=lo,
            zmax=hi,
            colorbar={"title": f"{var} (log)", "tickvals": tickvals, "ticktext": ticktext},
            hovertemplate="layer %{y}<br>channel %{customdata[0]}<br>" + var + " %{customdata[1]:.4g}<extra></extra>",
        )
    )
    note = "" if len(starts) == values.shape[1] else f" (channels grouped by {starts[1] - starts[0]}, max shown)"
    fig.update_layout(
        title=f"{stats[var].attrs.get('long_name', var)} per layer and channel{note}",
        xaxis_title="input channel",
        yaxis={"autorange": "reversed", "title": None},
        height=max(320, 14 * len(names) + 140),
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
    )
    if note:
        step = max(1, len(starts) // 8)
        fig.update_xaxes(tickvals=list(range(0, len(starts), step)), ticktext=[str(starts[i]) for i in range(0, len(starts), step)])
    return fig


def outlier_bars(stats: xr.Dataset) -> go.Figure:
    """Per-layer outlier ratio (largest channel absmax / median), coloured by layer type.

    Examples
    --------
    >>> fig = outlier_bars(stats)   # doctest: +SKIP
    """
    _check_stats(stats)
    if "outlier_ratio" not in stats:
        from qviz.activations.outliers import outlier_summary

        stats = outlier_summary(stats)
    names = [str(n) for n in stats.layer.values]
    types = [str(t) for t in stats["layer_type"].values] if "layer_type" in stats.coords else ["layer"] * len(names)
    top = stats["top_channels"].values
    over = stats["n_over_threshold"].values
    thr = stats.attrs.get("threshold", 6.0)
    fig = go.Figure()
    for t in dict.fromkeys(types):
        idx = [i for i, ty in enumerate(types) if ty == t]
        fig.add_bar(
            x=[names[i] for i in idx],
            y=stats["outlier_ratio"].values[idx],
            name=t,
            marker_color=TYPE_COLOURS.get(t, "#7f7f7f"),
            customdata=np.array(
                [[int(over[i]), ", ".join(str(c) for c in top[i][:5] if c >= 0)] for i in idx], dtype=object
            ),
            hovertemplate="%{x}<br>outlier ratio %{y:.1f}<br>channels over "
            + f"{thr:g}: "
            + "%{customdata[0]}<br>top channels %{customdata[1]}<extra></extra>",
        )
    fig.update_layout(
        title="Outlier ratio per layer (largest channel absmax / median channel absmax)",
        yaxis={"type": "log", "title": "outlier ratio"},
        xaxis={"categoryorder": "array", "categoryarray": names, "tickangle": -60, "tickfont": {"size": 9}},
        barmode="overlay",
        height=460,
        margin={"l": 10, "r": 10, "t": 50, "b": 160},
        legend={"title": "layer type"},
    )
    return fig


def channel_profile(stats: xr.Dataset, layer: str | int | None = None, threshold: float | None = None) -> go.Figure:
    """One layer's per-channel activation absmax (and weight absmax), with the outlier threshold.

    ``layer=None`` picks the layer with the largest outlier ratio.

    Examples
    --------
    >>> fig = channel_profile(stats, "encoder.layer.0.output.dense")   # doctest: +SKIP
    """
    _check_stats(stats)
    name = _layer_sel(stats, layer)
    row = stats.sel(layer=name)
    n = int(row["n_channels"]) if "n_channels" in row else int(np.isfinite(row["absmax"].values).sum())
    thr = float(stats.attrs.get("threshold", 6.0) if threshold is None else threshold)
    act = row["absmax"].values[:n]
    colours = np.where(act > thr, "#d62728", "#1f77b4")
    fig = go.Figure()
    fig.add_bar(
        x=np.arange(n), y=act, marker_color=colours, name="activation absmax",
        hovertemplate="channel %{x}<br>absmax %{y:.4g}<extra></extra>",
    )
    if "std" in row:
        fig.add_scatter(
            x=np.arange(n), y=row["std"].values[:n], mode="lines", name="activation std",
            line={"color": "#2ca02c", "width": 1},
        )
    if "weight_absmax_in" in row and np.isfinite(row["weight_absmax_in"].values[:n]).any():
        fig.add_scatter(
            x=np.arange(n), y=row["weight_absmax_in"].values[:n], mode="lines", name="weight absmax (input channel)",
            line={"color": "#ff7f0e", "width": 1}, yaxis="y2",
        )
    fig.add_hline(y=thr, line_dash="dash", line_color="#d62728", annotation_text=f"threshold {thr:g}")
    fig.update_layout(
        title=f"Channel profile of {name}: {int((act > thr).sum())} channels over {thr:g}",
        xaxis_title="input channel",
        yaxis={"title": "|activation|", "type": "log"},
        yaxis2={"title": "|weight|", "overlaying": "y", "side": "right", "type": "log", "showgrid": False},
        height=380,
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def token_map(stats: xr.Dataset, layer: str | None = None, max_channels: int = 384) -> go.Figure:
    """Token × channel map of |activation| for a layer captured with ``sample=``.

    Examples
    --------
    >>> s = qviz.capture(model, batch, sample="encoder.layer.0.attention.self.query")  # doctest: +SKIP
    >>> fig = token_map(s)                                                             # doctest: +SKIP
    """
    _check_stats(stats)
    if "sample" not in stats:
        raise ValueError(
            "This stats Dataset has no token × channel sample. Capture one with "
            "qviz.capture(model, batch, sample='<layer name>')."
        )
    sampled = [str(n) for n in stats.sample_layer.values]
    if layer is None:
        layer = sampled[0]
    if layer not in sampled:
        raise ValueError(f"No sample was kept for {layer!r}; sampled layers: {sampled}.")
    block = np.abs(stats["sample"].sel(sample_layer=layer).values)  # [token, channel]
    n_ch = int(stats["n_channels"].sel(layer=layer)) if "n_channels" in stats else block.shape[1]
    keep = np.isfinite(block).any(axis=1)
    block = block[keep, :n_ch]
    texts = [str(t) for t in stats["token_text"].values[keep]] if "token_text" in stats.coords else None
    reduced, starts = downsample_max(block, max_channels)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.log10(np.where(reduced > 0, reduced, np.nan))
    y = [f"{i}: {t}" for i, t in enumerate(texts)] if texts else np.arange(block.shape[0])
    fig = go.Figure(
        go.Heatmap(
            z=z, x=starts, y=y, colorscale="Magma", customdata=reduced,
            colorbar={"title": "|x| (log10)"},
            hovertemplate="token %{y}<br>channel %{x}<br>|x| %{customdata:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Token × channel |activation| at the input of {layer}",
        xaxis_title="channel",
        yaxis={"autorange": "reversed", "title": "token", "tickfont": {"size": 8}},
        height=min(900, max(360, 9 * block.shape[0] + 120)),
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
    )
    return fig


def channel_recurrence(stats: xr.Dataset, n: int = 20) -> go.Figure:
    """How often the same channel ids are top-k outliers across layers (the residual-stream outliers).

    Examples
    --------
    >>> fig = channel_recurrence(stats)   # doctest: +SKIP
    """
    _check_stats(stats)
    if "channel_recurrence" not in stats:
        from qviz.activations.outliers import outlier_summary

        stats = outlier_summary(stats)
    rec = stats["channel_recurrence"].values
    order = [int(c) for c in np.argsort(-rec, kind="stable")[:n] if rec[c] > 0]
    fig = go.Figure(
        go.Bar(
            x=[f"ch {c}" for c in order], y=rec[order], marker_color="#d62728",
            hovertemplate="%{x}: top-" + str(stats.attrs.get("top_k", 8)) + " in %{y} layers<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Channels that recur among each layer's top {stats.attrs.get('top_k', 8)} (of {stats.sizes['layer']} layers)",
        yaxis_title="layers",
        height=340,
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
    )
    return fig


def outliers(stats: xr.Dataset, max_channels: int = 384) -> go.Figure:
    """The outlier dashboard: layer × channel heatmap above the per-layer outlier-ratio bars.

    Examples
    --------
    >>> import qviz
    >>> qviz.plot.outliers(stats)   # doctest: +SKIP
    """
    hm = heatmap(stats, max_channels=max_channels)
    bars = outlier_bars(stats)
    n_layers = stats.sizes["layer"]
    top_h = max(300, 13 * n_layers)
    fig = make_subplots(
        rows=2, cols=1, row_heights=[top_h, 300], vertical_spacing=0.22 if n_layers > 20 else 0.15,
        subplot_titles=(hm.layout.title.text, bars.layout.title.text),
    )
    trace = hm.data[0]
    trace.colorbar.update(len=top_h / (top_h + 420), y=1, yanchor="top")
    fig.add_trace(trace, row=1, col=1)
    for t in bars.data:
        fig.add_trace(t, row=2, col=1)
    fig.update_yaxes(autorange="reversed", tickfont={"size": 8}, row=1, col=1)
    fig.update_yaxes(type="log", title_text="outlier ratio", row=2, col=1)
    fig.update_xaxes(title_text=hm.layout.xaxis.title.text, row=1, col=1)
    if hm.layout.xaxis.tickvals is not None:
        fig.update_xaxes(tickvals=hm.layout.xaxis.tickvals, ticktext=hm.layout.xaxis.ticktext, row=1, col=1)
    names = [str(n) for n in stats.layer.values]
    fig.update_xaxes(
        tickangle=-60, tickfont={"size": 8}, categoryorder="array", categoryarray=names, row=2, col=1
    )
    title = f"Outliers in {stats.attrs.get('model', 'model')}"
    if int(stats.attrs.get("random_weights", 0)):
        title += " (RANDOM WEIGHTS)"
    fig.update_layout(
        title=title, height=top_h + 560, barmode="overlay", legend={"title": "layer type", "y": 0.25},
        margin={"l": 10, "r": 10, "t": 70, "b": 150},
    )
    return fig
