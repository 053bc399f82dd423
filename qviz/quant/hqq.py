"""HQQ (Badri & Shaji 2023, "Half-Quadratic Quantization"): calibration-free zero points from a half-quadratic solver.

Affine codes ``q = clamp(round(W / s + z), 0, 2**bits - 1)`` per group, as RTN,
but the zero point ``z`` of each group minimises the sparsity-promoting error
``||W - s (q - z)||_p^p`` with ``p < 1`` (default 0.7) instead of being set by
the group's minimum. The half-quadratic splitting introduces ``E ≈ W - Ŵ`` and
alternates two closed-form steps:

* ``E ← shrink_p(W - Ŵ, β)`` with the generalised soft threshold
  ``sign(x) · relu(|x| - |x|^(p-1) / β)``;
* ``z ← mean(q - (W - E) / s)`` over the group;

with ``β`` growing by ``κ`` per iteration, stopping when the mean absolute
weight error stops falling. No calibration data; the scale stays the min/max
one. Scale and zero point are stored as float16 (``bits + 32 / group_size``
bits per weight), and the final codes are taken with the stored values.

Examples
--------
>>> import torch, qviz
>>> w = torch.randn(32, 128)
>>> e_hqq = (qviz.fake_quantize(w, qviz.HQQ(bits=3, group_size=64)) - w).abs().mean()
>>> e_rtn = (qviz.fake_quantize(w, qviz.RTN(bits=3, group_size=64)) - w).abs().mean()
>>> bool(e_hqq < e_rtn)
True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from qviz.quant.fp import WeightFormatMethod, _ActFields
from qviz.quant.granularity import Granularity, PerTensor, granularity_of
from qviz.quant.method import Controls, FormatBits, register
from qviz.quant.primitives import check_bits, check_group_size, packed_nbytes

__all__ = ["HQQ", "HQQParams", "hqq_qparams", "hqq_quantize", "hqq_dequantize", "shrink_lp"]


@dataclass(frozen=True)
class HQQ(_ActFields):
    """Half-quadratic quantization of the zero points: 2-8 bits, group sizes as RTN, no calibration data.

    Parameters
    ----------
    bits : int
        2 to 8.
    group_size : int, None or "tensor"
        As :class:`qviz.RTN` (HQQ's usual choice is 64).
    lp_norm : float
        The ``p`` of the error norm, in (0, 1].
    beta, kappa : float
        Starting penalty of the splitting and its growth factor per iteration (> 1).
    iters : int
        Most solver iterations.
    act_bits, act_type, act_scheme, act_static
        Activation quantization (:mod:`qviz.quant.actquant`).

    Examples
    --------
    >>> HQQ(bits=4, group_size=64).label
    'HQQ w4 g64'
    >>> HQQ(lp_norm=1.5)
    Traceback (most recent call last):
    ...
    ValueError: HQQ lp_norm must be a number in (0, 1] (HQQ uses 0.7); got 1.5.
    """

    bits: int = 4
    group_size: int | str | None = 64
    lp_norm: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01
    iters: int = 20
    method: ClassVar[str] = "hqq"

    def __post_init__(self) -> None:
        check_bits(self.bits, "bits", owner="HQQ")
        check_group_size(self.group_size, owner="HQQ")
        for name, ok, want in (("lp_norm", _num(self.lp_norm) and 0 < self.lp_norm <= 1,
                                "a number in (0, 1] (HQQ uses 0.7)"),
                               ("beta", _num(self.beta) and self.beta > 0, "a positive number (HQQ uses 10)"),
                               ("kappa", _num(self.kappa) and self.kappa >= 1, "a number >= 1 (HQQ uses 1.01)")):
            if not ok:
                raise ValueError(f"HQQ {name} must be {want}; got {getattr(self, name)!r}.")
        if not isinstance(self.iters, int) or isinstance(self.iters, bool) or self.iters < 1:
            raise ValueError(f"HQQ iters must be a positive int (HQQ uses 20); got {self.iters!r}.")
        self._check_act()

    @property
    def granularity(self) -> Granularity:
        return granularity_of(self.group_size)

    @property
    def label(self) -> str:
        g = {None: "ch", "tensor": "tensor"}.get(self.group_size, f"g{self.group_size}")  # type: ignore[arg-type]
        text = f"HQQ w{self.bits} {g}"
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in ("lp_norm", "beta", "kappa", "iters"):  # solver settings name the config only when changed
            if getattr(self, name) != defaults[name]:
                text += f" {name}={getattr(self, name):g}"
        return text + self._act_label()


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class HQQParams:
    """Per-group float16-exact ``scale`` and ``zero`` ``[rows | 1, n_groups]`` (``W ≈ scale * (q - zero)``)."""

    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    granularity: Granularity
    shape: tuple[int, int]
    iterations: int


def _grouped(w: torch.Tensor, g: Granularity) -> torch.Tensor:
    """``w [rows, cols]`` as ``[rows | 1, n_groups, group]``."""
    rows, cols = w.shape
    if isinstance(g, PerTensor):
        return w.reshape(1, 1, rows * cols)
    n = g.scale_shape((rows, cols))[1]
    return w.reshape(rows, n, cols // n)


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """The generalised soft threshold ``sign(x) · relu(|x| - |x|^(p-1) / β)`` (plain soft threshold at ``p = 1``).

    Examples
    --------
    >>> [round(v, 4) for v in shrink_lp(torch.tensor([-2.0, 0.05, 1.0]), beta=10.0, p=1.0).tolist()]
    [-1.9, 0.0, 0.9]
    """
    a = x.abs()
    if p == 1:
        return torch.sign(x) * torch.relu(a - 1.0 / beta)
    return torch.sign(x) * torch.relu(a - torch.pow(a + 1e-8, p - 1.0) / beta)


def _codes(wg: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    return torch.clamp(torch.round(wg / scale + zero), 0, qmax)


def hqq_qparams(w: torch.Tensor, cfg: HQQ) -> HQQParams:
    """The HQQ scale and zero point of ``w [rows, cols]`` (float32 in, on its device).

    Examples
    --------
    >>> qp = hqq_qparams(torch.randn(4, 128), HQQ(bits=4, group_size=64))
    >>> tuple(qp.scale.shape), qp.scale.dtype
    ((4, 2), torch.float32)
    """
    g = cfg.granularity
    rows, cols = w.shape
    wg = _grouped(w.float(), g)  # [rows | 1, n_groups, group]
    qmax = (1 << cfg.bits) - 1
    lo, hi = wg.amin(dim=-1, keepdim=True), wg.amax(dim=-1, keepdim=True)
    scale = torch.where(hi > lo, (hi - lo) / qmax, torch.ones_like(hi))  # [.., n_groups, 1]
    zero = -lo / scale
    beta, best, it = float(cfg.beta), float("inf"), 0
    for it in range(1, cfg.iters + 1):
        q = _codes(wg, scale, zero, qmax)
        w_r = scale * (q - zero)
        e = shrink_lp(wg - w_r, beta, cfg.lp_norm)
        zero = torch.mean(q - (wg - e) / scale, dim=-1, keepdim=True)
        beta *= cfg.kappa
        err = float((wg - w_r).abs().mean())
        if err < best:
            best = err
        else:
            break
    scale16 = scale.to(torch.float16).float().squeeze(-1)  # stored as float16
    zero16 = zero.to(torch.float16).float().squeeze(-1)
    return HQQParams(scale16, zero16, cfg.bits, g, (rows, cols), it)


def hqq_quantize(w: torch.Tensor, qp: HQQParams) -> torch.Tensor:
    """uint8 codes ``[rows, cols]`` of ``w`` with the stored (float16-exact) scale and zero."""
    wg = _grouped(w.float(), qp.granularity)
    q = _codes(wg, qp.scale.unsqueeze(-1), qp.zero.unsqueeze(-1), (1 << qp.bits) - 1)
    return q.reshape(qp.shape).to(torch.uint8)


def hqq_dequantize(codes: torch.Tensor, qp: HQQParams) -> torch.Tensor:
    """float32 ``scale * (q - zero)`` ``[rows, cols]``."""
    qg = _grouped(codes.float(), qp.granularity)
    return (qp.scale.unsqueeze(-1) * (qg - qp.zero.unsqueeze(-1))).reshape(qp.shape)


def hqq_nbytes(shape: tuple[int, int], cfg: HQQ) -> int:
    """Packed codes plus a float16 scale and a float16 zero point per group.

    Examples
    --------
    >>> hqq_nbytes((64, 128), HQQ(bits=4, group_size=64))
    4608
    """
    rows, cols = int(shape[0]), int(shape[1])
    n_groups, per_group = cfg.granularity.scale_shape((rows, cols))
    return packed_nbytes(rows, cols, cfg.bits) + 4 * n_groups * per_group


@register(HQQ)
class HQQMethod(WeightFormatMethod):
    """HQQ: data-free; quantizes on the weight's own device with torch."""

    label = "HQQ"
    menu_position = 13
    controls = ("bits", "group_size")

    def config_from_controls(self, c: Controls) -> HQQ:
        """``HQQ(bits, group_size)`` from the explorer's knobs."""
        return HQQ(bits=c.bits, group_size=c.group_size)

    def weights(self, w: torch.Tensor, cfg: HQQ) -> tuple:
        qp = hqq_qparams(w, cfg)
        codes = hqq_quantize(w, qp)
        return codes, qp.scale, qp.zero, hqq_nbytes(tuple(w.shape), cfg), lambda: hqq_dequantize(codes, qp)

    def storage_nbytes(self, shape: tuple[int, int], cfg: HQQ) -> int:
        """Bytes stored for an ``(out, in)`` weight: :func:`hqq_nbytes`."""
        return hqq_nbytes(shape, cfg)

    def format_bits(self, cfg: HQQ, row_length: int) -> FormatBits:
        """Code bits plus a float16 scale and zero point per group (or row)."""
        per = {None: row_length, "tensor": None}.get(cfg.group_size, cfg.group_size)  # type: ignore[arg-type]
        if per is None:
            return FormatBits(cfg.label, float(cfg.bits), 0.0, "a float16 scale and zero point per tensor (negligible)")
        return FormatBits(cfg.label, float(cfg.bits), 32 / per,
                          f"a float16 scale and a float16 zero point per group of {per} weights")
