"""kernels_numba.gguf against gguf-py (llama.cpp's own Python library) and a numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from kernels_numba.gguf import (
    GGUF_TYPES,
    dequantize_gguf,
    f32_to_f16_bits,
    gguf_nbytes,
    gguf_type,
    quantize_gguf,
    unpack_gguf,
)

gguf = pytest.importorskip("gguf", reason="gguf-py (pip install gguf) is the oracle for these tests")
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

LEGACY = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
ALL = list(GGUF_TYPES)
BPW = {"Q4_0": 4.5, "Q4_1": 5.0, "Q5_0": 5.5, "Q5_1": 6.0, "Q8_0": 8.5, "Q2_K": 2.625, "Q3_K": 3.4375,
       "Q4_K": 4.5, "Q5_K": 5.5, "Q6_K": 6.5625, "IQ4_NL": 4.5}


def weights(rows=24, cols=512, seed=0):
    """Gaussian weights with the awkward cases: an all-zero block, a tiny block, an outlier, a constant block."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32) * np.float32(0.05)
    x[0, :256] = 0.0
    x[1, :64] *= np.float32(1e-4)
    x[2, 7] = 3.0
    x[3, 32:64] = 0.25
    x[4, :] = np.abs(x[4])  # all positive: the minimum is clamped at 0
    return x


def ties(rows=16, cols=64, seed=2):
    """Blocks where ggml's scan order decides: signed zeros, +a and -a both largest, equal minima."""
    x = weights(rows, cols, seed)
    x[0, :32] = 0.0
    x[1, :32] = -0.0
    x[2, :16] = -0.0
    x[2, 3] = 0.0
    x[3, :32] = np.abs(x[3, :32])
    x[3, 5], x[3, 7] = 0.0, -0.0  # the minimum is a zero, +0.0 first
    x[4, :32] = -np.abs(x[4, :32])
    x[4, 2], x[4, 9] = -0.0, 0.0  # the maximum is a zero, -0.0 first
    x[5, :2] = -0.5, 0.5
    x[6, :2] = 0.5, -0.5
    x[7, :32] = 1.0
    x[8, 32:] = -np.float32(3e-39)  # float32 subnormals
    return x


def imatrix(cols=512, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.random(cols) ** 4 * 10).astype(np.float32)


# ----------------------------------------------------------------------------- numpy reference (unpack)


def f16(b, o):
    return b[:, o:o + 2].copy().view(np.float16).astype(np.float32)[:, 0]


