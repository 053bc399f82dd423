"""bitsandbytes formats through the real library: LLM.int8 (``BnbInt8``), NF4 and FP4 (``BnbNF4``, ``BnbFP4``).

* :class:`BnbInt8Method` stores each weight row as int8 with a float32
  absmax (``int8_vectorwise_quant``, as ``Linear8bitLt`` does) and swaps in a
  ``Linear8bitLt`` that runs the LLM.int8 matmul: activations quantized per
  token to int8 (through float16), except the input columns whose magnitude
  exceeds ``threshold``, which run in the input's precision against the
  dequantized weight columns (the outlier decomposition). bitsandbytes >= 0.45 keeps no separate float16
  copy of the outlier weight columns, so the stored bytes are the int8 codes
  plus 4 bytes per row; the outlier columns found on the calibration inputs
  are reported per layer (``info["outlier_columns"]``).
* :class:`BnbNF4Method` / :class:`BnbFP4Method` call ``quantize_4bit`` (blockwise
  absmax, two codes per byte) and swap in ``Linear4bit``. The stored bytes count
  the packed codes, the absmax table (float32, or uint8 plus the second-level
  absmax, its 256-entry code table and offset with ``double_quant``) and the
  16-entry code table.

bitsandbytes supports Linear layers only: convolutions are skipped with that
reason by :func:`qviz.quantize`.

Examples
--------
>>> import torch, qviz
>>> qt = qviz.quantize_tensor(torch.randn(64, 64), qviz.BnbNF4(blocksize=64))
>>> qt.bits_per_weight
4.625
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qviz.models import weight_matrix
from qviz.quant.config import BnbFP4, BnbInt8, BnbNF4, QuantConfig, _Bnb4bit
from qviz.quant.method import Controls, FormatBits, Fused, LayerQuant, Method, register
from qviz.quant.bnb_ops import absmax_4bit, dequantize_4bit, nbytes_4bit, unpack_4bit
from qviz.quant.rtn import module_bias, output_without_bias

F16_MAX = 65504.0


def require_bitsandbytes(cfg: QuantConfig, device: torch.device | str = "cpu") -> Any:
    """Import bitsandbytes and check that it can run ``cfg`` on ``device``; raise a clear error if not.

    Examples
    --------
    >>> require_bitsandbytes(BnbNF4()).__name__
    'bitsandbytes'
    """
    label = getattr(cfg, "label", type(cfg).__name__)
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional  # noqa: F401
    except Exception as err:  # ImportError, or a broken native library raising at import
        raise RuntimeError(
            f"{label} runs through bitsandbytes, which cannot run here: {type(err).__name__}: {err}. "
            "Install it with `pip install 'bitsandbytes>=0.45'` (CPU and CUDA builds are on PyPI), "
            "or use an RTN config (qviz.RTN(bits=8) or qviz.RTN(bits=4, group_size=64)) instead."
        ) from err
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda", "xpu"):
        raise RuntimeError(
            f"{label} runs through bitsandbytes, which has no kernels for {dev.type!r} tensors. "
            "Move the model to the CPU or a CUDA GPU (model.module.to('cpu')), or use an RTN config."
        )
    return bnb


def _check_fp16_range(name: str, w: torch.Tensor, label: str) -> None:
    amax = float(w.abs().max())
    if amax > F16_MAX:
        raise ValueError(
            f"Layer {name!r} has weights up to |w| = {amax:.3g}, beyond float16's range ({F16_MAX:g}); "
            f"{label} quantizes through float16. Rescale the layer or use an RTN config."
        )


# --------------------------------------------------------------------------- int8


def int8_vectorwise(w: torch.Tensor, cfg: BnbInt8) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' row-wise int8 of ``w [out, in]``: ``(CB int8 [out, in], SCB float32 [out])``.

    ``w_hat = CB * SCB / 127``.

    Examples
    --------
    >>> cb, scb = int8_vectorwise(torch.tensor([[1.0, -0.5]]), BnbInt8())
    >>> cb.tolist(), scb.tolist()
    ([[127, -64]], [1.0])
    """
    bnb = require_bitsandbytes(cfg, w.device)
    cb, scb, _ = bnb.functional.int8_vectorwise_quant(w.detach().to(torch.float16).contiguous())
    return cb, scb.float()


