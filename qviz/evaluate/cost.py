"""What a quantized model costs to run: measured here, estimated elsewhere.

* **Measured** (:func:`measure_latency`): batch-1 latency and batched
  throughput of a model on this machine, labelled with what ran. A
  fake-quant model does float arithmetic on dequantized weights, so it is no
  faster than full precision: its timings are labelled ``simulated``. Real
  low-bit kernels are labelled ``real kernel``: bitsandbytes ``Linear8bitLt`` /
  ``Linear4bit``, the packed INT4/INT8 matrix-vector kernels of
  :mod:`kernels_numba` (:func:`kernel_model` swaps them in for weight-only RTN
  layers) and torch's dynamic int8 ``Linear`` (fbgemm). :func:`gemv_benchmark`
  times one matrix-vector product (one token at batch 1) per kernel and shape.
* **Estimated** (:func:`roofline`): batch-1 decoding reads every weight once
  per token, so tokens/s is at most ``bandwidth / bytes per token`` (and
  ``FLOP/s / 2·params`` when compute is the limit). The hardware is an
  editable table (:func:`hardware_table`): memory, bandwidth, price per
  hour. From it: dollars per million tokens and per thousand queries, and
  whether the model fits (:func:`fits_on`).

The default rows are public list figures, rounded, for orientation; edit
them (``hardware_table([...])``) for your own prices.

Examples
--------
>>> hw = hardware_table()
>>> list(hw.hardware.values)[1:]
['consumer GPU (RTX 4090)', 'data-centre GPU (H100 SXM)', 'phone (LPDDR5X)']
>>> float(roofline(35e9, hw).tokens_per_s.sel(hardware="data-centre GPU (H100 SXM)")) > 90
True
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import xarray as xr

from qviz._errors import did_you_mean

__all__ = [
    "DEFAULT_HARDWARE",
    "Hardware",
    "cost_table",
    "fits_on",
    "gemv_benchmark",
    "gpu_row_name",
    "hardware_table",
    "kernel_class",
    "kernel_model",
    "measure_latency",
    "measure_memory_bandwidth",
    "offload_roofline",
    "roofline",
    "usd_per_1k_queries",
    "usd_per_1m_tokens",
]


# --------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class Hardware:
    """One row of the hardware table.

    Attributes
    ----------
    name : str
    memory_gb : float
        Memory available to the model, GB (1e9 B).
    bandwidth_gbps : float
        Memory bandwidth, GB/s; what batch-1 decoding is limited by.
    usd_per_hour : float
        Price of an hour of the device (0 for a device you own).
    tflops : float or None
        Peak dense 16-bit TFLOP/s, for the compute roof (None: memory roof only).
    note : str
        Where the figures come from.

    Examples
    --------
    >>> Hardware("laptop", memory_gb=16, bandwidth_gbps=68, usd_per_hour=0).bandwidth_gbps
    68.0
    >>> Hardware("x", memory_gb=16, bandwidth_gbps=None, usd_per_hour=0)
    Traceback (most recent call last):
    ...
    ValueError: Hardware row 'x' has no bandwidth_gbps (memory bandwidth in GB/s), which the roofline estimate needs. Add it, e.g. bandwidth_gbps=100.
    """

    name: str
    memory_gb: float
    bandwidth_gbps: float
    usd_per_hour: float
    tflops: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Hardware name must be a non-empty string; got {self.name!r}.")
        for key, example in (("bandwidth_gbps", 100), ("memory_gb", 16), ("usd_per_hour", 1.0)):
            value = getattr(self, key)
            what = {"bandwidth_gbps": "memory bandwidth in GB/s", "memory_gb": "memory in GB",
                    "usd_per_hour": "price per hour in US dollars"}[key]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                needs = {"bandwidth_gbps": "the roofline estimate", "memory_gb": "the fits-on table",
                         "usd_per_hour": "the cost per token"}[key]
                raise ValueError(
                    f"Hardware row {self.name!r} has no {key} ({what}), which {needs} needs. "
                    f"Add it, e.g. {key}={example}."
                )
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"Hardware row {self.name!r}: {key} must be a number ({what}); got {value!r}.")
            positive = key != "usd_per_hour"
            if not math.isfinite(value) or value < 0 or (positive and value == 0):
                raise ValueError(
                    f"Hardware row {self.name!r}: {key} must be a finite number {'> 0' if positive else '>= 0'} "
                    f"({what}); got {value!r}."
                )
            object.__setattr__(self, key, float(value))
        if self.tflops is not None:
            if not isinstance(self.tflops, (int, float)) or not self.tflops > 0:
                raise ValueError(f"Hardware row {self.name!r}: tflops must be None or > 0; got {self.tflops!r}.")
            object.__setattr__(self, "tflops", float(self.tflops))


def measure_memory_bandwidth(n_bytes: int = 1 << 27, repeats: int = 3) -> float:
    """This machine's memory bandwidth in GB/s: the best of ``repeats`` copies of a ``n_bytes`` array.

    A copy reads and writes each byte, so ``2 * n_bytes / seconds`` is counted.

    Examples
    --------
    >>> measure_memory_bandwidth(1 << 22, repeats=1) > 0
    True
    """
    src = np.ones(n_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def _this_cpu() -> Hardware:
    import os

    try:
        import psutil

        mem = psutil.virtual_memory().total / 1e9
    except Exception:  # psutil missing: read the page count
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    cores = os.cpu_count() or 1
    return Hardware(
        f"this CPU ({cores} cores)", memory_gb=round(mem, 1), bandwidth_gbps=round(measure_memory_bandwidth(), 1),
        usd_per_hour=round(0.05 * cores, 3),
        note="memory and bandwidth measured here (numpy copy); price: ~$0.05 per vCPU-hour on-demand cloud",
    )


# Typical on-demand cloud prices (USD per GPU-hour, rounded, 2025 list figures) and dense 16-bit TFLOP/s
# (vendor datasheets) of GPUs a "this GPU" row may be; matched by substring of the device name.
_GPU_FIGURES = (
    ("H200", 3.50, 989.0), ("H100", 2.50, 989.0), ("A100", 1.50, 312.0), ("L40S", 1.00, 362.0),
    ("L4", 0.80, 121.0), ("A10G", 1.00, 125.0), ("4090", 0.40, 165.0), ("T4", 0.35, 65.0),
)


def _this_gpu() -> Hardware | None:
    """A measured row for the CUDA device in use (None without one): memory, copy bandwidth, list price."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    src = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")  # 256 MiB, several times any L2
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = math.inf
    for _ in range(5):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    bandwidth = 2 * src.numel() / best / 1e9  # a copy reads and writes each byte
    del src, dst
    price, tflops, source = 0.0, None, "price unknown for this GPU: edit usd_per_hour"
    for key, usd, tf in _GPU_FIGURES:
        if key in props.name:
            price, tflops, source = usd, tf, "price: typical on-demand cloud rate; TFLOP/s: vendor datasheet"
            break
    return Hardware(f"this GPU ({props.name})", memory_gb=round(props.total_memory / 1e9, 1),
                    bandwidth_gbps=round(bandwidth, 1), usd_per_hour=price, tflops=tflops,
                    note=f"memory and bandwidth measured here (device-to-device copy); {source}")


