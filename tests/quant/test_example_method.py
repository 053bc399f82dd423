"""Adding a method is one module and its tests: a power-of-two-scale RTN, defined and registered here only.

``Pow2RTN`` stores signed integer codes and, per group (or row), one int8
exponent ``e`` so that the scale is ``2**e``: the smallest power of two with
``2**e * qmax >= max|w|``. Nothing outside this file knows it; registering it
is enough for :func:`qviz.quantize`, :func:`qviz.layer_error`,
:func:`qviz.sensitivity`, :func:`qviz.compare`, :func:`qviz.project_size`,
``fake_quantize``/``quantize_tensor``, JSON round trips and the QuantExplorer
widget to take it. The ``pow2`` fixture unregisters it at teardown, so no other
test sees it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import qviz
from qviz.quant.config import QuantConfig
from qviz.quant.registry import (
    Controls,
    FormatBits,
    LayerQuant,
    Method,
    config_from_json,
    known_config_types,
    method_for,
    register,
    unregister,
)

# --------------------------------------------------------------------------- the method's module


@dataclass(frozen=True)
class Pow2RTN(QuantConfig):
    """Symmetric RTN whose scales are powers of two (one int8 exponent per group, or per row)."""

    bits: int = 4
    group_size: int | None = None

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise ValueError(f"Pow2RTN bits must be an int from 2 to 8; got {self.bits!r}. Pick e.g. bits=4.")
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"Pow2RTN group_size must be None (one exponent per row) or a positive int; "
                             f"got {self.group_size!r}.")

    @property
    def label(self) -> str:
        return f"Pow2 w{self.bits} {'ch' if self.group_size is None else f'g{self.group_size}'}"


def pow2_quantize(w: torch.Tensor, cfg: Pow2RTN) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes int8 [rows, cols], exponents int8 [rows, groups])`` of ``w [rows, cols]``."""
    rows, cols = w.shape
    per = cols if cfg.group_size is None else cfg.group_size
    g = w.reshape(rows, cols // per, per)  # [rows, groups, per]
    qmax = 2 ** (cfg.bits - 1) - 1
    amax = g.abs().amax(-1).clamp_min(2.0**-100)  # [rows, groups]
    exp = torch.ceil(torch.log2(amax / qmax))
    codes = torch.clamp(torch.round(g / torch.exp2(exp).unsqueeze(-1)), -qmax - 1, qmax)
    return codes.reshape(rows, cols).to(torch.int8), exp.to(torch.int8)


def pow2_dequantize(codes: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
    """float32 ``[rows, cols]`` from :func:`pow2_quantize`'s output."""
    rows, cols = codes.shape
    per = cols // exp.shape[1]
    scale = torch.exp2(exp.float()).unsqueeze(-1)  # [rows, groups, 1]
    return (codes.float().reshape(rows, -1, per) * scale).reshape(rows, cols)


class Pow2Method(Method):
    """Data-free; codes packed at ``bits`` each plus one exponent byte per group."""

    label = "Pow2"
    controls = ("bits", "group_size")
    data_free = True
    layer_types = ("linear",)

    def config_from_controls(self, c: Controls) -> Pow2RTN:
        if c.group_size == "tensor":
            raise ValueError("Pow2 takes a group size or 'channel', not 'tensor'.")
        return Pow2RTN(bits=c.bits, group_size=c.group_size)

    def quantize_tensor(self, w: torch.Tensor, cfg: Pow2RTN) -> tuple:
        codes, exp = pow2_quantize(w, cfg)
        return codes, exp, None, self.storage_nbytes(tuple(w.shape), cfg), lambda: pow2_dequantize(codes, exp)

    def quantize_layer(self, name: str, module: nn.Module, cfg: Pow2RTN, inputs: torch.Tensor | None,
                       state: object) -> LayerQuant:
        w = module.weight.detach().float()  # [out, in]
        _, _, _, nbytes, dequantize = self.quantize_tensor(w, cfg)
        w_hat = dequantize()
        new = copy.deepcopy(module)
        with torch.no_grad():
            new.weight.copy_(w_hat.to(new.weight.dtype))
        return LayerQuant(new, w_hat, nbytes)

    def storage_nbytes(self, shape: tuple[int, int], cfg: Pow2RTN) -> int:
        rows, cols = int(shape[0]), int(shape[1])
        groups = 1 if cfg.group_size is None else cols // cfg.group_size
        return -(-rows * cols * cfg.bits // 8) + rows * groups

    def format_bits(self, cfg: Pow2RTN, row_length: int) -> FormatBits:
        per = row_length if cfg.group_size is None else cfg.group_size
        return FormatBits(cfg.label, float(cfg.bits), 8 / per, f"an int8 power-of-two exponent per {per} weights")


# --------------------------------------------------------------------------- its tests


@pytest.fixture
def pow2():
    register(Pow2RTN)(Pow2Method)
    try:
        yield Pow2RTN
    finally:
        unregister(Pow2RTN)
    assert Pow2RTN not in known_config_types()


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))


def test_the_arithmetic_is_a_power_of_two_rtn():
    w = torch.tensor([[0.3, -1.0, 0.05, 0.9]])
    codes, exp = pow2_quantize(w, Pow2RTN(bits=4))
    assert exp.tolist() == [[-2]] and codes.tolist() == [[1, -4, 0, 4]]  # scale 1/4 >= 1.0 / 7
    assert pow2_dequantize(codes, exp).tolist() == [[0.25, -1.0, 0.0, 1.0]]


def test_one_tensor(pow2):
    w = torch.randn(16, 128)
    qt = qviz.quantize_tensor(w, pow2(bits=4, group_size=32))
    assert qt.nbytes == 16 * 128 // 2 + 16 * 4 and qt.bits_per_weight == pytest.approx(4.25)
    w_hat = qviz.fake_quantize(w.numpy(), pow2(bits=4, group_size=32))  # numpy in, numpy out
    np.testing.assert_array_equal(w_hat, qt.dequantize().numpy())
    assert np.abs(w_hat - w.numpy()).max() <= float(w.abs().max()) / 7 + 1e-6


def test_quantize_and_its_record(pow2, mlp):
    cfg = pow2(bits=3, group_size=32)
    x = torch.randn(8, 64)
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    q = qviz.quantize(mlp, cfg, progress=False)
    assert list(q.quantization.layers) == ["0", "2", "4"]
    rec = q.quantization.layers["2"]
    assert rec.config == "Pow2 w3 g32" and rec.nbytes == 64 * 64 * 3 // 8 + 64 * 2
    with torch.no_grad():
        assert not torch.equal(q.module(x), mlp(x))
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())  # the user's model is untouched


