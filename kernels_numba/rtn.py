"""Round-to-nearest (RTN) affine quantization, 2 to 8 bits.

The trio ``choose_qparams`` / ``quantize`` / ``dequantize`` sits side by side
(STYLE rule 2), followed by the fused one-pass kernels ``fake_quantize`` and
``quantize_with_stats``, which also accumulate the reconstruction error.

Conventions (identical to ``torch.fake_quantize_per_channel_affine`` given the
same scale and zero point):

* codes are ``uint8`` in ``[qmin, qmax]``; ``x_hat = (code - zero) * scale``;
* ``code = clamp(rint(x * (1/scale)) + zero, qmin, qmax)`` in float32, where
  ``1/scale`` is a float32 reciprocal (as torch computes it) and ``rint``
  rounds half to even;
* **asymmetric**: ``lo = min(x_min, 0)``, ``hi = max(x_max, 0)``,
  ``scale = (hi - lo) / (2**bits - 1)``, ``zero = clamp(rint(-lo / scale), 0, qmax)``,
  ``qmin = 0``, ``qmax = 2**bits - 1``. Zero is always exactly representable;
* **symmetric** (restricted range): ``scale = max(|x|) / (2**(bits-1) - 1)``,
  ``zero = 2**(bits-1)``, ``qmin = 1``, ``qmax = 2**bits - 1``, so the levels
  are ``-(2**(bits-1)-1) .. 2**(bits-1)-1`` times ``scale`` and code 0 is unused;
* scales are computed in float64 then rounded once to the nearest value of the
  storage dtype (float16 by default, so each scale costs 2 bytes; zero points
  cost 1). An all-zero group gets ``scale = 1`` (it dequantizes to exactly 0);
  a float16 scale that would underflow is raised to ``2**-24``; one that would
  overflow float16 is an error (use ``scale_dtype=np.float32``).

Granularity (``group_size``): ``None`` -> one scale per row (per output
channel), scale shape ``[rows, 1]``; an int dividing ``cols`` -> groups of
consecutive columns, scale shape ``[rows, cols // group_size]``; ``"tensor"``
-> one scale for the whole tensor, scale shape ``[1, 1]``.

``clip_search=True`` tries shrinking the range by each ratio of
``CLIP_RATIOS`` (1.0 down to 0.5 in 21 steps) per group and keeps the one with
the least squared error (the first, i.e. widest, on ties).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ._checks import PER_TENSOR, check_array, check_bits, raise_nonfinite, resolve_group_size
from ._bits import I32, U64, all_finite, bits_f32, lohi_finite, span
from ._common import F16_MAX, ErrorStats, err_sums, error_stats, store_scale

__all__ = [
    "CLIP_RATIOS",
    "PER_TENSOR",
    "ScaleZero",
    "choose_qparams",
    "quantize",
    "dequantize",
    "fake_quantize",
    "quantize_with_stats",
]

CLIP_RATIOS = np.linspace(1.0, 0.5, 21)  # [n_ratios] float64, widest first
_NO_CLIP = np.ones(1)  # [1]

# Output modes of the kernels: what the pass writes besides scale/zero and the error sums.
_WRITE_NOTHING = 0
_WRITE_CODES = 1
_WRITE_XHAT = 2


# Fast-math is confined to the error sums. Every code and x_hat is computed in functions
# with no fast-math flags at all (strict IEEE): with "reassoc", LLVM is entitled to turn
# x * (1/scale) into x / scale, which rounds differently at exact halves and would break
# the equality with torch. The error sums read x_hat back from memory, and "reassoc" there
# only reorders float64 additions (so they vectorise).
_FASTMATH = {"reassoc"}


# ----------------------------------------------------------------------------- JIT helpers
# Helpers address a group as (array, row, first column, length) and loop over unsigned
# indices (see kernels_numba._bits.span): contiguous, vectorised loads, and no per-group
# slices (each slice is a new view whose reference count is updated atomically).


@njit(cache=True)
def _qrange(bits, symmetric):
    qmax = (1 << bits) - 1
    qmin = 1 if symmetric else 0
    return qmin, qmax


@njit(cache=True)
def _params(lo, hi, ratio, bits, symmetric, f16):
    """Scale (float64, storage-rounded) and zero point for the range [lo*ratio, hi*ratio]."""
    lo64 = np.float64(lo) * ratio
    hi64 = np.float64(hi) * ratio
    if symmetric:
        half = 1 << (bits - 1)
        amax = max(-lo64, hi64)
        scale = store_scale(amax / (half - 1), f16, half - 1)
        return scale, np.float64(half)
    qmax = (1 << bits) - 1
    scale = store_scale((hi64 - lo64) / qmax, f16, qmax)
    zero = min(max(np.rint(-lo64 / scale), 0.0), np.float64(qmax))
    return scale, zero


@njit(cache=True)
def _xhat_into(x, r, c0, y, yr, yc0, n, scale, zero, qmin, qmax):
    """y[yr, yc0:yc0+n] = (clamp(rint(x * (1/scale)) + zero, qmin, qmax) - zero) * scale.

    x is x[r, c0:c0+n]; strict float32 (no fast-math flags).
    """
    s32 = np.float32(scale)
    inv = np.float32(1.0) / s32
    z32 = np.float32(zero)
    lo32 = np.float32(qmin)
    hi32 = np.float32(qmax)
    cu = U64(c0)
    yu = U64(yc0)
    for k in span(0, n):
        q = min(max(np.rint(x[r, cu + k] * inv) + z32, lo32), hi32)
        y[yr, yu + k] = (q - z32) * s32


@njit(cache=True)
def _codes_into(x, r, c0, n, codes, scale, zero, qmin, qmax):
    """codes[r, c0:c0+n] = clamp(rint(x * (1/scale)) + zero, qmin, qmax) as uint8, strict."""
    inv = np.float32(1.0) / np.float32(scale)
    z32 = np.float32(zero)
    lo32 = np.float32(qmin)
    hi32 = np.float32(qmax)
    for j in span(c0, n):
        codes[r, j] = np.uint8(min(max(np.rint(x[r, j] * inv) + z32, lo32), hi32))


@njit(cache=True, fastmath=_FASTMATH)
def _sse_only(x, r, c0, y, n):
    """sum (y[0, :n] - x[r, c0:c0+n])**2 in float64."""
    sse = 0.0
    cu = U64(c0)
    for k in span(0, n):
        d = np.float64(y[0, k]) - np.float64(x[r, cu + k])
        sse += d * d
    return sse


@njit(cache=True)
def _best_params(x, r, c0, n, buf, lo, hi, ratios, bits, symmetric, f16):
    """Scale and zero for the group x[r, c0:c0+n], searching the clip ratios if several.

    buf is float32 scratch of shape [1, >= n].
    """
    qmin, qmax = _qrange(bits, symmetric)
    scale, zero = _params(lo, hi, ratios[0], bits, symmetric, f16)
    if ratios.shape[0] > 1:
        _xhat_into(x, r, c0, buf, 0, 0, n, scale, zero, qmin, qmax)
        best = _sse_only(x, r, c0, buf, n)
        for k in range(1, ratios.shape[0]):
            s_k, z_k = _params(lo, hi, ratios[k], bits, symmetric, f16)
            _xhat_into(x, r, c0, buf, 0, 0, n, s_k, z_k, qmin, qmax)
            e_k = _sse_only(x, r, c0, buf, n)
            if e_k < best:
                best = e_k
                scale = s_k
                zero = z_k
    return scale, zero


@njit(cache=True)
def _apply_group(x, r, c0, n, codes, xhat, buf, scale, zero, qmin, qmax, mode):
    """Write codes or x_hat of the group x[r, c0:c0+n] (per mode); return its error sums."""
    if mode == _WRITE_XHAT:
        _xhat_into(x, r, c0, xhat, r, c0, n, scale, zero, qmin, qmax)
        return err_sums(x, r, c0, xhat, r, c0, n)
    _xhat_into(x, r, c0, buf, 0, 0, n, scale, zero, qmin, qmax)
    _codes_into(x, r, c0, n, codes, scale, zero, qmin, qmax)
    return err_sums(x, r, c0, buf, 0, 0, n)


# ----------------------------------------------------------------------------- kernels


@njit(cache=True, parallel=True)
def _fused_kernel(x, group_size, bits, symmetric, f16, ratios, mode, codes, xhat,
                  scale, zero, sse, maxerr, signal, bad):
    # x [rows, cols] float32
    # codes [rows, cols] uint8 (mode 1) or [0, 0]; xhat [rows, cols] float32 (mode 2) or [0, 0]
    # scale [rows, n_groups] float32; zero [rows, n_groups] uint8
    # sse, maxerr, signal [rows] float64; bad [rows] uint8 (1 where a NaN/Inf was met)
    rows, cols = x.shape
    n_groups = cols // group_size
    qmin, qmax = _qrange(bits, symmetric)
    for r in prange(rows):
        buf = np.empty((1, group_size), np.float32)  # [1, group_size] scratch x_hat
        row_sse = 0.0
        row_sig = 0.0
        row_mx = I32(0)
        for g in range(n_groups):
            c0 = g * group_size
            lo, hi, finite = lohi_finite(x, r, c0, group_size)
            if not finite:
                bad[r] = 1
                scale[r, g] = 1.0
                zero[r, g] = 0
                continue
            s, z = _best_params(x, r, c0, group_size, buf, lo, hi, ratios, bits, symmetric, f16)
            scale[r, g] = s
            zero[r, g] = np.uint8(z)
            if mode == _WRITE_NOTHING:
                continue
            e, sg, m = _apply_group(x, r, c0, group_size, codes, xhat, buf, s, z, qmin, qmax, mode)
            row_sse += e
            row_sig += sg
            row_mx = I32(max(row_mx, m))
        sse[r] = row_sse
        signal[r] = row_sig
        maxerr[r] = bits_f32(row_mx)


@njit(cache=True, parallel=True)
def _apply_kernel(x, group_size, scale, zero, qmin, qmax, mode, codes, xhat,
                  sse, maxerr, signal, bad):
    # x [rows, cols] float32; scale [rows, n_groups] float32; zero like scale, uint8
    # outputs as in _fused_kernel (mode 1 or 2)
    rows, cols = x.shape
    n_groups = cols // group_size
    for r in prange(rows):
        buf = np.empty((1, group_size), np.float32)  # [1, group_size] scratch x_hat
        row_sse = 0.0
        row_sig = 0.0
        row_mx = I32(0)
        for g in range(n_groups):
            c0 = g * group_size
            if not all_finite(x, r, c0, group_size):
                bad[r] = 1
                continue
            e, sg, m = _apply_group(x, r, c0, group_size, codes, xhat, buf,
                                    np.float64(scale[r, g]), np.float64(zero[r, g]),
                                    qmin, qmax, mode)
            row_sse += e
            row_sig += sg
            row_mx = I32(max(row_mx, m))
        sse[r] = row_sse
        signal[r] = row_sig
        maxerr[r] = bits_f32(row_mx)


@njit(cache=True, parallel=True)
def _row_lohi_kernel(x, lo, hi, bad):
    # x [rows, cols] float32 -> lo, hi [rows] float32 (0 included), bad [rows] uint8
    rows, cols = x.shape
    for r in prange(rows):
        a, b, finite = lohi_finite(x, r, 0, cols)
        lo[r] = a
        hi[r] = b
        bad[r] = 0 if finite else 1


@njit(cache=True, parallel=True)
def _tensor_clip_sse_kernel(x, lo, hi, ratios, bits, symmetric, f16, out):
    # x [rows, cols] float32; out [rows, n_ratios] float64: per-row SSE of each clip ratio
    rows, cols = x.shape
    qmin, qmax = _qrange(bits, symmetric)
    for r in prange(rows):
        buf = np.empty((1, cols), np.float32)  # [1, cols] scratch x_hat
        for k in range(ratios.shape[0]):
            s, z = _params(lo, hi, ratios[k], bits, symmetric, f16)
            _xhat_into(x, r, 0, buf, 0, 0, cols, s, z, qmin, qmax)
            out[r, k] = _sse_only(x, r, 0, buf, cols)


@njit(cache=True, parallel=True)
def _dequant_kernel(codes, group_size, scale, zero, out):
    # codes [rows, cols] uint8; scale [rows, n_groups] float32; zero like scale; out [rows, cols]
    rows, cols = codes.shape
    n_groups = cols // group_size
    for r in prange(rows):
        for g in range(n_groups):
            s = scale[r, g]
            z = np.float32(zero[r, g])
            for j in span(g * group_size, group_size):
                out[r, j] = (np.float32(codes[r, j]) - z) * s


# ----------------------------------------------------------------------------- public API


class ScaleZero(NamedTuple):
    """Scales and zero points of an RTN-quantized ``[rows, cols]`` array, as the kernels use them.

    A plain pair: the one parameter type with bits, symmetry and granularity is
    :class:`qviz.quant.primitives.QParams`, which wraps these arrays.
    """

    scale: np.ndarray  # [rows, n_groups] float32 ([1, 1] per tensor), exact in the storage dtype
    zero: np.ndarray  # [rows, n_groups] uint8 (2**(bits-1) when symmetric)


def _check_scale_dtype(scale_dtype) -> bool:
    """Return True for float16 storage, False for float32."""
    try:
        dt = np.dtype(scale_dtype)
    except TypeError as err:
        raise TypeError(
            f"scale_dtype={scale_dtype!r} is not a dtype: expected np.float16 or np.float32."
        ) from err
    if dt not in (np.float16, np.float32):
        raise ValueError(
            f"scale_dtype={dt.name} is not supported: expected np.float16 (2 bytes per scale) "
            f"or np.float32 (4 bytes, for tensors whose range overflows float16)."
        )
    return dt == np.float16


def _check_common(x, bits, group_size, symmetric, clip_search):
    x = check_array(x, "x", dtype=np.float32, ndim=2)  # [rows, cols]
    bits = check_bits(bits)
    rows, cols = x.shape
    if rows == 0 or cols == 0:
        raise ValueError(f"x has shape {x.shape}: expected at least one row and one column.")
    gs, per_tensor = resolve_group_size(group_size, rows, cols)
    for name, flag in (("symmetric", symmetric), ("clip_search", clip_search)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {flag!r}.")
    return x, bits, gs, per_tensor


def _raise_scale_overflow(x):
    amax = float(np.max(np.abs(x)))
    raise ValueError(
        f"x has values up to |x| = {amax:.3g}, which need a quantization scale above "
        f"float16's maximum {F16_MAX:g}; expected a tensor whose scales fit float16. Pass "
        f"scale_dtype=np.float32 (4 bytes per scale) or rescale the tensor first."
    )


def _tensor_params(x, bits, symmetric, clip_search, f16):
    """Per-tensor scale/zero as [1, 1] arrays (two passes: min/max, then optional clip search)."""
    rows = x.shape[0]
    lo = np.empty(rows, np.float32)
    hi = np.empty(rows, np.float32)
    bad = np.zeros(rows, np.uint8)
    _row_lohi_kernel(x, lo, hi, bad)
    if bad.any():
        raise_nonfinite(x, "x")
    glo, ghi = lo.min(), hi.max()
    ratios = CLIP_RATIOS if clip_search else _NO_CLIP
    k = 0
    if clip_search:
        per_row = np.empty((rows, ratios.size), np.float64)  # [rows, n_ratios]
        _tensor_clip_sse_kernel(x, glo, ghi, ratios, bits, symmetric, f16, per_row)
        k = int(np.argmin(per_row.sum(axis=0)))  # first minimum = widest range on ties
    s, z = _params(glo, ghi, ratios[k], bits, symmetric, f16)
    scale = np.full((1, 1), s, np.float32)
    zero = np.full((1, 1), z, np.uint8)
    if not np.isfinite(scale).all():
        _raise_scale_overflow(x)
    return scale, zero


def _run_fused(x, bits, gs, symmetric, clip_search, f16, mode, codes, xhat):
    rows, cols = x.shape
    n_groups = cols // gs
    scale = np.empty((rows, n_groups), np.float32)  # [rows, n_groups]
    zero = np.empty((rows, n_groups), np.uint8)
    sse = np.empty(rows, np.float64)
    maxerr = np.empty(rows, np.float64)
    signal = np.empty(rows, np.float64)
    bad = np.zeros(rows, np.uint8)
    _fused_kernel(x, gs, bits, bool(symmetric), f16, CLIP_RATIOS if clip_search else _NO_CLIP,
                  mode, codes, xhat, scale, zero, sse, maxerr, signal, bad)
    if bad.any():
        raise_nonfinite(x, "x")
    if not np.isfinite(scale).all():
        _raise_scale_overflow(x)
    return scale, zero, error_stats(sse, signal, maxerr, x.size)


def _full_rows(a, rows):
    """Broadcast a [1, n_groups] per-tensor parameter to [rows, n_groups] for the kernels."""
    return np.ascontiguousarray(np.broadcast_to(a, (rows, a.shape[1])))


def _run_apply(x, gs, scale, zero, qmin, qmax, mode, codes, xhat):
    rows = x.shape[0]
    scale, zero = _full_rows(scale, rows), _full_rows(zero, rows)
    sse = np.empty(rows, np.float64)
    maxerr = np.empty(rows, np.float64)
    signal = np.empty(rows, np.float64)
    bad = np.zeros(rows, np.uint8)
    _apply_kernel(x, gs, scale, zero, qmin, qmax, mode, codes, xhat, sse, maxerr, signal, bad)
    if bad.any():
        raise_nonfinite(x, "x")
    return error_stats(sse, signal, maxerr, x.size)


_EMPTY_U8 = np.empty((0, 0), np.uint8)
_EMPTY_F32 = np.empty((0, 0), np.float32)


def choose_qparams(x, bits, group_size=None, symmetric=False, clip_search=False,
                   scale_dtype=np.float16) -> ScaleZero:
    """Choose RTN scales and zero points for a 2-D float32 array.

    Parameters
    ----------
    x : np.ndarray
        float32 ``[rows, cols]``, finite. Not modified.
    bits : int
        Code width, 2 to 8.
    group_size : None, int or "tensor"
        ``None``: one scale per row; an int dividing ``cols``: one scale per group
        of that many consecutive columns; ``"tensor"``: one scale in all.
    symmetric : bool
        Restricted symmetric range around zero, or an asymmetric range with a zero point.
    clip_search : bool
        Search shrink ratios in ``CLIP_RATIOS`` per group for the least squared error.
    scale_dtype : np.float16 or np.float32
        Storage precision the scales are rounded to.

    Returns
    -------
    ScaleZero
        ``(scale, zero)``: float32 and uint8, ``[rows, n_groups]`` (``[1, 1]`` per tensor).

    Examples
    --------
    >>> x = np.array([[-1.0, 0.0, 0.5, 2.0]], np.float32)
    >>> qp = choose_qparams(x, bits=4)
    >>> float(qp.scale[0, 0]), int(qp.zero[0, 0])
    (0.199951171875, 5)
    """
    x, bits, gs, per_tensor = _check_common(x, bits, group_size, symmetric, clip_search)
    f16 = _check_scale_dtype(scale_dtype)
    if per_tensor:
        scale, zero = _tensor_params(x, bits, symmetric, clip_search, f16)
    else:
        scale, zero, _ = _run_fused(x, bits, gs, symmetric, clip_search, f16, _WRITE_NOTHING,
                                   _EMPTY_U8, _EMPTY_F32)
    return ScaleZero(scale, zero)


def _check_params(scale, zero, bits, symmetric, shape, name="x"):
    """Check ``scale``/``zero`` against a ``[rows, cols]`` array; return ``(bits, qmin, qmax, columns per group)``."""
    bits = check_bits(bits)
    if not isinstance(symmetric, (bool, np.bool_)):
        raise TypeError(f"symmetric must be True or False, got {symmetric!r}.")
    scale = check_array(scale, "scale", dtype=np.float32, ndim=2)  # [rows | 1, n_groups]
    zero = check_array(zero, "zero", dtype=np.uint8, ndim=2)
    rows, cols = shape
    if scale.shape != zero.shape or scale.shape[0] not in (1, rows) or cols % scale.shape[1]:
        raise ValueError(
            f"scale {scale.shape} and zero {zero.shape} do not fit {name} of shape {tuple(shape)}: "
            f"expected both [{rows}, n_groups] (or [1, 1] per tensor) with n_groups dividing {cols}; "
            f"pass the (scale, zero) that choose_qparams made for an array of this shape."
        )
    return scale, zero, bits, (1 if symmetric else 0), (1 << bits) - 1, cols // scale.shape[1]


def quantize(x, scale, zero, bits, symmetric=False) -> np.ndarray:
    """Quantize a float32 array to uint8 codes with given scales and zero points.

    Parameters
    ----------
    x : np.ndarray
        float32 ``[rows, cols]``, finite.
    scale, zero : np.ndarray
        float32 / uint8 ``[rows, n_groups]`` (``[1, 1]`` per tensor), from :func:`choose_qparams`.
    bits, symmetric
        As they were passed to :func:`choose_qparams`.

    Returns
    -------
    np.ndarray
        uint8 codes ``[rows, cols]`` in ``[qmin, 2**bits - 1]`` (``qmin`` 1 when symmetric, else 0).

    Examples
    --------
    >>> x = np.array([[-1.0, 0.0, 0.5, 2.0]], np.float32)
    >>> quantize(x, *choose_qparams(x, bits=4), bits=4)
    array([[ 0,  5,  8, 15]], dtype=uint8)
    """
    x = check_array(x, "x", dtype=np.float32, ndim=2)  # [rows, cols]
    scale, zero, bits, qmin, qmax, gs = _check_params(scale, zero, bits, symmetric, x.shape)
    codes = np.empty(x.shape, np.uint8)  # [rows, cols]
    _run_apply(x, gs, scale, zero, qmin, qmax, _WRITE_CODES, codes, _EMPTY_F32)
    return codes


def dequantize(codes, scale, zero, bits, symmetric=False, out=None) -> np.ndarray:
    """Map uint8 codes back to float32: ``x_hat = (code - zero) * scale``.

    Parameters
    ----------
    codes : np.ndarray
        uint8 ``[rows, cols]``, each at most ``2**bits - 1``.
    scale, zero, bits, symmetric
        The parameters the codes were made with (as for :func:`quantize`).
    out : np.ndarray, optional
        float32 C-contiguous ``[rows, cols]`` to write into.

    Returns
    -------
    np.ndarray
        float32 ``[rows, cols]``.

    Examples
    --------
    >>> x = np.array([[-1.0, 0.0, 0.5, 2.0]], np.float32)
    >>> scale, zero = choose_qparams(x, bits=4)
    >>> dequantize(quantize(x, scale, zero, 4), scale, zero, 4).tolist()
    [[-0.999755859375, 0.0, 0.599853515625, 1.99951171875]]
    """
    codes = check_array(codes, "codes", dtype=np.uint8, ndim=2)  # [rows, cols]
    scale, zero, bits, _, qmax, gs = _check_params(scale, zero, bits, symmetric, codes.shape, "codes")
    top = int(codes.max()) if codes.size else 0
    if top > qmax:
        raise ValueError(
            f"codes contain {top}, above the largest {bits}-bit code {qmax}; "
            f"expected codes from quantize() with these parameters. Check that bits matches."
        )
    out = _check_out(out, codes.shape)
    rows = codes.shape[0]
    _dequant_kernel(codes, gs, _full_rows(scale, rows), _full_rows(zero, rows), out)
    return out


def _check_out(out, shape, x=None):
    if out is None:
        return np.empty(shape, np.float32)
    if x is not None and isinstance(out, np.ndarray) and np.may_share_memory(out, x):
        raise ValueError(
            "out overlaps x; expected a separate array, because x is read again after x_hat is "
            "written (for the error statistics). Pass out=np.empty_like(x), or omit out."
        )
    if not isinstance(out, np.ndarray) or out.dtype != np.float32:
        raise TypeError(
            f"out must be a float32 numpy array, got "
            f"{getattr(out, 'dtype', type(out).__name__)}; allocate it with "
            f"np.empty({tuple(shape)}, np.float32)."
        )
    if out.shape != tuple(shape) or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(
            f"out must be a writeable C-contiguous float32 array of shape {tuple(shape)}, got "
            f"shape {out.shape} (contiguous={out.flags.c_contiguous}, "
            f"writeable={out.flags.writeable}); allocate it with np.empty({tuple(shape)}, np.float32)."
        )
    return out


def fake_quantize(x, bits, group_size=None, symmetric=False, clip_search=False, out=None,
                  scale_dtype=np.float16) -> tuple[np.ndarray, ErrorStats]:
    """Quantize and dequantize in one pass, accumulating the error in the same pass.

    Parameters
    ----------
    x : np.ndarray
        float32 ``[rows, cols]``, finite. Not modified.
    bits, group_size, symmetric, clip_search, scale_dtype
        As in :func:`choose_qparams`.
    out : np.ndarray, optional
        float32 C-contiguous ``[rows, cols]`` for ``x_hat``, not overlapping ``x``. If an error
        is raised its contents are unspecified.

    Returns
    -------
    x_hat : np.ndarray
        float32 ``[rows, cols]``, equal to ``dequantize(quantize(x, qp), qp)``.
    stats : ErrorStats
        ``sse``, ``signal``, ``max_abs_err`` and the derived ``mse`` and ``sqnr_db``.

    Examples
    --------
    >>> x = np.array([[-1.0, 0.0, 0.5, 2.0]], np.float32)
    >>> x_hat, st = fake_quantize(x, bits=4)
    >>> round(st.sqnr_db, 1)
    27.2
    """
    x, bits, gs, per_tensor = _check_common(x, bits, group_size, symmetric, clip_search)
    f16 = _check_scale_dtype(scale_dtype)
    out = _check_out(out, x.shape, x)
    if per_tensor:
        scale, zero = _tensor_params(x, bits, symmetric, clip_search, f16)
        qmin = 1 if symmetric else 0
        stats = _run_apply(x, gs, scale, zero, qmin, (1 << bits) - 1, _WRITE_XHAT, _EMPTY_U8, out)
    else:
        _, _, stats = _run_fused(x, bits, gs, symmetric, clip_search, f16, _WRITE_XHAT,
                                 _EMPTY_U8, out)
    return out, stats


def quantize_with_stats(x, bits, group_size=None, symmetric=False, clip_search=False,
                        scale_dtype=np.float16) -> tuple[np.ndarray, ScaleZero, ErrorStats]:
    """Choose parameters, quantize and measure the error in one fused pass.

    Parameters
    ----------
    x, bits, group_size, symmetric, clip_search, scale_dtype
        As in :func:`choose_qparams`.

    Returns
    -------
    codes : np.ndarray
        uint8 ``[rows, cols]``.
    params : ScaleZero
        ``(scale, zero)``, ``[rows, n_groups]``.
    stats : ErrorStats
        Error of ``dequantize(codes, *params, bits, symmetric)`` against ``x``.

    Examples
    --------
    >>> x = np.array([[-1.0, 0.0, 0.5, 2.0]], np.float32)
    >>> codes, qp, st = quantize_with_stats(x, bits=4)
    >>> codes
    array([[ 0,  5,  8, 15]], dtype=uint8)
    """
    x, bits, gs, per_tensor = _check_common(x, bits, group_size, symmetric, clip_search)
    f16 = _check_scale_dtype(scale_dtype)
    codes = np.empty(x.shape, np.uint8)  # [rows, cols]
    if per_tensor:
        scale, zero = _tensor_params(x, bits, symmetric, clip_search, f16)
        qmin = 1 if symmetric else 0
        stats = _run_apply(x, gs, scale, zero, qmin, (1 << bits) - 1, _WRITE_CODES, codes,
                           _EMPTY_F32)
    else:
        scale, zero, stats = _run_fused(x, bits, gs, symmetric, clip_search, f16, _WRITE_CODES,
                                        codes, _EMPTY_F32)
    return codes, ScaleZero(scale, zero), stats
