"""Figures of the outlier-aware methods: pure functions from their Datasets to Plotly figures.

* :func:`smoothing_ranges` — SmoothQuant's migration of difficulty: per-channel activation and
  weight ranges of one layer before and after smoothing
  (from :func:`qviz.quant.methods.smoothing_ranges`).
* :func:`alpha_sweep` — end-to-end quality over SmoothQuant's alpha, with the naive W8A8 line
  (from :func:`qviz.quant.methods.smoothquant_alpha_sweep`).
* :func:`awq_search` — AWQ's output error over the alpha grid and over the clipping ratios,
  with the chosen point and the RTN baseline (from :func:`qviz.quant.methods.awq_search`).
* :func:`gptq_loss` — GPTQ's relative loss per layer beside RTN's on the same Hessian, flagged
  layers marked (from the ``"gptq"`` Dataset that GPTQ's finalize returns).
* :func:`qat_loss` — the QAT distillation loss per step (from the ``"qat"`` Dataset).
* :func:`method_wins` — per-layer output error of several methods relative to RTN.

Examples
--------
>>> import torch, qviz
>>> from qviz.quant.methods import smoothing_ranges as ranges
>>> fig = qviz.plot.smoothing_ranges(ranges(torch.tensor([30.0, 1.0, 2.0]), torch.ones(4, 3), 0.5))
>>> len(fig.data)
4
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

__all__ = ["alpha_sweep", "awq_search", "gptq_loss", "method_wins", "qat_loss", "smoothing_ranges"]

_BEFORE, _AFTER, _BASE = "#d62728", "#1f77b4", "#7f7f7f"


def _check(ds: object, needed: tuple[str, ...], who: str, hint: str) -> xr.Dataset:
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"{who} takes an xarray Dataset ({hint}); got {type(ds).__name__}.")
    missing = [v for v in needed if v not in ds]
    if missing:
        raise ValueError(f"{who}: the Dataset lacks {missing}; it has {sorted(ds.data_vars)}. Pass {hint}.")
    return ds


def smoothing_ranges(ds: xr.Dataset, title: str | None = None) -> go.Figure:
    """Activation and weight channel ranges before and after SmoothQuant's smoothing, one layer.

    Examples
    --------
    >>> import torch
    >>> from qviz.quant.methods import smoothing_ranges as ranges
    >>> smoothing_ranges(ranges(torch.tensor([9.0, 1.0]), torch.ones(2, 2), 0.5)).layout.yaxis.type
    'log'
    """
    ds = _check(ds, ("act_absmax", "w_absmax"), "smoothing_ranges", "qviz.quant.methods.smoothing_ranges(...)")
    ch = ds.channel.values
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "activations: max |X_j| per input channel", "weights: max |W_j| per input channel"))
    for col, var in ((1, "act_absmax"), (2, "w_absmax")):
        ratios = ds["act_ratio" if var == "act_absmax" else "w_ratio"]
        for stage, color in (("before", _BEFORE), ("after", _AFTER)):
            fig.add_trace(go.Scattergl(
                x=ch, y=ds[var].sel(stage=stage).values, mode="markers", marker={"size": 4, "color": color},
                name=f"{stage} (max/median {float(ratios.sel(stage=stage)):.1f})",
                legendgroup=f"{var}-{stage}",
                hovertemplate=f"channel %{{x}}<br>{stage}: %{{y:.3g}}<extra></extra>",
            ), row=1, col=col)
    fig.update_yaxes(type="log", title_text="range")
    fig.update_xaxes(title_text="input channel")
    alpha = ds.attrs.get("alpha")
    fig.update_layout(
        title=title or f"SmoothQuant moves the outliers from activations to weights (alpha = {alpha:g})"
        if alpha is not None else title, height=380, legend={"orientation": "h", "y": -0.25})
    return fig


def alpha_sweep(ds: xr.Dataset, title: str | None = None) -> go.Figure:
    """End-to-end cosine (and accuracy when present) over alpha, with the unsmoothed W8A8 baseline.

    Examples
    --------
    >>> ds = xr.Dataset({"cosine": ("alpha", [0.9, 0.95]), "naive_cosine": ((), 0.85)}, coords={"alpha": [0.2, 0.5]})
    >>> [t.name for t in alpha_sweep(ds).data]
    ['SmoothQuant', 'naive W8A8 (no smoothing)']
    """
    ds = _check(ds, ("cosine", "naive_cosine"), "alpha_sweep", "qviz.quant.methods.smoothquant_alpha_sweep(...)")
    a = ds.alpha.values
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=a, y=ds.cosine.values, mode="lines+markers", name="SmoothQuant",
                             line={"color": _AFTER}, hovertemplate="alpha %{x}<br>cosine %{y:.5f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[a.min(), a.max()], y=[float(ds.naive_cosine)] * 2, mode="lines",
                             name="naive W8A8 (no smoothing)", line={"color": _BASE, "dash": "dash"}))
    best = int(np.nanargmax(ds.cosine.values))
    fig.add_annotation(x=a[best], y=float(ds.cosine.values[best]), text=f"best alpha {a[best]:g}", showarrow=True)
    scheme = ds.attrs.get("act_scheme", "")
    fig.update_layout(
        title=title or f"SmoothQuant W{ds.attrs.get('w_bits', 8)}A{ds.attrs.get('a_bits', 8)} ({scheme} activations): "
        "held-out cosine to full precision",
        xaxis_title="alpha (migration strength)", yaxis_title="mean cosine similarity", height=360)
    return fig


def awq_search(ds: xr.Dataset, title: str | None = None) -> go.Figure:
    """AWQ's relative output error over the alpha grid and over the clipping ratios.

    Examples
    --------
    >>> import torch
    >>> from qviz.quant.methods import awq_search as search
    >>> fig = awq_search(search(torch.randn(8, 16), torch.randn(64, 16), group_size=8, n_grid=5))
    >>> fig.layout.xaxis.title.text
    'alpha (s = mean|X|^alpha)'
    """
    ds = _check(ds, ("loss", "clip_loss", "best_alpha", "rtn_rel_err"), "awq_search", "qviz.quant.methods.awq_search(W, X)")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("scale search", "clipping search (after scaling)"))
    fig.add_trace(go.Scatter(x=ds.alpha.values, y=ds.loss.values, mode="lines+markers", name="AWQ scales",
                             line={"color": _AFTER}), row=1, col=1)
    fig.add_trace(go.Scatter(x=[float(ds.best_alpha)], y=[float(ds.scaled_rel_err)], mode="markers",
                             marker={"size": 12, "symbol": "star", "color": _BEFORE}, name="chosen alpha"), row=1, col=1)
    clip = ds.clip_loss.values
    if np.isfinite(clip).any():
        fig.add_trace(go.Scatter(x=ds.ratio.values, y=clip, mode="lines+markers", name="one ratio for all groups",
                                 line={"color": "#2ca02c"}), row=1, col=2)
        fig.add_trace(go.Scatter(x=[ds.ratio.values.min(), ds.ratio.values.max()], y=[float(ds.rel_err)] * 2,
                                 mode="lines", name="best ratio per group", line={"color": _BEFORE, "dash": "dot"}),
                      row=1, col=2)
    for col in (1, 2):
        fig.add_hline(y=float(ds.rtn_rel_err), line={"color": _BASE, "dash": "dash"}, row=1, col=col,
                      annotation_text="RTN" if col == 1 else None)
    fig.update_xaxes(title_text="alpha (s = mean|X|^alpha)", row=1, col=1)
    fig.update_xaxes(title_text="clip ratio (fraction of the group's max |w| kept)", autorange="reversed", row=1, col=2)
    fig.update_yaxes(title_text="relative output error", type="log")
    fig.update_layout(title=title or "AWQ search: output error on the calibration inputs", height=380,
                      legend={"orientation": "h", "y": -0.3})
    return fig


def gptq_loss(ds: xr.Dataset, title: str | None = None) -> go.Figure:
    """GPTQ's relative loss per layer beside RTN's on the same Hessian; flagged layers in red.

    Examples
    --------
    >>> from qviz.quant.methods.gptq import gptq_loss_dataset
    >>> ds = gptq_loss_dataset({"a": {"gptq_loss": 1.0, "gptq_rel_loss": 0.01, "rtn_rel_loss": 0.02, "n_tokens": 9.0}})
    >>> [t.name for t in gptq_loss(ds).data]
    ['RTN', 'GPTQ']
    """
    ds = _check(ds, ("gptq_rel_loss", "rtn_rel_loss", "flagged"), "gptq_loss",
                "the 'gptq' Dataset from qmodel.quantization.extra[cfg.label]")
    from qviz.plot.quant import short_names

    names = short_names([str(n) for n in ds.layer.values])
    flagged = ds.flagged.values.astype(bool)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=ds.rtn_rel_loss.values, name="RTN", marker_color=_BASE))
    fig.add_trace(go.Bar(x=names, y=ds.gptq_rel_loss.values, name="GPTQ",
                         marker_color=[_BEFORE if f else _AFTER for f in flagged],
                         customdata=ds.n_tokens.values,
                         hovertemplate="%{x}<br>GPTQ %{y:.3g}<br>%{customdata:.0f} tokens<extra></extra>"))
    n_flag = int(flagged.sum())
    fig.update_layout(
        barmode="group", yaxis_type="log", height=380, xaxis_tickangle=-45,
        yaxis_title="relative output error on calibration inputs",
        title=title or ("GPTQ loss per layer" + (f" — {n_flag} flagged (red): check the calibration data"
                                                  if n_flag else "")))
    return fig


def qat_loss(ds: xr.Dataset, title: str | None = None) -> go.Figure:
    """The QAT distillation loss per fine-tune step (raw and a running mean).

    Examples
    --------
    >>> ds = xr.Dataset({"loss": ("step", [1.0, 0.5, 0.25])}, coords={"step": [0, 1, 2]})
    >>> len(qat_loss(ds).data)
    2
    """
    ds = _check(ds, ("loss",), "qat_loss", "the 'qat' Dataset from qmodel.quantization.extra[cfg.label]")
    y = ds.loss.values
    k = max(1, len(y) // 20)
    smooth = np.convolve(y, np.ones(k) / k, mode="valid") if len(y) >= k else y
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ds.step.values, y=y, mode="lines", name="loss", line={"color": "#c7c7c7"}))
    fig.add_trace(go.Scatter(x=ds.step.values[k - 1:], y=smooth, mode="lines", name=f"mean of {k}",
                             line={"color": _AFTER}))
    fig.update_layout(title=title or "QAT: distillation to the full-precision outputs", xaxis_title="step",
                      yaxis_title="loss", yaxis_type="log", height=340)
    return fig


def method_wins(ds: xr.Dataset, baseline: str | None = None, var: str = "output_rel_err",
                title: str | None = None) -> go.Figure:
    """Per-layer error of each config divided by the baseline's (below 1: the method wins on that layer).

    ``ds`` has dims ``(layer, config)`` (as ``qviz.layer_error`` returns); ``baseline`` is a config
    label (default: the first one whose label starts with ``RTN``).

    Examples
    --------
    >>> ds = xr.Dataset({"output_rel_err": (("layer", "config"), [[0.02, 0.01], [0.04, 0.05]])},
    ...                 coords={"layer": ["a", "b"], "config": ["RTN w4", "GPTQ w4"]})
    >>> method_wins(ds).data[0].name
    'GPTQ w4: wins on 1/2 layers'
    """
    ds = _check(ds, (var,), "method_wins", "a (layer, config) errors Dataset")
    if "config" not in ds[var].dims or "layer" not in ds[var].dims:
        raise ValueError(f"method_wins: {var!r} needs dims (layer, config); it has {ds[var].dims}.")
    configs = [str(c) for c in ds.config.values]
    if baseline is None:
        baseline = next((c for c in configs if c.startswith("RTN")), configs[0])
    if baseline not in configs:
        raise ValueError(f"method_wins: baseline {baseline!r} is not a config of the Dataset; configs: {configs}.")
    from qviz.plot.quant import short_names

    names = short_names([str(n) for n in ds.layer.values])
    base = ds[var].sel(config=baseline).values
    fig = go.Figure()
    for c in configs:
        if c == baseline:
            continue
        r = ds[var].sel(config=c).values / np.maximum(base, 1e-30)
        wins = int((r < 1).sum())
        fig.add_trace(go.Scatter(x=names, y=r, mode="markers", marker={"size": 7},
                                 name=f"{c}: wins on {wins}/{len(r)} layers"))
    fig.add_hline(y=1.0, line={"color": _BASE, "dash": "dash"}, annotation_text=baseline)
    fig.update_layout(title=title or f"{var} relative to {baseline} (below the line: better)", yaxis_type="log",
                      yaxis_title=f"{var} / {baseline}", xaxis_tickangle=-45, height=400,
                      legend={"orientation": "h", "y": -0.45})
    return fig
