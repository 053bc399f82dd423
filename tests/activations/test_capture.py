"""capture(): statistics equal to numpy on the raw activations, bounded memory, hooks cleaned up."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

import qviz
from qviz.activations.moments import HostMoments, accumulator


def _reference(x: np.ndarray) -> dict[str, np.ndarray]:
    """Plain numpy statistics of x [rows, channels]."""
    mean = x.mean(0)
    var = x.var(0)
    return {
        "min": x.min(0), "max": x.max(0), "absmax": np.abs(x).max(0), "mean": mean,
        "std": np.sqrt(var), "kurtosis": ((x - mean) ** 4).mean(0) / var**2,
    }


@pytest.mark.parametrize("splits", [[300], [1, 299], [100, 100, 100], [7, 250, 43]])
def test_streaming_stats_equal_numpy(splits):
    rng = np.random.default_rng(0)
    x = rng.standard_t(4, size=(sum(splits), 24)).astype(np.float32) * rng.uniform(0.1, 50, size=24).astype(np.float32) + 3
    acc = HostMoments(24, 16, -6, 4)
    start = 0
    for n in splits:
        acc.update(torch.from_numpy(x[start : start + n]))
        start += n
    got, ref = acc.finalize(), _reference(x.astype(np.float64))
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=2e-5, atol=1e-6, err_msg=key)
    assert got["hist"].sum() == x.size
    assert (got["count"] == x.shape[0]).all()
    # histogram bin of each value, computed independently
    edges = np.linspace(-6, 4, 17)
    idx = np.clip(np.searchsorted(edges, np.log10(np.abs(x[:, 0]).astype(np.float64)), side="right") - 1, 0, 15)
    np.testing.assert_array_equal(got["hist"][0], np.bincount(idx, minlength=16))


def test_nonfinite_values_are_counted_not_crashed_on():
    x = torch.randn(50, 3)
    x[3, 0] = float("nan")
    x[7, 1] = float("inf")
    acc = HostMoments(3, 8, -6, 4)
    acc.update(x)
    out = acc.finalize()
    assert acc.n_nonfinite == 2
    assert out["count"].tolist() == [49, 49, 50]
    clean = x[:, 0][torch.isfinite(x[:, 0])].double().numpy()
    np.testing.assert_allclose(out["mean"][0], clean.mean(), rtol=1e-5)  # float64 sums, no reassociation
    assert np.isfinite(out["absmax"]).all()


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.LayerNorm(12), nn.Linear(12, 3))


def _state_hash(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode() + v.detach().numpy().tobytes())
    return h.hexdigest()


def test_capture_small_mlp_against_manual_hooks():
    net = _mlp()
    x = torch.randn(40, 6) * torch.tensor([1, 1, 1, 1, 1, 20.0])
    before = _state_hash(net)
    stats = qviz.capture(net, x, batch_size=7, progress=False, top_k=2)
    assert _state_hash(net) == before
    assert sum(len(m._forward_hooks) for m in net.modules()) == 0
    assert list(stats.layer.values) == ["0", "2", "3"]
    assert stats.sizes["channel"] == 12 and stats["n_channels"].values.tolist() == [6, 12, 12]
    # layer "0" sees the raw input; layer "3" sees the LayerNorm output
    ref0 = _reference(x.double().numpy())
    np.testing.assert_allclose(stats["absmax"].sel(layer="0").values[:6], ref0["absmax"], rtol=1e-6)
    np.testing.assert_allclose(stats["std"].sel(layer="0").values[:6], ref0["std"], rtol=1e-5)
    assert np.isnan(stats["absmax"].sel(layer="0").values[6:]).all()  # padding beyond 6 channels
    h = net[2](net[1](net[0](x))).detach().double().numpy()
    np.testing.assert_allclose(stats["mean"].sel(layer="3").values, h.mean(0), rtol=1e-5, atol=1e-6)
    assert int(stats["top_channels"].sel(layer="0").values[0]) == 5
    assert stats["outlier_ratio"].sel(layer="0") > 5
    np.testing.assert_allclose(
        stats["weight_absmax_in"].sel(layer="0").values[:6], net[0].weight.abs().amax(0).detach().numpy(), rtol=1e-6
    )
    np.testing.assert_allclose(
        stats["weight_absmax_out"].sel(layer="0").values[:12], net[0].weight.abs().amax(1).detach().numpy(), rtol=1e-6
    )
    assert stats.attrs["n_items"] == 40 and stats.attrs["n_tokens"] == 40


def test_conv_channels_are_dim_one(digits, digits_calib):
    stats = qviz.capture(digits, digits_calib, progress=False)
    assert stats["layer_type"].sel(layer="conv2").item() == "conv2d"
    assert int(stats["n_channels"].sel(layer="conv2")) == 16
    h = torch.relu(digits.module.conv1(digits_calib)).detach()  # [n, 16, 8, 8]: conv2's input
    ref = h.permute(0, 2, 3, 1).reshape(-1, 16).double().numpy()
    np.testing.assert_allclose(stats["absmax"].sel(layer="conv2").values[:16], np.abs(ref).max(0), rtol=1e-6)
    np.testing.assert_allclose(stats["mean"].sel(layer="conv2").values[:16], ref.mean(0), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_padding_tokens_are_excluded(minilm):
    texts = ["A short sentence.", "A much longer sentence that forces the first one to be padded with many tokens."]
    stats = qviz.capture(minilm, texts, layers="encoder.layer.0.attention.self.query", progress=False)
    enc = minilm.prepare(texts)
    seen = {}
    with qviz.hooks(minilm, lambda n, m, i, o: seen.setdefault("x", i[0]), layers="encoder.layer.0.attention.self.query"):
        minilm.run(enc)
    real = seen["x"][enc["attention_mask"].bool()].double().numpy()
    assert stats.attrs["n_tokens"] == real.shape[0] < enc["attention_mask"].numel()
    np.testing.assert_allclose(stats["mean"].values[0], real.mean(0), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_minilm_has_real_outlier_channels(minilm, minilm_calib):
    stats = qviz.capture(minilm, minilm_calib, progress=False)
    ratio = stats["outlier_ratio"].to_series()
    assert ratio.max() > 20, ratio.sort_values().tail()
    # the residual-stream outliers recur across many layers
    assert stats["channel_recurrence"].max() >= 20
    assert stats["n_nonfinite"].sum() == 0
    # q, k and v read one tensor: identical statistics
    q, k = (stats["absmax"].sel(layer=f"encoder.layer.2.attention.self.{p}") for p in ("query", "key"))
    np.testing.assert_array_equal(q.values, k.values)


@pytest.mark.slow
def test_sample_is_capped_with_token_text(minilm, minilm_calib):
    name = "encoder.layer.1.output.dense"
    stats = qviz.capture(minilm, minilm_calib, sample=name, max_sample_tokens=50, progress=False)
    assert stats["sample"].shape == (1, 50, 1536)
    assert stats["token_text"].values[0] == "[CLS]"
    assert np.isfinite(stats["sample"].values).all()


def test_nonfinite_activations_are_reported():
    net = nn.Sequential(nn.Linear(3, 3))
    x = torch.randn(10, 3)
    x[0, 1] = float("nan")
    stats = qviz.capture(net, x, progress=False)
    assert int(stats["n_nonfinite"].values[0]) == 1
    assert np.isfinite(stats["absmax"].values[0]).all()


def test_bad_input():
    net = _mlp()
    with pytest.raises(ValueError, match="empty"):
        qviz.capture(net, torch.empty(0, 6), progress=False)
    with pytest.raises(TypeError, match="Cannot turn a set|Cannot read batches"):
        qviz.capture(net, {1, 2, 3}, progress=False)
    with pytest.raises(ValueError, match="no layer qviz can hook"):
        qviz.capture(nn.Sequential(nn.ReLU()), torch.randn(2, 2), progress=False)
    with pytest.raises(ValueError, match="Did you mean '3'|Unknown layer name"):
        qviz.capture(net, torch.randn(2, 6), layers=["33"], progress=False)
    with pytest.raises(ValueError, match="not a captured layer"):
        qviz.capture(net, torch.randn(2, 6), sample="nope", progress=False)
    with pytest.raises(ValueError, match="threshold"):
        qviz.capture(net, torch.randn(2, 6), threshold=-1, progress=False)
    with pytest.raises(TypeError, match="capture\\(\\) takes"):
        qviz.capture(3.0, torch.randn(2, 6))


def test_hooks_removed_when_capture_is_interrupted():
    net = _mlp()

    class Stop(nn.Module):
        def forward(self, x):
            raise KeyboardInterrupt

    net.append(Stop())
    with pytest.raises(KeyboardInterrupt):
        qviz.capture(net, torch.randn(4, 6), progress=False)
    assert sum(len(m._forward_hooks) for m in net.modules()) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_capture_on_cuda():
    net = _mlp().cuda()
    x = torch.randn(64, 6)
    gpu = qviz.capture(net, x, progress=False)
    cpu = qviz.capture(net.cpu(), x, progress=False)
    assert gpu.attrs["device"].startswith("cuda")
    np.testing.assert_allclose(gpu["absmax"].values, cpu["absmax"].values, rtol=1e-4, equal_nan=True)


def test_batch_summaries_merged_equal_batches_streamed():
    """capture folds a batch either straight in (update) or as a summary shared by layers reading one tensor."""
    rng = np.random.default_rng(1)
    batches = [torch.from_numpy(rng.standard_normal((n, 40)).astype(np.float32) * 3) for n in (17, 64, 5)]
    batches[1][3, 2] = float("nan")
    merged = accumulator(40, 32, -6, 4, torch.device("cpu"))
    streamed = HostMoments(40, 32, -6, 4)
    for b in batches:
        merged.merge(merged.batch_stats(b))
        streamed.update(b)
    a, b = merged.finalize(), streamed.finalize()
    for key in ("count", "min", "max", "absmax", "mean", "std", "skewness", "kurtosis"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-12, err_msg=key)
    assert merged.n_nonfinite == streamed.n_nonfinite == 1
    np.testing.assert_array_equal(a["hist"], b["hist"])


def test_one_moments_rule_for_capture_and_the_kernel():
    """capture's statistics are kernels_numba's: std, skewness and kurtosis from finalize_channel_stats."""
    import kernels_numba as kn

    x = np.random.default_rng(2).standard_normal((50, 6)).astype(np.float32)
    acc = HostMoments(6, 8, -6, 4)
    acc.update(torch.from_numpy(x))
    state = kn.update_channel_stats(kn.new_channel_stats(6, 8, -6, 4), x)
    ref = kn.finalize_channel_stats(state)
    got = acc.finalize()
    for key in ("mean", "std", "skewness", "kurtosis"):
        np.testing.assert_array_equal(got[key], getattr(ref, key), err_msg=key)
