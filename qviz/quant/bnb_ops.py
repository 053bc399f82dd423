"""bitsandbytes' 4-bit format arithmetic on stored weights: dequantize (the same numbers on every CPU), unpack, count bytes.

The arithmetic of a bitsandbytes NF4/FP4 weight back to float32 lives here,
below both the method (:mod:`qviz.quant.bnb`) and the replacement module
(:class:`qviz.quant.modules.Bnb4bitLinear`) that use it.

Examples
--------
>>> import torch, bitsandbytes.functional as bf
>>> packed, state = bf.quantize_4bit(torch.ones(4, 64), blocksize=64, quant_type="nf4")
>>> dequantize_4bit(packed, state).unique().tolist()
[1.0]
"""

from __future__ import annotations

from typing import Any

import torch


def _portable_cpu_ops() -> tuple[Any, Any] | None:
    # bitsandbytes' own torch implementations of its dequantization (its "default" backend, the
    # reference its native kernels fall back to). On the CPU its native kernels dispatch by
    # instruction set at run time, and on AVX-512 CPUs they give other numbers for some shapes;
    # these give bitsandbytes' arithmetic on every CPU. None where a bitsandbytes version lacks them.
    # bitsandbytes wraps them in torch.compile (a compile per new shape, seconds each on a small
    # CPU); ``__wrapped__`` is the plain eager function, the same elementwise arithmetic.
    try:
        from bitsandbytes.backends.default.ops import _dequantize_4bit_compute, _dequantize_blockwise_compute
    except ImportError:
        return None
    return (getattr(_dequantize_4bit_compute, "__wrapped__", _dequantize_4bit_compute),
            getattr(_dequantize_blockwise_compute, "__wrapped__", _dequantize_blockwise_compute))


def absmax_4bit(state: Any) -> torch.Tensor:
    """Per-block absmax as float32 ``[n_blocks]`` (dequantized from the nested table with ``double_quant``)."""
    import bitsandbytes.functional as bf

    if not getattr(state, "nested", False):
        return state.absmax.float()
    ops = _portable_cpu_ops()
    if state.absmax.device.type == "cpu" and ops is not None:
        s2 = state.state2
        nested = ops[1](state.absmax.reshape(-1), s2.absmax, s2.code, s2.blocksize, torch.float32)
        return nested + state.offset
    return bf.dequantize_blockwise(state.absmax, state.state2).float() + state.offset


def dequantize_4bit(packed: torch.Tensor, state: Any) -> torch.Tensor:
    """bitsandbytes' dequantization of a 4-bit weight: float32 ``[out, in]``, the same on every CPU.

    On the CPU this runs bitsandbytes' own torch implementation (its native
    kernels pick an AVX-512 path by CPU and differ from it on some shapes);
    elsewhere bitsandbytes' device kernel.

    Examples
    --------
    >>> import bitsandbytes.functional as bf
    >>> packed, state = bf.quantize_4bit(torch.ones(4, 64), blocksize=64, quant_type="nf4")
    >>> dequantize_4bit(packed, state).unique().tolist()
    [1.0]
    """
    import bitsandbytes.functional as bf

    ops = _portable_cpu_ops()
    if packed.device.type == "cpu" and ops is not None:
        if packed.dtype != torch.uint8:
            packed = packed.view(torch.uint8)
        code = state.code.to(torch.float32)
        return ops[0](packed.reshape(-1), absmax_4bit(state), code, state.blocksize, tuple(state.shape),
                      torch.float32)
    return bf.dequantize_4bit(packed, state).float()


def unpack_4bit(packed: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """bitsandbytes' packed bytes -> code indices ``uint8 [out, in]`` (first code in the high nibble).

    Examples
    --------
    >>> unpack_4bit(torch.tensor([[0x12], [0x30]], dtype=torch.uint8), (1, 3)).tolist()
    [[1, 2, 3]]
    """
    flat = packed.reshape(-1)
    codes = torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1)  # [2 * n_bytes]
    n = shape[0] * shape[1]
    return codes[:n].reshape(shape).to(torch.uint8)


def nbytes_4bit(packed: torch.Tensor, state: Any) -> int:
    """Every stored byte of a bitsandbytes 4-bit weight: codes, absmax, code tables, nested statistics."""
    total = packed.numel() * packed.element_size()
    total += state.absmax.numel() * state.absmax.element_size()
    total += state.code.numel() * state.code.element_size()  # the 16-entry code table
    if getattr(state, "nested", False):
        total += state.state2.absmax.numel() * state.state2.absmax.element_size()
        total += state.state2.code.numel() * state.state2.code.element_size()
        total += 4  # float32 offset
    return int(total)
