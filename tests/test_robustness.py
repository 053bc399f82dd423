"""Tests for qviz.robustness: FGSM/PGD (checked against torchattacks), STE, text attacks, amplification."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import qviz
from qviz import robustness as R


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 5)).eval()


@pytest.fixture(scope="module")
def small():
    net = _net()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(32, 1, 4, 4, generator=gen)
    y = net(x).argmax(-1).detach()
    return net, x, y


def _dynamic_int8(module: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)


# --------------------------------------------------------------------------- FGSM / PGD


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_ball_and_range(small, norm):
    net, x, y = small
    eps = 0.1 if norm == "linf" else 0.5
    x_adv = R.pgd(net, x, y, eps=eps, steps=5, norm=norm, random_start=True, seed=3)
    d = (x_adv - x).flatten(1)
    size = d.abs().max(1).values if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (size > 0).any()


def test_pgd_raises_loss_and_does_not_touch_inputs(small):
    net, x, y = small
    x_before = x.clone()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x_adv = R.pgd(net, x, y, eps=0.2, steps=10)
    ce = nn.functional.cross_entropy
    assert float(ce(net(x_adv), y)) > float(ce(net(x), y))
    assert torch.equal(x, x_before)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())


def test_pgd_eps_zero_is_identity_and_per_example_eps(small):
    net, x, y = small
    assert torch.equal(R.pgd(net, x, y, eps=0.0, steps=3), x)
    eps = torch.linspace(0, 0.2, len(x))
    d = (R.pgd(net, x, y, eps=eps, steps=3) - x).abs().flatten(1).max(1).values
    assert (d <= eps + 1e-6).all()
    assert d[0] == 0


def test_fgsm_is_one_signed_step(small):
    net, x, y = small
    x_mid = torch.full_like(x, 0.5)
    x_adv = R.fgsm(net, x_mid, y, eps=0.05)
    moved = (x_adv - x_mid).abs()
    assert torch.allclose(moved[moved > 0], torch.tensor(0.05), atol=1e-6)
    xg = x_mid.clone().requires_grad_(True)
    nn.functional.cross_entropy(net(xg), y, reduction="sum").backward()
    assert torch.equal(torch.sign(x_adv - x_mid), torch.sign(xg.grad))


def test_success_rate_counts_flips_of_correct_inputs(small):
    net, x, y = small
    assert R.success_rate(net, x, x, y) == 0.0
    wrong = (y + 1) % 5
    assert np.isnan(R.success_rate(net, x, x, wrong))
    x_adv = R.pgd(net, x, y, eps=1.0, steps=20)
    assert R.success_rate(net, x, x_adv, y) > 0.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eps": -0.1}, "eps must be >= 0"),
        ({"eps": float("nan")}, "finite"),
        ({"eps": 0.1, "norm": "l1"}, "norm must be one of"),
        ({"eps": 0.1, "steps": 0}, "steps must be a positive int"),
        ({"eps": 0.1, "alpha": -1.0}, "alpha must be >= 0"),
        ({"eps": 0.1, "clamp": (1, 0)}, "low < high"),
    ],
)
def test_pgd_bad_arguments(small, kwargs, match):
    net, x, y = small
    with pytest.raises(ValueError, match=match):
        R.pgd(net, x, y, **kwargs)


def test_bad_batches(small):
    net, x, y = small
    with pytest.raises(TypeError, match="floating-point tensor"):
        R.fgsm(net, x.long(), y, eps=0.1)
    with pytest.raises(ValueError, match="shape"):
        R.fgsm(net, x, y[:3], eps=0.1)
    with pytest.raises(TypeError, match="qviz model"):
        R.fgsm("digits-cnn", x, y, eps=0.1)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        R.fgsm(net, x, y, eps=-1)


# --------------------------------------------------------------------------- gradients of quantized models


def test_attack_on_model_without_gradients_is_a_clear_error(small):
    net, x, y = small
    qnet = _dynamic_int8(net)
    with pytest.raises(ValueError, match="no gradient with respect to its input.*ste=True"):
        R.pgd(qnet, x, y, eps=0.1, steps=2, ste=False)

    class Frozen(nn.Module):
        def forward(self, inp):
            with torch.no_grad():
                return net(inp)

    with pytest.raises(ValueError, match="no gradient.*transfer attack"):
        R.fgsm(Frozen(), x, y, eps=0.1)


def test_straight_through_keeps_forward_and_gives_float_gradient(small):
    net, x, y = small
    qnet = _dynamic_int8(net)
    st = R.straight_through(qnet, reference=net)
    assert type(qnet[3]).__module__.startswith("torch.ao")  # the original is untouched
    assert st.module is not qnet
    with torch.no_grad():
        assert torch.allclose(st.module(x), qnet(x), atol=1e-5)
    # the backward is the float network with the dequantized weight
    w_hat = qnet[3].weight().dequantize()
    ref = _net()
    with torch.no_grad():
        ref[3].weight.copy_(w_hat)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    st.forward(xa).sum().backward()
    ref(xb).sum().backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-5)
    x_adv = R.pgd(qnet, x, y, eps=0.3, steps=5)
    assert R.success_rate(qnet, x, x_adv, y) > 0


def test_dequantized_weight_known_types():
    lin = nn.Linear(8, 4)
    assert torch.equal(R.dequantized_weight(lin), lin.weight.detach())
    q = _dynamic_int8(nn.Sequential(lin))[0]
    assert (R.dequantized_weight(q) - lin.weight).abs().max() < 0.02
    with pytest.raises(TypeError, match="dequantized weight"):
        R.dequantized_weight(nn.ReLU())


@pytest.mark.slow
def test_straight_through_bitsandbytes_int8():
    import bitsandbytes as bnb

    torch.manual_seed(0)
    lin = nn.Linear(64, 16)
    q = bnb.nn.Linear8bitLt(64, 16, has_fp16_weights=False, threshold=0.0)
    q.load_state_dict(lin.state_dict())
    q = q.to("cpu")
    assert (R.dequantized_weight(q) - lin.weight).abs().max() < 0.01
    x = torch.randn(4, 64)
    with torch.no_grad():
        q(x.half())  # the first forward moves the row scales into q.state
    assert (R.dequantized_weight(q) - lin.weight).abs().max() < 0.01
    y = torch.zeros(4, dtype=torch.long)
    x_adv = R.pgd(nn.Sequential(q), x, y, eps=0.1, steps=2, clamp=None)
    assert (x_adv - x).abs().max() > 0


# --------------------------------------------------------------------------- torchattacks cross-check


@pytest.fixture(scope="module")
def digits_xy(digits):
    x, y = qviz.eval_data(digits, n=96)
    return digits, x, y


@pytest.mark.slow
def test_pgd_linf_agrees_with_torchattacks(digits_xy):
    """Same model, inputs, eps=0.1, alpha=0.01, 10 steps, no random start: identical within 1e-5."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits_xy
    ours = R.pgd(model, x, y, eps=0.1, alpha=0.01, steps=10)
    theirs = torchattacks.PGD(model.module, eps=0.1, alpha=0.01, steps=10, random_start=False)(x, y)
    assert (ours - theirs).abs().max() <= 1e-5
    assert R.success_rate(model, x, ours, y) == R.success_rate(model, x, theirs, y)


