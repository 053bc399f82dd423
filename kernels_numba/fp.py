"""Low-precision floating-point formats: FP8 (E4M3, E5M2), FP6 (E2M3, E3M2), FP4 (E2M1), MX and NVFP4 blocks.

Every element format here is a sign bit, ``e`` exponent bits and ``m``
mantissa bits with subnormals and no infinities in the value range used
(E4M3 is the ``fn`` variant: maximum 448, only the all-ones pattern is NaN;
E5M2 keeps IEEE's infinities, maximum 57344). A value is rounded to the nearest
representable one, ties to even (the rounding of ``torch.float8_*`` casts and
of the OCP reference), and values beyond the largest finite one saturate to it
(the OCP "saturating" conversion). ``-0`` is never produced: a value that
rounds to zero gets the code of ``+0``.

Three ways to scale a tensor ``x [rows, cols]``:

* :func:`fp_quantize` / :func:`fp_dequantize` with a float32 scale per tensor,
  row or group of columns (``scale [rows | 1, n_groups]``): FP8 weights and
  activations as inference engines store them (``x ≈ code * scale``).
* :func:`mx_quantize` / :func:`mx_dequantize`: the OCP Microscaling v1.0 block
  format; one shared E8M0 power-of-two scale per 32 consecutive values of a row,
  ``X = 2**(floor(log2(amax)) - emax_elem)`` clamped to ``2**-127 .. 2**127``
  (an all-zero block stores the smallest scale).
* :func:`nvfp4_quantize` / :func:`nvfp4_dequantize`: NVIDIA's NVFP4; E2M1
  elements, one unsigned E4M3 scale per 16 values and a float32 tensor scale
  ``amax / (6 * 448)``; the block scale stored is ``E4M3(amax_block / 6 / tensor_scale)``.

Examples
--------
>>> import numpy as np
>>> x = np.array([[0.3, -1.7, 5.0, 100.0]], np.float32)
>>> codes = fp_quantize(x, np.ones((1, 1), np.float32), "e2m1")
>>> fp_dequantize(codes, np.ones((1, 1), np.float32), "e2m1").tolist()
[[0.5, -1.5, 4.0, 6.0]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from ._bits import I32, bits_f32, f32_bits
from ._checks import check_array, raise_nonfinite

__all__ = [
    "ELEMENT_FORMATS",
    "ElementFormat",
    "MX_BLOCK",
    "NVFP4_BLOCK",
    "block_mismatch",
    "element_format",
    "element_values",
    "fp_round",
    "fp_quantize",
    "fp_dequantize",
    "fp_scales",
    "mx_quantize",
    "mx_dequantize",
    "nvfp4_tensor_scale",
    "nvfp4_quantize",
    "nvfp4_dequantize",
]

MX_BLOCK = 32
"""Values per shared scale in the OCP MX formats (the only block size v1.0 defines)."""
NVFP4_BLOCK = 16
"""Values per E4M3 block scale in NVFP4."""


@dataclass(frozen=True)
class ElementFormat:
    """A sign/exponent/mantissa element format.

    Attributes
    ----------
    name : str
        ``"e4m3"``, ``"e5m2"``, ``"e2m3"``, ``"e3m2"`` or ``"e2m1"``.
    ebits, mbits : int
        Exponent and mantissa bits (plus one sign bit).
    bias : int
        Exponent bias.
    max_value : float
        Largest finite magnitude.
    emax : int
        Exponent of the largest normal binade, ``floor(log2(max_value))`` (the OCP spec's ``emax_elem``).
    """

    name: str
    ebits: int
    mbits: int
    bias: int
    max_value: float

    @property
    def bits(self) -> int:
        """Bits of one code (sign included)."""
        return 1 + self.ebits + self.mbits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal binade, ``1 - bias``."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        return int(math.floor(math.log2(self.max_value)))


ELEMENT_FORMATS: dict[str, ElementFormat] = {
    "e4m3": ElementFormat("e4m3", 4, 3, 7, 448.0),
    "e5m2": ElementFormat("e5m2", 5, 2, 15, 57344.0),
    "e2m3": ElementFormat("e2m3", 2, 3, 1, 7.5),
    "e3m2": ElementFormat("e3m2", 3, 2, 3, 28.0),
    "e2m1": ElementFormat("e2m1", 2, 1, 1, 6.0),
}
"""The element formats by name (OCP MX v1.0 section 5, OCP FP8 for E4M3/E5M2)."""


def element_format(fmt) -> ElementFormat:
    """The :class:`ElementFormat` named ``fmt`` (an ElementFormat passes through).

    Examples
    --------
    >>> element_format("e2m1").max_value, element_format("e4m3").emax
    (6.0, 8)
    """
    if isinstance(fmt, ElementFormat):
        return fmt
    if fmt not in ELEMENT_FORMATS:
        raise ValueError(
            f"Unknown floating-point element format {fmt!r}; expected one of {', '.join(ELEMENT_FORMATS)} "
            "(e4m3/e5m2: FP8, e2m3/e3m2: FP6, e2m1: FP4)."
        )
    return ELEMENT_FORMATS[fmt]


def element_values(fmt) -> np.ndarray:
    """The value of every code of ``fmt`` as float32 ``[2**bits]`` (decode table; NaN/Inf codes give NaN/Inf).

    Examples
    --------
    >>> element_values("e2m1")[:8].tolist()
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    """
    f = element_format(fmt)
    n = 1 << f.bits
    out = np.empty(n, np.float32)
    half = n >> 1
    for code in range(n):
        mag = code & (half - 1)
        e_field, mant = mag >> f.mbits, mag & ((1 << f.mbits) - 1)
        if e_field == 0:
            v = mant * 2.0 ** (f.emin - f.mbits)
        else:
            v = (1.0 + mant / (1 << f.mbits)) * 2.0 ** (e_field - f.bias)
        if v > f.max_value:  # the reserved top patterns (E4M3's NaN, E5M2's Inf/NaN)
            v = np.inf if (f.name == "e5m2" and mant == 0) else np.nan
        out[code] = -v if code & half else v
    return out


# --------------------------------------------------------------------------- scalar rounding (JIT)


@njit(cache=True)
def _quantum(a, mbits, emin):
    """Spacing of the format's grid around ``a >= 0`` (float32): ``2**(max(floor(log2 a), emin) - mbits)``."""
    e = I32((f32_bits(a) >> I32(23)) & I32(0xFF)) - I32(127)  # float32 subnormals give -127: below any emin
    if e < emin:
        e = I32(emin)
    return bits_f32(I32((e - mbits + I32(127)) << I32(23)))


@njit(cache=True)
def _round_magnitude(a, mbits, emin, max_value, ties_to_zero):
    """``a >= 0`` (float32) rounded to the format's grid, saturated at ``max_value``.

    Ties go to even (``np.rint``), or with ``ties_to_zero`` to the smaller magnitude.
    Dividing by the power-of-two quantum is exact, so there is one rounding only.
    """
    quantum = _quantum(a, mbits, emin)
    t = a / quantum
    r = np.rint(t)
    if ties_to_zero and r - t == np.float32(0.5):
        r = r - np.float32(1.0)
    q = r * quantum
    if q > max_value:
        q = max_value
    return q


@njit(cache=True)
def _encode(v, mbits, emin, bias, sign_bit, max_value, ties_to_zero):
    """The code of ``v`` (float32): round the magnitude, then the sign, exponent and mantissa fields."""
    q = _round_magnitude(abs(v), mbits, emin, max_value, ties_to_zero)
    if q == np.float32(0.0):
        return np.uint8(0)
    b = f32_bits(q)
    e = I32((b >> I32(23)) & I32(0xFF)) - I32(127)
    if e < emin:  # subnormal: exponent field 0, mantissa counts quanta of 2**(emin - mbits)
        mag = I32(q / bits_f32(I32((emin - mbits + I32(127)) << I32(23))))
    else:
        mag = I32(((e + bias) << mbits) | ((b & I32(0x7FFFFF)) >> I32(23 - mbits)))
    if v < np.float32(0.0):
        mag = mag | I32(sign_bit)
    return np.uint8(mag)


@njit(cache=True, parallel=True)
def _fp_quantize_kernel(x, scale, group, row_step, mbits, emin, bias, sign_bit, max_value, out):
    rows, cols = x.shape
    for r in prange(rows):
        sr = r * row_step
        for g in range(cols // group):  # one scale load per group
            s = scale[sr, g]
            for c in range(g * group, (g + 1) * group):
                v = np.float32(x[r, c] / s)  # float32 division, as a torch cast of x / s sees it
                out[r, c] = _encode(v, mbits, emin, bias, sign_bit, max_value, False)


@njit(cache=True, parallel=True)
def _fp_dequantize_kernel(codes, scale, group, row_step, table, out):
    rows, cols = codes.shape
    for r in prange(rows):
        sr = r * row_step
        for g in range(cols // group):  # one scale load per group
            s = scale[sr, g]
            for c in range(g * group, (g + 1) * group):
                out[r, c] = table[codes[r, c]] * s


@njit(cache=True, parallel=True)
def _fp_round_kernel(x, mbits, emin, max_value, out):
    flat = x.ravel()
    res = out.ravel()
    for i in prange(flat.size):
        v = flat[i]
        q = _round_magnitude(abs(v), mbits, emin, max_value, False)
        res[i] = -q if v < np.float32(0.0) else q


def _args(f: ElementFormat) -> tuple:
    """``(mbits, emin, bias, sign_bit, max_value)`` with the dtypes the JIT kernels are typed for."""
    return I32(f.mbits), I32(f.emin), I32(f.bias), I32(1 << (f.bits - 1)), np.float32(f.max_value)


def _check_x(x, name="x") -> np.ndarray:
    x = check_array(x, name, dtype=np.float32, ndim=2)
    if not np.isfinite(x).all():
        raise_nonfinite(x, name)
    return x


def _group_of(scale: np.ndarray, rows: int, cols: int) -> tuple[int, bool]:
    """Columns per scale and whether one scale row serves every row, from ``scale [rows | 1, n_groups]``."""
    if scale.ndim != 2 or scale.shape[0] not in (1, rows) or scale.shape[1] < 1 or cols % scale.shape[1]:
        raise ValueError(
            f"scale must have shape (rows or 1, n_groups) with n_groups dividing the row length {cols}; got "
            f"{scale.shape} for a ({rows}, {cols}) tensor. Build it with fp_scales(x, fmt, group_size)."
        )
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError("scale must be finite and positive everywhere; fp_scales gives 1 for an all-zero group.")
    return cols // scale.shape[1], scale.shape[0] == 1 and rows != 1


def fp_round(x: np.ndarray, fmt) -> np.ndarray:
    """Round every value of ``x`` (float32, any shape) to the nearest value of ``fmt`` (ties to even, saturating).

    Examples
    --------
    >>> fp_round(np.array([0.74, 0.76, 1000.0], np.float32), "e4m3").tolist()
    [0.75, 0.75, 448.0]
    """
    f = element_format(fmt)
    x = check_array(x, "x", dtype=np.float32)
    out = np.empty_like(x)
    mbits, emin, _, _, max_value = _args(f)
    _fp_round_kernel(x, mbits, emin, max_value, out)
    return out


def fp_scales(x: np.ndarray, fmt, group_size=None) -> np.ndarray:
    """Absmax scales ``amax / max_value(fmt)`` as float32 ``[rows | 1, n_groups]`` (1 for an all-zero group).

    ``group_size``: ``None`` one scale per row, an int per group of that many
    columns, ``"tensor"`` one scale.

    Examples
    --------
    >>> fp_scales(np.array([[448.0, -896.0]], np.float32), "e4m3", group_size=1).tolist()
    [[1.0, 2.0]]
    """
    from ._checks import resolve_group_size

    f = element_format(fmt)
    x = _check_x(x)
    rows, cols = x.shape
    group, per_tensor = resolve_group_size(group_size, rows, cols)
    if per_tensor:
        amax = np.abs(x).max(keepdims=True).reshape(1, 1)
    else:
        amax = np.abs(x).reshape(rows, cols // group, group).max(axis=2)
    amax = amax.astype(np.float32)
    return np.where(amax > 0, amax / np.float32(f.max_value), np.float32(1.0)).astype(np.float32)


def fp_quantize(x: np.ndarray, scale: np.ndarray, fmt) -> np.ndarray:
    """Codes (uint8 ``[rows, cols]``) of ``x / scale`` in ``fmt``; ties to even, saturating.

    Bit-identical to ``torch.clamp(x / s, -max, max).to(torch.float8_e4m3fn)`` (or ``float8_e5m2``)
    reinterpreted as bytes.

    Parameters
    ----------
    x : np.ndarray
        float32 ``[rows, cols]``, finite.
    scale : np.ndarray
        float32 ``[rows | 1, n_groups]``, positive (see :func:`fp_scales`).
    fmt : str
        An element format name.

    Examples
    --------
    >>> fp_quantize(np.array([[1.0, -2.0]], np.float32), np.ones((1, 1), np.float32), "e4m3").tolist()
    [[56, 192]]
    """
    f = element_format(fmt)
    x = _check_x(x)
    scale = check_array(scale, "scale", dtype=np.float32)
    group, per_tensor = _group_of(scale, *x.shape)
    out = np.empty(x.shape, np.uint8)
    _fp_quantize_kernel(x, scale, group, 0 if per_tensor else 1, *_args(f), out)
    return out


def _check_codes(codes: np.ndarray, f: ElementFormat) -> None:
    """Codes index the format's value table: one of ``2**bits`` (a larger one would read past it)."""
    if int(codes.max(initial=0)) >= 1 << f.bits:
        raise ValueError(f"codes hold values >= {1 << f.bits}, which a {f.bits}-bit {f.name} code cannot be.")


def fp_dequantize(codes: np.ndarray, scale: np.ndarray, fmt) -> np.ndarray:
    """float32 ``code_value * scale`` of :func:`fp_quantize`'s codes.

    Examples
    --------
    >>> fp_dequantize(np.array([[56, 192]], np.uint8), np.full((1, 1), 0.5, np.float32), "e4m3").tolist()
    [[0.5, -1.0]]
    """
    f = element_format(fmt)
    codes = check_array(codes, "codes", dtype=np.uint8, ndim=2)
    scale = check_array(scale, "scale", dtype=np.float32)
    _check_codes(codes, f)
    group, per_tensor = _group_of(scale, *codes.shape)
    out = np.empty(codes.shape, np.float32)
    _fp_dequantize_kernel(codes, scale, group, 0 if per_tensor else 1, element_values(f), out)
    return out


# --------------------------------------------------------------------------- MX


@njit(cache=True, parallel=True)
def _mx_quantize_kernel(x, block, emax, mbits, emin, bias, sign_bit, max_value, ties_to_zero, codes, exps):
    rows, cols = x.shape
    n_blocks = cols // block
    for t in prange(rows * n_blocks):
        r = t // n_blocks
        c0 = (t % n_blocks) * block
        amax = np.float32(0.0)
        for j in range(c0, c0 + block):
            amax = max(amax, abs(x[r, j]))
        if amax == 0.0:
            shared = -127
        else:
            shared = math.frexp(np.float64(amax))[1] - 1 - emax
            shared = min(max(shared, -127), 127)
        exps[r, c0 // block] = np.uint8(shared + 127)
        inv = np.float32(math.ldexp(1.0, -shared))  # exact: 2**-127 .. 2**127 are float32 values
        for j in range(c0, c0 + block):
            codes[r, j] = _encode(x[r, j] * inv, mbits, emin, bias, sign_bit, max_value, ties_to_zero)


@njit(cache=True, parallel=True)
def _block_dequantize_kernel(codes, block_scale, block, table, post, out):
    """``out = (table[code] * block_scale) * post`` (float32, in that order); one scale load per block."""
    rows, cols = codes.shape
    n_blocks = cols // block
    for r in prange(rows):
        for b in range(n_blocks):
            s = block_scale[r, b]
            for c in range(b * block, (b + 1) * block):
                out[r, c] = (table[codes[r, c]] * s) * post


def block_mismatch(cols: int, block: int, what: str) -> str | None:
    """Why rows of ``cols`` values do not fit ``what``'s blocks of ``block`` (None when they do); the one block rule.

    Examples
    --------
    >>> block_mismatch(40, 32, "MXFP4")
    'MXFP4 scales blocks of 32 consecutive values of a row, and the row length 40 is not a multiple of 32 (40 % 32 = 8)'
    >>> block_mismatch(64, 16, "NVFP4") is None
    True
    """
    if cols % block == 0:
        return None
    return (f"{what} scales blocks of {block} consecutive values of a row, and the row length {cols} is not a "
            f"multiple of {block} ({cols} % {block} = {cols % block})")


def _check_block_cols(cols: int, block: int, what: str) -> None:
    why = block_mismatch(cols, block, what)
    if why:
        raise ValueError(f"{why}. Pad the rows to a multiple of {block} or leave this tensor in another format.")


def mx_quantize(x: np.ndarray, fmt, *, ties: str = "even") -> tuple[np.ndarray, np.ndarray]:
    """OCP MX block quantization of ``x [rows, cols]``: ``(codes uint8 [rows, cols], E8M0 exponents uint8 [rows, cols/32])``.

    The shared scale of a block is ``2**(E - 127)`` with
    ``E = clamp(floor(log2(amax)) - emax_elem, -127, 127) + 127``; each element is
    ``x / 2**(E - 127)`` rounded to ``fmt`` and saturated.

    Parameters
    ----------
    x : np.ndarray
        float32 ``[rows, cols]``; ``cols`` a multiple of 32.
    fmt : {"e2m1", "e2m3", "e3m2", "e4m3", "e5m2"}
        MXFP4, MXFP6 (two kinds), MXFP8 (two kinds).
    ties : {"even", "zero"}
        How a value exactly between two element values rounds: to the even one
        (the OCP reference, torch) or to the smaller magnitude (gguf/ggml's MXFP4).

    Examples
    --------
    >>> codes, exps = mx_quantize(np.linspace(-1, 1, 32, dtype=np.float32).reshape(1, 32), "e2m1")
    >>> int(exps[0, 0]) - 127, codes[0, :3].tolist()
    (-2, [14, 14, 13])
    """
    f = element_format(fmt)
    if ties not in ("even", "zero"):
        raise ValueError(f"ties must be 'even' (round half to even) or 'zero' (half toward zero); got {ties!r}.")
    x = _check_x(x)
    rows, cols = x.shape
    _check_block_cols(cols, MX_BLOCK, f"MX with {f.name.upper()} elements")
    codes = np.empty((rows, cols), np.uint8)
    exps = np.empty((rows, cols // MX_BLOCK), np.uint8)
    _mx_quantize_kernel(x, MX_BLOCK, f.emax, *_args(f), ties == "zero", codes, exps)
    return codes, exps


def mx_dequantize(codes: np.ndarray, exps: np.ndarray, fmt) -> np.ndarray:
    """float32 ``element_value * 2**(E - 127)`` of :func:`mx_quantize`'s output.

    Examples
    --------
    >>> mx_dequantize(np.full((1, 32), 7, np.uint8), np.full((1, 1), 126, np.uint8), "e2m1")[0, 0]
    np.float32(3.0)
    """
    f = element_format(fmt)
    codes = check_array(codes, "codes", dtype=np.uint8, ndim=2)
    exps = check_array(exps, "exps", dtype=np.uint8, ndim=2)
    rows, cols = codes.shape
    _check_block_cols(cols, MX_BLOCK, f"MX with {f.name.upper()} elements")
    if exps.shape != (rows, cols // MX_BLOCK) or (exps == 255).any():
        raise ValueError(f"exps must be uint8 [{rows}, {cols // MX_BLOCK}] E8M0 exponents below 255 (255 is NaN); "
                         f"got shape {exps.shape}.")
    _check_codes(codes, f)
    scale = np.ldexp(np.float32(1.0), exps.astype(np.int32) - 127).astype(np.float32)  # [rows, n_blocks]
    out = np.empty((rows, cols), np.float32)
    _block_dequantize_kernel(codes, scale, MX_BLOCK, element_values(f), np.float32(1.0), out)
    return out


# --------------------------------------------------------------------------- NVFP4


@njit(cache=True, parallel=True)
def _nvfp4_kernel(x, block, g, s_mbits, s_emin, s_bias, s_max, mbits, emin, bias, sign_bit, max_value, scale_table,
                  codes, bscales):
    rows, cols = x.shape
    n_blocks = cols // block
    for t in prange(rows * n_blocks):
        r = t // n_blocks
        c0 = (t % n_blocks) * block
        amax = np.float32(0.0)
        for j in range(c0, c0 + block):
            amax = max(amax, abs(x[r, j]))
        want = np.float32(np.float32(amax / np.float32(max_value)) / g)  # float32, as the reference kernels
        sc = _encode(want, s_mbits, s_emin, s_bias, I32(0x80), s_max, False)
        bscales[r, c0 // block] = sc
        dec = np.float32(scale_table[sc] * g)  # the scale the elements are divided by
        for j in range(c0, c0 + block):
            if dec == 0.0:
                codes[r, j] = np.uint8(0)
            else:
                v = np.float32(x[r, j] / dec)
                codes[r, j] = _encode(v, mbits, emin, bias, sign_bit, max_value, False)


def nvfp4_tensor_scale(x: np.ndarray) -> np.float32:
    """The float32 NVFP4 tensor scale ``amax / (6 * 448)`` (1 for an all-zero tensor).

    Examples
    --------
    >>> float(nvfp4_tensor_scale(np.array([[2688.0]], np.float32)))
    1.0
    """
    x = _check_x(x)
    amax = np.float32(np.abs(x).max())
    return np.float32(amax / np.float32(6.0 * 448.0)) if amax > 0 else np.float32(1.0)


def nvfp4_quantize(x: np.ndarray, tensor_scale=None) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """NVFP4 of ``x [rows, cols]``: ``(E2M1 codes uint8 [rows, cols], E4M3 block scales uint8 [rows, cols/16], tensor scale)``.

    Block scale stored: ``E4M3(amax_block / 6 / tensor_scale)`` (unsigned, ties
    to even, saturating at 448); elements: ``E2M1(x / (block_scale * tensor_scale))``.

    Examples
    --------
    >>> codes, bs, g = nvfp4_quantize(np.arange(16, dtype=np.float32).reshape(1, 16))
    >>> nvfp4_dequantize(codes, bs, g)[0, :4].tolist()
    [0.0, 1.25, 2.5, 2.5]
    """
    x = _check_x(x)
    rows, cols = x.shape
    _check_block_cols(cols, NVFP4_BLOCK, "NVFP4")
    g = nvfp4_tensor_scale(x) if tensor_scale is None else np.float32(tensor_scale)
    if not (np.isfinite(g) and g > 0):
        raise ValueError(f"tensor_scale must be a finite positive number; got {tensor_scale!r}.")
    s, e = ELEMENT_FORMATS["e4m3"], ELEMENT_FORMATS["e2m1"]
    codes = np.empty((rows, cols), np.uint8)
    bscales = np.empty((rows, cols // NVFP4_BLOCK), np.uint8)
    s_mbits, s_emin, s_bias, _, s_max = _args(s)
    _nvfp4_kernel(x, NVFP4_BLOCK, g, s_mbits, s_emin, s_bias, s_max, *_args(e), element_values(s), codes, bscales)
    return codes, bscales, g


def nvfp4_dequantize(codes: np.ndarray, block_scales: np.ndarray, tensor_scale) -> np.ndarray:
    """float32 ``(e2m1 * e4m3_block_scale) * tensor_scale`` of :func:`nvfp4_quantize`'s output.

    Examples
    --------
    >>> nvfp4_dequantize(np.full((1, 16), 7, np.uint8), np.full((1, 1), 56, np.uint8), 0.5)[0, 0]
    np.float32(3.0)
    """
    codes = check_array(codes, "codes", dtype=np.uint8, ndim=2)
    block_scales = check_array(block_scales, "block_scales", dtype=np.uint8, ndim=2)
    rows, cols = codes.shape
    _check_block_cols(cols, NVFP4_BLOCK, "NVFP4")
    if block_scales.shape != (rows, cols // NVFP4_BLOCK) or (block_scales & 0x80).any() or (block_scales == 0x7F).any():
        raise ValueError(f"block_scales must be uint8 [{rows}, {cols // NVFP4_BLOCK}] unsigned E4M3 codes "
                         f"(below 0x7F); got shape {block_scales.shape}.")
    _check_codes(codes, element_format("e2m1"))
    scale = element_values("e4m3")[block_scales]  # [rows, n_blocks] float32
    out = np.empty((rows, cols), np.float32)
    _block_dequantize_kernel(codes, scale, NVFP4_BLOCK, element_values("e2m1"), np.float32(tensor_scale), out)
    return out

