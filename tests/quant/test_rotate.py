"""Hadamard rotations: exactness in float32, the architectures they fold, outliers spread, qviz.Rotated."""

from __future__ import annotations

import re

import pytest
import torch
import transformers

import qviz
from qviz.quant.registry import config_from_json
from qviz.quant.rotate import hadamard_matrix, random_hadamard


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def random_llama(hidden, inter, heads, kv, tie, outlier=None, spread=None) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=2,
                                   num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=tie)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # non-trivial norm scales, so the folding is exercised
                p.uniform_(0.5, 1.5)
        if outlier is not None:  # a massive-activation channel in the residual stream
            model.model.embed_tokens.weight[:, outlier] = 6.0
        if spread is not None:  # heavy-tailed channel scales (lognormal), as trained residual streams have
            g = torch.Generator().manual_seed(0)
            model.model.embed_tokens.weight.mul_(torch.exp(torch.randn(hidden, generator=g) * spread))
    return model


@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 24, 44, 48, 64, 176, 576, 1536])
def test_hadamard_matrices(n):
    h = hadamard_matrix(n)
    assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64)) and set(h.unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("n", [36, 64, 100])
def test_rotation_is_orthogonal_with_or_without_a_hadamard(n):
    q, kind = random_hadamard(n, torch.Generator().manual_seed(1))
    torch.testing.assert_close(q @ q.T, torch.eye(n, dtype=torch.float64))
    assert kind.startswith("randomized Hadamard" if hadamard_matrix(n) is not None else "random orthogonal")


@pytest.mark.parametrize(("hidden", "inter", "heads", "kv", "tie"), [
    (64, 128, 4, 2, True),      # powers of two, tied lm_head
    (48, 80, 4, 4, False),      # Paley sizes: 48 = 4 * 12, 80 = 4 * 20, head_dim 12
    (36, 100, 3, 1, True),      # no Hadamard matrix: random orthogonal fallback, head_dim 12
])
def test_rotated_model_output_is_unchanged(hidden, inter, heads, kv, tie):
    model = random_llama(hidden, inter, heads, kv, tie)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rot = qviz.rotate(model)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel(rot(ids).logits, model(ids).logits) <= 1e-5
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    assert model.lm_head.weight is model.model.embed_tokens.weight or not tie
    assert rot.lm_head.weight is not rot.model.embed_tokens.weight
    assert type(rot.model.layers[0].mlp).__name__ == "RotatedMLP"


def test_tiny_llama_and_refusals():
    model = qviz.load("tiny-llama")
    rot = qviz.rotate(model)
    ids = torch.tensor([[2, 70, 71, 72, 33, 9]])
    with torch.no_grad():
        assert rel(rot.module(ids).logits, model.module(ids).logits) <= 1e-5
    assert rot.rotation["online_down_proj"] == "randomized Hadamard 176"
    with pytest.raises(ValueError, match="cannot fold GPT2LMHeadModel .architecture 'gpt2'.*LayerNorm"):
        qviz.rotate("tiny-gpt2")
    with pytest.raises(ValueError, match="cannot fold Sequential"):
        qviz.rotate(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_rotation_spreads_an_outlier_channel():
    model = random_llama(64, 128, 4, 2, False, outlier=5)
    ids = torch.randint(0, 96, (8, 16), generator=torch.Generator().manual_seed(1))
    layers = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.gate_proj"]
    before = qviz.capture(model, ids, layers=layers, progress=False).outlier_ratio
    after = qviz.capture(qviz.rotate(model), ids, layers=layers, progress=False).outlier_ratio
    assert bool((before > 20).all()) and bool((after * 5 < before).all())


def test_rotated_config_quantizes_on_the_rotated_copy():
    model = qviz.load(random_llama(64, 128, 4, 2, False, spread=1.2), kind="module")
    calib = torch.randint(0, 96, (8, 16), generator=torch.Generator().manual_seed(2))
    naive = qviz.RTN(bits=8, group_size=None, symmetric=True, act_bits=4)
    cfgs = [naive, qviz.Rotated(naive), qviz.Rotated(qviz.HQQ(bits=4, group_size=32), act_bits=8, act_type="fp")]
    err = qviz.layer_error(model, cfgs, calib=calib, layers="*_proj")
    by = err.output_rel_err.mean("layer")
    assert float(by.sel(config="Rot+" + naive.label)) * 3 < float(by.sel(config=naive.label))
    q = qviz.quantize(model, cfgs[2], calib=calib, progress=False)
    assert type(q.module.model.layers[0].mlp).__name__ == "RotatedMLP"
    assert q.quantization.layers["model.layers.0.mlp.down_proj"].bits_per_weight == 4 + 32 / 32
    assert q.quantization.extra[cfgs[2].label]["rotation"]["residual"] == "randomized Hadamard 64"
    assert q.rotation == q.quantization.extra[cfgs[2].label]["rotation"]
    for cfg in cfgs[1:]:
        assert config_from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="Both Rotated and its inner config"):
        qviz.Rotated(naive, act_bits=8)
    with pytest.raises(TypeError, match="Rotated wraps one weight config"):
        qviz.Rotated(qviz.Rotated())


def test_weights_are_folded_and_rotated_in_float64_and_rounded_once():
    model = random_llama(64, 128, 4, 2, True)
    rot = qviz.rotate(model, seed=3)
    gen = torch.Generator().manual_seed(3)  # rotate's draws, in its order: residual, value heads, down_proj
    q, _ = random_hadamard(64, gen)
    h_head, _ = random_hadamard(16, gen)
    h_ff, _ = random_hadamard(128, gen)
    layer, rlayer = model.model.layers[1], rot.model.layers[1]
    g_in = layer.input_layernorm.weight.double()
    w_q = layer.self_attn.q_proj.weight.double()
    assert torch.equal(rlayer.self_attn.q_proj.weight, ((w_q * g_in) @ q).float())
    w_v = layer.self_attn.v_proj.weight.double()
    v_rot = torch.block_diag(*[h_head] * 2)
    assert torch.equal(rlayer.self_attn.v_proj.weight, (v_rot.T @ ((w_v * g_in) @ q)).float())
    w_down = layer.mlp.down_proj.weight.double()
    assert torch.equal(rlayer.mlp.down_proj.weight, ((q.T @ w_down) @ h_ff).float())
    head = model.lm_head.weight.double() * model.model.norm.weight.double()
    assert torch.equal(rot.lm_head.weight, (head @ q).float())
    assert torch.equal(rot.model.norm.weight, torch.ones(64))
    assert rot.rotation["untied_bytes"] == 96 * 64 * 4 and "QuaRot and SpinQuant untie" in rot.rotation["untied_lm_head"]


def test_online_hadamard_signs_scale_and_dtypes():
    from qviz.quant.rotate import OnlineHadamard

    h, _ = random_hadamard(176, torch.Generator().manual_seed(0))
    mod = OnlineHadamard(h)
    assert set(mod.matrix.unique().tolist()) == {-1.0, 1.0} and mod.scale == pytest.approx(176 ** -0.5, rel=1e-15)
    x = torch.randn(64, 176, dtype=torch.float64)
    exact = x @ h
    assert rel(mod(x.float()).double(), exact) < 1e-6  # float32: the n-term sums' rounding
    assert rel(mod.double()(x), exact) < 1e-14  # a float64 model stays float64
    assert mod(x.half()).dtype == torch.float16 and rel(mod.half()(x.half()).double(), exact) < 2e-3
    q, _ = random_hadamard(36, torch.Generator().manual_seed(0))  # no Hadamard of order 36: held as is
    assert OnlineHadamard(q).scale == 1.0 and torch.equal(OnlineHadamard(q).matrix, q.float())


def test_a_float64_model_rotates_and_runs_in_float64():
    model = random_llama(48, 80, 4, 4, False).double()
    rot = qviz.rotate(model)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = rot(ids).logits
        assert out.dtype == torch.float64 and rot.lm_head.weight.dtype == torch.float64
        # transformers' eager attention takes its softmax in float32, so float32 rounding is the floor here
        assert rel(out, model(ids).logits) <= 1e-6


def test_head_dim_without_a_hadamard_matrix_uses_a_random_orthogonal_one_and_says_so():
    model = random_llama(72, 100, 2, 2, False)  # head_dim 36, MLP width 100: no Hadamard matrix of either order
    rot = qviz.rotate(model)
    assert rot.rotation["value_heads"].startswith("random orthogonal 36 (no Hadamard matrix of order 36")
    assert rot.rotation["online_down_proj"].startswith("random orthogonal 100")
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel(rot(ids).logits, model(ids).logits) <= 1e-5


def test_one_online_hadamard_is_shared_and_stored_once():
    from qviz.evaluate.size import serialized_size

    model = random_llama(64, 128, 4, 2, True)
    rot = qviz.rotate(model)
    mods = {id(layer.mlp.online_hadamard) for layer in rot.model.layers}
    assert len(mods) == 1
    grown = serialized_size(rot)["payload_bytes"] - serialized_size(model)["payload_bytes"]
    assert grown == rot.rotation["untied_bytes"] + 128 * 128 * 4  # the untied lm_head and one ±1 matrix
    from qviz.evaluate.size import model_size

    assert model_size(rot)["total_bytes"] - model_size(model)["total_bytes"] == grown
    ids = torch.randint(0, 96, (4, 12), generator=torch.Generator().manual_seed(0))
    cfg = qviz.RTN(bits=8, group_size=None)
    plain = qviz.quantize(qviz.load(model, kind="module"), cfg, calib=ids, progress=False)
    rotated = qviz.quantize(qviz.load(model, kind="module"), qviz.Rotated(cfg), calib=ids, progress=False)
    # quantizing unties lm_head either way (it gets codes, the embedding keeps its floats): the rotation adds H alone
    assert model_size(rotated)["total_bytes"] - model_size(plain)["total_bytes"] == 128 * 128 * 4


@pytest.mark.parametrize(("fixture", "match"), [
    ("minilm", r"qviz.rotate cannot fold BertModel \(architecture 'bert'\).*LayerNorm subtracts the mean"),
    ("digits", r"qviz.rotate cannot fold DigitsCNN \(architecture None\): it rotates Llama-family decoders"),
])
def test_models_it_cannot_fold_are_refused_by_name(fixture, match, request):
    from qviz.quant.rotate import why_not_rotatable

    model = request.getfixturevalue(fixture)
    calib = request.getfixturevalue(f"{fixture}_calib")
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        qviz.rotate(model)
    with pytest.raises(ValueError, match=match):  # the config refuses the same way, nothing half-applied
        qviz.quantize(model, qviz.Rotated(qviz.RTN(bits=8, group_size=None)), calib=calib, progress=False)
    assert re.search(match, why_not_rotatable(model))
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())


def test_rotated_inner_format_refuses_rows_its_block_does_not_divide():
    model = random_llama(64, 80, 4, 2, False)  # down_proj rows of 80: not a multiple of MX's 32
    ids = torch.randint(0, 96, (4, 12), generator=torch.Generator().manual_seed(0))
    q = qviz.quantize(model, qviz.Rotated(qviz.MXFP4()), calib=ids, progress=False)
    why = q.quantization.skipped["model.layers.0.mlp.down_proj"]
    assert why.startswith("MXFP4 scales blocks of 32") and "row length 80 is not a multiple of 32" in why
    assert "model.layers.0.self_attn.q_proj" in q.quantization.layers
