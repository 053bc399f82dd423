"""Repeated blocks: the ``nn.ModuleList`` of same-type blocks (decoder or encoder layers) a transformer stacks.

:func:`repeated_blocks` finds it from the module tree alone: the outermost
``nn.ModuleList`` whose children are all of one class and each hold at least
one quantizable (non-embedding) layer; where a model has several (an encoder
and a decoder), the one with the most such layers. Llama's ``model.layers``,
GPT-2's ``transformer.h``, BERT's ``encoder.layer``. A network without one
(the digits CNN, a plain ``nn.Sequential``) has none.

Examples
--------
>>> import qviz
>>> b = repeated_blocks(qviz.load("tiny-llama"))
>>> b.name, len(b), b.index_of("model.layers.1.mlp.up_proj"), b.index_of("lm_head")
('model.layers', 2, 1, None)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from qviz.models.layers import is_quantizable, layer_type
from qviz.models.model import as_module

__all__ = ["Blocks", "repeated_blocks"]


@dataclass(frozen=True)
class Blocks:
    """The repeated blocks of a model, in the order the ``nn.ModuleList`` holds them.

    Attributes
    ----------
    name : str
        The ``nn.ModuleList``'s name in the model (``"model.layers"``).
    modules : tuple of nn.Module
        The blocks; block ``i`` is named ``f"{name}.{i}"``.
    """

    name: str
    modules: tuple[nn.Module, ...]

    def __len__(self) -> int:
        return len(self.modules)

    def index_of(self, layer: str) -> int | None:
        """The index of the block that holds the layer named ``layer`` (a full module name), or None."""
        prefix = f"{self.name}." if self.name else ""
        if not layer.startswith(prefix):
            return None
        index = layer[len(prefix):].split(".", 1)[0]
        return int(index) if index.isdigit() and int(index) < len(self.modules) else None


def _n_layers(module: nn.Module) -> int:
    return sum(1 for m in module.modules() if is_quantizable(m) and layer_type(m) != "embedding")


def repeated_blocks(model: Any) -> Blocks | None:
    """The repeated blocks of ``model`` (a :class:`~qviz.QvizModel` or module), or None when it has none.

    Examples
    --------
    >>> from torch import nn
    >>> blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(3)])
    >>> repeated_blocks(nn.Sequential(nn.Linear(4, 4), blocks)).name
    '1'
    >>> repeated_blocks(nn.Sequential(nn.Linear(4, 4), nn.ReLU())) is None
    True
    """
    root = as_module(model)
    found: list[tuple[str, nn.ModuleList]] = []
    for name, sub in root.named_modules():
        if not isinstance(sub, nn.ModuleList) or len(sub) == 0:
            continue
        if any(name.startswith(f"{outer}.") or not outer for outer, _ in found):
            continue  # nested in a list already found (a mixture of experts inside each block)
        kinds = {type(child) for child in sub}
        if len(kinds) == 1 and not any(is_quantizable(c) for c in sub) and all(_n_layers(c) for c in sub):
            found.append((name, sub))
    if not found:
        return None
    name, blocks = max(found, key=lambda item: _n_layers(item[1]))
    return Blocks(name, tuple(blocks))
