"""Layer taxonomy: which modules qviz hooks and quantizes, their type names and their weights as matrices.

Examples
--------
>>> from torch import nn
>>> layer_type(nn.Conv2d(1, 2, 3)), tuple(weight_matrix(nn.Conv2d(1, 2, 3)).shape)
('conv2d', (2, 9))
"""

from __future__ import annotations

import sys

import torch
from torch import nn

__all__ = ["dequantized_weight", "is_norm", "is_quantizable", "layer_type", "weight_matrix"]


def _hf_conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D  # lazy: transformers is slow to import
    except Exception:  # pragma: no cover - transformers is a dependency
        return None
    return Conv1D


def is_quantizable(module: nn.Module) -> bool:
    """True for layers whose weight qviz quantizes: Linear, Conv1d/2d, GPT-2 Conv1D, Embedding."""
    conv1d = _hf_conv1d_type()
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)) or (
        conv1d is not None and isinstance(module, conv1d)
    )


def is_norm(module: nn.Module) -> bool:
    """True for normalisation layers (LayerNorm, RMSNorm of any library, BatchNorm, GroupNorm)."""
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
        return True
    return type(module).__name__.endswith("RMSNorm") or (
        hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm)
    )


def layer_type(module: nn.Module) -> str:
    """A short readable type name: ``linear``, ``conv2d``, ``conv1d``, ``embedding``, ``norm``."""
    conv1d = _hf_conv1d_type()
    if isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d)):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv2d"
    if isinstance(module, nn.Conv1d):
        return "conv1d"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if is_norm(module):
        return "norm"
    return type(module).__name__.lower()


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as a 2-D ``[out_channels, in_channels]`` view (a copy is never made needlessly).

    GPT-2's ``Conv1D`` stores ``[in, out]`` and is transposed; a convolution's
    kernel dims fold into the input dim; an embedding is ``[vocab, dim]``.
    """
    weight = module.weight.detach()
    conv1d = _hf_conv1d_type()
    if conv1d is not None and isinstance(module, conv1d):
        return weight.t()  # [out, in]
    if weight.dim() > 2:
        return weight.reshape(weight.shape[0], -1)  # [out, in * kh * kw]
    return weight  # [out, in]


def _named_layers(module: nn.Module, include_norms: bool) -> dict[str, nn.Module]:
    out = {}
    for name, sub in module.named_modules():
        if not name:
            continue
        if is_quantizable(sub) or (include_norms and is_norm(sub)):
            out[name] = sub
    return out


def _bnb_types() -> tuple[type, ...]:
    # A model can only hold bitsandbytes modules once bitsandbytes is imported;
    # looking it up in sys.modules spares the slow import otherwise.
    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:
        return ()
    return (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)


def _is_torch_quantized(module: nn.Module) -> bool:
    return type(module).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized"))


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The float weight a quantized layer effectively applies, as ``[out, in]`` float32.

    Knows bitsandbytes ``Linear8bitLt`` / ``Linear4bit``, torch's dynamic int8
    ``Linear``, qviz's quantized layers (anything exposing ``dequantized_weight()``
    or a ``weight_hat`` tensor) and plain float layers.

    Examples
    --------
    >>> from torch import nn
    >>> dequantized_weight(nn.Linear(3, 2)).shape
    torch.Size([2, 3])
    """
    if hasattr(module, "dequantized_weight") and callable(module.dequantized_weight):
        w = module.dequantized_weight()
        return w.detach().float().reshape(w.shape[0], -1)
    w_hat = getattr(module, "weight_hat", None)
    if callable(w_hat) and not isinstance(w_hat, torch.Tensor):
        w_hat = w_hat()  # qviz PackedLinear: dequantize the packed codes
    if isinstance(w_hat, torch.Tensor):
        return w_hat.detach().float().reshape(w_hat.shape[0], -1)
    bnb_types = _bnb_types()
    if bnb_types and isinstance(module, bnb_types[0]):
        w = module.weight
        # After its first forward, Linear8bitLt moves the row scales from the weight to its state.
        state = getattr(module, "state", None)
        scb = getattr(w, "SCB", None)
        if scb is None and state is not None:
            scb = getattr(state, "SCB", None)
        if w.dtype != torch.int8:  # not quantized yet: fp16/32 weights
            return w.detach().float()
        if scb is None:
            raise TypeError("This bitsandbytes Linear8bitLt has int8 weights but no row scales (SCB); cannot dequantize it.")
        return w.detach().float() * (scb.float().unsqueeze(1) / 127.0)  # [out, in]
    if bnb_types and isinstance(module, bnb_types[1]):
        import bitsandbytes.functional as bf  # lazy: bitsandbytes is optional at run time and slow to import

        w = module.weight
        if getattr(w, "quant_state", None) is None:
            return w.detach().float()
        return bf.dequantize_4bit(w.data, w.quant_state).float().reshape(module.out_features, module.in_features)
    if _is_torch_quantized(module) and callable(getattr(module, "weight", None)):
        return module.weight().dequantize().float()  # [out, in]
    if isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.is_floating_point():
        return weight_matrix(module).float()
    raise TypeError(
        f"Cannot read a dequantized weight from a {type(module).__name__}. qviz knows bitsandbytes "
        "Linear8bitLt/Linear4bit, torch dynamic int8 Linear, float layers, and modules with a "
        "dequantized_weight() method or a weight_hat tensor; give your module one of those."
    )
