"""Outlier analysis of a ``stats`` Dataset: which channels are outliers, and do they recur.

Everything here is derived from the statistics :func:`qviz.capture` keeps, so
the threshold and ``top_k`` can be changed without running the model again.

Examples
--------
>>> import qviz
>>> stats = qviz.capture(qviz.load("minilm"), qviz.calibration_data("minilm", n=16))  # doctest: +SKIP
>>> qviz.outlier_summary(stats, threshold=3.0).n_over_threshold.max().item()        # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import xarray as xr

DERIVED = ("outlier_ratio", "n_dead_channels", "n_over_threshold", "max_kurtosis", "top_channels", "top_values", "channel_recurrence")


def _check_stats(stats: object) -> None:
    if not isinstance(stats, xr.Dataset) or "absmax" not in stats or "layer" not in stats.dims:
        raise TypeError(
            "Expected the stats Dataset returned by qviz.capture (with an 'absmax' variable over "
            f"dims (layer, channel)); got {type(stats).__name__}."
        )


def outlier_summary(stats: xr.Dataset, threshold: float | None = None, top_k: int | None = None) -> xr.Dataset:
    """Add (or recompute) the per-layer outlier summary of a ``stats`` Dataset.

    Parameters
    ----------
    stats
        The Dataset from :func:`qviz.capture`. It is not modified; a new Dataset is returned.
    threshold
        Channel absmax above which a channel is an outlier (LLM.int8 uses 6.0).
        Default: the threshold the Dataset was made with, else 6.0.
    top_k
        How many of the largest channels per layer to list. Default: as before, else 8.

    Returns
    -------
    xarray.Dataset
        ``stats`` plus ``outlier_ratio`` (largest channel absmax / median channel
        absmax; channels that are always exactly zero, such as dead ReLUs, are
        left out of the median and counted in ``n_dead_channels``), ``n_over_threshold``, ``max_kurtosis``, ``top_channels`` and
        ``top_values`` (dims ``layer``, ``rank``) and ``channel_recurrence``
        (dim ``channel``: in how many layers the channel is among the top-k).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> absmax = np.array([[1.0, 1.0, 9.0, 1.0]])
    >>> ds = xr.Dataset({"absmax": (("layer", "channel"), absmax)}, coords={"layer": ["fc"]})
    >>> s = outlier_summary(ds, threshold=6.0, top_k=1)
    >>> float(s.outlier_ratio[0]), int(s.n_over_threshold[0]), int(s.top_channels[0, 0])
    (9.0, 1, 2)
    """
    _check_stats(stats)
    if threshold is None:
        threshold = float(stats.attrs.get("threshold", 6.0))
    if top_k is None:
        top_k = int(stats.attrs.get("top_k", 8))
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or threshold <= 0:
        raise ValueError(f"threshold must be a positive number (LLM.int8 uses 6.0); got {threshold!r}.")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k must be a positive int; got {top_k!r}.")

    ds = stats.drop_vars([v for v in DERIVED if v in stats.variables]).copy()
    ds = ds.drop_dims([d for d in ("rank",) if d in ds.dims])
    absmax = ds["absmax"].values  # [layer, channel], NaN-padded
    n_layer, width = absmax.shape
    k = min(top_k, width)
    with np.errstate(invalid="ignore", divide="ignore"):
        valid = np.isfinite(absmax)
        live = valid & (absmax > 0)  # channels that are never non-zero (dead ReLUs) carry no range
        med = np.array([np.median(row[ok]) if ok.any() else np.nan for row, ok in zip(absmax, live, strict=True)])
        peak = np.where(valid.any(1), np.nanmax(np.where(valid, absmax, -np.inf), axis=1), np.nan)
        ratio = np.where(med > 0, peak / np.where(med > 0, med, 1), np.nan)
        dead = (valid & (absmax == 0)).sum(1)
    over = np.where(valid, absmax > threshold, False).sum(1)
    filled = np.where(valid, absmax, -np.inf)
    top = np.argsort(-filled, axis=1, kind="stable")[:, :k]  # [layer, rank]
    top_vals = np.take_along_axis(filled, top, axis=1)
    top = np.where(np.isfinite(top_vals), top, -1)
    top_vals = np.where(np.isfinite(top_vals), top_vals, np.nan)
    recurrence = np.zeros(width, dtype=np.int64)
    for row in top:
        recurrence[row[row >= 0]] += 1

    ds["outlier_ratio"] = (
        ("layer",),
        ratio,
        {"long_name": "largest channel absmax / median channel absmax", "units": "1"},
    )
    ds["n_dead_channels"] = (
        ("layer",),
        dead.astype(np.int64),
        {"long_name": "channels that were always exactly zero", "units": "count"},
    )
    ds["n_over_threshold"] = (
        ("layer",),
        over.astype(np.int64),
        {"long_name": f"channels with absmax > {threshold:g}", "units": "count"},
    )
    if "kurtosis" in ds:
        kurt = ds["kurtosis"].values
        ds["max_kurtosis"] = (
            ("layer",),
            np.array([np.nanmax(r) if np.isfinite(r).any() else np.nan for r in kurt]),
            {"long_name": "largest channel kurtosis", "units": "1"},
        )
    ds["top_channels"] = (("layer", "rank"), top.astype(np.int64), {"long_name": "channel id by absmax rank", "units": "1"})
    ds["top_values"] = (("layer", "rank"), top_vals, {"long_name": "absmax of the ranked channel", "units": "1"})
    ds["channel_recurrence"] = (
        ("channel",),
        recurrence,
        {"long_name": f"layers in which the channel is among the top {k}", "units": "count"},
    )
    ds = ds.assign_coords(rank=("rank", np.arange(k)))
    ds.attrs.update(threshold=float(threshold), top_k=int(top_k))
    return ds


def recurring_channels(stats: xr.Dataset, min_layers: int = 2) -> list[tuple[int, int]]:
    """``(channel, n_layers)`` of channels that are top-k outliers in at least ``min_layers`` layers.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"absmax": (("layer", "channel"), np.array([[1., 9.], [1., 8.]]))})
    >>> recurring_channels(outlier_summary(ds, top_k=1))
    [(1, 2)]
    """
    if "channel_recurrence" not in stats:
        stats = outlier_summary(stats)
    rec = stats["channel_recurrence"].values
    order = np.argsort(-rec, kind="stable")
    return [(int(c), int(rec[c])) for c in order if rec[c] >= min_layers]
