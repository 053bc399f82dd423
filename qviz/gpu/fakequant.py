"""Fused fake-quant on the GPU (Triton): one read of the weights, one write of the result.

Two kernel patterns cover the formats that exist so far:

* **affine groups** (:func:`rtn_groups`): RTN with one float16 scale and a uint8 zero point per
  group of consecutive values; the arithmetic of :mod:`kernels_numba.rtn` step for step
  (``lo = min(x, 0)``, ``hi = max(x, 0)`` in float32, the scale in float64 rounded once to
  float16 by :func:`kernels_numba._common.store_scale`'s rule, ``code = clamp(rint(x * (1/s)) +
  z, qmin, qmax)`` with a correctly rounded float32 reciprocal, ``x_hat = (code - z) * s``);
* **absmax code books** (:func:`codebook_blocks`): blocks of ``blocksize`` values scaled by
  their absmax and bucketed against the midpoints of a sorted code book (a value on a
  midpoint goes to the lower entry), the arithmetic of :mod:`kernels_numba.nf4` (bitsandbytes'
  NF4 and FP4; the short last block divides instead of multiplying by the reciprocal). Any
  sorted code book of up to 256 entries runs through it.

Both are bit-identical to the Numba kernels (tests/gpu/test_fakequant_gpu.py checks every value
on the GPU). Each program handles several groups (a tile of about 4096 values), so the
kernel streams at close to the copy bandwidth. Inputs are float32, contiguous, on CUDA; they are
never written to. Non-finite inputs and float16 scale overflow are reported through one flag
word read once at the end (one host synchronisation per call), then raised as the CPU path does;
the same word says whether the input had nonzero values and the output none (``zeroed``), so the
caller's all-zero warning needs no second pass over either tensor.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl

from kernels_numba._common import F16_MAX, F16_MIN_SUBNORMAL
from qviz.gpu._math import rint as _rint

_FLAG_NONFINITE = 1
_FLAG_OVERFLOW = 2
_FLAG_X_NONZERO = 4  # some input value is nonzero
_FLAG_XHAT_NONZERO = 8  # some dequantized value is nonzero (set only where x_hat is computed)
TILE = 2048  # values per program (the best of 1024..8192 on an H200, benchmarks/gpu.py)
WARPS = 4  # warps per program (likewise)
MAX_GROUP = 16384  # widest group one program holds in registers


# ----------------------------------------------------------------------------- JIT helpers

@triton.jit
def _pow2(k):
    """``2.0**k`` as float64 for int32 ``k`` in float64's normal range (exact, from the bits)."""
    return ((k + 1023).to(tl.int64) << 52).to(tl.float64, bitcast=True)


@triton.jit
def _ilog2(v):
    """``floor(log2(v))`` of a positive normal float64, from its exponent bits."""
    return ((v.to(tl.int64, bitcast=True) >> 52) & 0x7FF).to(tl.int32) - 1023


@triton.jit
def _store_scale_f16(scale, steps):
    """kernels_numba._common.store_scale(scale, f16=True, steps) for float64 ``scale >= 0``.

    Nearest float16 value (ties to even; spacing 2**-24 among subnormals), +inf past
    float16's range, 0 -> 2**-24, rounded up one step when nearest would leave the grid of
    ``steps`` steps short of its range by more than half a step; an all-zero range -> 1.
    """
    s = tl.maximum(_ilog2(scale) - 10, -24)  # float16 keeps 11 significant bits
    r = _rint(scale * _pow2(-s)) * _pow2(s)
    r = tl.where(r > 65504.0, float("inf"), r)
    r = tl.where(r == 0.0, 5.960464477539063e-08, r)
    spacing = tl.where(r < 6.103515625e-05, 5.960464477539063e-08, _pow2(_ilog2(r) - 10))
    r = tl.where((scale - r) * steps > 0.5 * r, r + spacing, r)
    return tl.where(scale == 0.0, 1.0, r)


@triton.jit
def _set_flags(flag_ptr, bits):
    """OR ``bits`` into the call's flag word; a plain read first, so that once a bit is set the programs that
    follow skip the atomic (thousands of programs would otherwise queue on one address)."""
    if bits != 0:
        if (bits & ~tl.load(flag_ptr)) != 0:
            tl.atomic_or(flag_ptr, bits)


