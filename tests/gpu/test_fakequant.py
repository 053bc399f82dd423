"""The Triton fake-quant kernels against the Numba kernels, bit for bit, on a CUDA device.

Every test skips cleanly without CUDA (or without Triton).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kernels_numba as kn
import qviz
from qviz.quant.granularity import PerChannel, PerGroup, PerTensor
from qviz.quant.primitives import choose_qparams, fake_quantize_codes, fake_quantize_with_stats, quantize

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _bits_equal(a: torch.Tensor | np.ndarray, b: np.ndarray) -> None:
    """Equal as bit patterns (so -0.0 != 0.0 and NaN positions count)."""
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a
    assert a.shape == b.shape and a.dtype == b.dtype
    if a.dtype == np.float32:
        a, b = a.view(np.int32), b.view(np.int32)
    mismatch = int((a != b).sum())
    assert mismatch == 0, f"{mismatch} of {a.size} values differ"


def _weights(rows: int, cols: int, seed: int) -> np.ndarray:
    """Gaussian rows at scales 1e-7 .. 1e3, an all-zero row, exact zeros and ties-prone values."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x *= (10.0 ** rng.uniform(-7, 3, size=(rows, 1))).astype(np.float32)
    x[0] = 0.0
    x[1, ::3] = 0.0
    x[2] = np.round(x[2] * 4) / 4  # many values on the grid's half steps
    return x


CASES = [
    (4, PerGroup(128), False), (4, PerGroup(128), True), (8, PerChannel(), False), (8, PerChannel(), True),
    (3, PerGroup(64), False), (2, PerGroup(32), True), (4, PerTensor(), False), (5, PerGroup(256), False),
]


@pytest.mark.parametrize("bits,gran,sym", CASES, ids=[f"w{b}-{g.label if hasattr(g, 'label') else g}-{'sym' if s else 'asym'}" for b, g, s in CASES])
def test_rtn_kernel_bit_identical_to_numba(bits, gran, sym):
    x = _weights(96, 1024, seed=bits)
    group = {PerTensor: "tensor", PerChannel: None}.get(type(gran), getattr(gran, "size", None))
    ref_hat, ref_st = kn.fake_quantize(x, bits, group, sym)
    ref_codes, ref_qp, _ = kn.quantize_with_stats(x, bits, group, sym)
    xc = torch.from_numpy(x).cuda()
    x_hat, codes, qp = fake_quantize_codes(xc, gran, bits, symmetric=sym)
    assert x_hat.is_cuda and codes.is_cuda and qp.scale.is_cuda
    _bits_equal(x_hat, ref_hat)
    _bits_equal(codes, ref_codes)
    _bits_equal(qp.scale, ref_qp.scale)
    _bits_equal(qp.zero, ref_qp.zero)
    x_hat2, st = fake_quantize_with_stats(xc, gran, bits, symmetric=sym)
    _bits_equal(x_hat2, ref_hat)
    assert st.sse == pytest.approx(ref_st.sse, rel=1e-9) and st.max_abs_err == ref_st.max_abs_err
    _bits_equal(quantize(xc, choose_qparams(xc, gran, bits, symmetric=sym)), ref_codes)


def test_rtn_wide_rows_use_the_torch_twin():
    x = _weights(4, 32768, seed=7)  # one scale per row of 32768 values: wider than one program holds
    ref_hat, _ = kn.fake_quantize(x, 4, None, False)
    _bits_equal(qviz.fake_quantize(torch.from_numpy(x).cuda(), qviz.RTN(bits=4, group_size=None)), ref_hat)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("shape,blocksize", [((256, 512), 64), ((100, 77), 64), ((33, 1000), 256), ((8, 4096), 4096)])
def test_codebook_kernel_bit_identical_to_numba(quant_type, shape, blocksize):
    from qviz.gpu.fakequant import codebook_blocks

    x = _weights(*shape, seed=blocksize)
    ref_hat, ref_st = kn.fake_quantize_4bit(x, blocksize, quant_type)
    ref_codes, ref_absmax = kn.quantize_4bit(x, blocksize, quant_type)
    res = codebook_blocks(torch.from_numpy(x).cuda(), blocksize, quant_type, write_codes=True, write_stats=True)
    _bits_equal(res.x_hat, ref_hat)
    _bits_equal(res.codes, ref_codes)
    _bits_equal(res.absmax, ref_absmax)
    assert res.stats[0] == pytest.approx(ref_st.sse, rel=1e-9)


@pytest.mark.parametrize("cfg", [qviz.RTN(bits=4, group_size=128), qviz.RTN(bits=8, group_size=None, symmetric=True),
                                 qviz.BnbNF4(), qviz.BnbFP4(blocksize=128)], ids=lambda c: c.label)
def test_public_fake_quantize_cuda_equals_cpu_bitwise(cfg):
    w = torch.from_numpy(_weights(512, 1024, seed=3))
    cpu = qviz.fake_quantize(w, cfg)
    gpu = qviz.fake_quantize(w.cuda(), cfg)
    assert gpu.is_cuda and gpu.dtype == w.dtype
    _bits_equal(gpu, cpu.numpy())


@pytest.mark.parametrize("cfg", [qviz.RTN(bits=4, group_size=128), qviz.BnbNF4()], ids=lambda c: c.label)
def test_nonfinite_weights_raise_on_cuda(cfg):
    w = torch.randn(64, 256, device="cuda")
    w[3, 7] = float("nan")
    w[9, 1] = float("inf")
    with pytest.raises(ValueError, match="2 NaN/Inf"):
        qviz.fake_quantize(w, cfg)


@pytest.mark.parametrize("cfg", [qviz.RTN(bits=4, group_size=128), qviz.BnbNF4()], ids=lambda c: c.label)
def test_all_zero_warning_on_cuda_as_on_cpu(cfg):
    """The kernel's flag word decides the all-zero warning: raised exactly when the CPU path raises it."""
    import warnings

    from qviz.quant.api import QuantizedToZeroWarning

    tiny = torch.full((4, 256), 1e-42)  # below every step the scales can hold
    for w in (tiny, tiny.cuda()):
        with pytest.warns(QuantizedToZeroWarning, match="quantizes to zero"):
            qviz.fake_quantize(w, cfg)
    for w in (torch.zeros(4, 256, device="cuda"), torch.randn(4, 256, device="cuda")):
        with warnings.catch_warnings():
            warnings.simplefilter("error", QuantizedToZeroWarning)
            qviz.fake_quantize(w, cfg)


def test_scale_overflow_raises_on_cuda():
    w = torch.full((4, 128), 1e9, device="cuda")
    with pytest.raises(ValueError, match="float16's maximum"):
        qviz.fake_quantize(w, qviz.RTN(bits=4, group_size=128))


def test_input_is_not_modified_on_cuda():
    w = torch.randn(64, 256, device="cuda")
    before = w.clone()
    qviz.fake_quantize(w, qviz.RTN(bits=3, group_size=64))
    qviz.fake_quantize(w, qviz.BnbNF4())
    assert torch.equal(w, before)


def test_rtn_groups_rejects_bad_arguments():
    from qviz.gpu.fakequant import rtn_groups

    with pytest.raises(TypeError, match="float32"):
        rtn_groups(torch.zeros(4, 8, dtype=torch.float16, device="cuda"), 8, 4, False)
    with pytest.raises(ValueError, match="must divide"):
        rtn_groups(torch.zeros(4, 8, device="cuda"), 3, 4, False)
