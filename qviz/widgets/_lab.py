"""The old home of QuantExplorer's computation, now :mod:`qviz.measure.lab` (kept importable: tests use it)."""

from qviz.quant.gguf import GGUF_BY_BITS
from qviz.measure.lab import (
    MAX_ROWS,
    SWEEP_BITS,
    LayerLab,
    LayerResult,
    available_methods,
    check_fits,
    divisors_hint,
    make_config,
    method_controls,
    parse_group_size,
)

__all__ = [
    "GGUF_BY_BITS",
    "MAX_ROWS",
    "SWEEP_BITS",
    "LayerLab",
    "LayerResult",
    "available_methods",
    "check_fits",
    "divisors_hint",
    "make_config",
    "method_controls",
    "parse_group_size",
]
