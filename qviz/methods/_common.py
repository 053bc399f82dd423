"""Pieces the outlier-aware methods share: RTN arithmetic in torch, replacement modules, sizes, input checks.

The integer conventions are the project's RTN conventions (see
``kernels_numba.rtn``): uint8 codes, ``x_hat = (code - zero) * scale``, round
half to even, scales rounded once from float64 to float16, uint8 zero points.
Asymmetric ranges always include 0; symmetric ranges are restricted
(``-(2**(bits-1)-1) .. 2**(bits-1)-1`` times the scale).

Where a whole tensor is quantized at once the numba kernels do it
(:func:`rtn_quantize`); where a method needs the parameters separately from
the rounding (GPTQ's column loop, QAT's straight-through forward) the torch
helpers here compute the same numbers.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from qviz.models import layer_type, weight_matrix

F16_MIN_SUBNORMAL = 2.0**-24
F16_MAX = 65504.0


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


def check_bits(bits: Any, owner: str = "bits") -> int:
    """Return ``bits`` after checking it is an int from 2 to 8."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= int(bits) <= 8:
        raise ValueError(f"{owner} must be an int from 2 to 8; got {bits!r}. Pick e.g. 8, 4 or 3.")
    return int(bits)


def check_group(group_size: Any, cols: int, owner: str = "group_size") -> int:
    """Columns per group for a row of ``cols`` weights: ``cols`` for None, else a divisor of ``cols``."""
    if group_size is None:
        return cols
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(
            f"{owner} must be None (one scale per output channel) or a positive int; got {group_size!r}."
        )
    if cols % int(group_size):
        good = [g for g in (256, 128, 64, 32, 16) if cols % g == 0][:3]
        raise ValueError(
            f"{owner}={group_size} does not divide the row length {cols} (input features). "
            f"Use a divisor of {cols}{' such as ' + ', '.join(map(str, good)) if good else ''}, "
            "or group_size=None for one scale per output channel."
        )
    return int(group_size)


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


# --------------------------------------------------------------------------- RTN arithmetic


def store_scale(scale64: np.ndarray) -> np.ndarray:
    """Round float64 scales to float16 values (kept as float32): 0 -> 1, underflow -> 2**-24.

    ``np.float16`` rounds a float64 to nearest (ties to even) exactly as the kernels do.
    """
    scale64 = np.asarray(scale64, np.float64)
    if np.any(scale64 > F16_MAX):
        raise ValueError(
            f"A quantization scale of {float(scale64.max()):.3g} exceeds float16's maximum {F16_MAX:g}; "
            "the weights are too large to quantize with float16 scales. Rescale the layer first."
        )
    with np.errstate(over="ignore"):
        rounded = scale64.astype(np.float16).astype(np.float32)
    rounded[scale64 == 0] = 1.0
    rounded[(rounded == 0) & (scale64 != 0)] = F16_MIN_SUBNORMAL
    return rounded


class QRange(NamedTuple):
    """Scale and zero point arrays (float32 scale, float32-held integer zero) and the code range."""

    scale: torch.Tensor  # [...] float32, float16-exact
    zero: torch.Tensor  # [...] float32 holding integers 0..qmax
    qmin: int
    qmax: int


