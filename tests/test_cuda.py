"""CUDA paths, run on a GPU machine; every test skips cleanly without one.

Each test computes the same thing on the CPU and on the GPU and compares.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qviz

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.LayerNorm(512), nn.Linear(512, 128))


def test_capture_cuda_matches_cpu(digits, digits_calib):
    cpu = qviz.capture(digits, digits_calib, progress=False)
    gpu = qviz.capture(digits.with_module(digits.copy().module.cuda()), digits_calib, progress=False)
    assert gpu.attrs["device"].startswith("cuda")
    for var in ("absmax", "mean", "std", "kurtosis"):
        np.testing.assert_allclose(gpu[var].values, cpu[var].values, rtol=2e-3, atol=1e-5, equal_nan=True, err_msg=var)
    np.testing.assert_array_equal(gpu["top_channels"].values, cpu["top_channels"].values)


@pytest.mark.parametrize("cfg", [qviz.RTN(bits=4, group_size=128), qviz.RTN(bits=8, group_size=None, symmetric=True)])
def test_fake_quantize_cuda_tensor_matches_cpu(cfg):
    w = torch.randn(256, 512)
    cpu = qviz.fake_quantize(w, cfg)
    gpu = qviz.fake_quantize(w.cuda(), cfg)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cfg", [qviz.BnbInt8(), qviz.BnbNF4(), qviz.BnbFP4(), qviz.RTN(bits=4, group_size=128)])
def test_quantize_runs_on_cuda_like_on_cpu(cfg):
    net = _mlp()
    x = torch.randn(32, 256)
    q_cpu = qviz.quantize(net, cfg, progress=False)
    q_gpu = qviz.quantize(qviz.load(_mlp().cuda()), cfg, progress=False)
    y_ref = net(x)
    y_cpu = q_cpu.run(x)
    y_gpu = q_gpu.run(x.cuda()).float().cpu()
    err_cpu = ((y_cpu - y_ref).norm() / y_ref.norm()).item()
    err_gpu = ((y_gpu - y_ref).norm() / y_ref.norm()).item()
    assert err_gpu < 0.2 and abs(err_gpu - err_cpu) < 0.05 + 0.5 * err_cpu, (err_cpu, err_gpu)


def test_layer_error_cuda_matches_cpu():
    net = _mlp()
    x = torch.randn(64, 256)
    cfgs = [qviz.RTN(bits=4, group_size=128), qviz.BnbNF4()]
    cpu = qviz.layer_error(net, cfgs, calib=x)
    gpu = qviz.layer_error(qviz.load(_mlp().cuda()), cfgs, calib=x.cuda())
    for var in ("weight_sqnr_db", "output_rel_err", "bits_per_weight"):
        np.testing.assert_allclose(gpu[var].values, cpu[var].values, rtol=5e-3, atol=1e-6, err_msg=var)
