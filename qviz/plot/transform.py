"""Before/after figures for model transforms that move outliers (rotation, SmoothQuant): two ``stats`` Datasets in.

Each function takes the :func:`qviz.capture` statistics of the same layers
under two models (e.g. the original and :func:`qviz.rotate`'s copy, or the
copy SmoothQuant's ``prepare`` smoothed) and draws them side by side on one
scale, so a massive-activation channel spreading out is visible at a glance.

Examples
--------
>>> import qviz
>>> model = qviz.load("tiny-llama"); batch = qviz.calibration_data(model, n=8)          # doctest: +SKIP
>>> before = qviz.capture(model, batch); after = qviz.capture(qviz.rotate(model), batch)  # doctest: +SKIP
>>> qviz.plot.outlier_ratio_change(before, after).show()                                # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from qviz.activations.outliers import _check_stats

__all__ = ["outlier_ratio_change", "heatmap_change", "outlier_change"]


def outlier_change(before: xr.Dataset, after: xr.Dataset, labels: tuple[str, str] = ("original", "rotated")) -> xr.Dataset:
    """Per-layer outlier ratio (largest channel absmax / median) of both, on the layers they share.

    Returns
    -------
    xr.Dataset
        dims ``(layer, stage)``: ``outlier_ratio``; and ``reduction`` (before / after) over ``layer``.

    Examples
    --------
    >>> import numpy as np
    >>> def stats(a):
    ...     return xr.Dataset({"absmax": (("layer", "channel"), np.array([a]))}, coords={"layer": ["l0"]})
    >>> float(outlier_change(stats([1.0, 1.0, 90.0]), stats([1.0, 2.0, 3.0])).reduction[0])
    45.0
    """
    if not (isinstance(labels, tuple) and len(labels) == 2 and all(isinstance(s, str) for s in labels) and labels[0] != labels[1]):
        raise ValueError(f"labels must be two different strings, e.g. ('original', 'rotated'); got {labels!r}.")
    for ds, which in ((before, "before"), (after, "after")):
        _check_stats(ds)
        if "absmax" not in ds:
            raise ValueError(f"{which} has no 'absmax' variable; pass qviz.capture(...) results.")
    shared = [n for n in before.layer.values if n in set(after.layer.values)]
    if not shared:
        raise ValueError("before and after share no layer name; capture the same layers of both models.")
    ratios = []
    for ds in (before, after):
        a = np.abs(ds.absmax.sel(layer=shared).values)  # [layer, channel]; NaN pads narrower layers
        with np.errstate(all="ignore"):
            med, top = np.nanmedian(a, axis=1), np.nanmax(a, axis=1)
        ratios.append(np.where(med > 0, top / np.where(med > 0, med, 1), np.inf))
    r = np.stack(ratios, axis=1)  # [layer, 2]
    out = xr.Dataset(
        {"outlier_ratio": (("layer", "stage"), r, {"long_name": "largest channel absmax / median channel absmax",
                                                    "units": "1"}),
         "reduction": ("layer", r[:, 0] / r[:, 1], {"long_name": f"outlier ratio {labels[0]} / {labels[1]}",
                                                    "units": "1"})},
        coords={"layer": [str(n) for n in shared], "stage": list(labels)},
    )
    return out


def outlier_ratio_change(before: xr.Dataset, after: xr.Dataset,
                         labels: tuple[str, str] = ("original", "rotated")) -> go.Figure:
    """Grouped bars: each layer's outlier ratio before and after (log axis), with the reduction in the hover.

    Examples
    --------
    >>> fig = outlier_ratio_change(before, after)   # doctest: +SKIP
    """
    ch = outlier_change(before, after, labels)
    names = list(ch.layer.values)
    fig = go.Figure()
    for i, (label, colour) in enumerate(zip(labels, ("#d62728", "#1f77b4"), strict=True)):
        fig.add_bar(x=names, y=ch.outlier_ratio.values[:, i], name=label, marker_color=colour,
                    customdata=ch.reduction.values,
                    hovertemplate="%{x}<br>" + label + ": %{y:.1f}<br>reduction %{customdata:.1f}x<extra></extra>")
    med = float(np.median(ch.reduction.values))
    fig.update_layout(
        title=f"Outlier ratio per layer, {labels[0]} vs {labels[1]} (median reduction {med:.1f}x)",
        yaxis={"type": "log", "title": "largest / median channel absmax"}, barmode="group",
        xaxis={"tickangle": -60, "tickfont": {"size": 9}}, height=460,
        margin={"l": 10, "r": 10, "t": 50, "b": 160},
    )
    return fig


def heatmap_change(before: xr.Dataset, after: xr.Dataset, labels: tuple[str, str] = ("original", "rotated"),
                   var: str = "absmax", max_channels: int = 384) -> go.Figure:
    """Two layer × channel heatmaps of ``var`` (log colour, ONE shared scale), before and after.

    Examples
    --------
    >>> fig = heatmap_change(before, after)   # doctest: +SKIP
    """
    from qviz.plot._outliers import downsample_max

    ch = outlier_change(before, after, labels)
    layers = list(ch.layer.values)
    zs = []
    for ds in (before, after):
        if var not in ds or ds[var].dims != ("layer", "channel"):
            raise ValueError(f"var must be a (layer, channel) variable of both Datasets; got {var!r}.")
        reduced, _ = downsample_max(np.abs(ds[var].sel(layer=layers).values), max_channels)
        with np.errstate(divide="ignore"):
            zs.append(np.log10(np.where(reduced > 0, reduced, np.nan)))
    finite = np.concatenate([z[np.isfinite(z)] for z in zs])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    fig = make_subplots(rows=1, cols=2, subplot_titles=list(labels), shared_yaxes=True, horizontal_spacing=0.03)
    for i, z in enumerate(zs):
        fig.add_trace(go.Heatmap(z=z, y=layers, colorscale="Viridis", zmin=lo, zmax=hi, showscale=i == 1,
                                 colorbar={"title": f"log10 {var}"},
                                 hovertemplate="layer %{y}<br>channel %{x}<br>log10 " + var + " %{z:.2f}<extra></extra>"),
                      row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=f"{var} per layer and input channel: {labels[0]} vs {labels[1]}",
                      height=max(320, 14 * len(layers) + 140), margin={"l": 10, "r": 10, "t": 60, "b": 40})
    return fig
