"""The hardware table: memory, bandwidth, compute and price per hour of the machines a cost is estimated for.

The default rows are public list figures, rounded, for orientation; this machine's CPU (and GPU) is measured.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import xarray as xr

from qviz._errors import did_you_mean

__all__ = ["DEFAULT_HARDWARE", "Hardware", "as_hardware_table", "asdict_hardware", "gpu_row_name", "hardware_table",
           "measure_memory_bandwidth"]


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
    try:
        import psutil  # lazy: optional; the fallback below reads the OS

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
        import torch  # lazy: the hardware table itself needs no torch; only the GPU row does
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


def as_hardware_table(hardware: Any) -> xr.Dataset:
    """``hardware`` as a checked hardware table: a table itself (every row with a bandwidth), or rows for :func:`hardware_table`.

    Examples
    --------
    >>> as_hardware_table(None).sizes["hardware"] >= 4
    True
    """
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


def asdict_hardware(h: Hardware) -> dict[str, Any]:
    """A hardware row as a plain dict (for editing and passing back to :func:`hardware_table`)."""
    return asdict(h)
