"""Model-level helpers: which layers share an input, whether a scale folds upstream, activation maxima."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qviz
from qviz.quant.methods._model import clone_model, find_input_groups, fold_scale_, input_absmax


def test_fold_scale_keeps_the_function_for_norm_and_linear_predecessors():
    torch.manual_seed(0)
    for pred in (nn.LayerNorm(6), nn.Linear(5, 6)):
        net = nn.Sequential(pred, nn.Linear(6, 3))
        x = torch.randn(4, 6 if isinstance(pred, nn.LayerNorm) else 5)
        before = net(x).detach()
        with torch.no_grad():
            fold_scale_(net[0], [net[1]], torch.linspace(0.5, 3.0, 6))
        assert torch.allclose(net(x), before, atol=1e-5)
    with pytest.raises(TypeError, match="no per-channel weight"):
        fold_scale_(nn.ReLU(), [nn.Linear(2, 2)], torch.ones(2))


def test_input_absmax_ignores_padding_tokens():
    m = qviz.load("tiny-llama")
    texts = ["a", "a much longer sentence so the first one is padded"]
    name = "model.layers.0.self_attn.q_proj"
    both = input_absmax(m, texts, [name])[name]
    alone = torch.maximum(input_absmax(m, texts[:1], [name])[name], input_absmax(m, texts[1:], [name])[name])
    assert torch.allclose(both, alone, rtol=1e-4)


class _Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.spare = nn.Linear(2, 2), nn.Linear(2, 2)

    def forward(self, x):
        return self.used(x)


def test_layer_that_never_runs_is_named():
    with pytest.raises(ValueError, match=r"never reached layer\(s\) \['spare'\]"):
        input_absmax(qviz.load(_Unused()), torch.ones(1, 2), ["used", "spare"])


@pytest.mark.parametrize("name,folds", [
    ("tiny-gpt2", {("transformer.h.0.attn.c_attn",): "transformer.h.0.ln_1"}),
    ("tiny-llama", {("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                     "model.layers.0.self_attn.v_proj"): "model.layers.0.input_layernorm",
                    ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"): "model.layers.0.post_attention_layernorm"}),
])
def test_groups_of_pre_norm_decoders(name, folds):
    m = qviz.load(name)
    names = [n for n, mod in qviz.models.quantizable_layers(m).items() if qviz.models.layer_type(mod) == "linear"]
    groups = {tuple(g.layers): g for g in find_input_groups(m, names, qviz.calibration_data(m, 2))}
    for layers, pred in folds.items():
        assert groups[layers].foldable and groups[layers].predecessor == pred
    assert not any(g.foldable for g in groups.values() if g.layers[0].endswith(("o_proj", "down_proj", "c_proj")))


def test_model_is_restored_after_the_fold_check():
    m = qviz.load("tiny-llama")
    before = {k: v.clone() for k, v in m.module.state_dict().items()}
    find_input_groups(m, ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj"], qviz.calibration_data(m, 2))
    assert all(torch.equal(before[k], v) for k, v in m.module.state_dict().items())
    assert not m.module._forward_hooks and all(not s._forward_hooks for s in m.module.modules())
    c = clone_model(m)
    assert c.module is not m.module and all(
        a.data_ptr() != b.data_ptr() for a, b in zip(c.module.parameters(), m.module.parameters(), strict=True))


@pytest.mark.slow
def test_bert_blocks_are_not_foldable_because_of_the_residual(minilm):
    names = ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key",
             "encoder.layer.0.attention.self.value", "encoder.layer.0.intermediate.dense"]
    groups = find_input_groups(minilm, names, ["a short probe sentence"])
    assert [g.layers for g in groups] == [names[:3], names[3:]]
    assert [g.predecessor for g in groups] == ["embeddings.LayerNorm", "encoder.layer.0.attention.output.LayerNorm"]
    assert not any(g.foldable for g in groups) and all("residual" in g.reason for g in groups)
