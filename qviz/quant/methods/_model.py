"""Model-level helpers of the methods: which layers share an input, folding scales into a producer.

The layer inputs themselves come from the capture engine (:func:`qviz.activations.engine.input_absmax`).

Everything that looks at activations goes through :func:`qviz.hooks`, so the
hooks are gone when these functions return, however they return.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qviz.activations.engine import input_absmax
from qviz.activations.hooks import hooks
from qviz.models import QvizModel, as_module, is_norm, layer_type, load as _load
from qviz.models.layers import _hf_conv1d_type

__all__ = ["InputGroup", "as_qviz_model", "clone_model", "find_input_groups", "fold_scale_", "input_absmax"]


def as_qviz_model(model: Any) -> QvizModel:
    """A :class:`~qviz.QvizModel` for a QvizModel, a name or a module."""
    return model if isinstance(model, QvizModel) else _load(model)


# --------------------------------------------------------------------------- input groups and folding


@dataclass
class InputGroup:
    """Layers that read the very same input tensor, and whether a scale can be folded upstream.

    Attributes
    ----------
    layers : list of str
        Layer names, in forward order.
    predecessor : str or None
        The module whose output is that input (None when an operation between modules made it).
    foldable : bool
        True when dividing the predecessor's output channels by a scale and multiplying the
        layers' input columns by it leaves the full-precision model's output unchanged (checked
        numerically on a probe batch).
    reason : str
        Why it is or is not foldable, in words.
    """

    layers: list[str]
    predecessor: str | None
    foldable: bool
    reason: str


def _conv1d() -> type | None:
    return _hf_conv1d_type()


def _scales_columns_(module: nn.Module, s: torch.Tensor) -> None:
    """Multiply a linear layer's input columns by ``s`` ``[in]`` (in place)."""
    w = module.weight.data
    conv1d = _conv1d()
    if conv1d is not None and isinstance(module, conv1d):  # [in, out]
        w.mul_(s.to(w.device, w.dtype)[:, None])
    else:  # [out, in]
        w.mul_(s.to(w.device, w.dtype)[None, :])


def _divide_outputs_(module: nn.Module, s: torch.Tensor) -> None:
    """Divide a norm's or linear layer's output channels by ``s`` (in place)."""
    inv = (1.0 / s.double()).float()
    if is_norm(module):
        module.weight.data.mul_(inv.to(module.weight.device, module.weight.dtype))
        if getattr(module, "bias", None) is not None:
            module.bias.data.mul_(inv.to(module.bias.device, module.bias.dtype))
        return
    w = module.weight.data
    conv1d = _conv1d()
    if conv1d is not None and isinstance(module, conv1d):  # [in, out]
        w.mul_(inv.to(w.device, w.dtype)[None, :])
    else:
        w.mul_(inv.to(w.device, w.dtype)[:, None])
    if getattr(module, "bias", None) is not None:
        module.bias.data.mul_(inv.to(module.bias.device, module.bias.dtype))


def fold_scale_(predecessor: nn.Module, layers: Iterable[nn.Module], s: torch.Tensor) -> None:
    """Fold per-channel scales ``s`` ``[channels]`` IN PLACE: predecessor outputs ``/ s``, layer input columns ``* s``.

    The full-precision function is unchanged when the predecessor's output feeds only these layers.

    Examples
    --------
    >>> norm, lin = nn.LayerNorm(2), nn.Linear(2, 1)
    >>> x = torch.randn(3, 2)
    >>> before = lin(norm(x))
    >>> fold_scale_(norm, [lin], torch.tensor([2.0, 0.5]))
    >>> torch.allclose(before, lin(norm(x)), atol=1e-6)
    True
    """
    if not _has_channel_weight(predecessor):
        raise TypeError(
            f"Cannot fold a scale into a {type(predecessor).__name__}: it has no per-channel weight. "
            "Folding needs a LayerNorm/RMSNorm with an affine weight or a Linear layer."
        )
    _divide_outputs_(predecessor, s)
    for layer in layers:
        _scales_columns_(layer, s)


def _has_channel_weight(module: nn.Module) -> bool:
    if is_norm(module):
        return isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 1
    return layer_type(module) == "linear"


