"""kernels_numba.fp against a table-lookup reference, torch's float8 casts and gguf's MXFP4/NVFP4."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kernels_numba.fp as kfp

FORMATS = list(kfp.ELEMENT_FORMATS)


def ref_encode(v: float, fmt: str, ties: str = "even") -> int:
    """Nearest code by brute force over the decode table (ties: even code, or the smaller magnitude)."""
    table = kfp.element_values(fmt).astype(np.float64)
    half = len(table) // 2
    mags = table[:half]
    finite = np.isfinite(mags)
    a = min(abs(float(v)), float(np.nanmax(np.where(finite, mags, np.nan))))
    dist = np.where(finite, np.abs(mags - a), np.inf)
    best = np.flatnonzero(dist == dist.min())
    if len(best) > 1:
        best = best[:1] if ties == "zero" else best[best % 2 == 0]
    code = int(best[0])
    return code | half if (v < 0 and code != 0) else code


def sample(rng, shape=(8, 64)) -> np.ndarray:
    return (rng.standard_normal(shape) * rng.lognormal(0, 2, (shape[0], 1))).astype(np.float32)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fp_quantize_matches_table_reference(fmt):
    rng = np.random.default_rng(1)
    x = sample(rng, (4, 64))
    scale = kfp.fp_scales(x, fmt, group_size=16)
    codes = kfp.fp_quantize(x, scale, fmt)
    expect = [[ref_encode(np.float32(x[r, c] / scale[r, c // 16]), fmt) for c in range(64)] for r in range(4)]
    np.testing.assert_array_equal(codes, np.array(expect, np.uint8))
    np.testing.assert_array_equal(kfp.fp_dequantize(codes, scale, fmt),
                                  kfp.element_values(fmt)[codes] * np.repeat(scale, 16, axis=1))


@pytest.mark.parametrize("fmt", FORMATS)
def test_exact_ties_round_to_even_and_saturate(fmt):
    f = kfp.ELEMENT_FORMATS[fmt]
    vals = kfp.element_values(fmt)[: 1 << (f.bits - 1)]
    vals = vals[np.isfinite(vals) & (vals <= f.max_value)].astype(np.float64)
    mids = ((vals[:-1] + vals[1:]) / 2).astype(np.float32)
    x = np.concatenate([mids, -mids, [f.max_value * 4, -f.max_value * 4, 0.0]]).astype(np.float32).reshape(1, -1)
    codes = kfp.fp_quantize(x, np.ones((1, 1), np.float32), fmt)
    np.testing.assert_array_equal(codes[0], [ref_encode(v, fmt) for v in x[0]])
    np.testing.assert_array_equal(kfp.fp_round(x, fmt), kfp.element_values(fmt)[codes])


@pytest.mark.parametrize(("fmt", "dtype"), [("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)])
@pytest.mark.parametrize("group", [None, 32, "tensor"])
def test_fp8_bit_identical_to_torch_casts(fmt, dtype, group):
    x = sample(np.random.default_rng(2), (16, 128))
    scale = kfp.fp_scales(x, fmt, group)
    codes = kfp.fp_quantize(x, scale, fmt)
    s = torch.from_numpy(scale).expand(16, -1).repeat_interleave(128 // scale.shape[1], dim=1)
    f = kfp.ELEMENT_FORMATS[fmt]
    ref = torch.clamp(torch.from_numpy(x) / s, -f.max_value, f.max_value).to(dtype)
    ref_codes = ref.view(torch.uint8).numpy()
    ref_codes = np.where(ref_codes & 0x7F, ref_codes, 0)  # torch keeps -0; the kernel writes +0
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(kfp.fp_dequantize(codes, scale, fmt), (ref.float() * s).numpy())


def ref_mx(x: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    f = kfp.ELEMENT_FORMATS[fmt]
    rows, cols = x.shape
    exps = np.zeros((rows, cols // 32), np.uint8)
    codes = np.zeros((rows, cols), np.uint8)
    for r in range(rows):
        for b in range(cols // 32):
            blk = x[r, 32 * b: 32 * b + 32].astype(np.float64)
            amax = np.abs(blk).max()
            e = -127 if amax == 0 else int(np.clip(np.floor(np.log2(amax)) - f.emax, -127, 127))
            exps[r, b] = e + 127
            codes[r, 32 * b: 32 * b + 32] = [ref_encode(v / 2.0 ** e, fmt) for v in blk]
    return codes, exps


@pytest.mark.parametrize("fmt", FORMATS)
def test_mx_matches_reference(fmt):
    x = sample(np.random.default_rng(3), (3, 64))
    x[1, :32] = 0.0  # an all-zero block stores the smallest scale
    codes, exps = kfp.mx_quantize(x, fmt)
    ref_codes, ref_exps = ref_mx(x, fmt)
    np.testing.assert_array_equal(exps, ref_exps)
    np.testing.assert_array_equal(codes, ref_codes)
    scale = np.repeat(np.ldexp(1.0, exps.astype(int) - 127), 32, axis=1)
    np.testing.assert_array_equal(kfp.mx_dequantize(codes, exps, fmt), (kfp.element_values(fmt)[codes] * scale).astype(np.float32))


def _gguf_mxfp4_codes(x: np.ndarray):
    quants = pytest.importorskip("gguf.quants")
    from gguf.constants import GGMLQuantizationType

    raw = quants.quantize(x, GGMLQuantizationType.MXFP4).reshape(-1, 17)  # [blocks, E8M0 + 16 bytes]
    qs = raw[:, 1:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=1).reshape(x.shape)  # low nibbles first half
    return codes, raw[:, 0].reshape(x.shape[0], -1), raw


def test_mxfp4_codes_bit_identical_to_gguf():
    x = sample(np.random.default_rng(4), (32, 256))
    g_codes, g_exps, raw = _gguf_mxfp4_codes(x)
    codes, exps = kfp.mx_quantize(x, "e2m1")
    np.testing.assert_array_equal(codes, g_codes)
    np.testing.assert_array_equal(exps, g_exps)
    from gguf import quants
    from gguf.constants import GGMLQuantizationType

    np.testing.assert_array_equal(kfp.mx_dequantize(codes, exps, "e2m1"),
                                  quants.dequantize(raw.reshape(32, -1), GGMLQuantizationType.MXFP4))


def test_mxfp4_exact_ties_follow_gguf_with_ties_zero():
    halves = np.array([0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, -0.25, -0.75, -5, -2.5, 7, 6, 4, -1e-3], np.float32)
    x = np.tile(halves, 2).reshape(1, 32)
    g_codes, _, _ = _gguf_mxfp4_codes(x)
    np.testing.assert_array_equal(kfp.mx_quantize(x, "e2m1", ties="zero")[0], g_codes)
    even = kfp.mx_quantize(x, "e2m1")[0]
    assert even[0, 2] == 2 and g_codes[0, 2] == 1  # 0.75 (scale 1): to 1.0 (even code 2), gguf to 0.5


def test_nvfp4_round_trips_through_gguf_dequantizer():
    quants = pytest.importorskip("gguf.quants")
    from gguf.constants import GGMLQuantizationType

    x = sample(np.random.default_rng(5), (16, 128))
    codes, bs, g = kfp.nvfp4_quantize(x)
    n = x.size // 64  # gguf NVFP4 block: 4 E4M3 scales, then 4 x 8 bytes (values 0-7 low, 8-15 high nibbles)
    c = codes.reshape(n, 4, 16)
    blocks = np.concatenate([bs.reshape(n, 4), (c[:, :, :8] | (c[:, :, 8:] << 4)).reshape(n, 32)], axis=1)
    ref = quants.dequantize(blocks.astype(np.uint8).reshape(16, -1), GGMLQuantizationType.NVFP4)
    np.testing.assert_array_equal(kfp.nvfp4_dequantize(codes, bs, g), (ref * g).astype(np.float32))
    assert g == np.float32(np.abs(x).max() / np.float32(2688.0))
    err = np.abs(kfp.nvfp4_dequantize(codes, bs, g) - x).max(axis=1) / np.abs(x).max(axis=1)
    assert (err < 0.2).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_torch_rounding_equals_numba(fmt):
    from qviz.quant.actquant import fp_round_torch

    f = kfp.ELEMENT_FORMATS[fmt]
    x = (np.random.default_rng(6).standard_normal((8, 64)) * f.max_value / 3).astype(np.float32)
    x[0, :4] = [f.max_value * 2, -f.max_value * 2, 0.0, 1e-30]
    np.testing.assert_array_equal(fp_round_torch(torch.from_numpy(x), fmt).numpy(), kfp.fp_round(x, fmt))


def test_bad_input_is_refused_with_the_reason():
    x = np.ones((2, 48), np.float32)
    with pytest.raises(ValueError, match="multiple of 32"):
        kfp.mx_quantize(x, "e2m1")
    with pytest.raises(ValueError, match="multiple of 16"):
        kfp.nvfp4_quantize(np.ones((2, 40), np.float32))
    with pytest.raises(ValueError, match="Unknown floating-point element format 'e3m4'"):
        kfp.fp_round(x, "e3m4")
    bad = np.ones((2, 32), np.float32)
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN/Inf"):
        kfp.mx_quantize(bad, "e4m3")
    with pytest.raises(TypeError, match="float32"):
        kfp.fp_quantize(np.ones((2, 32)), np.ones((1, 1), np.float32), "e4m3")
    with pytest.raises(ValueError, match="scale must have shape"):
        kfp.fp_quantize(x, np.ones((1, 5), np.float32), "e4m3")


def test_dequantizers_refuse_codes_the_element_format_cannot_hold():
    exps = np.full((2, 1), 127, np.uint8)
    with pytest.raises(ValueError, match="codes hold values >= 16, which a 4-bit e2m1 code cannot be"):
        kfp.mx_dequantize(np.full((2, 32), 16, np.uint8), exps, "e2m1")
    with pytest.raises(ValueError, match="codes hold values >= 64, which a 6-bit e3m2 code cannot be"):
        kfp.mx_dequantize(np.full((2, 32), 64, np.uint8), exps, "e3m2")
    with pytest.raises(ValueError, match="codes hold values >= 16"):
        kfp.nvfp4_dequantize(np.full((2, 16), 200, np.uint8), np.full((2, 1), 56, np.uint8), 1.0)
    ok = kfp.mx_dequantize(np.full((2, 32), 15, np.uint8), exps, "e2m1")  # the largest E2M1 code: -6
    assert ok.min() == ok.max() == -6.0
