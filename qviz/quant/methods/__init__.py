"""Outlier-aware quantization methods: SmoothQuant, AWQ, GPTQ and QAT.

Importing this package registers each method for its config type
(:mod:`qviz.quant.registry` imports it with the other built-in methods). The algorithms are pure
functions on tensors in the submodules; the registered ``Method`` classes are
thin glue that :func:`qviz.quantize` drives layer by layer.
"""

from qviz.quant.methods import awq, gptq, qat, smoothquant  # noqa: F401  (importing registers the methods)
from qviz.quant.methods.awq import AWQApplied, awq_apply, awq_scales, awq_search
from qviz.quant.methods.gptq import GPTQResult, gptq_hessian, gptq_quantize_weight, hessian_loss
from qviz.quant.methods.qat import QATConv2d, QATLinear, qat_finetune
from qviz.quant.methods.smoothquant import smoothing_factors, smoothing_ranges, smoothquant_alpha_sweep

__all__ = [
    "AWQApplied",
    "GPTQResult",
    "QATConv2d",
    "QATLinear",
    "awq_apply",
    "awq_scales",
    "awq_search",
    "gptq_hessian",
    "gptq_quantize_weight",
    "hessian_loss",
    "qat_finetune",
    "smoothing_factors",
    "smoothing_ranges",
    "smoothquant_alpha_sweep",
]
