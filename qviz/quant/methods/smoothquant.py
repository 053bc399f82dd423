"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights, then quantize both (W8A8).

For each input channel ``j`` of a layer (or of the layers that read the same input, e.g. q/k/v):

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

and the layer computes ``(X / s) (W s)^T``, the same product, with the activation range
flattened and the weights' slightly widened. ``1/s`` is folded into the preceding
LayerNorm/RMSNorm where the model's full-precision output stays unchanged (pre-norm blocks:
GPT-2, Llama); in post-norm BERT blocks the norm's output also feeds a residual connection,
so the division stays explicit in the replacement module (said per layer, and warned about).

Then W8A8 (or ``w_bits``/``a_bits``): per-output-channel symmetric weights and dynamic symmetric
activations per token or per tensor, as fake-quant.

* :func:`smoothing_factors` — the formula, on per-channel maxima.
* :func:`smoothquant_alpha_sweep` — end-to-end quality over a grid of alpha, plus the
  unsmoothed ("naive") W8A8 baseline, as a Dataset.
* :func:`smoothing_ranges` — per-channel activation and weight ranges of one layer before and
  after smoothing (what :func:`qviz.plot.methods.smoothing_ranges` draws).

Examples
--------
>>> import torch
>>> smoothing_factors(torch.tensor([16.0, 1.0]), torch.tensor([1.0, 1.0]), alpha=0.5).tolist()
[4.0, 1.0]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from qviz.quant.methods._common import check_alpha, layer_weight, replacement_for
from qviz.quant.config import SmoothQuant
from qviz.quant.granularity import PerChannel
from qviz.quant.method import Controls, FormatBits, LayerQuant, Method, register, scale_format_bits
from qviz.quant.primitives import fake_quantize_values, rtn_nbytes

__all__ = ["SmoothQuantMethod", "smoothing_factors", "smoothing_ranges", "smoothquant_alpha_sweep"]

_EPS = 1e-5