def gpu_row_name(hardware: xr.Dataset) -> str | None:
    """The name of the ``this GPU (...)`` row of a hardware table, or None.

    Examples
    --------
    >>> gpu_row_name(hardware_table([{"name": "this GPU (NVIDIA H200)", "memory_gb": 141, "bandwidth_gbps": 4300,
    ...                                "usd_per_hour": 3.5}]))
    'this GPU (NVIDIA H200)'
    """
    rows = [str(h) for h in hardware.hardware.values if str(h).startswith("this GPU")]
    return rows[0] if rows else None


DEFAULT_HARDWARE: tuple[Hardware, ...] = (
    Hardware("consumer GPU (RTX 4090)", memory_gb=24, bandwidth_gbps=1008, usd_per_hour=0.40, tflops=165,
             note="NVIDIA list figures; price: typical community-cloud rental"),
    Hardware("data-centre GPU (H100 SXM)", memory_gb=80, bandwidth_gbps=3350, usd_per_hour=2.50, tflops=989,
             note="NVIDIA list figures; price: typical on-demand cloud rate"),
    Hardware("phone (LPDDR5X)", memory_gb=12, bandwidth_gbps=77, usd_per_hour=0.0, tflops=None,
             note="flagship phone, LPDDR5X-9600 on a 64-bit bus; owned device, so no hourly price"),
)
"""The default rows after "this CPU" (which :func:`hardware_table` measures)."""

