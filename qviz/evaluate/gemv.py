"""The GEMV benchmark: one matrix-vector product (one token at batch 1) per low-bit kernel and weight shape."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
import torch
import xarray as xr
from torch import nn

import kernels_numba as kn

from qviz._errors import did_you_mean
from qviz.evaluate.timing import Threads, timeit
from qviz.quant.config import BnbInt8, BnbNF4
from qviz.quant.modules import packed_cpu_kernel_available
from qviz.quant.registry import method_for

__all__ = ["gemv_benchmark"]


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
    known = ("torch fp32", "numba int4", "numba int8", "torch int8 dynamic", "bnb int8", "bnb nf4", "bnb nf4 packed")
    kernels = list(known if kernels is None else kernels)
    for k in kernels:
        if k not in known:
            raise ValueError(f"Unknown kernel {k!r}.{did_you_mean(k, known)} Known: {', '.join(known)}.")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int; got {repeats!r}.")
    with Threads(threads):
        return _gemv_run(shapes, kernels, repeats, group_size, seed)


def _gemv_run(shapes: Sequence[tuple[int, int]], kernels: list[str], repeats: int, group_size: int,
              seed: int) -> xr.Dataset:
    gen = torch.Generator().manual_seed(seed)
    times = np.full((len(shapes), len(kernels)), np.nan)
    wbytes = np.full((len(shapes), len(kernels)), np.nan)
    for i, (out_f, in_f) in enumerate(shapes):
        w = torch.randn(out_f, in_f, generator=gen) / math.sqrt(in_f)  # [out, in]
        x = torch.randn(1, in_f, generator=gen)  # [1, in]
        xn = x[0].numpy()
        for j, k in enumerate(kernels):
            fn, nbytes = _gemv_case(k, w, x, xn, group_size)
            if fn is None:
                continue
            with torch.no_grad():
                times[i, j] = 1e6 * min(timeit(fn, repeats, min_time=0.05))
            wbytes[i, j] = nbytes
    base = times[:, [kernels.index("torch fp32")]] if "torch fp32" in kernels else np.full((len(shapes), 1), np.nan)
    return xr.Dataset(
        {
            "time_us": (("shape", "kernel"), times, {"long_name": "time per matrix-vector product (best of repeats)", "units": "µs"}),
            "speedup": (("shape", "kernel"), base / times, {"long_name": "speed-up over torch fp32 at batch 1", "units": "x"}),
            "weight_bytes": (("shape", "kernel"), wbytes, {"long_name": "weight bytes read per product", "units": "B"}),
        },
        coords={"shape": [f"{o} x {n}" for o, n in shapes], "kernel": kernels},
        attrs={"torch_threads": int(torch.get_num_threads()), "numba_threads": int(numba.get_num_threads()),
               "group_size": group_size},
    )


def _gemv_case(k: str, w: torch.Tensor, x: torch.Tensor, xn: np.ndarray, group_size: int) -> tuple[Any, int]:
    """``(timed call, weight bytes it reads)`` for kernel ``k`` on ``w`` ``[out, in]`` and ``x`` ``[1, in]``; (None, 0) where it cannot run."""
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
        if self.name not in torch.backends.quantized.supported_engines:
            raise RuntimeError(f"torch's quantized engine {self.name!r} is not in this build "
                               f"({torch.backends.quantized.supported_engines}).")
        self.saved = torch.backends.quantized.engine
        torch.backends.quantized.engine = self.name

    def __exit__(self, *exc: Any) -> None:
        torch.backends.quantized.engine = self.saved
