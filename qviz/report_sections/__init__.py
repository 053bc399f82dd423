"""Sections of ``qviz report``: each module has ``section(model, calib, ctx) -> [(title, figure or html)]``."""

from typing import Any

from qviz.models import layer_type, quantizable_layers, weight_matrix


def default_group_size(model: Any, size: int = 128) -> int | None:
    """``size`` when every non-embedding quantizable layer's row divides by it, else None (per channel).

    Examples
    --------
    >>> from torch import nn
    >>> default_group_size(nn.Sequential(nn.Linear(256, 8))), default_group_size(nn.Sequential(nn.Linear(100, 8)))
    (128, None)
    """
    widths = [int(weight_matrix(m).shape[1]) for m in quantizable_layers(model).values() if layer_type(m) != "embedding"]
    return size if widths and all(w % size == 0 for w in widths) else None
