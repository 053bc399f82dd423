"""The comparison dashboard: pure functions from the ``cmp`` Dataset of :func:`qviz.compare` to figures.

* :func:`pareto`: accuracy against size, the Pareto front (no config both
  smaller and more accurate) drawn as a step line;
* :func:`cost_bars`: measured batch-1 latency and throughput per config,
  each bar marked ``real kernel`` or ``simulated``;
* :func:`attack_curves`: attack success rate against ε, one line per config
  and a dash style per attack (and the token-substitution curve for text);
* :func:`amplification`: per-layer error amplification per config;
* :func:`summary_table`: one row per config;
* :func:`dashboard`: all of the above in one figure.

Examples
--------
>>> import qviz
>>> cmp = qviz.compare(qviz.load("digits-cnn"), [qviz.RTN(bits=4, group_size=None)])  # doctest: +SKIP
>>> qviz.plot.dashboard(cmp).show()                                                   # doctest: +SKIP
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import xarray as xr

__all__ = ["amplification", "attack_curves", "cost_bars", "dashboard", "pareto", "pareto_front", "summary_table"]

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]
_DASH = ["solid", "dash", "dot", "dashdot", "longdash"]
_KERNEL_COLOR = {"real kernel": "#2ca02c", "simulated": "#ff7f0e", "full precision": "#7f7f7f"}


def _check(cmp: xr.Dataset, needs: tuple[str, ...], who: str) -> None:
    if not isinstance(cmp, xr.Dataset):
        raise TypeError(f"{who} takes the Dataset qviz.compare returns; got {type(cmp).__name__}.")
    if "config" not in cmp.dims:
        raise ValueError(f"{who}: the Dataset has no 'config' dim (dims {tuple(cmp.dims)}); pass qviz.compare's result.")
    missing = [v for v in needs if v not in cmp]
    if missing:
        raise ValueError(
            f"{who}: the Dataset has no {missing[0]!r}; it has {sorted(cmp.data_vars)}. "
            "Run qviz.compare with the metric that makes it (metrics=None measures everything)."
        )


def _colors(cmp: xr.Dataset) -> dict[str, str]:
    return {str(c): _PALETTE[i % len(_PALETTE)] for i, c in enumerate(cmp.config.values)}


def _axis(da: xr.DataArray, fallback: str) -> str:
    name = da.attrs.get("long_name", fallback)
    units = da.attrs.get("units", "")
    return f"{name} [{units}]" if units and units not in ("1",) else name


def pareto_front(size: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Boolean mask of the points no other point beats (smaller or equal size and higher or equal accuracy, one strictly).

    Examples
    --------
    >>> pareto_front(np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.4, 0.9])).tolist()
    [True, False, True]
    """
    size, accuracy = np.asarray(size, float), np.asarray(accuracy, float)
    keep = np.isfinite(size) & np.isfinite(accuracy)
    out = np.zeros(len(size), bool)
    for i in np.flatnonzero(keep):
        better = keep & (size <= size[i]) & (accuracy >= accuracy[i]) & ((size < size[i]) | (accuracy > accuracy[i]))
        out[i] = not better.any()
    return out


def _pareto_traces(cmp: xr.Dataset) -> list[go.Scatter]:
    size = cmp.size_bytes.values.astype(float) / 1e6
    accv = cmp.accuracy.values.astype(float)
    names = [str(c) for c in cmp.config.values]
    colors = _colors(cmp)
    front = pareto_front(size, accv)
    traces = []
    order = np.argsort(size[front])
    fx, fy = size[front][order], accv[front][order]
    if len(fx) > 1:
        traces.append(go.Scatter(x=fx, y=fy, mode="lines", line={"shape": "hv", "color": "#bbbbbb", "width": 2},
                                 name="Pareto front", hoverinfo="skip", legendgroup="front"))
    bits = cmp.bits_per_weight.values if "bits_per_weight" in cmp else [math.nan] * len(names)
    for i, n in enumerate(names):
        traces.append(go.Scatter(
            x=[size[i]], y=[accv[i]], mode="markers+text", text=[n], textposition="top center",
            marker={"size": 12 if front[i] else 9, "color": colors[n], "symbol": "circle" if front[i] else "circle-open",
                    "line": {"width": 2, "color": colors[n]}},
            name=n, legendgroup=n, showlegend=False,
            error_y=_interval_bars(cmp, "accuracy", {"config": n}),
            hovertemplate=f"{n}<br>size %{{x:.3f}} MB<br>accuracy %{{y:.4f}}<br>{float(bits[i]):.3f} bits/weight"
                          + ("<br>on the Pareto front" if front[i] else "") + "<extra></extra>",
        ))
    return traces


