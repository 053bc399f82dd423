"""Adversarial robustness of full-precision and quantized models.

White-box attacks need the gradient of the loss with respect to the input.
A quantized layer has none worth following: rounding is flat almost
everywhere, and real low-bit kernels (bitsandbytes, torch's dynamic int8)
are not differentiable at all. :func:`straight_through` therefore wraps each
quantized layer so that its forward value is the quantized layer's own
output while its backward is that of a float layer holding the
*dequantized* weight (the straight-through estimator). Every attack here
uses it by default (``ste=True``); a transfer attack instead crafts the
perturbation on the full-precision model and applies it to the quantized one.

What is here
------------
* :func:`fgsm`, :func:`pgd`: L∞ and L2 attacks on image classifiers
  (``digits-cnn``); inputs stay in ``clamp`` (``[0, 1]`` by default).
* :func:`success_rate`: among inputs the model gets right, the share whose
  prediction flips under attack.
* :func:`embedding_pgd`: an L2 attack in the input-embedding space of a text
  encoder (``minilm``) against nearest-neighbour retrieval; success means the
  retrieved item changes from the right one.
* :func:`token_substitution`: a discrete, gradient-guided attack (HotFlip,
  Ebrahimi et al. 2018) that swaps whole tokens of the query.
* :func:`error_amplification`: per-layer ``‖Δactivation‖ / ‖Δinput‖``, the
  quantity Lin, Gan and Han ("Defensive Quantization", ICLR 2019) show grows
  through a quantized network.

Examples
--------
>>> import qviz
>>> from qviz import robustness
>>> model = qviz.load("digits-cnn")                                   # doctest: +SKIP
>>> x, y = qviz.eval_data(model, n=64)                                # doctest: +SKIP
>>> x_adv = robustness.pgd(model, x, y, eps=0.1, alpha=0.02, steps=10)  # doctest: +SKIP
>>> robustness.success_rate(model, x, x_adv, y)                       # doctest: +SKIP
0.53...
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.nn import functional as F

from qviz._hooks import hooks
from qviz.models import QvizModel, as_module, load

NORMS = ("linf", "l2")

__all__ = [
    "NORMS",
    "dequantized_weight",
    "embedding_pgd",
    "error_amplification",
    "fgsm",
    "pgd",
    "retrieval_success_counts",
    "retrieval_success_rate",
    "straight_through",
    "success_counts",
    "success_rate",
    "token_substitution",
]


# --------------------------------------------------------------------------- checks


def _check_eps(eps: Any, name: str = "eps") -> torch.Tensor:
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


def _check_norm(norm: Any) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; got {norm!r}. Use 'linf' for images, 'l2' for embeddings.")
    return norm


def _check_steps(steps: Any) -> int:
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int (number of gradient steps); got {steps!r}. 10 is common.")
    return int(steps)


def _check_clamp(clamp: Any) -> tuple[float, float] | None:
    if clamp is None:
        return None
    try:
        lo, hi = (float(v) for v in clamp)
    except (TypeError, ValueError) as err:
        raise TypeError(f"clamp must be None or a pair (low, high); got {clamp!r}.") from err
    if not lo < hi:
        raise ValueError(f"clamp must be (low, high) with low < high; got {clamp!r}.")
    return lo, hi


def _check_in_clamp(x: torch.Tensor, clamp: tuple[float, float] | None) -> None:
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


def _as_qviz(model: Any) -> QvizModel:
    if isinstance(model, QvizModel):
        return model
    if isinstance(model, nn.Module):
        return load(model)
    raise TypeError(
        f"Expected a qviz model (qviz.load(...) or qviz.quantize(...)) or a torch.nn.Module; "
        f"got {type(model).__name__}."
    )


def _check_batch(x: Any, y: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(
            f"x must be a floating-point tensor of inputs (e.g. images [batch, 1, 8, 8]); got "
            f"{type(x).__name__}{'' if not isinstance(x, torch.Tensor) else ' of dtype ' + str(x.dtype)}."
        )
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch [batch, ...]; got shape {tuple(x.shape)}.")
    from qviz.models import check_finite_inputs

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


# --------------------------------------------------------------------------- straight-through gradients


def _bnb_types() -> tuple[type, ...]:
    # A model can only hold bitsandbytes modules once bitsandbytes is imported;
    # looking it up in sys.modules spares the slow import otherwise.
    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:
        return ()
    return (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)


def _is_torch_quantized(module: nn.Module) -> bool:
    return type(module).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized"))


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The float weight a quantized layer effectively applies, as ``[out, in]`` float32.

    Knows bitsandbytes ``Linear8bitLt`` / ``Linear4bit``, torch's dynamic int8
    ``Linear``, qviz's quantized layers (anything exposing ``dequantized_weight()``
    or a ``weight_hat`` tensor) and plain float layers.

    Examples
    --------
    >>> from torch import nn
    >>> dequantized_weight(nn.Linear(3, 2)).shape
    torch.Size([2, 3])
    """
    from qviz.models import weight_matrix

    if hasattr(module, "dequantized_weight") and callable(module.dequantized_weight):
        w = module.dequantized_weight()
        return w.detach().float().reshape(w.shape[0], -1)
    w_hat = getattr(module, "weight_hat", None)
    if callable(w_hat) and not isinstance(w_hat, torch.Tensor):
        w_hat = w_hat()  # qviz PackedLinear: dequantize the packed codes
    if isinstance(w_hat, torch.Tensor):
        return w_hat.detach().float().reshape(w_hat.shape[0], -1)
    bnb_types = _bnb_types()
    if bnb_types and isinstance(module, bnb_types[0]):
        w = module.weight
        # After its first forward, Linear8bitLt moves the row scales from the weight to its state.
        state = getattr(module, "state", None)
        scb = getattr(w, "SCB", None)
        if scb is None and state is not None:
            scb = getattr(state, "SCB", None)
        if w.dtype != torch.int8:  # not quantized yet: fp16/32 weights
            return w.detach().float()
        if scb is None:
            raise TypeError("This bitsandbytes Linear8bitLt has int8 weights but no row scales (SCB); cannot dequantize it.")
        return w.detach().float() * (scb.float().unsqueeze(1) / 127.0)  # [out, in]
    if bnb_types and isinstance(module, bnb_types[1]):
        import bitsandbytes.functional as bf

        w = module.weight
        if getattr(w, "quant_state", None) is None:
            return w.detach().float()
        return bf.dequantize_4bit(w.data, w.quant_state).float().reshape(module.out_features, module.in_features)
    if _is_torch_quantized(module) and callable(getattr(module, "weight", None)):
        return module.weight().dequantize().float()  # [out, in]
    if isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.is_floating_point():
        return weight_matrix(module).float()
    raise TypeError(
        f"Cannot read a dequantized weight from a {type(module).__name__}. qviz knows bitsandbytes "
        "Linear8bitLt/Linear4bit, torch dynamic int8 Linear, float layers, and modules with a "
        "dequantized_weight() method or a weight_hat tensor; give your module one of those."
    )