_FIELDS = ("name", "memory_gb", "bandwidth_gbps", "usd_per_hour", "tflops", "note")


def _row(obj: Any) -> Hardware:
    if isinstance(obj, Hardware):
        return obj
    if isinstance(obj, Mapping):
        unknown = [k for k in obj if k not in _FIELDS]
        if unknown:
            raise ValueError(
                f"Unknown hardware field {unknown[0]!r}.{did_you_mean(unknown[0], _FIELDS)} "
                f"Fields: {', '.join(_FIELDS)}."
            )
        if "name" not in obj:
            raise ValueError(f"A hardware row needs a name; got {dict(obj)!r}.")
        data = {k: obj.get(k) for k in ("name", "memory_gb", "bandwidth_gbps", "usd_per_hour")}
        extra = {k: obj[k] for k in ("tflops", "note") if k in obj and obj[k] is not None}
        return Hardware(**data, **extra)
    raise TypeError(f"A hardware row must be a Hardware or a dict of {', '.join(_FIELDS)}; got {type(obj).__name__}.")


def hardware_table(rows: Any = None, *, include_this_cpu: bool = True) -> xr.Dataset:
    """The editable hardware table as a Dataset with dim ``hardware``.

    Parameters
    ----------
    rows
        None (the defaults), or a list of :class:`Hardware` / dicts, a pandas
        DataFrame with columns ``name, memory_gb, bandwidth_gbps, usd_per_hour``
        (``tflops``, ``note`` optional), or a Dataset from this function (edited).
    include_this_cpu
        Put a measured row for this machine first (when ``rows`` is None), and one for its CUDA
        GPU after it where there is one (memory and device-to-device copy bandwidth measured,
        a typical cloud price by the GPU's name).

    Examples
    --------
    >>> hw = hardware_table([{"name": "my box", "memory_gb": 64, "bandwidth_gbps": 90, "usd_per_hour": 0.2}])
    >>> float(hw.bandwidth_gbps.sel(hardware="my box"))
    90.0
    >>> hardware_table([{"name": "phone", "memory_gb": 8, "usd_per_hour": 0}])
    Traceback (most recent call last):
    ...
    ValueError: Hardware row 'phone' has no bandwidth_gbps (memory bandwidth in GB/s), which the roofline estimate needs. Add it, e.g. bandwidth_gbps=100.
    """
    if isinstance(rows, xr.Dataset):
        rows = [
            {"name": str(n), **{k: (None if k == "tflops" and np.isnan(float(rows[k].sel(hardware=n))) else
                                    (str(rows[k].sel(hardware=n).item()) if k == "note" else float(rows[k].sel(hardware=n))))
                                for k in _FIELDS[1:] if k in rows}}
            for n in rows.hardware.values
        ]
    elif rows is not None and type(rows).__name__ == "DataFrame":
        frame = rows.reset_index() if "name" not in rows.columns else rows
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}
                for rec in frame.to_dict("records")]
    if rows is None:
        gpu = _this_gpu() if include_this_cpu else None
        table = ([_this_cpu()] if include_this_cpu else []) + ([gpu] if gpu is not None else []) + list(DEFAULT_HARDWARE)
    else:
        if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence) or not rows:
            raise TypeError("rows must be a non-empty list of Hardware rows or dicts, a DataFrame or a hardware Dataset.")
        table = [_row(r) for r in rows]
    names = [h.name for h in table]
    if len(set(names)) != len(names):
        raise ValueError(f"Hardware names must be unique; got {names}.")
    return xr.Dataset(
        {
            "memory_gb": ("hardware", [h.memory_gb for h in table], {"long_name": "memory", "units": "GB"}),
            "bandwidth_gbps": ("hardware", [h.bandwidth_gbps for h in table], {"long_name": "memory bandwidth", "units": "GB/s"}),
            "usd_per_hour": ("hardware", [h.usd_per_hour for h in table], {"long_name": "price", "units": "USD/hour"}),
            "tflops": ("hardware", [np.nan if h.tflops is None else h.tflops for h in table],
                       {"long_name": "peak dense 16-bit compute", "units": "TFLOP/s"}),
            "note": ("hardware", np.array([h.note for h in table], dtype=object), {"long_name": "source of the figures"}),
        },
        coords={"hardware": np.array(names, dtype=object)},
    )