def int8_nbytes(cb: torch.Tensor, scb: torch.Tensor) -> int:
    """Stored bytes of an LLM.int8 weight: 1 per code and 4 per row absmax."""
    return int(cb.numel() * cb.element_size() + scb.numel() * scb.element_size())


@register(BnbInt8)
class BnbInt8Method(Method):
    """LLM.int8 through bitsandbytes ``Linear8bitLt``."""

    label = "Int8"
    menu_position = 3
    controls = ("threshold",)
    needs_inputs = False
    sequential = False
    data_free = True
    layer_types = ("linear",)

    def config_from_controls(self, c: Controls) -> BnbInt8:
        """``BnbInt8(threshold)`` from the explorer's knobs."""
        return BnbInt8(threshold=float(c.threshold))

    def storage_nbytes(self, shape: tuple[int, int], cfg: BnbInt8) -> int:
        """What :func:`int8_nbytes` counts for an ``(out, in)`` weight: one byte per code, a float32 absmax per row."""
        return int(shape[0]) * int(shape[1]) + 4 * int(shape[0])

    def format_bits(self, cfg: BnbInt8, row_length: int) -> FormatBits:
        """int8 codes and a float32 absmax per row."""
        return FormatBits(cfg.label, 8.0, 32 / row_length, f"a float32 absmax per row of {row_length} weights")

    def quantize_layer(self, name: str, module: nn.Module, cfg: BnbInt8, inputs: torch.Tensor | None,
                       state: Any) -> LayerQuant:
        """Quantize one Linear to int8 rows and return a ``Linear8bitLt`` replacement."""
        from qviz.quant.modules import bnb_int8_linear

        w = weight_matrix(module).float()  # [out, in]
        _check_fp16_range(name, w, cfg.label)
        new = bnb_int8_linear(w, module_bias(module), cfg.threshold, w.device)
        cb, scb = new.weight.CB, new.weight.SCB  # [out, in] int8, [out] float32
        w_hat = cb.float() * (scb.float() / 127.0).unsqueeze(1)  # [out, in]
        info: dict[str, float] = {}
        if inputs is not None and cfg.threshold > 0:
            cols = (inputs.abs() > cfg.threshold).any(dim=0)  # [in]
            info["outlier_columns"] = float(cols.sum())
        return LayerQuant(new, w_hat, int8_nbytes(cb, scb), new.kernel, info)

    def quantize_tensor(self, w: torch.Tensor, cfg: BnbInt8) -> tuple:
        """``(codes int8, absmax/127, None, nbytes, dequantize)`` of ``w [rows, cols]``."""
        _check_fp16_range("tensor", w, cfg.label)
        cb, scb = int8_vectorwise(w, cfg)
        scale = scb / 127.0  # [rows]
        return cb, scale, None, int8_nbytes(cb, scb), lambda: cb.float() * scale.unsqueeze(1)

    def weight_only(self, cfg: BnbInt8) -> bool:
        """False: LLM.int8 quantizes the activations to int8 too (outlier columns aside)."""
        return False

    def layer_output(self, lq: LayerQuant, x: torch.Tensor) -> torch.Tensor:
        """The real ``Linear8bitLt`` output on ``x [tokens, in]`` (LLM.int8 path), bias removed."""
        with torch.no_grad():
            lq.module.eval()
            return output_without_bias(lq.module, x)


# --------------------------------------------------------------------------- 4-bit


