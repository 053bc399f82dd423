"""The gradient loop every attack runs: gradients through the straight-through view, steps, projection onto the budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from qviz.models import QvizModel
from qviz.robustness._checks import as_qviz
from qviz.robustness.straight_through import straight_through


def _no_gradient_error(model: QvizModel, ste: bool) -> ValueError:
    hint = (
        "Pass ste=True so qviz's quantized layers get straight-through gradients"
        if not ste
        else "Its layers are not differentiable and qviz found no quantized layer it can wrap"
    )
    return ValueError(
        f"The model {model.name!r} has no gradient with respect to its input, so a white-box attack "
        f"cannot run on it. {hint}; or craft the attack on the full-precision model and apply it "
        "to this one (a transfer attack: robustness.pgd(fp_model, ...), then evaluate on this model)."
    )


def grad_of(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, model: QvizModel, ste: bool) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = loss_fn(x)  # [batch]
    if not loss.requires_grad:
        raise _no_gradient_error(model, ste)
    (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
    if grad is None:
        raise _no_gradient_error(model, ste)
    if not torch.isfinite(grad).all():
        raise FloatingPointError(
            f"The input gradient of {model.name!r} has {int((~torch.isfinite(grad)).sum())} NaN/Inf values, so the "
            "attack step is undefined. Check the model's forward in float32 (an overflowing float16 layer?)."
        )
    return grad.detach()


def _per_example(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A scalar or [batch] tensor shaped to broadcast against ``like`` [batch, ...]."""
    t = t.to(like.dtype)
    if t.dim() == 0:
        return t
    if t.shape[0] != like.shape[0]:
        raise ValueError(f"eps has {t.shape[0]} values but the batch has {like.shape[0]} inputs; pass one per input or a single number.")
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).reshape(-1, *([1] * (t.dim() - 1)))  # [batch, 1, ...]


def _project(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, eps), -eps)
    factor = torch.clamp(eps / _flat_norm(delta).clamp_min(1e-30), max=1.0)
    return delta * factor


def run_attack(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    eps: torch.Tensor,
    alpha: torch.Tensor,
    steps: int,
    norm: str,
    clamp: tuple[float, float] | None,
    random_start: bool,
    seed: int,
    model: QvizModel,
    ste: bool,
) -> torch.Tensor:
    """Projected gradient ascent on ``loss_fn`` (per-example losses [batch]) around ``x``."""
    eps_b, alpha_b = _per_example(eps, x), _per_example(alpha, x)
    x0 = x.detach()
    x_adv = x0.clone()
    if random_start:
        gen = torch.Generator().manual_seed(seed)
        noise = torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1  # [batch, ...] in [-1, 1]
        if norm == "l2":
            noise = noise / _flat_norm(noise).clamp_min(1e-30) * torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=gen, dtype=x.dtype)
        x_adv = x0 + noise.to(x.device) * eps_b
        if clamp is not None:
            x_adv = x_adv.clamp(*clamp)
    for _ in range(steps):
        grad = grad_of(loss_fn, x_adv, model, ste)
        if norm == "linf":
            step = grad.sign()
        else:
            step = grad / (_flat_norm(grad) + 1e-10)
        x_adv = x_adv.detach() + alpha_b * step
        x_adv = x0 + _project(x_adv - x0, eps_b, norm)
        if clamp is not None:
            x_adv = x_adv.clamp(*clamp)
    return x_adv.detach()


def gradient_model(model: Any, ste: bool, reference: Any = None) -> QvizModel:
    qm = as_qviz(model)
    if not isinstance(ste, bool):
        raise TypeError(f"ste must be True or False; got {ste!r}.")
    return straight_through(qm, reference) if ste else qm


def ce_loss(gm: QvizModel, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def loss(x: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(gm.forward(x), y, reduction="none")  # [batch]

    return loss


class EvalMode:
    """Put a module in eval mode for an attack and restore its mode after (also on error)."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.was = module, module.training

    def __enter__(self) -> None:
        self.module.eval()

    def __exit__(self, *exc: Any) -> None:
        self.module.train(self.was)
