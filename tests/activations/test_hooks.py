"""hooks(): removed on every exit path, nestable, filterable."""

import pytest
import torch
from torch import nn

import qviz


def _net():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.LayerNorm(8), nn.Linear(8, 2))


def _n_hooks(net):
    return sum(len(m._forward_hooks) for m in net.modules())


def test_calls_and_removal():
    net = _net()
    seen = []
    with qviz.hooks(net, lambda n, m, i, o: seen.append((n, tuple(i[0].shape), tuple(o.shape)))) as rec:
        assert _n_hooks(net) == 3 and rec.active
        net(torch.randn(5, 4))
    assert _n_hooks(net) == 0 and not rec.active
    assert seen == [("0", (5, 4), (5, 8)), ("2", (5, 8), (5, 8)), ("3", (5, 8), (5, 2))]
    assert rec.calls == {"0": 1, "2": 1, "3": 1}


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_removed_when_forward_raises(exc):
    net = _net()

    def boom(name, module, inputs, output):
        raise exc("stop")

    with pytest.raises(exc):
        with qviz.hooks(net, boom):
            net(torch.randn(2, 4))
    assert _n_hooks(net) == 0


def test_nesting_and_filters():
    net = _net()
    with qviz.hooks(net, layers="0") as outer:
        with qviz.hooks(net, layers=["2", "3"]) as inner:
            assert _n_hooks(net) == 3
            net(torch.randn(1, 4))
        assert _n_hooks(net) == 1
        net(torch.randn(1, 4))
    assert outer.calls == {"0": 2} and inner.calls == {"2": 1, "3": 1}
    with qviz.hooks(net, layers=lambda name, m: isinstance(m, nn.Linear)) as rec:
        pass
    assert rec.names == ["0", "3"]
    with qviz.hooks(net, include_norms=False) as rec:
        pass
    assert rec.names == ["0", "3"]


def test_glob_and_unknown_names(minilm):
    with qviz.hooks(minilm, layers="encoder.layer.0.attention.self.*") as rec:
        pass
    assert rec.names == [f"encoder.layer.0.attention.self.{p}" for p in ("query", "key", "value")]
    with pytest.raises(ValueError, match="Did you mean 'encoder.layer.0.attention.self.query'"):
        with qviz.hooks(minilm, layers="encoder.layer.0.attention.self.querry"):
            pass
    with pytest.raises(ValueError, match="matches no layer"):
        with qviz.hooks(minilm, layers="decoder.*"):
            pass
    with pytest.raises(TypeError, match="layers must be"):
        with qviz.hooks(minilm, layers=3):
            pass


def test_bad_inputs():
    with pytest.raises(ValueError, match="no layer qviz can hook"):
        with qviz.hooks(nn.Sequential(nn.ReLU(), nn.Tanh())):
            pass
    with pytest.raises(TypeError, match="fn must be callable"):
        with qviz.hooks(_net(), fn="print"):
            pass
    with pytest.raises(TypeError, match="torch.nn.Module"):
        with qviz.hooks("not a model"):
            pass