def pareto(cmp: xr.Dataset) -> go.Figure:
    """Accuracy against model size, one marker per config, the Pareto front as a step line.

    Filled markers are on the front: no other config is both smaller and at
    least as accurate.

    Examples
    --------
    >>> import qviz
    >>> qviz.plot.pareto(cmp)        # doctest: +SKIP
    """
    _check(cmp, ("accuracy", "size_bytes"), "pareto")
    fig = go.Figure(_pareto_traces(cmp))
    fig.update_layout(
        title=f"Accuracy vs size — {cmp.attrs.get('model', '')}",
        xaxis_title="model size as stored [MB]", yaxis_title=_axis(cmp.accuracy, "accuracy"),
        template="plotly_white", height=450,
    )
    return fig


def _cost_traces(cmp: xr.Dataset, var: str) -> list[go.Bar]:
    names = [str(c) for c in cmp.config.values]
    kinds = [str(k) for k in cmp.kernel_class.values] if "kernel_class" in cmp else ["simulated"] * len(names)
    kernels = [str(k) for k in cmp.kernel.values] if "kernel" in cmp else [""] * len(names)
    values = cmp[var].values.astype(float)
    traces = []
    for kind in ("full precision", "real kernel", "simulated"):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        if not idx:
            continue
        traces.append(go.Bar(
            x=[names[i] for i in idx], y=[values[i] for i in idx], name=kind, legendgroup=kind,
            marker_color=_KERNEL_COLOR[kind], text=[kind for _ in idx], textposition="outside",
            customdata=[kernels[i] for i in idx],
            hovertemplate="%{x}<br>%{y:.3g}<br>%{customdata}<extra>" + kind + "</extra>",
        ))
    return traces


def cost_bars(cmp: xr.Dataset, var: str = "latency_ms") -> go.Figure:
    """Measured cost per config (``latency_ms``, ``throughput`` or ``usd_per_1m``), bars coloured real kernel / simulated.

    A simulated (fake-quant) model does float arithmetic on dequantized
    weights; its timing says nothing about a low-bit kernel, and the bar says so.

    Examples
    --------
    >>> import qviz
    >>> qviz.plot.cost_bars(cmp, "throughput")      # doctest: +SKIP
    """
    allowed = ("latency_ms", "throughput", "usd_per_1m", "usd_per_1k_queries")
    if var not in allowed:
        raise ValueError(f"cost_bars plots one of {allowed}; got {var!r}.")
    _check(cmp, (var,), "cost_bars")
    fig = go.Figure(_cost_traces(cmp, var))
    fig.update_layout(
        title=f"{_axis(cmp[var], var)} — measured on this machine", yaxis_title=_axis(cmp[var], var),
        template="plotly_white", height=420, barmode="group",
    )
    return fig


def _attack_traces(cmp: xr.Dataset) -> list[go.Scatter]:
    colors = _colors(cmp)
    traces = []
    da = cmp.attack_success_rate
    for j, attack in enumerate(da.attack.values):
        for c in da.config.values:
            y = da.sel(config=c, attack=attack).values
            traces.append(go.Scatter(
                x=da.eps.values, y=y, mode="lines+markers", name=f"{c} · {attack}",
                line={"color": colors[str(c)], "dash": _DASH[j % len(_DASH)]}, legendgroup=str(c),
                error_y=_interval_bars(cmp, "attack_success_rate", {"config": c, "attack": attack}),
                hovertemplate=f"{c}<br>{attack}<br>ε %{{x}}<br>success %{{y:.2f}}<extra></extra>",
            ))
    return traces


def _interval_bars(cmp: xr.Dataset, var: str, where: dict[str, object]) -> dict[str, object] | None:
    """Plotly ``error_y`` for the 95% interval of ``var`` where the Dataset carries one."""
    if f"{var}_low" not in cmp:
        return None
    y, low, high = (np.atleast_1d(cmp[f"{var}{s}"].sel(where).values).astype(float) for s in ("", "_low", "_high"))
    return {"type": "data", "symmetric": False, "array": np.nan_to_num(high - y).tolist(),
            "arrayminus": np.nan_to_num(y - low).tolist(), "thickness": 1, "width": 3}


