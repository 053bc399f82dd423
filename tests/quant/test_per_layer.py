"""qviz.PerLayer: per-layer configs by name pattern, delegated to each sub-config's method."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qviz
from qviz.quant.registry import config_from_json


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))


def test_rules_first_match_default_and_none():
    cfg = qviz.PerLayer({"2": qviz.GGUF("Q8_0"), "4": None}, default=qviz.RTN(bits=4, group_size=32))
    q = qviz.quantize(net(), cfg, progress=False)
    assert {k: r.config for k, r in q.quantization.layers.items()} == {"0": "RTN w4 g32 asym", "2": "GGUF Q8_0"}
    assert q.quantization.skipped == {"4": "kept in full precision by the PerLayer rule '4' (None)"}
    assert q.quantization.layers["2"].bits_per_weight == 8.5
    assert config_from_json(cfg.to_json()) == cfg
    assert cfg.label == "RTN w4 g32 asym; 2: GGUF Q8_0, 4: fp"


def test_calibrated_sub_configs_and_drivers():
    model = net()
    calib = torch.randn(64, 64)
    cfg = qviz.PerLayer({"0": qviz.GPTQ(bits=4, group_size=32)}, default=qviz.RTN(bits=8, group_size=None))
    with pytest.raises(ValueError, match="calib"):
        qviz.quantize(model, cfg, progress=False)
    q = qviz.quantize(model, cfg, calib=calib, progress=False)
    assert q.quantization.layers["0"].config == "GPTQ w4 g32 act"
    err = qviz.layer_error(model, [cfg, qviz.RTN(bits=8, group_size=None)], calib=calib)
    assert float(err.output_rel_err.sel(config=cfg.label, layer="4")) == pytest.approx(
        float(err.output_rel_err.sel(config="RTN w8 ch asym", layer="4")))
    assert float(err.output_rel_err.sel(config=cfg.label, layer="0")) > float(
        err.output_rel_err.sel(config="RTN w8 ch asym", layer="0"))


def test_bad_input():
    with pytest.raises(TypeError, match="must map name patterns"):
        qviz.PerLayer({3: qviz.RTN()})
    with pytest.raises(TypeError, match="must be a quantization config"):
        qviz.PerLayer({"0": "Q4_0"})
    with pytest.raises(ValueError, match="at least one rule"):
        qviz.PerLayer({}, default=qviz.RTN())
    with pytest.raises(ValueError, match="group_size=48 .* does not divide the row length 64"):
        qviz.quantize(net(), qviz.PerLayer({"2": qviz.RTN(group_size=48)}, default=None), progress=False)
