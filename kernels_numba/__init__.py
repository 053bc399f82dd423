"""Numba-JIT numeric kernels for qviz: numpy arrays in, numpy arrays out.

No torch import anywhere in this package. Each public function checks its
arguments in Python, then runs an ``@njit(cache=True)`` kernel that loops over
rows or blocks writing into an output array (numbagg style).

Modules
-------
rtn     round-to-nearest affine quantization, 2-8 bits, with fused error statistics
pack    bit packing of 2-8 bit codes
nf4     bitsandbytes-identical NF4/FP4 blockwise formats
stats   streaming per-channel activation statistics
gemv    batch-1 INT4/INT8 matrix-vector products on packed weights
gguf    llama.cpp's GGUF block formats (Q4_0 ... Q8_0, Q2_K ... Q6_K, IQ4_NL), byte-exact
gptq    GPTQ's inner column loop (one block, rows in parallel) on the RTN arithmetic
histogram  one-pass error statistics and histogram of a reconstruction (the widgets' fast path)
fp      FP8/FP6/FP4 element formats, OCP MX blocks (E8M0 per 32) and NVFP4 (import kernels_numba.fp)
"""

from ._common import ErrorStats
from .gemv import gemv_int4, gemv_int8
from .gptq import gptq_block
from .histogram import ErrorHistogram, error_and_histogram
from .gguf import GGUF_TYPES, dequantize_gguf, quantize_gguf, unpack_gguf
from .nf4 import (
    codebook_4bit,
    dequantize_4bit,
    fake_quantize_4bit,
    pack_4bit,
    quantize_4bit,
    unpack_4bit,
)
from .pack import pack, packed_nbytes, unpack
from .rtn import (
    CLIP_RATIOS,
    PER_TENSOR,
    ScaleZero,
    choose_qparams,
    dequantize,
    fake_quantize,
    quantize,
    quantize_with_stats,
)
from .stats import (
    ChannelStats,
    ChannelSummary,
    finalize_channel_stats,
    merge_channel_stats,
    new_channel_stats,
    update_channel_stats,
)

__all__ = [
    # rtn
    "CLIP_RATIOS",
    "PER_TENSOR",
    "ErrorStats",
    "ScaleZero",
    "choose_qparams",
    "quantize",
    "dequantize",
    "fake_quantize",
    "quantize_with_stats",
    # gptq
    "gptq_block",
    # histogram
    "ErrorHistogram",
    "error_and_histogram",
    # pack
    "pack",
    "unpack",
    "packed_nbytes",
    # nf4 / fp4
    "codebook_4bit",
    "quantize_4bit",
    "dequantize_4bit",
    "fake_quantize_4bit",
    "pack_4bit",
    "unpack_4bit",
    # stats
    "ChannelStats",
    "ChannelSummary",
    "new_channel_stats",
    "update_channel_stats",
    "merge_channel_stats",
    "finalize_channel_stats",
    # gemv
    "gemv_int4",
    "gemv_int8",
    # gguf
    "GGUF_TYPES",
    "quantize_gguf",
    "dequantize_gguf",
    "unpack_gguf",
]