def attack_curves(cmp: xr.Dataset) -> go.Figure:
    """Attack success rate against ε: colour = config, dash = attack (white-box STE or transfer).

    For text encoders a second panel shows token substitution against the
    number of swapped tokens.

    Examples
    --------
    >>> import qviz
    >>> qviz.plot.attack_curves(cmp)        # doctest: +SKIP
    """
    _check(cmp, ("attack_success_rate",), "attack_curves")
    tokens = "token_attack_success_rate" in cmp
    if tokens:
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, subplot_titles=("embedding-space attack", "token substitution"))
        for t in _attack_traces(cmp):
            fig.add_trace(t, row=1, col=1)
        colors = _colors(cmp)
        da = cmp.token_attack_success_rate
        for j, attack in enumerate(da.token_attack.values):
            for c in da.config.values:
                fig.add_trace(go.Scatter(
                    x=da.n_tokens.values, y=da.sel(config=c, token_attack=attack).values, mode="lines+markers",
                    name=f"{c} · {attack}", line={"color": colors[str(c)], "dash": _DASH[j % len(_DASH)]},
                    legendgroup=str(c), showlegend=True,
                ), row=1, col=2)
        fig.update_xaxes(title_text=_axis(cmp.eps, "ε"), row=1, col=1)
        fig.update_xaxes(title_text="tokens substituted", row=1, col=2)
        fig.update_yaxes(title_text="attack success rate", range=[-0.02, 1.02])
    else:
        fig = go.Figure(_attack_traces(cmp))
        fig.update_layout(xaxis_title=_axis(cmp.eps, "ε"), yaxis_title="attack success rate", yaxis_range=[-0.02, 1.02])
    fig.update_layout(title=f"Attack success vs ε — {cmp.attrs.get('model', '')}", template="plotly_white", height=450)
    return fig


def amplification(cmp: xr.Dataset) -> go.Figure:
    """Per-layer error amplification ‖Δactivation‖/‖Δinput‖, one line per config.

    Examples
    --------
    >>> import qviz
    >>> qviz.plot.amplification(cmp)        # doctest: +SKIP
    """
    _check(cmp, ("error_amplification",), "amplification")
    from qviz.plot.quant import short_names

    colors = _colors(cmp)
    da = cmp.error_amplification
    layers = short_names([str(n) for n in da.layer.values])
    fig = go.Figure([
        go.Scatter(x=layers, y=da.sel(config=c).values, mode="lines+markers", name=str(c), line={"color": colors[str(c)]})
        for c in da.config.values
    ])
    fig.update_layout(
        title=f"Error amplification per layer (ε = {cmp.attrs.get('amplification_eps', '?')}, perturbation crafted on fp32)",
        xaxis_title="layer", yaxis_title="‖Δactivation‖ / ‖Δinput‖", yaxis_type="log", template="plotly_white", height=420,
    )
    return fig


def _fmt(v: object, kind: str) -> str:
    if isinstance(v, (str, np.str_)):
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(f):
        return "—"
    if kind == "bytes":
        return f"{f / 1e6:.3f} MB"
    if kind == "frac":
        return f"{f:.3f}"
    return f"{f:.3g}"


