"""qviz: see inside neural networks while they are being quantized.

``import qviz`` is light: torch, numba, bitsandbytes, plotly and the widget
libraries load on first use of the name that needs them.

Examples
--------
>>> import qviz
>>> model = qviz.load("digits-cnn")                    # doctest: +SKIP
>>> stats = qviz.capture(model, qviz.calibration_data(model, n=64))  # doctest: +SKIP
>>> qviz.plot.outliers(stats).show()                   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from qviz._version import __version__  # noqa: F401 - public

# public name -> module that defines it (relative to this package)
_LAZY: dict[str, str] = {
    # models and data
    "load": "qviz.models",
    "QvizModel": "qviz.models",
    "KNOWN_MODELS": "qviz.models",
    "calibration_data": "qviz.data",
    "eval_data": "qviz.data",
    "generate": "qviz.generation",
    # capture
    "hooks": "qviz.activations.hooks",
    "capture": "qviz.activations.capture",
    "outlier_summary": "qviz.activations.outliers",
    "massive_activations": "qviz.activations.massive",
    # quantization
    "RTN": "qviz.quant.config",
    "BnbInt8": "qviz.quant.config",
    "BnbNF4": "qviz.quant.config",
    "BnbFP4": "qviz.quant.config",
    "ActQuant": "qviz.quant.config",
    "SmoothQuant": "qviz.quant.config",
    "AWQ": "qviz.quant.config",
    "GPTQ": "qviz.quant.config",
    "QAT": "qviz.quant.config",
    "QuantConfig": "qviz.quant.config",
    "GGUF": "qviz.quant.gguf",
    "PerLayer": "qviz.quant.per_layer",
    "inspect_gguf": "qviz.gguf_file",
    "export_gguf": "qviz.gguf_file",
    "FP8": "qviz.quant.fp",
    "MXFP4": "qviz.quant.fp",
    "MXFP6": "qviz.quant.fp",
    "MXFP8": "qviz.quant.fp",
    "NVFP4": "qviz.quant.fp",
    "HQQ": "qviz.quant.hqq",
    "Rotated": "qviz.quant.rotate",
    "rotate": "qviz.quant.rotate",
    "PerTensor": "qviz.quant.granularity",
    "PerChannel": "qviz.quant.granularity",
    "PerGroup": "qviz.quant.granularity",
    "quantize": "qviz.quant.api",
    "fake_quantize": "qviz.quant.api",
    "quantize_tensor": "qviz.quant.api",
    "layer_error": "qviz.measure.error",
    "sensitivity": "qviz.measure.sensitivity",
    "recommend": "qviz.measure.sensitivity",
    "limits": "qviz.measure.limits",
    "compare": "qviz.evaluate.compare",
    "project_size": "qviz.evaluate.size",
    "save": "qviz._io",
    "open_dataset": "qviz._io",
}

# submodules reachable as attributes (qviz.plot, qviz.widgets, ...)
_SUBMODULES = {"plot", "widgets", "robustness", "quant", "evaluate", "methods", "report", "cli", "data"}

__all__ = sorted([*_LAZY, *_SUBMODULES, "__version__", "load_ipython_extension"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"qviz.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'qviz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%qviz`` magics and rich display of qviz Datasets.

    Examples
    --------
    >>> %load_ext qviz          # doctest: +SKIP
    >>> %qviz report --model digits-cnn   # doctest: +SKIP
    """
    from qviz._ipython import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove what :func:`load_ipython_extension` registered."""
    from qviz._ipython import unload_ipython_extension as _unload

    _unload(ipython)


if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from qviz.activations.capture import capture
    from qviz.data import calibration_data, eval_data
    from qviz.activations.hooks import hooks
    from qviz.models import KNOWN_MODELS, QvizModel, load
