"""Straight-through surrogates: a view of a quantized model whose layers pass useful input gradients.

A quantized layer has no gradient worth following: rounding is flat almost everywhere, and real
low-bit kernels are not differentiable at all. :func:`straight_through` wraps each quantized layer
so that its forward value is the quantized layer's own output while its backward is that of a
float layer holding the *dequantized* weight.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from qviz.models import QvizModel, as_module
from qviz.models.layers import _bnb_types, _is_torch_quantized, dequantized_weight
from qviz.robustness._checks import as_qviz


def _bias(module: nn.Module) -> torch.Tensor | None:
    b = getattr(module, "bias", None)
    if callable(b):  # torch quantized Linear: bias() method
        b = b()
    if isinstance(b, torch.Tensor):
        return b.detach().float()
    return None


class _StraightThrough(nn.Module):
    """Forward: the quantized layer's own output. Backward: a float layer with the dequantized weight."""

    def __init__(self, quantized: nn.Module, reference: nn.Module | None) -> None:
        super().__init__()
        self.quantized = quantized
        w = dequantized_weight(quantized)  # [out, in]
        if reference is not None and isinstance(reference, (nn.Conv1d, nn.Conv2d)):
            w = w.reshape(reference.weight.shape)
        self.register_buffer("w_hat", w, persistent=False)
        bias = _bias(quantized)
        self.register_buffer("b", bias, persistent=False)
        self.reference = reference

    def _surrogate(self, x: torch.Tensor) -> torch.Tensor:
        ref = self.reference
        w, b = self.w_hat.to(x.dtype), None if self.b is None else self.b.to(x.dtype)
        if isinstance(ref, nn.Conv2d):
            return F.conv2d(x, w, b, ref.stride, ref.padding, ref.dilation, ref.groups)
        if isinstance(ref, nn.Conv1d):
            return F.conv1d(x, w, b, ref.stride, ref.padding, ref.dilation, ref.groups)
        return F.linear(x, w, b)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.no_grad():
            y_q = self.quantized(x, *args, **kwargs)
        y_s = self._surrogate(x)
        return y_s + (y_q.to(y_s.dtype) - y_s).detach()


def _needs_wrap(module: nn.Module) -> bool:
    """True for a quantized layer whose forward has no useful input gradient.

    qviz's fake-quant layers keep a float weight and pass activation rounding
    straight through already; bitsandbytes, torch's quantized modules and
    packed layers do not.
    """
    bnb_types = _bnb_types()
    if bnb_types and isinstance(module, bnb_types):
        return True
    if _is_torch_quantized(module):
        return hasattr(module, "weight")
    w = getattr(module, "weight", None)
    return not (isinstance(w, torch.Tensor) and w.is_floating_point())


def _quantized_layer_names(model: QvizModel) -> list[str]:
    """Names of the quantized layers that need a straight-through wrapper (qviz's record, else by type)."""
    record = getattr(model, "quantization", None)
    listed = list(getattr(record, "layers", {}) or {})
    modules = dict(model.module.named_modules())
    names = [n for n in listed if n in modules and _needs_wrap(modules[n])]
    bnb_types = _bnb_types()
    for name, sub in modules.items():
        if not name or name in names:
            continue
        if (bnb_types and isinstance(sub, bnb_types)) or (_is_torch_quantized(sub) and hasattr(sub, "weight")):
            names.append(name)
    return names


def _swap(root: nn.Module, replacements: dict[str, nn.Module]) -> nn.Module:
    """A new module tree with some submodules replaced; ``root`` and its parameters are untouched.

    Only the modules on the path to a replaced name are shallow-copied; everything
    else (and every parameter) is shared with ``root``.
    """
    if "" in replacements:
        return replacements[""]
    new_root = copy.copy(root)
    new_root._modules = dict(root._modules)
    by_head: dict[str, dict[str, nn.Module]] = {}
    for name, mod in replacements.items():
        head, _, rest = name.partition(".")
        by_head.setdefault(head, {})[rest] = mod
    for head, sub in by_head.items():
        if head not in new_root._modules:
            raise KeyError(head)
        new_root._modules[head] = _swap(root._modules[head], sub)
    return new_root


def straight_through(model: QvizModel | nn.Module, reference: QvizModel | nn.Module | None = None) -> QvizModel:
    """A view of ``model`` whose quantized layers pass straight-through gradients.

    Each quantized layer (qviz's record, bitsandbytes modules, torch dynamic
    int8 Linear) is wrapped so the forward value is exactly the quantized
    layer's output and the backward is that of a float layer with the
    dequantized weight. ``model`` is not changed: only the containers on the
    path to a wrapped layer are copied, parameters are shared. A model with no
    quantized layer is returned as is.

    Parameters
    ----------
    model
        A quantized :class:`~qviz.QvizModel` (or module).
    reference
        The full-precision model with the same layer names; used to read
        convolution settings (stride, padding) for quantized conv layers.

    Examples
    --------
    >>> import torch, qviz
    >>> from torch import nn
    >>> net = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(4, 2)), {nn.Linear})  # doctest: +SKIP
    >>> st = straight_through(net)                                         # doctest: +SKIP
    >>> x = torch.randn(1, 4, requires_grad=True)                          # doctest: +SKIP
    >>> st.forward(x).sum().backward(); x.grad is not None                 # doctest: +SKIP
    True
    """
    qm = as_qviz(model)
    names = _quantized_layer_names(qm)
    if not names:
        return qm
    ref_modules = dict(as_module(reference).named_modules()) if reference is not None else {}
    own = dict(qm.module.named_modules())
    wrapped = {}
    for name in names:
        ref = ref_modules.get(name)
        if ref is None and isinstance(own[name], (nn.Conv1d, nn.Conv2d)):
            ref = own[name]
        wrapped[name] = _StraightThrough(own[name], ref)
    return qm.with_module(_swap(qm.module, wrapped), name=qm.name)
