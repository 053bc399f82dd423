"""qviz.GGUF: the config, the registered method, llama-quantize's mixes, imatrix, and every driver."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qviz
from kernels_numba.gguf import dequantize_gguf, quantize_gguf
from qviz.quant.registry import config_from_json
from qviz.quant.gguf_mix import tensor_role, tensor_types, use_more_bits


def net256(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))


@pytest.fixture(scope="module")
def tiny():
    model = qviz.load("tiny-llama")
    return model, qviz.calibration_data(model, n=8)


def test_config_validation_and_labels():
    assert qviz.GGUF("q4_k_m") == qviz.GGUF("Q4_K_M")
    assert qviz.GGUF("Q4_K_M").is_mix and not qviz.GGUF("Q4_K").is_mix and not qviz.GGUF("Q4_0", pure=True).is_mix
    assert qviz.GGUF("Q4_K_M").base_type == "Q4_K" and qviz.GGUF("Q2_K").weight_bits == 2
    with pytest.raises(ValueError, match=r"Unknown GGUF type 'Q4_KM'\. Did you mean 'Q4_K_M'"):
        qviz.GGUF("Q4_KM")
    with pytest.raises(ValueError, match="imatrix must be True or False"):
        qviz.GGUF("Q8_0", imatrix=1)
    cfg = qviz.GGUF("Q2_K", imatrix=True)
    assert config_from_json(cfg.to_json()) == cfg


def test_quantize_tensor_is_the_kernel_format():
    w = torch.randn(16, 512)
    for name, bpw in (("Q8_0", 8.5), ("Q4_K", 4.5), ("Q6_K", 6.5625), ("Q4_1", 5.0)):
        qt = qviz.quantize_tensor(w, qviz.GGUF(name))
        assert qt.bits_per_weight == bpw
        want = dequantize_gguf(quantize_gguf(w.numpy(), name), name, 512)
        np.testing.assert_array_equal(qt.dequantize().numpy(), want)
        np.testing.assert_array_equal(qviz.fake_quantize(w.numpy(), qviz.GGUF(name)), want)
        from qviz.quant.registry import method_for

        assert method_for(qviz.GGUF(name)).storage_nbytes((16, 512), qviz.GGUF(name)) == qt.nbytes
    with pytest.raises(ValueError, match="Q4_K stores blocks of 256"):
        qviz.quantize_tensor(torch.randn(4, 96), qviz.GGUF("Q4_K"))


def test_quantize_keeps_packed_bytes_and_records_refusals():
    net = net256()
    before = [p.detach().clone() for p in net.parameters()]
    q = qviz.quantize(net, qviz.GGUF("Q4_K"), progress=False)
    rec = q.quantization
    assert list(rec.layers) == ["0"] and rec.layers["0"].bits_per_weight == 4.5
    assert "Q4_K needs rows that are a multiple of 256" in rec.skipped["2"]
    assert "64 % 256 = 64" in rec.skipped["2"]
    mod = q.module.get_submodule("0")
    assert mod.gguf_type == "Q4_K" and mod.gguf_packed.shape == (64, 144)
    np.testing.assert_array_equal(dequantize_gguf(mod.gguf_packed, "Q4_K", 256), mod.weight.detach().numpy())
    for p, b in zip(net.parameters(), before):
        assert torch.equal(p, b)  # the user's model is untouched


def test_mix_rules_match_llama_quantize():
    n = 32
    names = {}
    for i in range(n):
        for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            names[f"model.layers.{i}.{part}"] = 4096 if part != "mlp.down_proj" else 11008
    names["lm_head"] = 4096
    t = tensor_types(names, "Q4_K_M")
    assert t["lm_head"][0] == "Q6_K"
    more = [i for i in range(n) if use_more_bits(i, n)]
    assert more == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    for i in range(n):
        want = "Q6_K" if i in more else "Q4_K"
        assert t[f"model.layers.{i}.self_attn.v_proj"][0] == want
        assert t[f"model.layers.{i}.mlp.down_proj"][0] == want
        assert t[f"model.layers.{i}.self_attn.q_proj"][0] == "Q4_K"
    q2 = tensor_types(names, "Q2_K")
    assert (q2["model.layers.5.self_attn.v_proj"][0], q2["model.layers.5.mlp.down_proj"][0],
            q2["model.layers.5.self_attn.o_proj"][0], q2["model.layers.5.mlp.up_proj"][0]) == ("Q3_K",) * 3 + ("Q2_K",)
    assert tensor_types(names, "Q2_K", n_gqa=4)["model.layers.5.self_attn.v_proj"][0] == "Q4_K"
    q3 = tensor_types(names, "Q3_K_M")
    assert [q3[f"model.layers.{i}.self_attn.v_proj"][0] for i in (0, 1, 2)] == ["Q5_K", "Q5_K", "Q4_K"]
    assert [q3[f"model.layers.{i}.mlp.down_proj"][0] for i in (0, 1, 2)] == ["Q5_K", "Q5_K", "Q4_K"]
    ks = tensor_types(names, "Q4_K_S")
    assert [ks[f"model.layers.{i}.self_attn.v_proj"][0] for i in (3, 4)] == ["Q5_K", "Q4_K"]
    assert tensor_types(names, "Q8_0")["lm_head"][0] == "Q8_0"
    assert tensor_types(names, "Q4_0")["lm_head"][0] == "Q6_K"
    assert tensor_types(names, "Q4_0", has_imatrix=True)["model.layers.0.mlp.down_proj"][0] == "Q4_1"
    # llama.cpp's fallbacks when the row does not divide into 256
    fb = tensor_types({"model.layers.0.self_attn.q_proj": 96, "model.layers.0.mlp.down_proj": 40}, "Q4_K_M")
    assert fb["model.layers.0.self_attn.q_proj"][0] == "Q5_0" and fb["model.layers.0.mlp.down_proj"][0] is None
    assert tensor_role("transformer.h.3.mlp.c_proj") == "ffn_down"
    assert tensor_role("encoder.layer.0.attention.output.dense") == "attn_output"
    assert tensor_role("encoder.layer.0.output.dense") == "ffn_down"


def smollm2_rows():
    """Row lengths of SmolLM2-135M's matrices (30 blocks, hidden 576, FFN 1536, 3 KV heads of 64)."""
    cols = {}
    for i in range(30):
        p = f"model.layers.{i}."
        cols.update({p + "self_attn.q_proj": 576, p + "self_attn.k_proj": 576, p + "self_attn.v_proj": 576,
                     p + "self_attn.o_proj": 576, p + "mlp.gate_proj": 576, p + "mlp.up_proj": 576,
                     p + "mlp.down_proj": 1536})
    cols["lm_head"] = 576
    return cols


