"""Floating-point weight formats: FP8 (E4M3/E5M2), OCP MX (MXFP4, MXFP6, MXFP8) and NVFP4, as registered methods.

Configs (frozen dataclasses) and their :class:`~qviz.quant.method.Method`
handlers; the arithmetic is :mod:`kernels_numba.fp` (numpy in, numpy out).

* :class:`FP8`: E4M3 or E5M2 codes with a float32 scale ``amax / max`` per
  tensor, per output channel or per block of input weights.
* :class:`MXFP4`, :class:`MXFP6`, :class:`MXFP8`: OCP Microscaling v1.0, one
  E8M0 power-of-two scale per 32 weights along the input dim.
* :class:`NVFP4`: E2M1 elements, an E4M3 scale per 16 weights and a float32 tensor scale.

Every config carries the activation fields of :mod:`qviz.quant.actquant`
(``act_bits``, ``act_type``, ``act_scheme``, ``act_static``), so
``FP8(act_bits=8)`` is W8A8-FP8 with dynamic per-token activation scales and
``FP8(act_bits=8, act_scheme="per-tensor", act_static=True)`` the static one.

Stored bytes: codes packed tightly (``bits`` per weight), plus float32 FP8 scales,
one byte per MX block (E8M0), one byte per NVFP4 block (E4M3) and 4 bytes of
NVFP4 tensor scale: MXFP4 is 4.25 bits per weight, NVFP4 4.5 plus the tensor scale.

Examples
--------
>>> import torch, qviz
>>> qviz.quantize_tensor(torch.randn(64, 128), qviz.MXFP4()).bits_per_weight
4.25
>>> qviz.MXFP6(fmt="e4m3")
Traceback (most recent call last):
...
ValueError: MXFP6 fmt must be one of ('e2m3', 'e3m2') (the FP6 element types of OCP MX v1.0); got 'e4m3'. ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from qviz.models import weight_matrix
from qviz.quant.actquant import ActSpec, act_module, calibrate_act_amax, check_act_fields
from qviz.quant.config import QuantConfig
from qviz.quant.primitives import packed_nbytes
from qviz.quant.method import Controls, FormatBits, LayerQuant, Method, register
from qviz.quant.rtn import output_without_bias

__all__ = ["FP8", "MXFP4", "MXFP6", "MXFP8", "NVFP4", "FPFormatMethod", "BlockFormatMethod"]


@dataclass(frozen=True)
class _ActFields(QuantConfig):
    """The activation fields every config of this module (and HQQ, Rotated) carries."""

    act_bits: int | None = field(default=None, kw_only=True)
    act_type: str = field(default="int", kw_only=True)
    act_scheme: str = field(default="per-token", kw_only=True)
    act_static: bool = field(default=False, kw_only=True)

    def _check_act(self) -> None:
        check_act_fields(type(self).__name__, self.act_bits, self.act_type, self.act_scheme, self.act_static)

    @property
    def activation(self) -> ActSpec | None:
        """The :class:`ActSpec` the activation fields describe (None: weights only)."""
        if self.act_bits is None:
            return None
        return ActSpec(self.act_bits, self.act_type, self.act_scheme, self.act_static)

    def _act_label(self) -> str:
        spec = self.activation
        return "" if spec is None else " " + spec.label


def _check_block(owner: str, block_size: Any, allowed: int, spec: str) -> None:
    if block_size != allowed or isinstance(block_size, bool):
        raise ValueError(
            f"{owner} block_size must be {allowed}: {spec} defines blocks of {allowed} elements only; "
            f"got {block_size!r}. For other block sizes use qviz.FP8(granularity=N) or qviz.RTN(group_size=N)."
        )


def _check_fmt(owner: str, fmt: Any, allowed: tuple[str, ...], what: str) -> None:
    if fmt not in allowed:
        raise ValueError(
            f"{owner} fmt must be one of {allowed} ({what}); got {fmt!r}. "
            "The element types qviz knows: e4m3, e5m2 (FP8), e2m3, e3m2 (FP6), e2m1 (FP4)."
        )


@dataclass(frozen=True)
class FP8(_ActFields):
    """FP8 weights (E4M3 or E5M2) with float32 absmax scales; optional activation quantization.

    Parameters
    ----------
    fmt : {"e4m3", "e5m2"}
        E4M3 (``float8_e4m3fn``, max 448) or E5M2 (max 57344).
    granularity : "tensor", "channel" or int
        One scale per tensor, per output channel, or per block of that many input weights.
    act_bits, act_type, act_scheme, act_static
        Activation quantization (see :mod:`qviz.quant.actquant`); ``act_type`` defaults to ``"fp"``
        here, so ``FP8(act_bits=8)`` is W8A8-FP8 with dynamic per-token E4M3 activations.

    Examples
    --------
    >>> FP8().label, FP8("e5m2", granularity=128).label
    ('FP8 e4m3 ch', 'FP8 e5m2 g128')
    >>> FP8(act_bits=8, act_scheme="per-tensor", act_static=True).label
    'FP8 e4m3 ch a8fp/tensor static'
    """

    fmt: str = "e4m3"
    granularity: int | str = "channel"
    act_type: str = field(default="fp", kw_only=True)
    method: ClassVar[str] = "fp8"

    def __post_init__(self) -> None:
        _check_fmt("FP8", self.fmt, ("e4m3", "e5m2"), "the OCP FP8 element types")
        g = self.granularity
        if g not in ("tensor", "channel") and (not isinstance(g, int) or isinstance(g, bool) or g < 1):
            raise ValueError(
                f"FP8 granularity must be 'tensor', 'channel' or a positive int (a block of that many input "
                f"weights per scale, e.g. 128); got {g!r}."
            )
        self._check_act()

    @property
    def group_size(self) -> int | str | None:
        """The granularity as RTN's ``group_size`` (None: per channel)."""
        return None if self.granularity == "channel" else self.granularity

    @property
    def element(self) -> str:
        return self.fmt

    @property
    def weight_bits(self) -> int:
        return 8

    @property
    def label(self) -> str:
        g = {"channel": "ch", "tensor": "tensor"}.get(self.granularity, f"g{self.granularity}")  # type: ignore[arg-type]
        return f"FP8 {self.fmt} {g}{self._act_label()}"


