"""Tests for qviz.evaluate.size: format bits, the 70B projection, recorded vs serialised bytes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qviz
from qviz.evaluate import size as S


def test_projection_table_70b_matches_the_usual_table():
    t = S.projection_table(70e9)
    gb = t.size_gb.to_series()
    assert gb["fp16"] == pytest.approx(140.0)
    assert gb["fp32"] == pytest.approx(280.0)
    # INT8: 70 GB plus a 4-byte absmax per 8192-weight row
    assert gb["bnb int8 t6.0"] == pytest.approx(70 + 70 * 32 / 8192 / 8, rel=1e-9)
    # INT4: 35 GB plus a float16 scale and a uint8 zero per 128 weights (0.1875 bit)
    assert gb["RTN w4 g128 asym"] == pytest.approx(35 + 70 * 0.1875 / 8, rel=1e-9)
    # INT2: 17.5 GB plus the same overhead
    assert gb["RTN w2 g128 asym"] == pytest.approx(17.5 + 70 * 0.1875 / 8, rel=1e-9)
    # NF4 with 64-weight blocks and a float32 absmax: 0.5 bit per weight of overhead
    assert float(t.overhead_bits.sel(config="bnb nf4 b64")) == 0.5
    assert "float32 absmax per block of 64" in str(t.overhead.sel(config="bnb nf4 b64").item())
    assert t.size_gb.attrs["units"].startswith("GB")


def test_format_bits_per_method():
    assert S.format_bits(qviz.RTN(bits=3, group_size=64, symmetric=True)).total_bits == 3 + 16 / 64
    assert S.format_bits(qviz.BnbNF4(blocksize=64, double_quant=True)).overhead_bits == pytest.approx(8 / 64 + 32 / (64 * 256))
    assert S.format_bits(qviz.GPTQ(bits=4, group_size=128)).total_bits == 4.1875
    assert S.format_bits(qviz.BnbInt8(), row_length=4096).overhead_bits == 32 / 4096
    assert S.format_bits(qviz.RTN(bits=4, group_size="tensor")).overhead_bits == 0.0


@pytest.mark.parametrize(
    "args, err, match",
    [
        ((70e9, "fp12"), ValueError, "Unknown format 'fp12'"),
        ((-1, "fp16"), ValueError, "finite number >= 0"),
        (("big", "fp16"), TypeError, "number of weights"),
        ((70e9, 4), TypeError, "quantization config"),
    ],
)
def test_project_size_bad_input(args, err, match):
    with pytest.raises(err, match=match):
        S.project_size(*args)


def test_project_size_public_name_and_fp_params():
    n = qviz.project_size(1e9, qviz.RTN(bits=4, group_size=128), fp_params=1e6)
    assert n == int(1e9 * 4.1875 / 8 + 1e6 * 2)
    with pytest.raises(ValueError, match="row_length"):
        S.format_bits("fp16", row_length=0)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.LayerNorm(256))


@pytest.mark.parametrize(
    "cfg",
    [
        qviz.RTN(bits=4, group_size=128),
        qviz.RTN(bits=3, group_size=64, symmetric=True),
        qviz.RTN(bits=8, group_size=None),
        qviz.BnbInt8(),
        qviz.BnbNF4(blocksize=64),
        qviz.BnbNF4(blocksize=64, double_quant=True),
    ],
    ids=lambda c: c.label,
)
def test_recorded_bytes_agree_with_safetensors_within_1_percent(cfg):
    q = qviz.quantize(_net(), cfg, progress=False, packed=True)
    rec = S.model_size(q)["total_bytes"]
    ser = S.serialized_size(q)
    assert abs(ser["payload_bytes"] - rec) / rec < 0.01
    # the file adds the safetensors header (tensor names, dtypes, shapes): a few hundred bytes per layer
    assert 0 < ser["file_bytes"] - ser["payload_bytes"] < 2000


def test_simulated_model_has_no_serialised_storage_and_fp_model_counts_params():
    net = _net()
    q = qviz.quantize(net, qviz.RTN(bits=4, group_size=128), progress=False)
    with pytest.raises(ValueError, match="simulated"):
        S.serialized_size(q)
    fp = S.model_size(net)
    assert fp["total_bytes"] == sum(p.numel() * 4 for p in net.parameters())
    assert fp["bits_per_weight"] == 32
    assert S.serialized_size(net)["payload_bytes"] == fp["total_bytes"]


@pytest.mark.slow
def test_minilm_packed_rtn_and_nf4_serialised(minilm):
    for cfg in (qviz.RTN(bits=4, group_size=128), qviz.BnbNF4()):
        q = qviz.quantize(minilm, cfg, progress=False, packed=True)
        rec = S.model_size(q)["total_bytes"]
        assert abs(S.serialized_size(q)["file_bytes"] - rec) / rec < 0.01