def _as_table(hardware: Any) -> xr.Dataset:
    if isinstance(hardware, xr.Dataset) and "bandwidth_gbps" in hardware:
        bad = [str(n) for n, v in zip(hardware.hardware.values, hardware.bandwidth_gbps.values, strict=True)
               if not (np.isfinite(v) and v > 0)]
        if bad:
            raise ValueError(
                f"Hardware row {bad[0]!r} has no bandwidth_gbps (memory bandwidth in GB/s), which the roofline "
                "estimate needs. Add it, e.g. bandwidth_gbps=100."
            )
        return hardware
    if isinstance(hardware, xr.Dataset):
        raise ValueError("The hardware table has no bandwidth_gbps column (memory bandwidth in GB/s). Build it with hardware_table().")
    return hardware_table(hardware)


# --------------------------------------------------------------------------- estimates


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
    hw = _as_table(hardware)
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
    hw = _as_table(hardware)
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
    hw = _as_table(hardware)
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
    hw = _as_table(hardware)
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


# --------------------------------------------------------------------------- real kernels


def kernel_class(kernel: str) -> str:
    """``"real kernel"`` or ``"simulated"`` for a kernel description (``"full precision"`` for torch float).

    Examples
    --------
    >>> kernel_class("real kernel: bitsandbytes Linear4bit (nf4)"), kernel_class("simulated (fake-quant)")
    ('real kernel', 'simulated')
    """
    if kernel.startswith("real kernel"):
        return "real kernel"
    if kernel.startswith("full precision"):
        return "full precision"
    return "simulated"


def _torch() -> Any:
    import torch

    return torch


def _numba_linear_class() -> type:
    torch = _torch()
    from torch import nn

    class NumbaGemvLinear(nn.Module):
        """A weight-only RTN Linear run by the packed INT4 / INT8 matrix-vector kernels of kernels_numba.

        Each input row (one token) is one matrix-vector product on the packed
        weight; the weight is never dequantized into a float matrix. No gradient.
        """

        def __init__(self, codes: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int, group_size: int,
                     bias: Any) -> None:
            super().__init__()
            import kernels_numba as kn

            self.bits, self.group_size = bits, group_size
            self.out_features, self.in_features = codes.shape
            self.scale = np.ascontiguousarray(scale, dtype=np.float32)  # [out, n_groups]
            self.zero = np.ascontiguousarray(zero, dtype=np.uint8)
            self.codes = kn.pack(codes, 4) if bits == 4 else np.ascontiguousarray(codes)  # [out, in/2] or [out, in]
            self.bias = None if bias is None else bias.detach().float().numpy()
            name = "INT4 GEMV (packed, 2 codes/byte)" if bits == 4 else "INT8 GEMV"
            self.kernel = f"real kernel: kernels_numba {name}"

        def forward(self, x: Any) -> Any:  # [..., in] -> [..., out]
            import kernels_numba as kn

            rows = x.detach().float().reshape(-1, self.in_features).numpy()  # [tokens, in]
            out = np.empty((rows.shape[0], self.out_features), np.float32)
            for i, row in enumerate(rows):
                if self.bits == 4:
                    out[i] = kn.gemv_int4(self.codes, self.scale, self.zero, row, self.group_size)
                else:
                    out[i] = kn.gemv_int8(self.codes, self.scale, self.zero, row)
            if self.bias is not None:
                out += self.bias
            return torch.from_numpy(out).reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    return NumbaGemvLinear