def quantize_4bit(w: torch.Tensor, cfg: _Bnb4bit) -> tuple[torch.Tensor, Any]:
    """bitsandbytes ``quantize_4bit`` of ``w [out, in]``: ``(packed uint8 [ceil(n/2), 1], QuantState)``.

    Examples
    --------
    >>> packed, state = quantize_4bit(torch.randn(8, 16), BnbFP4(blocksize=64))
    >>> tuple(packed.shape), tuple(state.absmax.shape)
    ((64, 1), (2,))
    """
    bnb = require_bitsandbytes(cfg, w.device)
    return bnb.functional.quantize_4bit(
        w.detach().float().contiguous(), blocksize=cfg.blocksize, quant_type=cfg.quant_type,
        compress_statistics=cfg.double_quant,
    )


def cpu_kernel_for(cfg: _Bnb4bit, shape: tuple[int, int], device: torch.device | str = "cpu") -> tuple[str, str]:
    """Which bitsandbytes CPU kernel a layer of ``shape`` ``(out, in)`` gets under ``cfg``: ``(kernel, reason)``.

    ``kernel`` is ``"generic"`` or ``"packed"``; ``reason`` (empty when the
    config's choice holds) says why a layer asked to run packed runs generic.
    Off the CPU the choice does not apply (``"generic"``, no reason).
    ``cpu_kernel="packed"`` on a CPU without AVX512-BF16 raises.

    Examples
    --------
    >>> cpu_kernel_for(BnbNF4(), (10, 64))
    ('generic', '')
    """
    from qviz.quant.modules import packed_cpu_kernel_available, packed_cpu_refusal

    if torch.device(device).type != "cpu" or cfg.cpu_kernel == "generic":
        return "generic", ""
    available = packed_cpu_kernel_available()
    if not available:
        if cfg.cpu_kernel == "packed":
            raise RuntimeError(
                f"{cfg.label}: bitsandbytes' packed 4-bit CPU kernel needs a CPU with AVX512-BF16, which this one "
                "lacks. Use cpu_kernel='generic' (the same numbers on every CPU) or cpu_kernel='auto'."
            )
        return "generic", "this CPU has no AVX512-BF16 for the packed kernel"
    refusal = packed_cpu_refusal(shape, cfg.blocksize)
    if refusal is not None:
        return "generic", refusal
    return "packed", ""


