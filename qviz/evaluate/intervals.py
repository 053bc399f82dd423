"""95% intervals for the rates and means qviz reports, and whether a difference exceeds the noise.

Every accuracy, agreement and attack success rate qviz shows is a share of a
finite sample; this module is the one place their uncertainty is worked out:

* :func:`wilson` — the Wilson score interval of a rate ``k / n`` (good at
  small ``n`` and at rates near 0 or 1, where the normal interval is not);
* :func:`rate_difference` — Newcombe's interval for the difference of two
  rates (built from the two Wilson intervals, his method 10);
* :func:`mean_interval` — a mean with its standard error and the normal
  95% interval; :func:`bootstrap_mean` — the percentile bootstrap for a mean
  of a skewed per-item quantity (per-token KL, per-query cosine);
* :func:`annotate` — adds the sample size, the interval and the comparison
  with the full-precision row to a :func:`qviz.compare` Dataset.

Examples
--------
>>> from qviz.evaluate.intervals import wilson
>>> [round(v, 4) for v in wilson(3, 4)]
[0.75, 0.3006, 0.9544]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def _check_counts(k: Any, n: Any) -> tuple[np.ndarray, np.ndarray]:
    k_arr, n_arr = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    bad_n = np.isfinite(n_arr) & ((n_arr < 0) | (n_arr != np.round(n_arr)))
    if bad_n.any():
        raise ValueError(f"n must be a count (a whole number >= 0); got {n!r}.")
    bad_k = np.isfinite(k_arr) & np.isfinite(n_arr) & ((k_arr < 0) | (k_arr > n_arr) | (k_arr != np.round(k_arr)))
    if bad_k.any():
        raise ValueError(f"k must be a whole number of successes between 0 and n; got k={k!r}, n={n!r}.")
    return k_arr, n_arr


def wilson(k: Any, n: Any, z: float = Z95) -> tuple[Any, Any, Any]:
    """The rate ``k / n`` and its Wilson score interval.

    Parameters
    ----------
    k, n : int or array of int
        Successes and trials (broadcast together). ``n = 0`` gives NaN.
    z : float
        The normal quantile; the default gives a 95% interval.

    Returns
    -------
    (rate, low, high) : floats, or arrays of the broadcast shape

    Examples
    --------
    >>> [round(v, 4) for v in wilson(0, 10)]
    [0.0, 0.0, 0.2775]
    >>> wilson(5, 3)
    Traceback (most recent call last):
    ...
    ValueError: k must be a whole number of successes between 0 and n; got k=5, n=3.
    """
    if not (isinstance(z, (int, float)) and not isinstance(z, bool) and z > 0):
        raise ValueError(f"z must be a positive number (1.96 for 95%); got {z!r}.")
    k_arr, n_arr = _check_counts(k, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k_arr / n_arr
        denom = 1 + z**2 / n_arr
        centre = (p + z**2 / (2 * n_arr)) / denom
        half = z * np.sqrt(p * (1 - p) / n_arr + z**2 / (4 * n_arr**2)) / denom
        low, high = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
    # at k = 0 (k = n) the lower (upper) end is exactly 0 (1); rounding must not move it
    low, high = np.where(k_arr == 0, 0.0, low), np.where(k_arr == n_arr, 1.0, high)
    low, high = np.where(n_arr > 0, low, np.nan), np.where(n_arr > 0, high, np.nan)
    out = (p, low, high)
    if np.ndim(p) == 0:
        return tuple(float(v) for v in out)  # type: ignore[return-value]
    return out


def rate_difference(k1: Any, n1: Any, k2: Any, n2: Any, z: float = Z95) -> tuple[Any, Any, Any]:
    """``k1/n1 - k2/n2`` and Newcombe's 95% interval for it (from the two Wilson intervals).

    The samples are treated as independent; for two configs scored on the
    same inputs the interval is conservative (a little too wide), so a
    difference it calls real is real.

    Examples
    --------
    >>> [round(v, 4) for v in rate_difference(56, 70, 48, 80)]
    [0.2, 0.0524, 0.3339]
    """
    p1, l1, u1 = wilson(k1, n1, z)
    p2, l2, u2 = wilson(k2, n2, z)
    d = np.asarray(p1) - np.asarray(p2)
    low = d - np.sqrt((np.asarray(p1) - l1) ** 2 + (u2 - np.asarray(p2)) ** 2)
    high = d + np.sqrt((u1 - np.asarray(p1)) ** 2 + (np.asarray(p2) - l2) ** 2)
    out = (d, low, high)
    if np.ndim(d) == 0:
        return tuple(float(v) for v in out)  # type: ignore[return-value]
    return out


def _values(values: Any) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("Got no values; a mean and its interval need at least one.")
    if not np.isfinite(x).all():
        raise ValueError(f"values must be finite; {int((~np.isfinite(x)).sum())} of {x.size} are NaN or Inf.")
    return x


def mean_interval(values: Any, z: float = Z95) -> dict[str, float]:
    """Mean, standard error (``s / sqrt(n)``) and the normal 95% interval of per-item values.

    Examples
    --------
    >>> r = mean_interval([1.0, 2.0, 3.0, 4.0])
    >>> r["mean"], round(r["stderr"], 4), r["n"]
    (2.5, 0.6455, 4)
    """
    x = _values(values)
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    m = float(x.mean())
    return {"mean": m, "stderr": se, "low": m - z * se, "high": m + z * se, "n": int(x.size)}


def bootstrap_mean(values: Any, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean and its percentile-bootstrap interval (resampling the items with replacement).

    Examples
    --------
    >>> r = bootstrap_mean([0.0, 0.0, 0.0, 1.0, 5.0], seed=0)
    >>> r["mean"], r["low"] <= r["mean"] <= r["high"], r["n"]
    (1.2, True, 5)
    """
    if not isinstance(n_boot, int) or isinstance(n_boot, bool) or n_boot < 100:
        raise ValueError(f"n_boot must be an int >= 100 (bootstrap resamples); got {n_boot!r}.")
    if not (isinstance(level, float) and 0 < level < 1):
        raise ValueError(f"level must be a float in (0, 1), e.g. 0.95; got {level!r}.")
    x = _values(values)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)  # [n_boot]
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {"mean": float(x.mean()), "low": float(low), "high": float(high), "n": int(x.size)}


