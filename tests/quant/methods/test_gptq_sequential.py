"""Sequential GPTQ block by block (qviz.quant._blockwise): the same model as the per-layer path, for a pass count linear in depth.

The per-layer path (one full calibration pass per layer) stays the fallback; the tests reach it by
hiding the model's blocks (``repeated_blocks`` -> None), which is exactly what a model without
repeated blocks gets.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings

import pytest
import torch
from torch import nn

import qviz
import qviz.quant._blockwise as blockwise
from qviz.models.blocks import repeated_blocks
from qviz.models.tokenizer import ByteTokenizer
from qviz.quant._blockwise import SequentialInputs

#: weights of the two paths agree to this (they are bit-identical on the CPU: same batches, same
#: block arithmetic; the tolerance leaves room for a BLAS that orders a sum differently)
ATOL, RTOL = 1e-6, 1e-5


def random_llama(n_blocks: int, hidden: int = 32) -> qviz.QvizModel:
    import transformers

    torch.manual_seed(0)
    tok = ByteTokenizer()
    config = transformers.LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_blocks,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
    )
    module = transformers.LlamaForCausalLM(config).eval()
    return qviz.QvizModel(module, f"random-llama-{n_blocks}", "decoder", tok, random_weights=True)


@contextlib.contextmanager
def per_layer_path():
    """Run qviz.quantize the old way: every sequential layer captured by its own full pass."""
    original = blockwise.repeated_blocks
    blockwise.repeated_blocks = lambda model: None
    try:
        yield
    finally:
        blockwise.repeated_blocks = original


@contextlib.contextmanager
def count_calls(cls: type):
    """Count the forward calls of every module of type ``cls`` (a global pre-hook, removed on exit)."""
    n = [0]

    def pre(module, args):
        if type(module) is cls:
            n[0] += 1

    handle = torch.nn.modules.module.register_module_forward_pre_hook(pre)
    try:
        yield n
    finally:
        handle.remove()


def quantize_quietly(model, cfg, calib, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few calibration tokens for the widths: GPTQ warns, as both paths do
        return qviz.quantize(model, cfg, calib=calib, progress=False, **kwargs)


def assert_same_model(a, b) -> None:
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=ATOL, rtol=RTOL, msg=lambda m, k=k: f"{k}: {m}")
    ra, rb = a.quantization, b.quantization
    assert list(ra.layers) == list(rb.layers) and ra.skipped == rb.skipped
    for name in ra.layers:  # GPTQ's losses and token counts (RTN layers have none)
        assert ra.layers[name].info == pytest.approx(rb.layers[name].info, rel=1e-4, abs=1e-9)


def digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for key, t in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def n_hooks(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


# --------------------------------------------------------------------------- same model as the per-layer path


@pytest.mark.parametrize("name, cfg, max_rows", [
    ("tiny-llama", qviz.GPTQ(bits=4, group_size=None), 4096),
    ("tiny-gpt2", qviz.GPTQ(bits=3, group_size=32, act_order=False), 300),  # a row sample: the same rows drawn
])
def test_blockwise_equals_per_layer_path_on_random_decoders(name, cfg, max_rows):
    model = qviz.load(name)
    calib = qviz.calibration_data(model, n=20)  # two batches (16 + 4), padded texts: padding rows dropped
    new = quantize_quietly(model, cfg, calib, max_rows=max_rows)
    with per_layer_path():
        old = quantize_quietly(model, cfg, calib, max_rows=max_rows)
    s_new, s_old = new.quantization.extra["sequential"], old.quantization.extra["sequential"]
    assert s_new["mode"] == "blockwise" and s_new["reason"] == "" and s_new["blocks"] == 2
    assert s_new["full_passes"] == 1  # lm_head, outside the blocks
    assert s_old["mode"] == "per-layer" and s_old["full_passes"] == len(old.quantization.layers)
    assert_same_model(new, old)


@pytest.mark.slow
def test_blockwise_equals_per_layer_path_on_minilm(minilm, minilm_calib):
    layers = [n for n in qviz.models.quantizable_layers(minilm) if n.startswith(("encoder.layer.0.", "encoder.layer.1."))]
    layers.append("pooler.dense")  # after the blocks: its own full pass
    cfg = qviz.GPTQ(bits=4, group_size=128)
    new = quantize_quietly(minilm, cfg, minilm_calib[:20], layers=layers)
    with per_layer_path():
        old = quantize_quietly(minilm, cfg, minilm_calib[:20], layers=layers)
    s = new.quantization.extra["sequential"]
    assert (s["mode"], s["blocks"], s["full_passes"], s["stopped_passes"]) == ("blockwise", 6, 1, 1)
    # BERT blocks read q/k/v together, then attention.output, intermediate, output: 4 runs per block, 1 to go on
    assert s["block_calls"] == 2 * (4 * 2 + 1)  # 2 batches; blocks 0 and 1 calibrated, block 0 advanced
    assert_same_model(new, old)


def test_mixed_configs_and_skips_keep_the_per_layer_result():
    model = qviz.load("tiny-llama")
    calib = qviz.calibration_data(model, n=8)
    cfg = {"model.layers.0.self_attn.k_proj": qviz.RTN(bits=4, group_size=None),
           "model.layers.1.mlp.*": None, "*": qviz.GPTQ(bits=4, group_size=None)}
    new = quantize_quietly(model, cfg, calib)
    with per_layer_path():
        old = quantize_quietly(model, cfg, calib)
    assert new.quantization.extra["sequential"]["mode"] == "blockwise"
    assert_same_model(new, old)


# --------------------------------------------------------------------------- passes: linear in depth


@pytest.mark.parametrize("n_blocks", [2, 5])
def test_block_calls_grow_linearly_with_depth(n_blocks):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    model = random_llama(n_blocks)
    calib = qviz.calibration_data(model, n=17)
    n_batches, groups = 2, 4  # 16 + 1 texts; q/k/v, o, gate/up, down
    cfg = qviz.GPTQ(bits=4, group_size=None)
    with count_calls(LlamaDecoderLayer) as calls:
        q = quantize_quietly(model, cfg, calib)
    # one probe forward (n_blocks calls), block 0 reached once per batch (the model stops there),
    # `groups` runs per block and batch plus one to go on to the next block, and lm_head's full pass
    expected = n_blocks + n_batches + n_batches * (groups * n_blocks + n_blocks - 1) + n_batches * n_blocks
    assert calls[0] == expected == n_blocks * (1 + (groups + 2) * n_batches)
    assert q.quantization.extra["sequential"]["block_calls"] == n_batches * (groups * n_blocks + n_blocks - 1)
    if n_blocks == 2:  # the per-layer path, for contrast: every layer a full pass, O(L²) block calls
        with count_calls(LlamaDecoderLayer) as calls_old, per_layer_path():
            quantize_quietly(model, cfg, calib)
        assert calls_old[0] == (7 * n_blocks + 1) * n_blocks * n_batches


def test_cached_inputs_are_the_blocks_inputs_on_the_models_device():
    model = random_llama(2, hidden=48)
    out = model.copy()
    calib = qviz.calibration_data(model, n=20)
    names = list(qviz.models.quantizable_layers(out))[1:]  # without the embedding
    source = SequentialInputs(out, calib, names, names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = source(names[0])  # q_proj of block 0
    tokens = sum(int(b["attention_mask"].sum()) for b in out.batches(calib, 16))
    assert tuple(rows.shape) == (tokens, 48)
    hidden_bytes = sum(e.args[0].numel() * 4 for e in source._entries)  # [batch, tokens, 48] float32 per batch
    mask_bytes = sum(e.args[0].shape[0] * e.args[0].shape[1] ** 2 for e in source._entries)  # [batch, 1, t, t] bool
    assert hidden_bytes + mask_bytes <= source.cached_bytes <= hidden_bytes + mask_bytes + 32 * 1024  # + positions
    assert all(t.device == model.device for e in source._entries for t in blockwise._tensors((e.args, e.kwargs)))


# --------------------------------------------------------------------------- fallbacks


class _Stack(nn.Module):
    """Blocks of Linear + ReLU, run in a chosen order, with optional per-block extra arguments."""

    def __init__(self, order=None, per_block_arg=False, conv=False):
        super().__init__()
        torch.manual_seed(0)
        make = (lambda: nn.Sequential(nn.Conv2d(8, 8, 1))) if conv else (lambda: _Block())
        self.inp = nn.Linear(8, 8)
        self.blocks = nn.ModuleList([make() for _ in range(3)])
        self.head = nn.Linear(8, 4)
        self.order = order or [0, 1, 2]
        self.per_block_arg = per_block_arg
        self.conv = conv

    def forward(self, x):
        h = self.inp(x)
        if self.conv:
            h = h[..., None, None]  # [batch, 8, 1, 1]
        for i in self.order:
            h = self.blocks[i](h) if self.conv else self.blocks[i](h, scale=float(i) if self.per_block_arg else 1.0)
        return self.head(h[..., 0, 0] if self.conv else h)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, h, scale=1.0):
        return h + self.b(torch.relu(self.a(h))) * scale


@pytest.mark.parametrize("net, reason", [
    (nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)), "no repeated blocks"),
    (_Stack(order=[0, 2, 1]), "ran in the order"),
    (_Stack(order=[0, 1, 2, 0]), "ran in the order"),
    (_Stack(per_block_arg=True), "other arguments than block 0"),
    (_Stack(conv=True), "conv2d layer inside a block"),
])
def test_structures_it_cannot_follow_take_the_per_layer_path(net, reason):
    x = torch.randn(64, 8)
    before = digest(net)
    q = quantize_quietly(net, qviz.GPTQ(bits=4, group_size=None), x)
    s = q.quantization.extra["sequential"]
    assert s["mode"] == "per-layer" and reason in s["reason"], s
    assert s["full_passes"] == len(q.quantization.layers)
    with per_layer_path():
        assert_same_model(q, quantize_quietly(net, qviz.GPTQ(bits=4, group_size=None), x))
    assert digest(net) == before and n_hooks(net) == 0


def test_a_stack_it_can_follow_is_blockwise_and_the_same():
    net = _Stack()
    x = torch.randn(40, 8)
    q = quantize_quietly(net, qviz.GPTQ(bits=4, group_size=None), x)
    s = q.quantization.extra["sequential"]
    assert s["mode"] == "blockwise" and s["full_passes"] == 2  # inp before the blocks, head after them
    assert s["block_calls"] == 3 * (2 * 3 + 2)  # 3 batches of 16: a, b of 3 blocks, then 2 runs to go on
    with per_layer_path():
        assert_same_model(q, quantize_quietly(net, qviz.GPTQ(bits=4, group_size=None), x))


def test_repeated_blocks_finds_the_stack_and_nothing_in_a_plain_net(minilm):
    assert repeated_blocks(minilm).name == "encoder.layer" and len(repeated_blocks(minilm)) == 6
    assert repeated_blocks(qviz.load("tiny-gpt2")).name == "transformer.h"
    assert repeated_blocks(nn.Sequential(nn.Linear(2, 2))) is None
    lone = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])  # layers, not blocks of layers
    assert repeated_blocks(nn.Sequential(lone)) is None


# --------------------------------------------------------------------------- hooks, the user's model, Ctrl-C


def test_user_model_untouched_and_no_hook_left():
    model = qviz.load("tiny-llama")
    before = digest(model.module)
    q = quantize_quietly(model, qviz.GPTQ(bits=4, group_size=None), qviz.calibration_data(model, n=4))
    assert digest(model.module) == before
    assert n_hooks(model.module) == 0 and n_hooks(q.module) == 0
    assert torch.nn.modules.module._global_forward_pre_hooks == {}


@pytest.mark.parametrize("at_call", [1, 3, 6])  # in the stopped pass, in a group's run, in a run to the next block
def test_interrupt_inside_a_block_run_leaves_no_hook(at_call):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    model = qviz.load("tiny-llama")
    out = model.copy()
    calib = qviz.calibration_data(model, n=4)
    names = list(qviz.models.quantizable_layers(out))[1:]
    out.module.train()  # to see that the block runs restore the mode
    source = SequentialInputs(out, calib, names, names)
    source._probe()  # the probe's calls are not counted below
    calls = [0]

    def pre(module, args):
        if type(module) is LlamaDecoderLayer:
            calls[0] += 1
            if calls[0] == at_call:
                raise KeyboardInterrupt

    handle = torch.nn.modules.module.register_module_forward_pre_hook(pre)
    try:
        with pytest.raises(KeyboardInterrupt):
            for n in names:  # block 0: q (catch + run), o, gate, down; block 1 needs a run of block 0
                source(n)
    finally:
        handle.remove()
    assert n_hooks(out.module) == 0 and out.module.training
    assert torch.nn.modules.module._global_forward_pre_hooks == {}
    if at_call == 6:  # stopped while going on to block 1: asked again, it starts over from block 0, same rows
        fresh = SequentialInputs(out, calib, names, names)
        for n in names[:7]:
            fresh(n)
        assert torch.equal(source(names[7]), fresh(names[7]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qviz.quantize(model, qviz.GPTQ(bits=4, group_size=None), calib=calib, progress=False)  # the next call works
    assert q.quantization.extra["sequential"]["mode"] == "blockwise"


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_smollm2_first_blocks_blockwise_equal_per_layer():
    model = qviz.load("smollm2-135m")
    calib = qviz.calibration_data(model, n=2)
    layers = [n for n in qviz.models.quantizable_layers(model) if n.startswith(("model.layers.0.", "model.layers.1."))]
    cfg = qviz.GPTQ(bits=4, group_size=64)
    new = quantize_quietly(model, cfg, calib, layers=layers)
    with per_layer_path():
        old = quantize_quietly(model, cfg, calib, layers=layers)
    s = new.quantization.extra["sequential"]
    assert (s["mode"], s["blocks"], s["full_passes"], s["block_calls"]) == ("blockwise", 30, 0, 4 * 2 + 1)
    assert_same_model(new, old)