def _numba_layer(module: Any, cfg: Any) -> Any | None:
    """A real-kernel replacement for weight-only RTN: on the CPU the Numba GEMV (INT4 asymmetric with even
    groups, or INT8 per row), on CUDA the Triton INT4 kernel (:mod:`qviz.gpu.int4`; w4 asymmetric groups)."""
    from qviz.models import layer_type, weight_matrix
    from qviz.quant.config import RTN

    if not isinstance(cfg, RTN) or cfg.act_bits is not None or layer_type(module) != "linear":
        return None
    if module.weight.device.type == "cuda":  # the Triton INT4 kernel (weight-only w4, asymmetric, even groups)
        if cfg.bits != 4 or cfg.symmetric or cfg.clip_search or not isinstance(cfg.group_size, int):
            return None
        from qviz.gpu.int4 import int4_layer

        return int4_layer(module, cfg.group_size)
    import kernels_numba as kn

    w = weight_matrix(module).float().cpu().numpy()  # [out, in]
    group = cfg.group_size
    if cfg.bits == 4 and not cfg.symmetric and (group is None or isinstance(group, int)) and (group or w.shape[1]) % 2 == 0:
        gs = group  # None: one group per row, run as a group of the whole row
    elif cfg.bits == 8 and group is None:
        gs = None
    else:
        return None
    codes, qp, _ = kn.quantize_with_stats(w, bits=cfg.bits, group_size=gs, symmetric=cfg.symmetric,
                                          clip_search=cfg.clip_search)
    scale = qp.scale.reshape(w.shape[0], -1)
    zero = qp.zero.reshape(w.shape[0], -1)
    if cfg.bits == 8:
        scale, zero = scale[:, 0], zero[:, 0]  # [out]: one per row
    return _numba_linear_class()(codes, scale, zero, cfg.bits, gs or w.shape[1], getattr(module, "bias", None))


def kernel_model(model: Any, cfg: Any, quantized: Any = None) -> Any | None:
    """``model`` with each weight-only RTN Linear run by a Numba GEMV kernel, or None when none applies.

    Kernels exist for ``RTN(bits=4, symmetric=False)`` with an even group size
    or one group per row (packed INT4 GEMV) and ``RTN(bits=8, group_size=None)``
    (INT8 GEMV). The kernels are built from ``model``'s (full-precision)
    weights and swapped into ``quantized`` (the fake-quant model from
    :func:`qviz.quantize`) when given, so the layers without a kernel
    (convolutions) keep their fake-quant form; otherwise into a view of
    ``model``. Outputs equal the fake-quant model's up to float32 summation
    order. For timing only: no gradients. Neither model is changed.

    Examples
    --------
    >>> import torch, qviz
    >>> from torch import nn
    >>> km = kernel_model(nn.Sequential(nn.Linear(64, 8)), qviz.RTN(bits=4, group_size=32))
    >>> km.module[0].kernel
    'real kernel: kernels_numba INT4 GEMV (packed, 2 codes/byte)'
    """
    from qviz.evaluate.accuracy import _as_model
    from qviz.models import quantizable_layers
    from qviz.robustness import _swap

    qm = _as_model(model)
    base = qm if quantized is None else _as_model(quantized)
    record = getattr(base, "quantization", None)
    names = list(record.layers) if record is not None else list(quantizable_layers(qm))
    originals = dict(qm.module.named_modules())
    swaps = {}
    for name in names:
        new = _numba_layer(originals[name], cfg) if name in originals else None
        if new is not None:
            swaps[name] = new
    if not swaps:
        return None
    out = base.with_module(_swap(base.module, swaps), name=f"{base.name} [numba kernels]")
    kernels = {n: r.kernel for n, r in record.layers.items()} if record is not None else {}
    kernels.update({n: m.kernel for n, m in swaps.items()})
    out.kernel_layers = kernels
    return out


