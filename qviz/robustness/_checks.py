"""Input checks shared by the attacks: budgets, norms, steps, clamps, models and batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from qviz.models import QvizModel, check_finite_inputs, load

NORMS = ("linf", "l2")


def check_eps(eps: Any, name: str = "eps") -> torch.Tensor:
    """eps as a float64 tensor (scalar or per example), finite and >= 0."""
    try:
        t = torch.as_tensor(eps, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a number >= 0 (or one per input); got {eps!r}.") from err
    if t.dim() > 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a number or a 1-D sequence of numbers, one per input; got shape {tuple(t.shape)}.")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite; got {eps!r}.")
    if (t < 0).any():
        bad = float(t.min())
        raise ValueError(
            f"{name} must be >= 0 (the size of the perturbation); got {bad:g}. "
            f"Pass e.g. {name}=0.1 for an L∞ attack on images in [0, 1]."
        )
    return t


def check_norm(norm: Any) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; got {norm!r}. Use 'linf' for images, 'l2' for embeddings.")
    return norm


def check_steps(steps: Any) -> int:
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int (number of gradient steps); got {steps!r}. 10 is common.")
    return int(steps)


def check_clamp(clamp: Any) -> tuple[float, float] | None:
    if clamp is None:
        return None
    try:
        lo, hi = (float(v) for v in clamp)
    except (TypeError, ValueError) as err:
        raise TypeError(f"clamp must be None or a pair (low, high); got {clamp!r}.") from err
    if not lo < hi:
        raise ValueError(f"clamp must be (low, high) with low < high; got {clamp!r}.")
    return lo, hi


def check_in_clamp(x: torch.Tensor, clamp: tuple[float, float] | None) -> None:
    """Refuse inputs outside ``clamp``: the attack would clip them before its first step."""
    if clamp is None:
        return
    lo, hi = float(x.min()), float(x.max())
    if lo < clamp[0] or hi > clamp[1]:
        raise ValueError(
            f"x has values from {lo:g} to {hi:g}, outside clamp={clamp}: the attack would clip the clean inputs "
            f"to that range before its first step, and every such input would count as attacked. Pass the valid "
            f"range of your data, e.g. clamp=({min(lo, 0.0):g}, {hi:g}), or clamp=None (no range), or scale x "
            f"into {clamp}."
        )


def as_qviz(model: Any) -> QvizModel:
    if isinstance(model, QvizModel):
        return model
    if isinstance(model, nn.Module):
        return load(model)
    raise TypeError(
        f"Expected a qviz model (qviz.load(...) or qviz.quantize(...)) or a torch.nn.Module; "
        f"got {type(model).__name__}."
    )


def check_xy(x: Any, y: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(
            f"x must be a floating-point tensor of inputs (e.g. images [batch, 1, 8, 8]); got "
            f"{type(x).__name__}{'' if not isinstance(x, torch.Tensor) else ' of dtype ' + str(x.dtype)}."
        )
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch [batch, ...]; got shape {tuple(x.shape)}.")
    check_finite_inputs({"x": x})
    if y is not None:
        if isinstance(y, np.ndarray):
            y = torch.from_numpy(y)
        if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"y must be an integer tensor of class labels [batch]; got {type(y).__name__}.")
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape [batch] = ({x.shape[0]},); got {tuple(y.shape)}.")
        y = y.long()
    return x, y
