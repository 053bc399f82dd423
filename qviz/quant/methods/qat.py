"""Quantization-aware training: fake-quant layers with straight-through gradients, then a short distillation.

:class:`QATLinear` and :class:`QATConv2d` keep a float "shadow" weight as a trainable parameter
and use its quantized value in the forward: ``w_hat = w + (Q(w) - w).detach()``, so the
forward sees exactly the quantized weight (RTN conventions, min/max range per output channel
or group, recomputed each step) and the backward passes the gradient straight through to
``w`` (the straight-through estimator). With ``act_bits`` the input is fake-quantized too
(dynamic symmetric per token, also straight-through).

The fine-tune (:func:`qat_finetune`, run by the registered method's ``finalize``) distils the
quantized model towards the full-precision model's outputs on the calibration inputs: for
text encoders ``1 - cos`` between embeddings, for classifiers and decoders the KL divergence
of the output distributions. Only the quantized layers' weights and biases are trained. A
``tqdm.auto`` progress bar shows the loss. Afterwards the layers are frozen: the quantized
weight is computed once and used as is.

Examples
--------
>>> import torch
>>> from torch import nn
>>> q = QATLinear.from_float(nn.Linear(8, 4), bits=3)
>>> q(torch.randn(2, 8)).sum().backward()
>>> q.weight.grad.shape
torch.Size([4, 8])
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from qviz.quant.methods._common import layer_weight
from qviz.quant.config import QAT
from qviz.quant.granularity import granularity_of
from qviz.quant.modules import fake_quant_activation
from qviz.quant.method import FormatBits, LayerQuant, Method, register, scale_format_bits
from qviz.quant.primitives import check_bits, check_group_size, fake_quantize_ste, rtn_nbytes

__all__ = ["QATConv2d", "QATLinear", "QATMethod", "qat_finetune"]


class _QATMixin:
    bits: int
    group_size: int | None
    symmetric: bool
    act_bits: int | None
    frozen: bool

    def _setup(self, bits: int, group_size: int | None, symmetric: bool, act_bits: int | None) -> None:
        self.bits, self.group_size, self.symmetric, self.act_bits = bits, group_size, symmetric, act_bits
        self.frozen = False
        self.register_buffer("weight_frozen", None)  # type: ignore[attr-defined]

    def weight_2d(self) -> torch.Tensor:
        return self.weight.reshape(self.weight.shape[0], -1)  # type: ignore[attr-defined]  # [out, in]

    def quantized_weight(self) -> torch.Tensor:
        """The weight the forward uses, ``[out, in]`` (frozen: the stored one)."""
        if self.frozen:
            return self.weight_frozen.reshape(self.weight_frozen.shape[0], -1)  # type: ignore[attr-defined]
        return fake_quantize_ste(self.weight_2d(), granularity_of(self.group_size), self.bits, symmetric=self.symmetric)

    def _kernel_weight(self) -> torch.Tensor:
        return self.quantized_weight().reshape(self.weight.shape)  # type: ignore[attr-defined]

    def _act(self, x: torch.Tensor, channel_dim: int) -> torch.Tensor:
        return x if self.act_bits is None else fake_quant_activation(x, self.act_bits, "per-token", channel_dim)

    def freeze(self) -> None:
        """Compute the quantized weight once and use it from now on (training it no longer changes it)."""
        with torch.no_grad():
            w_hat = fake_quantize_ste(self.weight_2d().detach(), granularity_of(self.group_size), self.bits,
                                      symmetric=self.symmetric)
        self.weight_frozen = w_hat.reshape(self.weight.shape).clone()  # type: ignore[attr-defined]
        self.frozen = True

    kernel = "simulated (fake-quant), QAT"


class QATLinear(_QATMixin, nn.Linear):
    """A Linear trained with fake-quant weights (straight-through); replaces ``nn.Linear`` and GPT-2's ``Conv1D``.

    Examples
    --------
    >>> q = QATLinear.from_float(nn.Linear(4, 2), bits=4, group_size=2)
    >>> q.quantized_weight().shape
    torch.Size([2, 4])
    """

    @classmethod
    def from_float(cls, module: nn.Module, bits: int = 4, group_size: int | None = None, symmetric: bool = False,
                   act_bits: int | None = None) -> QATLinear:
        """A QAT copy of a Linear-like layer (its weight and bias copied, never shared)."""
        w = layer_weight(module)  # [out, in]
        check_group_size(group_size, tuple(w.shape), allow_tensor=False)
        bias = getattr(module, "bias", None)
        new = cls(w.shape[1], w.shape[0], bias is not None, device=w.device, dtype=module.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(w)
            if bias is not None:
                new.bias.copy_(bias.detach())
        new._setup(check_bits(bits), group_size, bool(symmetric), act_bits)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        return nn.functional.linear(self._act(x, -1), self._kernel_weight(), self.bias)


class QATConv2d(_QATMixin, nn.Conv2d):
    """A Conv2d trained with fake-quant weights (groups along the flattened ``in * kh * kw`` dim).

    Examples
    --------
    >>> q = QATConv2d.from_float(nn.Conv2d(1, 2, 3), bits=4)
    >>> q(torch.ones(1, 1, 5, 5)).shape
    torch.Size([1, 2, 3, 3])
    """

    @classmethod
    def from_float(cls, module: nn.Conv2d, bits: int = 4, group_size: int | None = None, symmetric: bool = False,
                   act_bits: int | None = None) -> QATConv2d:
        """A QAT copy of a Conv2d."""
        w = layer_weight(module)  # [out, in*kh*kw]
        check_group_size(group_size, tuple(w.shape), allow_tensor=False)
        new = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                  module.dilation, module.groups, module.bias is not None, module.padding_mode,
                  device=w.device, dtype=module.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(module.weight.detach())
            if module.bias is not None:
                new.bias.copy_(module.bias.detach())
        new._setup(check_bits(bits), group_size, bool(symmetric), act_bits)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, in, h, w] -> [batch, out, h', w']
        return self._conv_forward(self._act(x, 1), self._kernel_weight(), self.bias)


def qat_module(module: nn.Module, cfg: QAT) -> nn.Module:
    """The QAT replacement of a Linear / GPT-2 Conv1D / Conv2d layer."""
    from qviz.models import layer_type

    kind = layer_type(module)
    if kind == "linear":
        return QATLinear.from_float(module, cfg.bits, cfg.group_size, cfg.symmetric, cfg.act_bits)
    if kind == "conv2d":
        return QATConv2d.from_float(module, cfg.bits, cfg.group_size, cfg.symmetric, cfg.act_bits)
    raise TypeError(f"QAT handles Linear and Conv2d layers; got a {type(module).__name__}. Select others with layers=.")


# --------------------------------------------------------------------------- distillation


def _take(calib: Any, idx: torch.Tensor) -> Any:
    if isinstance(calib, (list, tuple)):
        return [calib[int(i)] for i in idx]
    if isinstance(calib, np.ndarray):
        calib = torch.from_numpy(calib)
    if isinstance(calib, torch.Tensor):
        return calib[idx]
    if isinstance(calib, dict):
        return {k: v[idx] for k, v in calib.items()}
    raise TypeError(
        f"QAT samples its training batches from the calibration data, which must be indexable: a list of texts, "
        f"a tensor, a numpy array or a dict of tensors; got {type(calib).__name__}."
    )


def _length(calib: Any) -> int:
    if isinstance(calib, dict):
        return len(next(iter(calib.values())))
    return len(calib)


def distillation_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Loss between student and teacher outputs: ``1 - cos`` (text encoders), KL of softmax (logits), else MSE.

    Examples
    --------
    >>> float(distillation_loss("image-classifier", torch.zeros(2, 3), torch.zeros(2, 3)))
    0.0
    """
    if kind == "text-encoder":
        return (1.0 - nn.functional.cosine_similarity(student, teacher, dim=-1)).mean()
    if kind in ("image-classifier", "decoder"):
        if mask is not None and student.dim() == 3:
            student, teacher = student[mask], teacher[mask]  # [real tokens, vocab]
        s = student.reshape(-1, student.shape[-1]).float()
        t = teacher.reshape(-1, teacher.shape[-1]).float()
        return nn.functional.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="batchmean")
    return nn.functional.mse_loss(student.float(), teacher.float())