def _bias(module: nn.Module) -> torch.Tensor | None:
    b = getattr(module, "bias", None)
    if callable(b):  # torch quantized Linear: bias() method
        b = b()
    if isinstance(b, torch.Tensor):
        return b.detach().float()
    return None


class _StraightThrough(nn.Module):
    """Forward: the quantized layer's own output. Backward: a float layer with the dequantized weight."""

    def __init__(self, quantized: nn.Module, reference: nn.Module | None) -> None:
        super().__init__()
        self.quantized = quantized
        w = dequantized_weight(quantized)  # [out, in]
        if reference is not None and isinstance(reference, (nn.Conv1d, nn.Conv2d)):
            w = w.reshape(reference.weight.shape)
        self.register_buffer("w_hat", w, persistent=False)
        bias = _bias(quantized)
        self.register_buffer("b", bias, persistent=False)
        self.reference = reference

    def _surrogate(self, x: torch.Tensor) -> torch.Tensor:
        ref = self.reference
        w, b = self.w_hat.to(x.dtype), None if self.b is None else self.b.to(x.dtype)
        if isinstance(ref, nn.Conv2d):
            return F.conv2d(x, w, b, ref.stride, ref.padding, ref.dilation, ref.groups)
        if isinstance(ref, nn.Conv1d):
            return F.conv1d(x, w, b, ref.stride, ref.padding, ref.dilation, ref.groups)
        return F.linear(x, w, b)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.no_grad():
            y_q = self.quantized(x, *args, **kwargs)
        y_s = self._surrogate(x)
        return y_s + (y_q.to(y_s.dtype) - y_s).detach()


