"""The outlier-aware methods' public names, under their earlier path.

The methods live in :mod:`qviz.quant.methods` (quantization: configs, arithmetic, formats,
methods, apply). This package keeps ``qviz.methods.awq_search`` and the like working; it adds
nothing of its own.

Examples
--------
>>> import qviz.methods, qviz.quant.methods
>>> qviz.methods.gptq_quantize_weight is qviz.quant.methods.gptq_quantize_weight
True
"""

from qviz.quant.methods import *  # noqa: F403
from qviz.quant.methods import __all__  # noqa: F401
