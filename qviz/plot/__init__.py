"""Figures: pure functions from qviz Datasets to Plotly figures.

The same figure appears in a widget, a notebook output and the ``qviz report``
HTML. Nothing here runs a model.

Examples
--------
>>> import qviz
>>> fig = qviz.plot.outliers(stats)          # doctest: +SKIP
>>> fig = qviz.plot.layer_error(errors)      # doctest: +SKIP
>>> fig = qviz.plot.dashboard(cmp)           # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

# Submodules searched, in order, for a public figure function. A submodule must not
# share its name with a function it exports: importing it would rebind the name.
_SUBMODULES = ("_outliers", "quant", "methods", "_dashboard", "transform")


def __getattr__(name: str) -> Any:
    if name.startswith("_"):
        raise AttributeError(name)
    for sub in _SUBMODULES:
        try:
            module = importlib.import_module(f"qviz.plot.{sub}")
        except ModuleNotFoundError as err:
            if err.name != f"qviz.plot.{sub}":
                raise
            continue
        if name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            globals()[name] = value
            return value
    raise AttributeError(f"qviz.plot has no figure {name!r}. Figures: {', '.join(__dir__())}.")


def __dir__() -> list[str]:
    names: list[str] = []
    for sub in _SUBMODULES:
        try:
            names += list(getattr(importlib.import_module(f"qviz.plot.{sub}"), "__all__", ()))
        except ModuleNotFoundError:
            continue
    return sorted(names)
