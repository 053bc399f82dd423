"""The capture engine (qviz/activations/engine.py): the batch loop, layer input -> rows, and what it captures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qviz
from qviz.activations.engine import (
    capture_inputs,
    capture_outputs,
    channel_rows,
    check_calib,
    conv_patches,
    input_absmax,
    n_batches,
    reusable,
    run_hooked,
    weight_rows,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


class _Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.spare = nn.Linear(2, 2), nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_run_hooked_batches_and_restores_the_model():
    net = _net().train()
    seen = []
    rec = run_hooked(qviz.load(net), torch.randn(10, 4), lambda n, m, i, o: seen.append((n, i[0].shape[0])),
                     batch_size=4, layers=["2"])
    assert rec.calls == {"2": 3} and [s for _, s in seen] == [4, 4, 2]
    assert net.training and sum(len(m._forward_hooks) for m in net.modules()) == 0
    assert n_batches(torch.zeros(10, 4), 4) == 3 and n_batches({"a": torch.zeros(3)}, 2) is None


def test_run_hooked_removes_hooks_on_an_exception():
    net = _net()

    def boom(*_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_hooked(qviz.load(net), torch.randn(8, 4), boom)
    assert sum(len(m._forward_hooks) for m in net.modules()) == 0


def test_channel_rows_and_weight_rows_against_direct_computation():
    x = torch.randn(2, 3, 5, 5)
    rows = channel_rows(x, channels_first=True)  # [pixels, channels]
    torch.testing.assert_close(rows[7], x[0, :, 1, 2])
    conv = nn.Conv2d(3, 4, 3, padding=1)
    patches = weight_rows(conv, x)  # [positions, in*kh*kw]
    y = (patches @ conv.weight.reshape(4, -1).t()).reshape(2, 25, 4).transpose(1, 2).reshape(2, 4, 5, 5)
    torch.testing.assert_close(y + conv.bias[None, :, None, None], conv(x), rtol=1e-5, atol=1e-5)
    conv1 = nn.Conv1d(3, 2, 3, stride=2)
    x1 = torch.randn(2, 3, 9)
    p1 = weight_rows(conv1, x1)  # [batch * positions, in * k]
    y1 = (p1 @ conv1.weight.reshape(2, -1).t()).reshape(2, 4, 2).transpose(1, 2)
    torch.testing.assert_close(y1 + conv1.bias[None, :, None], conv1(x1), rtol=1e-5, atol=1e-5)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    tokens = torch.randn(2, 3, 4)
    torch.testing.assert_close(weight_rows(nn.Linear(4, 2), tokens, mask), tokens[mask])
    torch.testing.assert_close(channel_rows(tokens, False, mask), tokens[mask])
    with pytest.raises(TypeError, match="groups=3"):
        conv_patches(nn.Conv2d(3, 3, 3, groups=3), x)


def test_capture_inputs_keeps_rows_and_images_and_samples_above_the_cap():
    net = _net()
    x = torch.randn(20, 4)
    got = capture_inputs(qviz.load(net), x, ["0", "2"])
    torch.testing.assert_close(got["0"], x)
    torch.testing.assert_close(got["2"], torch.relu(net[0](x)).detach())
    few = capture_inputs(qviz.load(net), x, ["0"], max_rows=5)["0"]  # a uniform sample, in stream order
    assert few.shape == (5, 4) and all(any(torch.equal(r, s) for s in x) for r in few)
    convnet = nn.Sequential(nn.Conv2d(1, 2, 3))
    images = capture_inputs(qviz.load(convnet), torch.randn(6, 1, 5, 5), ["0"], max_rows=20)["0"]
    assert images.shape == (3, 1, 5, 5)  # 9 positions an image: 3 images cover 20 rows
    with pytest.raises(RuntimeError, match="'spare' never ran"):
        capture_inputs(qviz.load(_Unused()), torch.randn(2, 2), ["used", "spare"])


def test_input_absmax_and_capture_outputs():
    net = _net()
    x = torch.randn(9, 4)
    amax = input_absmax(qviz.load(net), x, ["0"], batch_size=2)["0"]
    torch.testing.assert_close(amax, x.abs().amax(0))
    out = capture_outputs(qviz.load(net), x, ["0", "2"])
    torch.testing.assert_close(out["2"], net(x).detach())


def test_calibration_checks():
    with pytest.raises(ValueError, match="needs calibration inputs"):
        check_calib(None, "layer_error")
    with pytest.raises(ValueError, match="empty calibration batch"):
        check_calib(np.zeros((0, 3)), "layer_error")
    assert reusable(iter([1, 2])) == [1, 2] and reusable(x := torch.zeros(2)) is x