def test_layer_error_and_sensitivity(pow2, mlp):
    x, ev = torch.randn(32, 64), torch.randn(32, 64)
    errors = qviz.layer_error(mlp, [pow2(bits=2), pow2(bits=8)], calib=x)
    assert list(errors.config.values) == ["Pow2 w2 ch", "Pow2 w8 ch"]
    sqnr = errors.weight_sqnr_db
    assert (sqnr.sel(config="Pow2 w8 ch") > sqnr.sel(config="Pow2 w2 ch") + 20).all()
    assert float(errors.bits_per_weight.sel(layer="2", config="Pow2 w8 ch")) == pytest.approx(8 + 8 / 64)
    sens = qviz.sensitivity(mlp, [pow2(bits=2), pow2(bits=8)], calib=x, eval_data=ev)
    s = sens.sensitivity
    assert (s >= 0).all() and (s.sel(config="Pow2 w2 ch") > s.sel(config="Pow2 w8 ch")).all()


def test_project_size_and_json(pow2):
    cfg = pow2(bits=4, group_size=64)
    assert qviz.project_size(1e9, cfg) == math.ceil(1e9 * (4 + 8 / 64) / 8)
    assert qviz.evaluate.size.format_bits(cfg).overhead == "an int8 power-of-two exponent per 64 weights"
    assert config_from_json(cfg.to_json()) == cfg
    assert method_for(cfg).label == "Pow2"


def test_compare(pow2):
    model = qviz.load("tiny-llama")
    cmp = qviz.compare(model, [pow2(bits=4)], task=qviz.evaluate.accuracy.PerplexityTask(n=4),
                       metrics=["accuracy", "size"], progress=False)
    assert list(cmp.config.values) == ["fp32", "Pow2 w4 ch"]
    assert float(cmp.size_bytes.sel(config="Pow2 w4 ch")) < float(cmp.size_bytes.sel(config="fp32"))
    assert float(cmp.kl_divergence.sel(config="Pow2 w4 ch")) > 0


def test_quant_explorer_lists_it_and_builds_its_config(pow2, mlp):
    from qviz.measure.lab import available_methods, make_config

    assert available_methods()[-1] == "Pow2"
    assert make_config("Pow2", bits=5, group_size="channel") == pow2(bits=5)
    ex = qviz.widgets.QuantExplorer(mlp, torch.randn(16, 64), layer="2", method="Pow2", bits=3, group_size=32,
                                    debounce=0, background=False)
    assert ex.current.config == "Pow2 w3 g32" and ex.current.bits_per_weight == pytest.approx(3 + 8 / 32)
    assert not ex.bits_box.disabled and ex.symmetric_box.disabled and ex.alpha_slider.disabled
    ex.set(bits=6)
    assert ex.current.config == "Pow2 w6 g32"
    ex.set(group_size="tensor")
    assert "not 'tensor'" in ex.last_error


def test_unregister_takes_it_out_of_every_driver(mlp):
    register(Pow2RTN)(Pow2Method)
    unregister(Pow2RTN)
    with pytest.raises(TypeError, match="Known configs"):
        qviz.quantize(mlp, Pow2RTN(), progress=False)
    from qviz.measure.lab import available_methods

    assert "Pow2" not in available_methods()
    with pytest.raises(KeyError, match="no registered method"):
        unregister(Pow2RTN)
