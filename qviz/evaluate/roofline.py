"""Estimates from the hardware table: the batch-1 decode roofline, dollars per token and per query, what fits where."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from qviz._errors import did_you_mean
from qviz.evaluate.hardware import as_hardware_table

__all__ = ["cost_table", "fits_on", "offload_roofline", "roofline", "usd_per_1k_queries", "usd_per_1m_tokens"]


def _positive(value: Any, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be finite and > 0; got {value!r}.")
    return arr


def roofline(bytes_per_token: Any, hardware: Any = None, *, n_params: Any = None) -> xr.Dataset:
    """Batch-1 decode tokens/s on each hardware row from memory bandwidth (and compute, if known).

    ``tokens/s = min(bandwidth / bytes_per_token, peak FLOP/s / (2 * n_params))``:
    at batch 1 every weight is read once per generated token, so the weight
    bytes (KV cache aside) set the memory roof.

    Parameters
    ----------
    bytes_per_token
        Bytes read per token (the model's weight bytes), a number or an
        ``xr.DataArray`` over ``config``.
    hardware
        A hardware table (:func:`hardware_table`), rows for it, or None (defaults).
    n_params
        Parameters (for the compute roof); None: memory roof only.

    Returns
    -------
    xr.Dataset
        ``tokens_per_s`` and ``bound`` (``"memory"`` or ``"compute"``) over
        ``hardware`` (and ``config``).

    Examples
    --------
    >>> hw = hardware_table([{"name": "a", "memory_gb": 8, "bandwidth_gbps": 100, "usd_per_hour": 1}])
    >>> float(roofline(50e9, hw).tokens_per_s.sel(hardware="a"))
    2.0
    """
    hw = as_hardware_table(hardware)
    bpt = bytes_per_token if isinstance(bytes_per_token, xr.DataArray) else xr.DataArray(_positive(bytes_per_token, "bytes_per_token"))
    _positive(bpt.values, "bytes_per_token")
    memory = hw.bandwidth_gbps * 1e9 / bpt
    if n_params is not None:
        n = n_params if isinstance(n_params, xr.DataArray) else xr.DataArray(_positive(n_params, "n_params"))
        compute = (hw.tflops * 1e12 / (2 * n)).fillna(np.inf)
        tps = np.minimum(memory, compute)
        bound = xr.where(compute < memory, "compute", "memory")
    else:
        tps = memory
        bound = xr.full_like(memory, 0, dtype=int).astype(str).copy(data=np.full(memory.shape, "memory", dtype=object))
    return xr.Dataset(
        {
            "tokens_per_s": tps.assign_attrs(long_name="batch-1 decode estimate (roofline)", units="tokens/s"),
            "bound": bound.astype(object).assign_attrs(long_name="what limits the estimate"),
        }
    )


def usd_per_1m_tokens(tokens_per_s: Any, usd_per_hour: Any) -> Any:
    """Dollars per million tokens at ``tokens_per_s`` on a device costing ``usd_per_hour``.

    Examples
    --------
    >>> round(usd_per_1m_tokens(100.0, 3.6), 2)
    10.0
    """
    tps = tokens_per_s
    if np.any(np.asarray(tps) <= 0):
        raise ValueError(f"tokens_per_s must be > 0; got {tokens_per_s!r}.")
    return usd_per_hour / (tps * 3600.0) * 1e6


def usd_per_1k_queries(queries_per_s: Any, usd_per_hour: Any) -> Any:
    """Dollars per thousand queries at ``queries_per_s`` on a device costing ``usd_per_hour``.

    Examples
    --------
    >>> round(usd_per_1k_queries(10.0, 3.6), 3)
    0.1
    """
    if np.any(np.asarray(queries_per_s) <= 0):
        raise ValueError(f"queries_per_s must be > 0; got {queries_per_s!r}.")
    return usd_per_hour / (queries_per_s * 3600.0) * 1e3


def fits_on(model_bytes: Any, hardware: Any = None, *, headroom: float = 0.2) -> xr.DataArray:
    """Whether a model of ``model_bytes`` fits each device's memory with ``headroom`` to spare.

    ``headroom`` is the share of the model's size reserved on top for
    activations, KV cache and the runtime (0.2 = 20%).

    Examples
    --------
    >>> hw = hardware_table([{"name": "a", "memory_gb": 8, "bandwidth_gbps": 100, "usd_per_hour": 1}])
    >>> bool(fits_on(6e9, hw).sel(hardware="a")), bool(fits_on(7e9, hw).sel(hardware="a"))
    (True, False)
    """
    hw = as_hardware_table(hardware)
    if not isinstance(headroom, (int, float)) or headroom < 0:
        raise ValueError(f"headroom must be a number >= 0 (share of the model size kept free); got {headroom!r}.")
    mb = model_bytes if isinstance(model_bytes, xr.DataArray) else xr.DataArray(_positive(model_bytes, "model_bytes"))
    return (mb * (1 + headroom) <= hw.memory_gb * 1e9).assign_attrs(
        long_name=f"fits in memory with {headroom:.0%} headroom", units="bool"
    )


def cost_table(
    model_bytes: Any, hardware: Any = None, *, n_params: Any = None, headroom: float = 0.2
) -> xr.Dataset:
    """Roofline tokens/s, dollars per million tokens and the fits-on flag, over ``hardware`` (and ``config``).

    Examples
    --------
    >>> t = cost_table(35e9, hardware_table(include_this_cpu=False))
    >>> bool(t.fits.sel(hardware="data-centre GPU (H100 SXM)")), bool(t.fits.sel(hardware="phone (LPDDR5X)"))
    (True, False)
    """
    hw = as_hardware_table(hardware)
    roof = roofline(model_bytes, hw, n_params=n_params)
    with np.errstate(divide="ignore"):
        usd = hw.usd_per_hour / (roof.tokens_per_s * 3600.0) * 1e6
    return xr.Dataset(
        {
            "tokens_per_s": roof.tokens_per_s,
            "bound": roof.bound,
            "usd_per_1m_tokens": usd.assign_attrs(long_name="cost per million tokens (roofline)", units="USD"),
            "fits": fits_on(model_bytes, hw, headroom=headroom),
        }
    )


def offload_roofline(
    model_bytes: Any, device: str, *, host_bandwidth_gbps: float, hardware: Any = None, headroom: float = 0.2
) -> xr.Dataset:
    """Batch-1 decode tokens/s on ``device`` when the weights that do not fit live in host memory.

    The device keeps as many weight bytes as fit beside ``headroom`` (the
    share :func:`fits_on` reserves for activations and the KV cache); the rest
    is read from the host once per token at ``host_bandwidth_gbps`` (the CPU's
    memory bandwidth when the CPU computes those layers, as llama.cpp does; the
    PCIe link when they are streamed to the device). Per token::

        seconds = on_device_bytes / device_bandwidth + offloaded_bytes / host_bandwidth

    Parameters
    ----------
    model_bytes
        Weight bytes (a number or an ``xr.DataArray`` over ``config``).
    device
        A row name of the hardware table.
    host_bandwidth_gbps
        GB/s at which the offloaded bytes are read.

    Returns
    -------
    xr.Dataset
        ``on_device_gb``, ``offloaded_gb``, ``tokens_per_s`` (with offloading),
        ``tokens_per_s_if_it_fit`` (the plain memory roof) and ``fits``.

    Examples
    --------
    >>> hw = hardware_table([{"name": "gpu", "memory_gb": 24, "bandwidth_gbps": 1000, "usd_per_hour": 0.4}])
    >>> r = offload_roofline(40e9, "gpu", host_bandwidth_gbps=50, hardware=hw)
    >>> float(r.offloaded_gb), round(float(r.tokens_per_s), 2)
    (20.0, 2.38)
    """
    hw = as_hardware_table(hardware)
    if device not in hw.hardware.values:
        names = [str(n) for n in hw.hardware.values]
        raise ValueError(f"Unknown hardware row {device!r}.{did_you_mean(device, names)} Rows: {', '.join(names)}.")
    host = float(_positive(host_bandwidth_gbps, "host_bandwidth_gbps"))
    if not isinstance(headroom, (int, float)) or headroom < 0:
        raise ValueError(f"headroom must be a number >= 0 (share of the model size kept free); got {headroom!r}.")
    mb = model_bytes if isinstance(model_bytes, xr.DataArray) else xr.DataArray(_positive(model_bytes, "model_bytes"))
    _positive(mb.values, "model_bytes")
    row = hw.sel(hardware=device)
    capacity = float(row.memory_gb) * 1e9 / (1 + headroom)  # weight bytes the device holds
    on_device = np.minimum(mb, capacity)
    offloaded = mb - on_device
    seconds = on_device / (float(row.bandwidth_gbps) * 1e9) + offloaded / (host * 1e9)
    return xr.Dataset(
        {
            "on_device_gb": (on_device / 1e9).assign_attrs(long_name=f"weights on {device}", units="GB"),
            "offloaded_gb": (offloaded / 1e9).assign_attrs(long_name="weights read from host memory", units="GB"),
            "tokens_per_s": (1 / seconds).assign_attrs(
                long_name=f"batch-1 decode estimate, offloading at {host:g} GB/s", units="tokens/s"),
            "tokens_per_s_if_it_fit": (float(row.bandwidth_gbps) * 1e9 / mb).assign_attrs(
                long_name="batch-1 decode estimate if every weight fit (memory roof)", units="tokens/s"),
            "fits": fits_on(mb, hw, headroom=headroom).sel(hardware=device, drop=True),
        },
        attrs={"device": device, "host_bandwidth_gbps": host, "headroom": float(headroom)},
    )
