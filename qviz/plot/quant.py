"""Quantization figures: pure functions from the ``errors``, ``limits``, sensitivity and recommendation Datasets.

Examples
--------
>>> import qviz
>>> errors = qviz.layer_error(model, [qviz.RTN(bits=4), qviz.BnbNF4()], calib=batch)   # doctest: +SKIP
>>> qviz.plot.layer_error(errors).show()                                               # doctest: +SKIP
>>> qviz.plot.sqnr_vs_bits(qviz.limits(model)).show()                                  # doctest: +SKIP
"""

from __future__ import annotations

import os

import numpy as np
import plotly.graph_objects as go
import xarray as xr

__all__ = ["layer_error", "bits_heatmap", "sqnr_vs_bits", "recommendation"]

_LOG_VARS = {"weight_mse", "output_rel_err", "max_abs_err", "sensitivity"}
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]


def short_names(names: list[str]) -> list[str]:
    """Layer names with their common dotted prefix removed (``encoder.layer.0.x`` -> ``0.x``).

    Examples
    --------
    >>> short_names(["encoder.layer.0.q", "encoder.layer.1.q"])
    ['0.q', '1.q']
    """
    names = [str(n) for n in names]
    if len(names) < 2:
        return names
    prefix = os.path.commonprefix(names)
    cut = prefix.rfind(".") + 1
    out = [n[cut:] or n for n in names]
    return out if len(set(out)) == len(out) else names


def _need(ds: xr.Dataset, var: str, who: str) -> xr.DataArray:
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"{who} takes an xarray Dataset; got {type(ds).__name__}.")
    if var not in ds:
        raise ValueError(f"{who}: the Dataset has no variable {var!r}; it has {sorted(ds.data_vars)}.")
    if "layer" not in ds[var].dims:
        raise ValueError(f"{who}: {var!r} has no 'layer' dim (dims {ds[var].dims}).")
    return ds[var]


def _label(da: xr.DataArray, var: str) -> str:
    units = da.attrs.get("units", "")
    return f"{var} [{units}]" if units and units != "1" else var


def layer_error(errors: xr.Dataset, var: str = "output_rel_err", log: bool | None = None) -> go.Figure:
    """Per-layer error bars, one bar group per layer and one colour per config.

    Parameters
    ----------
    errors : xr.Dataset
        From :func:`qviz.layer_error` (with or without a ``config`` dim), or any
        Dataset with a ``layer`` dim such as :func:`qviz.sensitivity`'s.
    var : str
        ``output_rel_err`` (default), ``weight_mse``, ``weight_sqnr_db``, ``sensitivity``, ...
    log : bool, optional
        Log y axis; default on for error magnitudes, off for dB.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"output_rel_err": (("layer", "config"), np.array([[1e-3, 1e-2], [2e-3, 3e-2]]))},
    ...                 coords={"layer": ["a", "b"], "config": ["w8", "w4"]})
    >>> len(layer_error(ds).data)
    2
    """
    da = _need(errors, var, "plot.layer_error")
    layers = [str(n) for n in da.layer.values]
    x = short_names(layers)
    configs = [str(c) for c in da.config.values] if "config" in da.dims else [errors.attrs.get("config", var)]
    fig = go.Figure()
    for k, cfg in enumerate(configs):
        y = da.sel(config=cfg).values if "config" in da.dims else da.values
        custom = np.array(layers, dtype=object)
        hover = "%{customdata}<br>" + var + " = %{y:.4g}"
        if "bits_per_weight" in errors and "layer" in errors["bits_per_weight"].dims:
            bpw = errors["bits_per_weight"]
            bpw = bpw.sel(config=cfg).values if "config" in bpw.dims else bpw.values
            custom = np.stack([custom, np.round(bpw.astype(float), 3)], axis=-1)
            hover = "%{customdata[0]}<br>" + var + " = %{y:.4g}<br>%{customdata[1]} bits/weight"
        fig.add_trace(go.Bar(x=x, y=y, name=cfg, marker_color=_PALETTE[k % len(_PALETTE)], customdata=custom,
                             hovertemplate=hover + f"<extra>{cfg}</extra>"))
    if log is None:
        log = var in _LOG_VARS
    fig.update_layout(
        barmode="group",
        title=da.attrs.get("long_name", var),
        xaxis_title="layer",
        yaxis_title=_label(da, var),
        yaxis_type="log" if log else "linear",
        legend_title="config",
        template="plotly_white",
        height=420,
    )
    fig.update_xaxes(tickangle=-45)
    return fig


