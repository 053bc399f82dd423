"""Tests for qviz.compare: the cmp Dataset on digits-cnn and a decoder, bad input, the dask path."""

from __future__ import annotations

import numpy as np
import pytest

import qviz


@pytest.fixture(scope="module")
def cmp_digits(digits):
    return qviz.compare(
        digits, [qviz.RTN(bits=4, group_size=None), qviz.RTN(bits=2, group_size=None)],
        eps=[0.0, 0.05, 0.15], n_attack=48, attack_steps=3, progress=False,
    )


@pytest.mark.slow
def test_cmp_dataset_contract(cmp_digits):
    cmp = cmp_digits
    assert list(cmp.config.values) == ["fp32", "RTN w4 ch asym", "RTN w2 ch asym"]
    for var in ("accuracy", "agreement", "size_bytes", "bits_per_weight", "latency_ms", "throughput",
                "usd_per_1m", "attack_success_rate"):
        assert var in cmp, var
        assert cmp[var].attrs.get("long_name") and "units" in cmp[var].attrs, var
    assert cmp.attack_success_rate.dims == ("config", "attack", "eps")
    assert cmp.eps.attrs["units"].startswith("L∞")
    fp = cmp.sel(config="fp32")
    assert float(fp.agreement) == 1.0 and float(fp.bits_per_weight) == 32.0
    assert fp.kernel_class.item() == "full precision"
    # sizes shrink with bits, and bits per weight include the per-row scale
    sizes = cmp.size_bytes.values
    assert sizes[0] > sizes[1] > sizes[2]
    assert 4 < float(cmp.bits_per_weight.sel(config="RTN w4 ch asym")) < 4.2
    # eps = 0 flips nothing; success grows with eps
    asr = cmp.attack_success_rate
    assert (asr.sel(eps=0.0) == 0).all()
    assert (asr.sel(eps=0.15) >= asr.sel(eps=0.05) - 1e-9).all()
    # the transfer attack on fp32 is the white-box PGD on fp32
    np.testing.assert_allclose(
        asr.sel(config="fp32", attack="PGD L∞ transfer from fp32"), asr.sel(config="fp32", attack="PGD L∞ white-box (STE)")
    )
    assert cmp.kernel.sel(config="RTN w4 ch asym").item().startswith("real kernel for 2/4 layers")
    assert cmp.error_amplification.dims == ("config", "layer")
    assert cmp.fits.dims == ("config", "hardware")


@pytest.mark.slow
def test_cmp_roundtrips_netcdf(cmp_digits, tmp_path):
    path = qviz.save(cmp_digits, tmp_path / "cmp.nc")
    back = qviz.open_dataset(path)
    np.testing.assert_allclose(back.accuracy.values, cmp_digits.accuracy.values)
    assert list(back.kernel.values) == list(cmp_digits.kernel.values)


def test_compare_decoder_accuracy_and_size_only():
    m = qviz.load("tiny-llama")
    cmp = qviz.compare(m, [qviz.RTN(bits=4, group_size=16), qviz.BnbNF4()], task=qviz.evaluate.accuracy.PerplexityTask(n=4),
                       metrics=["accuracy", "size"], progress=False)
    assert {"perplexity", "kl_divergence", "accuracy", "agreement"} <= set(cmp.data_vars)
    assert float(cmp.kl_divergence.sel(config="fp32")) == 0.0
    assert (cmp.kl_divergence.values[1:] > 0).all()
    assert "latency_ms" not in cmp and "attack_success_rate" not in cmp
    assert np.isfinite(cmp.serialized_bytes.sel(config="bnb nf4 b64"))


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"metrics": ["accuracy", "speed"]}, ValueError, "Unknown metric 'speed'"),
        ({"metrics": ["acuracy"]}, ValueError, "Did you mean 'accuracy'"),
        ({"eps": [0.1, -0.05]}, ValueError, "eps must be >= 0"),
        ({"eps": [float("inf")]}, ValueError, "finite"),
        ({"attack_steps": 0}, ValueError, "attack_steps"),
        ({"task": "perplexty"}, ValueError, "Did you mean 'perplexity'"),
    ],
)
def test_compare_bad_arguments(kwargs, err, match):
    m = qviz.load("tiny-gpt2")
    with pytest.raises(err, match=match):
        qviz.compare(m, [qviz.RTN(bits=4, group_size=32)], progress=False, **kwargs)


def test_compare_bad_configs():
    m = qviz.load("tiny-gpt2")
    with pytest.raises(TypeError, match="Known configs"):
        qviz.compare(m, [qviz.RTN], progress=False)
    with pytest.raises(ValueError, match="repeated"):
        qviz.compare(m, [qviz.RTN(bits=4, group_size=32), qviz.RTN(bits=4, group_size=32)], progress=False)
    with pytest.raises(TypeError, match="list of quantization configs"):
        qviz.compare(m, "RTN", progress=False)


def test_compare_on_a_dask_client_equals_local():
    distributed = pytest.importorskip("distributed")
    m = qviz.load("tiny-llama")
    args = dict(task=qviz.evaluate.accuracy.PerplexityTask(n=4), metrics=["accuracy", "size"], progress=False)
    local = qviz.compare(m, [qviz.RTN(bits=3, group_size=16)], **args)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        remote = qviz.compare(m, [qviz.RTN(bits=3, group_size=16)], client=client, **args)
    np.testing.assert_allclose(remote.perplexity.values, local.perplexity.values, rtol=1e-6)
    np.testing.assert_array_equal(remote.size_bytes.values, local.size_bytes.values)


@pytest.mark.slow
def test_compare_text_robustness_on_minilm():
    """The text-attack path (embedding PGD, HotFlip, error amplification) end to end on the real encoder:
    ``qviz report --model minilm`` runs it, and the robustness split once left it calling a name that had moved."""
    cmp = qviz.compare(qviz.load("minilm"), [qviz.RTN(bits=8, group_size=None)], metrics=["robustness"],
                       eps=[0.0, 0.5], n_attack=4, attack_steps=2, progress=False)
    assert "attack_success_rate" in cmp and "error_amplification" in cmp
    assert np.isfinite(cmp["error_amplification"].values).all()
