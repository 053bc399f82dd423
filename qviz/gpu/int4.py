"""A weight-only INT4 matrix product on the GPU (Triton): packed 4-bit codes, float16 group scales, uint8 zeros.

The weight is qviz's RTN ``[out, in]`` (asymmetric, ``w_hat = (code - zero) * scale`` per group of
``group`` input columns), stored as int32 words of 8 codes (nibble ``t`` of word ``w`` is column
``8w + t``): one 4-byte load per 8 weights, unpacked by shifts. Storage is that of any packed
INT4: ``in/2`` bytes per row plus 2 bytes per float16 scale and 1 per zero point.

* :func:`int4_linear` computes ``y = x @ w_hat.T`` for float16 ``x`` ``[tokens, in]``. At one
  token it is a GEMV: a small prep kernel writes ``x`` once as float32, each nibble position's
  columns scaled by a power of 16, and each group's ``sum(x)``; then each program reduces
  ``BLOCK_N`` whole output rows, three instructions per weight (one LOP3 puts the nibble, unshifted,
  under the exponent of 2**23; one FADD removes 2**23; one FFMA multiplies by the pre-scaled x, which
  undoes the nibble's power of 16 exactly), with ``sum((q - z) x) s = (sum(q x) - z sum(x)) s`` per
  group in float32. At more tokens a GEMM on the tensor cores (float16 dequantized tiles of 16 words,
  one K=16 product per nibble position, float32 accumulation).
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

_GEMV_CONFIGS = [triton.Config({"BLOCK_N": bn, "GPI": gpi, "PREFETCH": pf}, num_warps=w, num_stages=1)
                 for bn, gpi, w in [(4, 8, 2), (8, 8, 2), (8, 8, 4), (16, 8, 4), (16, 8, 8), (8, 16, 4), (32, 8, 8)]
                 for pf in (0, 1)]
_GEMM_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
                 for bm, bn, w, st in [(16, 64, 4, 3), (32, 64, 4, 3), (32, 128, 4, 3), (64, 64, 4, 3),
                                       (32, 32, 4, 4), (16, 128, 8, 3)]]
_MAGIC = 0x4B000000  # the bits of 2**23 as float32; passed at run time so that one LOP3 does the AND and the OR


@triton.jit
def _nibble(words, t: tl.constexpr):
    """Nibble ``t`` of int32 ``words`` as float32, exactly: OR-ing it into the mantissa of 2**23 and
    subtracting 2**23 (two full-rate ops instead of a quarter-rate int-to-float conversion)."""
    return (((words >> (4 * t)) & 15) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _nibble_scaled(words, high, t: tl.constexpr, magic):
    """Nibble ``t`` of ``words`` times ``16**e`` as float32, exactly, in one LOP3 and one FADD: the nibble is
    masked in place (no shift) and OR-ed under the exponent of 2**23. ``e = t`` for ``t < 5``; nibbles 5-7,
    whose bits would reach the exponent, are taken from ``high = words >> 12`` with ``e = t - 3``."""
    if t < 5:
        bits = (words & (15 << (4 * t))) | magic
    else:
        bits = (high & (15 << (4 * (t - 3)))) | magic
    return bits.to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _gemv_prep_kernel(x_ptr, xs_ptr, xg_ptr, K: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr):
    # The GEMV's activations, once per call: xs[t, w] = x[8w + t] * 16**-e (float32, e as in _nibble_scaled,
    # so that nibble t times xs[t, w] is code * x exactly) and xg[g] = the sum of x over group g.
    KW: tl.constexpr = K // 8
    WPG: tl.constexpr = GROUP // 8
    NG: tl.constexpr = K // GROUP
    g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    gm = g < NG
    w = g[:, None] * WPG + tl.arange(0, WPG)[None, :]  # [BLOCK_G, WPG] word index
    total = tl.zeros((BLOCK_G, WPG), tl.float32)
    for t in tl.static_range(8):
        xt = tl.load(x_ptr + w * 8 + t, mask=gm[:, None], other=0.0).to(tl.float32)
        total += xt
        if t < 5:
            xt = xt * (1.0 / (1 << (4 * t)))
        else:
            xt = xt * (1.0 / (1 << (4 * (t - 3))))
        tl.store(xs_ptr + t * KW + w, xt, mask=gm[:, None])
    tl.store(xg_ptr + g, tl.sum(total, axis=1), mask=gm)


@triton.jit
def _gemv_kernel(xs_ptr, xg_ptr, p_ptr, s_ptr, z_ptr, y_ptr, N, magic, K: tl.constexpr, GROUP: tl.constexpr,
                 BLOCK_N: tl.constexpr, GPI: tl.constexpr, PREFETCH: tl.constexpr):
    # Program j reduces output rows j*BLOCK_N.. over the whole row. Its tile is BLOCK_N*GPI "virtual rows"
    # of one group's words each: virtual row r is group (step + r % GPI) of output row r // GPI, so the
    # GPI virtual rows of one output row are one contiguous stretch of memory (a warp reads GPI*GROUP/2
    # bytes in a run) and every sum over a tile row is one group's sum(q x), with no reshape.
    # sum((q - z) x) s = (sum(q x) - z sum(x)) s per group, in float32; sum(x) per group comes from
    # the prep kernel. With PREFETCH the next step's words are loaded before this step's arithmetic.
    # xs [8, K/8] and xg [K/GROUP] float32 (the prep kernel's); p [N, K/8] int32 words (nibble t of
    # word w = column 8w + t); s [N, K/GROUP] float16; z like s, uint8; y [N] float16.
    WPG: tl.constexpr = GROUP // 8  # words per group
    NG: tl.constexpr = K // GROUP
    KW: tl.constexpr = K // 8
    R: tl.constexpr = BLOCK_N * GPI
    r = tl.arange(0, R)
    row = tl.program_id(0) * BLOCK_N + r // GPI  # [R] output row of each virtual row
    gl = r % GPI
    rm = row < N
    wi = tl.arange(0, WPG)
    base = p_ptr + row.to(tl.int64)[:, None] * KW + wi[None, :]
    acc = tl.zeros((R,), tl.float32)
    if PREFETCH:
        nxt = tl.load(base + gl[:, None] * WPG, mask=(rm & (gl < NG))[:, None], other=0)
    for step in range(0, NG, GPI):
        g = step + gl  # [R] group of each virtual row
        gm = rm & (g < NG)
        wcol = g[:, None] * WPG + wi[None, :]  # [R, WPG] word index in the row
        if PREFETCH:
            words = nxt
            nxt = tl.load(base + (g + GPI)[:, None] * WPG, mask=(rm & (g + GPI < NG))[:, None], other=0)
        else:
            words = tl.load(base + g[:, None] * WPG, mask=gm[:, None], other=0)
        so = row * NG + g
        sc = tl.load(s_ptr + so, mask=gm, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + so, mask=gm, other=0).to(tl.float32)
        xg = tl.load(xg_ptr + g, mask=gm, other=0.0)
        high = words >> 12
        qx = tl.zeros((R, WPG), tl.float32)
        for t in tl.static_range(8):
            xt = tl.load(xs_ptr + t * KW + wcol, mask=gm[:, None], other=0.0)
            qx += _nibble_scaled(words, high, t, magic) * xt
        acc += (tl.sum(qx, axis=1) - z * xg) * sc
    y = tl.sum(tl.reshape(acc, (BLOCK_N, GPI)), axis=1)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(y_ptr + n, y.to(tl.float16), mask=n < N)


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


_GEMV_TUNED = triton.autotune(configs=_GEMV_CONFIGS, key=["N", "K", "GROUP"])(_gemv_kernel)
_GEMM_TUNED = triton.autotune(configs=_GEMM_CONFIGS, key=["M", "N", "K", "GROUP"])(_gemm_kernel)
_CHOSEN: dict[tuple, triton.Config] = {}  # (kernel, shape..., device) -> the config the autotuner chose


def _launch(tuned: Any, key: tuple, grid: Any, args: tuple, constants: dict[str, Any]) -> None:
    """Run ``tuned`` (a ``triton.autotune`` wrapper): through the autotuner the first time a shape is seen,
    then as a plain launch of the chosen config. The autotuner's own per-call work costs about 80 µs of
    host time on an H200 machine, several times the kernel's run at batch 1."""
    cfg = _CHOSEN.get(key)
    if cfg is None:
        tuned[grid](*args, **constants)
        _CHOSEN[key] = tuned.best_config
        return
    tuned.fn[grid(cfg.kwargs)](*args, **constants, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def chosen_config(kernel: str, *shape: Any) -> triton.Config | None:
    """The config the autotuner chose for ``kernel`` ("gemv" or "gemm") at ``shape`` (as :func:`int4_linear`
    keys it: ``(N, K, group, device)`` or ``(M, N, K, group, device)``), or None before its first call."""
    return _CHOSEN.get((kernel, *shape))


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
        kw, ng = K // 8, K // group
        xs = torch.empty(8 * kw + ng, dtype=torch.float32, device=x.device)  # scaled x, then its group sums
        _gemv_prep_kernel[(triton.cdiv(ng, 16),)](x2, xs, xs[8 * kw:], K, GROUP=group, BLOCK_G=16)
        y = torch.empty((1, N), dtype=torch.float16, device=x.device)
        _launch(_GEMV_TUNED, ("gemv", N, K, group, x.device), lambda c: (triton.cdiv(N, c["BLOCK_N"]),),
                (xs, xs[8 * kw:], packed, scale, zero, y, N, _MAGIC, K), {"GROUP": group})
    else:
        y = torch.empty((M, N), dtype=torch.float16, device=x.device)
        _launch(_GEMM_TUNED, ("gemm", M, N, K, group, x.device),
                lambda c: (triton.cdiv(M, c["BLOCK_M"]), triton.cdiv(N, c["BLOCK_N"])),
                (x2, packed, scale, zero, y, M, N, K), {"GROUP": group})
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
