"""Attacks on image classifiers (FGSM, PGD; L-inf and L2) and their success rate."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from qviz.models import QvizModel
from qviz.robustness._checks import as_qviz, check_clamp, check_eps, check_in_clamp, check_norm, check_steps, check_xy
from qviz.robustness.attack import EvalMode, ce_loss, gradient_model, run_attack


def pgd(
    model: QvizModel | nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | Sequence[float] | torch.Tensor,
    alpha: float | None = None,
    steps: int = 10,
    *,
    norm: str = "linf",
    random_start: bool = False,
    seed: int = 0,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    ste: bool = True,
    reference: QvizModel | nn.Module | None = None,
) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018): maximise the cross-entropy within an ε-ball.

    Each step moves ``alpha`` along the sign of the gradient (L∞) or the
    gradient over its L2 norm (L2), then projects back onto the ball around
    ``x`` and into ``clamp``. This is the update torchattacks' ``PGD`` /
    ``PGDL2`` use, so with ``random_start=False`` the two agree.

    Parameters
    ----------
    model
        A classifier returning logits ``[batch, classes]``; a quantized model
        is attacked through straight-through gradients (``ste=True``).
    x, y
        Inputs ``[batch, ...]`` and integer labels ``[batch]``.
    eps
        Radius of the ball (>= 0): one number, or one per input ``[batch]``.
    alpha
        Step size; default ``2.5 * eps / steps``.
    steps
        Number of steps.
    norm
        ``"linf"`` or ``"l2"``.
    random_start
        Start from a uniform random point in the ball (seeded by ``seed``).
    clamp
        Valid input range, or None. Inputs outside it are refused (``ValueError``): pass the
        range your data lives in (digits pixels 0..16: ``clamp=(0, 16)``).
    ste
        Wrap quantized layers with :func:`straight_through`.
    reference
        Full-precision model with the same layer names (for quantized convolutions).

    Returns
    -------
    torch.Tensor
        Adversarial inputs, shaped like ``x``; ``x`` is not changed.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    >>> x_adv = pgd(net, x, y, eps=0.1, steps=3)
    >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-6)
    True
    """
    x, y = check_xy(x, y)
    eps_t = check_eps(eps)
    norm, steps, clamp = check_norm(norm), check_steps(steps), check_clamp(clamp)
    check_in_clamp(x, clamp)
    alpha_t = 2.5 * eps_t / steps if alpha is None else check_eps(alpha, "alpha")
    gm = gradient_model(model, ste, reference)
    with EvalMode(gm.module):
        return run_attack(ce_loss(gm, y), x, eps_t, alpha_t, steps, norm, clamp, random_start, seed, gm, ste)


def fgsm(
    model: QvizModel | nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | Sequence[float] | torch.Tensor,
    *,
    norm: str = "linf",
    clamp: tuple[float, float] | None = (0.0, 1.0),
    ste: bool = True,
    reference: QvizModel | nn.Module | None = None,
) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size ε.

    L∞: ``x + eps * sign(∇)``; L2 (the fast gradient method): ``x + eps * ∇/‖∇‖``.
    Arguments as in :func:`pgd`.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> x_adv = fgsm(net, torch.full((1, 1, 2, 2), 0.5), torch.tensor([2]), eps=0.1)
    >>> sorted(set((x_adv - 0.5).abs().flatten().round(decimals=4).tolist()))
    [0.1]
    """
    x, y = check_xy(x, y)
    eps_t = check_eps(eps)
    norm, clamp = check_norm(norm), check_clamp(clamp)
    check_in_clamp(x, clamp)
    gm = gradient_model(model, ste, reference)
    with EvalMode(gm.module):
        return run_attack(ce_loss(gm, y), x, eps_t, eps_t, 1, norm, clamp, False, 0, gm, ste)


@torch.no_grad()
def _predict(model: QvizModel, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    out = [model.run(x[i : i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def success_rate(
    model: QvizModel | nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
) -> float:
    """Share of the inputs ``model`` classifies correctly whose prediction the attack flips.

    Inputs the model already gets wrong are left out (there is nothing to
    flip); NaN when it gets none right.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> x = torch.rand(8, 1, 2, 2)
    >>> y = net(x).argmax(-1)
    >>> success_rate(net, x, x, y)
    0.0
    """
    flipped, correct = success_counts(model, x, x_adv, y)
    return flipped / correct if correct else float("nan")


def success_counts(
    model: QvizModel | nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
) -> tuple[int, int]:
    """``(flipped, correct)``: the counts behind :func:`success_rate` (its sample size is ``correct``).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> x = torch.rand(8, 1, 2, 2)
    >>> success_counts(net, x, x, net(x).argmax(-1))
    (0, 8)
    """
    qm = as_qviz(model)
    x, y = check_xy(x, y)
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv must have the shape of x {tuple(x.shape)}; got {tuple(x_adv.shape)}.")
    correct = _predict(qm, x) == y
    flipped = _predict(qm, x_adv) != y
    return int((flipped & correct).sum()), int(correct.sum())