def _needs_wrap(module: nn.Module) -> bool:
    """True for a quantized layer whose forward has no useful input gradient.

    qviz's fake-quant layers keep a float weight and pass activation rounding
    straight through already; bitsandbytes, torch's quantized modules and
    packed layers do not.
    """
    bnb_types = _bnb_types()
    if bnb_types and isinstance(module, bnb_types):
        return True
    if _is_torch_quantized(module):
        return hasattr(module, "weight")
    w = getattr(module, "weight", None)
    return not (isinstance(w, torch.Tensor) and w.is_floating_point())


def _quantized_layer_names(model: QvizModel) -> list[str]:
    """Names of the quantized layers that need a straight-through wrapper (qviz's record, else by type)."""
    record = getattr(model, "quantization", None)
    listed = list(getattr(record, "layers", {}) or {})
    modules = dict(model.module.named_modules())
    names = [n for n in listed if n in modules and _needs_wrap(modules[n])]
    bnb_types = _bnb_types()
    for name, sub in modules.items():
        if not name or name in names:
            continue
        if (bnb_types and isinstance(sub, bnb_types)) or (_is_torch_quantized(sub) and hasattr(sub, "weight")):
            names.append(name)
    return names


def _swap(root: nn.Module, replacements: dict[str, nn.Module]) -> nn.Module:
    """A new module tree with some submodules replaced; ``root`` and its parameters are untouched.

    Only the modules on the path to a replaced name are shallow-copied; everything
    else (and every parameter) is shared with ``root``.
    """
    if "" in replacements:
        return replacements[""]
    new_root = copy.copy(root)
    new_root._modules = dict(root._modules)
    by_head: dict[str, dict[str, nn.Module]] = {}
    for name, mod in replacements.items():
        head, _, rest = name.partition(".")
        by_head.setdefault(head, {})[rest] = mod
    for head, sub in by_head.items():
        if head not in new_root._modules:
            raise KeyError(head)
        new_root._modules[head] = _swap(root._modules[head], sub)
    return new_root


def straight_through(model: QvizModel | nn.Module, reference: QvizModel | nn.Module | None = None) -> QvizModel:
    """A view of ``model`` whose quantized layers pass straight-through gradients.

    Each quantized layer (qviz's record, bitsandbytes modules, torch dynamic
    int8 Linear) is wrapped so the forward value is exactly the quantized
    layer's output and the backward is that of a float layer with the
    dequantized weight. ``model`` is not changed: only the containers on the
    path to a wrapped layer are copied, parameters are shared. A model with no
    quantized layer is returned as is.

    Parameters
    ----------
    model
        A quantized :class:`~qviz.QvizModel` (or module).
    reference
        The full-precision model with the same layer names; used to read
        convolution settings (stride, padding) for quantized conv layers.

    Examples
    --------
    >>> import torch, qviz
    >>> from torch import nn
    >>> net = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(4, 2)), {nn.Linear})  # doctest: +SKIP
    >>> st = straight_through(net)                                         # doctest: +SKIP
    >>> x = torch.randn(1, 4, requires_grad=True)                          # doctest: +SKIP
    >>> st.forward(x).sum().backward(); x.grad is not None                 # doctest: +SKIP
    True
    """
    qm = _as_qviz(model)
    names = _quantized_layer_names(qm)
    if not names:
        return qm
    ref_modules = dict(as_module(reference).named_modules()) if reference is not None else {}
    own = dict(qm.module.named_modules())
    wrapped = {}
    for name in names:
        ref = ref_modules.get(name)
        if ref is None and isinstance(own[name], (nn.Conv1d, nn.Conv2d)):
            ref = own[name]
        wrapped[name] = _StraightThrough(own[name], ref)
    return qm.with_module(_swap(qm.module, wrapped), name=qm.name)