def ref_unpack(packed, name, cols):
    """Codes, sub-block scales and offsets read from the byte layout of ggml's block structs, in numpy."""
    t = gguf_type(name)
    rows = packed.shape[0]
    blocks = packed.reshape(rows * (cols // t.block), t.type_size)
    nb = blocks.shape[0]
    offset = np.zeros((nb, t.block // t.sub_block), np.float32)
    if t.block == 32:
        d = f16(blocks, 0)[:, None]
        head = 4 if name in ("Q4_1", "Q5_1") else 2
        if head == 4:
            offset = f16(blocks, 2)[:, None]
        if name == "Q8_0":
            codes = blocks[:, 2:].copy()
        else:
            qh = 0
            if name in ("Q5_0", "Q5_1"):
                qh = blocks[:, head:head + 4].copy().view("<u4")
                head += 4
            qs = blocks[:, head:head + 16]
            codes = np.concatenate([qs & 0xF, qs >> 4], axis=1)
            if name in ("Q5_0", "Q5_1"):
                bits = (qh >> np.arange(32, dtype=np.uint32)) & 1
                codes = codes | (bits.astype(np.uint8) << 4)
        scale = d
    elif name == "Q2_K":
        sc = blocks[:, :16]
        d, dmin = f16(blocks, 80)[:, None], f16(blocks, 82)[:, None]
        scale = d * (sc & 0xF).astype(np.float32)
        offset = -(dmin * (sc >> 4).astype(np.float32))
        qs = blocks[:, 16:80].reshape(nb, 2, 1, 32)
        codes = ((qs >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3).reshape(nb, 256)
    elif name == "Q3_K":
        hm = blocks[:, :32]
        qs = blocks[:, 32:96].reshape(nb, 2, 1, 32)
        raw = blocks[:, 96:108].astype(np.int64)
        d = f16(blocks, 108)[:, None]
        lo = np.concatenate([raw[:, :8] & 0xF, raw[:, :8] >> 4], axis=1)
        hi = np.stack([(raw[:, 8 + j % 4] >> (2 * (j // 4))) & 3 for j in range(16)], axis=1)
        scale = d * ((lo | (hi << 4)) - 32).astype(np.float32)
        low = ((qs >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3).reshape(nb, 256)
        j = np.arange(256)
        high = (hm[:, j % 32] >> (j // 32).astype(np.uint8)) & 1
        codes = low | (high << 2)
    elif name in ("Q4_K", "Q5_K"):
        d, dmin = f16(blocks, 0)[:, None], f16(blocks, 2)[:, None]
        s = blocks[:, 4:16].astype(np.int64)
        sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
        mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
        scale = d * sc.astype(np.float32)
        offset = -(dmin * mn.astype(np.float32))
        start = 16 if name == "Q4_K" else 48
        qs = blocks[:, start:start + 128].reshape(nb, 4, 32)
        codes = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(nb, 256)
        if name == "Q5_K":
            qh = blocks[:, 16:48]
            bit = np.stack([(qh >> k) & 1 for k in range(8)], axis=1)  # [nb, 8 (c*2 + half), 32]
            codes = codes | (bit.reshape(nb, 256) << 4)
    else:  # Q6_K
        ql = blocks[:, :128].reshape(nb, 2, 64)
        qh = blocks[:, 128:192].reshape(nb, 2, 32)
        sc = blocks[:, 192:208].copy().view(np.int8).astype(np.float32)
        d = f16(blocks, 208)[:, None]
        scale = d * sc
        lo = np.stack([ql[:, :, :32] & 0xF, ql[:, :, 32:] & 0xF, ql[:, :, :32] >> 4, ql[:, :, 32:] >> 4], axis=2)
        hi = np.stack([(qh >> k) & 3 for k in (0, 2, 4, 6)], axis=2)
        codes = (lo | (hi << 4)).reshape(nb, 256)
    return (codes.reshape(rows, cols).astype(np.uint8), scale.reshape(rows, -1).astype(np.float32),
            np.broadcast_to(offset, scale.shape).reshape(rows, -1).astype(np.float32))


# ----------------------------------------------------------------------------- tests


def test_f16_bits_match_numpy():
    rng = np.random.default_rng(0)
    bits = np.concatenate([rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32),
                           np.arange(0x33000000 - 2, 0x33000000 + 3, dtype=np.uint32),  # the 2**-25 tie
                           np.arange(0x477FEFFE, 0x477FF003, dtype=np.uint32)])  # the overflow edge
    f = bits.view(np.float32)
    f = f[np.isfinite(f)]
    ours = np.array([f32_to_f16_bits(v) for v in f[:20000]], np.uint16)
    with np.errstate(over="ignore"):  # numpy warns on the casts that overflow to inf
        want = f[:20000].astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(ours, want)


def test_f16_bits_match_numpy_across_the_float32_range():
    # f32_to_f16_bits is branch-free (selects) so the kernels vectorise it: every 251st float32 bit
    # pattern (all exponents, both signs), and every pattern around the subnormal/normal and overflow edges
    from numba import njit

    @njit
    def convert(f, out):
        for i in range(f.shape[0]):
            out[i] = f32_to_f16_bits(f[i])

    bits = np.concatenate([np.arange(0, 2**32, 251, dtype=np.uint64).astype(np.uint32),
                           np.arange(0x387FC000, 0x38804000, dtype=np.uint32),  # 2**-14: subnormal -> normal
                           np.arange(0x33000000 - 4096, 0x33000000 + 4096, dtype=np.uint32),  # 2**-25
                           np.arange(0x477FC000, 0x47804000, dtype=np.uint32)])  # 65504 -> inf
    bits = np.concatenate([bits, bits | np.uint32(0x80000000)])
    f = bits.view(np.float32)
    ours = np.empty(f.shape, np.int32)
    convert(f, ours)
    finite = np.isfinite(f)
    with np.errstate(over="ignore", invalid="ignore"):
        want = f[finite].astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(ours[finite], want)
    nan = np.isnan(f)
    assert nan.any() and (ours[nan] & 0x7FFF == 0x7E00).all()  # the quiet NaN, sign kept


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_codes_equal_gguf_py(name):
    x = weights()
    qtype = gguf.GGMLQuantizationType[name]
    np.testing.assert_array_equal(quantize_gguf(x, name), gguf_quantize(x, qtype))


@pytest.mark.parametrize("with_imatrix", [False, True])
@pytest.mark.parametrize("name", ALL)
def test_dequantize_equals_gguf_py_and_reference(name, with_imatrix):
    x = weights()
    packed = quantize_gguf(x, name, imatrix() if with_imatrix else None)
    t = gguf_type(name)
    assert packed.shape == (x.shape[0], x.shape[1] // t.block * t.type_size)
    ours = dequantize_gguf(packed, name, x.shape[1])
    theirs = gguf_dequantize(packed, gguf.GGMLQuantizationType[name])
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))  # bit for bit, -0.0 included
    codes, scale, offset, table = unpack_gguf(packed, name, x.shape[1])
    rc, rs, ro = ref_unpack(packed, name, x.shape[1])
    np.testing.assert_array_equal(codes, rc)
    np.testing.assert_array_equal(scale, rs)
    np.testing.assert_array_equal(offset, ro)
    sub = np.repeat(scale, t.sub_block, axis=1) * table[codes]
    if t.has_offset:
        sub = sub + np.repeat(offset, t.sub_block, axis=1)
    np.testing.assert_array_equal(sub.view(np.uint32), ours.view(np.uint32))
    # it is a quantizer: the error is small against the weights' spread, and an all-zero block stays zero
    rel = np.sqrt(np.mean((ours[5:] - x[5:]) ** 2)) / np.std(x[5:])
    assert rel < {"Q2_K": 0.5, "Q3_K": 0.3}.get(name, 0.2)
    assert not ours[0, :256].any()


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K", "Q4_0", "IQ4_NL"])
def test_imatrix_lowers_the_weighted_error(name):
    x = weights(rows=64, seed=3)[5:]
    qw = imatrix(seed=4)
    plain = dequantize_gguf(quantize_gguf(x, name), name, x.shape[1])
    weighted = dequantize_gguf(quantize_gguf(x, name, qw), name, x.shape[1])
    assert np.sum(qw * (weighted - x) ** 2) < np.sum(qw * (plain - x) ** 2)


def test_kquant_search_beats_round_to_nearest():
    # Q4_K's search against the same format with the sub-block range taken as min/max (no search)
    x = weights(rows=32, seed=5)[5:]
    w = dequantize_gguf(quantize_gguf(x, "Q4_K"), "Q4_K", x.shape[1])
    g = x.reshape(-1, 32)
    lo, hi = np.minimum(g.min(1, keepdims=True), 0), g.max(1, keepdims=True)
    step = (hi - lo) / 15
    rtn = np.clip(np.rint((g - lo) / step), 0, 15) * step + lo
    assert np.mean((w - x) ** 2) < np.mean((rtn.reshape(x.shape) - x) ** 2)


@pytest.mark.parametrize("name", ALL)
def test_bits_per_weight_exact(name):
    t = gguf_type(name)
    assert t.bits_per_weight == BPW[name]
    assert gguf_nbytes((256, 1024), name) * 8 / (256 * 1024) == BPW[name]
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
    assert (t.block, t.type_size, t.ggml_type) == (block, size, int(gguf.GGMLQuantizationType[name]))


@pytest.mark.parametrize("name", LEGACY)
@pytest.mark.parametrize("make", [weights, ties])
def test_fused_legacy_kernels_equal_the_general_row_kernel(name, make):
    # the fused one-pass kernels (no imatrix) against the general row kernel they replace on that path
    from kernels_numba.gguf import _LEGACY_KIND, _quantize_legacy_kernel

    x = make()
    want = np.empty((x.shape[0], x.shape[1] // 32 * GGUF_TYPES[name].type_size), np.uint8)
    _quantize_legacy_kernel(_LEGACY_KIND[name], x, np.zeros(x.shape[1], np.float32), False, want)
    np.testing.assert_array_equal(quantize_gguf(x, name), want)
    bad = x.copy()
    bad[-1, -1] = np.inf
    with pytest.raises(ValueError, match=r"1 NaN/Inf value\(s\) \(first at index \[15, 63\]" if make is ties else "NaN/Inf"):
        quantize_gguf(bad, name)


@pytest.mark.parametrize("name", LEGACY)
def test_fused_legacy_kernels_flag_every_kind_of_nonfinite(name):
    # the fused kernels read finiteness off their block scans (order keys, |x| bits for Q8_0):
    # +-inf and NaNs of either sign and any payload are refused, the largest finite values are not
    finfo = np.finfo(np.float32)
    x = weights(8, 128)
    x[5, 40:44] = finfo.max, -finfo.max, finfo.tiny, -finfo.smallest_subnormal
    with np.errstate(over="ignore", invalid="ignore"):  # gguf-py's float16 casts of the huge scales
        want = gguf_quantize(x, gguf.GGMLQuantizationType[name])
    np.testing.assert_array_equal(quantize_gguf(x, name), want)
    bad_bits = [0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF, 0x7FFFFFFF]
    for k, bits in enumerate(bad_bits):
        bad = x.copy()
        r, c = k % 8, (37 * k + 5) % 128
        bad[r, c] = np.array([bits], np.uint32).view(np.float32)[0]
        with pytest.raises(ValueError, match=rf"1 NaN/Inf value\(s\) \(first at index \[{r}, {c}\]"):
            quantize_gguf(bad, name)


def test_bad_row_length_is_refused_by_name():
    x = np.ones((2, 96), np.float32)
    with pytest.raises(ValueError, match=r"Q4_K stores blocks of 256 weights.*96 weights"):
        quantize_gguf(x, "Q4_K")
    with pytest.raises(ValueError, match="Q8_0 stores blocks of 32"):
        quantize_gguf(np.ones((2, 40), np.float32), "Q8_0")
    assert quantize_gguf(x, "Q8_0").shape == (2, 3 * 34)


def test_bad_input():
    with pytest.raises(ValueError, match=r"Unknown GGUF type 'Q4_KM'.*'Q4_K'"):
        quantize_gguf(np.ones((1, 32), np.float32), "Q4_KM")
    with pytest.raises(TypeError, match="float32"):
        quantize_gguf(np.ones((1, 32)), "Q8_0")
    x = np.ones((1, 32), np.float32)
    x[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        quantize_gguf(x, "Q8_0")
    with pytest.raises(ValueError, match="imatrix has 16 entries"):
        quantize_gguf(np.ones((1, 32), np.float32), "Q4_0", np.ones(16, np.float32))
    with pytest.raises(ValueError, match="non-negative"):
        quantize_gguf(np.ones((1, 32), np.float32), "Q4_0", -np.ones(32, np.float32))
    with pytest.raises(ValueError, match="take 18"):
        dequantize_gguf(np.zeros((1, 20), np.uint8), "Q4_0", 32)


def test_input_not_modified():
    x = weights()
    before = x.copy()
    quantize_gguf(x, "Q3_K", imatrix())
    np.testing.assert_array_equal(x, before)
