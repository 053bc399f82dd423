"""llama.cpp's GGUF block formats: quantize to the exact packed bytes, unpack, dequantize.

Types (block of weights -> bytes, bits per weight with every scale counted):

=========  ======  =====  =====  ===================================================
type       block   bytes  bpw    layout of one block (C struct order, little endian)
=========  ======  =====  =====  ===================================================
Q4_0       32      18     4.5    d f16, qs[16] (weight j low nibble, j+16 high)
Q4_1       32      20     5.0    d f16, m f16, qs[16]
Q5_0       32      22     5.5    d f16, qh u32 (5th bits), qs[16]
Q5_1       32      24     6.0    d f16, m f16, qh u32, qs[16]
Q8_0       32      34     8.5    d f16, qs[32] int8
Q2_K       256     84     2.625  scales[16] (4-bit scale | 4-bit min), qs[64], d, dmin
Q3_K       256     110    3.4375 hmask[32], qs[64], scales[12] (16 x 6 bit), d
Q4_K       256     144    4.5    d, dmin, scales[12] (8 x 6-bit scale and min), qs[128]
Q5_K       256     176    5.5    d, dmin, scales[12], qh[32], qs[128]
Q6_K       256     210    6.5625 ql[128], qh[64], scales[16] int8, d
IQ4_NL     32      18     4.5    d f16, qs[16] (indices into a 16-entry non-linear table)
=========  ======  =====  =====  ===================================================

Quantization follows ``ggml-quants.c`` as ``llama-quantize`` calls it
(``ggml_quantize_chunk``): without an importance matrix the ``*_ref`` routines
(legacy types: plain absmax or min/max rounding; K-quants: the per-sub-block
scale search of :mod:`._gguf_search`, then 4/6/8-bit sub-block scales under a
float16 super-block scale, then the weights rounded again against the stored
scales); with one (``imatrix``, one non-negative weight per column) the
``*_impl`` routines, which weight the searches by ``imatrix * sqrt(sigma2 + x**2)``.
Q8_0 ignores the importance matrix (as ggml does); IQ4_NL always runs its search
(``quantize_iq4_nl``), weighted by ``x**2`` without one.

Dequantization does ggml's float32 arithmetic in gguf-py's order, so it equals
``gguf.quants.dequantize`` bit for bit. :func:`unpack_gguf` gives the codes (one
small integer per weight), the float32 scale and offset of every sub-block, and
the table that maps a code to its integer value: ``w = scale * table[code] + offset``.

A row whose length is not a multiple of the type's block is refused, naming the
type, the block and the row length (llama.cpp's rule).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from ._alloc import empty_mapped
from ._bits import ABS_MASK, I32, U64, bits_f32, f32_bits, f32_to_f16_bits, span
from ._checks import check_array, raise_nonfinite
from ._gguf_legacy import ROWS as LEGACY_ROWS
from ._gguf_search import F, GROUP_MAX_EPS, best_index, clamp, make_q3, make_qkx, make_qp, make_qx, nearest

__all__ = [
    "GGUF_TYPES",
    "GGUFType",
    "gguf_type",
    "gguf_nbytes",
    "quantize_gguf",
    "dequantize_gguf",
    "unpack_gguf",
    "f32_to_f16_bits",
]


@dataclass(frozen=True)
class GGUFType:
    """One GGUF block type.

    Attributes
    ----------
    name : str
        ``"Q4_K"`` etc., as llama.cpp spells it.
    ggml_type : int
        ggml's type id (``gguf.GGMLQuantizationType``).
    block : int
        Weights per block (32, or 256 for the K-quants' super-blocks).
    type_size : int
        Bytes per block.
    sub_block : int
        Weights per sub-block (each has its own scale, and offset where the type has one).
    has_offset : bool
        Whether sub-blocks store an offset (a minimum) besides the scale.
    """

    name: str
    ggml_type: int
    block: int
    type_size: int
    sub_block: int
    has_offset: bool

    @property
    def bits_per_weight(self) -> float:
        """``8 * type_size / block``: every stored bit, scales included."""
        return 8.0 * self.type_size / self.block


GGUF_TYPES: dict[str, GGUFType] = {
    t.name: t
    for t in (
        GGUFType("Q4_0", 2, 32, 18, 32, False),
        GGUFType("Q4_1", 3, 32, 20, 32, True),
        GGUFType("Q5_0", 6, 32, 22, 32, False),
        GGUFType("Q5_1", 7, 32, 24, 32, True),
        GGUFType("Q8_0", 8, 32, 34, 32, False),
        GGUFType("Q2_K", 10, 256, 84, 16, True),
        GGUFType("Q3_K", 11, 256, 110, 16, False),
        GGUFType("Q4_K", 12, 256, 144, 32, True),
        GGUFType("Q5_K", 13, 256, 176, 32, True),
        GGUFType("Q6_K", 14, 256, 210, 16, False),
        GGUFType("IQ4_NL", 20, 32, 18, 32, False),
    )
}

KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)

# code -> integer value, per type (the codes' meaning; w = scale * table[code] + offset)
_TABLES = {
    "Q4_0": np.arange(16) - 8, "Q4_1": np.arange(16), "Q5_0": np.arange(32) - 16, "Q5_1": np.arange(32),
    "Q8_0": np.arange(256).astype(np.uint8).view(np.int8), "Q2_K": np.arange(4), "Q3_K": np.arange(8) - 4,
    "Q4_K": np.arange(16), "Q5_K": np.arange(32), "Q6_K": np.arange(64) - 32, "IQ4_NL": KVALUES_IQ4NL,
}
_TABLES = {k: np.asarray(v).astype(np.float32) for k, v in _TABLES.items()}
_F16_TO_F32 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def gguf_type(name: str) -> GGUFType:
    """The :class:`GGUFType` called ``name`` (case-insensitive); unknown names get close matches suggested.

    Examples
    --------
    >>> gguf_type("q4_k").bits_per_weight
    4.5
    """
    if not isinstance(name, str):
        raise TypeError(f"A GGUF type name must be a str such as 'Q4_K' or 'Q8_0'; got {type(name).__name__} {name!r}.")
    key = name.upper()
    if key not in GGUF_TYPES:
        close = difflib.get_close_matches(key, list(GGUF_TYPES), n=3, cutoff=0.4)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown GGUF type {name!r}.{hint} Known types: {', '.join(GGUF_TYPES)}.")
    return GGUF_TYPES[key]


def gguf_nbytes(shape: tuple[int, ...], name: str) -> int:
    """Stored bytes of a tensor of ``shape`` (rows along the last dim) in type ``name``.

    Examples
    --------
    >>> gguf_nbytes((4096, 4096), "Q4_K") * 8 / 4096**2
    4.5
    """
    t = gguf_type(name)
    cols = int(shape[-1])
    _check_row(cols, t)
    n = 1
    for s in shape:
        n *= int(s)
    return n // t.block * t.type_size


def _check_row(cols: int, t: GGUFType) -> None:
    if cols % t.block:
        raise ValueError(
            f"{t.name} stores blocks of {t.block} weights along a row, and this row has {cols} weights "
            f"({cols} % {t.block} = {cols % t.block}); llama.cpp refuses such tensors. Use a type with "
            f"{'32-weight blocks (Q4_0, Q5_0, Q8_0, ...)' if t.block > 32 and cols % 32 == 0 else 'another type'}, "
            "or keep this tensor in F16/F32."
        )


# ----------------------------------------------------------------------------- float16


@njit(cache=True)
def _put_f16(out, o, f):
    """Write the float16 of ``f`` at ``out[o:o+2]`` (little endian); return its bit pattern."""
    h = f32_to_f16_bits(f)
    out[o] = h & 0xFF
    out[o + 1] = h >> 8
    return h


@njit(cache=True)
def _get_f16(buf, o, tab):
    return tab[np.int64(buf[o]) | (np.int64(buf[o + 1]) << 8)]


# ----------------------------------------------------------------------------- legacy 32-weight blocks


@njit(cache=True)
def _abs_argmax(x, xo, n):
    """(max |x|, the signed value there): the first strictly larger |x| wins (ggml's scan)."""
    # unsigned indices (span) let LLVM vectorise the scan; the first |x| == max is ggml's pick
    m = I32(0)
    for j in span(xo, n):
        m = I32(max(m, I32(f32_bits(x[j]) & ABS_MASK)))
    amax = bits_f32(m)
    if m == 0:
        return F(0.0), F(0.0)
    for j in span(xo, n):
        if abs(x[j]) == amax:
            return amax, x[j]
    return amax, F(0.0)


@njit(cache=True)
def _min_max(x, xo, n):
    mn = np.float32(np.inf)
    mx = np.float32(-np.inf)
    for j in span(xo, n):
        mn = min(mn, x[j])
        mx = max(mx, x[j])
    return mn, mx


@njit(cache=True)
def _row_sigma2(x, n):
    s = F(0.0)
    for j in range(n):
        s += x[j] * x[j]
    return s / F(n)


@njit(cache=True)
def _imatrix_weights(x, xo, qw, sigma2, n, w):
    for j in range(n):
        v = x[xo + j]
        w[j] = qw[xo + j] * np.sqrt(sigma2 + v * v)


@njit(cache=True)
def _pack_nibbles(L, out, o):
    ou = U64(o)
    for j in span(0, 16):
        out[ou + j] = (L[j] & 0xF) | ((L[j + U64(16)] & 0xF) << 4)


@njit(cache=True)
def _pack_qh(L, out, o):
    qh = 0
    for j in range(32):
        qh |= ((L[j] >> 4) & 1) << j
    for k in range(4):
        out[o + k] = (qh >> (8 * k)) & 0xFF


@njit(cache=True)
def _row_legacy(kind, x, qw, has_qw, out):
    """One row of a legacy type. kind: 0 Q4_0, 1 Q4_1, 2 Q5_0, 3 Q5_1, 4 Q8_0, 5 IQ4_NL."""
    n = x.shape[0]
    L = np.zeros(32, np.int32)
    aux = np.zeros(32, np.int32)
    w = np.zeros(32, np.float32)
    sizes = (18, 20, 22, 24, 34, 18)
    ts = sizes[kind]
    sigma2 = _row_sigma2(x, n) if has_qw and kind < 4 else F(0.0)
    for b in range(n // 32):
        xo = b * 32
        o = b * ts
        if kind == 5:
            _block_iq4nl(x, xo, qw, has_qw, out, o, L, w)
            continue
        if kind == 4:
            amax, _ = _abs_argmax(x, xo, 32)
            d = amax / F(127.0)
            idd = F(1.0) / d if d != F(0.0) else F(0.0)
            _put_f16(out, o, d)
            xu = U64(xo)
            ou = U64(o + 2)
            for j in span(0, 32):
                v = np.float64(x[xu + j] * idd)  # roundf: half away from zero (exact in float64)
                out[ou + j] = np.int32(np.trunc(v + np.copysign(0.5, v))) & 0xFF
            continue
        symmetric = kind == 0 or kind == 2
        nmax = 8 if kind < 2 else 16
        if has_qw:
            _imatrix_weights(x, xo, qw, sigma2, 32, w)
            if symmetric:
                d = make_qx(32, nmax, x, xo, L, 0, w, 0, True)
                _put_f16(out, o, d)
                p = o + 2
            else:
                d, the_min = make_qkx(32, 2 * nmax - 1, x, xo, w, L, 0, aux, F(-0.9), F(0.05), 36, False)
                _put_f16(out, o, d)
                _put_f16(out, o + 2, -the_min)
                p = o + 4
        elif symmetric:
            _, mx = _abs_argmax(x, xo, 32)
            d = mx / F(-nmax)
            idd = F(1.0) / d if d != F(0.0) else F(0.0)
            _put_f16(out, o, d)
            p = o + 2
            top = np.int32(2 * nmax - 1)
            half = F(nmax + 0.5)
            xu = U64(xo)
            for j in span(0, 32):
                L[j] = min(top, np.int32(x[xu + j] * idd + half))  # C's (int8_t) cast truncates
        else:
            mn, mx = _min_max(x, xo, 32)
            d = (mx - mn) / F(2 * nmax - 1)
            idd = F(1.0) / d if d != F(0.0) else F(0.0)
            _put_f16(out, o, d)
            _put_f16(out, o + 2, mn)
            p = o + 4
            top = np.int32(2 * nmax - 1)
            xu = U64(xo)
            for j in span(0, 32):
                L[j] = min(top, np.int32((x[xu + j] - mn) * idd + F(0.5)))
        if nmax == 16:
            _pack_qh(L, out, p)
            p += 4
        _pack_nibbles(L, out, p)


@njit(cache=True)
def _block_iq4nl(x, xo, qw, has_qw, out, o, L, w):
    """One IQ4_NL block as ``quantize_iq4_nl`` makes it (search over 15 scales, ntry = 7)."""
    values = KVALUES_IQ4NL
    sigma2 = F(0.0)
    for j in range(32):
        sigma2 += x[xo + j] * x[xo + j]
    sigma2 *= F(2.0) / F(32.0)
    for j in range(32):
        v = x[xo + j]
        w[j] = qw[xo + j] * np.sqrt(sigma2 + v * v) if has_qw else v * v
    amax, mx = _abs_argmax(x, xo, 32)
    scale = F(0.0)
    if not amax < GROUP_MAX_EPS:
        d = -mx / F(values[0])
        idd = F(1.0) / d
        sumqx = F(0.0)
        sumq2 = F(0.0)
        for j in range(32):
            q = F(values[best_index(values, idd * x[xo + j])])
            sumqx += w[j] * q * x[xo + j]
            sumq2 += w[j] * q * q
        d = sumqx / sumq2 if sumq2 > F(0.0) else F(0.0)
        best = d * sumqx
        for itry in range(-7, 8):
            idd = F(itry + values[0]) / mx
            sumqx = F(0.0)
            sumq2 = F(0.0)
            for j in range(32):
                q = F(values[best_index(values, idd * x[xo + j])])
                sumqx += w[j] * q * x[xo + j]
                sumq2 += w[j] * q * q
            if sumq2 > F(0.0) and sumqx * sumqx > best * sumq2:
                d = sumqx / sumq2
                best = d * sumqx
        scale = d
    _put_f16(out, o, scale)
    idd = F(1.0) / scale if scale != F(0.0) else F(0.0)
    for j in range(32):
        L[j] = best_index(values, idd * x[xo + j])
    _pack_nibbles(L, out, o + 2)


# ----------------------------------------------------------------------------- K-quants (256-weight super-blocks)


@njit(cache=True)
def _pack_2bit(L, out, o):
    """qs[64]: for each half of 128, byte l holds weights l, l+32, l+64, l+96 (2 bits each, low first)."""
    for h in range(2):
        for l in range(32):
            j = 128 * h + l
            out[o + 32 * h + l] = L[j] | (L[j + 32] << 2) | (L[j + 64] << 4) | (L[j + 96] << 6)


@njit(cache=True)
def _put_scale_min_k4(ls, lm, sc):
    """The 12-byte packing of 8 six-bit scales and mins (Q4_K, Q5_K)."""
    for j in range(12):
        sc[j] = 0
    for j in range(8):
        if j < 4:
            sc[j] = ls[j]
            sc[j + 4] = lm[j]
        else:
            sc[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4)
            sc[j - 4] |= (ls[j] >> 4) << 6
            sc[j] |= (lm[j] >> 4) << 6


@njit(cache=True)
def _get_scale_min_k4(j, sc):
    if j < 4:
        return sc[j] & 63, sc[j + 4] & 63
    return (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)


@njit(cache=True)
def _q3_scale(j, sc):
    lo = sc[j] & 0xF if j < 8 else sc[j - 8] >> 4
    return (lo | (((sc[8 + j % 4] >> (2 * (j // 4))) & 3) << 4)) - 32


@njit(cache=True)
def _superblock_sigma2(x, xo, factor):
    s = F(0.0)
    for j in range(256):
        s += x[xo + j] * x[xo + j]
    return factor * s / F(256.0)


@njit(cache=True)
def _block_q2k(x, xo, qw, has_qw, out, o, tab, L, aux, w, scales, mins, sw, Ls, Lm):
    sigma2 = F(0.0)
    if has_qw:
        sigma2 = _superblock_sigma2(x, xo, F(1.0))
    for j in range(16):
        s0 = xo + 16 * j
        if has_qw:
            for l in range(16):
                v = x[s0 + l]
                w[l] = qw[s0 + l] * np.sqrt(sigma2 + v * v)
            s = F(0.0)
            for l in range(16):
                s += w[l]
            sw[j] = s
            scales[j], mins[j] = make_qkx(16, 3, x, s0, w, L, 16 * j, aux, F(-0.9), F(0.05), 36, False)
        else:
            for l in range(16):
                w[l] = abs(x[s0 + l])
            scales[j], mins[j] = make_qkx(16, 3, x, s0, w, L, 16 * j, aux, F(-0.5), F(0.1), 15, True)
    sc = np.zeros(16, np.int64)
    if has_qw:
        dm = make_qp(16, 15, scales, Ls, sw)
        mm = make_qp(16, 15, mins, Lm, sw)
        hd = _put_f16(out, o + 80, dm)
        hm = _put_f16(out, o + 82, mm)
        for j in range(16):
            sc[j] = (Ls[j] | (Lm[j] << 4)) & 0xFF
    else:
        max_scale = F(0.0)
        max_min = F(0.0)
        for j in range(16):
            if scales[j] > max_scale:
                max_scale = scales[j]
            if mins[j] > max_min:
                max_min = mins[j]
        if max_scale > F(0.0):
            iscale = F(15.0) / max_scale
            for j in range(16):
                sc[j] = nearest(iscale * scales[j]) & 0xFF
            hd = _put_f16(out, o + 80, max_scale / F(15.0))
        else:
            hd = _put_f16(out, o + 80, F(0.0))
        if max_min > F(0.0):
            iscale = F(15.0) / max_min
            for j in range(16):
                sc[j] = (sc[j] | (nearest(iscale * mins[j]) << 4)) & 0xFF
            hm = _put_f16(out, o + 82, max_min / F(15.0))
        else:
            hm = _put_f16(out, o + 82, F(0.0))
    d_all = tab[hd]
    m_all = tab[hm]
    for j in range(16):
        out[o + j] = sc[j]
        d = d_all * F(sc[j] & 0xF)
        if d == F(0.0):
            continue
        dm = m_all * F(sc[j] >> 4)
        for ii in range(16):
            L[16 * j + ii] = clamp(nearest((x[xo + 16 * j + ii] + dm) / d), 0, 3)
    _pack_2bit(L, out, o + 16)


@njit(cache=True)
def _block_q3k(x, xo, qw, has_qw, out, o, tab, L, w, scales, sw, Ls):
    if has_qw:
        sigma2 = _superblock_sigma2(x, xo, F(2.0))
        for j in range(16):
            s0 = xo + 16 * j
            for l in range(16):
                v = x[s0 + l]
                w[l] = qw[s0 + l] * np.sqrt(sigma2 + v * v)
            s = F(0.0)
            for l in range(16):
                s += w[l]
            sw[j] = s
            scales[j] = make_qx(16, 4, x, s0, L, 16 * j, w, 0, True)
    else:
        for j in range(16):
            scales[j] = make_q3(16, 4, x, xo + 16 * j, L, 16 * j)
    sc = np.zeros(12, np.int64)
    max_scale = F(0.0)
    if has_qw:
        d_block = make_qx(16, 32, scales, 0, Ls, 0, sw, 0, True)
        hd = _put_f16(out, o + 108, d_block)
        levels = Ls
    else:
        amax = F(0.0)
        for j in range(16):
            if abs(scales[j]) > amax:
                amax = abs(scales[j])
                max_scale = scales[j]
        levels = np.zeros(16, np.int32)
        if max_scale != F(0.0):
            iscale = F(-32.0) / max_scale
            for j in range(16):
                levels[j] = clamp(nearest(iscale * scales[j]), -32, 31) + 32
            hd = _put_f16(out, o + 108, F(1.0) / iscale)
        else:
            hd = _put_f16(out, o + 108, F(0.0))
    if has_qw or max_scale != F(0.0):
        for j in range(16):
            l = levels[j]
            if j < 8:
                sc[j] = l & 0xF
            else:
                sc[j - 8] |= (l & 0xF) << 4
            sc[j % 4 + 8] |= (l >> 4) << (2 * (j // 4))
    for j in range(12):
        out[o + 96 + j] = sc[j] & 0xFF
    d_all = tab[hd]
    for j in range(16):
        d = d_all * F(_q3_scale(j, sc))
        if d == F(0.0):
            continue
        for ii in range(16):
            L[16 * j + ii] = clamp(nearest(x[xo + 16 * j + ii] / d), -4, 3) + 4
    hmask = np.zeros(32, np.int64)
    for j in range(256):
        if L[j] > 3:
            hmask[j % 32] |= 1 << (j // 32)
            L[j] -= 4
    for j in range(32):
        out[o + j] = hmask[j]
    _pack_2bit(L, out, o + 32)


@njit(cache=True)
def _block_q45k(nmax, x, xo, qw, has_qw, out, o, tab, L, aux, w, scales, mins, sw, Ls, Lm):
    """Q4_K (nmax 15) or Q5_K (nmax 31): eight 32-weight sub-blocks with 6-bit scales and mins."""
    sigma2 = F(0.0)
    if has_qw:
        sigma2 = _superblock_sigma2(x, xo, F(2.0))
    for j in range(8):
        s0 = xo + 32 * j
        if has_qw:
            for l in range(32):
                v = x[s0 + l]
                w[l] = qw[s0 + l] * np.sqrt(sigma2 + v * v)
            s = F(0.0)
            for l in range(32):
                s += w[l]
            sw[j] = s
            scales[j], mins[j] = make_qkx(32, nmax, x, s0, w, L, 32 * j, aux, F(-0.9), F(0.05), 36, False)
        else:
            sum_x2 = F(0.0)
            for l in range(32):
                sum_x2 += x[s0 + l] * x[s0 + l]
            av_x = np.sqrt(sum_x2 / F(32.0))
            for l in range(32):
                w[l] = av_x + abs(x[s0 + l])
            if nmax == 15:
                scales[j], mins[j] = make_qkx(32, 15, x, s0, w, L, 32 * j, aux, F(-1.0), F(0.1), 20, False)
            else:
                scales[j], mins[j] = make_qkx(32, 31, x, s0, w, L, 32 * j, aux, F(-0.5), F(0.1), 15, False)
    ls = np.zeros(8, np.int64)
    lm = np.zeros(8, np.int64)
    if has_qw:
        d_block = make_qp(8, 63, scales, Ls, sw)
        m_block = make_qp(8, 63, mins, Lm, sw)
        for j in range(8):
            ls[j] = min(63, Ls[j] & 0xFF)
            lm[j] = min(63, Lm[j] & 0xFF)
        hd = _put_f16(out, o, d_block)
        hm = _put_f16(out, o + 2, m_block)
    else:
        max_scale = F(0.0)
        max_min = F(0.0)
        for j in range(8):
            if scales[j] > max_scale:
                max_scale = scales[j]
            if mins[j] > max_min:
                max_min = mins[j]
        inv_scale = F(63.0) / max_scale if max_scale > F(0.0) else F(0.0)
        inv_min = F(63.0) / max_min if max_min > F(0.0) else F(0.0)
        for j in range(8):
            ls[j] = min(63, nearest(inv_scale * scales[j]) & 0xFF)
            lm[j] = min(63, nearest(inv_min * mins[j]) & 0xFF)
        hd = _put_f16(out, o, max_scale / F(63.0))
        hm = _put_f16(out, o + 2, max_min / F(63.0))
    sc = np.zeros(12, np.int64)
    _put_scale_min_k4(ls, lm, sc)
    for j in range(12):
        out[o + 4 + j] = sc[j] & 0xFF
    d_all = tab[hd]
    m_all = tab[hm]
    for j in range(8):
        s, m = _get_scale_min_k4(j, sc)
        d = d_all * F(s)
        if d == F(0.0):
            continue
        dm = m_all * F(m)
        for ii in range(32):
            L[32 * j + ii] = clamp(nearest((x[xo + 32 * j + ii] + dm) / d), 0, nmax)
    if nmax == 15:
        for c in range(4):
            for l in range(32):
                out[o + 16 + 32 * c + l] = L[64 * c + l] | (L[64 * c + l + 32] << 4)
    else:
        qh = np.zeros(32, np.int64)
        for c in range(4):
            for l in range(32):
                l1 = L[64 * c + l]
                l2 = L[64 * c + l + 32]
                if l1 > 15:
                    l1 -= 16
                    qh[l] |= 1 << (2 * c)
                if l2 > 15:
                    l2 -= 16
                    qh[l] |= 2 << (2 * c)
                out[o + 48 + 32 * c + l] = l1 | (l2 << 4)
        for j in range(32):
            out[o + 16 + j] = qh[j]


@njit(cache=True)
def _block_q6k(x, xo, qw, has_qw, out, o, tab, L, scales):
    max_scale = F(0.0)
    max_abs_scale = F(0.0)
    for ib in range(16):
        s = make_qx(16, 32, x, xo + 16 * ib, L, 16 * ib, qw, xo + 16 * ib, has_qw)
        scales[ib] = s
        if abs(s) > max_abs_scale:
            max_abs_scale = abs(s)
            max_scale = s
    if max_abs_scale < GROUP_MAX_EPS:
        for j in range(210):
            out[o + j] = 0
        return
    iscale = F(-128.0) / max_scale
    hd = _put_f16(out, o + 208, F(1.0) / iscale)
    d_all = tab[hd]
    for ib in range(16):
        q = ((min(127, nearest(iscale * scales[ib])) + 128) & 0xFF) - 128  # stored as int8
        out[o + 192 + ib] = q & 0xFF
        d = d_all * F(q)
        if d == F(0.0):
            continue
        for ii in range(16):
            L[16 * ib + ii] = clamp(nearest(x[xo + 16 * ib + ii] / d), -32, 31) + 32
    for h in range(2):
        for l in range(32):
            j = 128 * h + l
            out[o + 64 * h + l] = (L[j] & 0xF) | ((L[j + 64] & 0xF) << 4)
            out[o + 64 * h + l + 32] = (L[j + 32] & 0xF) | ((L[j + 96] & 0xF) << 4)
            out[o + 128 + 32 * h + l] = (L[j] >> 4) | ((L[j + 32] >> 4) << 2) | ((L[j + 64] >> 4) << 4) | (
                (L[j + 96] >> 4) << 6)


@njit(cache=True)
def _row_kquant(kind, x, qw, has_qw, out, tab):
    """One row of a K-quant. kind: 2 Q2_K, 3 Q3_K, 4 Q4_K, 5 Q5_K, 6 Q6_K."""
    L = np.zeros(256, np.int32)
    aux = np.zeros(32, np.int32)
    w = np.zeros(32, np.float32)
    scales = np.zeros(16, np.float32)
    mins = np.zeros(16, np.float32)
    sw = np.zeros(16, np.float32)
    Ls = np.zeros(16, np.int32)
    Lm = np.zeros(16, np.int32)
    sizes = (0, 0, 84, 110, 144, 176, 210)
    ts = sizes[kind]
    for b in range(x.shape[0] // 256):
        xo = 256 * b
        o = ts * b
        if kind == 2:
            _block_q2k(x, xo, qw, has_qw, out, o, tab, L, aux, w, scales, mins, sw, Ls, Lm)
        elif kind == 3:
            _block_q3k(x, xo, qw, has_qw, out, o, tab, L, w, scales, sw, Ls)
        elif kind == 4:
            _block_q45k(15, x, xo, qw, has_qw, out, o, tab, L, aux, w, scales, mins, sw, Ls, Lm)
        elif kind == 5:
            _block_q45k(31, x, xo, qw, has_qw, out, o, tab, L, aux, w, scales, mins, sw, Ls, Lm)
        else:
            _block_q6k(x, xo, qw, has_qw, out, o, tab, L, scales)


@njit(cache=True, parallel=True)
def _quantize_legacy_kernel(kind, x, qw, has_qw, out):
    # x [rows, cols] float32; qw [cols] float32; out [rows, row_bytes] uint8
    for r in prange(x.shape[0]):
        _row_legacy(kind, x[r], qw, has_qw, out[r])


@njit(cache=True, parallel=True)
def _quantize_k_kernel(kind, x, qw, has_qw, out, tab):
    for r in prange(x.shape[0]):
        _row_kquant(kind, x[r], qw, has_qw, out[r], tab)


_LEGACY_KIND = {"Q4_0": 0, "Q4_1": 1, "Q5_0": 2, "Q5_1": 3, "Q8_0": 4, "IQ4_NL": 5}
_K_KIND = {"Q2_K": 2, "Q3_K": 3, "Q4_K": 4, "Q5_K": 5, "Q6_K": 6}


def _check_matrix(x, name: str = "x", *, finite: bool = True) -> np.ndarray:
    """``x`` as a C-contiguous float32 ``[rows, cols]``; with ``finite``, NaN/Inf are refused here."""
    x = check_array(x, name, dtype=np.float32, ndim=(1, 2))
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}); expected at least one row of weights.")
    if finite and not np.isfinite(x).all():
        raise_nonfinite(x, name)
    return x


def quantize_gguf(x: np.ndarray, type_name: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize the rows of ``x`` to GGUF type ``type_name``: the exact bytes llama.cpp stores.

    Parameters
    ----------
    x : np.ndarray
        float32 ``[rows, cols]`` (or one row ``[cols]``), finite; ``cols`` a multiple of the type's block.
    type_name : str
        One of :data:`GGUF_TYPES` (``"Q4_0"`` ... ``"Q6_K"``, ``"IQ4_NL"``).
    imatrix : np.ndarray, optional
        Importance of each column, float32 ``[cols]``, non-negative (llama.cpp's
        importance matrix: the mean of the squared activations of that input channel).

    Returns
    -------
    np.ndarray
        uint8 ``[rows, cols // block * type_size]``: the blocks of each row, in order.

    Examples
    --------
    >>> x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    >>> quantize_gguf(x, "Q8_0").shape
    (2, 34)
    """
    t = gguf_type(type_name)
    fused = imatrix is None and t.name in LEGACY_ROWS  # these kernels check finiteness in their own pass
    x = _check_matrix(x, finite=not fused)
    _check_row(x.shape[1], t)
    out = empty_mapped((x.shape[0], x.shape[1] // t.block * t.type_size), np.uint8)
    if fused:
        finite = np.empty(x.shape[0], np.bool_)
        LEGACY_ROWS[t.name](x, out, finite)
        if not finite.all():
            raise_nonfinite(x, "x")
        return out
    has_qw = imatrix is not None
    if has_qw:
        qw = check_array(imatrix, "imatrix", dtype=np.float32, ndim=1)
        if qw.shape[0] != x.shape[1]:
            raise ValueError(
                f"imatrix has {qw.shape[0]} entries but the rows have {x.shape[1]} columns; "
                "pass one importance per input channel (column) of the weight."
            )
        if not (np.isfinite(qw).all() and (qw >= 0).all()):
            raise ValueError("imatrix must be finite and non-negative (mean squared activations per input channel).")
    else:
        qw = np.zeros(x.shape[1], np.float32)
    if t.name in _LEGACY_KIND:
        _quantize_legacy_kernel(_LEGACY_KIND[t.name], x, qw, has_qw, out)
    else:
        _quantize_k_kernel(_K_KIND[t.name], x, qw, has_qw, out, _F16_TO_F32)
    return out


# ----------------------------------------------------------------------------- unpack / dequantize


@njit(cache=True)
def _unpack_row(kind, p, codes, scale, offset, tab):
    """Codes, sub-block scales and offsets of one packed row. kind as in _KINDS."""
    # p [row_bytes] uint8; codes [cols] uint8; scale, offset [n_sub] float32
    p = p.astype(np.int64)  # byte arithmetic in int64 (numba widens uint8 with int64 to float)
    n = codes.shape[0]
    if kind <= 5:  # 32-weight blocks
        sizes = (18, 20, 22, 24, 34, 18)
        ts = sizes[kind]
        for b in range(n // 32):
            o = ts * b
            c0 = 32 * b
            scale[b] = _get_f16(p, o, tab)
            q = o + 2
            if kind == 1 or kind == 3:
                offset[b] = _get_f16(p, o + 2, tab)
                q = o + 4
            if kind == 4:
                for j in range(32):
                    codes[c0 + j] = p[q + j]
                continue
            qh = 0
            if kind == 2 or kind == 3:
                qh = p[q] | (p[q + 1] << 8) | (p[q + 2] << 16) | (p[q + 3] << 24)
                q += 4
            for j in range(16):
                lo = p[q + j] & 0xF
                hi = p[q + j] >> 4
                if kind == 2 or kind == 3:
                    lo |= ((qh >> j) & 1) << 4
                    hi |= ((qh >> (j + 16)) & 1) << 4
                codes[c0 + j] = lo
                codes[c0 + j + 16] = hi
        return
    ts = (84, 110, 144, 176, 210)[kind - 6]
    for b in range(n // 256):
        o = ts * b
        c0 = 256 * b
        if kind == 6:  # Q2_K
            d = _get_f16(p, o + 80, tab)
            dmin = _get_f16(p, o + 82, tab)
            for j in range(16):
                s = p[o + j]
                scale[16 * b + j] = d * F(s & 0xF)
                offset[16 * b + j] = -(dmin * F(s >> 4))
            for h in range(2):
                for l in range(32):
                    v = p[o + 16 + 32 * h + l]
                    for k in range(4):
                        codes[c0 + 128 * h + 32 * k + l] = (v >> (2 * k)) & 3
        elif kind == 7:  # Q3_K
            d = _get_f16(p, o + 108, tab)
            sc = p[o + 96:o + 108]
            for j in range(16):
                scale[16 * b + j] = d * F(_q3_scale(j, sc))
            for h in range(2):
                for l in range(32):
                    v = p[o + 32 + 32 * h + l]
                    for k in range(4):
                        j = 128 * h + 32 * k + l
                        hbit = (p[o + j % 32] >> (j // 32)) & 1
                        codes[c0 + j] = ((v >> (2 * k)) & 3) | (hbit << 2)
        elif kind == 8 or kind == 9:  # Q4_K, Q5_K
            d = _get_f16(p, o, tab)
            dmin = _get_f16(p, o + 2, tab)
            sc = p[o + 4:o + 16]
            for j in range(8):
                s, m = _get_scale_min_k4(j, sc)
                scale[8 * b + j] = d * F(s)
                offset[8 * b + j] = -(dmin * F(m))
            qs = o + 16 if kind == 8 else o + 48
            for c in range(4):
                for l in range(32):
                    v = p[qs + 32 * c + l]
                    lo = v & 0xF
                    hi = v >> 4
                    if kind == 9:
                        lo |= ((p[o + 16 + l] >> (2 * c)) & 1) << 4
                        hi |= ((p[o + 16 + l] >> (2 * c + 1)) & 1) << 4
                    codes[c0 + 64 * c + l] = lo
                    codes[c0 + 64 * c + l + 32] = hi
        else:  # Q6_K
            d = _get_f16(p, o + 208, tab)
            for j in range(16):
                s = p[o + 192 + j]
                scale[16 * b + j] = d * F(s - 256 if s > 127 else s)
            for h in range(2):
                for l in range(32):
                    a = p[o + 64 * h + l]
                    c = p[o + 64 * h + l + 32]
                    hb = p[o + 128 + 32 * h + l]
                    j = 128 * h + l
                    codes[c0 + j] = (a & 0xF) | ((hb & 3) << 4)
                    codes[c0 + j + 32] = (c & 0xF) | (((hb >> 2) & 3) << 4)
                    codes[c0 + j + 64] = (a >> 4) | (((hb >> 4) & 3) << 4)
                    codes[c0 + j + 96] = (c >> 4) | (((hb >> 6) & 3) << 4)


@njit(cache=True, parallel=True)
def _unpack_kernel(kind, packed, codes, scale, offset, tab):
    for r in prange(packed.shape[0]):
        _unpack_row(kind, packed[r], codes[r], scale[r], offset[r], tab)


@njit(cache=True, parallel=True)
def _dequant_kernel(kind, packed, sub, has_offset, table, out, tab):
    # packed [rows, row_bytes] uint8 -> out [rows, cols] float32
    rows, cols = out.shape
    n_sub = cols // sub
    for r in prange(rows):
        codes = np.empty(cols, np.uint8)
        scale = np.empty(n_sub, np.float32)
        offset = np.zeros(n_sub, np.float32)
        _unpack_row(kind, packed[r], codes, scale, offset, tab)
        row = out[r]
        for s in range(n_sub):
            d = scale[s]
            m = offset[s]
            if has_offset:
                for j in span(s * sub, sub):
                    row[j] = d * table[codes[j]] + m
            else:
                for j in span(s * sub, sub):
                    row[j] = d * table[codes[j]]


_KINDS = {"Q4_0": 0, "Q4_1": 1, "Q5_0": 2, "Q5_1": 3, "Q8_0": 4, "IQ4_NL": 5,
          "Q2_K": 6, "Q3_K": 7, "Q4_K": 8, "Q5_K": 9, "Q6_K": 10}


def _check_packed(packed, t: GGUFType, cols: int) -> np.ndarray:
    packed = check_array(packed, "packed", dtype=np.uint8, ndim=(1, 2))
    if packed.ndim == 1:
        packed = packed.reshape(1, -1)
    _check_row(int(cols), t)
    want = int(cols) // t.block * t.type_size
    if packed.shape[1] != want:
        raise ValueError(
            f"packed rows have {packed.shape[1]} bytes, but {cols} weights of {t.name} take {want} "
            f"({cols // t.block} blocks of {t.type_size} bytes). Pass the cols the bytes were made for."
        )
    return packed


def unpack_gguf(packed: np.ndarray, type_name: str, cols: int):
    """Codes and per-sub-block parameters of GGUF bytes: ``w = scale * table[code] + offset``.

    Returns
    -------
    codes : np.ndarray
        uint8 ``[rows, cols]``, the stored index of every weight.
    scale : np.ndarray
        float32 ``[rows, cols // sub_block]``, the effective scale of each sub-block.
    offset : np.ndarray
        float32, like ``scale`` (zeros for types without an offset).
    table : np.ndarray
        float32: the integer value of each code (``code - 8`` for Q4_0, the non-linear levels of IQ4_NL).

    Examples
    --------
    >>> x = np.arange(32, dtype=np.float32).reshape(1, 32)
    >>> codes, scale, offset, table = unpack_gguf(quantize_gguf(x, "Q4_1"), "Q4_1", 32)
    >>> codes[0, :4].tolist(), float(offset[0, 0])
    ([0, 0, 1, 1], 0.0)
    """
    t = gguf_type(type_name)
    packed = _check_packed(packed, t, cols)
    rows = packed.shape[0]
    codes = np.empty((rows, cols), np.uint8)
    scale = np.empty((rows, cols // t.sub_block), np.float32)
    offset = np.zeros_like(scale)
    _unpack_kernel(_KINDS[t.name], packed, codes, scale, offset, _F16_TO_F32)
    return codes, scale, offset, _TABLES[t.name].copy()


def dequantize_gguf(packed: np.ndarray, type_name: str, cols: int) -> np.ndarray:
    """float32 ``[rows, cols]`` weights of GGUF bytes, bit for bit as ``gguf.quants.dequantize``.

    Examples
    --------
    >>> x = np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 256)
    >>> w = dequantize_gguf(quantize_gguf(x, "Q6_K"), "Q6_K", 256)
    >>> bool(np.abs(w - x).max() < 0.01)
    True
    """
    t = gguf_type(type_name)
    packed = _check_packed(packed, t, cols)
    out = empty_mapped((packed.shape[0], int(cols)), np.float32)
    _dequant_kernel(_KINDS[t.name], packed, t.sub_block, t.has_offset, _TABLES[t.name], out, _F16_TO_F32)
    return out
