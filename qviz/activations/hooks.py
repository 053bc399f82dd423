"""Forward hooks in a context manager that always removes them.

Everything in qviz that looks at activations (capture, layer error, GPTQ's
Hessians, AWQ's activation scales, the widgets) is built on :func:`hooks`.
The hooks are removed in a ``finally`` block, so an exception or a
``KeyboardInterrupt`` inside the forward pass (a notebook user pressing stop)
leaves the model as it was. Contexts nest.

Examples
--------
>>> import torch, qviz
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> seen = []
>>> with qviz.hooks(net, lambda name, mod, inputs, output: seen.append(name)) as rec:
...     _ = net(torch.randn(3, 4))
>>> seen, rec.calls
(['0', '2'], {'0': 1, '2': 1})
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from qviz._filters import LayerSpec, layer_predicate
from qviz.models import QvizModel, as_module, is_norm, is_quantizable

HookFn = Callable[[str, nn.Module, tuple, Any], None]


@dataclass
class HookRecorder:
    """What a :func:`hooks` context did: the hooked layer names and how often each ran."""

    names: list[str]
    calls: dict[str, int] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """True while the hooks are registered."""
        return self._active

    _active: bool = True


def select_layers(
    model: QvizModel | nn.Module, layers: LayerSpec = None, *, include_norms: bool = True
) -> dict[str, nn.Module]:
    """Name -> module of the hookable layers that ``layers`` selects, in module order.

    Hookable layers are Linear, Conv1d/2d, GPT-2's Conv1D, Embedding and (with
    ``include_norms``) normalisation layers. Names and globs that match no
    layer raise ``ValueError`` with the close matches.

    Examples
    --------
    >>> from torch import nn
    >>> list(select_layers(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)), "0"))
    ['0']
    """
    module = as_module(model)
    candidates = {
        name: sub
        for name, sub in module.named_modules()
        if name and (is_quantizable(sub) or (include_norms and is_norm(sub)))
    }
    if not candidates:
        raise ValueError(
            f"{type(module).__name__} has no layer qviz can hook (Linear, Conv1d/2d, Conv1D, "
            "Embedding or a norm layer). qviz analyses networks built from these layers."
        )
    keep = layer_predicate(layers, candidates)
    return {name: sub for name, sub in candidates.items() if keep(name, sub)}


@contextlib.contextmanager
def hooks(
    model: QvizModel | nn.Module,
    fn: HookFn | None = None,
    *,
    layers: LayerSpec = None,
    include_norms: bool = True,
) -> Iterator[HookRecorder]:
    """Register a forward hook on each selected layer for the duration of a ``with`` block.

    Parameters
    ----------
    model
        A :class:`~qviz.QvizModel` or ``torch.nn.Module``. It is not changed:
        the hooks are removed when the block exits, however it exits.
    fn
        Called as ``fn(name, module, inputs, output)`` after each selected
        layer's forward, where ``inputs`` is the tuple of positional inputs.
        ``None`` only counts calls.
    layers
        ``None`` (all hookable layers), a name, a glob, a list or a predicate
        ``(name, module) -> bool``.
    include_norms
        Hook normalisation layers too.

    Yields
    ------
    HookRecorder
        ``.names`` (hooked layers) and ``.calls`` (forward calls per layer).

    Examples
    --------
    >>> import torch, qviz
    >>> from torch import nn
    >>> net = nn.Linear(3, 3)
    >>> with qviz.hooks(net) as rec:
    ...     _ = net(torch.ones(1, 3))
    >>> rec.calls, len(net._forward_hooks)
    ({'': 1}, 0)
    """
    if fn is not None and not callable(fn):
        raise TypeError(f"fn must be callable as fn(name, module, inputs, output); got {type(fn).__name__}.")
    module = as_module(model)
    if is_quantizable(module) or is_norm(module):
        selected = {"": module}  # a bare layer hooks itself
    else:
        selected = select_layers(module, layers, include_norms=include_norms)
    recorder = HookRecorder(names=list(selected))
    handles = []

    def make(name: str) -> Callable:
        def hook(mod: nn.Module, inputs: tuple, output: Any) -> None:
            recorder.calls[name] = recorder.calls.get(name, 0) + 1
            if fn is not None:
                fn(name, mod, inputs, output)

        return hook

    try:
        for name, sub in selected.items():
            handles.append(sub.register_forward_hook(make(name)))
        yield recorder
    finally:
        for handle in handles:
            handle.remove()
        recorder._active = False