# --------------------------------------------------------------------------- the attack loop


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


def _grad_of(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, model: QvizModel, ste: bool) -> torch.Tensor:
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


def _attack(
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
        grad = _grad_of(loss_fn, x_adv, model, ste)
        if norm == "linf":
            step = grad.sign()
        else:
            step = grad / (_flat_norm(grad) + 1e-10)
        x_adv = x_adv.detach() + alpha_b * step
        x_adv = x0 + _project(x_adv - x0, eps_b, norm)
        if clamp is not None:
            x_adv = x_adv.clamp(*clamp)
    return x_adv.detach()


def _gradient_model(model: Any, ste: bool, reference: Any = None) -> QvizModel:
    qm = _as_qviz(model)
    if not isinstance(ste, bool):
        raise TypeError(f"ste must be True or False; got {ste!r}.")
    return straight_through(qm, reference) if ste else qm


def _ce_loss(gm: QvizModel, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def loss(x: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(gm.forward(x), y, reduction="none")  # [batch]

    return loss


class _EvalMode:
    """Put a module in eval mode for an attack and restore its mode after (also on error)."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.was = module, module.training

    def __enter__(self) -> None:
        self.module.eval()

    def __exit__(self, *exc: Any) -> None:
        self.module.train(self.was)


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
    x, y = _check_batch(x, y)
    eps_t = _check_eps(eps)
    norm, steps, clamp = _check_norm(norm), _check_steps(steps), _check_clamp(clamp)
    _check_in_clamp(x, clamp)
    alpha_t = 2.5 * eps_t / steps if alpha is None else _check_eps(alpha, "alpha")
    gm = _gradient_model(model, ste, reference)
    with _EvalMode(gm.module):
        return _attack(_ce_loss(gm, y), x, eps_t, alpha_t, steps, norm, clamp, random_start, seed, gm, ste)


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
    x, y = _check_batch(x, y)
    eps_t = _check_eps(eps)
    norm, clamp = _check_norm(norm), _check_clamp(clamp)
    _check_in_clamp(x, clamp)
    gm = _gradient_model(model, ste, reference)
    with _EvalMode(gm.module):
        return _attack(_ce_loss(gm, y), x, eps_t, eps_t, 1, norm, clamp, False, 0, gm, ste)


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
    qm = _as_qviz(model)
    x, y = _check_batch(x, y)
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv must have the shape of x {tuple(x.shape)}; got {tuple(x_adv.shape)}.")
    correct = _predict(qm, x) == y
    flipped = _predict(qm, x_adv) != y
    return int((flipped & correct).sum()), int(correct.sum())


# --------------------------------------------------------------------------- text: retrieval attacks


def _check_retrieval(model: QvizModel, queries: Any, index: Any, targets: Any) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    if model.kind != "text-encoder":
        raise ValueError(
            f"Retrieval attacks need a text encoder (kind 'text-encoder', e.g. qviz.load('minilm')); "
            f"{model.name!r} is a {model.kind!r}."
        )
    if isinstance(queries, str) or not isinstance(queries, Sequence) or not queries or not all(isinstance(q, str) for q in queries):
        raise TypeError("queries must be a non-empty list of strings.")
    if not isinstance(index, torch.Tensor) or index.dim() != 2:
        raise TypeError(f"index must be a [n_items, dim] tensor of item embeddings; got {type(index).__name__}.")
    targets = torch.as_tensor(targets, dtype=torch.long)
    if targets.shape != (len(queries),):
        raise ValueError(f"targets must have one index per query ({len(queries)}); got shape {tuple(targets.shape)}.")
    if (targets < 0).any() or (targets >= index.shape[0]).any():
        raise ValueError(f"targets must index rows of index (0 .. {index.shape[0] - 1}).")
    return list(queries), index.detach().float(), targets


def _embed_inputs(model: QvizModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    emb = model.module.get_input_embeddings()
    with torch.no_grad():
        return emb(inputs["input_ids"]).float()  # [batch, tokens, dim]


def _retrieval_loss(gm: QvizModel, mask: torch.Tensor, index: torch.Tensor, targets: torch.Tensor, temperature: float) -> Callable:
    def loss(e: torch.Tensor) -> torch.Tensor:  # e: [batch, tokens, dim]
        q = gm.forward({"inputs_embeds": e, "attention_mask": mask})  # [batch, dim]
        logits = q @ index.t() / temperature  # [batch, n_items]
        return F.cross_entropy(logits, targets, reduction="none")

    return loss


@torch.no_grad()
def _retrieve(model: QvizModel, inputs: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    q = model.run(inputs)  # [batch, dim]
    return (q.float() @ index.t()).argmax(-1)  # [batch]


def embedding_pgd(
    model: QvizModel,
    queries: Sequence[str],
    index: torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    eps: float | Sequence[float] | torch.Tensor,
    *,
    steps: int = 5,
    alpha: float | None = None,
    temperature: float = 0.05,
    ste: bool = True,
    delta: torch.Tensor | None = None,
) -> dict[str, Any]:
    """L2 PGD in a text encoder's input-embedding space against nearest-neighbour retrieval.

    The query's word embeddings ``e`` (``[tokens, dim]`` per query) get a
    perturbation ``δ`` with ``‖δ‖₂ ≤ ε`` over the whole query (padding
    excluded), chosen to push the query's embedding away from its right item
    ``index[target]`` (cross-entropy over cosine similarities / temperature).
    Success (:func:`retrieval_success_rate`) means the top-1 item is no longer
    the right one.

    Parameters
    ----------
    model
        Text encoder (``kind="text-encoder"``); a quantized one is attacked
        through straight-through gradients.
    queries
        Query texts.
    index
        ``[n_items, dim]`` item embeddings (unit norm), the retrieval corpus.
    targets
        The right item of each query, ``[n_queries]``.
    eps
        L2 radius: one number or one per query.
    steps, alpha, temperature
        PGD steps, step size (default ``2.5 * eps / steps``) and softmax temperature.
    delta
        Apply this perturbation ``[n_queries, tokens, dim]`` instead of crafting one
        (a transfer attack: pass ``result["delta"]`` crafted on another model).

    Returns
    -------
    dict
        ``inputs`` (prepared inputs with ``inputs_embeds``), ``delta`` (the
        perturbation ``[n_queries, tokens, dim]``) and ``clean`` (the clean prepared inputs).

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("minilm")                                              # doctest: +SKIP
    >>> idx = m.outputs(["a cat sat", "stocks fell"])                        # doctest: +SKIP
    >>> adv = embedding_pgd(m, ["the cat"], idx, [0], eps=2.0)               # doctest: +SKIP
    >>> retrieval_success_rate(m, adv["clean"], adv["inputs"], idx, [0])     # doctest: +SKIP
    """
    qm = _as_qviz(model)
    queries, index, targets = _check_retrieval(qm, queries, index, targets)
    eps_t = _check_eps(eps)
    steps = _check_steps(steps)
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a positive number; got {temperature!r}.")
    alpha_t = 2.5 * eps_t / steps if alpha is None else _check_eps(alpha, "alpha")
    clean = qm.prepare(queries)
    mask = clean["attention_mask"]
    e0 = _embed_inputs(qm, clean)  # [batch, tokens, dim]
    keep = mask.unsqueeze(-1).to(e0.dtype)  # [batch, tokens, 1]
    if delta is not None:
        if delta.shape != e0.shape:
            raise ValueError(f"delta must have shape {tuple(e0.shape)} (queries, tokens, dim); got {tuple(delta.shape)}.")
        e_adv = e0 + delta.to(e0.dtype) * keep
    else:
        gm = _gradient_model(qm, ste)
        base = _retrieval_loss(gm, mask, index, targets, float(temperature))

        def masked_loss(e: torch.Tensor) -> torch.Tensor:
            return base(e0 + (e - e0) * keep)

        with _EvalMode(gm.module):
            e_adv = _attack(masked_loss, e0, eps_t, alpha_t, steps, "l2", None, False, 0, gm, ste)
        e_adv = e0 + (e_adv - e0) * keep
    inputs = {"inputs_embeds": e_adv, "attention_mask": mask}
    return {"inputs": inputs, "delta": (e_adv - e0).detach(), "clean": clean}


def retrieval_success_rate(
    model: QvizModel, clean: dict[str, torch.Tensor], adversarial: dict[str, torch.Tensor], index: torch.Tensor, targets: Any
) -> float:
    """Share of queries retrieved right on clean inputs whose top-1 item changes under attack.

    ``clean`` and ``adversarial`` are prepared inputs (token ids, or
    ``inputs_embeds`` as :func:`embedding_pgd` returns). For a transfer
    attack whose perturbation was crafted with another model's embeddings,
    pass the crafted ``delta`` back through :func:`embedding_pgd` so it is
    added to this model's own embeddings.

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("minilm")                                              # doctest: +SKIP
    >>> retrieval_success_rate(m, clean, adv, idx, targets)                  # doctest: +SKIP
    0.4
    """
    moved, right = retrieval_success_counts(model, clean, adversarial, index, targets)
    return moved / right if right else float("nan")


def retrieval_success_counts(
    model: QvizModel, clean: dict[str, torch.Tensor], adversarial: dict[str, torch.Tensor], index: torch.Tensor, targets: Any
) -> tuple[int, int]:
    """``(moved, right)``: the counts behind :func:`retrieval_success_rate` (its sample size is ``right``).

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("minilm")                                              # doctest: +SKIP
    >>> retrieval_success_counts(m, clean, adv, idx, targets)                # doctest: +SKIP
    (4, 10)
    """
    qm = _as_qviz(model)
    targets = torch.as_tensor(targets, dtype=torch.long)
    right = _retrieve(qm, clean, index.float()) == targets
    moved = _retrieve(qm, adversarial, index.float()) != targets
    return int((moved & right).sum()), int(right.sum())


def token_substitution(
    model: QvizModel,
    queries: Sequence[str],
    index: torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    max_tokens: int = 3,
    *,
    temperature: float = 0.05,
    ste: bool = True,
    candidates: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Gradient-guided token substitution (HotFlip) against nearest-neighbour retrieval.

    Greedy: at each of ``max_tokens`` rounds, the first-order estimate of the
    loss change of replacing token ``t`` at position ``i`` by ``v``,
    ``(E[v] - e_i) · ∇_{e_i}``, picks one (position, token) per query among
    positions not yet changed (special tokens and padding are never touched);
    the swap is applied to the discrete tokens and the real model decides. A
    query counts as flipped at ``k`` swaps once its top-1 item has changed.

    Parameters
    ----------
    max_tokens
        Largest number of swapped tokens per query (>= 1).
    candidates
        Token ids allowed as replacements; default: every whole-word,
        alphabetic token of the vocabulary.

    Returns
    -------
    dict
        ``input_ids`` after each round ``[max_tokens, n_queries, tokens]``,
        ``flipped`` ``[max_tokens, n_queries]`` bool (cumulative), ``right``
        ``[n_queries]`` (retrieved right when clean), ``success`` ``[max_tokens]``
        (share of the right queries flipped with at most k swaps).

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("minilm")                                              # doctest: +SKIP
    >>> out = token_substitution(m, ["the cat sat"], idx, [0], max_tokens=2)  # doctest: +SKIP
    >>> out["success"].shape                                                 # doctest: +SKIP
    torch.Size([2])
    """
    qm = _as_qviz(model)
    queries, index, targets = _check_retrieval(qm, queries, index, targets)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an int >= 1 (how many tokens may be swapped); got {max_tokens!r}.")
    clean = qm.prepare(queries)
    ids = clean["input_ids"].clone()  # [batch, tokens]
    mask = clean["attention_mask"]
    emb = qm.module.get_input_embeddings()
    table = emb.weight.detach().float()  # [vocab, dim]
    if candidates is None:
        candidates = _word_tokens(qm)
    special = torch.tensor(sorted(set(getattr(qm.tokenizer, "all_special_ids", []) or [])), dtype=torch.long)
    editable = mask.bool() & ~torch.isin(ids, special)  # [batch, tokens]
    gm = _gradient_model(qm, ste)
    loss_fn = _retrieval_loss(gm, mask, index, targets, float(temperature))
    cand_table = table[candidates]  # [n_cand, dim]
    right = _retrieve(qm, clean, index) == targets
    flipped = torch.zeros(max_tokens, len(queries), dtype=torch.bool)
    history = []
    done = ~right
    with _EvalMode(gm.module):
        for k in range(max_tokens):
            e = table[ids]  # [batch, tokens, dim]
            g = _grad_of(loss_fn, e, gm, ste)  # [batch, tokens, dim]
            gain = torch.einsum("btd,vd->btv", g, cand_table) - (g * e).sum(-1, keepdim=True)  # [batch, tokens, n_cand]
            gain = gain.masked_fill(~editable.unsqueeze(-1), float("-inf"))
            gain = gain.masked_fill(candidates.view(1, 1, -1) == ids.unsqueeze(-1), float("-inf"))
            best = gain.flatten(1).argmax(1)  # [batch]
            pos, tok = best // len(candidates), candidates[best % len(candidates)]
            rows = torch.arange(len(queries))
            change = ~done & torch.isfinite(gain.flatten(1).max(1).values)
            ids[rows[change], pos[change]] = tok[change]
            editable[rows[change], pos[change]] = False
            now = _retrieve(qm, {**clean, "input_ids": ids}, index) != targets
            done = done | (now & right)
            flipped[k] = done & right
            history.append(ids.clone())
    n_right = int(right.sum())
    success = flipped.sum(1).double() / n_right if n_right else torch.full((max_tokens,), float("nan"), dtype=torch.float64)
    return {"input_ids": torch.stack(history), "flipped": flipped, "right": right, "success": success}


def _word_tokens(model: QvizModel) -> torch.Tensor:
    """Ids of whole-word alphabetic tokens (no '##' pieces, no special or unused tokens)."""
    tok = model.tokenizer
    vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
    special = set(getattr(tok, "all_special_ids", []) or [])
    ids = [i for t, i in vocab.items() if t.isalpha() and t.isascii() and i not in special and len(t) > 1]
    if not ids:
        raise ValueError(f"The tokenizer of {model.name!r} has no whole-word tokens to substitute; pass candidates=.")
    return torch.tensor(sorted(ids), dtype=torch.long)


# --------------------------------------------------------------------------- error amplification


def _capture_outputs(
    model: QvizModel, inputs: Any, names: list[str], mask: torch.Tensor | None, batch: int
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}

    def grab(name: str, module: nn.Module, args: tuple, output: Any) -> None:
        t = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] != batch:
            return  # not per example (e.g. position embeddings shared by the batch)
        t = t.detach().float()
        if mask is not None and t.dim() == 3 and t.shape[:2] == mask.shape:
            t = t * mask.unsqueeze(-1).to(t.dtype)  # [batch, tokens, channels], padding zeroed
        out[name] = t.flatten(1)  # [batch, features]

    with hooks(model, grab, layers=names):
        model.run(inputs)
    return out


def _input_tensor(inputs: Any) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor):
        return inputs
    if isinstance(inputs, dict) and isinstance(inputs.get("inputs_embeds"), torch.Tensor):
        return inputs["inputs_embeds"]
    raise TypeError(
        "error_amplification needs continuous inputs: an input tensor (images) or prepared text inputs "
        "with 'inputs_embeds' (as robustness.embedding_pgd returns); token ids have no input distance."
    )


def error_amplification(
    model: QvizModel | nn.Module,
    inputs: Any,
    perturbed: Any,
    *,
    layers: Any = None,
) -> xr.Dataset:
    """Per-layer ``‖Δactivation‖ / ‖Δinput‖`` for a perturbation of the input.

    Both inputs run through ``model`` with :func:`qviz.hooks` on the selected
    layers; for each layer the L2 norm of the change of its output (padding
    tokens excluded) is divided by the L2 norm of the input change, per
    example, then averaged. Lin, Gan and Han (2019) show this ratio grows
    layer by layer in a quantized network under adversarial noise
    ("error amplification"), which is why quantized models can be less robust.

    Parameters
    ----------
    model
        Any model; layers as in :func:`qviz.hooks` (default: the quantizable
        layers other than embedding lookups). Layers whose output is not per
        example (no batch dim) are left out.
    inputs, perturbed
        Prepared inputs: image tensors, or text inputs with ``inputs_embeds``.
    layers
        Layer selection as for :func:`qviz.hooks`.

    Returns
    -------
    xr.Dataset
        dim ``layer``; ``amplification`` (mean ratio), ``delta_norm`` (mean
        ‖Δactivation‖), ``activation_norm`` (mean ‖activation‖); attr
        ``input_delta_norm``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> x = torch.rand(8, 4)
    >>> ds = error_amplification(net, x, x + 0.01)
    >>> list(ds.layer.values)
    ['0', '2']
    """
    qm = _as_qviz(model)
    x0, x1 = _input_tensor(inputs), _input_tensor(perturbed)
    if x0.shape != x1.shape:
        raise ValueError(f"perturbed must have the shape of inputs {tuple(x0.shape)}; got {tuple(x1.shape)}.")
    mask = qm.token_mask(inputs)
    d_in = x1.detach().float() - x0.detach().float()
    if mask is not None and d_in.dim() == 3:
        d_in = d_in * mask.unsqueeze(-1).to(d_in.dtype)
    d_in_norm = d_in.flatten(1).norm(dim=1)  # [batch]
    if not (d_in_norm > 0).any():
        raise ValueError("perturbed equals inputs: the input change is zero, so there is nothing to amplify.")
    from qviz._hooks import select_layers

    from qviz.models import is_quantizable

    from qviz.models import layer_type

    if is_quantizable(qm.module) and layers is None:
        names = [""]  # a bare layer: hooks() hooks the layer itself
    elif layers is None:  # weight layers the perturbation flows through (embedding lookups take no part)
        names = [n for n, m in select_layers(qm, None, include_norms=False).items() if layer_type(m) != "embedding"]
    else:
        names = list(select_layers(qm, layers))
    a0 = _capture_outputs(qm, inputs, names, mask, x0.shape[0])
    a1 = _capture_outputs(qm, perturbed, names, mask, x0.shape[0])
    used = [n for n in names if n in a0 and n in a1]
    keep = d_in_norm > 0
    amp, dn, an = [], [], []
    for n in used:
        delta = (a1[n] - a0[n]).norm(dim=1)  # [batch]
        amp.append(float((delta[keep] / d_in_norm[keep]).mean()))
        dn.append(float(delta[keep].mean()))
        an.append(float(a0[n].norm(dim=1)[keep].mean()))
    return xr.Dataset(
        {
            "amplification": ("layer", np.array(amp), {"long_name": "‖Δactivation‖ / ‖Δinput‖", "units": "1"}),
            "delta_norm": ("layer", np.array(dn), {"long_name": "‖Δactivation‖ (L2, mean over inputs)", "units": "activation units"}),
            "activation_norm": ("layer", np.array(an), {"long_name": "‖activation‖ (L2, mean over inputs)", "units": "activation units"}),
        },
        coords={"layer": np.array(used, dtype=object)},
        attrs={"input_delta_norm": float(d_in_norm[keep].mean()), "model": qm.name},
    )
