"""kernels_numba.nf4 against a numpy reference and against bitsandbytes itself."""

from __future__ import annotations

import numpy as np
import pytest

import kernels_numba as kn

# ----------------------------------------------------------------------------- reference


def ref_quantize_4bit(x: np.ndarray, blocksize: int, quant_type: str):
    """Blockwise absmax, scale, bucket against code-book midpoints (lower entry on a tie)."""
    code = kn.codebook_4bit(quant_type)
    order = np.argsort(code, kind="stable")
    srt = code[order]
    mid = ((srt[:-1] + srt[1:]) / np.float32(2)).astype(np.float32)
    flat = x.reshape(-1)
    n = flat.size
    codes = np.empty(n, np.uint8)
    absmax = []
    for c0 in range(0, n, blocksize):
        blk = flat[c0:c0 + blocksize]
        am = np.abs(blk).max()
        clamped = max(am, np.float32(1e-38))
        if blk.size == blocksize:
            scaled = blk * (np.float32(1) / clamped)
            absmax.append(am)
        else:
            scaled = blk / clamped
            absmax.append(clamped)
        scaled = np.clip(scaled, np.float32(-1), np.float32(1))
        codes[c0:c0 + blk.size] = order[np.searchsorted(mid, scaled, side="left")]
    return codes.reshape(x.shape), np.array(absmax, np.float32)


def ref_dequantize_4bit(codes, absmax, blocksize, quant_type):
    code = kn.codebook_4bit(quant_type)
    flat = code[codes.reshape(-1)] * np.repeat(absmax, blocksize)[: codes.size]
    return flat.astype(np.float32).reshape(codes.shape)


def data(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    flat[:64] = 0.0  # an all-zero block
    if flat.size > 200:
        # values exactly on code-book midpoints (ties) in a block whose absmax is 1
        mids = (np.sort(kn.codebook_4bit("nf4"))[:-1] + np.sort(kn.codebook_4bit("nf4"))[1:]) / 2
        fmid = (np.sort(kn.codebook_4bit("fp4"))[:-1] + np.sort(kn.codebook_4bit("fp4"))[1:]) / 2
        flat[128:192] = 0.25
        flat[128] = 1.0
        flat[129:129 + 15] = mids
        flat[144:144 + 15] = fmid
        flat[160] = 1e-40  # subnormal
    return x


SHAPES = [(4096 * 2 + 10,), (64, 4096), (7, 33), (3, 300), (5,)]


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [32, 64, 128, 256, 4096])
@pytest.mark.parametrize("shape", SHAPES)
def test_equals_reference(quant_type, blocksize, shape):
    x = data(shape)
    codes, absmax = kn.quantize_4bit(x, blocksize, quant_type)
    rc, ra = ref_quantize_4bit(x, blocksize, quant_type)
    np.testing.assert_array_equal(codes, rc)
    np.testing.assert_array_equal(absmax, ra)
    deq = kn.dequantize_4bit(codes, absmax, blocksize, quant_type)
    np.testing.assert_array_equal(deq, ref_dequantize_4bit(rc, ra, blocksize, quant_type))
    x_hat, stats = kn.fake_quantize_4bit(x, blocksize, quant_type)
    np.testing.assert_array_equal(x_hat, deq)
    d = deq.astype(np.float64) - x
    assert stats.sse == pytest.approx(float(np.sum(d * d)), rel=1e-9)
    assert stats.max_abs_err == pytest.approx(float(np.abs(d).max()), rel=1e-6)
    np.testing.assert_array_equal(kn.unpack_4bit(kn.pack_4bit(codes, quant_type), x.size), codes.reshape(-1))


@pytest.fixture
def eager_torch():
    """bitsandbytes wraps its odd-shape CPU dequantize in torch.compile; run it eagerly
    (same arithmetic) so a test does not spend seconds compiling each shape."""
    torch = pytest.importorskip("torch")
    import torch._dynamo

    with torch._dynamo.config.patch(disable=True):
        yield torch


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [32, 64, 2048])
@pytest.mark.parametrize("shape", SHAPES)
def test_equals_bitsandbytes(quant_type, blocksize, shape, eager_torch):
    torch = eager_torch
    F = pytest.importorskip("bitsandbytes.functional")
    x = data(shape, seed=blocksize)
    packed_ref, state = F.quantize_4bit(torch.from_numpy(x), blocksize=blocksize, quant_type=quant_type)
    deq_ref = F.dequantize_4bit(packed_ref, state).numpy().reshape(x.shape)  # bnb gives (1, n) for 1-D
    codes, absmax = kn.quantize_4bit(x, blocksize, quant_type)
    np.testing.assert_array_equal(absmax, state.absmax.numpy())
    packed = kn.pack_4bit(codes, quant_type)
    np.testing.assert_array_equal(packed, packed_ref.numpy().reshape(-1))
    np.testing.assert_array_equal(kn.unpack_4bit(packed_ref.numpy(), x.size), codes.reshape(-1))
    np.testing.assert_array_equal(kn.dequantize_4bit(codes, absmax, blocksize, quant_type), deq_ref)
    np.testing.assert_array_equal(kn.fake_quantize_4bit(x, blocksize, quant_type)[0], deq_ref)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_codebook_equals_bitsandbytes(quant_type):
    pytest.importorskip("torch")
    F = pytest.importorskip("bitsandbytes.functional")
    np.testing.assert_array_equal(kn.codebook_4bit(quant_type),
                                  F.get_4bit_type(quant_type, device="cpu").numpy())


def test_input_untouched_and_codes_in_range():
    x = data((3, 300))
    x0 = x.copy()
    codes, _ = kn.quantize_4bit(x, 64)
    np.testing.assert_array_equal(x, x0)
    assert codes.shape == x.shape and codes.max() <= 15


def test_bad_input():
    x = data((2, 64))
    with pytest.raises(ValueError, match=r"blocksize=48 is not one bitsandbytes supports: expected one of \(32, 64"):
        kn.quantize_4bit(x, 48)
    with pytest.raises(ValueError, match=r"quant_type='int4' is not a 4-bit format: expected one of \('nf4', 'fp4'\)"):
        kn.quantize_4bit(x, 64, "int4")
    bad = x.copy()
    bad[1, 3] = np.inf
    with pytest.raises(ValueError, match=r"x contains 1 NaN/Inf value\(s\) \(first at index \[1, 3\]"):
        kn.quantize_4bit(bad, 64)
    with pytest.raises(ValueError, match="NaN/Inf"):
        kn.fake_quantize_4bit(bad, 64)
    with pytest.raises(ValueError, match="out overlaps x"):
        kn.fake_quantize_4bit(x, 64, out=x)
    with pytest.raises(TypeError, match="x has dtype float16, expected float32"):
        kn.quantize_4bit(x.astype(np.float16), 64)
    codes, absmax = kn.quantize_4bit(x, 64)
    with pytest.raises(ValueError, match="absmax has 2 entries but 128 codes in blocks of 32 need 4"):
        kn.dequantize_4bit(codes, absmax, 32)
    with pytest.raises(ValueError, match=r"codes contain 16, not a 4-bit code \(0..15\)"):
        kn.dequantize_4bit(np.full_like(codes, 16), absmax, 64)
    with pytest.raises(ValueError, match=r"packed has 3 bytes, but 8 codes take ceil\(8/2\) = 4"):
        kn.unpack_4bit(np.zeros(3, np.uint8), 8)