@triton.jit
def _rtn_groups_kernel(x_ptr, xhat_ptr, codes_ptr, scale_ptr, zero_ptr, flag_ptr, sse_ptr, sig_ptr, mx_ptr,
                       n_groups, group, param_stride,
                       BITS: tl.constexpr, SYMMETRIC: tl.constexpr, HAVE_PARAMS: tl.constexpr,
                       WRITE_XHAT: tl.constexpr, WRITE_CODES: tl.constexpr, WRITE_STATS: tl.constexpr,
                       GPP: tl.constexpr, BLOCK: tl.constexpr):
    # x [n_groups * group] float32 (group g = values g*group .. g*group+group-1)
    # scale [n_groups] float32, zero [n_groups] uint8: written, or read at g*param_stride (HAVE_PARAMS)
    # xhat [n_groups * group] float32; codes like x, uint8; sse, sig [n_groups] float64; mx float32
    pid = tl.program_id(0)
    g = pid * GPP + tl.arange(0, GPP)  # [GPP] group indices
    col = tl.arange(0, BLOCK)  # [BLOCK]
    gmask = g < n_groups
    m = gmask[:, None] & (col[None, :] < group)
    offs = g.to(tl.int64)[:, None] * group + col[None, :]
    x = tl.load(x_ptr + offs, mask=m, other=0.0)  # [GPP, BLOCK] float32

    bad = tl.max(tl.max(tl.where(m & ~(tl.abs(x) < float("inf")), 1, 0), axis=1), axis=0)
    QMAX: tl.constexpr = (1 << BITS) - 1
    HALF: tl.constexpr = 1 << (BITS - 1)
    QMIN: tl.constexpr = 1 if SYMMETRIC else 0
    if HAVE_PARAMS:
        pidx = g * param_stride
        s32 = tl.load(scale_ptr + pidx, mask=gmask, other=1.0)
        z32 = tl.load(zero_ptr + pidx, mask=gmask, other=0).to(tl.float32)
    else:
        lo = tl.minimum(tl.min(x, axis=1), 0.0).to(tl.float64)  # masked lanes hold 0: min(x, 0)
        hi = tl.maximum(tl.max(x, axis=1), 0.0).to(tl.float64)
        if SYMMETRIC:
            scale = _store_scale_f16(tl.maximum(-lo, hi) / (HALF - 1.0), HALF - 1.0)  # float64: IEEE
            zero = tl.full((GPP,), HALF, tl.float64)
        else:
            scale = _store_scale_f16((hi - lo) / (QMAX * 1.0), QMAX * 1.0)
            zero = tl.minimum(tl.maximum(_rint(-lo / scale), 0.0), QMAX * 1.0)
        bad = bad | tl.max(tl.where(gmask & (scale > 65504.0), 2, 0), axis=0)
        s32 = scale.to(tl.float32)
        z32 = zero.to(tl.float32)
        tl.store(scale_ptr + g, s32, mask=gmask)
        tl.store(zero_ptr + g, z32.to(tl.uint8), mask=gmask)
    bad = bad | tl.max(tl.max(tl.where(m & (x != 0.0), 4, 0), axis=1), axis=0)

    inv = tl.math.div_rn(1.0, s32)  # [GPP] correctly rounded float32 reciprocal
    q = _rint(x * inv[:, None])
    q = tl.minimum(tl.maximum(q + z32[:, None], QMIN * 1.0), QMAX * 1.0)  # [GPP, BLOCK] float32 codes
    if WRITE_CODES:
        tl.store(codes_ptr + offs, q.to(tl.uint8), mask=m)
    if WRITE_XHAT or WRITE_STATS:
        xhat = (q - z32[:, None]) * s32[:, None]
        bad = bad | tl.max(tl.max(tl.where(m & (xhat != 0.0), 8, 0), axis=1), axis=0)
        if WRITE_XHAT:
            tl.store(xhat_ptr + offs, xhat, mask=m)
        if WRITE_STATS:
            d = tl.where(m, xhat.to(tl.float64) - x.to(tl.float64), 0.0)
            x64 = x.to(tl.float64)
            tl.store(sse_ptr + g, tl.sum(d * d, axis=1), mask=gmask)
            tl.store(sig_ptr + g, tl.sum(x64 * x64, axis=1), mask=gmask)
            tl.store(mx_ptr + g, tl.max(tl.abs(d), axis=1).to(tl.float32), mask=gmask)
    _set_flags(flag_ptr, bad)