def smoothing_factors(act_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-channel factors ``s = max|X|^alpha / max|W|^(1 - alpha)`` ``[in]``.

    Parameters
    ----------
    act_absmax : torch.Tensor
        ``[in]`` largest ``|X_j|`` per input channel over the calibration tokens.
    w_absmax : torch.Tensor
        ``[in]`` largest ``|W_ij|`` per input channel over the output rows (of every layer
        that reads this input).
    alpha : float
        Migration strength in [0, 1].

    Both maxima are clamped at 1e-5 (a dead channel gets a finite factor), and so is ``s``.

    Examples
    --------
    >>> smoothing_factors(torch.tensor([4.0]), torch.tensor([0.25]), alpha=1.0).tolist()
    [4.0]
    >>> smoothing_factors(torch.tensor([4.0]), torch.tensor([0.25]), alpha=0.0).tolist()
    [4.0]
    """
    alpha = check_alpha(alpha)
    for name, v in (("act_absmax", act_absmax), ("w_absmax", w_absmax)):
        if not isinstance(v, torch.Tensor) or v.dim() != 1:
            raise ValueError(f"{name} must be a 1-D tensor [in_features]; got {getattr(v, 'shape', type(v).__name__)}.")
        if not torch.isfinite(v).all() or (v < 0).any():
            raise ValueError(f"{name} must hold finite maxima >= 0 (absolute values); check the statistics.")
    if act_absmax.shape != w_absmax.shape:
        raise ValueError(
            f"act_absmax has {act_absmax.shape[0]} channels but w_absmax has {w_absmax.shape[0]}; both must be "
            "per input channel of the same layer."
        )
    a = act_absmax.double().clamp_min(_EPS)
    w = w_absmax.double().clamp_min(_EPS)
    return (a.pow(alpha) / w.pow(1.0 - alpha)).clamp_min(_EPS).float()


def _w_absmax(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([w.abs() for w in weights]).amax(0)  # [in]


def smoothing_ranges(act_absmax: torch.Tensor, W: torch.Tensor, alpha: float) -> xr.Dataset:
    """Per-channel activation and weight ranges of one layer before and after smoothing.

    Returns a Dataset with dims ``channel`` and ``stage`` (``"before"``, ``"after"``) and
    variables ``act_absmax``, ``w_absmax`` and ``scale`` (``s``), plus 0-d ``act_ratio`` and
    ``w_ratio`` (largest over median channel range, per stage): the migration of difficulty.

    Examples
    --------
    >>> ds = smoothing_ranges(torch.tensor([8.0, 1.0]), torch.ones(3, 2), 0.5)
    >>> [round(float(v), 4) for v in ds.act_absmax.sel(stage="after")]
    [2.8284, 1.0]
    """
    if not isinstance(W, torch.Tensor) or W.dim() != 2 or W.shape[1] != act_absmax.shape[0]:
        raise ValueError(
            f"W must be the layer's [out, in] weight with in = {act_absmax.shape[0]} channels; "
            f"got {tuple(getattr(W, 'shape', ()))}."
        )
    w_abs = W.detach().abs().amax(0).float().cpu()  # [in]: a reduction, so the Dataset is built on the host
    act_absmax = act_absmax.float().cpu()
    s = smoothing_factors(act_absmax, w_abs, alpha)
    act = torch.stack([act_absmax, act_absmax / s]).numpy()  # [stage, channel]
    wts = torch.stack([w_abs, w_abs * s]).numpy()

    def ratio(v: np.ndarray) -> np.ndarray:
        return v.max(-1) / np.maximum(np.median(v, -1), 1e-12)

    return xr.Dataset(
        {
            "act_absmax": (("stage", "channel"), act, {"long_name": "max |X| per input channel", "units": "1"}),
            "w_absmax": (("stage", "channel"), wts, {"long_name": "max |W| per input channel", "units": "1"}),
            "scale": ("channel", s.numpy(), {"long_name": "smoothing factor s", "units": "1"}),
            "act_ratio": ("stage", ratio(act), {"long_name": "activation channel range max / median", "units": "1"}),
            "w_ratio": ("stage", ratio(wts), {"long_name": "weight channel range max / median", "units": "1"}),
        },
        coords={"stage": ["before", "after"], "channel": np.arange(act.shape[1])},
        attrs={"alpha": float(alpha)},
    )


# --------------------------------------------------------------------------- model-level plan


def _smoothing_plan(model: Any, calib: Any, names: list[str], *, check: bool = True) -> tuple[dict, list]:
    """Activation maxima per layer and the input groups (which layers share an input, foldability)."""
    from qviz.quant.methods._model import find_input_groups, input_absmax

    absmax = input_absmax(model, calib, names)
    groups = find_input_groups(model, names, calib, check=check)
    return absmax, groups


def _apply_smoothing_(model: Any, cfg: SmoothQuant, absmax: dict, groups: list, alpha: float | None = None) -> dict:
    """Compute ``s`` per group, fold it where allowed (IN PLACE on ``model``, a copy); return per-layer state."""
    from qviz.quant.methods._model import fold_scale_

    alpha = cfg.alpha if alpha is None else alpha
    modules = dict(model.module.named_modules())
    if cfg.fold == "require":
        bad = [(n, g.reason) for g in groups if not g.foldable for n in g.layers]
        if bad:
            listing = "; ".join(f"{n}: {why}" for n, why in bad[:6])
            raise ValueError(
                f"SmoothQuant(fold='require'): {len(bad)} layer(s) have no foldable predecessor ({listing}"
                f"{'; ...' if len(bad) > 6 else ''}). Use fold='auto' to keep an explicit input scale on "
                "them, or leave them out with layers=/skip=."
            )
    state: dict[str, dict[str, Any]] = {}
    for g in groups:
        weights = [layer_weight(modules[n], n) for n in g.layers]
        s = smoothing_factors(absmax[g.layers[0]], _w_absmax(weights), alpha)
        fold = g.foldable and cfg.fold != "never"
        if fold:
            with torch.no_grad():
                fold_scale_(modules[g.predecessor], [modules[n] for n in g.layers], s)
        reason = g.reason if cfg.fold != "never" or not g.foldable else "fold='never' asked for an explicit scale"
        for n in g.layers:
            state[n] = {"s": s, "folded": fold, "reason": reason, "group": list(g.layers),
                        "act_absmax": absmax[g.layers[0]]}
    return state


def kernel_label(cfg: SmoothQuant, folded: bool) -> str:
    """What runs in a SmoothQuant layer, in words."""
    a = cfg.a_bits if cfg.a_bits is not None else 16
    static = ", static activation scale" if cfg.act_static else ""
    return f"simulated W{cfg.w_bits}A{a} (fake-quant){static}" + ("" if folded else ", explicit input scale")


def _smoothed_layer(name: str, module: nn.Module, cfg: SmoothQuant, entry: dict) -> LayerQuant:
    W = layer_weight(module, name)  # [out, in]: already W*s when folded
    s = entry["s"]
    Ws = W if entry["folded"] else W * s
    w_q = fake_quantize_values(Ws, PerChannel(), cfg.w_bits, symmetric=True)  # per-output-channel symmetric
    out, cols = W.shape
    a = entry.get("act_absmax")  # [in] max |X_j| over the calibration tokens (before smoothing)
    act_scale = None
    if cfg.act_static and cfg.a_bits is not None:  # one calibrated scale: max |X_j / s_j| / qmax
        if a is None:
            raise ValueError(f"A static activation scale for {name} needs its calibration maxima; none were measured.")
        act_scale = float((a / s).max()) / ((1 << (cfg.a_bits - 1)) - 1) or 1.0
    nbytes = rtn_nbytes((out, cols), cfg.w_bits, None, symmetric=True) + (0 if act_scale is None else 4)
    if entry["folded"]:
        new = replacement_for(module, w_q, act_bits=cfg.a_bits, act_scheme=cfg.act_scheme, act_scale=act_scale)
    else:
        new = replacement_for(module, w_q, input_scale=(1.0 / s.double()).float(), act_bits=cfg.a_bits,
                              act_scheme=cfg.act_scheme, act_scale=act_scale)
        nbytes += 2 * cols  # the float16 input scale
    new.kernel = kernel_label(cfg, entry["folded"])
    info = {
        "smooth_alpha": float(cfg.alpha),
        "smooth_folded": 1.0 if entry["folded"] else 0.0,
        "smooth_scale_max": float(s.max()),
        "smooth_scale_min": float(s.min()),
    }
    if a is not None:
        info["act_ratio_before"] = float(a.max() / a.median().clamp_min(1e-12))
        info["act_ratio_after"] = float((a / s).max() / (a / s).median().clamp_min(1e-12))
    # weight_hat in the basis of the layer as handed in: folded, its weight and inputs are already scaled
    weight_hat = w_q if entry["folded"] else w_q / s
    return LayerQuant(module=new, weight_hat=weight_hat, nbytes=nbytes, kernel=new.kernel, info=info)


@register(SmoothQuant)
class SmoothQuantMethod(Method):
    """SmoothQuant as a registered method.

    :meth:`prepare` measures ``max|X_j|`` of every selected Linear's input, groups the layers
    that read the same tensor, computes ``s`` per group and folds ``1/s`` into the preceding
    norm where that is exact (``cfg.fold``). :meth:`quantize_layer` quantizes ``W s`` per output
    channel (symmetric, ``w_bits``) and fake-quantizes the smoothed input (``a_bits``,
    ``act_scheme``). Per-layer ``info``: ``smooth_folded`` (1/0), the range of ``s``, and the
    activation channel-range ratio before and after smoothing.
    """

    label = "SmoothQuant"
    menu_position = 4
    controls = ("bits", "alpha")
    needs_inputs = False
    sequential = False
    layer_types = ("linear",)

    def config_from_controls(self, c: Controls) -> SmoothQuant:
        """``SmoothQuant(alpha, w_bits=bits)`` from the explorer's knobs."""
        return SmoothQuant(alpha=float(c.alpha), w_bits=c.bits)

    def changes_model(self, cfg: SmoothQuant) -> bool:
        """True: :meth:`prepare` folds ``1/s`` into the preceding norms of the copy."""
        return True

    def weight_only(self, cfg: SmoothQuant) -> bool:
        """False: the smoothed activations are fake-quantized too (W8A8)."""
        return False

    def format_bits(self, cfg: SmoothQuant, row_length: int) -> FormatBits:
        """Symmetric per-channel codes (one float16 scale per row); the smoothing scales live in the norm."""
        return scale_format_bits(cfg.label, cfg.w_bits, None, True, row_length,
                                 " (smoothing scales folded into the norm)")

    def prepare(self, model: Any, cfg: SmoothQuant, calib: Any, layers: dict[str, nn.Module]) -> dict[str, Any]:
        from qviz.quant.methods._model import as_qviz_model
        from qviz.models import layer_type
        from qviz.activations.engine import check_calib

        check_calib(calib, "SmoothQuant (it measures each layer's activation ranges)")
        model = as_qviz_model(model)
        names = [n for n, m in layers.items() if layer_type(m) == "linear"]
        if not names:
            return {"layers": {}}
        absmax, groups = _smoothing_plan(model, calib, names)
        state = _apply_smoothing_(model, cfg, absmax, groups)
        explicit = [n for n, e in state.items() if not e["folded"]]
        if explicit and cfg.fold == "auto":
            reasons = sorted({state[n]["reason"] for n in explicit})
            warnings.warn(
                f"SmoothQuant keeps an explicit input scale on {len(explicit)} of {len(state)} layer(s) "
                f"(e.g. {explicit[0]}) because no preceding op can absorb 1/s: " + "; ".join(reasons)
                + ". The quantized arithmetic is the same; the scale costs one multiply per input channel "
                "(pass fold='require' to make this an error, fold='never' to silence it).",
                UserWarning,
                stacklevel=3,
            )
        return {"layers": state}

    def quantize_layer(self, name: str, module: nn.Module, cfg: SmoothQuant, inputs: Any, state: Any) -> LayerQuant:
        entry = (state or {}).get("layers", {}).get(name)
        if entry is None:
            raise ValueError(
                f"SmoothQuant has no smoothing factors for {name!r}: prepare() did not see it. Quantize through "
                "qviz.quantize(model, qviz.SmoothQuant(...), calib=batch), which measures them first."
            )
        return _smoothed_layer(name, module, cfg, entry)

    def layer_output(self, lq: LayerQuant, x: torch.Tensor) -> torch.Tensor:
        """The replacement's output (bias removed) on ``x``, the layer's input in the prepared model ``[rows, in]``.

        Activation fake-quant included. For a folded layer ``x`` is already divided by ``s`` (the
        norm upstream did it); for an explicit one the module divides.
        """
        from qviz.quant.rtn import output_without_bias

        return output_without_bias(lq.module, x)

    def finalize(self, model: Any, cfg: SmoothQuant, calib: Any, state: Any) -> dict[str, Any]:
        layers = (state or {}).get("layers", {})
        return {"folded": {n: bool(e["folded"]) for n, e in layers.items()},
                "reasons": {n: e["reason"] for n, e in layers.items()}}


# --------------------------------------------------------------------------- alpha sweep


def _smoothquant_copy(model: Any, cfg: SmoothQuant, absmax: dict, groups: list, alpha: float | None) -> Any:
    from qviz.quant.methods._model import clone_model

    out = clone_model(model)
    state = _apply_smoothing_(out, cfg, absmax, groups, alpha)
    root = out.module
    for name, entry in state.items():
        lq = _smoothed_layer(name, root.get_submodule(name), cfg, entry)
        parent, _, child = name.rpartition(".")
        setattr(root.get_submodule(parent) if parent else root, child, lq.module)
    return out


def end_to_end_quality(reference: torch.Tensor, outputs: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
    """Mean cosine similarity of outputs to the full-precision ones (per sample), and accuracy when labelled.

    Examples
    --------
    >>> end_to_end_quality(torch.eye(2), torch.eye(2), torch.tensor([0, 1]))
    {'cosine': 1.0, 'accuracy': 1.0}
    """
    ref = reference.reshape(reference.shape[0], -1).double()
    out = outputs.reshape(outputs.shape[0], -1).double()
    result = {"cosine": float(nn.functional.cosine_similarity(out, ref, dim=-1).mean())}
    if labels is not None:
        result["accuracy"] = float((outputs.argmax(-1) == labels.to(outputs.device)).double().mean())
    return result


def smoothquant_alpha_sweep(
    model: Any,
    calib: Any,
    alphas: Sequence[float] = tuple(np.round(np.arange(0.0, 1.01, 0.1), 2)),
    eval_data: Any = None,
    *,
    w_bits: int = 8,
    a_bits: int = 8,
    act_scheme: str = "per-tensor",
    act_static: bool = False,
    layers: Any = None,
    batch_size: int = 16,
) -> xr.Dataset:
    """End-to-end quality of SmoothQuant W{w_bits}A{a_bits} over a grid of ``alpha``, and of naive W8A8.

    The activation statistics and the layer grouping are measured once. ``naive`` is the same
    quantizer with no smoothing (``s = 1``). Quality is the mean cosine similarity of the
    outputs (embeddings, logits) to the full-precision model's on ``eval_data``, and the
    accuracy when ``eval_data`` is ``(inputs, labels)``.

    Parameters
    ----------
    model : QvizModel, name or module
    calib : calibration inputs
    alphas : sequence of float in [0, 1]
    eval_data : held-out inputs, or ``(inputs, labels)``; default ``qviz.eval_data(model, n=256)``
    w_bits, a_bits, act_scheme, act_static : the W8A8 quantizer (``act_static``: calibrated per-tensor
        activation scales instead of dynamic ones, for both SmoothQuant and the naive baseline)
    layers : which Linear layers (None: all)
    batch_size : held-out inputs per forward. Dynamic per-tensor activation scales see the whole
        batch, padding tokens included; ``batch_size=1`` measures one input at a time.

    Returns
    -------
    xarray.Dataset
        dim ``alpha``: ``cosine`` (and ``accuracy``); 0-d ``naive_cosine`` (``naive_accuracy``).

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("minilm")                                                      # doctest: +SKIP
    >>> ds = smoothquant_alpha_sweep(m, qviz.calibration_data(m, 64), [0.3, 0.5, 0.8])  # doctest: +SKIP
    >>> float(ds.cosine.max()) > float(ds.naive_cosine)                              # doctest: +SKIP
    True
    """
    from qviz.data import eval_data as default_eval
    from qviz.activations.hooks import select_layers
    from qviz.quant.methods._model import as_qviz_model
    from qviz.models import layer_type
    from qviz.activations.engine import check_calib

    model = as_qviz_model(model)
    check_calib(calib, "smoothquant_alpha_sweep")
    alphas = [check_alpha(a) for a in alphas]
    if not alphas:
        raise ValueError("alphas is empty; pass e.g. [0.3, 0.5, 0.7].")
    cfg = SmoothQuant(alpha=0.5, w_bits=w_bits, a_bits=a_bits, act_scheme=act_scheme, act_static=act_static)
    if eval_data is None:
        eval_data = default_eval(model, n=256)
    data, labels = eval_data if isinstance(eval_data, tuple) else (eval_data, None)
    names = [n for n, m in select_layers(model, layers, include_norms=False).items() if layer_type(m) == "linear"]
    if not names:
        raise ValueError("No Linear layer is selected; SmoothQuant smooths Linear layers.")
    absmax, groups = _smoothing_plan(model, calib, names)
    reference = model.outputs(data, batch_size)
    rows: list[dict[str, float]] = []
    for a in alphas:
        q = _smoothquant_copy(model, cfg, absmax, groups, a)
        rows.append(end_to_end_quality(reference, q.outputs(data, batch_size), labels))
    naive_cfg = SmoothQuant(alpha=0.5, w_bits=w_bits, a_bits=a_bits, act_scheme=act_scheme, fold="never",
                            act_static=act_static)
    naive = _naive_copy(model, naive_cfg, absmax, groups)
    base = end_to_end_quality(reference, naive.outputs(data, batch_size), labels)
    ds = xr.Dataset(
        {
            "cosine": ("alpha", [r["cosine"] for r in rows],
                       {"long_name": "mean cosine to full precision (held-out)", "units": "1"}),
            "naive_cosine": ((), base["cosine"], {"long_name": "naive W8A8 (no smoothing) cosine", "units": "1"}),
        },
        coords={"alpha": np.asarray(alphas, np.float64)},
        attrs={"w_bits": w_bits, "a_bits": a_bits, "act_scheme": act_scheme, "act_static": int(act_static),
               "n_layers": len(names), "batch_size": int(batch_size),
               "n_folded": sum(len(g.layers) for g in groups if g.foldable)},
    )
    if labels is not None:
        ds["accuracy"] = ("alpha", [r["accuracy"] for r in rows], {"long_name": "accuracy (held-out)", "units": "1"})
        ds["naive_accuracy"] = ((), base["accuracy"], {"long_name": "naive W8A8 accuracy", "units": "1"})
    return ds


def _naive_copy(model: Any, cfg: SmoothQuant, absmax: dict, groups: list) -> Any:
    """W8A8 with ``s = 1`` everywhere (no smoothing), the same quantizer otherwise."""
    from qviz.quant.methods._model import clone_model

    out = clone_model(model)
    root = out.module
    for g in groups:
        a = absmax[g.layers[0]]
        for n in g.layers:
            entry = {"s": torch.ones_like(a), "folded": False, "reason": "naive", "act_absmax": a}
            lq = _smoothed_layer(n, root.get_submodule(n), cfg, entry)
            parent, _, child = n.rpartition(".")
            setattr(root.get_submodule(parent) if parent else root, child, lq.module)
    return out