def _snapshot(modules: Iterable[nn.Module]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(p, p.data.clone()) for m in modules for p in m.parameters(recurse=False)]


def _restore(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for p, value in saved:
            p.data.copy_(value)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = b.abs().max().clamp_min(1e-12)
    return bool(((a - b).abs().max() / scale) < 1e-4)


def find_input_groups(model: QvizModel, names: Sequence[str], probe: Any, *, check: bool = True) -> list[InputGroup]:
    """Group ``names`` by the input tensor they read and test whether a scale folds into its producer.

    One forward on ``probe`` (a small batch) records which module produced each layer's input
    (by tensor identity). For a producer with a per-channel weight (an affine norm, a linear
    layer), a random positive scale is folded in and the output compared with the original:
    a residual connection or another reader of the same tensor makes the output change, and the
    group is marked not foldable. The model is restored before returning.

    Examples
    --------
    >>> net = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 2))
    >>> g = find_input_groups(QvizModel(net, "net", "module"), ["1"], torch.randn(3, 4))
    >>> g[0].predecessor, g[0].foldable
    ('0', True)
    """
    names = list(names)
    module = as_module(model)
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    seen_input: dict[str, torch.Tensor] = {}

    def fn(name: str, mod: nn.Module, inputs: tuple, output: Any) -> None:
        if name in names and name not in seen_input and inputs:
            seen_input[name] = inputs[0]
        if isinstance(output, torch.Tensor) and id(output) not in produced:
            produced[id(output)] = (name, output)

    batch = next(iter(model.batches(probe, 2)))  # a small probe: two inputs
    with hooks(model, fn):
        reference = model.run(batch)
    groups: dict[int, list[str]] = {}
    for name in names:
        x = seen_input.get(name)
        if x is None:
            raise ValueError(f"Layer {name!r} did not run on the probe batch; it cannot be calibrated.")
        groups.setdefault(id(x), []).append(name)

    modules = dict(module.named_modules())
    out: list[InputGroup] = []
    candidates: list[InputGroup] = []
    for key, members in groups.items():
        producer = produced.get(key)
        pred_name = producer[0] if producer is not None and producer[1] is seen_input[members[0]] else None
        if pred_name is None:
            out.append(InputGroup(members, None, False,
                                  "its input is made by an operation between modules (attention, activation, "
                                  "reshape), so there is no per-channel weight to fold the scale into"))
        elif not _has_channel_weight(modules[pred_name]):
            out.append(InputGroup(members, pred_name, False,
                                  f"its input comes from {pred_name} ({type(modules[pred_name]).__name__}), "
                                  "which has no per-channel weight to fold the scale into"))
        else:
            group = InputGroup(members, pred_name, True, f"folded into {pred_name}")
            out.append(group)
            candidates.append(group)
    if check and candidates:
        gen = torch.Generator().manual_seed(0)
        scales = {id(g): torch.exp(torch.rand(seen_input[g.layers[0]].shape[-1], generator=gen) * 2 - 1)
                  for g in candidates}  # [channels] in (1/e, e)

        def unchanged(subset: list[InputGroup]) -> bool:
            touched = [modules[n] for g in subset for n in (g.predecessor, *g.layers)]
            saved = _snapshot(touched)
            try:
                with torch.no_grad():
                    for g in subset:
                        fold_scale_(modules[g.predecessor], [modules[n] for n in g.layers], scales[id(g)])
                return _close(model.run(batch), reference)
            finally:
                _restore(saved)

        # one forward when every candidate folds cleanly (pre-norm blocks); else one per group
        if not unchanged(candidates):
            for g in candidates:
                if len(candidates) == 1 or not unchanged([g]):
                    g.foldable = False
                    g.reason = (f"folding into {g.predecessor} would change the model's output: its output "
                                "also feeds something else (e.g. a residual connection)")
    order = {n: i for i, n in enumerate(names)}
    return sorted(out, key=lambda g: order[g.layers[0]])


def clone_model(model: QvizModel) -> QvizModel:
    """A deep copy (shares no tensor with ``model``)."""
    return model.with_module(copy.deepcopy(model.module))