@triton.jit
def _codebook_kernel(x_ptr, xhat_ptr, codes_ptr, absmax_ptr, flag_ptr, mid_ptr, value_ptr, index_ptr,
                     sse_ptr, sig_ptr, mx_ptr, n, n_blocks,
                     BLOCKSIZE: tl.constexpr, N_MID: tl.constexpr, BPP: tl.constexpr,
                     WRITE_XHAT: tl.constexpr, WRITE_CODES: tl.constexpr, WRITE_STATS: tl.constexpr):
    # x [n] float32 in blocks of BLOCKSIZE (the last may be short); absmax [n_blocks] float32
    # mid [N_MID] float32 sorted midpoints; value [N_MID + 1] sorted code-book values;
    # index [N_MID + 1] uint8: the stored code of each sorted entry
    pid = tl.program_id(0)
    b = pid * BPP + tl.arange(0, BPP)  # [BPP]
    col = tl.arange(0, BLOCKSIZE)
    offs = b.to(tl.int64)[:, None] * BLOCKSIZE + col[None, :]
    bmask = b < n_blocks
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0)  # [BPP, BLOCKSIZE]
    ax = tl.abs(x)
    bad = tl.max(tl.max(tl.where(m & ~(ax < float("inf")), 1, 0), axis=1), axis=0)
    bad = bad | tl.max(tl.max(tl.where(m & (x != 0.0), 4, 0), axis=1), axis=0)
    am = tl.max(ax, axis=1)  # [BPP]
    clamped = tl.maximum(am, tl.full((BPP,), 1e-38, tl.float32))  # a float32 subnormal, as bitsandbytes
    full = (b.to(tl.int64) + 1) * BLOCKSIZE <= n
    inv = tl.math.div_rn(1.0, clamped)
    if (pid + 1).to(tl.int64) * BPP * BLOCKSIZE > n:  # this program holds the short last block: it divides
        v = tl.where(full[:, None], x * inv[:, None], tl.math.div_rn(x, clamped[:, None]))
    else:
        v = x * inv[:, None]
    v = tl.minimum(tl.maximum(v, -1.0), 1.0)
    # the entry each value falls in, by a chain of selects over the sorted midpoints (the last midpoint a
    # value exceeds names its entry): no gathers from the tables
    xv = tl.full((BPP, BLOCKSIZE), 0.0, tl.float32) + tl.load(value_ptr)
    kc = tl.full((BPP, BLOCKSIZE), 0, tl.uint8) + tl.load(index_ptr)
    for j in tl.static_range(N_MID):
        above = v > tl.load(mid_ptr + j)
        xv = tl.where(above, tl.load(value_ptr + j + 1), xv)
        if WRITE_CODES:
            kc = tl.where(above, tl.load(index_ptr + j + 1), kc)
    a = tl.where(full, am, clamped)
    tl.store(absmax_ptr + b, a, mask=bmask)
    if WRITE_CODES:
        tl.store(codes_ptr + offs, kc, mask=m)
    if WRITE_XHAT or WRITE_STATS:
        xhat = xv * a[:, None]
        bad = bad | tl.max(tl.max(tl.where(m & (xhat != 0.0), 8, 0), axis=1), axis=0)
        if WRITE_XHAT:
            tl.store(xhat_ptr + offs, xhat, mask=m)
        if WRITE_STATS:
            d = tl.where(m, xhat.to(tl.float64) - x.to(tl.float64), 0.0)
            x64 = x.to(tl.float64)
            tl.store(sse_ptr + b, tl.sum(d * d, axis=1), mask=bmask)
            tl.store(sig_ptr + b, tl.sum(x64 * x64, axis=1), mask=bmask)
            tl.store(mx_ptr + b, tl.max(tl.abs(d), axis=1).to(tl.float32), mask=bmask)
    _set_flags(flag_ptr, bad)


# ----------------------------------------------------------------------------- wrappers


class GroupResult(NamedTuple):
    """What :func:`rtn_groups` returns; fields not asked for are None.

    Attributes
    ----------
    x_hat : torch.Tensor or None
        float32, the shape of ``x``.
    codes : torch.Tensor or None
        uint8, the shape of ``x``.
    scale, zero : torch.Tensor
        float32 / uint8 ``[n_groups]`` (those passed in when parameters were given).
    stats : tuple or None
        ``(sse, signal, max_abs_err)`` as Python floats.
    zeroed : bool or None
        The input had nonzero values and all of ``x_hat`` is zero (read from the kernel's flag word;
        None when the check was skipped or ``x_hat`` was not computed).
    """

    x_hat: Any
    codes: Any
    scale: Any
    zero: Any
    stats: Any
    zeroed: Any = None


