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

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from qviz._engine import conv_patches  # noqa: F401 - gptq reads it here; layer input -> rows lives in the engine
from qviz.models import layer_type, weight_matrix
from qviz.quant.modules import FakeQuantLinear, fake_quant_activation, fake_quant_module

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


def store_scale(scale64: np.ndarray, steps: int) -> np.ndarray:
    """Round float64 scales to float16 values (kept as float32): 0 -> 1, underflow -> 2**-24.

    ``np.float16`` rounds a float64 to nearest (ties to even) exactly as the kernels do; like
    :func:`kernels_numba._common.store_scale`, a scale whose rounding would leave the grid of
    ``steps`` steps short of its range by more than half a step rounds up instead.
    """
    scale64 = np.asarray(scale64, np.float64)
    if np.any(scale64 > F16_MAX):
        raise ValueError(
            f"A quantization scale of {float(scale64.max()):.3g} exceeds float16's maximum {F16_MAX:g}; "
            "the weights are too large to quantize with float16 scales. Rescale the layer first."
        )
    with np.errstate(over="ignore"):
        half = scale64.astype(np.float16)
    half[(half == 0) & (scale64 != 0)] = np.float16(F16_MIN_SUBNORMAL)
    short = (scale64 - half.astype(np.float64)) * steps > 0.5 * half.astype(np.float64)
    half[short] = np.nextafter(half[short], np.float16(np.inf))
    rounded = half.astype(np.float32)
    rounded[scale64 == 0] = 1.0
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
    (0.199951171875, 5.0)
    """
    if lo.device.type != "cpu":  # on the device, with the torch twin of the same rounding (no host copy)
        return _range_params_on_device(lo, hi, bits, symmetric)
    lo64 = np.minimum(lo.detach().double().cpu().numpy(), 0.0)
    hi64 = np.maximum(hi.detach().double().cpu().numpy(), 0.0)
    qmax = (1 << bits) - 1
    if symmetric:
        half = 1 << (bits - 1)
        scale = store_scale(np.maximum(-lo64, hi64) / (half - 1), half - 1)
        zero = np.full(scale.shape, float(half), np.float32)
        qmin = 1
    else:
        scale = store_scale((hi64 - lo64) / qmax, qmax)
        zero = np.clip(np.rint(-lo64 / scale.astype(np.float64)), 0, qmax).astype(np.float32)
        qmin = 0
    return QRange(torch.from_numpy(scale), torch.from_numpy(zero), qmin, qmax)


def _range_params_on_device(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> QRange:
    """:func:`range_params` for tensors on an accelerator: the same numbers, computed where they live."""
    from qviz.quant.primitives import _params_from_range

    zero_t = torch.zeros((), dtype=lo.dtype, device=lo.device)
    lo, hi = torch.minimum(lo.detach(), zero_t), torch.maximum(hi.detach(), zero_t)
    scale, zero = _params_from_range(lo, hi, 1.0, bits, symmetric)
    return QRange(scale.float(), zero.float(), 1 if symmetric else 0, (1 << bits) - 1)


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
    """RTN-quantize ``w`` ``[rows, cols]``: ``(w_hat, codes, scale, zero)``, all on ``w``'s device.

    The numba kernels on the CPU, the fused GPU kernel on an accelerator (same numbers).
    ``scale``/``zero`` are ``[rows, n_groups]`` (float32 / uint8); ``w`` is not modified.

    Examples
    --------
    >>> w_hat, codes, scale, zero = rtn_quantize(torch.tensor([[-1.0, 0.0, 0.5, 2.0]]), 4, None, False)
    >>> codes.tolist()
    [[0, 5, 8, 15]]
    """
    if w.device.type != "cpu":  # the GPU kernel of the same arithmetic; everything stays on w's device
        from qviz.quant.granularity import PerChannel, PerGroup
        from qviz.quant.primitives import fake_quantize_codes

        g = PerChannel() if group_size is None else PerGroup(int(group_size))
        w_hat, codes, qp = fake_quantize_codes(w.detach().float(), g, bits, symmetric=symmetric, clip_search=clip_search)
        return w_hat, codes, qp.scale, qp.zero
    import kernels_numba

    x = np.ascontiguousarray(w.detach().float().cpu().numpy())
    codes, qp, _ = kernels_numba.quantize_with_stats(x, bits, group_size, symmetric, clip_search)
    w_hat = kernels_numba.dequantize(codes, qp)
    return (
        torch.from_numpy(w_hat).to(w.device),
        torch.from_numpy(codes).to(w.device),
        torch.from_numpy(np.ascontiguousarray(qp.scale)).to(w.device),
        torch.from_numpy(np.ascontiguousarray(qp.zero)).to(w.device),
    )


def weight_nbytes(out_features: int, in_features: int, bits: int, group_size: int | None, symmetric: bool) -> int:
    """Storage bytes of a packed ``bits``-bit weight: codes + float16 scales + uint8 zeros (asymmetric).

    Codes are packed row by row as RTN's are (:func:`qviz.quant.modules.packed_nbytes`), so the
    methods' bits per weight compare directly with RTN's.

    Examples
    --------
    >>> weight_nbytes(384, 384, 4, 128, symmetric=False)  # codes 73728 + 1152 scales * 2 + 1152 zeros
    77184
    """
    from qviz.quant.modules import packed_nbytes

    gs = in_features if group_size is None else group_size
    n_groups = out_features * (in_features // gs)
    return packed_nbytes(out_features, in_features, bits) + 2 * n_groups + (0 if symmetric else n_groups)


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
