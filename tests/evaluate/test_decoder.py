"""llama.cpp-style decoder quality (qviz.evaluate.decoder) on the random-weight tiny-llama."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import qviz
from qviz.data import token_batches
from qviz.evaluate.decoder import METRIC_ATTRS, decoder_quality, reference_log_probs

TEXT = ["The quick brown fox jumps over the lazy dog, and then it runs far away into the quiet woods."]


@pytest.fixture(scope="module")
def tiny():
    return qviz.load("tiny-llama")


@pytest.fixture(scope="module")
def data(tiny):
    return token_batches(tiny, TEXT, seq_len=32)


@pytest.fixture(scope="module")
def quantized(tiny):
    return qviz.quantize(tiny, qviz.RTN(bits=3, group_size=16), progress=False)


def _by_hand(model, ref_model, ids):
    """Every statistic from per-token values written out directly (llama.cpp's formulas)."""
    first = ids.shape[1] // 2
    with torch.no_grad():
        lp = torch.log_softmax(model.run({"input_ids": ids}).double(), -1)[:, first:-1]
        lr = torch.log_softmax(ref_model.run({"input_ids": ids}).double(), -1)[:, first:-1]
    tg = ids[:, first + 1 :]
    nll = -lp.gather(-1, tg[..., None])[..., 0].flatten().numpy()
    nll_r = -lr.gather(-1, tg[..., None])[..., 0].flatten().numpy()
    kl = (lr.exp() * (lr - lp)).sum(-1).flatten().numpy()
    dp = np.exp(-nll) - np.exp(-nll_r)
    n = nll.size

    def se(x):
        return math.sqrt((np.mean(x**2) - np.mean(x) ** 2) / (n - 1))

    ppl = math.exp(nll.mean())
    return {
        "n": n, "perplexity": ppl, "perplexity_stderr": ppl * se(nll), "kl": kl.mean(), "kl_se": se(kl),
        "kl_median": np.median(kl), "kl_p99": np.percentile(kl, 99), "kl_max": kl.max(),
        "dp_mean": dp.mean(), "dp_p01": np.percentile(dp, 1), "dp_p99": np.percentile(dp, 99),
        "ratio": math.exp(nll.mean() - nll_r.mean()),
        "same": float((lp.argmax(-1) == lr.argmax(-1)).double().mean()),
    }


def test_identical_model_scores_zero(tiny, data):
    r = decoder_quality(tiny, tiny, data)
    assert r["kl_divergence"] == 0.0 and r["kl_divergence_max"] < 1e-5
    assert r["agreement"] == 1.0 and r["perplexity_ratio"] == pytest.approx(1.0)
    assert r["delta_p_mean"] == pytest.approx(0.0, abs=1e-7)
    assert set(METRIC_ATTRS) == {k for k in r if k in METRIC_ATTRS} == set(r)


def test_matches_the_formulas(tiny, data, quantized):
    ref = reference_log_probs(tiny, data, batch_size=2)
    r = decoder_quality(quantized, ref)
    h = _by_hand(quantized, tiny, data["input_ids"])
    assert r["n_scored_tokens"] == h["n"] == data["input_ids"].shape[0] * 15
    assert r["perplexity"] == pytest.approx(h["perplexity"], rel=1e-4)
    assert r["perplexity_stderr"] == pytest.approx(h["perplexity_stderr"], rel=1e-3)
    assert r["perplexity_ratio"] == pytest.approx(h["ratio"], rel=1e-4)
    assert r["kl_divergence"] == pytest.approx(h["kl"], rel=1e-3, abs=1e-6)
    assert r["kl_divergence_stderr"] == pytest.approx(h["kl_se"], rel=1e-2)
    assert r["kl_divergence_median"] == pytest.approx(h["kl_median"], rel=1e-3, abs=1e-6)
    assert r["kl_divergence_p99"] == pytest.approx(h["kl_p99"], rel=1e-3, abs=1e-6)
    assert r["kl_divergence_max"] == pytest.approx(h["kl_max"], rel=1e-3)
    assert r["delta_p_mean"] == pytest.approx(h["dp_mean"], abs=1e-6)
    assert r["delta_p_p01"] == pytest.approx(h["dp_p01"], abs=1e-6)
    assert r["delta_p_p99"] == pytest.approx(h["dp_p99"], abs=1e-6)
    assert r["agreement"] == pytest.approx(h["same"])
    assert r["kl_divergence"] > 0 and r["kl_divergence_max"] >= r["kl_divergence_p99"] >= r["kl_divergence_median"]


def test_spilled_reference_gives_the_same_numbers(tmp_path, tiny, data, quantized):
    mem = decoder_quality(quantized, reference_log_probs(tiny, data, spill_to=False))
    path = tmp_path / "ref.npy"
    spilled = reference_log_probs(tiny, data, spill_to=path)
    assert isinstance(spilled.log_probs, np.memmap) and path.is_file()
    disk = decoder_quality(quantized, spilled, per_token=True)
    assert disk["kl_per_token"].shape == (disk["n_scored_tokens"],)
    for k, v in mem.items():
        assert disk[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    assert reference_log_probs(tiny, data, spill_to=True).path.is_file()


def test_bad_inputs(tiny, data):
    with pytest.raises(TypeError, match="needs token batches"):
        reference_log_probs(tiny, ["some text"])
    with pytest.raises(ValueError, match="no padding"):
        reference_log_probs(tiny, {**data, "attention_mask": torch.zeros_like(data["input_ids"])})
    with pytest.raises(ValueError, match="at least 3 tokens"):
        reference_log_probs(tiny, {"input_ids": data["input_ids"][:, :2]})
    with pytest.raises(ValueError, match="Pass data="):
        decoder_quality(tiny, tiny)
    with pytest.raises(TypeError, match="ReferenceLogProbs or a decoder"):
        decoder_quality(tiny, "fp32")
    ref = reference_log_probs(tiny, data)
    with pytest.raises(ValueError, match="not the text the reference"):
        decoder_quality(tiny, ref, {"input_ids": data["input_ids"].flip(0)})
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        decoder_quality(tiny, ref, batch_size=0)
    with pytest.raises(ValueError, match="needs a decoder"):
        decoder_quality(qviz.load(torch.nn.Linear(2, 2)), ref)


def test_compare_reports_the_decoder_variables(tiny):
    from qviz.evaluate.accuracy import PerplexityTask

    cmp = qviz.compare(tiny, [qviz.RTN(bits=2, group_size=16)], task=PerplexityTask(texts=TEXT, seq_len=32),
                       metrics=["accuracy"], progress=False, prompts=["Hi", "Bye"], max_new_tokens=3)
    for v in ("perplexity", "perplexity_stderr", "kl_divergence", "kl_divergence_p99", "kl_divergence_max",
              "delta_p_mean", "delta_p_p01", "delta_p_p99", "agreement", "perplexity_ratio"):
        assert "long_name" in cmp[v].attrs and "units" in cmp[v].attrs, v
    assert float(cmp.kl_divergence.sel(config="fp32")) == 0.0
    assert float(cmp.kl_divergence.isel(config=1)) > 0
    assert cmp.answer.dims == ("config", "prompt") and list(cmp.prompt.values) == ["Hi", "Bye"]
    assert (cmp.first_divergence.sel(config="fp32") == -1).all()
    assert cmp.attrs["reference"] == "reference: the model's own float32 weights"