def _summary_columns(cmp: xr.Dataset) -> list[tuple[str, list[str]]]:
    cols: list[tuple[str, list[str]]] = [("config", [str(c) for c in cmp.config.values])]
    spec = [
        ("accuracy", "accuracy", "frac"), ("agreement", "agreement", "frac"), ("size_bytes", "size", "bytes"),
        ("bits_per_weight", "bits/weight", "num"), ("serialized_bytes", "safetensors", "bytes"),
        ("latency_ms", "latency [ms]", "num"), ("throughput", "throughput", "num"), ("usd_per_1m", "USD / 1M", "num"),
        ("kernel_class", "kernel", "str"),
    ]
    for var, title, kind in spec:
        if var in cmp and f"{var}_low" in cmp:
            cols.append((f"{title} [95% CI]{_n_header(cmp, var)}", _rate_cells(cmp, var, {})))
        elif var in cmp:
            cols.append((title, [_fmt(v, kind) for v in cmp[var].values]))
    if "attack_success_rate" in cmp:
        da = cmp.attack_success_rate
        eps = da.eps.values
        e = eps[len(eps) // 2] if len(eps) else None
        for attack in da.attack.values:
            if "PGD" in str(attack) and e is not None:
                where = {"attack": attack, "eps": e}
                if "attack_success_rate_low" in cmp:
                    cols.append((f"{attack} @ ε={e:g} [95% CI] (n)", _rate_cells(cmp, "attack_success_rate", where, with_n=True)))
                else:
                    cols.append((f"{attack} @ ε={e:g}", [_fmt(v, "frac") for v in da.sel(where).values]))
    return cols


def _n_header(cmp: xr.Dataset, var: str) -> str:
    """`` (n=359)`` when every config's rate is a share of the same number of items."""
    from qviz.evaluate.intervals import RATE_SAMPLES

    n = cmp.get(RATE_SAMPLES.get(var, ""))
    values = {float(v) for v in np.atleast_1d(n.values)} if n is not None else set()
    return f" (n={int(values.pop())})" if len(values) == 1 and all(math.isfinite(v) for v in values) else ""


def _rate_cells(cmp: xr.Dataset, var: str, where: dict[str, object], with_n: bool = False) -> list[str]:
    """``0.933 [0.904, 0.954] *`` per config: the rate, its 95% interval, * where it differs from fp32 beyond the noise."""
    from qviz.evaluate.intervals import RATE_SAMPLES

    rate, low, high = (cmp[f"{var}{s}"].sel(where).values for s in ("", "_low", "_high"))
    beyond = cmp[f"{var}_exceeds_noise"].sel(where).values if f"{var}_exceeds_noise" in cmp else np.zeros(len(rate), bool)
    n = cmp[RATE_SAMPLES[var]].values if with_n and RATE_SAMPLES.get(var) in cmp else None
    cells = []
    for i, r in enumerate(rate):
        if not math.isfinite(float(r)):
            cells.append("—")
            continue
        cell = f"{float(r):.3f} [{float(low[i]):.2f}, {float(high[i]):.2f}]"
        if n is not None:
            cell += f" (n={int(n[i])})"
        cells.append(cell + (" *" if bool(beyond[i]) else ""))
    return cells


def _summary_trace(cmp: xr.Dataset) -> go.Table:
    cols = _summary_columns(cmp)
    return go.Table(
        header={"values": [c[0] for c in cols], "fill_color": "#eeeeee", "align": "left"},
        cells={"values": [c[1] for c in cols], "align": "left"},
    )


def summary_table(cmp: xr.Dataset) -> go.Figure:
    """One row per config: accuracy, size, bits per weight, latency, cost, kernel, PGD success at the middle ε.

    Examples
    --------
    >>> import qviz
    >>> qviz.plot.summary_table(cmp)        # doctest: +SKIP
    """
    _check(cmp, (), "summary_table")
    fig = go.Figure(_summary_trace(cmp))
    note = " · [95% Wilson interval], * differs from fp32 beyond the noise (Newcombe)" if "accuracy_low" in cmp else ""
    fig.update_layout(title=f"Summary — {cmp.attrs.get('model', '')}{note}", height=80 + 30 * cmp.sizes["config"])
    return fig


def dashboard(cmp: xr.Dataset) -> go.Figure:
    """Pareto front, cost bars (real kernel / simulated), attack curves and the summary table in one figure.

    Panels whose variables are missing (a compare run without that metric) are left out.

    Examples
    --------
    >>> import qviz
    >>> qviz.plot.dashboard(cmp).show()        # doctest: +SKIP
    """
    from plotly.subplots import make_subplots

    _check(cmp, (), "dashboard")
    panels = []
    if "accuracy" in cmp and "size_bytes" in cmp:
        panels.append(("pareto", "Accuracy vs size (Pareto front)"))
    if "latency_ms" in cmp:
        panels.append(("cost", "Batch-1 latency [ms], measured: real kernel vs simulated"))
    if "attack_success_rate" in cmp:
        panels.append(("attack", "Attack success rate vs ε"))
    panels.append(("table", "Summary"))
    specs = [[{"type": "table"}] if p == "table" else [{"type": "xy"}] for p, _ in panels]
    # pixels per panel: a chart 380; the table its header (wrapped column names) and one line per config
    table_px = 150 + 34 * int(cmp.sizes["config"])
    heights = [table_px if p == "table" else 380 for p, _ in panels]
    total_px = sum(heights) + 130 * len(panels)
    fig = make_subplots(rows=len(panels), cols=1, specs=specs, subplot_titles=[t for _, t in panels],
                        row_heights=heights, vertical_spacing=min(0.08, 120 / total_px))
    for row, (p, _) in enumerate(panels, start=1):
        if p == "pareto":
            for t in _pareto_traces(cmp):
                fig.add_trace(t, row=row, col=1)
            fig.update_xaxes(title_text="model size as stored [MB]", row=row, col=1)
            fig.update_yaxes(title_text="accuracy", row=row, col=1)
        elif p == "cost":
            for t in _cost_traces(cmp, "latency_ms"):
                fig.add_trace(t, row=row, col=1)
            fig.update_yaxes(title_text="ms", row=row, col=1)
        elif p == "attack":
            for t in _attack_traces(cmp):
                t.showlegend = False
                fig.add_trace(t, row=row, col=1)
            fig.update_xaxes(title_text=_axis(cmp.eps, "ε"), row=row, col=1)
            fig.update_yaxes(title_text="success rate", range=[-0.02, 1.02], row=row, col=1)
        else:
            fig.add_trace(_summary_trace(cmp), row=row, col=1)
    fig.update_layout(
        title=f"qviz.compare — {cmp.attrs.get('model', '')} ({cmp.attrs.get('task', '')} task)",
        template="plotly_white", height=total_px, barmode="group",
    )
    return fig

