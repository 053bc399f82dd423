"""A weight-only INT4 matrix product on the GPU (Triton): packed 4-bit codes, float16 group scales, uint8 zeros.

The weight is qviz's RTN ``[out, in]`` (asymmetric, ``w_hat = (code - zero) * scale`` per group of
``group`` input columns), stored as int32 words of 8 codes (nibble ``t`` of word ``w`` is column
``8w + t``): one 4-byte load per 8 weights, unpacked by shifts. Storage is that of any packed
INT4: ``in/2`` bytes per row plus 2 bytes per float16 scale and 1 per zero point.

* :func:`int4_linear` computes ``y = x @ w_hat.T`` for float16 ``x`` ``[tokens, in]``: at one
  token a GEMV (each program reduces ``BLOCK_N`` output rows over one of ``SPLIT`` stretches of ``in``, using
  ``sum((q - z) x) s = (sum(q x) - z sum(x)) s`` per group, in float32), at more tokens a GEMM
  on the tensor cores (float16 dequantized tiles of 16 words, one K=16 product per nibble
  position, float32 accumulation).
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

_GEMV_CONFIGS = [triton.Config({"BLOCK_N": bn, "GPI": gpi, "SPLIT": sp}, num_warps=w, num_stages=st)
                 for bn, gpi, sp, w, st in [
                     (4, 4, 1, 4, 3), (8, 4, 1, 4, 3), (16, 4, 1, 4, 3), (16, 2, 1, 4, 4), (32, 2, 1, 8, 3),
                     (8, 4, 2, 4, 3), (16, 4, 2, 4, 3), (32, 4, 2, 8, 3), (8, 8, 2, 4, 2),
                     (8, 2, 4, 4, 4), (16, 2, 4, 4, 3), (16, 4, 4, 4, 3), (32, 2, 4, 8, 3), (64, 2, 4, 8, 2),
                     (4, 8, 4, 4, 2), (16, 2, 8, 4, 3), (32, 1, 8, 4, 3), (64, 1, 8, 8, 2), (8, 4, 8, 4, 3)]]
_GEMM_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
                 for bm, bn, w, st in [(16, 64, 4, 3), (32, 64, 4, 3), (32, 128, 4, 3), (64, 64, 4, 3),
                                       (32, 32, 4, 4), (16, 128, 8, 3)]]


@triton.jit
def _nibble(words, t: tl.constexpr):
    """Nibble ``t`` of int32 ``words`` as float32, exactly: OR-ing it into the mantissa of 2**23 and
    subtracting 2**23 (two full-rate ops instead of a quarter-rate int-to-float conversion)."""
    return (((words >> (4 * t)) & 15) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


@triton.autotune(configs=_GEMV_CONFIGS, key=["N", "K", "GROUP"], reset_to_zero=["y_ptr"])
@triton.jit
def _gemv_kernel(x_ptr, p_ptr, s_ptr, z_ptr, y_ptr, N, K: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr,
                 GPI: tl.constexpr, SPLIT: tl.constexpr):
    # Program (j, k) reduces output rows j*BLOCK_N.. over the k-th of SPLIT contiguous stretches of the row,
    # GPI groups per step, and adds its sums into y (float32, zeroed by the caller) by atomics (a plain
    # store when SPLIT is 1). Each row stretch is read front to back, so the reads stream; more than
    # one stretch per row gives the memory system more programs in flight.
    # K (the row length) is a compile-time constant.
    # x [K] float16; p [N, K/8] int32 words (nibble t of word w = column 8w + t);
    # s [N, K/GROUP] float16; z like s, uint8; y [N] float32
    WPG: tl.constexpr = GROUP // 8  # words per group
    NG: tl.constexpr = K // GROUP
    KW: tl.constexpr = K // 8
    NGS: tl.constexpr = (NG + SPLIT - 1) // SPLIT  # groups per stretch
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = n < N
    g_lo = tl.program_id(1) * NGS
    g_hi = tl.minimum(g_lo + NGS, NG)
    wi = tl.arange(0, GPI * WPG)
    gi = tl.arange(0, GPI)
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for g0 in range(g_lo, g_hi, GPI):
        w = g0 * WPG + wi  # [GPI * WPG] word index in the row
        wm = w < g_hi * WPG
        words = tl.load(p_ptr + n.to(tl.int64)[:, None] * KW + w[None, :], mask=nm[:, None] & wm[None, :], other=0)
        qx = tl.zeros((BLOCK_N, GPI * WPG), tl.float32)
        xs = tl.zeros((GPI * WPG,), tl.float32)
        for t in tl.static_range(8):
            xt = tl.load(x_ptr + w * 8 + t, mask=wm, other=0.0).to(tl.float32)
            qx += _nibble(words, t) * xt[None, :]
            xs += xt
        qg = tl.sum(tl.reshape(qx, (BLOCK_N, GPI, WPG)), axis=2)  # [BLOCK_N, GPI]: sum(q x) per group
        xg = tl.sum(tl.reshape(xs, (GPI, WPG)), axis=1)  # [GPI]: sum(x) per group
        g = g0 + gi
        sm = nm[:, None] & (g < g_hi)[None, :]
        so = n[:, None] * NG + g[None, :]
        sc = tl.load(s_ptr + so, mask=sm, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + so, mask=sm, other=0).to(tl.float32)
        acc += tl.sum((qg - z * xg[None, :]) * sc, axis=1)  # sum((q - z) x) s = (sum(q x) - z sum(x)) s
    if SPLIT == 1:
        tl.store(y_ptr + n, acc, mask=nm)
    else:
        tl.atomic_add(y_ptr + n, acc, mask=nm)


@triton.autotune(configs=_GEMM_CONFIGS, key=["M", "N", "K", "GROUP"])
@triton.jit
def _gemm_kernel(x_ptr, p_ptr, s_ptr, z_ptr, y_ptr, M, N, K: tl.constexpr, GROUP: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # x [M, K] float16; p, s, z as in _gemv_kernel; y [M, N] float16. K in steps of 128 columns (16 words):
    # for each nibble position t, the 16 columns 8w + t make one K=16 tensor-core product.
    WPG: tl.constexpr = GROUP // 8
    NG: tl.constexpr = K // GROUP
    KW: tl.constexpr = K // 8
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = m < M
    nm = n < N
    wi = tl.arange(0, 16)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for w0 in range(0, KW, 16):
        w = w0 + wi  # [16] word indices
        wmask = nm[None, :] & (w < KW)[:, None]
        words = tl.load(p_ptr + n.to(tl.int64)[None, :] * KW + w[:, None], mask=wmask, other=0)  # [16, BLOCK_N]
        so = n[None, :] * NG + (w // WPG)[:, None]  # the group of each word
        sc = tl.load(s_ptr + so, mask=wmask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + so, mask=wmask, other=0).to(tl.float32)
        for t in tl.static_range(8):
            wt = ((_nibble(words, t) - z) * sc).to(tl.float16)  # [16, BLOCK_N]
            xt = tl.load(x_ptr + m.to(tl.int64)[:, None] * K + (w * 8 + t)[None, :],
                         mask=mm[:, None] & (w < KW)[None, :], other=0.0)
            acc = tl.dot(xt, wt, acc)
    yo = m.to(tl.int64)[:, None] * N + n[None, :]
    tl.store(y_ptr + yo, acc.to(tl.float16), mask=mm[:, None] & nm[None, :])


def pack_int4_groups(codes: torch.Tensor, group: int) -> torch.Tensor:
    """Pack uint8 codes ``[out, in]`` (0..15) into the kernels' layout: int32 words ``[out, in/8]``.

    Nibble ``t`` (bits ``4t .. 4t+3``) of word ``w`` is column ``8w + t``; a group of ``group``
    columns (a multiple of 16, dividing ``in``) is ``group/8`` whole words.

    Examples
    --------
    >>> hex(int(pack_int4_groups(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8] * 2], dtype=torch.uint8), 16)[0, 0]) & 0xFFFFFFFF)
    '0x87654321'
    """
    out_f, in_f = codes.shape
    if group % 16 or in_f % group:
        raise ValueError(f"group={group} must be a multiple of 16 and divide the row length {in_f}.")
    c = codes.to(torch.int64).reshape(out_f, in_f // 8, 8)
    shifts = torch.arange(0, 32, 4, device=codes.device, dtype=torch.int64)
    words = (c << shifts).sum(-1)  # [out, in/8], < 2**32
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).contiguous()


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
    if M == 1:
        y32 = torch.zeros(N, dtype=torch.float32, device=x.device)
        _gemv_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), meta["SPLIT"])](
            x2, packed, scale, zero, y32, N, K, GROUP=group)
        y = y32.to(torch.float16).reshape(1, N)
    else:
        y = torch.empty((M, N), dtype=torch.float16, device=x.device)
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
        self.register_buffer("packed", pack_int4_groups(codes, group))  # [out, in/8] int32
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
        return 4 * self.packed.numel() + 2 * self.scale.numel() + self.zero.numel()


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


__all__ = ["Int4Linear", "int4_linear", "pack_int4_groups", "tinygemm_pack"]