@dataclass(frozen=True)
class _MX(_ActFields):
    block_size: int = 32
    fmt: str = "e2m1"
    formats: ClassVar[tuple[str, ...]] = ("e2m1",)
    name: ClassVar[str] = "MX"

    def __post_init__(self) -> None:
        _check_fmt(self.name, self.fmt, self.formats, f"the {self.name[2:]} element types of OCP MX v1.0")
        _check_block(self.name, self.block_size, 32, "the OCP MX v1.0 specification")
        self._check_act()

    @property
    def group_size(self) -> int:
        return self.block_size

    @property
    def element(self) -> str:
        return self.fmt

    @property
    def weight_bits(self) -> int:
        from kernels_numba.fp import element_format

        return element_format(self.fmt).bits

    @property
    def label(self) -> str:
        fmt = "" if len(self.formats) == 1 or self.fmt == self.formats[0] else f" {self.fmt}"
        return f"{self.name}{fmt}{self._act_label()}"


@dataclass(frozen=True)
class MXFP4(_MX):
    """OCP MXFP4: E2M1 elements, one E8M0 scale per 32 weights (4.25 bits per weight).

    Examples
    --------
    >>> MXFP4().label, MXFP4(act_bits=4, act_type="fp").label
    ('MXFP4', 'MXFP4 a4fp/token')
    """

    fmt: str = "e2m1"
    formats: ClassVar[tuple[str, ...]] = ("e2m1",)
    name: ClassVar[str] = "MXFP4"
    method: ClassVar[str] = "mxfp4"