def range_params(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> QRange:
    """Scale and zero point for ranges ``[lo, hi]`` (any shape), by the project's RTN conventions.

    ``lo``/``hi`` are widened to include 0. Symmetric ranges use ``max(|lo|, hi)`` and zero
    ``2**(bits-1)``; asymmetric ones ``(hi - lo) / (2**bits - 1)`` and ``zero = rint(-lo / scale)``.

    Examples
    --------
    >>> p = range_params(torch.tensor([-1.0]), torch.tensor([2.0]), bits=4, symmetric=False)
    >>> float(p.scale[0]), float(p.zero[0])
    (0.2000732421875, 5.0)
    """
    lo64 = np.minimum(lo.detach().double().cpu().numpy(), 0.0)
    hi64 = np.maximum(hi.detach().double().cpu().numpy(), 0.0)
    qmax = (1 << bits) - 1
    if symmetric:
        half = 1 << (bits - 1)
        scale = store_scale(np.maximum(-lo64, hi64) / (half - 1))
        zero = np.full(scale.shape, float(half), np.float32)
        qmin = 1
    else:
        scale = store_scale((hi64 - lo64) / qmax)
        zero = np.clip(np.rint(-lo64 / scale.astype(np.float64)), 0, qmax).astype(np.float32)
        qmin = 0
    return QRange(torch.from_numpy(scale), torch.from_numpy(zero), qmin, qmax)


def group_params(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool) -> QRange:
    """Per-group (or per-row when ``group_size`` is None) min/max parameters of ``w`` ``[rows, cols]``.

    Returns scale and zero of shape ``[rows, n_groups]``.
    """
    rows, cols = w.shape
    gs = check_group(group_size, cols)
    g = w.detach().reshape(rows, cols // gs, gs)  # [rows, n_groups, gs]
    return range_params(g.amin(-1), g.amax(-1), bits, symmetric)


def quantize_with(w: torch.Tensor, p: QRange, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (uint8) and dequantized values of ``w`` ``[rows, cols]`` with per-group parameters ``p``.

    ``code = clamp(rint(w * (1/scale)) + zero, qmin, qmax)`` in float32 (``1/scale`` a float32
    reciprocal, as the kernels and ``torch.fake_quantize_per_channel_affine`` compute it).
    """
    rows, cols = w.shape
    gs = check_group(group_size, cols)
    scale = p.scale.to(w.device).repeat_interleave(gs, dim=1) if p.scale.shape[1] > 1 else p.scale.to(w.device)
    zero = p.zero.to(w.device).repeat_interleave(gs, dim=1) if p.zero.shape[1] > 1 else p.zero.to(w.device)
    inv = torch.reciprocal(scale)
    q = torch.clamp(torch.round(w.float() * inv) + zero, p.qmin, p.qmax)
    return q.to(torch.uint8), (q - zero) * scale


def rtn_quantize(
    w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool, clip_search: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """RTN-quantize ``w`` ``[rows, cols]`` with the numba kernels: ``(w_hat, codes, scale, zero)``.

    ``scale``/``zero`` are ``[rows, n_groups]`` (float32 / uint8); ``w`` is not modified.

    Examples
    --------
    >>> w_hat, codes, scale, zero = rtn_quantize(torch.tensor([[-1.0, 0.0, 0.5, 2.0]]), 4, None, False)
    >>> codes.tolist()
    [[0, 5, 7, 15]]
    """
    import kernels_numba

    x = np.ascontiguousarray(w.detach().float().cpu().numpy())
    codes, qp, _ = kernels_numba.quantize_with_stats(x, bits, group_size, symmetric, clip_search)
    w_hat = kernels_numba.dequantize(codes, qp)
    return (
        torch.from_numpy(w_hat).to(w.device),
        torch.from_numpy(codes).to(w.device),
        torch.from_numpy(np.ascontiguousarray(qp.scale)),
        torch.from_numpy(np.ascontiguousarray(qp.zero)),
    )


def weight_nbytes(out_features: int, in_features: int, bits: int, group_size: int | None, symmetric: bool) -> int:
    """Storage bytes of a packed ``bits``-bit weight: codes + float16 scales + uint8 zeros (asymmetric).

    Examples
    --------
    >>> weight_nbytes(384, 384, 4, 128, symmetric=False)  # codes 73728 + 1152 scales * 2 + 1152 zeros
    77184
    """
    gs = in_features if group_size is None else group_size
    n_groups = out_features * (in_features // gs)
    codes = math.ceil(out_features * in_features * bits / 8)
    return codes + 2 * n_groups + (0 if symmetric else n_groups)


# --------------------------------------------------------------------------- activations


def act_fake_quant(x: torch.Tensor, bits: int, scheme: str) -> torch.Tensor:
    """Dynamic symmetric INT fake-quant of activations: one scale per token row or per tensor.

    ``scale = absmax / (2**(bits-1) - 1)``, values rounded half to even and clamped to the
    restricted symmetric range.

    Examples
    --------
    >>> act_fake_quant(torch.tensor([[0.5, -1.0, 0.26]]), 2, "per-tensor").tolist()
    [[0.0, -1.0, 0.0]]
    """
    qmax = (1 << (bits - 1)) - 1
    if scheme == "per-token":
        amax = x.detach().abs().amax(dim=-1, keepdim=True)  # [..., 1]
    elif scheme == "per-tensor":
        amax = x.detach().abs().amax()
    else:
        raise ValueError(f"scheme must be 'per-token' or 'per-tensor'; got {scheme!r}.")
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).to(x.dtype)
    return torch.clamp(torch.round(x / scale), -qmax, qmax) * scale


class STEFakeQuant(torch.autograd.Function):
    """Fake-quantize in the forward, pass the gradient straight through (identity) in the backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x_hat

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


# --------------------------------------------------------------------------- replacement modules


class QuantizedLinear(nn.Module):
    """A linear layer that applies a (de)quantized weight, optionally with an input scale and INT activations.

    ``y = act_q(x * input_scale) @ weight.T + bias``. ``weight`` ``[out, in]`` holds the dequantized
    weight in the basis of the scaled input; with ``input_scale`` None the input is used as is.
    Replaces ``nn.Linear`` and GPT-2's ``Conv1D`` (same call, same output).

    Parameters
    ----------
    weight : torch.Tensor
        ``[out, in]`` dequantized weight.
    bias : torch.Tensor or None
        ``[out]``.
    input_scale : torch.Tensor or None
        ``[in]`` per-input-channel factor applied to the input first (``1/s`` of SmoothQuant/AWQ
        when it could not be folded into the preceding layer).
    act_bits : int or None
        Dynamic symmetric INT fake-quant of the (scaled) input.
    act_scheme : str
        ``"per-token"`` or ``"per-tensor"``.
    method : str
        Which method made it (shown in ``repr``).

    Examples
    --------
    >>> lin = QuantizedLinear(torch.eye(2), None)
    >>> lin(torch.tensor([[1.0, 2.0]])).tolist()
    [[1.0, 2.0]]
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        input_scale: torch.Tensor | None = None,
        act_bits: int | None = None,
        act_scheme: str = "per-tensor",
        method: str = "",
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.detach().clone())  # [out, in]
        self.register_buffer("bias", None if bias is None else bias.detach().clone())  # [out]
        self.register_buffer("input_scale", None if input_scale is None else input_scale.detach().clone())  # [in]
        self.act_bits = act_bits
        self.act_scheme = act_scheme
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        if self.input_scale is not None:
            x = x * self.input_scale.to(x.dtype)
        if self.act_bits is not None:
            x = act_fake_quant(x, self.act_bits, self.act_scheme)
        return nn.functional.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        parts = [f"in_features={self.in_features}", f"out_features={self.out_features}"]
        if self.method:
            parts.append(f"method={self.method!r}")
        if self.input_scale is not None:
            parts.append("input_scale=explicit")
        if self.act_bits is not None:
            parts.append(f"act=int{self.act_bits}/{self.act_scheme}")
        return ", ".join(parts)


class QuantizedConv2d(nn.Module):
    """A 2-D convolution with a fixed (de)quantized kernel; same call and output as the original.

    Examples
    --------
    >>> conv = nn.Conv2d(1, 2, 3, padding=1)
    >>> q = QuantizedConv2d.like(conv, weight_matrix(conv))
    >>> torch.allclose(q(torch.ones(1, 1, 4, 4)), conv(torch.ones(1, 1, 4, 4)))
    True
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: Any, padding: Any,
                 dilation: Any, groups: int, method: str = "") -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())  # [out, in/groups, kh, kw]
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.method = method

    @classmethod
    def like(cls, conv: nn.Conv2d, weight_2d: torch.Tensor, method: str = "") -> QuantizedConv2d:
        """A replacement for ``conv`` applying ``weight_2d`` ``[out, in*kh*kw]``."""
        if conv.padding_mode != "zeros":
            raise ValueError(
                f"Only zero-padded convolutions can be replaced; this one uses padding_mode={conv.padding_mode!r}."
            )
        return cls(weight_2d.reshape(conv.weight.shape), conv.bias, conv.stride, conv.padding,
                   conv.dilation, conv.groups, method)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.conv2d(x, self.weight.to(x.dtype), bias, self.stride, self.padding, self.dilation, self.groups)


def layer_bias(module: nn.Module) -> torch.Tensor | None:
    """The bias of a Linear / Conv1D / Conv2d (None when it has none)."""
    bias = getattr(module, "bias", None)
    return None if bias is None else bias.detach()


def replacement_for(
    module: nn.Module,
    weight_hat: torch.Tensor,
    *,
    method: str,
    input_scale: torch.Tensor | None = None,
    act_bits: int | None = None,
    act_scheme: str = "per-tensor",
) -> nn.Module:
    """A new module that computes what ``module`` does, with weight ``weight_hat`` ``[out, in]``."""
    kind = layer_type(module)
    if kind == "linear":
        return QuantizedLinear(weight_hat, layer_bias(module), input_scale, act_bits, act_scheme, method)
    if kind == "conv2d" and input_scale is None and act_bits is None:
        return QuantizedConv2d.like(module, weight_hat, method)
    raise TypeError(
        f"{method} cannot replace a {type(module).__name__} here; it handles Linear layers"
        f"{' and Conv2d' if input_scale is None and act_bits is None else ''}. "
        "Select only those layers with layers=... ."
    )


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


def conv_patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``[batch*positions, in*kh*kw]`` input patches of a Conv2d (the rows its weight matrix multiplies)."""
    if conv.groups != 1:
        raise TypeError(f"Grouped convolutions (groups={conv.groups}) are not supported; use groups=1 layers.")
    cols = nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # [B, C*kh*kw, L]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def input_matrix(module: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A layer's input as the ``[tokens, in]`` matrix its ``[out, in]`` weight multiplies.

    Padding tokens are dropped where ``mask`` ``[batch, tokens]`` matches the input's leading dims.
    """
    if isinstance(module, nn.Conv2d):
        return conv_patches(module, x) if x.dim() == 4 else x
    if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask]
    return x.reshape(-1, x.shape[-1])