@pytest.mark.slow
def test_pgd_l2_agrees_with_torchattacks(digits_xy):
    """L2, eps=1, alpha=0.2, 10 steps: identical within 1e-5 per element.

    torchattacks averages the loss over the batch and adds 1e-10 to the gradient
    norm; qviz's per-example gradient equals torchattacks' on a batch of one, so
    torchattacks runs one input at a time here.
    """
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits_xy
    x, y = x[:24], y[:24]
    ours = R.pgd(model, x, y, eps=1.0, alpha=0.2, steps=10, norm="l2")
    atk = torchattacks.PGDL2(model.module, eps=1.0, alpha=0.2, steps=10, random_start=False)
    theirs = torch.cat([atk(x[i : i + 1], y[i : i + 1]) for i in range(len(x))])
    assert (ours - theirs).abs().max() <= 1e-5


@pytest.mark.slow
def test_error_amplification_digits(digits_xy):
    model, x, y = digits_xy
    x_adv = R.pgd(model, x, y, eps=0.1, steps=5)
    ds = R.error_amplification(model, x, x_adv)
    assert list(ds.layer.values) == ["conv1", "conv2", "fc1", "fc2"]
    assert (ds.amplification > 0).all()
    assert ds.amplification.attrs["long_name"]
    # the first layer is linear: its ratio is bounded by the conv operator norm
    w = model.module.conv1.weight.detach().reshape(16, -1)
    assert float(ds.amplification.sel(layer="conv1")) <= float(torch.linalg.matrix_norm(w, 2)) * 9 + 1e-4
    with pytest.raises(ValueError, match="zero"):
        R.error_amplification(model, x, x)