@dataclass(frozen=True)
class MXFP6(_MX):
    """OCP MXFP6: E2M3 or E3M2 elements, one E8M0 scale per 32 weights (6.25 bits per weight).

    Examples
    --------
    >>> MXFP6().label, MXFP6(fmt="e3m2").label
    ('MXFP6', 'MXFP6 e3m2')
    """

    fmt: str = "e2m3"
    formats: ClassVar[tuple[str, ...]] = ("e2m3", "e3m2")
    name: ClassVar[str] = "MXFP6"
    method: ClassVar[str] = "mxfp6"


@dataclass(frozen=True)
class MXFP8(_MX):
    """OCP MXFP8: E4M3 (default) or E5M2 elements, one E8M0 scale per 32 weights (8.25 bits per weight).

    Examples
    --------
    >>> MXFP8().label
    'MXFP8'
    """

    fmt: str = "e4m3"
    formats: ClassVar[tuple[str, ...]] = ("e4m3", "e5m2")
    name: ClassVar[str] = "MXFP8"
    method: ClassVar[str] = "mxfp8"


@dataclass(frozen=True)
class NVFP4(_ActFields):
    """NVIDIA NVFP4: E2M1 elements, one E4M3 scale per 16 weights, one float32 tensor scale (4.5 bits + 32/tensor).

    Examples
    --------
    >>> NVFP4().label
    'NVFP4'
    >>> NVFP4(block_size=32)
    Traceback (most recent call last):
    ...
    ValueError: NVFP4 block_size must be 16: NVFP4 defines blocks of 16 elements only; got 32. ...
    """

    block_size: int = 16
    method: ClassVar[str] = "nvfp4"

    def __post_init__(self) -> None:
        _check_block("NVFP4", self.block_size, 16, "NVFP4")
        self._check_act()

    @property
    def group_size(self) -> int:
        return self.block_size

    @property
    def element(self) -> str:
        return "e2m1"

    @property
    def weight_bits(self) -> int:
        return 4

    @property
    def label(self) -> str:
        return f"NVFP4{self._act_label()}"


# --------------------------------------------------------------------------- storage


def fp_nbytes(shape: tuple[int, int], cfg: QuantConfig) -> int:
    """Stored bytes of an ``(out, in)`` weight in ``cfg``'s format.

    Examples
    --------
    >>> fp_nbytes((64, 128), MXFP4()), fp_nbytes((64, 128), NVFP4()), fp_nbytes((64, 128), FP8())
    (4352, 4612, 8448)
    """
    rows, cols = int(shape[0]), int(shape[1])
    codes = packed_nbytes(rows, cols, cfg.weight_bits)
    if isinstance(cfg, FP8):
        from qviz.quant.granularity import granularity_of

        n_scales = int(np.prod(granularity_of(cfg.group_size).scale_shape((rows, cols))))
        return codes + 4 * n_scales
    if isinstance(cfg, NVFP4):
        return codes + rows * cols // cfg.block_size + 4
    return codes + rows * cols // cfg.block_size  # MX: one E8M0 byte per block


def fp_format_bits(cfg: QuantConfig, row_length: int) -> tuple[float, float, str]:
    """``(code bits, overhead bits, what the overhead is)`` per weight, for :func:`qviz.evaluate.size.format_bits`."""
    bits = float(cfg.weight_bits)
    if isinstance(cfg, FP8):
        if cfg.granularity == "tensor":
            return bits, 0.0, "a float32 scale per tensor (negligible)"
        per = row_length if cfg.granularity == "channel" else int(cfg.granularity)
        where = f"per row of {per} weights" if cfg.granularity == "channel" else f"per block of {per} weights"
        return bits, 32 / per, f"a float32 scale {where}"
    if isinstance(cfg, NVFP4):
        return bits, 8 / cfg.block_size, f"an E4M3 scale per block of {cfg.block_size} weights (plus a float32 per tensor)"
    return bits, 8 / cfg.block_size, f"an E8M0 power-of-two scale per block of {cfg.block_size} weights"


# --------------------------------------------------------------------------- the trio for one weight


