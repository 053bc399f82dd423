"""Activation quantization as a config field: INT or FP, 4 or 8 bits, per token or per tensor, static or dynamic.

:class:`ActSpec` is what the ``act_bits`` / ``act_type`` / ``act_scheme`` /
``act_static`` fields of a weight config mean (the FP formats, HQQ and
:class:`qviz.Rotated` carry them, so W4A4, W4A8 and W8A8 are configs):

* ``act_type="int"``: symmetric integer codes (:func:`qviz.quant.modules.fake_quant_activation`);
* ``act_type="fp"``: FP8 E4M3 at 8 bits, FP4 E2M1 at 4 bits, scale ``amax / max_value``
  (W8A8-FP8 as inference engines run it), rounded by :func:`fp_round_torch`, the torch
  twin of :func:`kernels_numba.fp.fp_round` (tested equal);
* ``act_static=True``: one per-tensor scale per layer calibrated on the calibration
  inputs (:func:`calibrate_act_amax`) instead of the absmax of each call.

Gradients pass straight through.

Examples
--------
>>> import torch
>>> spec = ActSpec(bits=8, type="fp")
>>> spec.label
'a8fp/token'
>>> spec.apply(torch.tensor([[1.0, 0.3]])).tolist()
[[1.0, 0.2857142984867096]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ACT_TYPES = ("int", "fp")
ACT_SCHEMES = ("per-token", "per-tensor")
FP_ACT_FORMATS = {8: "e4m3", 4: "e2m1"}
"""The element format of FP activations at each width."""


def check_act_fields(owner: str, act_bits: Any, act_type: Any, act_scheme: Any, act_static: Any) -> None:
    """Validate a config's activation fields; raise ``ValueError`` naming the field and the fix."""
    if act_type not in ACT_TYPES:
        raise ValueError(f"{owner} act_type must be one of {ACT_TYPES}; got {act_type!r}.")
    if act_scheme not in ACT_SCHEMES:
        raise ValueError(f"{owner} act_scheme must be one of {ACT_SCHEMES}; got {act_scheme!r}.")
    if not isinstance(act_static, bool):
        raise ValueError(f"{owner} act_static must be True or False; got {act_static!r}.")
    if act_bits is None:
        if act_static:
            raise ValueError(f"{owner} act_static=True needs act_bits (activation quantization is off).")
        return
    allowed = tuple(FP_ACT_FORMATS) if act_type == "fp" else tuple(range(2, 9))
    if not isinstance(act_bits, int) or isinstance(act_bits, bool) or act_bits not in allowed:
        raise ValueError(
            f"{owner} act_bits must be None (weights only) or one of {allowed} for act_type={act_type!r}; "
            f"got {act_bits!r}. FP activations are E4M3 at 8 bits and E2M1 at 4 bits."
        )
    if act_static and act_scheme != "per-tensor":
        raise ValueError(
            f"{owner} act_static=True means one calibrated scale per layer, so it needs act_scheme='per-tensor'; "
            f"got act_scheme={act_scheme!r}."
        )


@dataclass(frozen=True)
class ActSpec:
    """How a layer's input activations are fake-quantized.

    Parameters
    ----------
    bits : int
        4 or 8 for FP; 2 to 8 for INT.
    type : {"int", "fp"}
    scheme : {"per-token", "per-tensor"}
    static : bool
        Use a calibrated per-tensor scale (``apply(x, scale=...)``) instead of each call's absmax.
    """

    bits: int
    type: str = "int"
    scheme: str = "per-token"
    static: bool = False

    def __post_init__(self) -> None:
        check_act_fields("ActSpec", self.bits, self.type, self.scheme, self.static)

    @property
    def label(self) -> str:
        """``a8fp/token``, ``a4/tensor static``, ..."""
        kind = "fp" if self.type == "fp" else ""
        return f"a{self.bits}{kind}/{self.scheme.split('-')[1]}" + (" static" if self.static else "")

    @property
    def max_code(self) -> float:
        """Largest code magnitude: ``2**(bits-1) - 1`` (INT) or the FP format's largest value."""
        if self.type == "int":
            return float((1 << (self.bits - 1)) - 1)
        from kernels_numba.fp import element_format

        return element_format(FP_ACT_FORMATS[self.bits]).max_value

    def apply(self, x: torch.Tensor, scale: torch.Tensor | None = None, channel_dim: int = -1) -> torch.Tensor:
        """Fake-quantize ``x`` (any shape, channels on ``channel_dim``); ``scale``: a static 0-d scale.

        Examples
        --------
        >>> ActSpec(4, "fp", "per-tensor").apply(torch.tensor([6.0, 1.4])).tolist()
        [6.0, 1.5]
        """
        if self.static and scale is None:
            raise ValueError("This activation spec is static: pass the calibrated scale (calibrate_act_amax).")
        if self.type == "int":
            from qviz.quant.modules import fake_quant_activation

            return fake_quant_activation(x, self.bits, self.scheme, channel_dim, scale=scale)
        xf = x.float()
        if scale is None:
            a = xf.detach().abs()
            amax = a.amax() if self.scheme == "per-tensor" else a.amax(dim=channel_dim, keepdim=True)
            scale = torch.where(amax > 0, amax / self.max_code, torch.ones_like(amax))
        q = fp_round_torch(xf / scale.to(xf.dtype), FP_ACT_FORMATS[self.bits]) * scale
        return (xf + (q - xf).detach()).to(x.dtype)