def bits_heatmap(ds: xr.Dataset, var: str | None = None, scheme: str | None = None) -> go.Figure:
    """Layer × bits (or layer × config) heatmap.

    Parameters
    ----------
    ds : xr.Dataset
        From :func:`qviz.limits` (dims ``layer, scheme, bits``: shows ``sqnr_db`` of one
        scheme), or from :func:`qviz.layer_error` / :func:`qviz.sensitivity` (dims ``layer, config``).
    var : str, optional
        Variable to show (default ``sqnr_db``, ``weight_sqnr_db`` or ``sensitivity``, whichever exists).
    scheme : str, optional
        For a limits Dataset: which scheme (default the first).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"sqnr_db": (("layer", "scheme", "bits"), np.arange(8.0).reshape(2, 1, 4))},
    ...                 coords={"layer": ["a", "b"], "scheme": ["RTN g128 asym"], "bits": [2, 3, 4, 8]})
    >>> bits_heatmap(ds).data[0].z.shape
    (2, 4)
    """
    if var is None:
        var = next((v for v in ("sqnr_db", "weight_sqnr_db", "sensitivity", "output_rel_err") if v in ds), None)
        if var is None:
            raise ValueError(f"plot.bits_heatmap: pass var=...; the Dataset has {sorted(ds.data_vars)}.")
    da = _need(ds, var, "plot.bits_heatmap")
    title = da.attrs.get("long_name", var)
    if "scheme" in da.dims:
        schemes = [str(s) for s in da.scheme.values]
        scheme = scheme or schemes[0]
        if scheme not in schemes:
            raise ValueError(f"plot.bits_heatmap: unknown scheme {scheme!r}; the Dataset has {schemes}.")
        da = da.sel(scheme=scheme)
        title = f"{title} — {scheme}"
    cols = "bits" if "bits" in da.dims else "config" if "config" in da.dims else None
    if cols is None:
        raise ValueError(f"plot.bits_heatmap: {var!r} needs a 'bits' or 'config' dim besides 'layer'; dims {da.dims}.")
    z = da.transpose("layer", cols).values.astype(float)
    layers = [str(n) for n in da.layer.values]
    x = [str(v) for v in da[cols].values]
    log = var in _LOG_VARS
    zshow = np.log10(np.where(z > 0, z, np.nan)) if log else z
    custom = np.repeat(np.array(layers, dtype=object)[:, None], len(x), axis=1)
    fig = go.Figure(
        go.Heatmap(
            z=zshow, x=x, y=short_names(layers), customdata=custom, colorscale="Viridis",
            colorbar={"title": ("log10 " if log else "") + _label(da, var)},
            hovertemplate="%{customdata}<br>" + cols + " %{x}<br>" + var + ("(log10) " if log else " ") + "= %{z:.3g}<extra></extra>",
        )
    )
    fig.update_layout(title=title, xaxis_title=cols, yaxis_title="layer", template="plotly_white",
                      height=max(360, 16 * len(layers) + 160))
    fig.update_yaxes(autorange="reversed")
    return fig