def quantize_fp(w: torch.Tensor, cfg: QuantConfig) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """``(codes uint8 [rows, cols], scale float32 [rows | 1, n_scales], extra)`` of ``w [rows, cols]`` in ``cfg``'s format.

    ``scale`` is the float32 factor each code's value is multiplied by: the
    FP8 scale, the MX block scale ``2**(E-127)``, or NVFP4's ``E4M3 block scale *
    tensor scale``. ``extra`` holds the stored scale bytes (MX E8M0 exponents,
    NVFP4 E4M3 codes and the tensor scale).
    """
    import kernels_numba.fp as kfp

    x = np.ascontiguousarray(w.detach().float().cpu().numpy())  # [rows, cols]
    if isinstance(cfg, FP8):
        scale = kfp.fp_scales(x, cfg.fmt, cfg.group_size)
        codes = kfp.fp_quantize(x, scale, cfg.fmt)
        return torch.from_numpy(codes), torch.from_numpy(scale), None
    if isinstance(cfg, NVFP4):
        codes, bs, g = kfp.nvfp4_quantize(x)
        scale = (kfp.element_values("e4m3")[bs] * g).astype(np.float32)
        return torch.from_numpy(codes), torch.from_numpy(scale), (torch.from_numpy(bs), float(g))
    codes, exps = kfp.mx_quantize(x, cfg.fmt)
    scale = np.ldexp(np.float32(1.0), exps.astype(np.int32) - 127).astype(np.float32)
    return torch.from_numpy(codes), torch.from_numpy(scale), torch.from_numpy(exps)


def dequantize_fp(codes: torch.Tensor, scale: torch.Tensor, extra: Any, cfg: QuantConfig) -> torch.Tensor:
    """float32 ``[rows, cols]`` from :func:`quantize_fp`'s output (the kernels' own dequantizers)."""
    import kernels_numba.fp as kfp

    c = codes.numpy()
    if isinstance(cfg, FP8):
        return torch.from_numpy(kfp.fp_dequantize(c, scale.numpy(), cfg.fmt))
    if isinstance(cfg, NVFP4):
        bs, g = extra
        return torch.from_numpy(kfp.nvfp4_dequantize(c, bs.numpy(), g))
    return torch.from_numpy(kfp.mx_dequantize(c, extra.numpy(), cfg.fmt))


# --------------------------------------------------------------------------- the method


class WeightFormatMethod(Method):
    """Shared driver of a data-free weight format with the activation fields of :class:`_ActFields`.

    Subclasses define ``weights(w, cfg) -> (codes, scale, zero, nbytes, dequantize)`` and
    ``storage_nbytes(shape, cfg)``. Static activation scales are calibrated in
    :meth:`prepare` (one forward pass over ``calib``).
    """

    needs_inputs = False
    sequential = False
    layer_types = ("linear", "conv1d", "conv2d")

    def weights(self, w: torch.Tensor, cfg: Any) -> tuple:
        raise NotImplementedError

    def prepare(self, model: Any, cfg: Any, calib: Any, layers: dict[str, nn.Module]) -> Any:
        """The calibrated input amax of each layer when ``cfg.act_static`` (else nothing)."""
        if not cfg.act_static:
            return None
        return calibrate_act_amax(model, calib, list(layers), cfg.label)

    def quantize_layer(self, name: str, module: nn.Module, cfg: Any, inputs: torch.Tensor | None,
                       state: Any) -> LayerQuant:
        """Quantize the weight, build the fake-quant replacement (with its activation quantization)."""
        w = weight_matrix(module).float()  # [out, in]
        _, _, _, nbytes, dequant = self.weights(w.cpu(), cfg)
        w_hat = dequant().to(w.device)  # [out, in] float32
        amax = None if state is None else state.get(name)
        new = act_module(module, name, w_hat, cfg.activation, amax)
        return LayerQuant(new, w_hat, nbytes, getattr(new, "kernel", "simulated (fake-quant)"), {})

    def quantize_tensor(self, w: torch.Tensor, cfg: Any) -> tuple:
        """``(codes, scale, zero, nbytes, dequantize)`` of ``w [rows, cols]`` (for :func:`qviz.quantize_tensor`)."""
        codes, scale, zero, nbytes, dequant = self.weights(w.cpu(), cfg)
        return codes, scale, zero, nbytes, lambda: dequant().to(w.device)

    def weight_only(self, cfg: Any) -> bool:
        """True unless the config quantizes activations too."""
        return cfg.act_bits is None

    def layer_output(self, lq: LayerQuant, x: torch.Tensor) -> torch.Tensor:
        """The replacement layer's output on ``x``, bias removed (activation quantization included)."""
        return output_without_bias(lq.module, x)


