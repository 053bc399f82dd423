"""Tests for qviz.evaluate.accuracy: digits, the minilm topic task, decoder perplexity/KL/same-top-1."""

from __future__ import annotations

import math

import pytest
import torch

import qviz
from qviz.evaluate import accuracy as A


def test_decoder_metrics_identity_and_against_quantized():
    m = qviz.load("tiny-llama")
    texts = ["The quick brown fox jumps over the lazy dog.", "Return the value of the attribute."]
    same = A.decoder_metrics(m, m, texts)
    assert same["kl_divergence"] == 0.0 and same["agreement"] == 1.0
    assert same["perplexity"] > 1
    # the byte vocabulary has 259 tokens: a random model is near uniform
    assert same["perplexity"] == pytest.approx(259, rel=0.5)
    q = qviz.quantize(m, qviz.RTN(bits=2, group_size=16), progress=False)
    r = A.decoder_metrics(q, m, texts)
    assert r["kl_divergence"] > 0 and r["agreement"] < 1.0
    # perplexity is exp of the mean NLL: check against a direct computation
    inputs = q.prepare(texts[:1])
    logp = torch.log_softmax(q.run(inputs)[0, :-1].float(), -1)
    nll = -logp.gather(1, inputs["input_ids"][0, 1:, None]).mean()
    assert A.decoder_metrics(q, m, texts[:1])["perplexity"] == pytest.approx(math.exp(float(nll)), rel=1e-5)


def test_task_selection_and_errors():
    m = qviz.load("tiny-gpt2")
    assert isinstance(A.get_task(None, m), A.PerplexityTask)
    with pytest.raises(ValueError, match="Did you mean 'topic'"):
        A.get_task("topik", m)
    with pytest.raises(ValueError, match="needs a model of kind text-encoder"):
        A.get_task("topic", m)
    with pytest.raises(TypeError, match="task must be"):
        A.get_task(3, m)
    with pytest.raises(ValueError, match="positive int"):
        A.TopicTask(n_eval=0)
    with pytest.raises(TypeError, match="non-empty list of strings"):
        A.PerplexityTask(texts="just one string")
    r = A.evaluate(m, A.PerplexityTask(texts=["Some text here."]))
    assert r["agreement"] == 1.0


@pytest.mark.slow
def test_digits_accuracy_and_agreement(digits):
    assert A.digits_accuracy(digits) > 0.9
    t = A.DigitsTask()
    ref = t.reference(digits)
    q = qviz.quantize(digits, qviz.RTN(bits=2, group_size=None), progress=False)
    s = t.score(q, ref)
    assert 0 <= s["accuracy"] <= 1 and s["agreement"] < 1.0
    assert t.score(digits, ref) == {"accuracy": pytest.approx(A.digits_accuracy(digits)), "agreement": 1.0}


@pytest.mark.slow
def test_topic_task_minilm(minilm):
    t = A.TopicTask(n_eval=64, support_per_class=4)
    data = t.data()
    assert len(data["classes"]) >= 10
    # held-out queries never appear among the labelled sentences or the calibration sentences
    calib = set(qviz.calibration_data(minilm, n=256))
    assert not set(data["queries"]) & set(data["support"])
    assert not set(data["support"]) & calib
    ref = t.reference(minilm)
    fp = t.score(minilm, ref)
    chance = 1 / len(data["classes"])
    assert fp["accuracy"] > 5 * chance
    assert fp["agreement"] == 1.0 and fp["embedding_cosine"] == pytest.approx(1.0, abs=1e-5)
    e = A.embed(minilm, data["queries"][:5])
    assert torch.allclose(e, minilm.outputs(data["queries"][:5]), atol=1e-5)
