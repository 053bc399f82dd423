"""The outlier section of ``qviz report``: capture, the outlier dashboard, the worst layer, recurring channels."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

import qviz.plot
from qviz.activations.capture import capture
from qviz.models import quantizable_layers
from qviz.activations.outliers import recurring_channels


def summary_table(stats: Any, n: int = 12) -> str:
    """An HTML table of the layers with the largest outlier ratio."""
    order = np.argsort(-np.nan_to_num(stats["outlier_ratio"].values, nan=-1))[:n]
    thr = stats.attrs.get("threshold", 6.0)
    rows = [
        "<tr><th>layer</th><th>type</th><th>outlier ratio</th><th>max absmax</th>"
        f"<th>channels &gt; {thr:g}</th><th>max kurtosis</th><th>top channels</th></tr>"
    ]
    for i in order:
        top = ", ".join(str(c) for c in stats["top_channels"].values[i][:5] if c >= 0)
        rows.append(
            f"<tr><td>{html.escape(str(stats.layer.values[i]))}</td><td>{stats['layer_type'].values[i]}</td>"
            f"<td>{stats['outlier_ratio'].values[i]:.1f}</td><td>{np.nanmax(stats['absmax'].values[i]):.3g}</td>"
            f"<td>{int(stats['n_over_threshold'].values[i])}</td><td>{stats['max_kurtosis'].values[i]:.1f}</td>"
            f"<td>{top}</td></tr>"
        )
    return '<table class="qv">' + "".join(rows) + "</table>"


def section(model: Any, calib: Any, ctx: dict[str, Any]) -> list[tuple[str, Any]]:
    """Capture activation statistics and show where the outliers are."""
    linear = [n for n, m in quantizable_layers(model).items() if type(m).__name__ != "Embedding"]
    sample = linear[len(linear) // 2 - 1] if linear else None
    stats = capture(model, calib, sample=sample, progress=ctx.get("progress", True))
    ctx["stats"] = stats
    ctx["datasets"]["stats"] = stats
    worst = str(stats.layer.values[int(np.nanargmax(stats["outlier_ratio"].values))])
    rec = recurring_channels(stats, min_layers=3)[:8]
    intro = (
        f"<p>{stats.attrs['n_items']} inputs, {stats.attrs['n_tokens']} tokens/rows, {stats.sizes['layer']} layers hooked. "
        f"Largest outlier ratio: <b>{np.nanmax(stats['outlier_ratio'].values):.1f}</b> at <code>{html.escape(worst)}</code>. "
        + (
            "Channels that are top outliers in many layers (the residual stream): "
            + ", ".join(f"{c} ({k} layers)" for c, k in rec)
            if rec
            else "No channel recurs among the top outliers of three or more layers."
        )
        + "</p>"
    )
    items: list[tuple[str, Any]] = [
        ("Summary", intro + summary_table(stats)),
        ("Layer × channel activation range and outlier ratio per layer", qviz.plot.outliers(stats)),
        (f"Channel profile of {worst}", qviz.plot.channel_profile(stats, worst)),
        ("Recurring outlier channels", qviz.plot.channel_recurrence(stats)),
    ]
    if sample is not None and "sample" in stats:
        items.append((f"Token × channel map at the input of {sample}", qviz.plot.token_map(stats, sample)))
    return items
