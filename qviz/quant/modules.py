"""The replacement modules :func:`qviz.quantize` swaps into a model copy.

* :class:`FakeQuantLinear`, :class:`FakeQuantConv1d`, :class:`FakeQuantConv2d`:
  subclasses of the torch layers whose ``weight`` holds the dequantized weight
  ``W_hat`` (simulated quantization: the arithmetic is float, the values are
  exactly the quantized ones), with optional INT activation fake-quant of the
  input (W8A8). They stay ``nn.Linear``/``nn.Conv2d``, so capture, hooks and
  autograd (straight-through for the activations) work on them as before.
* :class:`PackedLinear`: stores only the packed codes, float16 scales and
  uint8 zero points; batch-1 inputs run the packed INT4/INT8 matrix-vector
  kernel of :mod:`kernels_numba` where it exists, larger batches dequantize
  into a float matrix for the call.
* :class:`Bnb8bitLinear`: bitsandbytes' ``Linear8bitLt`` (LLM.int8: activations
  quantized per token to int8 through float16, int8 matmul, input columns above
  the threshold kept in the input's precision), without its per-call cast warning.

Examples
--------
>>> import torch
>>> from torch import nn
>>> lin = nn.Linear(4, 2)
>>> fq = FakeQuantLinear.from_float(lin, weight_hat=torch.zeros(2, 4), act_bits=8)
>>> fq(torch.ones(3, 4)).shape
torch.Size([3, 2])
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from qviz.quant.primitives import packed_nbytes  # noqa: F401 - the packed layers' byte rule, read here by their callers

ACT_SCHEMES = ("per-token", "per-tensor")


# --------------------------------------------------------------------------- activations


def fake_quant_activation(x: torch.Tensor, bits: int, scheme: str = "per-token", channel_dim: int = -1,
                          *, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric INT fake-quant of activations, scale from the absmax (dynamic, computed per call).

    ``per-token``: one scale per vector along ``channel_dim`` (a token of a
    Linear input, a pixel position of a convolution input); ``per-tensor``: one
    scale. Levels ``-(2**(bits-1)-1) .. 2**(bits-1)-1``; an all-zero token gets
    scale 1. Gradients pass straight through (``x + (q - x).detach()``).
    A given ``scale`` (0-d, positive: a static, calibrated per-tensor scale) is
    used instead of the absmax; values beyond its range clip.

    Parameters
    ----------
    x : torch.Tensor
        Floating activations, e.g. ``[batch, tokens, channels]``.
    bits : int
        2 to 8.
    scheme : {"per-token", "per-tensor"}
    channel_dim : int
        The channel dim (-1 for Linear inputs, 1 for convolution inputs).

    Examples
    --------
    >>> x = torch.tensor([[0.0, 1.0, -2.0]])
    >>> fake_quant_activation(x, 2)
    tensor([[ 0.,  0., -2.]])
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"activation bits must be an int from 2 to 8; got {bits!r}.")
    if scheme not in ACT_SCHEMES:
        raise ValueError(f"scheme must be one of {ACT_SCHEMES}; got {scheme!r}.")
    qmax = float((1 << (bits - 1)) - 1)
    xf = x.float()
    if scale is not None:
        if scheme != "per-tensor" or scale.dim() != 0 or not bool(scale > 0):
            raise ValueError(f"A static activation scale is one positive number for scheme='per-tensor'; "
                             f"got {scale!r} with scheme={scheme!r}.")
        scale = scale.to(xf.dtype)
    else:
        a = xf.detach().abs()
        amax = a.amax() if scheme == "per-tensor" else a.amax(dim=channel_dim, keepdim=True)
        scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    q = torch.clamp(torch.round(xf / scale), -qmax, qmax) * scale
    return (xf + (q - xf).detach()).to(x.dtype)


class _ActQuantMixin:
    act_bits: int | None
    act_scheme: str

    def _quant_input(self, x: torch.Tensor, channel_dim: int) -> torch.Tensor:
        if self.act_bits is None:
            return x
        return fake_quant_activation(x, self.act_bits, self.act_scheme, channel_dim)


def _copy_param(p: torch.Tensor | None) -> nn.Parameter | None:
    if p is None:
        return None
    return nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)


# --------------------------------------------------------------------------- fake-quant layers


class FakeQuantLinear(_ActQuantMixin, nn.Linear):
    """A Linear whose weight is the dequantized ``W_hat [out, in]``; optional INT activation fake-quant.

    Build it with :meth:`from_float`; ``kernel`` says what runs (``"simulated (fake-quant)"``).

    Examples
    --------
    >>> lin = nn.Linear(3, 2)
    >>> FakeQuantLinear.from_float(lin, lin.weight.detach().round()).weight.abs().max() >= 0
    tensor(True)
    """

    kernel = "simulated (fake-quant)"

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 act_bits: int | None = None, act_scheme: str = "per-token",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.act_bits = act_bits
        self.act_scheme = act_scheme

    @classmethod
    def from_float(cls, module: nn.Module, weight_hat: torch.Tensor, act_bits: int | None = None,
                   act_scheme: str = "per-token") -> FakeQuantLinear:
        """Replace ``module`` (nn.Linear or GPT-2's Conv1D) by a fake-quant Linear with ``weight_hat [out, in]``."""
        out_f, in_f = weight_hat.shape
        bias = getattr(module, "bias", None)
        new = cls(in_f, out_f, bias is not None, act_bits, act_scheme, device="meta")
        new.weight = nn.Parameter(weight_hat.detach().to(module.weight.dtype).clone(),
                                  requires_grad=module.weight.requires_grad)
        new.bias = _copy_param(bias)
        new.train(module.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        return nn.functional.linear(self._quant_input(x, -1), self.weight, self.bias)

    def extra_repr(self) -> str:
        act = f", act_bits={self.act_bits} ({self.act_scheme})" if self.act_bits else ""
        return super().extra_repr() + act


def _conv_from_float(cls: type, module: nn.Module, weight_hat: torch.Tensor, act_bits: int | None,
                     act_scheme: str) -> nn.Module:
    new = cls(
        module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
        padding=module.padding, dilation=module.dilation, groups=module.groups,
        bias=module.bias is not None, padding_mode=module.padding_mode,
        device="meta",
    )
    new.weight = nn.Parameter(weight_hat.detach().reshape(module.weight.shape).to(module.weight.dtype).clone(),
                              requires_grad=module.weight.requires_grad)
    new.bias = _copy_param(module.bias)
    new.act_bits = act_bits
    new.act_scheme = act_scheme
    new.train(module.training)
    return new


class FakeQuantConv2d(_ActQuantMixin, nn.Conv2d):
    """A Conv2d whose kernel is the dequantized weight; activations fake-quantized per pixel or per tensor.

    Examples
    --------
    >>> conv = nn.Conv2d(1, 2, 3)
    >>> FakeQuantConv2d.from_float(conv, conv.weight.detach().reshape(2, -1))(torch.ones(1, 1, 5, 5)).shape
    torch.Size([1, 2, 3, 3])
    """

    kernel = "simulated (fake-quant)"
    act_bits: int | None = None
    act_scheme: str = "per-token"

    @classmethod
    def from_float(cls, module: nn.Conv2d, weight_hat: torch.Tensor, act_bits: int | None = None,
                   act_scheme: str = "per-token") -> FakeQuantConv2d:
        """``weight_hat`` is ``[out, in * kh * kw]`` (as :func:`qviz.models.weight_matrix`) or the kernel shape."""
        return _conv_from_float(cls, module, weight_hat, act_bits, act_scheme)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, in, h, w] -> [batch, out, h', w']
        return self._conv_forward(self._quant_input(x, 1), self.weight, self.bias)


class FakeQuantConv1d(_ActQuantMixin, nn.Conv1d):
    """A Conv1d whose kernel is the dequantized weight (see :class:`FakeQuantConv2d`).

    Examples
    --------
    >>> conv = nn.Conv1d(2, 2, 3)
    >>> FakeQuantConv1d.from_float(conv, conv.weight.detach().reshape(2, -1))(torch.ones(1, 2, 5)).shape
    torch.Size([1, 2, 3])
    """

    kernel = "simulated (fake-quant)"
    act_bits: int | None = None
    act_scheme: str = "per-token"

    @classmethod
    def from_float(cls, module: nn.Conv1d, weight_hat: torch.Tensor, act_bits: int | None = None,
                   act_scheme: str = "per-token") -> FakeQuantConv1d:
        """``weight_hat`` is ``[out, in * k]`` or the kernel shape."""
        return _conv_from_float(cls, module, weight_hat, act_bits, act_scheme)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, in, length] -> [batch, out, length']
        return self._conv_forward(self._quant_input(x, 1), self.weight, self.bias)


def fake_quant_module(module: nn.Module, weight_hat: torch.Tensor, act_bits: int | None = None,
                      act_scheme: str = "per-token") -> nn.Module:
    """The fake-quant replacement of a Linear, GPT-2 Conv1D, Conv1d or Conv2d with weight ``W_hat [out, in]``.

    Examples
    --------
    >>> type(fake_quant_module(nn.Conv2d(1, 2, 3), torch.zeros(2, 9))).__name__
    'FakeQuantConv2d'
    """
    if isinstance(module, nn.Conv2d):
        return FakeQuantConv2d.from_float(module, weight_hat, act_bits, act_scheme)
    if isinstance(module, nn.Conv1d):
        return FakeQuantConv1d.from_float(module, weight_hat, act_bits, act_scheme)
    from qviz.models import layer_type

    if layer_type(module) == "linear":
        return FakeQuantLinear.from_float(module, weight_hat, act_bits, act_scheme)
    raise TypeError(
        f"Cannot build a fake-quant replacement for {type(module).__name__}; supported: nn.Linear, "
        "transformers' Conv1D, nn.Conv1d, nn.Conv2d."
    )


# --------------------------------------------------------------------------- packed layer


class PackedLinear(nn.Module):
    """A Linear stored as packed RTN codes + float16 scales + uint8 zero points (true low-bit storage).

    Codes are packed row by row with :func:`kernels_numba.pack` (INT4: two per
    byte, low nibble first; INT2: four; INT3: eight per three bytes). A single
    input vector with no gradient runs the packed matrix-vector kernel of
    :mod:`kernels_numba` (INT4 any group size; INT8 one scale per row); other
    inputs dequantize the weight for the call and run a float matmul.
    :attr:`nbytes` is what is stored.

    Examples
    --------
    >>> from qviz.quant.primitives import choose_qparams, quantize
    >>> w = torch.randn(8, 32)
    >>> qp = choose_qparams(w, bits=4)
    >>> layer = PackedLinear(quantize(w, qp), qp, bias=None)
    >>> layer(torch.ones(2, 32)).shape, layer.nbytes
    (torch.Size([2, 8]), 152)
    """

    def __init__(self, codes: torch.Tensor, qparams: Any, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        import kernels_numba as kn

        from qviz.quant.granularity import PerTensor

        out_f, in_f = qparams.shape
        self.in_features, self.out_features = in_f, out_f
        self.bits = qparams.bits
        self.symmetric = qparams.symmetric
        self.granularity = qparams.granularity
        scale = torch.as_tensor(qparams.scale).detach().cpu().float()  # [out|1, n_groups]
        zero = torch.as_tensor(qparams.zero).detach().cpu().to(torch.uint8)
        packed = kn.pack(np.ascontiguousarray(torch.as_tensor(codes).cpu().numpy()), self.bits)  # [out, ceil(in*bits/8)]
        self.register_buffer("packed", torch.from_numpy(packed))
        self.register_buffer("scale", scale.to(torch.float16))  # exact: RTN scales are float16 values
        self.register_buffer("zero", zero)
        self.bias = _copy_param(bias)
        per_tensor = isinstance(self.granularity, PerTensor)
        group = in_f if per_tensor or scale.shape[1] == 1 else in_f // scale.shape[1]
        self._group = group
        if self.bits == 4 and group % 2 == 0:
            self.kernel = "real kernel: numba packed INT4 GEMV (batch 1); dequantize + float matmul for batches"
        elif self.bits == 8 and group == in_f:
            self.kernel = "real kernel: numba INT8 GEMV (batch 1); dequantize + float matmul for batches"
        else:
            self.kernel = f"packed INT{self.bits} storage; dequantize + float matmul"

    @property
    def nbytes(self) -> int:
        """Stored bytes of the weight: packed codes, float16 scales, zero points (asymmetric only)."""
        return int(self.packed.numel() + 2 * self.scale.numel() + (0 if self.symmetric else self.zero.numel()))

    def _full(self, t: torch.Tensor) -> np.ndarray:
        """Per-tensor parameters broadcast to one per row (the kernels want ``[rows, n_groups]``)."""
        a = t.numpy()
        return np.ascontiguousarray(np.broadcast_to(a, (self.out_features, a.shape[1])))

    def codes(self) -> torch.Tensor:
        """The unpacked uint8 codes ``[out, in]``."""
        import kernels_numba as kn

        return torch.from_numpy(kn.unpack(self.packed.numpy(), self.bits, self.in_features))

    def weight_hat(self) -> torch.Tensor:
        """The dequantized float32 weight ``[out, in]``."""
        from qviz.quant.primitives import QParams, dequantize

        qp = QParams(self.scale.float(), self.zero, self.bits, self.symmetric, self.granularity,
                     (self.out_features, self.in_features))
        return dequantize(self.codes(), qp)

    def _gemv(self, x: torch.Tensor) -> torch.Tensor | None:
        """The packed kernel's ``W_hat @ x`` for one vector, or None where no kernel applies."""
        import kernels_numba as kn

        if x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
            return None
        v = np.ascontiguousarray(x.detach().reshape(-1).float().numpy())  # [in]
        scale = self._full(self.scale.float())
        zero = self._full(self.zero)
        if self.bits == 4 and self._group % 2 == 0:
            if scale.shape[1] * self._group != self.in_features:  # per tensor: one group per row
                scale, zero = np.ascontiguousarray(scale[:, :1]), np.ascontiguousarray(zero[:, :1])
            y = kn.gemv_int4(self.packed.numpy(), scale, zero, v, self._group)
        elif self.bits == 8 and self._group == self.in_features:
            y = kn.gemv_int8(self.packed.numpy(), scale[:, :1].copy(), zero[:, :1].copy(), v)
        else:
            return None
        return torch.from_numpy(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        if x.numel() == self.in_features:
            y = self._gemv(x)
            if y is not None:
                y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
                return y if self.bias is None else y + self.bias.to(x.dtype)
        w = self.weight_hat().to(x.dtype)
        return nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, {self.granularity.label}"


# --------------------------------------------------------------------------- bitsandbytes


def bnb_int8_linear(weight_hat_source: torch.Tensor, bias: torch.Tensor | None, threshold: float,
                    device: torch.device) -> nn.Module:
    """A :class:`Bnb8bitLinear` holding ``weight [out, in]`` as bitsandbytes int8 (``CB``, ``SCB``)."""
    cls = _bnb8bit_class()
    out_f, in_f = weight_hat_source.shape
    layer = cls(in_f, out_f, bias=bias is not None, has_fp16_weights=False, threshold=float(threshold))
    import bitsandbytes as bnb

    layer.weight = bnb.nn.Int8Params(weight_hat_source.detach().float().cpu().clone(), requires_grad=False,
                                     has_fp16_weights=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().float().cpu().clone(), requires_grad=False)
    layer = layer.to(device)  # Int8Params quantizes on the move to a device
    if layer.weight.dtype != torch.int8:
        raise RuntimeError("bitsandbytes did not quantize the weight to int8; check the bitsandbytes install.")
    layer.eval()
    return layer


_BNB8_CLASS: type | None = None


def _drop_cast_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


def _bnb8bit_class() -> type:
    global _BNB8_CLASS
    if _BNB8_CLASS is not None:
        return _BNB8_CLASS
    import bitsandbytes as bnb

    class Bnb8bitLinear(bnb.nn.Linear8bitLt):
        """bitsandbytes ``Linear8bitLt`` (LLM.int8: int8 matmul, outlier input columns above the threshold
        kept in the input's precision against the dequantized weight columns).

        Only difference from the parent: its once-per-call warning that float32
        inputs are cast to float16 for the int8 quantization is not logged.
        """

        kernel = "real kernel: bitsandbytes Linear8bitLt (LLM.int8)"

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
            logger = logging.getLogger("bitsandbytes.autograd._functions")
            logger.addFilter(_drop_cast_warning)
            try:
                return super().forward(x)
            finally:
                logger.removeFilter(_drop_cast_warning)

    Bnb8bitLinear.__module__ = __name__
    Bnb8bitLinear.__qualname__ = "Bnb8bitLinear"
    _BNB8_CLASS = Bnb8bitLinear
    globals()["Bnb8bitLinear"] = Bnb8bitLinear
    return Bnb8bitLinear


# --------------------------------------------------------------------------- bitsandbytes 4-bit

#: bitsandbytes' packed CPU layout groups this many output rows
PACKED_BLOCK_N = 32


def packed_cpu_kernel_available() -> bool:
    """True when bitsandbytes can run its packed AVX512-BF16 4-bit kernel on this CPU.

    That is: the native library reports AVX512-BF16 and bitsandbytes registered
    its packed ``gemv_4bit`` CPU kernel at import (it does so only on such CPUs).

    Examples
    --------
    >>> isinstance(packed_cpu_kernel_available(), bool)
    True
    """
    import bitsandbytes.functional as bf

    return bool(bf.has_avx512bf16())


def packed_cpu_refusal(shape: tuple[int, int], blocksize: int) -> str | None:
    """Why bitsandbytes' packed CPU kernel cannot take an ``(out, in)`` weight, or None when it can.

    The packed layout tiles output rows in blocks of 32, pairs input columns,
    and keeps the absmax table as ``[in / blocksize, out]``, so each row must
    hold a whole number of blocks.

    Examples
    --------
    >>> packed_cpu_refusal((10, 64), 64)
    'the packed kernel tiles output rows by 32 and this layer has 10'
    >>> packed_cpu_refusal((64, 64), 64) is None
    True
    """
    out_f, in_f = int(shape[0]), int(shape[1])
    if out_f % PACKED_BLOCK_N:
        return f"the packed kernel tiles output rows by {PACKED_BLOCK_N} and this layer has {out_f}"
    if in_f % 2:
        return f"the packed kernel pairs input columns and this layer has an odd {in_f}"
    if in_f % blocksize:
        return f"the packed kernel needs whole blocks of {blocksize} per row and this layer's rows have {in_f} weights"
    return None


def bnb_4bit_linear(weight: torch.Tensor, bias: torch.Tensor | None, quant_type: str, blocksize: int,
                    double_quant: bool, cpu_kernel: str = "generic") -> nn.Module:
    """A :class:`Bnb4bitLinear` holding ``weight [out, in]`` in bitsandbytes' 4-bit format, on ``weight``'s device.

    ``cpu_kernel`` is ``"generic"`` or ``"packed"`` (the caller has checked that
    the CPU and the shape allow it: :func:`packed_cpu_kernel_available`,
    :func:`packed_cpu_refusal`).
    """
    import bitsandbytes as bnb

    if cpu_kernel not in ("generic", "packed"):
        raise ValueError(f"cpu_kernel must be 'generic' or 'packed'; got {cpu_kernel!r}.")
    cls = _bnb4bit_class()
    out_f, in_f = weight.shape
    layer = cls(in_f, out_f, bias=bias is not None, compute_dtype=torch.float32,
                compress_statistics=double_quant, quant_type=quant_type)
    layer.weight = bnb.nn.Params4bit(weight.detach().float().cpu().clone(), requires_grad=False,
                                     quant_type=quant_type, blocksize=blocksize, compress_statistics=double_quant,
                                     module=layer)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().float().cpu().clone(), requires_grad=False)
    layer = layer.to(weight.device)  # Params4bit quantizes on the move to a device
    layer.eval()
    if cpu_kernel == "packed":
        layer.pack_for_cpu()
    return layer


_BNB4_CLASS: type | None = None


def _bnb4bit_class() -> type:
    global _BNB4_CLASS
    if _BNB4_CLASS is not None:
        return _BNB4_CLASS
    import copy

    import bitsandbytes as bnb
    import bitsandbytes.functional as bf

    class Bnb4bitLinear(bnb.nn.Linear4bit):
        """bitsandbytes ``Linear4bit`` whose CPU kernel qviz chooses, not the processor.

        bitsandbytes' own ``Linear4bit`` repacks its weight on its first CPU
        forward when the CPU has AVX512-BF16 (a bf16 kernel with other numbers,
        which fails on layers whose output rows are not a multiple of 32), and
        converts it back, lossily with double quantization, on every
        ``state_dict()``. This subclass never repacks by itself:

        * ``cpu_kernel == "generic"``: the float32 dequantize-and-matmul path on
          every CPU;
        * ``cpu_kernel == "packed"`` (set by :meth:`pack_for_cpu`): repacked
          once, up front; ``state_dict()`` returns the original (canonical)
          codes and absmax without touching the module, so it is the same on
          every call.

        ``kernel`` names what runs; ``dequantized_weight()`` is the float
        weight ``[out, in]`` in either layout.
        """

        cpu_kernel = "generic"

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.support_avx512bf16_for_cpu = False  # bitsandbytes' switch to the packed path: qviz sets it
            self._canonical: tuple[torch.Tensor, Any] | None = None

        #: why a layer asked to run packed runs the generic kernel ("" when it does not)
        kernel_note = ""

        @property
        def kernel(self) -> str:
            """What runs this layer's forward, e.g. ``"real kernel: bitsandbytes NF4, generic CPU kernel ..."``."""
            name = self.weight.quant_type.upper() if hasattr(self.weight, "quant_type") else "4-bit"
            if self.weight.device.type != "cpu":
                return f"real kernel: bitsandbytes {name}, {self.weight.device.type.upper()} kernel"
            if self.cpu_kernel == "packed":
                return f"real kernel: bitsandbytes {name}, packed AVX512-BF16 CPU kernel (bf16 compute)"
            note = f" ({self.kernel_note})" if self.kernel_note else ""
            return f"real kernel: bitsandbytes {name}, generic CPU kernel (float32 compute){note}"

        def pack_for_cpu(self) -> None:
            """Repack the weight for bitsandbytes' AVX512-BF16 CPU kernel, keeping the canonical form aside."""
            if self.cpu_kernel == "packed":
                return
            if self.weight.device.type != "cpu":
                raise RuntimeError("The packed bitsandbytes kernel runs on the CPU; this layer is on "
                                   f"{self.weight.device}. Move it to the CPU first or keep cpu_kernel='generic'.")
            if not packed_cpu_kernel_available():
                raise RuntimeError(
                    "bitsandbytes' packed 4-bit CPU kernel needs a CPU with AVX512-BF16, which this one lacks. "
                    "Use cpu_kernel='generic' (the same numbers on every CPU) or 'auto'."
                )
            reason = packed_cpu_refusal((self.out_features, self.in_features), self.weight.quant_state.blocksize)
            if reason is not None:
                raise ValueError(f"This {self.out_features}x{self.in_features} layer cannot use the packed kernel: "
                                 f"{reason}. Keep cpu_kernel='generic' for it.")
            canonical = (self.weight.data.clone(), copy.deepcopy(self.weight.quant_state))
            data, state = bf._convert_weight_packed_for_cpu(self.weight.data.clone(), copy.deepcopy(canonical[1]))
            self.weight.data, self.weight.quant_state = data, state
            self.quant_state = state
            self._canonical = canonical
            self.cpu_kernel = "packed"
            self.support_avx512bf16_for_cpu = True

        def _canonical_weight(self) -> tuple[torch.Tensor, Any]:
            if self._canonical is not None:
                return self._canonical
            return self.weight.data, self.weight.quant_state

        def dequantized_weight(self) -> torch.Tensor:
            """The float32 weight ``[out, in]`` this layer applies (from the canonical codes)."""
            from qviz.quant.bnb_ops import dequantize_4bit  # lazy: bitsandbytes loads on first use

            data, state = self._canonical_weight()
            return dequantize_4bit(data, state).reshape(self.out_features, self.in_features)

        def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
            if self._canonical is None:
                super()._save_to_state_dict(destination, prefix, keep_vars)
                return
            packed = (self.weight.data, self.weight.quant_state)
            self.weight.data, self.weight.quant_state = self._canonical
            try:  # the parent saves the canonical form and, seeing no packing flag, leaves it alone
                super()._save_to_state_dict(destination, prefix, keep_vars)
            finally:
                self.weight.data, self.weight.quant_state = packed

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
            if self.cpu_kernel == "packed" and x.device.type != "cpu":
                raise RuntimeError(f"This layer runs bitsandbytes' packed CPU kernel; got an input on {x.device}. "
                                   "Quantize again with the model on that device.")
            if self.cpu_kernel == "generic" and x.device.type == "cpu":
                # bitsandbytes' generic CPU path is "dequantize, then a float matmul"; its native
                # dequantization and its batch-1 gemv switch kernels by CPU, so the dequantization is
                # bitsandbytes' own torch implementation (the same numbers everywhere).
                bias = None if self.bias is None else self.bias.to(torch.float32)
                y = torch.nn.functional.linear(x.to(torch.float32), self.dequantized_weight(), bias)
                return y.to(x.dtype)
            return super().forward(x)

    Bnb4bitLinear.__module__ = __name__
    Bnb4bitLinear.__qualname__ = "Bnb4bitLinear"
    _BNB4_CLASS = Bnb4bitLinear
    globals()["Bnb4bitLinear"] = Bnb4bitLinear
    return Bnb4bitLinear


def __getattr__(name: str) -> Any:
    if name == "Bnb8bitLinear":
        return _bnb8bit_class()
    if name == "Bnb4bitLinear":
        return _bnb4bit_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
