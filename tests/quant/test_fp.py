"""FP8, MX and NVFP4 configs and methods: validation, exact storage, the drivers, activation quantization."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import qviz
from qviz.quant.actquant import ActSpec
from qviz.quant.registry import config_from_json
from qviz.quant.registry import method_for

CONFIGS = [
    qviz.FP8(), qviz.FP8("e5m2", granularity=32), qviz.FP8(granularity="tensor"), qviz.MXFP4(), qviz.MXFP6(),
    qviz.MXFP6(fmt="e3m2"), qviz.MXFP8(), qviz.MXFP8(fmt="e5m2"), qviz.NVFP4(),
    qviz.FP8(act_bits=8), qviz.FP8(act_bits=8, act_scheme="per-tensor", act_static=True),
    qviz.MXFP4(act_bits=4, act_type="fp"), qviz.NVFP4(act_bits=8, act_type="int"),
]


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))


@pytest.mark.parametrize(("cfg", "bits"), [
    (qviz.MXFP4(), 4.25), (qviz.MXFP6(), 6.25), (qviz.MXFP6(fmt="e3m2"), 6.25), (qviz.MXFP8(), 8.25),
    (qviz.NVFP4(), 4.5 + 32 / (64 * 128)), (qviz.FP8(), 8 + 32 / 128), (qviz.FP8(granularity=32), 9.0),
    (qviz.FP8(granularity="tensor"), 8 + 32 / (64 * 128)),
])
def test_exact_bits_per_weight(cfg, bits):
    qt = qviz.quantize_tensor(torch.randn(64, 128), cfg)
    assert qt.bits_per_weight == bits
    assert method_for(cfg).storage_nbytes((64, 128), cfg) == qt.nbytes


def test_project_size_uses_the_formats_own_accounting():
    assert qviz.project_size(1e9, qviz.MXFP4()) == 531_250_000
    assert qviz.project_size(1e9, qviz.NVFP4()) == 562_500_000
    from qviz.evaluate.size import format_bits

    assert "E8M0" in format_bits(qviz.MXFP8()).overhead
    assert format_bits(qviz.FP8(), row_length=1024).total_bits == 8 + 32 / 1024


def test_dequantize_is_the_kernel_format():
    w = torch.randn(16, 64)
    qt = qviz.quantize_tensor(w, qviz.FP8())
    ref = torch.clamp(w / qt.scale, -448, 448).to(torch.float8_e4m3fn).float() * qt.scale
    torch.testing.assert_close(qt.dequantize(), ref, rtol=0, atol=0)
    np_out = qviz.fake_quantize(w.numpy(), qviz.MXFP4())
    assert isinstance(np_out, np.ndarray) and np.array_equal(np_out, qviz.fake_quantize(w, qviz.MXFP4()).numpy())
    assert len(np.unique(np_out[0, :32] / np.abs(np_out[0, :32]).max())) <= 15  # E2M1 grid times one scale


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.label)
def test_json_round_trip_and_labels_unique(cfg):
    assert config_from_json(cfg.to_json()) == cfg
    assert len({c.label for c in CONFIGS}) == len(CONFIGS)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: qviz.FP8(fmt="e3m4"), "FP8 fmt must be one of"),
    (lambda: qviz.MXFP6(fmt="e4m3"), "MXFP6 fmt must be one of"),
    (lambda: qviz.MXFP8(fmt="e2m1"), "MXFP8 fmt must be one of"),
    (lambda: qviz.MXFP4(block_size=16), "block_size must be 32"),
    (lambda: qviz.NVFP4(block_size=32), "block_size must be 16"),
    (lambda: qviz.FP8(fmt="e2m1"), r"FP8 fmt must be one of \('e4m3', 'e5m2'\).*got 'e2m1'"),
    (lambda: qviz.MXFP4(fmt="e4m3"), r"MXFP4 fmt must be one of \('e2m1',\)"),
    (lambda: qviz.MXFP6(fmt="int6"), "The element types qviz knows: e4m3, e5m2 .FP8., e2m3, e3m2 .FP6., e2m1 .FP4."),
    (lambda: qviz.MXFP8(block_size=64), "MXFP8 block_size must be 32: the OCP MX v1.0 specification defines blocks of 32"),
    (lambda: qviz.MXFP6(block_size=16), "MXFP6 block_size must be 32.*got 16. For other block sizes use qviz.FP8"),
    (lambda: qviz.MXFP4(block_size=True), r"MXFP4 block_size must be an int; got True \(bool\)"),
    (lambda: qviz.NVFP4(block_size=16.0), r"NVFP4 block_size must be an int; got 16.0 \(float\)"),
    (lambda: qviz.FP8(granularity=0), "granularity"),
    (lambda: qviz.FP8(act_bits=6), "act_bits must be None"),
    (lambda: qviz.MXFP4(act_bits=8, act_static=True), "act_scheme='per-tensor'"),
    (lambda: qviz.MXFP4(act_type="float"), "act_type"),
    (lambda: qviz.NVFP4(act_static=True), "needs act_bits"),
])
def test_bad_configs_say_why(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_layer_error_and_quantize_for_every_config():
    model, x = net(), torch.randn(64, 64)
    err = qviz.layer_error(model, CONFIGS, calib=x)
    rel = err.output_rel_err
    assert bool((rel > 0).all()) and bool((rel < 0.05).all())
    by = {c: float(rel.sel(config=c).mean()) for c in err.config.values}
    assert max(by["MXFP8"], by["MXFP6"]) < by["MXFP6 e3m2"] < by["MXFP4"]  # E2M3 has E4M3's 3 mantissa bits
    assert by["FP8 e4m3 ch"] < by["FP8 e4m3 ch a8fp/token"]
    q = qviz.quantize(model, qviz.FP8(act_bits=8, act_scheme="per-tensor", act_static=True), calib=x, progress=False)
    assert float(q.module[0].act_scale) == pytest.approx(float(x.abs().max()) / 448)
    with torch.no_grad():
        out, ref = q.module(x), model(x)
    assert 0 < float((out - ref).norm() / ref.norm()) < 0.1
    with pytest.raises(ValueError, match="act_static=True"):
        qviz.quantize(model, qviz.FP8(act_bits=8, act_scheme="per-tensor", act_static=True), progress=False)
    with pytest.raises(ValueError, match="No layer is left to quantize .0: MXFP4 scales blocks of 32.*row length 40"):
        qviz.quantize(nn.Sequential(nn.Linear(40, 8)), qviz.MXFP4(), progress=False)


@pytest.mark.parametrize(("cfg", "block"), [(qviz.MXFP4(), 32), (qviz.MXFP6(fmt="e3m2"), 32), (qviz.MXFP8(), 32),
                                            (qviz.NVFP4(), 16), (qviz.MXFP4(act_bits=8), 32)], ids=lambda c: str(c))
def test_a_row_the_block_does_not_divide_stays_in_full_precision_with_the_reason(cfg, block):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 8))  # rows of 40: not a multiple of 16 or 32
    x = torch.randn(16, 40)
    q = qviz.quantize(model, cfg, progress=False)
    why = q.quantization.skipped["0"]
    assert why.startswith(f"{type(cfg).__name__} scales blocks of {block}") and f"40 % {block} = 8" in why
    assert "stays in full precision" in why and list(q.quantization.layers) == ["2"]
    assert torch.equal(q.module[0].weight, model[0].weight)
    assert not torch.equal(qviz.fake_quantize(model[2].weight, cfg), model[2].weight)
    err = qviz.layer_error(model, cfg, calib=x)
    assert list(err.layer.values) == ["2"] and float(err.output_rel_err.sel(layer="2")) > 0
    assert json.loads(err.attrs["skipped"])[cfg.label]["0"] == why
    assert method_for(cfg).refuse("2", (8, 64), cfg) is None
    with pytest.raises(ValueError, match=f"row length 40 is not a multiple of {block}.*Pad the rows"):
        qviz.quantize_tensor(model[0].weight, cfg)


def test_sensitivity_and_compare_accept_the_formats():
    model, x = net(), torch.randn(32, 64)
    sens = qviz.sensitivity(model, [qviz.MXFP4(), qviz.NVFP4()], calib=x, eval_data=x)
    assert set(sens.config.values) == {"MXFP4", "NVFP4"}


def test_activation_specs():
    x = torch.tensor([[0.1, -2.0, 3.0, 0.0]])
    out = ActSpec(8, "fp").apply(x)
    np.testing.assert_array_equal(out.numpy(), torch.clamp(x / (3.0 / 448), -448, 448).to(torch.float8_e4m3fn).float().mul(3.0 / 448).numpy())
    assert ActSpec(4, "fp", "per-tensor").apply(x).tolist() == [[0.0, -2.0, 3.0, 0.0]]
    x.requires_grad_(True)
    ActSpec(4, "int").apply(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # straight through
    with pytest.raises(ValueError, match="static"):
        ActSpec(8, "fp", "per-tensor", True).apply(x)


def test_explorer_menu_offers_the_formats():
    from qviz.widgets._lab import available_methods, make_config

    assert {"FP8", "MXFP4", "MXFP6", "MXFP8", "NVFP4", "HQQ"} <= set(available_methods())
    assert make_config("FP8", group_size="128").label == "FP8 e4m3 g128"
    assert make_config("HQQ", bits=3, group_size="64").label == "HQQ w3 g64"


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c.act_bits is None], ids=lambda c: c.label)
def test_fake_quantize_is_one_quantize_dequantize(cfg):
    w = torch.randn(24, 64, dtype=torch.float64)
    w[2, 7] = 30.0  # an outlier: its block / channel / tensor scale differs from the rest
    out = qviz.fake_quantize(w, cfg)
    assert out.dtype == torch.float64 and out.shape == w.shape
    ref = qviz.quantize_tensor(w.float(), cfg).dequantize()
    assert torch.equal(out.float(), ref)
    assert np.array_equal(qviz.fake_quantize(w.float().numpy(), cfg), ref.numpy())
    w[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        qviz.fake_quantize(w, cfg)
