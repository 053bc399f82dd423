"""OutlierExplorer's "model" toggle: original / after rotation / after smoothing."""

from __future__ import annotations

import torch

import qviz
from qviz.widgets.outliers import transform_views


def small_llama() -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_toggle_switches_the_statistics():
    batch = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(0))
    ex = qviz.widgets.OutlierExplorer(small_llama(), batch, layers="*down_proj", debounce=0)
    assert list(ex.transform_toggle.options) == ["original", "after rotation", "after smoothing"]
    before = ex.stats.outlier_ratio.values.copy()
    ex.transform_toggle.value = "after rotation"
    ex.flush()
    assert ex.last_error is None
    assert (ex.stats.outlier_ratio.values < before).all()  # the online Hadamard flattens down_proj's input
    ex.transform_toggle.value = "after smoothing"
    ex.flush()
    assert ex.stats.sizes["layer"] == len(before)
    ex.transform_toggle.value = "original"
    ex.flush()
    assert (ex.stats.outlier_ratio.values == before).all()


def test_views_offered():
    assert transform_views(None, None) == ["original"]
    assert transform_views(qviz.load(torch.nn.Linear(4, 4)), torch.randn(2, 4)) == ["original", "after smoothing"]
