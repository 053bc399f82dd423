"""Round-to-nearest (RTN) weight quantization, with optional INT activation fake-quant (W8A8).

The :class:`RTNMethod` handler of :class:`qviz.RTN` quantizes each layer's
``[out, in]`` weight with the fused Numba kernel (one pass: codes, scales and
the error statistics), swaps in a fake-quant module (or, with
``qviz.quantize(..., packed=True)``, a :class:`~qviz.quant.modules.PackedLinear`)
and counts the true storage (:func:`qviz.quant.primitives.rtn_nbytes`): packed
codes, float16 scales, uint8 zero points.

Examples
--------
>>> import torch, qviz
>>> from torch import nn
>>> q = qviz.quantize(nn.Sequential(nn.Linear(64, 8)), qviz.RTN(bits=4, group_size=32), progress=False)
>>> q.quantization.layers["0"].bits_per_weight
4.75
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qviz.models import weight_matrix
from qviz.quant.config import RTN
from qviz.quant.method import Controls, FormatBits, Fused, LayerQuant, Method, register, scale_format_bits
from qviz.quant.modules import PackedLinear, fake_quant_module
from qviz.quant.primitives import (
    choose_qparams,
    dequantize,
    fake_quantize_fused,
    fake_quantize_values,
    fake_quantize_with_stats,
    quantize,
    rtn_nbytes,
)


def module_bias(module: nn.Module) -> torch.Tensor | None:
    """The layer's bias as a float tensor (None when it has none)."""
    bias = getattr(module, "bias", None)
    return None if bias is None else bias.detach()


def output_without_bias(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` minus the module's bias (broadcast over the channel dim)."""
    y = module(x)
    bias = module_bias(module)
    if bias is None:
        return y
    if y.dim() > 2 and not isinstance(module, nn.Linear) and isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return y - bias.to(y.dtype).reshape(1, -1, *([1] * (y.dim() - 2)))
    return y - bias.to(y.dtype)


@register(RTN)
class RTNMethod(Method):
    """Round-to-nearest: min/max (or clipped) range per tensor, channel or group; no calibration data."""

    label = "RTN"
    menu_position = 0
    controls = ("bits", "group_size", "symmetric")
    needs_inputs = False
    sequential = False
    data_free = True
    layer_types = ("linear", "conv1d", "conv2d")

    def config_from_controls(self, c: Controls) -> RTN:
        """``RTN(bits, group_size, symmetric)`` from the explorer's knobs."""
        return RTN(bits=c.bits, group_size=c.group_size, symmetric=bool(c.symmetric))

    def fake_quantize(self, w: torch.Tensor, cfg: RTN, *, check_finite: bool) -> torch.Tensor | Fused:
        """The fused one-pass kernel (Numba on the CPU, its Triton twin on CUDA): ``w_hat [rows, cols]``."""
        if not check_finite:  # the CUDA kernel checks NaN/Inf and the all-zero case in its own pass
            fused = fake_quantize_fused(w, cfg.granularity, cfg.bits, symmetric=cfg.symmetric,
                                        clip_search=cfg.clip_search)
            if fused is not None:
                return Fused(*fused)
        return fake_quantize_values(w, cfg.granularity, cfg.bits, symmetric=cfg.symmetric,
                                    clip_search=cfg.clip_search, check_finite=check_finite)

    def format_bits(self, cfg: RTN, row_length: int) -> FormatBits:
        """Packed codes, a float16 scale (and, asymmetric, a uint8 zero point) per group or row."""
        return scale_format_bits(cfg.label, cfg.bits, cfg.group_size, cfg.symmetric, row_length)

    def packs(self, cfg: RTN) -> bool:
        """True for weight-only RTN (:meth:`pack` stores Linear layers as packed codes)."""
        return cfg.act_bits is None

    def quantize_layer(self, name: str, module: nn.Module, cfg: RTN, inputs: torch.Tensor | None,
                       state: Any) -> LayerQuant:
        """Fake-quantize the layer's weight in one fused pass and build its replacement module."""
        w = weight_matrix(module).float()  # [out, in]
        # on the layer's device (the fused GPU kernel on CUDA, bit-identical to Numba); a clip search
        # runs in Numba, whose float64 error sums pick the ratio the CPU picks
        src = w.cpu() if cfg.clip_search else w
        w_hat, stats = fake_quantize_with_stats(
            src, cfg.granularity, cfg.bits, symmetric=cfg.symmetric, clip_search=cfg.clip_search
        )
        w_hat = w_hat.to(w.device)  # [out, in] float32
        new = fake_quant_module(module, w_hat, cfg.act_bits, cfg.act_scheme)
        info = {"sse": stats.sse, "signal": stats.signal, "max_abs_err": stats.max_abs_err}
        return LayerQuant(new, w_hat, self.storage_nbytes(tuple(w.shape), cfg), new.kernel, info)

    def quantize_tensor(self, w: torch.Tensor, cfg: RTN) -> tuple:
        """``(codes, scale, zero, nbytes, dequantize)`` of ``w [rows, cols]`` (for :func:`qviz.quantize_tensor`)."""
        qp = choose_qparams(w, cfg.granularity, cfg.bits, symmetric=cfg.symmetric, clip_search=cfg.clip_search)
        codes = quantize(w, qp)  # [rows, cols] uint8
        return codes, qp.scale, qp.zero, self.storage_nbytes(tuple(w.shape), cfg), lambda: dequantize(codes, qp)

    def storage_nbytes(self, shape: tuple[int, int], cfg: RTN) -> int:
        """Bytes stored for an ``(out, in)`` weight: :func:`qviz.quant.primitives.rtn_nbytes`."""
        return rtn_nbytes(shape, cfg.bits, cfg.group_size, cfg.symmetric)

    def pack(self, module: nn.Module, cfg: RTN) -> nn.Module | None:
        """A :class:`PackedLinear` holding the packed codes of the ORIGINAL layer ``module`` (None if not packable).

        Only weight-only RTN on Linear-like layers packs; its output equals the fake-quant module's.
        """
        from qviz.models import layer_type

        if cfg.act_bits is not None or layer_type(module) != "linear":
            return None
        w = weight_matrix(module).float().cpu()  # [out, in]
        qp = choose_qparams(w, cfg.granularity, cfg.bits, symmetric=cfg.symmetric, clip_search=cfg.clip_search)
        return PackedLinear(quantize(w, qp), qp, module_bias(module))

    def weight_only(self, cfg: RTN) -> bool:
        """True unless the config fake-quantizes activations too (W8A8)."""
        return cfg.act_bits is None

    def layer_output(self, lq: LayerQuant, x: torch.Tensor) -> torch.Tensor:
        """The replacement layer's output on its raw input ``x``, bias removed (activation fake-quant included)."""
        return output_without_bias(lq.module, x)
