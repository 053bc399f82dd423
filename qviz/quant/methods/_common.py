"""Pieces the outlier-aware methods share: replacement modules and input checks.

The RTN arithmetic the methods use (parameters, rounding, the straight-through
fake-quant, byte counts, the bits and group-size checks) lives in
:mod:`qviz.quant.primitives`; this module holds only what is particular to the
methods.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from qviz.activations.engine import conv_patches  # noqa: F401 - gptq reads it here; layer input -> rows lives in the engine
from qviz.models import layer_type, weight_matrix
from qviz.quant.modules import FakeQuantLinear, fake_quant_activation, fake_quant_module


# --------------------------------------------------------------------------- argument checks


def check_alpha(alpha: Any, owner: str = "alpha", *, upper_open: bool = False) -> float:
    """Return ``alpha`` as a float after checking it lies in [0, 1] (or [0, 1) when ``upper_open``)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
        raise TypeError(f"{owner} must be a number in [0, 1]; got {alpha!r} ({type(alpha).__name__}).")
    value = float(alpha)
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    if not ok:
        interval = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(
            f"{owner}={value!r} is outside {interval}. alpha says how much of the quantization "
            "difficulty moves from activations to weights: 0 keeps it all on the activations, "
            "1 moves it all to the weights; 0.5 is the usual choice."
        )
    return value


def check_matrix(x: Any, name: str, *, cols: int | None = None, min_rows: int = 1) -> torch.Tensor:
    """A finite 2-D float tensor (a copy is not made unless needed); clear errors otherwise."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array; got {type(x).__name__}.")
    if x.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D; got shape {tuple(x.shape)}. Flatten the leading dims, "
            f"e.g. {name}.reshape(-1, {name}.shape[-1])."
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}.")
    if cols is not None and x.shape[1] != cols:
        raise ValueError(
            f"{name} has {x.shape[1]} columns but {cols} were expected (the layer's input features). "
            "Pass the inputs of this very layer, shaped [tokens, in_features]."
        )
    if x.shape[0] < min_rows:
        raise ValueError(
            f"{name} has {x.shape[0]} rows; at least {min_rows} are needed. "
            "Pass more calibration inputs, e.g. qviz.calibration_data(model, n=64)."
        )
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN/Inf value(s); expected finite values. Find where they come "
            "from (an overflow upstream, a division by zero) before quantizing."
        )
    return x


# --------------------------------------------------------------------------- replacement modules


class ScaledFakeQuantLinear(FakeQuantLinear):
    """A fake-quant Linear that multiplies its input by a per-channel ``input_scale`` first.

    ``y = act_q(x * input_scale) @ weight.T + bias``, where ``weight`` ``[out, in]`` is the
    dequantized weight in the scaled basis. This is the explicit form of SmoothQuant's and
    AWQ's ``1/s`` where it cannot be folded into the preceding layer (``input_scale`` None: no
    scaling). With ``act_scale`` set, activations are quantized with that fixed (static,
    calibrated) per-tensor scale instead of one computed per call. Same call and output as the
    ``nn.Linear`` / GPT-2 ``Conv1D`` it replaces.

    Examples
    --------
    >>> lin = nn.Linear(2, 1, bias=False)
    >>> q = ScaledFakeQuantLinear.from_float(lin, torch.tensor([[2.0, 4.0]]), input_scale=torch.tensor([0.5, 0.25]))
    >>> q(torch.tensor([[1.0, 1.0]])).tolist()
    [[2.0]]
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, act_bits: int | None = None,
                 act_scheme: str = "per-token", device: Any = None, dtype: Any = None) -> None:
        super().__init__(in_features, out_features, bias, act_bits, act_scheme, device=device, dtype=dtype)
        self.register_buffer("input_scale", None)  # [in] or None
        self.register_buffer("act_scale", None)  # [] static activation scale or None (dynamic)

    @classmethod
    def from_float(cls, module: nn.Module, weight_hat: torch.Tensor, act_bits: int | None = None,  # type: ignore[override]
                   act_scheme: str = "per-token", *, input_scale: torch.Tensor | None = None,
                   act_scale: float | None = None) -> ScaledFakeQuantLinear:
        """Replace ``module`` by a Linear applying ``weight_hat`` ``[out, in]`` to ``x * input_scale``."""
        new = super().from_float(module, weight_hat, act_bits, act_scheme)
        if input_scale is not None:
            new.input_scale = input_scale.detach().to(new.weight.dtype).clone()
        if act_scale is not None:
            if act_bits is None or act_scheme != "per-tensor":
                raise ValueError("A static activation scale needs act_bits and act_scheme='per-tensor'.")
            new.act_scale = torch.tensor(float(act_scale), dtype=new.weight.dtype)
        return new

    def _quant_input(self, x: torch.Tensor, channel_dim: int) -> torch.Tensor:
        if self.act_scale is None or self.act_bits is None:
            return super()._quant_input(x, channel_dim)
        return fake_quant_activation(x, self.act_bits, self.act_scheme, channel_dim, scale=self.act_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        if self.input_scale is not None:
            x = x * self.input_scale.to(x.dtype)
        return super().forward(x)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.input_scale is not None:
            text += ", input_scale=explicit"
        if self.act_scale is not None:
            text += f", static act scale {float(self.act_scale):.4g}"
        return text


def layer_bias(module: nn.Module) -> torch.Tensor | None:
    """The bias of a Linear / Conv1D / Conv2d (None when it has none)."""
    bias = getattr(module, "bias", None)
    return None if bias is None else bias.detach()


def replacement_for(
    module: nn.Module,
    weight_hat: torch.Tensor,
    *,
    input_scale: torch.Tensor | None = None,
    act_bits: int | None = None,
    act_scheme: str = "per-token",
    act_scale: float | None = None,
) -> nn.Module:
    """The fake-quant module that replaces ``module`` with weight ``weight_hat`` ``[out, in]``.

    With ``input_scale`` ``[in]`` (Linear layers only) the input is multiplied by it first; with
    ``act_scale`` the activations use that static per-tensor scale.
    """
    if input_scale is None and act_scale is None:
        return fake_quant_module(module, weight_hat, act_bits, act_scheme)
    if layer_type(module) != "linear":
        raise TypeError(
            f"An explicit input scale or a static activation scale needs a Linear layer; got "
            f"{type(module).__name__}. Select only Linear layers with layers=... ."
        )
    return ScaledFakeQuantLinear.from_float(module, weight_hat, act_bits, act_scheme, input_scale=input_scale,
                                            act_scale=act_scale)


def layer_weight(module: nn.Module, name: str = "layer") -> torch.Tensor:
    """``[out, in]`` float32 copy of a layer's weight, checked finite."""
    if not hasattr(module, "weight") or not isinstance(module.weight, torch.Tensor):
        raise TypeError(f"{name} ({type(module).__name__}) has no weight tensor to quantize.")
    w = weight_matrix(module).detach().float().clone()  # [out, in]
    if not torch.isfinite(w).all():
        raise ValueError(
            f"The weight of {name} contains NaN/Inf values; expected finite weights. "
            "Check the checkpoint or the training run that produced it."
        )
    return w
