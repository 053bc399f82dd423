"""Bit packing of uint8 codes: INT8 (identity), INT4, INT3, INT2 (and 5-7 bits).

Layout: the codes of a row form one little-endian bit stream; code ``i``
occupies bits ``[i*bits, (i+1)*bits)``, where bit ``k`` is bit ``k % 8`` of byte
``k // 8``. So INT4 puts two codes per byte, low nibble first; INT2 four per
byte, lowest bits first; INT3 packs 8 codes into 3 bytes. A row of ``n`` codes
takes exactly ``ceil(n * bits / 8)`` bytes; unused high bits of the last byte
are 0. 2-D input is packed row by row (each row starts on a byte boundary).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._checks import check_array, check_bits, check_int

__all__ = ["packed_nbytes", "pack", "unpack"]


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes needed for ``n`` codes of ``bits`` bits: ``ceil(n * bits / 8)``.

    Examples
    --------
    >>> packed_nbytes(10, 3)
    4
    """
    return -(-int(n) * int(bits) // 8)


@njit(cache=True)
def _pack_row(cs, out, bits):
    # cs [n] uint8 codes < 2**bits; out [ceil(n*bits/8)] uint8
    n = cs.shape[0]
    if bits == 8:
        for i in range(n):
            out[i] = cs[i]
    elif bits == 4:
        half = n // 2
        for i in range(half):
            out[i] = cs[2 * i] | (cs[2 * i + 1] << 4)
        if n % 2:
            out[half] = cs[n - 1]
    elif bits == 2:
        quarter = n // 4
        for i in range(quarter):
            out[i] = cs[4 * i] | (cs[4 * i + 1] << 2) | (cs[4 * i + 2] << 4) | (cs[4 * i + 3] << 6)
        if n % 4:
            b = 0
            for k in range(n - 4 * quarter):
                b |= np.int64(cs[4 * quarter + k]) << (2 * k)
            out[quarter] = b
    else:  # generic little-endian bit stream (3, 5, 6, 7 bits)
        acc = np.uint64(0)
        nacc = 0
        o = 0
        for i in range(n):
            acc |= np.uint64(cs[i]) << np.uint64(nacc)
            nacc += bits
            while nacc >= 8:
                out[o] = np.uint8(acc & np.uint64(255))
                acc >>= np.uint64(8)
                nacc -= 8
                o += 1
        if nacc > 0:
            out[o] = np.uint8(acc & np.uint64(255))


@njit(cache=True)
def _unpack_row(ps, out, bits):
    # ps [ceil(n*bits/8)] uint8; out [n] uint8
    n = out.shape[0]
    if bits == 8:
        for i in range(n):
            out[i] = ps[i]
    elif bits == 4:
        half = n // 2
        for i in range(half):
            b = ps[i]
            out[2 * i] = b & 15
            out[2 * i + 1] = b >> 4
        if n % 2:
            out[n - 1] = ps[half] & 15
    elif bits == 2:
        quarter = n // 4
        for i in range(quarter):
            b = ps[i]
            out[4 * i] = b & 3
            out[4 * i + 1] = (b >> 2) & 3
            out[4 * i + 2] = (b >> 4) & 3
            out[4 * i + 3] = b >> 6
        for k in range(n - 4 * quarter):
            out[4 * quarter + k] = (ps[quarter] >> (2 * k)) & 3
    else:
        mask = np.uint64((1 << bits) - 1)
        acc = np.uint64(0)
        nacc = 0
        p = 0
        for i in range(n):
            while nacc < bits:
                acc |= np.uint64(ps[p]) << np.uint64(nacc)
                p += 1
                nacc += 8
            out[i] = np.uint8(acc & mask)
            acc >>= np.uint64(bits)
            nacc -= bits


@njit(cache=True, parallel=True)
def _pack_kernel(codes, out, bits):
    # codes [rows, n] uint8; out [rows, ceil(n*bits/8)] uint8
    for r in prange(codes.shape[0]):
        _pack_row(codes[r], out[r], bits)


@njit(cache=True, parallel=True)
def _unpack_kernel(packed, out, bits):
    # packed [rows, ceil(n*bits/8)] uint8; out [rows, n] uint8
    for r in prange(packed.shape[0]):
        _unpack_row(packed[r], out[r], bits)


def pack(codes, bits) -> np.ndarray:
    """Pack uint8 codes of ``bits`` bits into bytes, row by row.

    Parameters
    ----------
    codes : np.ndarray
        uint8 ``[n]`` or ``[rows, n]``, every value below ``2**bits``.
    bits : int
        2 to 8 (8 is a copy).

    Returns
    -------
    np.ndarray
        uint8 ``[ceil(n*bits/8)]`` or ``[rows, ceil(n*bits/8)]``.

    Examples
    --------
    >>> pack(np.array([1, 2, 3], np.uint8), 4)
    array([33,  3], dtype=uint8)
    """
    codes = check_array(codes, "codes", dtype=np.uint8, ndim=(1, 2))  # [n] or [rows, n]
    bits = check_bits(bits)
    if codes.size and bits < 8:
        top = int(codes.max())
        if top >= 1 << bits:
            where = np.unravel_index(int(np.argmax(codes >= 1 << bits)), codes.shape)
            raise ValueError(
                f"codes has value {top} (first too-large value at index {tuple(int(i) for i in where)}), "
                f"which does not fit in {bits} bits: expected values 0..{(1 << bits) - 1}. "
                f"Pack with bits={int(top).bit_length()} or larger, or check how the codes were made."
            )
    c2 = codes.reshape(1, -1) if codes.ndim == 1 else codes  # [rows, n]
    out = np.empty((c2.shape[0], packed_nbytes(c2.shape[1], bits)), np.uint8)
    _pack_kernel(c2, out, bits)
    return out[0] if codes.ndim == 1 else out


def unpack(packed, bits, n) -> np.ndarray:
    """Unpack bytes made by :func:`pack` back to ``n`` uint8 codes per row.

    Parameters
    ----------
    packed : np.ndarray
        uint8 ``[ceil(n*bits/8)]`` or ``[rows, ceil(n*bits/8)]``.
    bits : int
        2 to 8, as given to :func:`pack`.
    n : int
        Number of codes per row.

    Returns
    -------
    np.ndarray
        uint8 ``[n]`` or ``[rows, n]``.

    Examples
    --------
    >>> unpack(np.array([33, 3], np.uint8), 4, 3)
    array([1, 2, 3], dtype=uint8)
    """
    packed = check_array(packed, "packed", dtype=np.uint8, ndim=(1, 2))
    bits = check_bits(bits)
    n = check_int(n, "n", 0, 2**62, " Pass the number of codes per row that were packed.")
    want = packed_nbytes(n, bits)
    if packed.shape[-1] != want:
        raise ValueError(
            f"packed rows have {packed.shape[-1]} bytes, but {n} codes of {bits} bits take "
            f"ceil({n}*{bits}/8) = {want} bytes; check that n and bits match the pack() call."
        )
    p2 = packed.reshape(1, -1) if packed.ndim == 1 else packed  # [rows, nbytes]
    out = np.empty((p2.shape[0], n), np.uint8)
    _unpack_kernel(p2, out, bits)
    return out[0] if packed.ndim == 1 else out