def describe(rate: float, low: float, high: float, n: Any) -> str:
    """``'0.912 [0.861, 0.946] (n=128)'``: a rate as every table in qviz prints it.

    Examples
    --------
    >>> describe(*wilson(3, 4), 4)
    '0.750 [0.301, 0.954] (n=4)'
    """
    if not np.isfinite(rate):
        return "—"
    return f"{rate:.3f} [{low:.3f}, {high:.3f}] (n={int(n)})"


# --------------------------------------------------------------------------- compare's Dataset

# rate variable -> the variable holding its sample size
RATE_SAMPLES = {
    "accuracy": "accuracy_n",
    "agreement": "accuracy_n",
    "attack_success_rate": "attack_n",
    "token_attack_success_rate": "attack_n",
}


def annotate(cmp: xr.Dataset, baseline: str = "fp32") -> xr.Dataset:
    """Add 95% intervals and the comparison with ``baseline`` to a :func:`qviz.compare` Dataset.

    For every rate in :data:`RATE_SAMPLES` present together with its sample
    size: ``<rate>_low`` / ``<rate>_high`` (Wilson), ``<rate>_diff_low`` /
    ``<rate>_diff_high`` (Newcombe, config minus baseline) and
    ``<rate>_exceeds_noise`` (the difference interval excludes 0). Returns a
    new Dataset; ``cmp`` is not changed.

    Examples
    --------
    >>> ds = xr.Dataset({"accuracy": ("config", [0.9, 0.8]), "accuracy_n": ("config", [50, 50])},
    ...                 coords={"config": ["fp32", "w2"]})
    >>> out = annotate(ds)          # 45/50 against 40/50: a 0.1 drop, within the noise of 50 inputs
    >>> bool(out.accuracy_exceeds_noise.sel(config="w2")), round(float(out.accuracy_diff_low.sel(config="w2")), 3)
    (False, -0.242)
    """
    if "config" not in cmp.dims:
        raise ValueError(f"annotate needs a Dataset with a 'config' dim (qviz.compare's); got dims {tuple(cmp.dims)}.")
    out = cmp.copy()
    for var, n_var in RATE_SAMPLES.items():
        if var not in cmp or n_var not in cmp:
            continue
        rate, n = cmp[var], cmp[n_var]
        rate, n = xr.broadcast(rate, n)
        k = (rate * n).round()
        finite = np.isfinite(rate) & np.isfinite(n) & (n > 0)
        k, n_ok = k.where(finite, 0), n.where(finite, 1)
        _, low, high = wilson(k.values, n_ok.values)
        label = cmp[var].attrs.get("long_name", var)
        out[f"{var}_low"] = rate.copy(data=np.where(finite, low, np.nan)).assign_attrs(
            long_name=f"{label}: lower end of the 95% Wilson interval", units=cmp[var].attrs.get("units", "fraction"))
        out[f"{var}_high"] = rate.copy(data=np.where(finite, high, np.nan)).assign_attrs(
            long_name=f"{label}: upper end of the 95% Wilson interval", units=cmp[var].attrs.get("units", "fraction"))
        if baseline not in cmp.config.values:
            continue
        k0, n0 = k.sel(config=baseline), n_ok.sel(config=baseline)
        ok0 = finite.sel(config=baseline)
        _, dlow, dhigh = rate_difference(*(np.broadcast_arrays(k.values, n_ok.values, k0.broadcast_like(k).values,
                                                               n0.broadcast_like(k).values)))
        both = finite.values & ok0.broadcast_like(k).values
        out[f"{var}_diff_low"] = rate.copy(data=np.where(both, dlow, np.nan)).assign_attrs(
            long_name=f"{label} minus {baseline}: lower end of the 95% Newcombe interval", units="fraction")
        out[f"{var}_diff_high"] = rate.copy(data=np.where(both, dhigh, np.nan)).assign_attrs(
            long_name=f"{label} minus {baseline}: upper end of the 95% Newcombe interval", units="fraction")
        out[f"{var}_exceeds_noise"] = rate.copy(data=both & ((dlow > 0) | (dhigh < 0))).assign_attrs(
            long_name=f"{label} differs from {baseline} by more than the 95% noise", units="bool")
    return out
