"""Tests for qviz.evaluate.cost: hardware table, roofline, fits-on, latency labels, kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qviz
from qviz.evaluate import cost as C

ROWS = [
    {"name": "a", "memory_gb": 8, "bandwidth_gbps": 100, "usd_per_hour": 1.0},
    {"name": "b", "memory_gb": 80, "bandwidth_gbps": 2000, "usd_per_hour": 2.0, "tflops": 1.0},
]


def test_roofline_and_cost_from_an_edited_table():
    hw = C.hardware_table(ROWS)
    r = C.roofline(10e9, hw, n_params=5e9)
    assert float(r.tokens_per_s.sel(hardware="a")) == pytest.approx(10.0)  # 100 GB/s / 10 GB
    # b: memory roof 200 tok/s, compute roof 1e12 / 1e10 = 100 tok/s
    assert float(r.tokens_per_s.sel(hardware="b")) == pytest.approx(100.0)
    assert r.bound.sel(hardware="b").item() == "compute"
    t = C.cost_table(10e9, hw)
    assert float(t.usd_per_1m_tokens.sel(hardware="a")) == pytest.approx(1.0 / (10 * 3600) * 1e6)
    assert bool(t.fits.sel(hardware="b")) and not bool(t.fits.sel(hardware="a"))
    # a Dataset edited in place goes back in
    hw2 = hw.copy(deep=True)
    hw2["bandwidth_gbps"].loc["a"] = 50.0
    assert float(C.roofline(10e9, C.hardware_table(hw2)).tokens_per_s.sel(hardware="a")) == pytest.approx(5.0)


def test_default_table_measures_this_cpu():
    hw = C.hardware_table()
    assert str(hw.hardware.values[0]).startswith("this CPU")
    assert float(hw.bandwidth_gbps[0]) > 0
    assert hw.bandwidth_gbps.attrs["units"] == "GB/s"


@pytest.mark.parametrize(
    "row, err, match",
    [
        ({"name": "phone", "memory_gb": 8, "usd_per_hour": 0}, ValueError, "no bandwidth_gbps"),
        ({"name": "x", "memory_gb": 8, "bandwidth_gbps": -1, "usd_per_hour": 0}, ValueError, "> 0"),
        ({"name": "x", "memory_gb": 8, "bandwidth_gbps": 1, "usd_per_hour": 0, "bandwith": 3}, ValueError, "Did you mean 'bandwidth_gbps'"),
        ({"name": "x", "memory_gb": "lots", "bandwidth_gbps": 1, "usd_per_hour": 0}, TypeError, "must be a number"),
    ],
)
def test_hardware_row_errors(row, err, match):
    with pytest.raises(err, match=match):
        C.hardware_table([row])


def test_table_without_bandwidth_in_a_dataset_is_an_error():
    hw = C.hardware_table(ROWS)
    hw["bandwidth_gbps"].loc["b"] = np.nan
    with pytest.raises(ValueError, match="'b' has no bandwidth_gbps"):
        C.roofline(1e9, hw)


def test_dollar_helpers_and_bad_values():
    assert C.usd_per_1m_tokens(1000.0, 3.6) == pytest.approx(1.0)
    assert C.usd_per_1k_queries(1.0, 3.6) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="> 0"):
        C.usd_per_1m_tokens(0.0, 1.0)
    with pytest.raises(ValueError, match="bytes_per_token"):
        C.roofline(-5, C.hardware_table(ROWS))
    with pytest.raises(ValueError, match="headroom"):
        C.fits_on(1e9, C.hardware_table(ROWS), headroom=-1)


def test_numba_kernel_model_matches_fake_quant_and_is_labelled_real():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32))
    for cfg in (qviz.RTN(bits=4, group_size=32), qviz.RTN(bits=8, group_size=None), qviz.RTN(bits=4, group_size=None)):
        q = qviz.quantize(net, cfg, progress=False)
        km = C.kernel_model(net, cfg, quantized=q)
        x = torch.randn(5, 128)
        assert torch.allclose(km.run(x), q.run(x), atol=1e-4, rtol=1e-4)
        assert C.model_kernel(km).startswith("real kernel: kernels_numba")
        r = C.measure_latency(km, x, batch_size=4, repeats=2)
        assert r["kernel_class"] == "real kernel" and r["latency_ms"] > 0 and r["throughput"] > 0
    assert C.kernel_model(net, qviz.RTN(bits=3, group_size=32)) is None  # no 3-bit kernel
    q = qviz.quantize(net, qviz.RTN(bits=3, group_size=32), progress=False)
    assert C.measure_latency(q, torch.randn(4, 128), batch_size=4, repeats=1)["kernel_class"] == "simulated"
    assert C.measure_latency(net, torch.randn(4, 128), batch_size=4, repeats=1)["kernel_class"] == "full precision"


def test_gemv_benchmark_small_and_errors():
    ds = C.gemv_benchmark([(64, 256)], kernels=["torch fp32", "numba int4", "numba int8", "torch int8 dynamic"], repeats=3)
    assert ds.time_us.dims == ("shape", "kernel")
    assert np.isfinite(ds.time_us.values).all()
    assert float(ds.speedup.sel(kernel="torch fp32")[0]) == 1.0
    assert float(ds.weight_bytes.sel(kernel="numba int4")[0]) < float(ds.weight_bytes.sel(kernel="torch fp32")[0]) / 7
    with pytest.raises(ValueError, match="Unknown kernel 'numba int5'. Did you mean"):
        C.gemv_benchmark([(64, 256)], kernels=["numba int5"])


def test_kernel_class():
    assert C.kernel_class("real kernel: bitsandbytes Linear4bit (nf4)") == "real kernel"
    assert C.kernel_class("simulated W8A8 (fake-quant)") == "simulated"


def test_offload_roofline_by_hand():
    import xarray as xr

    from qviz.evaluate.cost import hardware_table, offload_roofline

    hw = hardware_table([{"name": "gpu", "memory_gb": 24, "bandwidth_gbps": 1000, "usd_per_hour": 0.4}])
    sizes = xr.DataArray([10e9, 40e9], dims="config", coords={"config": ["small", "big"]})
    r = offload_roofline(sizes, "gpu", host_bandwidth_gbps=50, hardware=hw)
    # small: all 10 GB on the device; big: 24 / 1.2 = 20 GB there, 20 GB read from the host per token
    np.testing.assert_allclose(r.offloaded_gb.values, [0.0, 20.0])
    np.testing.assert_allclose(r.tokens_per_s.values, [100.0, 1 / (20 / 1000 + 20 / 50)])
    np.testing.assert_allclose(r.tokens_per_s_if_it_fit.values, [100.0, 25.0])
    assert r.fits.values.tolist() == [True, False]
    # no headroom: 24 GB stay on the device
    assert float(offload_roofline(40e9, "gpu", host_bandwidth_gbps=50, hardware=hw, headroom=0).offloaded_gb) == 16.0


def test_offload_roofline_bad_input():
    import xarray as xr

    from qviz.evaluate.cost import hardware_table, offload_roofline

    hw = hardware_table([{"name": "gpu", "memory_gb": 24, "bandwidth_gbps": 1000, "usd_per_hour": 0.4}])
    with pytest.raises(ValueError, match="Unknown hardware row 'gpv'.*gpu"):
        offload_roofline(1e9, "gpv", host_bandwidth_gbps=50, hardware=hw)
    with pytest.raises(ValueError, match="host_bandwidth_gbps must be finite and > 0"):
        offload_roofline(1e9, "gpu", host_bandwidth_gbps=0, hardware=hw)
    with pytest.raises(ValueError, match="model_bytes must be finite"):
        offload_roofline(-1.0, "gpu", host_bandwidth_gbps=50, hardware=hw)