def model_kernel(model: Any) -> str:
    """One line saying what runs the quantized layers of ``model`` (from its record or swapped kernels).

    Examples
    --------
    >>> from torch import nn
    >>> model_kernel(nn.Linear(2, 2))
    'full precision (torch float32)'
    """
    kernels = list(getattr(model, "kernel_layers", {}).values())
    record = getattr(model, "quantization", None)
    if not kernels and record is not None:
        kernels = [r.kernel for r in record.layers.values()]
    if not kernels:
        return "full precision (torch float32)"
    distinct = sorted(set(kernels))
    real = [k for k in kernels if k.startswith("real kernel")]
    if real and len(real) < len(kernels):
        return f"real kernel for {len(real)}/{len(kernels)} layers: " + "; ".join(distinct)
    return "; ".join(distinct)


def _timeit(fn: Any, repeats: int, min_time: float = 0.0, sync: Any = None) -> list[float]:
    """Wall times of ``fn()`` after a warm-up; ``sync()`` (a device synchronisation) closes each timed call."""
    done = sync or (lambda: None)
    fn()  # warm-up (JIT, caches, autotuning)
    done()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start) < min_time:
        t0 = time.perf_counter()
        fn()
        done()
        times.append(time.perf_counter() - t0)
        if len(times) >= 10 * repeats:
            break
    return times


class _Threads:
    """Set torch's and Numba's thread counts inside a ``with`` block and restore them after (None: leave as is)."""

    def __init__(self, threads: int | None) -> None:
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f"threads must be None or a positive int; got {threads!r}.")
        self.threads = threads

    def __enter__(self) -> None:
        import numba

        torch = _torch()
        self.saved = (torch.get_num_threads(), numba.get_num_threads())
        if self.threads is not None:
            torch.set_num_threads(self.threads)
            numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))

    def __exit__(self, *exc: Any) -> None:
        import numba

        _torch().set_num_threads(self.saved[0])
        numba.set_num_threads(self.saved[1])


