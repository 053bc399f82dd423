"""The four methods in qviz's other entry points, like any other config: layer_error, sensitivity, compare."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import qviz

CONFIGS = [qviz.GPTQ(bits=3, group_size=None), qviz.AWQ(bits=3, group_size=None), qviz.SmoothQuant(alpha=0.5),
           qviz.QAT(bits=3, steps=5, batch_size=16)]


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 8))
    with torch.no_grad():
        net[1].weight[:3] *= 20  # outlier channels at the input of layer 2
    return net


def test_layer_error_takes_every_method():
    torch.manual_seed(1)  # the calibration inputs must not depend on what ran before
    x = torch.randn(256, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        errors = qviz.layer_error(_net(), [qviz.RTN(bits=3, group_size=None), *CONFIGS], calib=x)
    assert list(errors.config.values) == ["RTN w3 ch asym", *(c.label for c in CONFIGS)]
    rel = errors.output_rel_err
    assert np.isfinite(rel.values).all()
    rtn = rel.sel(config="RTN w3 ch asym")
    assert (rel.sel(config=CONFIGS[0].label) < rtn).all()  # GPTQ
    assert (rel.sel(config=CONFIGS[1].label) <= rtn * (1 + 1e-6)).all()  # AWQ never worse on its calibration data


def test_sensitivity_takes_every_method():
    torch.manual_seed(1)
    x = torch.randn(128, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sens = qviz.sensitivity(_net(), CONFIGS[:3], calib=x, eval_data=torch.randn(64, 16))
    assert set(sens.config.values) == {c.label for c in CONFIGS[:3]}
    assert all(np.isfinite(sens[v].values).all() for v in sens.data_vars if sens[v].dtype.kind == "f")


@pytest.mark.slow
def test_compare_takes_every_method(digits, digits_calib):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cmp = qviz.compare(digits, [qviz.GPTQ(bits=4, group_size=None), qviz.AWQ(bits=4, group_size=None),
                                    qviz.SmoothQuant(alpha=0.5), qviz.QAT(bits=4, steps=20, batch_size=32)],
                           calib=digits_calib, metrics=["accuracy", "size"], progress=False)
    acc = cmp.accuracy.to_series()
    assert acc["fp32"] > 0.9 and all(acc[c] > 0.85 for c in acc.index)
