"""NF4 and FP4 blockwise 4-bit formats, numerically identical to bitsandbytes.

Matches ``bitsandbytes.functional.quantize_4bit`` / ``dequantize_4bit`` on CPU
(bitsandbytes 0.50, float32 input, ``compress_statistics=False``) code for code
and bit for bit:

* the input is flattened (C order) and split into blocks of ``blocksize``
  values; the last block may be shorter;
* ``absmax`` (float32, one per block) is ``max |x|`` of the block; for the short
  last block it is raised to at least ``1e-38`` (as bitsandbytes stores it);
* the scaled value is ``clamp(x * (1 / max(absmax, 1e-38)), -1, 1)`` for full
  blocks and ``clamp(x / max(absmax, 1e-38), -1, 1)`` for the short last block,
  in float32;
* the code is found by bucketing the scaled value against the midpoints of the
  sorted code book (a value exactly on a midpoint goes to the lower entry),
  then mapped to the code book's own index order (FP4 is stored by bit pattern);
* ``dequantize = codebook[code] * absmax`` in float32.

bitsandbytes' packed layout puts the *first* value of each pair in the *high*
nibble; :func:`pack_4bit` / :func:`unpack_4bit` reproduce it (an odd count is
padded with the code of 0.0).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._bits import I32, U64, absmax_finite, bits_f32, span
from ._checks import check_array, check_int, raise_nonfinite
from ._common import ErrorStats, err_sums, error_stats

__all__ = [
    "QUANT_TYPES",
    "BLOCKSIZES",
    "codebook_4bit",
    "quantize_4bit",
    "dequantize_4bit",
    "fake_quantize_4bit",
    "pack_4bit",
    "unpack_4bit",
]

QUANT_TYPES = ("nf4", "fp4")
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # the sizes bitsandbytes accepts

# NF4: quantiles of N(0, 1) normalised to [-1, 1] (QLoRA), sorted ascending; the
# float32 values bitsandbytes hard-codes.
_NF4 = np.array(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    dtype=np.float32,
)
# FP4 (1 sign, 2 exponent, 1 mantissa bit, bias 2) in bit-pattern order, divided by its
# largest magnitude 12 in float32 as bitsandbytes does; index 8 ("-0") is +0.0 there too.
_FP4 = (
    np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3], np.float32)
    / np.float32(12.0)
).astype(np.float32)


def _bucketing(code: np.ndarray):
    """Midpoints between sorted entries (float32) and the sorted->index map, as uint8."""
    order = np.argsort(code, kind="stable")  # ties (+0 at 0 and 8 for FP4) keep index order
    srt = code[order]
    mid = ((srt[:-1] + srt[1:]) / np.float32(2)).astype(np.float32)  # [15]
    return mid, order.astype(np.uint8)


_TABLES = {}
for _name, _code in (("nf4", _NF4), ("fp4", _FP4)):
    _mid, _order = _bucketing(_code)
    _TABLES[_name] = (_code, _mid, _order)
_ZERO_CODE = {name: int(t[2][int(np.sum(t[1] < 0))]) for name, t in _TABLES.items()}
_TINY = np.float32(1e-38)
_BLOCKS_PER_TASK = 256


def codebook_4bit(quant_type: str = "nf4") -> np.ndarray:
    """The 16 float32 code-book values of ``"nf4"`` or ``"fp4"`` (a copy), indexed by code.

    Examples
    --------
    >>> codebook_4bit("nf4")[[0, 7, 15]]
    array([-1.,  0.,  1.], dtype=float32)
    """
    return _TABLES[_check_quant_type(quant_type)][0].copy()


# ----------------------------------------------------------------------------- kernels


@njit(cache=True)
def _bucket(v, mid):
    """Number of midpoints strictly below v (torch.bucketize, right=False), as int32."""
    q = I32(0)
    for k in range(15):
        q += I32(v > mid[k])
    return q


@njit(cache=True)
def _encode_block(x, c0, n, codes, cr, cc0, a, divide, mid, order, remap):
    """Codes of the block x[0, c0:c0+n] into codes[cr, cc0:cc0+n]: bucket clamp(x*a or x/a)."""
    # x [1, n_total] float32; codes [*, *] uint8; mid [15] float32; order [16] uint8
    one = np.float32(1.0)
    xu = U64(c0)
    cu = U64(cc0)
    # two plain loops (no branch inside) so that LLVM vectorises the 15 compares
    if divide:
        for k in span(0, n):
            codes[cr, cu + k] = np.uint8(_bucket(min(max(x[0, xu + k] / a, -one), one), mid))
    else:
        for k in span(0, n):
            codes[cr, cu + k] = np.uint8(_bucket(min(max(x[0, xu + k] * a, -one), one), mid))
    if remap:  # FP4 stores codes by bit pattern, not by value order
        for k in span(0, n):
            codes[cr, cu + k] = order[codes[cr, cu + k]]


@njit(cache=True)
def _decode_block(codes, cr, cc0, n, a, code, out, c0):
    """out[0, c0:c0+n] = code[codes[cr, cc0:cc0+n]] * a in strict float32 (as bitsandbytes)."""
    cu = U64(cc0)
    ou = U64(c0)
    for k in span(0, n):
        out[0, ou + k] = code[codes[cr, cu + k]] * a  # codes were checked to be < 16


@njit(cache=True, parallel=True)
def _quant4_kernel(x, blocksize, mid, order, remap, codes, absmax, bad):
    # x [1, n] float32; codes [1, n] uint8; absmax [n_blocks] float32; bad [n_blocks] uint8
    n = x.shape[1]
    n_blocks = absmax.shape[0]
    for b in prange(n_blocks):
        c0 = b * blocksize
        m = min(blocksize, n - c0)
        am, finite = absmax_finite(x, 0, c0, m)
        if not finite:
            bad[b] = 1
            absmax[b] = 0
            continue
        clamped = max(am, _TINY)
        if m < blocksize:  # bitsandbytes divides in the short last block, and keeps the clamp
            absmax[b] = clamped
            _encode_block(x, c0, m, codes, 0, c0, clamped, True, mid, order, remap)
        else:
            absmax[b] = am
            _encode_block(x, c0, m, codes, 0, c0, np.float32(1.0) / clamped, False, mid, order,
                          remap)


@njit(cache=True, parallel=True)
def _dequant4_kernel(codes, absmax, blocksize, code, out):
    # codes [1, n] uint8; absmax [n_blocks] float32; code [16] float32; out [1, n] float32
    n = codes.shape[1]
    for b in prange(absmax.shape[0]):
        c0 = b * blocksize
        _decode_block(codes, 0, c0, min(blocksize, n - c0), absmax[b], code, out, c0)


@njit(cache=True, parallel=True)
def _fake4_kernel(x, blocksize, code, mid, order, remap, out, sse, signal, maxerr, bad):
    # x, out [1, n] float32; sse, signal, maxerr [n_blocks] float64; bad [n_blocks] uint8
    n = x.shape[1]
    n_blocks = sse.shape[0]
    n_tasks = (n_blocks + _BLOCKS_PER_TASK - 1) // _BLOCKS_PER_TASK
    for t in prange(n_tasks):
        cs = np.empty((1, blocksize), np.uint8)  # [1, blocksize] scratch codes, one per task
        for b in range(t * _BLOCKS_PER_TASK, min((t + 1) * _BLOCKS_PER_TASK, n_blocks)):
            c0 = b * blocksize
            m = min(blocksize, n - c0)
            am, finite = absmax_finite(x, 0, c0, m)
            if not finite:
                bad[b] = 1
                continue
            clamped = max(am, _TINY)
            if m < blocksize:
                a = clamped
                _encode_block(x, c0, m, cs, 0, 0, clamped, True, mid, order, remap)
            else:
                a = am
                _encode_block(x, c0, m, cs, 0, 0, np.float32(1.0) / clamped, False, mid, order,
                              remap)
            _decode_block(cs, 0, 0, m, a, code, out, c0)
            e, sg, mx = err_sums(x, 0, c0, out, 0, c0, m)
            sse[b] = e
            signal[b] = sg
            maxerr[b] = bits_f32(mx)


@njit(cache=True, parallel=True)
def _pack4_kernel(codes, pad, out):
    # codes [n] uint8; out [ceil(n/2)] uint8, first value of each pair in the high nibble
    n = codes.shape[0]
    for i in prange(out.shape[0]):
        lo = codes[2 * i + 1] if 2 * i + 1 < n else pad
        out[i] = (codes[2 * i] << 4) | lo


@njit(cache=True, parallel=True)
def _unpack4_kernel(packed, out):
    # packed [ceil(n/2)] uint8; out [n] uint8
    n = out.shape[0]
    for i in prange(packed.shape[0]):
        b = packed[i]
        out[2 * i] = b >> 4
        if 2 * i + 1 < n:
            out[2 * i + 1] = b & 15


# ----------------------------------------------------------------------------- public API


def _check_quant_type(quant_type) -> str:
    if quant_type not in QUANT_TYPES:
        raise ValueError(
            f"quant_type={quant_type!r} is not a 4-bit format: expected one of {QUANT_TYPES}."
        )
    return quant_type


def _check_blocksize(blocksize) -> int:
    blocksize = check_int(blocksize, "blocksize", 1, 1 << 30,
                          f" bitsandbytes uses one of {BLOCKSIZES}.")
    if blocksize not in BLOCKSIZES:
        raise ValueError(
            f"blocksize={blocksize} is not one bitsandbytes supports: expected one of "
            f"{BLOCKSIZES}; 64 is the usual choice."
        )
    return blocksize


def _n_blocks(n, blocksize):
    return -(-n // blocksize)


def quantize_4bit(x, blocksize=64, quant_type="nf4") -> tuple[np.ndarray, np.ndarray]:
    """Blockwise NF4/FP4 quantization of a float32 array, as bitsandbytes does it.

    Parameters
    ----------
    x : np.ndarray
        float32, any shape (blocks run over ``x.ravel()``), finite.
    blocksize : int
        Values per block: 32, 64, 128, ..., 4096.
    quant_type : {"nf4", "fp4"}

    Returns
    -------
    codes : np.ndarray
        uint8 codes 0..15, same shape as ``x`` (unpacked; see :func:`pack_4bit`).
    absmax : np.ndarray
        float32 ``[ceil(x.size / blocksize)]``.

    Examples
    --------
    >>> codes, absmax = quantize_4bit(np.array([0.5, -1.0, 0.0, 2.0], np.float32), 32)
    >>> codes, absmax
    (array([10,  2,  7, 15], dtype=uint8), array([2.], dtype=float32))
    """
    x = check_array(x, "x", dtype=np.float32)
    blocksize = _check_blocksize(blocksize)
    code, mid, order = _TABLES[_check_quant_type(quant_type)]
    flat = x.reshape(-1)  # [n]
    codes = np.empty(flat.shape[0], np.uint8)  # [n]
    absmax = np.empty(_n_blocks(flat.shape[0], blocksize), np.float32)  # [n_blocks]
    bad = np.zeros(absmax.shape[0], np.uint8)
    _quant4_kernel(flat.reshape(1, -1), blocksize, mid, order, quant_type != "nf4",
                   codes.reshape(1, -1), absmax, bad)
    if bad.any():
        raise_nonfinite(x, "x")
    return codes.reshape(x.shape), absmax


def dequantize_4bit(codes, absmax, blocksize=64, quant_type="nf4", out=None) -> np.ndarray:
    """``codebook[code] * absmax`` per block, as bitsandbytes' ``dequantize_4bit``.

    Parameters
    ----------
    codes : np.ndarray
        uint8 0..15, any shape (unpacked, from :func:`quantize_4bit` or :func:`unpack_4bit`).
    absmax : np.ndarray
        float32 ``[ceil(codes.size / blocksize)]``.
    blocksize : int
    quant_type : {"nf4", "fp4"}
    out : np.ndarray, optional
        float32 C-contiguous array of ``codes.shape`` to write into.

    Returns
    -------
    np.ndarray
        float32, same shape as ``codes``.

    Examples
    --------
    >>> dequantize_4bit(np.array([10, 2, 7, 15], np.uint8), np.array([2.0], np.float32), 32)
    array([ 0.4922246, -1.0501461,  0.       ,  2.       ], dtype=float32)
    """
    codes = check_array(codes, "codes", dtype=np.uint8)
    absmax = check_array(absmax, "absmax", dtype=np.float32, ndim=1)
    blocksize = _check_blocksize(blocksize)
    code = _TABLES[_check_quant_type(quant_type)][0]
    nb = _n_blocks(codes.size, blocksize)
    if absmax.shape[0] != nb:
        raise ValueError(
            f"absmax has {absmax.shape[0]} entries but {codes.size} codes in blocks of "
            f"{blocksize} need {nb}; pass the absmax and blocksize quantize_4bit returned/used."
        )
    if codes.size and int(codes.max()) > 15:
        raise ValueError(
            f"codes contain {int(codes.max())}, not a 4-bit code (0..15); pass unpacked codes "
            f"(unpack_4bit(packed, n) turns bitsandbytes' packed bytes into codes)."
        )
    if out is None:
        out = np.empty(codes.shape, np.float32)
    elif (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != codes.shape
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError(
            f"out must be a writeable C-contiguous float32 array of shape {codes.shape}; "
            f"allocate it with np.empty({codes.shape}, np.float32)."
        )
    _dequant4_kernel(codes.reshape(1, -1), absmax, blocksize, code, out.reshape(1, -1))
    return out


def fake_quantize_4bit(x, blocksize=64, quant_type="nf4", out=None) -> tuple[np.ndarray, ErrorStats]:
    """NF4/FP4 quantize + dequantize in one pass, with the error accumulated in that pass.

    Parameters
    ----------
    x : np.ndarray
        float32, any shape, finite. Not modified.
    blocksize, quant_type
        As in :func:`quantize_4bit`.
    out : np.ndarray, optional
        float32 C-contiguous array of ``x.shape`` for the result, not overlapping ``x``.

    Returns
    -------
    x_hat : np.ndarray
        float32, equal to ``dequantize_4bit(*quantize_4bit(x, ...), ...)``.
    stats : ErrorStats

    Examples
    --------
    >>> x_hat, st = fake_quantize_4bit(np.array([0.5, -1.0, 0.0, 2.0], np.float32), 32)
    >>> x_hat
    array([ 0.4922246, -1.0501461,  0.       ,  2.       ], dtype=float32)
    """
    x = check_array(x, "x", dtype=np.float32)
    blocksize = _check_blocksize(blocksize)
    code, mid, order = _TABLES[_check_quant_type(quant_type)]
    if out is None:
        out = np.empty(x.shape, np.float32)
    elif (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != x.shape
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError(
            f"out must be a writeable C-contiguous float32 array of shape {x.shape}; "
            f"allocate it with np.empty({x.shape}, np.float32)."
        )
    if np.may_share_memory(out, x):
        raise ValueError(
            "out overlaps x; expected a separate array, because x is read again after x_hat is "
            "written (for the error statistics). Pass out=np.empty_like(x), or omit out."
        )
    nb = _n_blocks(x.size, blocksize)
    sse = np.zeros(nb)
    signal = np.zeros(nb)
    maxerr = np.zeros(nb)
    bad = np.zeros(nb, np.uint8)
    _fake4_kernel(x.reshape(1, -1), blocksize, code, mid, order, quant_type != "nf4",
                  out.reshape(1, -1), sse, signal, maxerr, bad)
    if bad.any():
        raise_nonfinite(x, "x")
    return out, error_stats(sse, signal, maxerr, x.size)


def pack_4bit(codes, quant_type="nf4") -> np.ndarray:
    """Pack 4-bit codes two per byte in bitsandbytes' order (first value in the high nibble).

    Parameters
    ----------
    codes : np.ndarray
        uint8 0..15, any shape (packed in C order).
    quant_type : {"nf4", "fp4"}
        Picks the pad nibble for an odd count: the code of 0.0, as bitsandbytes pads.

    Returns
    -------
    np.ndarray
        uint8 ``[ceil(codes.size / 2)]``: bitsandbytes' packed tensor, flattened.

    Examples
    --------
    >>> pack_4bit(np.array([10, 2, 7], np.uint8))
    array([162, 119], dtype=uint8)
    """
    codes = check_array(codes, "codes", dtype=np.uint8)
    pad = np.uint8(_ZERO_CODE[_check_quant_type(quant_type)])
    if codes.size and int(codes.max()) > 15:
        raise ValueError(
            f"codes contain {int(codes.max())}, not a 4-bit code (0..15); expected codes "
            f"from quantize_4bit."
        )
    flat = codes.reshape(-1)
    out = np.empty(-(-flat.shape[0] // 2), np.uint8)
    _pack4_kernel(flat, pad, out)
    return out


def unpack_4bit(packed, n) -> np.ndarray:
    """Unpack bitsandbytes-ordered 4-bit bytes (high nibble first) into ``n`` codes.

    Parameters
    ----------
    packed : np.ndarray
        uint8, any shape (e.g. bitsandbytes' ``[ceil(n/2), 1]``), read in C order.
    n : int
        Number of codes (``prod(shape)`` of the quantized tensor).

    Returns
    -------
    np.ndarray
        uint8 ``[n]``.

    Examples
    --------
    >>> unpack_4bit(np.array([162, 119], np.uint8), 3)
    array([10,  2,  7], dtype=uint8)
    """
    packed = check_array(packed, "packed", dtype=np.uint8)
    n = check_int(n, "n", 0, 2**62, " Pass the number of values that were quantized.")
    if packed.size != -(-n // 2):
        raise ValueError(
            f"packed has {packed.size} bytes, but {n} codes take ceil({n}/2) = {-(-n // 2)}; "
            f"check n."
        )
    out = np.empty(n, np.uint8)
    _unpack4_kernel(packed.reshape(-1), out)
    return out
