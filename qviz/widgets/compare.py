"""CompareDashboard: which config is worth it — accuracy against size, cost and robustness.

Works on the ``cmp`` Dataset of :func:`qviz.compare` (dim ``config``, a
readable label per config, ``"fp32"`` for the baseline; variables such as
``accuracy``, ``agreement``, ``size_bytes``, ``bits_per_weight``,
``latency_ms``, ``throughput``, ``usd_per_1m`` and ``attack_success_rate``,
the last over ``eps`` where it is a curve). Nothing here runs a model.

Examples
--------
>>> import numpy as np, xarray as xr
>>> cmp = xr.Dataset({"accuracy": ("config", [0.95, 0.94, 0.80]),
...                   "size_bytes": ("config", [100.0, 30.0, 30.0])},
...                  coords={"config": ["fp32", "RTN w4", "RTN w2"]})
>>> pareto_front(cmp.size_bytes.values, cmp.accuracy.values).tolist()
[True, True, False]
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from qviz.widgets._base import Choice, Explorer, PlotPane, sync_figure
from qviz.widgets._static import bars_html, table_html

LOWER_IS_BETTER = {"size_bytes", "bits_per_weight", "latency_ms", "usd_per_1m", "attack_success_rate",
                   "output_rel_err", "weight_mse", "nbytes"}
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22"]
QUALITY_FIRST = ("accuracy", "agreement", "attack_success_rate", "throughput")
COST_FIRST = ("size_bytes", "bits_per_weight", "usd_per_1m", "latency_ms")


def check_cmp(cmp: Any) -> xr.Dataset:
    """Raise ``TypeError`` unless ``cmp`` is a comparison Dataset with a ``config`` dim and per-config numbers."""
    if not isinstance(cmp, xr.Dataset) or "config" not in cmp.dims:
        raise TypeError(
            "CompareDashboard takes the Dataset returned by qviz.compare(model, configs) "
            f"(dim 'config', variables such as accuracy and size_bytes); got {type(cmp).__name__}."
        )
    if not per_config_vars(cmp):
        raise ValueError(
            "This Dataset has no numeric variable over 'config' alone to compare; expected e.g. "
            "accuracy and size_bytes from qviz.compare."
        )
    return cmp


def per_config_vars(cmp: xr.Dataset) -> list[str]:
    """Numeric variables with dims exactly ``("config",)``."""
    return [str(v) for v in cmp.data_vars if cmp[v].dims == ("config",) and np.issubdtype(cmp[v].dtype, np.number)]


def curve_vars(cmp: xr.Dataset) -> list[str]:
    """Numeric variables over ``config`` and one other dim (e.g. ``attack_success_rate`` over ``eps``)."""
    return [str(v) for v in cmp.data_vars
            if len(cmp[v].dims) == 2 and "config" in cmp[v].dims and np.issubdtype(cmp[v].dtype, np.number)]


def pareto_front(cost: Sequence[float], quality: Sequence[float], cost_lower_better: bool = True,
                 quality_higher_better: bool = True) -> np.ndarray:
    """Boolean mask of the points no other point beats on both axes (NaN points are never on the front).

    Examples
    --------
    >>> pareto_front([1, 2, 3], [1, 3, 2]).tolist()
    [True, True, False]
    """
    c = np.asarray(cost, dtype=float) * (1 if cost_lower_better else -1)
    q = np.asarray(quality, dtype=float) * (1 if quality_higher_better else -1)
    ok = np.isfinite(c) & np.isfinite(q)
    front = np.zeros(len(c), dtype=bool)
    for i in np.flatnonzero(ok):
        beaten = ok & (c <= c[i]) & (q >= q[i]) & ((c < c[i]) | (q > q[i]))
        front[i] = not beaten.any()
    return front


def _label(cmp: xr.Dataset, var: str) -> str:
    attrs = cmp[var].attrs
    name = attrs.get("long_name", var)
    units = attrs.get("units", "")
    return f"{name} ({units})" if units and units != "1" else str(name)


def _clean(values: Any) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=float)]


def pareto_spec(cmp: xr.Dataset, x: str, y: str, configs: Sequence[str] | None = None) -> dict:
    """Scatter of the configs on ``x`` (a cost) against ``y`` (a quality), the Pareto front as a line."""
    ds = cmp if configs is None else cmp.sel(config=list(configs))
    labels = [str(c) for c in ds.config.values]
    xv, yv = ds[x].values.astype(float), ds[y].values.astype(float)
    front = pareto_front(xv, yv, x in LOWER_IS_BETTER, y not in LOWER_IS_BETTER)
    order = np.argsort(xv[front], kind="stable")
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(labels))]
    return {
        "data": [
            {"type": "scatter", "mode": "lines", "name": "Pareto front", "x": _clean(xv[front][order]),
             "y": _clean(yv[front][order]), "line": {"color": "#444", "dash": "dot"}, "hoverinfo": "skip"},
            {"type": "scatter", "mode": "markers+text", "name": "configs", "x": _clean(xv), "y": _clean(yv),
             "text": labels, "textposition": "top center",
             "marker": {"size": [14 if f else 9 for f in front], "color": colours,
                        "line": {"width": [2 if f else 0 for f in front], "color": "#000"}},
             "hovertemplate": "%{text}<br>" + x + " %{x:.4g}<br>" + y + " %{y:.4g}<extra></extra>"},
        ],
        "layout": {
            "title": {"text": f"{y} vs {x} · {int(front.sum())} of {len(labels)} configs on the Pareto front"},
            "xaxis": {"title": {"text": _label(cmp, x)}, "type": "log" if x == "size_bytes" else "linear"},
            "yaxis": {"title": {"text": _label(cmp, y)}},
            "height": 420, "margin": {"l": 60, "r": 20, "t": 50, "b": 50}, "showlegend": False,
        },
    }


def robustness_spec(cmp: xr.Dataset, var: str | None = None, configs: Sequence[str] | None = None) -> dict:
    """One line per config of a curve variable (default ``attack_success_rate`` over ``eps``)."""
    curves = curve_vars(cmp)
    if var is None:
        var = "attack_success_rate" if "attack_success_rate" in curves else (curves[0] if curves else None)
    if var is None:
        return {"data": [], "layout": {"title": {"text": "No robustness curve in this comparison "
                                                        "(run qviz.compare with attacks to get one)"},
                                       "height": 200}}
    if var not in curves:
        raise ValueError(f"{var!r} is not a curve variable of this comparison; curves: {curves}.")
    da = cmp[var] if configs is None else cmp[var].sel(config=list(configs))
    other = next(d for d in da.dims if d != "config")
    xs = da[other].values.astype(float)
    data = []
    for i, c in enumerate(da.config.values):
        data.append({
            "type": "scatter", "mode": "lines+markers", "name": str(c), "x": _clean(xs),
            "y": _clean(da.sel(config=c).values), "line": {"color": PALETTE[i % len(PALETTE)]},
            "hovertemplate": f"{c}<br>{other} " + "%{x:.4g}<br>" + var + " %{y:.4g}<extra></extra>",
        })
    return {
        "data": data,
        "layout": {
            "title": {"text": f"{_label(cmp, var)} against {other}"},
            "xaxis": {"title": {"text": other}}, "yaxis": {"title": {"text": _label(cmp, var)}},
            "height": 380, "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
        },
    }


def default_axes(cmp: xr.Dataset) -> tuple[str, str]:
    """``(x, y)``: a cost variable and a quality variable present in ``cmp``."""
    names = per_config_vars(cmp)
    x = next((v for v in COST_FIRST if v in names), names[0])
    y = next((v for v in QUALITY_FIRST if v in names and v != x), names[-1])
    return x, y


def compare_figure(cmp: xr.Dataset) -> go.Figure:
    """The Pareto chart (and the robustness curves where there are any) as one static figure.

    Examples
    --------
    >>> cmp = xr.Dataset({"accuracy": ("config", [0.9, 0.8]), "size_bytes": ("config", [4.0, 1.0])},
    ...                  coords={"config": ["fp32", "w4"]})
    >>> len(compare_figure(cmp).data)
    2
    """
    check_cmp(cmp)
    x, y = default_axes(cmp)
    p = pareto_spec(cmp, x, y)
    r = robustness_spec(cmp)
    rows = 2 if r["data"] else 1
    fig = make_subplots(rows=rows, cols=1, subplot_titles=[p["layout"]["title"]["text"]]
                        + ([r["layout"]["title"]["text"]] if rows == 2 else []), vertical_spacing=0.15)
    for t in p["data"]:
        fig.add_trace(go.Scatter(t), row=1, col=1)
    for t in r["data"]:
        fig.add_trace(go.Scatter(t), row=2, col=1)
    fig.update_xaxes(title_text=p["layout"]["xaxis"]["title"]["text"], type=p["layout"]["xaxis"]["type"], row=1, col=1)
    fig.update_yaxes(title_text=p["layout"]["yaxis"]["title"]["text"], row=1, col=1)
    fig.update_layout(height=440 * rows, title=f"Comparison of {cmp.sizes['config']} configs",
                      showlegend=rows == 2)
    return fig


class CompareDashboard(Explorer):
    """Config checkboxes, metric choice, the Pareto chart, robustness curves and the table.

    Parameters
    ----------
    cmp
        The Dataset of :func:`qviz.compare`.
    x, y
        Starting cost and quality variables of the Pareto chart (default: size and accuracy).
    debounce
        Seconds after the last control change before updating (0: synchronously).

    Attributes
    ----------
    checkboxes : dict[str, ipywidgets.Checkbox]
        One per config.
    x_select, y_select, curve_select
        Metric choice for the Pareto axes and the curve variable.
    pareto, robustness : PlotPane
    table : ipywidgets.HTML

    Examples
    --------
    >>> cmp = xr.Dataset({"accuracy": ("config", [0.9, 0.8]), "size_bytes": ("config", [4.0, 1.0])},
    ...                  coords={"config": ["fp32", "w4"]})
    >>> dash = CompareDashboard(cmp, debounce=0)
    >>> dash.checkboxes["w4"].value = False
    >>> list(dash.pareto.data[1].text)
    ['fp32']
    """

    title = "qviz CompareDashboard"

    def __init__(self, cmp: xr.Dataset, *, x: str | None = None, y: str | None = None, debounce: float = 0.05) -> None:
        self.cmp = check_cmp(cmp)
        names = per_config_vars(cmp)
        dx, dy = default_axes(cmp)
        x, y = x or dx, y or dy
        for label, v in (("x", x), ("y", y)):
            if v not in names:
                from qviz._errors import did_you_mean

                raise ValueError(f"{label}={v!r} is not a per-config variable of cmp.{did_you_mean(v, names)} "
                                 f"Variables: {', '.join(names)}.")
        self.configs = [str(c) for c in cmp.config.values]
        self.checkboxes = {c: W.Checkbox(value=True, description=c, indent=False,
                                         layout=W.Layout(width="auto")) for c in self.configs}
        style = {"description_width": "initial"}
        self.x_select = Choice(options=names, value=x, description="x (cost)", style=style)
        self.y_select = Choice(options=names, value=y, description="y (quality)", style=style)
        curves = curve_vars(cmp)
        self.curve_select = Choice(options=curves or ["(none)"], value=(
            "attack_success_rate" if "attack_success_rate" in curves else (curves[0] if curves else "(none)")),
            description="curve", style=style, disabled=not curves)
        self.pareto = PlotPane()
        self.robustness = PlotPane()
        self.table = W.HTML()
        super().__init__(
            [W.HBox([W.HTML("<b>configs</b>"), *self.checkboxes.values()], layout=W.Layout(flex_flow="row wrap")),
             W.HBox([self.x_select, self.y_select, self.curve_select]),
             self.pareto, self.robustness, self.table],
            note=f"{len(self.configs)} configs · model {cmp.attrs.get('model', '?')}", debounce=debounce,
        )
        self._refresh_guarded()
        for ctrl in (*self.checkboxes.values(), self.x_select, self.y_select, self.curve_select):
            ctrl.observe(self._on_control, names="value")

    def selected(self) -> list[str]:
        """The configs whose checkbox is ticked, in the Dataset's order."""
        return [c for c in self.configs if self.checkboxes[c].value]

    def _refresh(self) -> None:
        chosen = self.selected()
        if not chosen:
            raise ValueError("No config is ticked; tick at least one config to compare.")
        x, y = self.x_select.value, self.y_select.value
        sync_figure(self.pareto, pareto_spec(self.cmp, x, y, chosen))
        curve = None if self.curve_select.value == "(none)" else self.curve_select.value
        sync_figure(self.robustness, robustness_spec(self.cmp, curve, chosen))
        self.table.value = table_html(*self.table_rows(chosen))

    def table_rows(self, configs: Sequence[str]) -> tuple[list[str], list[list[object]]]:
        """Column names and one row per config of every per-config variable."""
        names = per_config_vars(self.cmp)
        cols = ["config", *(_label(self.cmp, v) for v in names)]
        rows = [[c, *(float(self.cmp[v].sel(config=c)) for v in names)] for c in configs]
        return cols, rows

    def static_parts(self) -> list[str]:
        chosen = self.selected() or self.configs
        y = self.y_select.value
        vals = [float(self.cmp[y].sel(config=c)) for c in chosen]
        return [f"<b>{html.escape(_label(self.cmp, y))}</b>", bars_html(chosen, vals),
                table_html(*self.table_rows(chosen))]
