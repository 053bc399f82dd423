"""GPU kernels (Triton) for tensors on CUDA: the twins of :mod:`kernels_numba` where the data lives on a GPU.

Modules
-------
fakequant   fused RTN and absmax-codebook (NF4/FP4) fake-quant, bit-identical to the Numba kernels
stats       per-channel activation statistics of one batch, reduced on the device (capture)
int4        packed INT4 weights with group scales and a batch-1 GEMV, for the cost figures

Every entry point takes CUDA tensors; :func:`available` says whether a tensor can use them
(a CUDA tensor and an importable Triton). Nothing here is imported by ``import qviz``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def available(x: Any) -> bool:
    """True when ``x`` is a CUDA tensor and Triton can be imported (the GPU kernels can run on it).

    Examples
    --------
    >>> import torch
    >>> available(torch.zeros(2))
    False
    """
    return getattr(getattr(x, "device", None), "type", None) == "cuda" and _has_triton()
