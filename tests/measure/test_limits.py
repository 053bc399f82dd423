"""limits: entropy estimates, bounds, code entropy, and SQNR falling monotonically with bits on minilm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import qviz
from qviz.measure.limits import DB_PER_BIT, code_entropy_bits, differential_entropy_bits, limits


@pytest.mark.parametrize(
    ("sampler", "h_true"),
    [
        (lambda r, n: r.normal(0, 2.0, n), 0.5 * math.log2(2 * math.pi * math.e * 4.0)),
        (lambda r, n: r.uniform(-1, 1, n), 1.0),
        (lambda r, n: r.laplace(0, 1.0, n), math.log2(2 * math.e)),
    ],
)
def test_differential_entropy_known_laws(sampler, h_true):
    x = sampler(np.random.default_rng(0), 400_000)
    assert differential_entropy_bits(x) == pytest.approx(h_true, abs=0.01)


def test_code_entropy():
    assert code_entropy_bits(np.zeros(10, np.uint8)) == 0.0
    assert code_entropy_bits(torch.tensor([0, 1, 2, 3, 0, 1, 2, 3], dtype=torch.uint8)) == pytest.approx(2.0)
    assert code_entropy_bits(np.array([-1, 5, -1, 5])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="empty"):
        code_entropy_bits(np.array([], np.uint8))
    with pytest.raises(ValueError, match="at least 4 samples"):
        differential_entropy_bits(np.ones(2))


def test_bounds_on_gaussian_weights():
    torch.manual_seed(0)
    lin = nn.Linear(512, 256)
    with torch.no_grad():
        lin.weight.normal_(0, 0.02)
    lim = limits(nn.Sequential(lin), bits=[2, 4, 8],
                 schemes=[qviz.RTN(bits=4, group_size=128), qviz.RTN(bits=4, group_size=None, symmetric=True),
                          qviz.BnbNF4()])
    lim = lim.isel(layer=0)
    # Gaussian weights: the Shannon lower bound and the Gaussian R(D) curve coincide
    np.testing.assert_allclose(lim.shannon_bound_db, lim.gaussian_db, atol=0.05)
    np.testing.assert_allclose(lim.gaussian_db.sel(bits=4) - lim.gaussian_db.sel(bits=2), 2 * DB_PER_BIT)
    # no quantizer beats the bound at its nominal rate, RTN sits a few dB below it
    gap = lim.shannon_bound_db - lim.sqnr_db
    assert (gap.fillna(1.0) > 0).all()
    assert 2.0 < float(gap.sel(scheme="RTN g128 asym", bits=8)) < 8.0
    # NF4 appears only at 4 bits and carries fewer bits of information than it stores
    nf4 = lim.sel(scheme="bnb nf4 b64")
    assert np.isnan(float(nf4.sqnr_db.sel(bits=2))) and np.isfinite(float(nf4.sqnr_db.sel(bits=4)))
    assert float(nf4.code_entropy_bits.sel(bits=4)) < 4.0 < float(nf4.bits_per_weight.sel(bits=4))
    rule = lim.rule_db.sel(bits=8) - lim.rule_db.sel(bits=2)
    np.testing.assert_allclose(rule, 6 * DB_PER_BIT)


def test_bad_input():
    net = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ValueError, match="from 2 to 8"):
        limits(net, bits=[1, 4])
    with pytest.raises(ValueError, match="empty"):
        limits(net, bits=[])
    with pytest.raises(ValueError, match="schemes is empty"):
        limits(net, schemes=[])
    with pytest.raises(ValueError, match="distinct"):
        limits(net, schemes=[qviz.RTN(bits=4, group_size=None), qviz.RTN(bits=8, group_size=None)])


@pytest.mark.slow
def test_minilm_sqnr_falls_monotonically_from_8_to_2_bits(minilm):
    lim = qviz.limits(minilm, bits=range(2, 9), schemes=[qviz.RTN(bits=4, group_size=128)])
    sqnr = lim.sqnr_db.sel(scheme="RTN g128 asym").transpose("layer", "bits").values  # [layer, bits 2..8]
    assert lim.sizes["layer"] == 37
    table = lim.sqnr_db.sel(scheme="RTN g128 asym").to_pandas()
    table.index = [n.replace("encoder.layer.", "") for n in table.index]
    print("\nweight SQNR [dB], RTN g128 asym, minilm\n" + table.round(2).to_string())
    assert (np.diff(sqnr, axis=1) > 0).all(), "SQNR must rise with every added bit on every layer"
    assert (lim.sqnr_db <= lim.shannon_bound_db).all()