def sqnr_vs_bits(limits: xr.Dataset, layer: str | None = None) -> go.Figure:
    """SQNR against the rate for each scheme, beside the 6.02 dB/bit rule and the rate-distortion bounds.

    Solid markers sit at the true stored rate (``bits_per_weight``); hollow ones at
    the entropy of the codes (what an ideal entropy coder would store). Lines: the
    Shannon lower bound (no quantizer beats it), the Gaussian rate-distortion
    curve and the 6.02 dB/bit uniform-quantizer rule, against the rate.

    Parameters
    ----------
    limits : xr.Dataset
        From :func:`qviz.limits`.
    layer : str, optional
        One layer; default the mean over layers (of dB values).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> b = [2, 4, 8]
    >>> ds = xr.Dataset({
    ...     "sqnr_db": (("layer", "scheme", "bits"), [[[5.0, 19.0, 44.0]]]),
    ...     "bits_per_weight": (("layer", "scheme", "bits"), [[[2.2, 4.2, 8.2]]]),
    ...     "code_entropy_bits": (("layer", "scheme", "bits"), [[[1.7, 3.6, 7.6]]]),
    ...     "rule_db": (("layer", "bits"), [[-3.0, 9.0, 33.0]]),
    ...     "gaussian_db": (("layer", "bits"), [[12.0, 24.1, 48.2]]),
    ...     "shannon_bound_db": (("layer", "bits"), [[12.1, 24.2, 48.3]])},
    ...     coords={"layer": ["a"], "scheme": ["RTN g128 asym"], "bits": b})
    >>> len(sqnr_vs_bits(ds).data)
    5
    """
    for v in ("sqnr_db", "bits_per_weight", "shannon_bound_db", "gaussian_db", "rule_db"):
        _need(limits, v, "plot.sqnr_vs_bits")
    if layer is not None:
        layers = [str(n) for n in limits.layer.values]
        if layer not in layers:
            from qviz._errors import did_you_mean

            raise ValueError(f"plot.sqnr_vs_bits: unknown layer {layer!r}.{did_you_mean(layer, layers)}")
        sel = limits.sel(layer=layer)
        where = layer
    else:
        sel = limits.mean("layer", skipna=True)
        where = f"mean over {limits.sizes['layer']} layers"
    bits = np.asarray(limits.bits.values, float)
    fig = go.Figure()
    bounds = (
        ("shannon_bound_db", "Shannon lower bound (no quantizer beats it)", "#000000", "solid"),
        ("gaussian_db", "Gaussian rate-distortion (same variance)", "#555555", "dot"),
        ("rule_db", "6.02 dB/bit rule (uniform over the full range)", "#999999", "dash"),
    )
    for name, label, colour, dash in bounds:
        fig.add_trace(go.Scatter(x=bits, y=sel[name].values, mode="lines", name=label,
                                 line={"color": colour, "dash": dash},
                                 hovertemplate="rate %{x:.2f} bit<br>%{y:.2f} dB<extra>" + name + "</extra>"))
    for k, scheme in enumerate(str(s) for s in limits.scheme.values):
        s = sel.sel(scheme=scheme)
        ok = np.isfinite(s["sqnr_db"].values)
        colour = _PALETTE[k % len(_PALETTE)]
        fig.add_trace(go.Scatter(
            x=s["bits_per_weight"].values[ok], y=s["sqnr_db"].values[ok], mode="lines+markers", name=scheme,
            line={"color": colour}, marker={"size": 8}, text=[f"{int(b)}-bit codes" for b in bits[ok]],
            hovertemplate="%{text}<br>%{x:.3f} bits/weight stored<br>%{y:.2f} dB<extra>" + scheme + "</extra>"))
        if "code_entropy_bits" in s:
            fig.add_trace(go.Scatter(
                x=s["code_entropy_bits"].values[ok], y=s["sqnr_db"].values[ok], mode="markers",
                name=f"{scheme}: code entropy", marker={"size": 8, "symbol": "circle-open", "color": colour},
                text=[f"{int(b)}-bit codes" for b in bits[ok]],
                hovertemplate="%{text}<br>%{x:.3f} bits/weight carried<br>%{y:.2f} dB<extra>" + scheme + "</extra>"))
    fig.update_layout(
        title=f"SQNR vs rate — {where}",
        xaxis_title="rate [bits per weight]",
        yaxis_title="SQNR [dB]",
        template="plotly_white",
        height=460,
        legend={"font": {"size": 11}},
    )
    return fig


def recommendation(rec: xr.Dataset) -> go.Figure:
    """The mixed-precision assignment of :func:`qviz.recommend`: bits per weight per layer, coloured by config.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"assignment": ("layer", ["w8", "w2"]), "bits_per_weight": ("layer", [8.2, 2.2]),
    ...                  "sensitivity": ("layer", [0.0, 0.01]), "predicted": 0.01, "measured": 0.012,
    ...                  "budget_bits_per_weight": 5.0}, coords={"layer": ["a", "b"]})
    >>> len(recommendation(ds).data)
    2
    """
    for v in ("assignment", "bits_per_weight", "predicted", "measured"):
        if v not in rec:
            raise ValueError(f"plot.recommendation takes the Dataset from qviz.recommend; it has no {v!r}.")
    layers = [str(n) for n in rec.layer.values]
    x = short_names(layers)
    fig = go.Figure()
    labels = [str(a) for a in rec["assignment"].values]
    for k, cfg in enumerate(dict.fromkeys(labels)):
        idx = [i for i, a in enumerate(labels) if a == cfg]
        fig.add_trace(go.Bar(
            x=[x[i] for i in idx], y=rec["bits_per_weight"].values[idx], name=cfg,
            marker_color=_PALETTE[k % len(_PALETTE)],
            customdata=np.stack([np.array(layers, dtype=object)[idx], rec["sensitivity"].values[idx]], axis=-1),
            hovertemplate="%{customdata[0]}<br>%{y:.3f} bits/weight<br>sensitivity %{customdata[1]:.3g}<extra>" + cfg + "</extra>",
        ))
    if "budget_bits_per_weight" in rec:
        fig.add_hline(y=float(rec["budget_bits_per_weight"]), line_dash="dash",
                      annotation_text=f"budget {float(rec['budget_bits_per_weight']):g} bits/weight")
    metric = rec.attrs.get("metric", "metric")
    fig.update_layout(
        title=f"Mixed precision: predicted {metric} {float(rec['predicted']):.4g}, measured {float(rec['measured']):.4g}",
        xaxis={"title": "layer", "categoryorder": "array", "categoryarray": x},
        yaxis_title="bits per weight",
        barmode="overlay",
        template="plotly_white",
        height=420,
    )
    fig.update_xaxes(tickangle=-45)
    return fig
