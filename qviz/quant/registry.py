"""One verb, one config, one registry: every built-in method loaded, and the lookups the drivers use.

Each quantization method is a :class:`~qviz.quant.method.Method` registered for
its config type with :func:`~qviz.quant.method.register` in the module that
defines it. This module imports every built-in method module, so
:func:`method_for`, :func:`known_config_types` and :func:`config_from_json`
know them all. :func:`qviz.quantize`, :func:`qviz.layer_error`,
:func:`qviz.sensitivity`, :func:`qviz.compare`, :func:`qviz.project_size` and
the widgets look a method up here and ask it what they need (see
:mod:`qviz.quant.method` for the list); they never switch on config types or
method names.

The direction of the imports: configs (:mod:`qviz.quant.config`) ->
:mod:`qviz.quant.method` (the base class and the table) -> the method modules ->
this module -> the drivers. A new method is one module that registers itself;
import it (or list it below, for a built-in one) and every driver offers it.

Examples
--------
>>> from qviz.quant.config import RTN
>>> method_for(RTN()).needs_inputs
False
>>> config_from_json(RTN(bits=3).to_json()) == RTN(bits=3)
True
"""

from __future__ import annotations

import json
from typing import Any

# The built-in methods: importing each module runs its @register decorators.
import qviz.quant.methods  # noqa: F401  (SmoothQuant, AWQ, GPTQ, QAT)
import qviz.quant.bnb  # noqa: F401
import qviz.quant.fp  # noqa: F401
import qviz.quant.gguf  # noqa: F401
import qviz.quant.hqq  # noqa: F401
import qviz.quant.per_layer  # noqa: F401
import qviz.quant.rotate  # noqa: F401
import qviz.quant.rtn  # noqa: F401
from qviz.quant.config import QuantConfig, from_json_value
from qviz.quant.method import (
    CONTROL_NAMES,
    Controls,
    FormatBits,
    LayerQuant,
    Method,
    menu,
    method_for,
    register,
    registered_methods,
    registered_types,
    unregister,
)
from qviz.quant.modules import FakeQuantConv1d, FakeQuantConv2d, FakeQuantLinear, PackedLinear

__all__ = [
    "CONTROL_NAMES",
    "Controls",
    "FormatBits",
    "LayerQuant",
    "Method",
    "config_from_json",
    "known_config_types",
    "menu",
    "method_for",
    "register",
    "replacement_types",
    "unregister",
]


def replacement_types() -> tuple[type, ...]:
    """The module classes qviz puts in a quantized model: qviz.quant.modules' layers and every method's own.

    Examples
    --------
    >>> from qviz.quant.modules import PackedLinear
    >>> PackedLinear in replacement_types()
    True
    """
    own = [t for method in registered_methods() for t in method.replacement_types]
    return tuple(dict.fromkeys([FakeQuantLinear, FakeQuantConv1d, FakeQuantConv2d, PackedLinear, *own]))


def known_config_types() -> list[type[QuantConfig]]:
    """Every config type that has a registered method (the built-in ones and any registered since)."""
    return registered_types()


def config_from_json(text: str) -> QuantConfig:
    """Inverse of :meth:`QuantConfig.to_json`, for every registered config type.

    Examples
    --------
    >>> from qviz.quant.config import RTN
    >>> config_from_json(RTN(bits=3).to_json()) == RTN(bits=3)
    True
    """
    from qviz.quant.config import RTN

    try:
        data: Any = json.loads(text)
    except (TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"config_from_json takes the JSON text of QuantConfig.to_json(); got {str(text)[:60]!r} ({err}).") from err
    if not isinstance(data, dict) or "method" not in data:
        raise ValueError(f'config JSON must be an object with a "method" key, e.g. {RTN().to_json()!r}; got {str(text)[:60]!r}.')
    return from_json_value(data, {t.__name__: t for t in known_config_types()})
