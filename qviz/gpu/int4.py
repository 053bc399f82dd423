"""A weight-only INT4 matrix product on the GPU (Triton): packed 4-bit codes, float16 group scales, uint8 zeros.

The weight is qviz's RTN ``[out, in]`` (asymmetric, ``w_hat = (code - zero) * scale`` per group of
``group`` input columns), stored as int32 words of 8 codes (nibble ``t`` of word ``w`` is column
``8w + t``): one 4-byte load per 8 weights, unpacked by shifts. :func:`int4_pack` lays the words
out K-major, ``[in/8, out]`` (scales and zeros ``[in/group, out]``), so that a tile of the
reduction reads runs of consecutive output columns. Storage is that of any packed INT4: ``in/2``
bytes per row plus 2 bytes per float16 scale and 1 per zero point.

* :func:`int4_linear` computes ``y = x @ w_hat.T`` for float16 ``x`` ``[tokens, in]``: at one
  token a split-K GEMV (each program takes ``BLOCK_N`` output columns over a few groups of the
  reduction, ``sum((q - z) x) s = (sum(q x) - z sum(x)) s`` per group in float32, partial sums
  added by float32 atomics), at more tokens a GEMM
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

_GEMV_CONFIGS = [triton.Config({"BLOCK_N": bn, "GPB": gpb, "ITERS": it}, num_warps=w, num_stages=st)
                 for bn, gpb, it, w, st in [
                     (64, 1, 1, 4, 1), (128, 1, 1, 4, 1), (256, 1, 1, 8, 1), (128, 2, 1, 8, 1), (64, 2, 1, 4, 1),
                     (128, 1, 2, 4, 2), (128, 1, 4, 4, 3), (256, 1, 2, 8, 2), (64, 1, 4, 4, 3), (256, 2, 1, 8, 1),
                     (32, 2, 2, 4, 2), (128, 2, 2, 8, 2), (64, 2, 4, 4, 2), (512, 1, 1, 8, 1)]]
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
                 GPB: tl.constexpr, ITERS: tl.constexpr):
    # Split-K GEMV over the K-major layout: program (j, k) takes output columns j*BLOCK_N.. and ITERS steps
    # of GPB groups of the reduction, and adds its sums into y (float32, zeroed by the caller) by atomics.
    # Each step reads a [GPB*GROUP/8, BLOCK_N] tile of words whose rows are BLOCK_N consecutive words:
    # long coalesced runs, thousands of programs in flight.
    # x [K] float16; p [K/8, N] int32 (nibble t of word [w, n] = weight (n, 8w + t));
    # s [K/GROUP, N] float16; z like s, uint8; y [N] float32
    WPG: tl.constexpr = GROUP // 8  # words per group
    WB: tl.constexpr = GPB * WPG  # words per step
    NG: tl.constexpr = K // GROUP
    KW: tl.constexpr = K // 8
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = n < N
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for it in tl.static_range(ITERS):
        gb = (tl.program_id(1) * ITERS + it) * GPB  # first group of this step
        w = gb * WPG + tl.arange(0, WB)
        wm = w < KW
        words = tl.load(p_ptr + w.to(tl.int64)[:, None] * N + n[None, :], mask=wm[:, None] & nm[None, :], other=0)
        qx = tl.zeros((WB, BLOCK_N), tl.float32)
        xs = tl.zeros((WB,), tl.float32)
        for t in tl.static_range(8):
            xt = tl.load(x_ptr + w * 8 + t, mask=wm, other=0.0).to(tl.float32)
            qx += _nibble(words, t) * xt[:, None]
            xs += xt
        qg = tl.sum(tl.reshape(qx, (GPB, WPG, BLOCK_N)), axis=1)  # [GPB, BLOCK_N]: sum(q x) per group
        xg = tl.sum(tl.reshape(xs, (GPB, WPG)), axis=1)  # [GPB]: sum(x) per group
        g = gb + tl.arange(0, GPB)
        sm = (g < NG)[:, None] & nm[None, :]
        so = g[:, None] * N + n[None, :]
        sc = tl.load(s_ptr + so, mask=sm, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + so, mask=sm, other=0).to(tl.float32)
        acc += tl.sum((qg - z * xg[:, None]) * sc, axis=0)  # sum((q - z) x) s = (sum(q x) - z sum(x)) s
    tl.atomic_add(y_ptr + n, acc, mask=nm)


@triton.autotune(configs=_GEMM_CONFIGS, key=["M", "N", "K", "GROUP"])
@triton.jit
def _gemm_kernel(x_ptr, p_ptr, s_ptr, z_ptr, y_ptr, M, N, K: tl.constexpr, GROUP: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # x [M, K] float16; p [K/8, N], s and z [K/GROUP, N] as in _gemv_kernel; y [M, N] float16. K in steps of
    # 128 columns (16 words):
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
        words = tl.load(p_ptr + w.to(tl.int64)[:, None] * N + n[None, :], mask=wmask, other=0)  # [16, BLOCK_N]
        so = (w // WPG)[:, None] * N + n[None, :]  # the group of each word
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


def int4_pack(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
              group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RTN w4 codes ``[out, in]`` with scales/zeros ``[out, in/group]`` in the kernels' K-major layout.

    Returns ``(words [in/8, out] int32, scale [in/group, out] float16, zero [in/group, out] uint8)``:
    :func:`pack_int4_groups`' words transposed, so that a tile of the reduction reads whole runs of
    consecutive output columns.

    Examples
    --------
    >>> w, s, z = int4_pack(torch.zeros(4, 32, dtype=torch.uint8), torch.ones(4, 2), torch.zeros(4, 2), 16)
    >>> w.shape, s.shape, s.dtype
    (torch.Size([4, 4]), torch.Size([2, 4]), torch.float16)
    """
    words = pack_int4_groups(codes, group)  # [out, in/8]
    return (words.t().contiguous(), scale.to(torch.float16).t().contiguous(), zero.to(torch.uint8).t().contiguous())


def int4_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                group: int) -> torch.Tensor:
    """``x @ w_hat.T`` for float16 ``x`` ``[..., in]`` and an INT4 weight from :func:`int4_pack`; float16 ``[..., out]``.

    Examples
    --------
    >>> y = int4_linear(torch.randn(1, 256, device="cuda", dtype=torch.float16), *int4_pack(c, s, z, 128), 128)  # doctest: +SKIP
    """
    K = x.shape[-1]
    N = packed.shape[1]
    x2 = x.reshape(-1, K).to(torch.float16).contiguous()  # [tokens, in]
    M = x2.shape[0]
    if M == 1:
        y32 = torch.zeros(N, dtype=torch.float32, device=x.device)
        _gemv_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(K // group, meta["GPB"] * meta["ITERS"]))](
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
        packed, scale_t, zero_t = int4_pack(codes, scale, zero, group)
        self.register_buffer("packed", packed)  # [in/8, out] int32
        self.register_buffer("scale", scale_t)  # [in/group, out] float16
        self.register_buffer("zero", zero_t)  # [in/group, out] uint8
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


__all__ = ["Int4Linear", "int4_linear", "int4_pack", "pack_int4_groups", "tinygemm_pack"]
