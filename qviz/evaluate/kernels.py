"""Real low-bit kernels for timing: which kernel runs a model, and a view of it with the Numba/Triton GEMV kernels swapped in."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from qviz.evaluate.accuracy import _as_model
from qviz.models import layer_type, quantizable_layers, weight_matrix
from qviz.quant.config import RTN
from qviz.quant.granularity import PerGroup
from qviz.quant.modules import PackedLinear
from qviz.quant.primitives import fake_quantize_codes
from qviz.quant.registry import method_for
from qviz.robustness.straight_through import _swap

if TYPE_CHECKING:  # the CUDA module, named in annotations only (Triton loads on first CUDA use)
    from qviz.gpu.int4 import Int4Linear

__all__ = ["RowGemvLinear", "kernel_class", "kernel_model", "model_kernel"]


def kernel_class(kernel: str) -> str:
    """``"real kernel"`` or ``"simulated"`` for a kernel description (``"full precision"`` for torch float).

    Examples
    --------
    >>> kernel_class("real kernel: bitsandbytes Linear4bit (nf4)"), kernel_class("simulated (fake-quant)")
    ('real kernel', 'simulated')
    """
    if kernel.startswith("real kernel"):
        return "real kernel"
    if kernel.startswith("full precision"):
        return "full precision"
    return "simulated"


class RowGemvLinear(nn.Module):
    """A :class:`~qviz.quant.modules.PackedLinear` that runs its matrix-vector kernel on every input row.

    ``PackedLinear`` runs the packed kernel for a single vector and dequantizes for a batch;
    for timing a real kernel at any batch this runs one product per token instead. The
    weight is never dequantized into a float matrix. No gradient.
    """

    def __init__(self, packed: PackedLinear, kernel: str) -> None:
        super().__init__()
        self.packed = packed
        self.in_features, self.out_features = packed.in_features, packed.out_features
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        rows = x.detach().float().reshape(-1, self.in_features)  # [tokens, in]
        out = torch.stack([self.packed(row) for row in rows]) if rows.shape[0] else rows.new_zeros(0, self.out_features)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def int4_layer(module: nn.Module, group: int) -> Int4Linear | None:
    """An :class:`Int4Linear` for an ``nn.Linear`` on CUDA (RTN w4 asymmetric, ``group`` columns), else None."""
    from qviz.gpu import available  # lazy: Triton loads only for a model on a CUDA device
    from qviz.gpu.int4 import Int4Linear

    if not isinstance(module, nn.Linear) or not available(module.weight):
        return None
    w = module.weight.detach().float()  # [out, in]
    if w.shape[1] % group or group % 16:
        return None
    _, codes, qp = fake_quantize_codes(w, PerGroup(group), 4, symmetric=False)
    return Int4Linear(codes, qp.scale, qp.zero, group, module.bias)


def _gemv_layer(module: nn.Module, cfg: RTN) -> nn.Module | None:
    """A real-kernel replacement for weight-only RTN: on the CPU the Numba GEMV of a packed layer (INT4
    asymmetric with even groups, or INT8 per row), on CUDA the Triton INT4 kernel (:mod:`qviz.gpu.int4`;
    w4 asymmetric groups)."""
    if not method_for(cfg).packs(cfg) or layer_type(module) != "linear":  # packs: weight-only RTN
        return None
    if module.weight.device.type == "cuda":  # the Triton INT4 kernel (weight-only w4, asymmetric, even groups)
        if cfg.bits != 4 or cfg.symmetric or cfg.clip_search or not isinstance(cfg.group_size, int):
            return None
        return int4_layer(module, cfg.group_size)
    cols = weight_matrix(module).shape[1]
    group = cfg.group_size
    if cfg.bits == 4 and not cfg.symmetric and (group is None or isinstance(group, int)) and (group or cols) % 2 == 0:
        name = "INT4 GEMV (packed, 2 codes/byte)"
    elif cfg.bits == 8 and group is None:
        name = "INT8 GEMV"
    else:
        return None
    packed = method_for(cfg).pack(module, cfg)  # the RTN method's own PackedLinear: the codes qviz.quantize makes
    return RowGemvLinear(packed, f"real kernel: kernels_numba {name}")


def kernel_model(model: Any, cfg: Any, quantized: Any = None) -> Any | None:
    """``model`` with each weight-only RTN Linear run by a Numba GEMV kernel, or None when none applies.

    Kernels exist for ``RTN(bits=4, symmetric=False)`` with an even group size
    or one group per row (packed INT4 GEMV) and ``RTN(bits=8, group_size=None)``
    (INT8 GEMV). The kernels are built from ``model``'s (full-precision)
    weights and swapped into ``quantized`` (the fake-quant model from
    :func:`qviz.quantize`) when given, so the layers without a kernel
    (convolutions) keep their fake-quant form; otherwise into a view of
    ``model``. Outputs equal the fake-quant model's up to float32 summation
    order. For timing only: no gradients. Neither model is changed.

    Examples
    --------
    >>> import torch, qviz
    >>> from torch import nn
    >>> km = kernel_model(nn.Sequential(nn.Linear(64, 8)), qviz.RTN(bits=4, group_size=32))
    >>> km.module[0].kernel
    'real kernel: kernels_numba INT4 GEMV (packed, 2 codes/byte)'
    """
    qm = _as_model(model)
    base = qm if quantized is None else _as_model(quantized)
    record = getattr(base, "quantization", None)
    names = list(record.layers) if record is not None else list(quantizable_layers(qm))
    originals = dict(qm.module.named_modules())
    swaps = {}
    for name in names:
        new = _gemv_layer(originals[name], cfg) if name in originals else None
        if new is not None:
            swaps[name] = new
    if not swaps:
        return None
    out = base.with_module(_swap(base.module, swaps), name=f"{base.name} [numba kernels]")
    kernels = {n: r.kernel for n, r in record.layers.items()} if record is not None else {}
    kernels.update({n: m.kernel for n, m in swaps.items()})
    out.kernel_layers = kernels
    return out


def model_kernel(model: Any) -> str:
    """One line saying what runs the quantized layers of ``model`` (from its record or swapped kernels).

    Examples
    --------
    >>> from torch import nn
    >>> model_kernel(nn.Linear(2, 2))
    'full precision (torch float32)'
    """
    kernels = list(getattr(model, "kernel_layers", {}).values())
    record = getattr(model, "quantization", None)
    if not kernels and record is not None:
        kernels = [r.kernel for r in record.layers.values()]
    if not kernels:
        return "full precision (torch float32)"
    distinct = sorted(set(kernels))
    real = [k for k in kernels if k.startswith("real kernel")]
    if real and len(real) < len(kernels):
        return f"real kernel for {len(real)}/{len(kernels)} layers: " + "; ".join(distinct)
    return "; ".join(distinct)