class _Bnb4bitMethod(Method):
    controls = ("group_size",)
    needs_inputs = False
    sequential = False
    data_free = True
    layer_types = ("linear",)

    def config_from_controls(self, c: Controls) -> _Bnb4bit:
        """The format with the group-size knob as its block size (per channel: the default 64)."""
        if c.group_size == "tensor":
            raise ValueError(f"{self.label} quantizes in blocks; give a block size such as 64 (not 'tensor').")
        return self.config_type(blocksize=64 if c.group_size is None else c.group_size)

    def fake_quantize(self, w: torch.Tensor, cfg: _Bnb4bit, *, check_finite: bool) -> torch.Tensor | Fused | None:
        """bitsandbytes' arithmetic in one fused pass: the Numba kernel on the CPU, its Triton twin on CUDA.

        None with double quantization (bitsandbytes itself runs) or on another device.
        """
        if cfg.double_quant:
            return None
        if w.device.type == "cpu":
            import numpy as np

            import kernels_numba as kn  # lazy: importing it compiles Numba kernels

            w_hat, _ = kn.fake_quantize_4bit(np.ascontiguousarray(w.numpy()), cfg.blocksize, cfg.quant_type)
            return torch.from_numpy(w_hat)
        from qviz.gpu import available  # lazy: the GPU backend loads Triton

        if available(w):
            from qviz.gpu.fakequant import codebook_blocks

            res = codebook_blocks(w, cfg.blocksize, cfg.quant_type)
            return Fused(res.x_hat, res.zeroed)
        return None

    def format_bits(self, cfg: _Bnb4bit, row_length: int) -> FormatBits:
        """4-bit codes and a float32 absmax per block (double quantization: a uint8 per block plus a float32 per 256)."""
        b = cfg.blocksize
        if cfg.double_quant:
            return FormatBits(
                cfg.label, 4.0, 8 / b + 32 / (b * 256),
                f"a uint8 absmax per block of {b} weights plus a float32 absmax per 256 blocks",
            )
        return FormatBits(cfg.label, 4.0, 32 / b, f"a float32 absmax per block of {b} weights")

    def quantize_layer(self, name: str, module: nn.Module, cfg: _Bnb4bit, inputs: torch.Tensor | None,
                       state: Any) -> LayerQuant:
        """Quantize one Linear with ``quantize_4bit`` and return a ``Bnb4bitLinear`` replacement.

        Which CPU kernel runs is :func:`cpu_kernel_for`'s choice (the config's
        ``cpu_kernel``, the CPU and the layer's shape); the replacement's
        ``kernel`` names it, with the reason when a layer falls back.
        """
        from qviz.quant.modules import bnb_4bit_linear

        require_bitsandbytes(cfg, module.weight.device)
        w = weight_matrix(module).float()  # [out, in]
        kernel, reason = cpu_kernel_for(cfg, tuple(w.shape), w.device)
        new = bnb_4bit_linear(w, module_bias(module), cfg.quant_type, cfg.blocksize, cfg.double_quant, kernel)
        data, qstate = new._canonical_weight()
        w_hat = dequantize_4bit(data, qstate)  # [out, in]
        new.kernel_note = reason
        return LayerQuant(new, w_hat, nbytes_4bit(data, qstate), new.kernel, {})

    def quantize_tensor(self, w: torch.Tensor, cfg: _Bnb4bit) -> tuple:
        """``(code indices uint8 [rows, cols], block absmax, None, nbytes, dequantize)`` of ``w``."""
        packed, qstate = quantize_4bit(w, cfg)
        codes = unpack_4bit(packed, tuple(w.shape))
        return codes, absmax_4bit(qstate), None, nbytes_4bit(packed, qstate), lambda: dequantize_4bit(packed, qstate)

    def storage_nbytes(self, shape: tuple[int, int], cfg: _Bnb4bit) -> int:
        """What :func:`nbytes_4bit` counts for an ``(out, in)`` weight, from the shape alone.

        Codes two per byte; one float32 absmax per block (one byte with
        ``double_quant``, plus a float32 absmax per 256 blocks, the 256-entry
        float32 code table of the nested quantization and its float32 offset);
        the 16-entry float32 code table.

        Examples
        --------
        >>> BnbNF4Method().storage_nbytes((384, 1536), BnbNF4(blocksize=64, double_quant=True))
        305364
        """
        n = int(shape[0]) * int(shape[1])
        blocks = -(-n // cfg.blocksize)
        total = -(-n // 2) + 16 * 4
        if cfg.double_quant:
            return total + blocks + 4 * -(-blocks // 256) + 256 * 4 + 4
        return total + 4 * blocks

    def weight_only(self, cfg: _Bnb4bit) -> bool:
        """True for the generic kernel (``x W_hat^T`` in float32); False when the packed bf16 kernel may run.

        With ``cpu_kernel`` ``"packed"`` or ``"auto"`` the layer's output is not
        ``x W_hat^T`` in float32 (activations and absmax in bfloat16), so
        :func:`qviz.layer_error` measures the real module's output instead.
        """
        return cfg.cpu_kernel == "generic"

    def layer_output(self, lq: LayerQuant, x: torch.Tensor) -> torch.Tensor:
        """The real ``Linear4bit`` output on ``x [tokens, in]``, bias removed."""
        with torch.no_grad():
            return output_without_bias(lq.module, x)


@register(BnbNF4)
class BnbNF4Method(_Bnb4bitMethod):
    """4-bit NormalFloat through bitsandbytes."""

    label = "NF4"
    menu_position = 1


@register(BnbFP4)
class BnbFP4Method(_Bnb4bitMethod):
    """4-bit float (e2m1) through bitsandbytes."""

    label = "FP4"
    menu_position = 2
