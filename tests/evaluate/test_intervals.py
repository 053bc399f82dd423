"""Intervals against values worked out independently (scipy's Wilson interval, Newcombe's published example)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from qviz.evaluate import intervals as I


def _wilson_by_hand(k: int, n: int, z: float = I.Z95) -> tuple[float, float]:
    """The textbook formula, written out once more without numpy."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@pytest.mark.parametrize("k,n", [(3, 4), (0, 10), (10, 10), (81, 263), (15, 148), (1, 29), (200, 359)])
def test_wilson_matches_scipy_and_the_formula(k, n):
    stats = pytest.importorskip("scipy.stats")
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    p, low, high = I.wilson(k, n)
    assert p == k / n
    assert low == pytest.approx(ref.low, abs=1e-12) and high == pytest.approx(ref.high, abs=1e-12)
    assert (low, high) == pytest.approx(_wilson_by_hand(k, n), abs=1e-12)


def test_wilson_edges_and_arrays():
    assert I.wilson(0, 7)[1] == 0.0 and I.wilson(7, 7)[2] == 1.0
    p, low, high = I.wilson(np.array([1, 2, 3]), 10)
    assert p.shape == low.shape == high.shape == (3,)
    assert np.all(low < p) and np.all(p < high)
    assert all(math.isnan(v) for v in I.wilson(0, 0))


