"""Live widgets: turn a knob, see the error move.

``OutlierExplorer(model, batch)``, ``QuantExplorer(model, batch)`` and
``CompareDashboard(cmp)`` are thin ipywidgets containers: they hold the
controls as traits and call qviz's pure functions; the browser side lives in
the ESM modules of the repository's ``widgets/`` folder (shipped as
``qviz/_static``). Large heatmaps travel as binary buffers and are drawn on a
canvas; the other figures are long-lived Plotly panes, each redrawn with one
message by the Plotly renderer the notebook already has.

Examples
--------
>>> import qviz
>>> model = qviz.load("minilm")                                          # doctest: +SKIP
>>> qviz.widgets.QuantExplorer(model, qviz.calibration_data(model, n=32))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "OutlierExplorer": "qviz.widgets.outliers",
    "QuantExplorer": "qviz.widgets.quant",
    "CompareDashboard": "qviz.widgets.compare",
    "HeatmapCanvas": "qviz.widgets._canvas",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"qviz.widgets has no attribute {name!r}; widgets: {', '.join(__all__)}.")


def __dir__() -> list[str]:
    return __all__
