"""Numba-JIT numeric kernels for qviz: numpy arrays in, numpy arrays out.

No torch import anywhere in this package. Each public function checks its
arguments in Python, then runs a ``@njit(cache=True)`` kernel that loops over
rows or blocks writing into an output array.
"""

from ._common import ErrorStats
from .rtn import (
    CLIP_RATIOS,
    PER_TENSOR,
    QParams,
    choose_qparams,
    dequantize,
    fake_quantize,
    quantize,
    quantize_with_stats,
)

__all__ = [
    "CLIP_RATIOS",
    "PER_TENSOR",
    "ErrorStats",
    "QParams",
    "choose_qparams",
    "dequantize",
    "fake_quantize",
    "quantize",
    "quantize_with_stats",
]