def qat_finetune(
    model: Any,
    teacher: Any,
    calib: Any,
    params: list[torch.Tensor],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    progress: bool = True,
    seed: int = 0,
) -> list[float]:
    """Distil ``model`` (a QvizModel with QAT layers) towards ``teacher`` (a QvizModel) on ``calib``; returns the losses.

    Only ``params`` are optimised (Adam); the model stays in eval mode (no dropout).

    Examples
    --------
    >>> import qviz
    >>> fp = qviz.load(nn.Sequential(nn.Linear(4, 4)))
    >>> q = fp.with_module(nn.Sequential(QATLinear.from_float(fp.module[0], bits=2)))
    >>> losses = qat_finetune(q, fp, torch.randn(32, 4), list(q.module.parameters()), steps=5, lr=1e-2,
    ...                       batch_size=8, progress=False)
    >>> len(losses)
    5
    """
    n = _length(calib)
    if n == 0:
        raise ValueError("QAT got an empty calibration set; pass e.g. qviz.calibration_data(model, n=256).")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    trainable = {id(p) for p in params}
    frozen = [p for p in model.module.parameters() if id(p) not in trainable and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    losses: list[float] = []
    steps_iter: Any = range(steps)
    bar = None
    if progress and steps:
        from tqdm.auto import tqdm

        bar = tqdm(steps_iter, desc="QAT fine-tune", unit="step", leave=False)
        steps_iter = bar
    try:
        for _ in steps_iter:
            idx = torch.randperm(n, generator=gen)[: min(batch_size, n)]
            inputs = model.prepare(_take(calib, idx))
            with torch.no_grad():
                target = teacher.run(inputs)
            out = model.forward(inputs)
            loss = distillation_loss(model.kind, out, target, model.token_mask(inputs))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
    finally:
        for p in frozen:
            p.requires_grad_(True)
        if bar is not None:
            bar.close()
    return losses


def qat_loss_dataset(losses: list[float], cfg: QAT | None = None) -> xr.Dataset:
    """The fine-tune's loss per step as a Dataset (dim ``step``).

    Examples
    --------
    >>> qat_loss_dataset([0.5, 0.25]).loss.values.tolist()
    [0.5, 0.25]
    """
    return xr.Dataset(
        {"loss": ("step", np.asarray(losses, np.float64), {"long_name": "distillation loss", "units": "1"})},
        coords={"step": np.arange(len(losses))},
        attrs={} if cfg is None else {"config": cfg.to_json()},
    )


@register(QAT)
class QATMethod(Method):
    """QAT as a registered method: fake-quant layers in ``quantize_layer``, the distillation in ``finalize``.

    ``prepare`` keeps a frozen copy of the full-precision model as the teacher. After the
    fine-tune every QAT layer is frozen and the ``weight_hat`` of each layer's record is updated
    to the trained quantized weight. ``finalize`` returns ``{"qat": Dataset}`` with the loss per step.
    """

    replacement_types = (QATLinear, QATConv2d)
    needs_inputs = False
    sequential = False
    finalize_changes_layers = True
    layer_types = ("linear", "conv2d")

    def format_bits(self, cfg: QAT, row_length: int) -> FormatBits:
        """Packed codes and a float16 scale (and uint8 zero point) per group or row, as RTN stores them."""
        return scale_format_bits(cfg.label, cfg.bits, cfg.group_size, cfg.symmetric, row_length)

    def prepare(self, model: Any, cfg: QAT, calib: Any, layers: dict[str, nn.Module]) -> dict[str, Any]:
        from qviz.quant.methods._model import as_qviz_model
        from qviz.activations.engine import check_calib

        if cfg.steps > 0:
            check_calib(calib, "QAT (it fine-tunes on the calibration inputs)")
            _length(_take(calib, torch.arange(1)))  # indexable, or a clear TypeError now
        model = as_qviz_model(model)
        teacher = model.with_module(copy.deepcopy(model.module)) if cfg.steps > 0 else None
        return {"teacher": teacher, "modules": {}, "weight_hat": {}}

    def quantize_layer(self, name: str, module: nn.Module, cfg: QAT, inputs: Any, state: Any) -> LayerQuant:
        new = qat_module(module, cfg)
        with torch.no_grad():
            w_hat = new.quantized_weight().detach().clone()  # [out, in], updated after the fine-tune
        if state is not None:
            state["modules"][name] = new
            state["weight_hat"][name] = w_hat
        out, cols = w_hat.shape
        return LayerQuant(module=new, weight_hat=w_hat,
                          nbytes=rtn_nbytes((out, cols), cfg.bits, cfg.group_size, cfg.symmetric),
                          kernel=new.kernel, info={"qat_steps": float(cfg.steps)})

    def finalize(self, model: Any, cfg: QAT, calib: Any, state: Any) -> dict[str, Any]:
        from qviz.quant.methods._model import as_qviz_model

        state = state or {}
        modules: dict[str, nn.Module] = state.get("modules", {})
        losses: list[float] = []
        if cfg.steps > 0 and modules:
            params = [p for m in modules.values() for p in m.parameters()]
            losses = qat_finetune(as_qviz_model(model), state["teacher"], calib, params, steps=cfg.steps, lr=cfg.lr,
                                  batch_size=cfg.batch_size)
        for name, m in modules.items():
            m.freeze()
            with torch.no_grad():
                state["weight_hat"][name].copy_(m.quantized_weight())
        state["teacher"] = None
        return {"qat": qat_loss_dataset(losses, cfg)}