def test_wilson_narrows_with_n():
    widths = [I.wilson(n // 2, n)[2] - I.wilson(n // 2, n)[1] for n in (4, 16, 64, 256)]
    assert widths == sorted(widths, reverse=True)
    # about 1/sqrt(n): quadrupling n halves the width
    assert widths[2] / widths[3] == pytest.approx(2, rel=0.05)


@pytest.mark.parametrize("k,n", [(5, 3), (-1, 4), (1.5, 4)])
def test_wilson_rejects_bad_counts(k, n):
    with pytest.raises(ValueError, match="k must be a whole number"):
        I.wilson(k, n)


def test_wilson_rejects_bad_n_and_z():
    with pytest.raises(ValueError, match="n must be a count"):
        I.wilson(1, 2.5)
    with pytest.raises(ValueError, match="z must be a positive number"):
        I.wilson(1, 2, z=0)


def test_newcombe_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 - 48/80, method 10
    d, low, high = I.rate_difference(56, 70, 48, 80)
    assert d == pytest.approx(0.2)
    assert low == pytest.approx(0.0524, abs=5e-5) and high == pytest.approx(0.3339, abs=5e-5)
    # example (c): 9/10 - 3/10, and (e): 5/56 - 0/29, whose interval crosses 0
    d, low, high = I.rate_difference(9, 10, 3, 10)
    assert low == pytest.approx(0.1705, abs=5e-5) and high == pytest.approx(0.8090, abs=5e-5)
    d, low, high = I.rate_difference(5, 56, 0, 29)
    assert low == pytest.approx(-0.0381, abs=5e-5) and high == pytest.approx(0.1926, abs=5e-5)


def test_mean_interval_by_hand():
    r = I.mean_interval([1.0, 2.0, 3.0, 4.0])
    se = math.sqrt(((1.5**2 + 0.5**2) * 2) / 3) / 2
    assert r["stderr"] == pytest.approx(se)
    assert (r["low"], r["high"]) == pytest.approx((2.5 - I.Z95 * se, 2.5 + I.Z95 * se))
    assert math.isnan(I.mean_interval([3.0])["stderr"])
    with pytest.raises(ValueError, match="no values"):
        I.mean_interval([])
    with pytest.raises(ValueError, match="NaN or Inf"):
        I.mean_interval([1.0, float("nan")])


def test_bootstrap_agrees_with_the_standard_error_on_normal_data():
    x = np.random.default_rng(1).normal(3.0, 2.0, size=400)
    b, m = I.bootstrap_mean(x, n_boot=4000, seed=0), I.mean_interval(x)
    assert b["low"] == pytest.approx(m["low"], abs=0.04) and b["high"] == pytest.approx(m["high"], abs=0.04)
    assert I.bootstrap_mean(x, seed=5) == I.bootstrap_mean(x, seed=5)
    with pytest.raises(ValueError, match="n_boot"):
        I.bootstrap_mean(x, n_boot=10)
    with pytest.raises(ValueError, match="level"):
        I.bootstrap_mean(x, level=95)


def test_describe():
    assert I.describe(*I.wilson(3, 4), 4) == "0.750 [0.301, 0.954] (n=4)"
    assert I.describe(float("nan"), 0, 0, 0) == "—"


def _cmp():
    return xr.Dataset(
        {
            "accuracy": ("config", [0.9, 0.88, 0.5]),
            "accuracy_n": ("config", [200, 200, 200]),
            "attack_success_rate": (("config", "eps"), [[0.0, 0.2], [0.0, 0.25], [np.nan, 0.9]]),
            "attack_n": ("config", [50, 40, 0]),
        },
        coords={"config": ["fp32", "w4", "w2"], "eps": [0.0, 0.1]},
    )


def test_annotate_adds_intervals_and_the_noise_verdict():
    cmp = _cmp()
    out = I.annotate(cmp)
    assert "accuracy_low" not in cmp  # the input is not changed
    _, low, high = I.wilson(176, 200)
    assert float(out.accuracy_low.sel(config="w4")) == pytest.approx(low)
    assert float(out.accuracy_high.sel(config="w4")) == pytest.approx(high)
    assert not bool(out.accuracy_exceeds_noise.sel(config="w4"))  # 0.88 vs 0.90 on 200: noise
    assert bool(out.accuracy_exceeds_noise.sel(config="w2"))
    assert not bool(out.accuracy_exceeds_noise.sel(config="fp32"))
    assert out.attack_success_rate_low.dims == ("config", "eps")
    _, low, _ = I.wilson(10, 40)
    assert float(out.attack_success_rate_low.sel(config="w4", eps=0.1)) == pytest.approx(low)
    assert np.isnan(out.attack_success_rate_low.sel(config="w2")).all()  # no sample: no interval
    assert out.accuracy_low.attrs["units"] == "fraction" and "Wilson" in out.accuracy_low.attrs["long_name"]


def test_annotate_without_counts_or_baseline():
    cmp = _cmp().drop_vars(["attack_n"])
    out = I.annotate(cmp)
    assert "attack_success_rate_low" not in out and "accuracy_low" in out
    out = I.annotate(_cmp().assign_coords(config=["a", "b", "c"]))
    assert "accuracy_low" in out and "accuracy_exceeds_noise" not in out
    with pytest.raises(ValueError, match="'config' dim"):
        I.annotate(xr.Dataset({"accuracy": ("x", [1.0])}))


@pytest.mark.slow
def test_compare_carries_sample_sizes_and_intervals():
    import qviz

    m = qviz.load("digits-cnn")
    cmp = qviz.compare(m, [qviz.RTN(bits=2, group_size=None)], eps=[0.0, 0.1], n_attack=32, attack_steps=2,
                       metrics=["accuracy", "robustness"], progress=False)
    n = int(cmp.accuracy_n.sel(config="fp32"))
    assert n == len(qviz.eval_data(m)[1])
    k = round(float(cmp.accuracy.sel(config="fp32")) * n)
    assert float(cmp.accuracy_low.sel(config="fp32")) == pytest.approx(I.wilson(k, n)[1])
    assert 0 < int(cmp.attack_n.sel(config="fp32")) <= 32
    assert (cmp.attack_success_rate_low <= cmp.attack_success_rate).all()
    assert (cmp.attack_success_rate <= cmp.attack_success_rate_high).all()
    assert cmp.accuracy_exceeds_noise.dtype == bool