def measure_latency(
    model: Any, inputs: Any, *, batch_size: int = 32, repeats: int = 5, item: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Batch-1 latency and batched throughput of ``model`` on this machine, with what ran.

    Parameters
    ----------
    model
        A :class:`~qviz.QvizModel` (quantized or not, or from :func:`kernel_model`).
    inputs
        Raw inputs (texts or a tensor); the first one is the batch-1 input, the
        first ``batch_size`` the throughput batch.
    batch_size, repeats
        Throughput batch and the number of timed runs (the median is reported).
    item
        What one input is called in the units (default by model kind).
    threads
        torch and Numba threads while timing (restored after); None keeps the current setting.

    Returns
    -------
    dict
        ``latency_ms`` (median, batch 1), ``throughput`` (items/s at ``batch_size``),
        ``tokens_per_item`` (text: real tokens in the batch-1 input), ``kernel``
        (what ran), ``kernel_class`` (``real kernel`` / ``simulated`` / ``full precision``), ``item``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> r = measure_latency(nn.Linear(8, 8), torch.randn(4, 8), batch_size=4, repeats=2)
    >>> sorted(r)
    ['item', 'kernel', 'kernel_class', 'latency_ms', 'throughput', 'tokens_per_item']
    """
    from qviz.evaluate.accuracy import _as_model

    qm = _as_model(model)
    if not isinstance(batch_size, int) or batch_size < 1 or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"batch_size and repeats must be positive ints; got {batch_size!r}, {repeats!r}.")
    one = qm.prepare(inputs[:1])
    many = qm.prepare(inputs[:batch_size])
    n_many = len(inputs[:batch_size])
    mask = qm.token_mask(one)
    tokens = int(mask.sum()) if mask is not None else 1
    torch = _torch()
    sync = torch.cuda.synchronize if qm.device.type == "cuda" else None  # CUDA runs asynchronously
    with _Threads(threads):
        lat = statistics.median(_timeit(lambda: qm.run(one), repeats, min_time=0.2, sync=sync))
        thr = statistics.median(_timeit(lambda: qm.run(many), max(1, repeats // 2), sync=sync))
    kernel = model_kernel(qm)
    default_item = {"text-encoder": "sentence", "decoder": "sequence", "image-classifier": "image"}.get(qm.kind, "input")
    return {
        "latency_ms": 1e3 * lat,
        "throughput": n_many / thr,
        "tokens_per_item": tokens,
        "kernel": kernel,
        "kernel_class": kernel_class(kernel),
        "item": item or default_item,
    }


def gemv_benchmark(
    shapes: Sequence[tuple[int, int]] = ((384, 1536), (1536, 384), (4096, 4096), (11008, 4096)),
    *,
    kernels: Sequence[str] | None = None,
    repeats: int = 20,
    group_size: int = 128,
    seed: int = 0,
    threads: int | None = None,
) -> xr.Dataset:
    """Time one matrix-vector product ``W @ x`` (one token at batch 1) per kernel and weight shape.

    Kernels: ``"torch fp32"`` (``F.linear``, batch 1), ``"numba int4"``
    (packed INT4 GEMV, group ``group_size``), ``"numba int8"`` (INT8 GEMV),
    ``"torch int8 dynamic"`` (``quantize_dynamic``, fbgemm), ``"bnb int8"``
    (``Linear8bitLt``), ``"bnb nf4"`` (``Linear4bit``, its generic float32 CPU
    kernel), ``"bnb nf4 packed"`` (its packed AVX512-BF16 kernel; NaN on a CPU
    without AVX512-BF16). Every one but the first
    is a real low-bit kernel. The time is the best of ``repeats`` runs (after
    a warm-up), which is what the kernel can do when nothing else competes
    for the cores.

    ``threads`` sets torch's and Numba's thread counts for the benchmark (and
    restores them after); None keeps the current ones. ``threads=1`` compares
    the kernels core for core, and avoids waiting on a busy second core on a
    shared machine.

    Returns
    -------
    xr.Dataset
        ``time_us`` (best of ``repeats``) and ``speedup`` (torch fp32 time / kernel time)
        over ``shape`` (``"out x in"``) and ``kernel``; ``weight_bytes`` read per product.

    Examples
    --------
    >>> ds = gemv_benchmark([(64, 128)], kernels=["torch fp32", "numba int4"], repeats=2)
    >>> ds.time_us.dims
    ('shape', 'kernel')
    """
    torch = _torch()
    from torch import nn

    known = ("torch fp32", "numba int4", "numba int8", "torch int8 dynamic", "bnb int8", "bnb nf4", "bnb nf4 packed")
    kernels = list(known if kernels is None else kernels)
    for k in kernels:
        if k not in known:
            raise ValueError(f"Unknown kernel {k!r}.{did_you_mean(k, known)} Known: {', '.join(known)}.")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int; got {repeats!r}.")
    import kernels_numba as kn

    with _Threads(threads):
        return _gemv_run(shapes, kernels, repeats, group_size, seed, kn, nn, torch)


def _gemv_run(shapes: Sequence[tuple[int, int]], kernels: list[str], repeats: int, group_size: int, seed: int,
              kn: Any, nn: Any, torch: Any) -> xr.Dataset:
    gen = torch.Generator().manual_seed(seed)
    times = np.full((len(shapes), len(kernels)), np.nan)
    wbytes = np.full((len(shapes), len(kernels)), np.nan)
    for i, (out_f, in_f) in enumerate(shapes):
        w = torch.randn(out_f, in_f, generator=gen) / math.sqrt(in_f)  # [out, in]
        x = torch.randn(1, in_f, generator=gen)  # [1, in]
        xn = x[0].numpy()
        for j, k in enumerate(kernels):
            fn, nbytes = _gemv_case(k, w, x, xn, group_size, kn, nn, torch)
            if fn is None:
                continue
            with torch.no_grad():
                times[i, j] = 1e6 * min(_timeit(fn, repeats, min_time=0.05))
            wbytes[i, j] = nbytes
    base = times[:, [kernels.index("torch fp32")]] if "torch fp32" in kernels else np.full((len(shapes), 1), np.nan)
    return xr.Dataset(
        {
            "time_us": (("shape", "kernel"), times, {"long_name": "time per matrix-vector product (best of repeats)", "units": "µs"}),
            "speedup": (("shape", "kernel"), base / times, {"long_name": "speed-up over torch fp32 at batch 1", "units": "x"}),
            "weight_bytes": (("shape", "kernel"), wbytes, {"long_name": "weight bytes read per product", "units": "B"}),
        },
        coords={"shape": [f"{o} x {n}" for o, n in shapes], "kernel": kernels},
        attrs={"torch_threads": int(torch.get_num_threads()), "numba_threads": int(__import__("numba").get_num_threads()),
               "group_size": group_size},
    )


def _gemv_case(k: str, w: Any, x: Any, xn: np.ndarray, group_size: int, kn: Any, nn: Any, torch: Any) -> tuple[Any, int]:
    import warnings

    out_f, in_f = w.shape
    if k == "torch fp32":
        return (lambda: torch.nn.functional.linear(x, w)), w.numel() * 4
    if k == "numba int4":
        if in_f % group_size or group_size % 2:
            return None, 0
        codes, qp, _ = kn.quantize_with_stats(w.numpy(), bits=4, group_size=group_size)
        packed = kn.pack(codes, 4)
        scale, zero = np.ascontiguousarray(qp.scale, np.float32), np.ascontiguousarray(qp.zero)
        return (lambda: kn.gemv_int4(packed, scale, zero, xn, group_size)), packed.nbytes + scale.size * 3
    if k == "numba int8":
        codes, qp, _ = kn.quantize_with_stats(w.numpy(), bits=8, group_size=None)
        scale, zero = np.ascontiguousarray(qp.scale, np.float32), np.ascontiguousarray(qp.zero)
        return (lambda: kn.gemv_int8(codes, scale, zero, xn)), codes.nbytes + scale.size * 3
    if k == "torch int8 dynamic":
        lin = nn.Linear(in_f, out_f, bias=False)
        with torch.no_grad():
            lin.weight.copy_(w)
        with warnings.catch_warnings(), _quantized_engine("fbgemm"):
            warnings.simplefilter("ignore")
            q = torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)

        def run() -> Any:
            with _quantized_engine("fbgemm"):
                return q(x)

        return run, out_f * in_f + 8
    if k in ("bnb int8", "bnb nf4", "bnb nf4 packed"):
        from qviz.quant.config import BnbInt8, BnbNF4
        from qviz.quant.modules import packed_cpu_kernel_available
        from qviz.quant.registry import method_for

        if k == "bnb nf4 packed" and not packed_cpu_kernel_available():
            return None, 0  # this CPU has no AVX512-BF16: nothing to time
        lin = nn.Linear(in_f, out_f, bias=False)
        with torch.no_grad():
            lin.weight.copy_(w)
        cfg = BnbInt8(threshold=0.0) if k == "bnb int8" else BnbNF4(cpu_kernel="packed" if k.endswith("packed") else "generic")
        lq = method_for(cfg).quantize_layer("gemv", lin, cfg, None, None)
        return (lambda: lq.module(x)), lq.nbytes
    raise AssertionError(k)  # unreachable: names were checked


class _quantized_engine:
    """Run torch's quantized ops on one named engine (``"fbgemm"``), whatever this CPU's default is.

    torch's default ``"x86"`` engine picks fbgemm or oneDNN by CPU; naming the
    engine keeps the timed kernel the same on every x86 machine.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.saved: str | None = None

    def __enter__(self) -> None:
        torch = _torch()
        if self.name not in torch.backends.quantized.supported_engines:
            raise RuntimeError(f"torch's quantized engine {self.name!r} is not in this build "
                               f"({torch.backends.quantized.supported_engines}).")
        self.saved = torch.backends.quantized.engine
        torch.backends.quantized.engine = self.name

    def __exit__(self, *exc: Any) -> None:
        _torch().backends.quantized.engine = self.saved


def asdict_hardware(h: Hardware) -> dict[str, Any]:
    """A hardware row as a plain dict (for editing and passing back to :func:`hardware_table`)."""
    return asdict(h)