class FPFormatMethod(WeightFormatMethod):
    """FP8 / MX / NVFP4 through :mod:`kernels_numba.fp`."""

    def weights(self, w: torch.Tensor, cfg: Any) -> tuple:
        codes, scale, extra = quantize_fp(w, cfg)
        return codes, scale, None, fp_nbytes(tuple(w.shape), cfg), lambda: dequantize_fp(codes, scale, extra, cfg)

    def fake_quantize(self, w: torch.Tensor, cfg: Any, *, check_finite: bool) -> torch.Tensor:
        """``w [rows, cols]`` quantized and dequantized once by the kernels (which check NaN/Inf themselves),
        on ``w``'s device; without it :func:`qviz.fake_quantize` would build a QuantizedTensor and dequantize twice."""
        codes, scale, extra = quantize_fp(w, cfg)
        return dequantize_fp(codes, scale, extra, cfg).to(w.device)

    def storage_nbytes(self, shape: tuple[int, int], cfg: Any) -> int:
        """Bytes stored for an ``(out, in)`` weight: :func:`fp_nbytes`."""
        return fp_nbytes(shape, cfg)

    def format_bits(self, cfg: Any, row_length: int) -> FormatBits:
        """Code and overhead bits per weight: :func:`fp_format_bits`."""
        return FormatBits(cfg.label, *fp_format_bits(cfg, row_length))

    def config_from_controls(self, c: Controls) -> QuantConfig:
        """The format at its defaults (its block size is part of the format)."""
        return self.config_type()


class BlockFormatMethod(FPFormatMethod):
    """MX and NVFP4: formats whose block length is part of the format (32 for MX, 16 for NVFP4).

    A layer whose row is not a multiple of the block cannot be held in the format; :meth:`refuse`
    says so and :func:`qviz.quantize` leaves that layer in full precision and records why, as it does
    for a GGUF type's block. (FP8's blocks are the user's choice and are checked like RTN groups.)
    """

    def refuse(self, name: str, shape: tuple[int, int], cfg: Any) -> str | None:
        """Why ``cfg`` leaves a layer of weight ``shape`` ``(out, in)`` in full precision (None: it takes it).

        Examples
        --------
        >>> BlockFormatMethod().refuse("fc", (8, 40), MXFP4())
        'MXFP4 scales blocks of 32 consecutive values of a row, and the row length 40 is not a multiple of 32 (40 % 32 = 8); the format defines no other block, so the layer stays in full precision'
        """
        from kernels_numba.fp import block_mismatch

        why = block_mismatch(int(shape[1]), cfg.block_size, type(cfg).__name__)
        return None if why is None else f"{why}; the format defines no other block, so the layer stays in full precision"


@register(FP8)
class FP8Method(FPFormatMethod):
    """FP8 weights; the explorer's group-size knob is the scale granularity."""

    label = "FP8"
    menu_position = 8
    controls = ("group_size",)

    def config_from_controls(self, c: Controls) -> FP8:
        """``FP8(granularity=group_size)`` (per channel: ``"channel"``)."""
        return FP8(granularity="channel" if c.group_size is None else c.group_size)


for _position, _cfg in enumerate((MXFP4, MXFP6, MXFP8, NVFP4), start=9):
    register(_cfg)(type(f"{_cfg.__name__}Method", (BlockFormatMethod,), {
        "__doc__": f"{_cfg.__name__} weights.", "label": _cfg.__name__, "menu_position": _position}))