def test_error_amplification_tiny_exact():
    lin = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(2 * torch.eye(3))
    x = torch.rand(5, 3)
    ds = R.error_amplification(lin, x, x + 0.1)
    assert float(ds.amplification.sel(layer="")) == pytest.approx(2.0, rel=1e-5)
    with pytest.raises(TypeError, match="continuous inputs"):
        R.error_amplification(lin, {"input_ids": torch.zeros(1, 2)}, {"input_ids": torch.zeros(1, 2)})


# --------------------------------------------------------------------------- text attacks on minilm


@pytest.fixture(scope="module")
def minilm_task(minilm):
    """Near-duplicate retrieval: each query is a held-out sentence without its last word; the index the full sentences."""
    texts, _ = qviz.eval_data(minilm, n=12)
    queries = [" ".join(s.split()[:-1]) for s in texts]
    index = minilm.outputs(texts)
    return minilm, queries, index, torch.arange(len(queries))


@pytest.mark.slow
def test_embedding_pgd_flips_retrieval_and_respects_eps(minilm_task):
    model, queries, index, targets = minilm_task
    out = R.embedding_pgd(model, queries, index, targets, eps=[0.0] * 6 + [8.0] * 6, steps=3)
    norms = out["delta"].flatten(1).norm(dim=1)
    assert (norms[:6] == 0).all() and (norms[6:] <= 8.0 + 1e-4).all()
    big = {k: v[6:] for k, v in out["inputs"].items()}
    clean = {k: v[6:] for k, v in out["clean"].items()}
    assert R.retrieval_success_rate(model, clean, big, index, targets[6:]) > 0
    small_in = {k: v[:6] for k, v in out["inputs"].items()}
    small_clean = {k: v[:6] for k, v in out["clean"].items()}
    assert R.retrieval_success_rate(model, small_clean, small_in, index, targets[:6]) == 0.0
    # transfer: reuse the crafted delta on another copy
    again = R.embedding_pgd(model.copy(), queries, index, targets, eps=8.0, delta=out["delta"])
    assert torch.allclose(again["inputs"]["inputs_embeds"], out["inputs"]["inputs_embeds"], atol=1e-6)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        R.embedding_pgd(model, queries, index, targets, eps=-1.0)
    with pytest.raises(ValueError, match="text encoder"):
        R.embedding_pgd(qviz.load("tiny-gpt2"), queries, index, targets, eps=1.0)


@pytest.mark.slow
def test_token_substitution_changes_only_real_tokens(minilm_task):
    model, queries, index, targets = minilm_task
    out = R.token_substitution(model, queries[:6], index, targets[:6], max_tokens=2)
    ids0 = model.prepare(queries[:6])["input_ids"]
    changed = (out["input_ids"][-1] != ids0).sum(1)
    assert (changed <= 2).all()
    assert out["input_ids"][-1][:, 0].eq(ids0[:, 0]).all()  # [CLS] untouched
    assert out["success"].shape == (2,)
    assert (out["success"][1] >= out["success"][0]) or torch.isnan(out["success"][0])
    with pytest.raises(ValueError, match="max_tokens"):
        R.token_substitution(model, queries, index, targets, max_tokens=0)


@pytest.mark.slow
def test_error_amplification_minilm_embeddings(minilm_task):
    model, queries, index, targets = minilm_task
    out = R.embedding_pgd(model, queries[:4], index, targets[:4], eps=0.5, steps=1)
    clean = out["clean"]
    e0 = out["inputs"]["inputs_embeds"] - out["delta"]
    ds = R.error_amplification(model, {"inputs_embeds": e0, "attention_mask": clean["attention_mask"]}, out["inputs"])
    from qviz.models import layer_type, quantizable_layers

    linear = [n for n, m in quantizable_layers(model).items() if layer_type(m) == "linear"]
    assert list(ds.layer.values) == linear  # the Linear layers; embedding lookups take no part
    assert not any("embeddings" in str(n) for n in ds.layer.values)
    assert np.isfinite(ds.amplification.values).all() and (ds.amplification.values > 0).all()
