"""A weight-only INT4 matrix product on the GPU (Triton): packed 4-bit codes, float16 group scales, uint8 zeros.

The weight is qviz's RTN ``[out, in]`` (asymmetric, ``w_hat = (code - zero) * scale`` per group of
``group`` input columns), stored in a layout made for the kernel: inside each group of a row, byte
``i`` holds column ``i`` in its low nibble and column ``i + group/2`` in its high nibble, so one
load of ``group/2`` bytes unpacks into two contiguous half-groups with no shuffle. Storage is the
same as any packed INT4: ``in/2`` bytes per row plus 2 bytes per scale and 1 per zero point.

* :func:`int4_linear` computes ``y = x @ w_hat.T`` for float16 ``x`` ``[tokens, in]``: at one
  token a GEMV (each program reduces ``BLOCK_N`` output rows over ``in``, using
  ``sum((q - z) x) s = (sum(q x) - z sum(x)) s`` per group, in float32), at more tokens a GEMM
  on the tensor cores (float16 dequantized tiles, float32 accumulation).
* :class:`Int4Linear` is the ``nn.Module`` the cost section swaps in for RTN w4 layers on CUDA.

Batch-1 decoding reads every weight once, so this kernel's floor is the packed bytes over the
memory bandwidth; ``benchmarks/gpu.py`` measures it against fp16 and that roofline.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import nn

_GEMV_CONFIGS = [triton.Config({"BLOCK_N": bn, "GPI": gpi}, num_warps=w, num_stages=st)
                 for bn, gpi, w, st in [(8, 4, 4, 3), (16, 2, 4, 3), (16, 4, 4, 3), (32, 2, 8, 3), (32, 4, 8, 2),
                                        (64, 1, 8, 3), (8, 8, 4, 2), (16, 8, 8, 2)]]
_GEMM_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
                 for bm, bn, w, st in [(16, 64, 4, 3), (32, 64, 4, 3), (32, 128, 4, 3), (64, 64, 4, 3),
                                       (32, 32, 4, 4), (16, 128, 8, 3)]]


@triton.autotune(configs=_GEMV_CONFIGS, key=["N", "K", "GROUP"])
@triton.jit
def _gemv_kernel(x_ptr, p_ptr, s_ptr, z_ptr, y_ptr, N, K: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr,
                 GPI: tl.constexpr):
    # K (the row length) is a compile-time constant: the group loop's trip count
    # x [K] float16; p [N, K/2] uint8 (group-split nibbles); s [N, K/GROUP] float16; z like s, uint8; y [N]
    HALF: tl.constexpr = GROUP // 2
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = n < N
    n_groups = K // GROUP
    gi = tl.arange(0, GPI)
    j = tl.arange(0, HALF)
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for g0 in range(0, n_groups, GPI):
        g = g0 + gi  # [GPI]
        gm = g < n_groups
        # x halves of each group: [GPI, HALF]
        xo = g[:, None] * GROUP + j[None, :]
        x_lo = tl.load(x_ptr + xo, mask=gm[:, None], other=0.0).to(tl.float32)
        x_hi = tl.load(x_ptr + xo + HALF, mask=gm[:, None], other=0.0).to(tl.float32)
        # packed bytes [BLOCK_N, GPI, HALF]
        po = n.to(tl.int64)[:, None, None] * (K // 2) + (g[None, :, None] * HALF + j[None, None, :])
        p = tl.load(p_ptr + po, mask=nm[:, None, None] & gm[None, :, None], other=0).to(tl.int32)
        q_lo = (p & 15).to(tl.float32)
        q_hi = (p >> 4).to(tl.float32)
        qx = tl.sum(q_lo * x_lo[None, :, :] + q_hi * x_hi[None, :, :], axis=2)  # [BLOCK_N, GPI]
        xs = tl.sum(x_lo + x_hi, axis=1)  # [GPI]
        so = n[:, None] * n_groups + g[None, :]
        sm = nm[:, None] & gm[None, :]
        s = tl.load(s_ptr + so, mask=sm, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + so, mask=sm, other=0).to(tl.float32)
        acc += tl.sum((qx - z * xs[None, :]) * s, axis=1)
    tl.store(y_ptr + n, acc.to(tl.float16), mask=nm)


@triton.autotune(configs=_GEMM_CONFIGS, key=["M", "N", "K", "GROUP"])
@triton.jit
def _gemm_kernel(x_ptr, p_ptr, s_ptr, z_ptr, y_ptr, M, N, K: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    # x [M, K] float16; p, s, z as in _gemv_kernel; y [M, N] float16
    HALF: tl.constexpr = GROUP // 2
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = m < M
    nm = n < N
    j = tl.arange(0, HALF)
    n_groups = K // GROUP
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for g in range(0, n_groups):
        xo = m.to(tl.int64)[:, None] * K + g * GROUP + j[None, :]
        x_lo = tl.load(x_ptr + xo, mask=mm[:, None], other=0.0)  # [BLOCK_M, HALF] float16
        x_hi = tl.load(x_ptr + xo + HALF, mask=mm[:, None], other=0.0)
        po = n.to(tl.int64)[None, :] * (K // 2) + g * HALF + j[:, None]  # [HALF, BLOCK_N]: transposed tile
        p = tl.load(p_ptr + po, mask=nm[None, :], other=0).to(tl.int32)
        s = tl.load(s_ptr + n * n_groups + g, mask=nm, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + n * n_groups + g, mask=nm, other=0).to(tl.float32)
        w_lo = (((p & 15).to(tl.float32) - z[None, :]) * s[None, :]).to(tl.float16)
        w_hi = (((p >> 4).to(tl.float32) - z[None, :]) * s[None, :]).to(tl.float16)
        acc = tl.dot(x_lo, w_lo, acc)
        acc = tl.dot(x_hi, w_hi, acc)
    yo = m.to(tl.int64)[:, None] * N + n[None, :]
    tl.store(y_ptr + yo, acc.to(tl.float16), mask=mm[:, None] & nm[None, :])


def pack_int4_groups(codes: torch.Tensor, group: int) -> torch.Tensor:
    """Pack uint8 codes ``[out, in]`` (0..15) into the kernel's layout ``[out, in/2]`` uint8.

    Examples
    --------
    >>> pack_int4_groups(torch.tensor([[1, 2, 3, 4]], dtype=torch.uint8), 4).tolist()
    [[49, 66]]
    """
    out_f, in_f = codes.shape
    if group % 2 or in_f % group:
        raise ValueError(f"group={group} must be even and divide the row length {in_f}.")
    g = codes.reshape(out_f, in_f // group, 2, group // 2)  # [out, n_groups, lo/hi half, group/2]
    return (g[:, :, 0] | (g[:, :, 1] << 4)).reshape(out_f, in_f // 2).contiguous()


def int4_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                group: int) -> torch.Tensor:
    """``x @ w_hat.T`` for float16 ``x`` ``[..., in]`` and a packed INT4 weight; float16 ``[..., out]``.

    Examples
    --------
    >>> y = int4_linear(torch.randn(1, 256, device="cuda", dtype=torch.float16), p, s, z, 128)  # doctest: +SKIP
    """
    K = x.shape[-1]
    N = packed.shape[0]
    x2 = x.reshape(-1, K).to(torch.float16).contiguous()  # [tokens, in]
    M = x2.shape[0]
    y = torch.empty((M, N), dtype=torch.float16, device=x.device)
    if M == 1:
        _gemv_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)](x2, packed, scale, zero, y, N, K, GROUP=group)
    else:
        _gemm_kernel[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]))](
            x2, packed, scale, zero, y, M, N, K, GROUP=group)
    return y.reshape(*x.shape[:-1], N)


class Int4Linear(nn.Module):
    """A weight-only RTN w4 Linear run by :func:`int4_linear` on CUDA (float16 activations).

    Built from the RTN codes of the full-precision weight (:func:`qviz.quant.primitives.fake_quantize_codes`),
    so it computes ``x @ w_hat.T`` for the same ``w_hat`` as the fake-quant layer, up to float16
    rounding of the activations and the summation order. No gradient.
    """

    kernel = "real kernel: qviz Triton INT4 (packed, fp16 group scales)"

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int,
                 bias: torch.Tensor | None) -> None:
        super().__init__()
        self.group = int(group)
        self.out_features, self.in_features = codes.shape
        self.register_buffer("packed", pack_int4_groups(codes, group))  # [out, in/2] uint8
        self.register_buffer("scale", scale.to(torch.float16).contiguous())  # [out, in/group]
        self.register_buffer("zero", zero.to(torch.uint8).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float16).clone())

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        y = int4_linear(x, self.packed, self.scale, self.zero, self.group)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    @property
    def nbytes(self) -> int:
        """Stored bytes: packed codes, float16 scales, uint8 zeros."""
        return self.packed.numel() + 2 * self.scale.numel() + self.zero.numel()


def int4_layer(module: nn.Module, group: int) -> Int4Linear | None:
    """An :class:`Int4Linear` for an ``nn.Linear`` on CUDA (RTN w4 asymmetric, ``group`` columns), else None."""
    from qviz.gpu import available
    from qviz.quant.granularity import PerGroup
    from qviz.quant.primitives import fake_quantize_codes

    if not isinstance(module, nn.Linear) or not available(module.weight):
        return None
    w = module.weight.detach().float()  # [out, in]
    if w.shape[1] % group or group % 2:
        return None
    _, codes, qp = fake_quantize_codes(w, PerGroup(group), 4, symmetric=False)
    return Int4Linear(codes, qp.scale, qp.zero, group, module.bias)


def tinygemm_pack(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int,
                  inner_k_tiles: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The same RTN w4 weight in torch's tinygemm format (``torch._weight_int4pack_mm``; bf16 scales).

    tinygemm dequantizes ``(q - 8) * scale + offset``; qviz's ``(q - zero) * scale`` is that with
    ``offset = (8 - zero) * scale``. Both are stored in bfloat16 there, so the tinygemm weight is
    qviz's rounded to bf16's 8-bit mantissa (a peer reference for speed, not bit-identical).
    """
    out_f, in_f = codes.shape
    c = codes.to(torch.int32)
    w_u8 = ((c[:, ::2] << 4) | c[:, 1::2]).to(torch.uint8)  # [out, in/2], even column in the high nibble
    packed = torch._convert_weight_to_int4pack(w_u8.contiguous(), inner_k_tiles)
    s = scale.float()
    off = (8.0 - zero.float()) * s
    sz = torch.stack([s, off], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)  # [n_groups, out, 2]
    return packed, sz


__all__ = ["Int4Linear", "int4_layer", "int4_linear", "pack_int4_groups", "tinygemm_pack"]