def _check_input(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        raise TypeError(f"the GPU kernels take float32 tensors; got {getattr(x, 'dtype', type(x).__name__)}. "
                        "Cast with x.float().")
    return x.contiguous()


def _raise_flag(flag: torch.Tensor, x: torch.Tensor, what: str) -> int:
    """Read the flag word (the one host synchronisation of a call), raise on NaN/Inf or scale overflow, return it."""
    value = int(flag.item())
    if value & _FLAG_NONFINITE:
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"x contains {bad} NaN/Inf value(s) out of {x.numel()}; expected finite values. Find where "
            "they come from (a diverged training run, an overflow) or clean them first."
        )
    if value & _FLAG_OVERFLOW:
        raise ValueError(
            f"The tensor has values up to |x| = {float(x.abs().max()):.3g}, which need a {what} scale above "
            f"float16's maximum {F16_MAX:g}. Rescale the tensor before quantizing."
        )
    return value


def _zeroed(value: int, xhat_known: bool) -> bool | None:
    """Whether every value quantized to zero although the input had nonzero ones (None: x_hat not computed)."""
    if not xhat_known:
        return None
    return bool(value & _FLAG_X_NONZERO) and not value & _FLAG_XHAT_NONZERO


def _stats(sse: torch.Tensor, sig: torch.Tensor, mx: torch.Tensor) -> tuple[float, float, float]:
    out = torch.stack([sse.sum(), sig.sum(), mx.max().double()]).tolist()
    return float(out[0]), float(out[1]), float(out[2])