# llama-quantize's tensor_type_fallback (src/llama-quant.cpp): the 32-weight type a K type becomes
LLAMA_CPP_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


@pytest.mark.parametrize("file_type", ["Q2_K", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K"])
def test_k_types_fall_back_on_576_wide_rows_as_llama_quantize_does(file_type):
    cols = smollm2_rows()
    got = tensor_types(cols, file_type, n_gqa=3)
    wanted = tensor_types({n: 1536 for n in cols}, file_type, n_gqa=3)  # the same rules on rows 256 divides
    for name, (t, why) in got.items():
        want = wanted[name][0]
        if name == "lm_head":  # llama.cpp: an output whose row the default type does not divide is Q8_0
            assert (t, why) == ("Q8_0", f"output in {file_type}: Q8_0")
        elif cols[name] % 256 and want in LLAMA_CPP_FALLBACK:
            assert t == LLAMA_CPP_FALLBACK[want], name
            assert why == f"row of 576 not divisible by 256: {want} falls back to {t}"
        else:
            assert t == want, name
    assert {got[n][0] for n in cols if n.endswith("down_proj")} <= {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}


def test_mix_on_a_model(tiny):
    model, calib = tiny
    q = qviz.quantize(model, qviz.GGUF("Q4_K_M"), calib=calib, progress=False)
    kinds = {k: q.module.get_submodule(k).gguf_type for k in q.quantization.layers}
    # rows of 64 cannot take Q4_K: llama.cpp's fallback is Q5_0; the more-bits attn_v (Q6_K) falls back to Q8_0
    assert kinds["model.layers.0.self_attn.q_proj"] == "Q5_0"
    assert kinds["model.layers.1.self_attn.v_proj"] == "Q8_0" and kinds["lm_head"] == "Q8_0"
    assert "not a multiple of 32" in q.quantization.skipped["model.layers.0.mlp.down_proj"]
    why = q.quantization.extra["GGUF Q4_K_M"]["types"]  # the record names each fallback with its reason
    assert why["model.layers.0.self_attn.q_proj"] == "Q5_0: row of 64 not divisible by 256: Q4_K falls back to Q5_0"
    assert why["model.layers.1.self_attn.v_proj"] == "Q8_0: row of 64 not divisible by 256: Q6_K falls back to Q8_0"
    assert "model.layers.0.mlp.down_proj" not in why  # left in full precision: in .skipped, with its reason


def tied_tiny_llama():
    """tiny-llama with its output head tied to the token embedding, as SmolLM2's is."""
    model = qviz.load("tiny-llama")
    model.module.lm_head.weight = model.module.model.embed_tokens.weight
    model.module.config.tie_word_embeddings = True
    return model


@pytest.mark.parametrize("cfg", [qviz.GGUF("Q8_0"), qviz.GGUF("Q4_K_M"), qviz.GGUF("Q4_0", pure=True)])
def test_a_tied_embedding_is_stored_once_in_the_heads_type(cfg):
    model = tied_tiny_llama()
    embed = model.module.model.embed_tokens.weight
    before = embed.detach().clone()
    q = qviz.quantize(model, cfg, progress=False)
    rec, root = q.quantization, q.module
    head = root.lm_head
    # llama.cpp stores the pair once (token_embd, in the head's type) and looks the input rows up in it
    assert root.model.embed_tokens.weight is head.weight
    assert rec.extra[cfg.label]["tied"] == {"lm_head": ["model.embed_tokens.weight"]}
    np.testing.assert_array_equal(head.weight.detach().numpy(), dequantize_gguf(head.gguf_packed, head.gguf_type, 64))
    ids = torch.tensor([[256, 104, 105]])
    assert torch.equal(root.model.embed_tokens(ids), head.weight[ids])
    # the bytes: the same model with the head left out keeps the tie, and its embedding in float32, once
    kept = qviz.quantize(model, cfg, skip="lm_head", progress=False).quantization
    assert kept.extra[cfg.label]["tied"] == {}
    fp32_embedding = embed.numel() * 4
    assert rec.total_bytes == kept.total_bytes - fp32_embedding + rec.layers["lm_head"].nbytes
    assert model.module.lm_head.weight is embed and torch.equal(embed, before)  # the user's model: untouched, tied


def test_an_untied_embedding_is_counted_at_its_dtype(tiny):
    model, _ = tiny
    q = qviz.quantize(model, qviz.GGUF("Q8_0"), progress=False)
    rec, root = q.quantization, q.module
    assert root.model.embed_tokens.weight is not root.lm_head.weight and rec.extra["GGUF Q8_0"]["tied"] == {}
    kept = qviz.quantize(model, qviz.GGUF("Q8_0"), skip="lm_head", progress=False).quantization
    head_fp32 = root.lm_head.weight.numel() * 4
    assert rec.total_bytes == kept.total_bytes - head_fp32 + rec.layers["lm_head"].nbytes


def test_imatrix_comes_from_capture_and_changes_the_codes(tiny):
    model, calib = tiny
    plain = qviz.quantize(model, qviz.GGUF("Q4_0", pure=True), progress=False)
    with pytest.raises(ValueError, match="calibration"):
        qviz.quantize(model, qviz.GGUF("Q4_0", imatrix=True), progress=False)
    weighted = qviz.quantize(model, qviz.GGUF("Q4_0", pure=True, imatrix=True), calib=calib, progress=False)
    name = "model.layers.0.self_attn.q_proj"
    a, b = plain.module.get_submodule(name).gguf_packed, weighted.module.get_submodule(name).gguf_packed
    assert not np.array_equal(a, b)
    stats = qviz.capture(model, calib, layers=[name], progress=False)
    imat = (stats["std"] ** 2 + stats["mean"] ** 2).sel(layer=name).values[:64].astype(np.float32)
    w = model.module.get_submodule(name).weight.detach().numpy()
    np.testing.assert_array_equal(b, quantize_gguf(w, "Q4_0", imat))


def test_every_driver_takes_gguf(tiny):
    model, calib = tiny
    cfgs = [qviz.GGUF("Q8_0"), qviz.GGUF("Q4_0")]
    err = qviz.layer_error(model, cfgs, calib=calib)
    rel = err.output_rel_err.drop_sel(layer="lm_head")  # lm_head: Q8_0 in both (Q4_0 files put output in Q6_K,
    assert (rel.sel(config="GGUF Q8_0") < rel.sel(config="GGUF Q4_0")).all()  # which falls back to Q8_0 here)
    assert err.output_rel_err.sel(layer="lm_head", config="GGUF Q4_0") == err.output_rel_err.sel(
        layer="lm_head", config="GGUF Q8_0")
    assert float(err.bits_per_weight.sel(config="GGUF Q8_0").max()) == 8.5
    sens = qviz.sensitivity(model, cfgs, calib=calib, layers="model.layers.0.self_attn.*")
    assert np.isfinite(sens.sensitivity.values).all()
    q, rec = qviz.recommend(model, cfgs, calib, 6.0, layers="model.layers.0.self_attn.*", sens=sens)
    assert 4.5 <= q.quantization.bits_per_weight <= 6.0
    cmp = qviz.compare(model, cfgs, metrics=["accuracy", "size"], progress=False)
    assert list(cmp.config.values) == ["fp32", "GGUF Q8_0", "GGUF Q4_0"]
    assert round(qviz.project_size(70e9, qviz.GGUF("Q8_0")) / 1e9, 2) == 74.38
    bits = qviz.evaluate.size.format_bits(qviz.GGUF("Q4_K_M")).total_bits
    assert 4.5 < bits < 5.0  # Q4_K plus llama-quantize's Q6_K tensors, on Llama-2-70B's shapes


def test_explorer_menu_has_gguf():
    from qviz.widgets._lab import LayerLab, available_methods, make_config

    assert "GGUF" in available_methods()
    assert make_config("GGUF", bits=6) == qviz.GGUF("Q6_K")
    with pytest.raises(ValueError, match="no 7-bit type"):
        make_config("GGUF", bits=7)
    lab = LayerLab(net256(), torch.randn(32, 256))
    res = lab.quantize("0", make_config("GGUF", bits=4))
    assert res.bits_per_weight == 4.5 and res.weight_sqnr_db > 15
    with pytest.raises(ValueError, match="cannot quantize 2: Q4_K needs rows"):
        lab.quantize("2", make_config("GGUF", bits=4))
