"""sensitivity and recommend: the exact knapsack, one-layer-at-a-time metrics, predicted vs measured."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import qviz
from qviz.measure.sensitivity import choose_configs


def brute_force(cost, size, budget):
    best = (np.inf, None)
    for combo in itertools.product(*[range(cost.shape[1])] * cost.shape[0]):
        idx = np.arange(cost.shape[0]), np.array(combo)
        if size[idx].sum() <= budget and cost[idx].sum() < best[0]:
            best = (cost[idx].sum(), combo)
    return best


@settings(max_examples=80, deadline=None)
@given(
    n_layers=st.integers(1, 5),
    n_opts=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    slack=st.floats(0.0, 1.0),
)
def test_knapsack_is_exact(n_layers, n_opts, seed, slack):
    rng = np.random.default_rng(seed)
    cost = rng.random((n_layers, n_opts)).round(3)
    size = rng.integers(1, 20, (n_layers, n_opts)).astype(float)
    lo, hi = size.min(1).sum(), size.max(1).sum()
    budget = lo + slack * (hi - lo)
    want, _ = brute_force(cost, size, budget)
    choice, total_cost, total_size = choose_configs(cost, size, budget)
    assert total_cost == pytest.approx(want)
    rows = np.arange(n_layers)
    assert total_size <= budget and cost[rows, choice].sum() == pytest.approx(total_cost)
    assert size[rows, choice].sum() == pytest.approx(total_size)


def test_knapsack_infeasible_and_nan():
    with pytest.raises(ValueError, match="infeasible"):
        choose_configs(np.zeros((2, 2)), np.full((2, 2), 10.0), budget=5.0)
    choice, _, _ = choose_configs(np.array([[np.nan, 1.0]]), np.array([[1.0, 2.0]]), budget=5.0)
    assert choice.tolist() == [1]


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))


CFGS = [qviz.RTN(bits=8, group_size=32), qviz.RTN(bits=3, group_size=32), qviz.RTN(bits=2, group_size=32)]


def test_sensitivity_is_one_layer_at_a_time(mlp):
    x, ev = torch.randn(32, 32), torch.randn(64, 32)
    sens = qviz.sensitivity(mlp, CFGS, calib=x, eval_data=ev)
    assert dict(sens.sizes) == {"layer": 3, "config": 3} and sens.attrs["metric"] == "output_rel_err"
    with torch.no_grad():
        ref = mlp(ev)
        q = qviz.quantize(mlp, CFGS[2], layers="2", progress=False)
        out = q.module(ev)
    want = float(((out - ref) ** 2).sum() / (ref**2).sum())
    assert float(sens.sensitivity.sel(layer="2", config=CFGS[2].label)) == pytest.approx(want, rel=1e-6)
    s = sens.sensitivity
    assert (s.sel(config=CFGS[0].label) < s.sel(config=CFGS[1].label)).all()
    assert (s.sel(config=CFGS[1].label) < s.sel(config=CFGS[2].label)).all()
    assert sens["nbytes"].sel(layer="0", config=CFGS[0].label) == 64 * 32 + 64 * 3


def test_recommend_respects_budget_and_measures(mlp):
    x, ev = torch.randn(32, 32), torch.randn(64, 32)
    sens = qviz.sensitivity(mlp, CFGS, calib=x, eval_data=ev)
    qm, rec = qviz.recommend(mlp, CFGS, calib=x, budget_bits_per_weight=4.0, eval_data=ev, sens=sens)
    assert float(rec.achieved_bits_per_weight) <= 4.0
    assert float(rec.predicted) == pytest.approx(float(rec.sensitivity.sum()))
    assert float(rec.measured) > 0 and rec.attrs["metric"] == "output_rel_err"
    assert qm.quantization.layers["0"].config == str(rec.assignment.sel(layer="0").values)
    # a budget that fits 8 bits everywhere picks 8 bits everywhere
    _, loose = qviz.recommend(mlp, CFGS, calib=x, budget_bits_per_weight=9.0, eval_data=ev, sens=sens)
    assert set(loose.assignment.values) == {CFGS[0].label}
    with pytest.raises(ValueError, match="smallest config per layer already needs 2.750"):
        qviz.recommend(mlp, CFGS, calib=x, budget_bits_per_weight=1.5, eval_data=ev, sens=sens)
    with pytest.raises(ValueError, match="positive number"):
        qviz.recommend(mlp, CFGS, calib=x, budget_bits_per_weight=-1, eval_data=ev)
    with pytest.raises(ValueError, match="has no results for"):
        qviz.recommend(mlp, [qviz.RTN(bits=4, group_size=32)], calib=x, budget_bits_per_weight=4, eval_data=ev, sens=sens)


def test_classifier_accuracy_drop(digits, digits_calib):
    x, y = qviz.eval_data(digits)
    sens = qviz.sensitivity(digits, [qviz.RTN(bits=2, group_size=None)], calib=digits_calib, layers=["fc1", "fc2"])
    assert sens.attrs["metric"] == "accuracy_drop" and 0.8 < sens.attrs["baseline"] <= 1.0
    with torch.no_grad():
        q = qviz.quantize(digits, qviz.RTN(bits=2, group_size=None), layers="fc2", progress=False)
        acc = float((q.outputs(x).argmax(-1) == y).float().mean())
    assert float(sens.sensitivity.sel(layer="fc2", config="RTN w2 ch asym")) == pytest.approx(sens.attrs["baseline"] - acc, abs=1e-6)
    with pytest.raises(ValueError, match="needs labels"):
        qviz.sensitivity(digits, [qviz.RTN(bits=2, group_size=None)], calib=digits_calib, eval_data=x)


def test_decoder_kl():
    model = qviz.load("tiny-gpt2")
    texts = qviz.calibration_data(model, n=8)
    sens = qviz.sensitivity(model, [qviz.RTN(bits=8, group_size=None), qviz.RTN(bits=2, group_size=None)],
                            calib=texts, layers="transformer.h.0.*", eval_data=texts)
    assert sens.attrs["metric"] == "next_token_kl" and sens.sensitivity.attrs["units"] == "nat"
    s = sens.sensitivity
    assert (s >= 0).all() and (s.sel(config="RTN w2 ch asym") > s.sel(config="RTN w8 ch asym")).all()


@pytest.mark.slow
def test_text_encoder_cosine(minilm, minilm_calib):
    sens = qviz.sensitivity(minilm, [qviz.RTN(bits=2, group_size=128)], calib=minilm_calib,
                            layers=["encoder.layer.0.attention.self.query", "encoder.layer.5.output.dense"],
                            eval_data=minilm_calib[:8])
    assert sens.attrs["metric"] == "embedding_cosine_drop"
    assert ((sens.sensitivity > 0) & (sens.sensitivity < 0.5)).all()