def rtn_groups(x: torch.Tensor, group: int, bits: int, symmetric: bool, *, scale: torch.Tensor | None = None,
               zero: torch.Tensor | None = None, write_xhat: bool = True, write_codes: bool = False,
               write_stats: bool = False, check: bool = True) -> GroupResult:
    """RTN over consecutive groups of ``group`` values of ``x`` (a CUDA float32 tensor, any shape).

    ``x.numel()`` must divide by ``group`` (``group = cols`` is one scale per row of a
    ``[rows, cols]`` matrix, up to ``MAX_GROUP`` columns). With ``scale``/``zero`` given (one
    per group, or a single pair for the whole tensor) they are applied instead of chosen.

    Examples
    --------
    >>> r = rtn_groups(torch.randn(64, 256, device="cuda"), 128, 4, False)   # doctest: +SKIP
    >>> r.x_hat.shape, r.scale.shape                                          # doctest: +SKIP
    (torch.Size([64, 256]), torch.Size([128]))
    """
    x = _check_input(x)
    n = x.numel()
    if group < 1 or group > MAX_GROUP or n % group:
        raise ValueError(f"group={group} must divide the {n} values and be at most {MAX_GROUP}.")
    n_groups = n // group
    dev = x.device
    have = scale is not None
    if have:
        scale = scale.to(dev, torch.float32).contiguous().reshape(-1)
        zero = zero.to(dev, torch.uint8).contiguous().reshape(-1)
        stride = 0 if scale.numel() == 1 else 1
        if stride and scale.numel() != n_groups:
            raise ValueError(f"{scale.numel()} scales for {n_groups} groups; pass one per group or one in all.")
    else:
        scale = torch.empty(n_groups, dtype=torch.float32, device=dev)
        zero = torch.empty(n_groups, dtype=torch.uint8, device=dev)
        stride = 1
    xhat = torch.empty_like(x) if write_xhat else x
    codes = torch.empty(x.shape, dtype=torch.uint8, device=dev) if write_codes else x
    flag = torch.zeros(1, dtype=torch.int32, device=dev)
    if write_stats:
        sse = torch.empty(n_groups, dtype=torch.float64, device=dev)
        sig = torch.empty_like(sse)
        mx = torch.empty(n_groups, dtype=torch.float32, device=dev)
    else:
        sse = sig = mx = flag
    block = triton.next_power_of_2(group)
    gpp = max(1, TILE // block)
    grid = (triton.cdiv(n_groups, gpp),)
    _rtn_groups_kernel[grid](x, xhat, codes, scale, zero, flag, sse, sig, mx, n_groups, group, stride,
                             BITS=int(bits), SYMMETRIC=bool(symmetric), HAVE_PARAMS=have,
                             WRITE_XHAT=bool(write_xhat), WRITE_CODES=bool(write_codes),
                             WRITE_STATS=bool(write_stats), GPP=gpp, BLOCK=block,
                             num_warps=WARPS)
    zeroed = _zeroed(_raise_flag(flag, x, "float16"), write_xhat or write_stats) if check else None
    return GroupResult(xhat if write_xhat else None, codes if write_codes else None, scale, zero,
                       _stats(sse, sig, mx) if write_stats else None, zeroed)


class CodebookResult(NamedTuple):
    """What :func:`codebook_blocks` returns; fields not asked for are None.

    Attributes
    ----------
    x_hat : torch.Tensor or None
        float32, the shape of ``x``.
    codes : torch.Tensor or None
        uint8 stored codes, the shape of ``x``.
    absmax : torch.Tensor
        float32 ``[n_blocks]``.
    stats : tuple or None
        ``(sse, signal, max_abs_err)``.
    zeroed : bool or None
        As for :class:`GroupResult`.
    """

    x_hat: Any
    codes: Any
    absmax: Any
    stats: Any
    zeroed: Any = None


_TABLE_CACHE: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _tables(quant_type: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Midpoints, sorted values and stored codes of a :mod:`kernels_numba.nf4` code book, on ``device``."""
    key = (quant_type, str(device))
    if key not in _TABLE_CACHE:
        from kernels_numba.nf4 import _TABLES

        code, mid, order = _TABLES[quant_type]
        _TABLE_CACHE[key] = (torch.from_numpy(mid.copy()).to(device), torch.from_numpy(code[order].copy()).to(device),
                             torch.from_numpy(order.copy()).to(device))
    return _TABLE_CACHE[key]


def codebook_blocks(x: torch.Tensor, blocksize: int, quant_type: str = "nf4", *, write_xhat: bool = True,
                    write_codes: bool = False, write_stats: bool = False, check: bool = True) -> CodebookResult:
    """Absmax code-book quantization of ``x`` (CUDA float32, blocks over ``x``'s C order), as bitsandbytes.

    ``quant_type`` names a code book of :mod:`kernels_numba.nf4` (``"nf4"``, ``"fp4"``).

    Examples
    --------
    >>> r = codebook_blocks(torch.randn(64, 256, device="cuda"), 64, "nf4")   # doctest: +SKIP
    >>> r.absmax.shape                                                        # doctest: +SKIP
    torch.Size([256])
    """
    x = _check_input(x)
    n = x.numel()
    mid, value, index = _tables(quant_type, x.device)
    n_blocks = -(-n // blocksize)
    dev = x.device
    absmax = torch.empty(n_blocks, dtype=torch.float32, device=dev)
    xhat = torch.empty_like(x) if write_xhat else x
    codes = torch.empty(x.shape, dtype=torch.uint8, device=dev) if write_codes else x
    flag = torch.zeros(1, dtype=torch.int32, device=dev)
    if write_stats:
        sse = torch.empty(n_blocks, dtype=torch.float64, device=dev)
        sig = torch.empty_like(sse)
        mx = torch.empty(n_blocks, dtype=torch.float32, device=dev)
    else:
        sse = sig = mx = flag
    bpp = max(1, TILE // blocksize)
    grid = (triton.cdiv(n_blocks, bpp),)
    _codebook_kernel[grid](x, xhat, codes, absmax, flag, mid, value, index, sse, sig, mx, n, n_blocks,
                           BLOCKSIZE=int(blocksize), N_MID=int(mid.numel()), BPP=bpp,
                           WRITE_XHAT=bool(write_xhat), WRITE_CODES=bool(write_codes),
                           WRITE_STATS=bool(write_stats), num_warps=WARPS)
    zeroed = _zeroed(_raise_flag(flag, x, "code-book"), write_xhat or write_stats) if check else None
    return CodebookResult(xhat if write_xhat else None, codes if write_codes else None, absmax,
                          _stats(sse, sig, mx) if write_stats else None, zeroed)


__all__ = ["CodebookResult", "GroupResult", "MAX_GROUP", "codebook_blocks", "rtn_groups", "F16_MIN_SUBNORMAL"]
