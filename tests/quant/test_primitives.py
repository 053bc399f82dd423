"""The RTN arithmetic: a reference written here, the Numba and torch paths agree with it and each other; the range rule, straight-through fake-quant, byte count and checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qviz.quant.granularity import PerChannel, PerGroup, PerTensor
from qviz.quant.primitives import (
    check_bits,
    check_group_size,
    check_tensor,
    choose_qparams,
    count_nonfinite,
    dequantize,
    fake_quantize_codes,
    fake_quantize_ste,
    fake_quantize_with_stats,
    qparams_from_range,
    quantize,
    rtn_nbytes,
)


def reference_rtn(x: np.ndarray, bits: int, group: int | None, symmetric: bool):
    """Plain-numpy RTN following the documented conventions (float16 scales, half-to-even)."""
    rows, cols = x.shape
    size = cols if group is None else group
    xg = x.reshape(rows, cols // size, size).astype(np.float32)
    lo = np.minimum(xg.min(-1), 0).astype(np.float64)
    hi = np.maximum(xg.max(-1), 0).astype(np.float64)
    if symmetric:
        half = 2 ** (bits - 1)
        scale = np.maximum(-lo, hi) / (half - 1)
        zero = np.full_like(scale, half)
        qmin = 1
    else:
        scale = (hi - lo) / (2**bits - 1)
        qmin = 0
    scale = scale.astype(np.float16).astype(np.float64)
    scale[scale == 0] = 1.0
    if not symmetric:
        zero = np.clip(np.rint(-lo / scale), 0, 2**bits - 1)
    s32 = scale.astype(np.float32)[..., None]
    inv = np.float32(1.0) / s32
    z32 = zero.astype(np.float32)[..., None]
    codes = np.clip(np.rint(xg * inv) + z32, qmin, 2**bits - 1)
    x_hat = (codes - z32) * s32
    return codes.reshape(rows, cols).astype(np.uint8), x_hat.reshape(rows, cols), s32[..., 0], z32[..., 0]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [None, 32])
@pytest.mark.parametrize("symmetric", [False, True])
def test_codes_equal_reference(bits, group, symmetric):
    x = np.random.default_rng(bits).normal(scale=0.05, size=(24, 64)).astype(np.float32)
    gran = PerChannel() if group is None else PerGroup(group)
    codes_ref, x_hat_ref, scale_ref, zero_ref = reference_rtn(x, bits, group, symmetric)
    qp = choose_qparams(x, gran, bits, symmetric=symmetric)
    np.testing.assert_array_equal(qp.scale, scale_ref)
    np.testing.assert_array_equal(qp.zero, zero_ref.astype(np.uint8))
    np.testing.assert_array_equal(quantize(x, qp), codes_ref)
    np.testing.assert_array_equal(dequantize(codes_ref, qp), x_hat_ref)


CASES = [(g, b, s, False) for g in (PerTensor(), PerChannel(), PerGroup(16)) for b in (2, 4, 8) for s in (False, True)]
CASES += [(PerTensor(), 3, False, True), (PerChannel(), 3, True, True), (PerGroup(64), 3, False, True)]


@pytest.mark.parametrize(("gran", "bits", "symmetric", "clip"), CASES)
def test_torch_path_equals_numba(gran, bits, symmetric, clip):
    x = torch.randn(32, 128, generator=torch.Generator().manual_seed(bits)) * 0.1
    x[5] = 0.0  # an all-zero row
    a = choose_qparams(x, gran, bits, symmetric=symmetric, clip_search=clip)
    b = choose_qparams(x, gran, bits, symmetric=symmetric, clip_search=clip, backend="torch")
    assert torch.equal(a.scale, b.scale) and torch.equal(a.zero, b.zero)
    ca, cb = quantize(x, a), quantize(x, b, backend="torch")
    assert torch.equal(ca, cb)
    assert torch.equal(dequantize(ca, a), dequantize(cb, b, backend="torch"))
    h1, s1 = fake_quantize_with_stats(x, gran, bits, symmetric=symmetric, clip_search=clip)
    h2, s2 = fake_quantize_with_stats(x, gran, bits, symmetric=symmetric, clip_search=clip, backend="torch")
    assert torch.equal(h1, h2)
    assert s1.sse == pytest.approx(s2.sse, rel=1e-9) and s1.max_abs_err == pytest.approx(s2.max_abs_err)


def test_clip_search_never_worse():
    x = np.random.default_rng(0).standard_t(3, size=(16, 256)).astype(np.float32)
    _, plain = fake_quantize_with_stats(x, PerGroup(64), 3)
    _, clipped = fake_quantize_with_stats(x, PerGroup(64), 3, clip_search=True)
    assert clipped.sse < plain.sse


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    x=arrays(np.float32, st.tuples(st.integers(1, 7), st.sampled_from([2, 6, 10])),
             elements=st.floats(-1e4, 1e4, width=32)),
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    magnitude=st.sampled_from([1e-6, 1e-2, 1.0, 1e3]),
)
def test_round_trip_error_at_most_half_a_step(x, bits, symmetric, magnitude):
    """Inside the range every weight lands within scale/2 of itself (odd shapes, zeros, tiny and huge values)."""
    x = (x / 1e4 * magnitude).astype(np.float32)
    qp = choose_qparams(x, PerChannel(), bits, symmetric=symmetric)
    x_hat = dequantize(quantize(x, qp), qp).astype(np.float64)
    scale = qp.scale.astype(np.float64)  # [rows, 1]
    lo = (qp.qmin - qp.zero.astype(np.float64)) * scale
    hi = (qp.qmax - qp.zero.astype(np.float64)) * scale
    inside = (x >= lo) & (x <= hi)
    err = np.abs(x_hat - x)
    assert np.all(err[inside] <= np.broadcast_to(scale / 2 * (1 + 1e-5), x.shape)[inside])
    # outside the range (a float16 scale rounded down) values clip to the nearest edge
    edge = np.where(x > hi, hi, lo)
    np.testing.assert_allclose(x_hat[~inside], np.broadcast_to(edge, x.shape)[~inside], rtol=1e-6)


def test_constant_and_zero_rows():
    x = np.zeros((3, 8), np.float32)
    x[1] = 0.75
    for symmetric in (False, True):
        qp = choose_qparams(x, PerChannel(), 4, symmetric=symmetric)
        x_hat = dequantize(quantize(x, qp), qp)
        np.testing.assert_array_equal(x_hat[0], 0.0)
        np.testing.assert_allclose(x_hat[1], 0.75, rtol=1e-3)


@pytest.mark.parametrize("bad", [1, 9, 0, 4.0, True])
def test_bits_out_of_range(bad):
    with pytest.raises(ValueError, match="bits must be an int from 2 to 8"):
        choose_qparams(np.ones((2, 4), np.float32), PerChannel(), bad)


def test_group_size_must_divide_row():
    with pytest.raises(ValueError, match="does not divide the row length 100.*e.g. "):
        choose_qparams(np.ones((2, 100), np.float32), PerGroup(64), 4)


@pytest.mark.parametrize("x", [np.ones((2, 3), np.int32), np.ones((2, 3), bool), torch.ones(2, 3, dtype=torch.int8)])
def test_integer_and_bool_rejected(x):
    with pytest.raises(TypeError, match="floating-point"):
        check_tensor(x)


def test_nan_inf_counted():
    x = np.ones((4, 4), np.float32)
    x[0, 1], x[2, 3] = np.nan, np.inf
    with pytest.raises(ValueError, match="2 NaN/Inf value"):
        choose_qparams(x, PerChannel(), 8)
    assert count_nonfinite(torch.from_numpy(x)) == 2
    assert count_nonfinite(np.full(3, 3e38, np.float32)) == 0  # the sum overflows; the values are finite


def test_empty_and_wrong_rank():
    with pytest.raises(ValueError, match="empty"):
        check_tensor(np.ones((0, 4), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        check_tensor(np.ones(4, np.float32))
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        check_tensor([[1.0]])


def test_input_never_written():
    x = np.random.default_rng(1).normal(size=(8, 32)).astype(np.float32)
    before = x.copy()
    qp = choose_qparams(x, PerGroup(16), 3, clip_search=True)
    quantize(x, qp)
    fake_quantize_with_stats(x, PerGroup(16), 3)
    np.testing.assert_array_equal(x, before)


def test_shape_mismatch_and_bad_qparams():
    x = np.ones((2, 4), np.float32)
    qp = choose_qparams(x, PerChannel(), 4)
    with pytest.raises(ValueError, match="chosen for"):
        quantize(np.ones((3, 4), np.float32), qp)
    with pytest.raises(TypeError, match="QParams"):
        quantize(x, {"scale": 1})
    with pytest.raises(TypeError, match="uint8"):
        dequantize(np.ones((2, 4), np.int32), qp)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_take_the_torch_path_with_the_same_codes():
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    for gran in (PerChannel(), PerGroup(64), PerTensor()):
        cpu = choose_qparams(x, gran, 4, clip_search=True)
        gpu = choose_qparams(x.cuda(), gran, 4, clip_search=True)
        assert gpu.scale.is_cuda
        assert torch.equal(gpu.scale.cpu(), cpu.scale) and torch.equal(gpu.zero.cpu(), cpu.zero)
        assert torch.equal(quantize(x.cuda(), gpu).cpu(), quantize(x, cpu))


# --------------------------------------------------------------------------- the rest of the arithmetic


@pytest.mark.parametrize("bits,group_size,symmetric", [(2, None, False), (3, 8, False), (4, 16, True), (8, None, True)])
def test_range_rule_and_straight_through_equal_the_kernels(bits, group_size, symmetric):
    import kernels_numba

    gen = torch.Generator().manual_seed(bits)
    w = torch.randn(16, 32, generator=gen) * torch.logspace(-3, 1, 16)[:, None]  # rows of very different ranges
    w[3] = 0.0  # an all-zero row: scale 1, dequantizes to 0
    gs = group_size or 32
    g = w.reshape(16, 32 // gs, gs)
    scale, zero = qparams_from_range(g.amin(-1), g.amax(-1), bits, symmetric=symmetric)
    k_scale, k_zero = kernels_numba.choose_qparams(w.numpy(), bits, group_size, symmetric)
    np.testing.assert_array_equal(scale.numpy(), k_scale)
    np.testing.assert_array_equal(zero.numpy(), k_zero)
    assert scale.dtype == torch.float32 and zero.dtype == torch.uint8
    gran = PerChannel() if group_size is None else PerGroup(group_size)
    w_hat = fake_quantize_ste(w, gran, bits, symmetric=symmetric)
    x_hat, codes, qp = fake_quantize_codes(w, gran, bits, symmetric=symmetric)  # the Numba kernels
    assert torch.equal(w_hat, x_hat)
    np.testing.assert_array_equal(codes.numpy(), kernels_numba.quantize(w.numpy(), k_scale, k_zero, bits, symmetric))


def test_straight_through_gradient_and_dtype():
    w = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    y = fake_quantize_ste(w, PerGroup(4), 3)
    assert y.dtype == torch.float64
    g = torch.randn(4, 8, dtype=torch.float64)
    (y * g).sum().backward()
    assert torch.equal(w.grad, g)
    with pytest.raises(ValueError, match="2-D torch.Tensor"):
        fake_quantize_ste(np.ones((2, 2), np.float32), PerChannel(), 4)
    with pytest.raises(ValueError, match="NaN/Inf"):
        fake_quantize_ste(torch.tensor([[1.0, float("nan")]]), PerChannel(), 4)


def test_straight_through_never_leaves_the_tensor(monkeypatch):
    """QAT's forward stays in torch on the tensor's device: no numpy conversion, no Numba kernel."""
    import kernels_numba

    def refuse(*args, **kwargs):
        raise AssertionError("the straight-through fake-quant went through numpy")

    monkeypatch.setattr(torch.Tensor, "numpy", refuse)
    monkeypatch.setattr(torch.Tensor, "cpu", refuse)
    for name in ("choose_qparams", "quantize", "dequantize", "fake_quantize", "quantize_with_stats"):
        monkeypatch.setattr(kernels_numba, name, refuse)
    w = torch.randn(6, 16, requires_grad=True)
    y = fake_quantize_ste(w, PerGroup(8), 4)
    y.sum().backward()
    from qviz.quant.methods.qat import QATLinear

    q = QATLinear.from_float(torch.nn.Linear(16, 4), bits=4, group_size=8)
    q(torch.randn(2, 16)).sum().backward()
    assert q.weight.grad is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_straight_through_stays_on_cuda():
    w = torch.randn(64, 256, device="cuda", requires_grad=True)
    y = fake_quantize_ste(w, PerGroup(64), 4)
    assert y.is_cuda
    assert torch.equal(y.detach().cpu(), fake_quantize_codes(w.detach().cpu(), PerGroup(64), 4)[0])


def test_rtn_nbytes():
    assert rtn_nbytes((384, 1536), 4, 128) == 384 * 1536 // 2 + 384 * 12 * 3
    assert rtn_nbytes((10, 10), 3, None, symmetric=True) == 10 * 4 + 10 * 2  # rows of ceil(30 / 8) bytes
    assert rtn_nbytes((256, 512), 8, "tensor", symmetric=True) == 256 * 512 + 2
    qp = choose_qparams(np.ones((8, 64), np.float32), PerGroup(16), 4)
    assert rtn_nbytes((8, 64), 4, 16) == 8 * 32 + qp.overhead_nbytes
    with pytest.raises(ValueError, match="does not divide the row length 10"):
        rtn_nbytes((4, 10), 4, 4)
    with pytest.raises(ValueError, match="bits must be an int from 2 to 8"):
        rtn_nbytes((4, 8), 1)


def test_bits_and_group_size_checks():
    assert check_bits(np.int64(4)) == 4 and check_bits(None, "act_bits", allow_none=True) is None
    with pytest.raises(ValueError, match=r"^QAT act_bits must be an int from 2 to 8; got 1\. Pick e\.g\. act_bits=8"):
        check_bits(1, "act_bits", owner="QAT", allow_none=True)
    with pytest.raises(ValueError, match="bits must be an int from 2 to 8; got True"):
        check_bits(True)
    assert check_group_size("tensor") == "tensor" and check_group_size(None) is None
    assert check_group_size(None, (4, 24)) == 24 and check_group_size("tensor", (4, 24)) == 24
    assert check_group_size(8, (4, 24)) == 8
    with pytest.raises(ValueError, match="RTN group_size must be None .*'tensor' .*got -1"):
        check_group_size(-1, owner="RTN")
    with pytest.raises(ValueError, match="group_size must be None .*got 'x'"):
        check_group_size("x")
    with pytest.raises(ValueError, match="group_size='tensor' is not supported here"):
        check_group_size("tensor", (4, 24), allow_tensor=False)
    with pytest.raises(ValueError, match="Group size 5 does not divide the row length 24 of a 4x24 weight"):
        check_group_size(5, (4, 24))