def fp_round_torch(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """Round float32 ``x`` to the nearest value of ``fmt`` (ties to even, saturating), on ``x``'s device.

    The torch twin of :func:`kernels_numba.fp.fp_round`. FP8 formats use torch's
    own ``float8`` casts after clamping; the others divide by the power-of-two
    grid spacing (exact) and round half to even.

    Examples
    --------
    >>> fp_round_torch(torch.tensor([0.74, 2.5, -9.0]), "e2m1").tolist()
    [0.5, 2.0, -6.0]
    """
    from kernels_numba.fp import element_format

    f = element_format(fmt)
    x = x.float()
    xc = torch.clamp(x, -f.max_value, f.max_value)
    if f.name == "e4m3":
        return xc.to(torch.float8_e4m3fn).float()
    if f.name == "e5m2":
        return xc.to(torch.float8_e5m2).float()
    a = xc.abs()
    _, ex = torch.frexp(a)  # a = m * 2**ex, m in [0.5, 1)
    e = torch.clamp(ex - 1, min=f.emin)
    quantum = torch.ldexp(torch.ones_like(a), e - f.mbits)
    q = torch.round(a / quantum) * quantum
    return torch.copysign(torch.clamp(q, max=f.max_value), x)


def calibrate_act_amax(model: Any, calib: Any, names: list[str], who: str) -> dict[str, float]:
    """The largest |input| each named layer sees over ``calib`` (one forward pass, hooks removed after).

    Examples
    --------
    >>> import qviz
    >>> net = nn.Sequential(nn.Linear(2, 2))
    >>> calibrate_act_amax(qviz.load(net), torch.tensor([[1.0, -3.0]]), ["0"], "test")
    {'0': 3.0}
    """
    from qviz.activations.hooks import hooks
    from qviz.activations.engine import CAPTURE_BATCH, check_calib

    check_calib(calib, f"{who} with act_static=True (static activation scales)")
    amax = dict.fromkeys(names, 0.0)

    def hook(name: str, mod: nn.Module, inputs: tuple, output: Any) -> None:
        amax[name] = max(amax[name], float(inputs[0].detach().abs().max()))

    with torch.no_grad(), hooks(model.module, hook, layers=names, include_norms=False):
        for inputs in model.batches(calib, CAPTURE_BATCH):
            model.run(inputs)
    return amax


class ActQuantLinear(nn.Linear):
    """A Linear with a (dequantized) weight and activation fake-quant of its input per an :class:`ActSpec`.

    Examples
    --------
    >>> lin = nn.Linear(4, 2)
    >>> q = ActQuantLinear.from_float(lin, lin.weight.detach(), ActSpec(8, "fp"))
    >>> q(torch.ones(3, 4)).shape
    torch.Size([3, 2])
    """

    kernel = "simulated (fake-quant)"

    @classmethod
    def from_float(cls, module: nn.Module, weight_hat: torch.Tensor, act: ActSpec,
                   act_amax: float | None = None) -> ActQuantLinear:
        """Replace ``module`` by an ActQuantLinear with ``weight_hat [out, in]``; ``act_amax`` for static scales."""
        out_f, in_f = weight_hat.shape
        bias = getattr(module, "bias", None)
        new = cls(in_f, out_f, bias is not None, device="meta")
        new.weight = nn.Parameter(weight_hat.detach().to(module.weight.dtype).clone(), requires_grad=False)
        new.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        new.act = act
        scale = None
        if act.static:
            if act_amax is None:
                raise ValueError("A static activation spec needs the layer's calibrated input amax.")
            scale = torch.tensor(act_amax / act.max_code if act_amax > 0 else 1.0, device=weight_hat.device)
        new.register_buffer("act_scale", scale)
        new.train(module.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        return nn.functional.linear(self.act.apply(x, self.act_scale), self.weight, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", act={self.act.label}"


def act_module(module: nn.Module, name: str, weight_hat: torch.Tensor, act: ActSpec | None,
               act_amax: float | None = None) -> nn.Module:
    """The fake-quant replacement of ``module`` with weight ``weight_hat`` and activation spec ``act``.

    Weight-only and dynamic INT activations work on every layer type
    :func:`~qviz.quant.modules.fake_quant_module` builds; FP or static activations
    need a Linear-like layer (a clear error names any other).
    """
    from qviz.models import layer_type
    from qviz.quant.modules import fake_quant_module

    if act is None or (act.type == "int" and not act.static):
        return fake_quant_module(module, weight_hat, None if act is None else act.bits,
                                 "per-token" if act is None else act.scheme)
    if layer_type(module) != "linear":
        raise ValueError(
            f"Layer {name!r} is a {layer_type(module)} layer; FP or static activation quantization ({act.label}) "
            "is built for Linear layers. Leave it out with skip=[...] or use dynamic INT activations (act_type='int')."
        )
    return ActQuantLinear.from_float(module, weight_hat, act, act_amax)
