"""Evaluation of quantized models: accuracy, size, cost, and the side-by-side :func:`compare`.

Submodules load on first use so ``import qviz.evaluate`` stays light.

Examples
--------
>>> import qviz
>>> from qviz import evaluate
>>> round(evaluate.project_size(70e9, "fp16") / 1e9)
140
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "compare": "qviz.evaluate.compare",
    "project_size": "qviz.evaluate.size",
    "projection_table": "qviz.evaluate.size",
    "format_bits": "qviz.evaluate.size",
    "model_size": "qviz.evaluate.size",
    "serialized_size": "qviz.evaluate.size",
    "evaluate": "qviz.evaluate.accuracy",
    "digits_accuracy": "qviz.evaluate.accuracy",
    "topic_accuracy": "qviz.evaluate.accuracy",
    "decoder_metrics": "qviz.evaluate.accuracy",
    "decoder_quality": "qviz.evaluate.decoder",
    "reference_log_probs": "qviz.evaluate.decoder",
    "Hardware": "qviz.evaluate.cost",
    "hardware_table": "qviz.evaluate.cost",
    "roofline": "qviz.evaluate.cost",
    "measure_latency": "qviz.evaluate.cost",
    "gemv_benchmark": "qviz.evaluate.cost",
}
_SUBMODULES = ("accuracy", "size", "cost", "compare", "decoder")

__all__ = sorted([*_LAZY, *_SUBMODULES])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"qviz.evaluate.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'qviz.evaluate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
