"""AWQ (Lin et al. 2024): activation-aware per-input-channel scales, then a weight-clipping search.

Search returns data, applying it is a separate step (as in llm-awq's ``run_awq`` then
``apply_awq``):

* :func:`awq_search` — for ``alpha`` on the grid ``0, 1/n, ..., (n-1)/n`` it forms
  ``s = mean|X|^alpha`` per input channel (normalised by ``sqrt(max(s) * min(s))``), quantizes
  ``W * s`` and measures the layer's output error ``||X W^T - (X / s) Q(W * s)^T||^2`` on the
  calibration inputs; it keeps the best ``alpha``. Then, on the scaled weight, it searches per
  output row and group the clipping ratio (``1, 0.95, ..., 0.55`` of the group's largest
  magnitude) that minimises that group's share of the output error (kept only if it also lowers
  the layer's total output error, since the per-group measure ignores cross-group terms).
  Everything it tried is in the returned :class:`xarray.Dataset`.
* :func:`awq_apply` — scales, clips and quantizes a weight with a search result.

``alpha = 0`` gives ``s = 1``, i.e. plain RTN, so AWQ never does worse than RTN on its
calibration inputs.

In a model, ``1/s`` is folded into the preceding op where that leaves the model unchanged
(a pre-norm block's LayerNorm/RMSNorm feeding q/k/v or the MLP, searched jointly for the
layers that share it); elsewhere the replacement module keeps an explicit input scale.

Examples
--------
>>> import torch
>>> X = torch.randn(512, 64) * torch.linspace(0.1, 5, 64); W = torch.randn(32, 64)
>>> ds = awq_search(W, X, bits=4, group_size=32, n_grid=10)
>>> bool(ds.rel_err <= ds.rtn_rel_err)
True
>>> awq_apply(W, ds).weight_hat.shape
torch.Size([32, 64])
"""

from __future__ import annotations

import json
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch
import xarray as xr
from torch import nn

from qviz.quant.methods._common import check_matrix, layer_weight, replacement_for
from qviz.quant.config import AWQ
from qviz.quant.granularity import granularity_of
from qviz.quant.method import Controls, FormatBits, LayerQuant, Method, register, scale_format_bits
from qviz.quant.primitives import check_bits, check_group_size, fake_quantize_codes, fake_quantize_values, rtn_nbytes

__all__ = ["AWQApplied", "awq_apply", "awq_scales", "awq_search", "AWQMethod"]


def awq_scales(act_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    """AWQ's per-channel scales ``s = mean|X|^alpha`` (clamped at 1e-4), normalised by ``sqrt(max(s) min(s))``.

    Examples
    --------
    >>> awq_scales(torch.tensor([1.0, 4.0]), 0.5).tolist()
    [0.7071067690849304, 1.4142135381698608]
    """
    s = act_mean.double().clamp_min(1e-4).pow(float(alpha)).clamp_min(1e-4)
    return (s / torch.sqrt(s.max() * s.min())).float()


def _sq_err(E: torch.Tensor, X: torch.Tensor, G: torch.Tensor | None) -> float:
    """``||X E^T||^2`` for ``E`` ``[out, in]``, through the Gram matrix ``G = X^T X`` when given."""
    if G is not None:
        return float(((E @ G) * E).sum(dtype=torch.float64))
    return float((X @ E.T).pow(2).sum(dtype=torch.float64))


def _clip_errors(E: torch.Tensor, Xg: torch.Tensor, Gg: torch.Tensor | None, gs: int) -> torch.Tensor:
    """Per (row, group) ``||X_g e_g||^2`` for ``E`` ``[out, in]``: ``[out, n_groups]`` float64."""
    out, cols = E.shape
    Eg = E.reshape(out, cols // gs, gs).transpose(0, 1)  # [n_groups, out, gs]
    if Gg is not None:
        return ((Eg @ Gg) * Eg).sum(-1, dtype=torch.float64).T  # [out, n_groups]
    proj = Xg @ Eg.transpose(1, 2)  # [n_groups, tokens, out]
    return proj.pow(2).sum(1, dtype=torch.float64).T


def _clamp_groups(Ws: torch.Tensor, limit: torch.Tensor, gs: int) -> torch.Tensor:
    """Clamp each (row, group) of ``Ws`` ``[out, in]`` to ``[-limit, limit]`` (``limit`` ``[out, n_groups]``)."""
    out, cols = Ws.shape
    g = Ws.reshape(out, cols // gs, gs)
    lim = limit[..., None]
    return torch.maximum(torch.minimum(g, lim), -lim).reshape(out, cols)


def awq_search(
    W: torch.Tensor,
    X: torch.Tensor,
    bits: int = 4,
    group_size: int | None = 128,
    n_grid: int = 20,
    clip: bool = True,
    symmetric: bool = False,
    max_shrink: float = 0.5,
    n_clip: int = 10,
) -> xr.Dataset:
    """Search AWQ's input-channel scale exponent and per-group clipping for one weight.

    Parameters
    ----------
    W : torch.Tensor
        ``[out, in]`` weight (for layers that share an input, their weights stacked by rows).
    X : torch.Tensor
        ``[tokens, in]`` calibration inputs of the layer.
    bits, group_size, symmetric
        The weight quantizer (RTN conventions; ``group_size`` None is one scale per row).
    n_grid : int
        Grid points for ``alpha`` in ``[0, 1)``.
    clip : bool
        Run the clipping search.
    max_shrink, n_clip : float, int
        Clipping ratios tried: ``1 - k * max_shrink / n_clip`` for ``k = 0 .. n_clip - 1``.

    Returns
    -------
    xarray.Dataset
        dims ``alpha``, ``channel``, ``row``, ``group``, ``ratio``. Variables: ``loss`` (alpha:
        relative output error of each grid point), ``act_mean`` and ``scale`` (channel: mean|X|
        and the chosen ``s``), ``clip_ratio`` (row, group: chosen ratio), ``clip_loss`` (ratio: the
        groups' relative error at each ratio), and 0-d ``best_alpha``, ``rtn_rel_err``,
        ``scaled_rel_err`` (after scaling), ``rel_err`` (after scaling and clipping).

    Examples
    --------
    >>> ds = awq_search(torch.randn(8, 16), torch.randn(64, 16), bits=3, group_size=8, n_grid=4)
    >>> ds.loss.sizes["alpha"], ds.clip_ratio.shape
    (4, (8, 2))
    """
    W = check_matrix(W, "W").detach().float()
    out, cols = W.shape
    X = check_matrix(X, "X", cols=cols).detach().float().to(W.device)  # [tokens, in], where W is
    bits = check_bits(bits)
    gs = check_group_size(group_size, (out, cols), allow_tensor=False)
    gran = granularity_of(group_size)
    if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 1:
        raise ValueError(f"n_grid must be a positive int (grid points for alpha in [0, 1)); got {n_grid!r}. 20 is usual.")
    if not isinstance(max_shrink, (int, float)) or not 0.0 <= max_shrink < 1.0:
        raise ValueError(f"max_shrink must be in [0, 1) (the largest fraction clipped off); got {max_shrink!r}.")
    if isinstance(n_clip, bool) or not isinstance(n_clip, int) or n_clip < 1:
        raise ValueError(f"n_clip must be a positive int (clipping ratios tried); got {n_clip!r}.")
    tokens = X.shape[0]
    G = X.T @ X if cols < tokens else None  # [in, in] when cheaper than the direct product
    ref = _sq_err(W, X, G)
    if ref == 0.0:
        raise ValueError("The layer's output is zero on every calibration input (X W^T == 0); AWQ has nothing to fit.")

    act_mean = X.abs().mean(0)  # [in]
    alphas = np.arange(n_grid) / n_grid
    losses = np.empty(n_grid)
    best = (np.inf, 0.0, torch.ones(cols, device=W.device))
    for k, alpha in enumerate(alphas):
        s = awq_scales(act_mean, alpha)  # [in]
        w_hat = fake_quantize_values(W * s, gran, bits, symmetric=symmetric) / s
        losses[k] = _sq_err(W - w_hat, X, G) / ref
        if losses[k] < best[0]:
            best = (losses[k], float(alpha), s)
    _, best_alpha, s = best

    Ws = W * s  # [out, in] scaled weight
    Xs = X / s  # [tokens, in]
    ng = cols // gs
    ratios = 1.0 - np.arange(n_clip) * (max_shrink / n_clip)
    chosen = torch.ones(out, ng, device=W.device)
    clip_loss = np.full(n_clip, np.nan)
    if clip:
        Xg = Xs.reshape(tokens, ng, gs).transpose(0, 1)  # [n_groups, tokens, gs]
        Gg = Xg.transpose(1, 2) @ Xg if gs < tokens else None  # [n_groups, gs, gs]
        amax = Ws.abs().reshape(out, ng, gs).amax(-1)  # [out, n_groups]
        best_err = torch.full((out, ng), np.inf, dtype=torch.float64, device=W.device)
        for k, ratio in enumerate(ratios):
            clamped = _clamp_groups(Ws, amax * float(ratio), gs)
            err = _clip_errors(Ws - fake_quantize_values(clamped, gran, bits, symmetric=symmetric), Xg, Gg, gs)
            clip_loss[k] = float(err.sum()) / ref
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            chosen = torch.where(better, torch.full_like(chosen, float(ratio)), chosen)
    final = _apply(W, s, chosen, bits, group_size, symmetric)
    rel = _sq_err(W - final.weight_hat, X, G) / ref
    clip_kept = True
    if clip and rel > best[0]:  # the per-group search ignores cross-group terms; never let it hurt overall
        chosen = torch.ones(out, ng, device=W.device)
        rel, clip_kept = float(best[0]), False

    cfg = {"bits": bits, "group_size": group_size, "symmetric": bool(symmetric), "n_grid": n_grid,
           "clip": bool(clip), "max_shrink": float(max_shrink), "n_clip": n_clip}
    return xr.Dataset(
        {
            "loss": ("alpha", losses, {"long_name": "relative output error ‖XWᵀ−XŴᵀ‖²/‖XWᵀ‖²", "units": "1"}),
            "act_mean": ("channel", act_mean.cpu().numpy(), {"long_name": "mean |X| per input channel", "units": "1"}),
            "scale": ("channel", s.cpu().numpy(), {"long_name": "chosen AWQ scale s", "units": "1"}),
            "clip_ratio": (("row", "group"), chosen.cpu().numpy(), {"long_name": "chosen clipping ratio", "units": "1"}),
            "clip_loss": ("ratio", clip_loss, {"long_name": "groups' relative output error at each clip ratio", "units": "1"}),
            "best_alpha": ((), best_alpha, {"long_name": "chosen alpha", "units": "1"}),
            "rtn_rel_err": ((), float(losses[0]), {"long_name": "RTN relative output error (alpha=0, no clip)", "units": "1"}),
            "scaled_rel_err": ((), float(best[0]), {"long_name": "relative output error after scaling", "units": "1"}),
            "rel_err": ((), rel, {"long_name": "relative output error after scaling and clipping", "units": "1"}),
        },
        coords={"alpha": alphas, "channel": np.arange(cols), "row": np.arange(out), "group": np.arange(ng),
                "ratio": ratios},
        attrs={"method": "AWQ", "config": json.dumps(cfg), "n_tokens": int(tokens), "clip_kept": int(clip_kept)},
    )


class AWQApplied(NamedTuple):
    """What :func:`awq_apply` returns.

    Attributes
    ----------
    weight_hat : torch.Tensor
        ``[out, in]`` effective weight in the ORIGINAL input basis, ``Q(clip(W s)) / s``.
    weight_scaled_hat : torch.Tensor
        ``[out, in]`` dequantized ``Q(clip(W s))``: what multiplies ``X / s``.
    codes : torch.Tensor
        ``[out, in]`` uint8.
    scale, zero : torch.Tensor
        ``[out, n_groups]`` quantizer scales (float32) and zero points (uint8).
    input_scale : torch.Tensor
        ``[in]`` the AWQ scale ``s``; the layer's input is divided by it.
    """

    weight_hat: torch.Tensor
    weight_scaled_hat: torch.Tensor
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    input_scale: torch.Tensor


def _apply(W: torch.Tensor, s: torch.Tensor, clip: torch.Tensor, bits: int, group_size: int | None,
           symmetric: bool) -> AWQApplied:
    out, cols = W.shape
    gs = cols if group_size is None else group_size
    s, clip = s.to(W.device), clip.to(W.device)  # a search result's arrays come from the host
    Ws = W * s
    amax = Ws.abs().reshape(out, cols // gs, gs).amax(-1)
    clamped = _clamp_groups(Ws, amax * clip, gs)
    w_q, codes, qp = fake_quantize_codes(clamped, granularity_of(group_size), bits, symmetric=symmetric)
    scale, zero = qp.scale, qp.zero
    return AWQApplied(w_q / s, w_q, codes, scale, zero, s.clone())


def awq_apply(W: torch.Tensor, search: xr.Dataset) -> AWQApplied:
    """Scale, clip and quantize ``W`` ``[out, in]`` with an :func:`awq_search` result. ``W`` is not modified.

    Examples
    --------
    >>> W, X = torch.randn(4, 8), torch.randn(32, 8)
    >>> res = awq_apply(W, awq_search(W, X, bits=4, group_size=4, n_grid=5))
    >>> torch.allclose(res.weight_hat * res.input_scale, res.weight_scaled_hat)
    True
    """
    if not isinstance(search, xr.Dataset) or not {"scale", "clip_ratio"} <= set(search.data_vars) or "config" not in search.attrs:
        raise TypeError("search must be the Dataset returned by awq_search(W, X, ...).")
    W = check_matrix(W, "W").detach().float()
    out, cols = W.shape
    if search.sizes["channel"] != cols or search.sizes["row"] != out:
        raise ValueError(
            f"The search was made for a [{search.sizes['row']}, {search.sizes['channel']}] weight but W is "
            f"[{out}, {cols}]. Run awq_search on this weight."
        )
    cfg = json.loads(search.attrs["config"])
    s = torch.from_numpy(np.asarray(search.scale.values, np.float32))
    clip = torch.from_numpy(np.asarray(search["clip_ratio"].values, np.float32))
    return _apply(W, s, clip, cfg["bits"], cfg["group_size"], cfg["symmetric"])


# --------------------------------------------------------------------------- method


@register(AWQ)
class AWQMethod(Method):
    """AWQ as a registered method.

    :meth:`prepare` finds layers that share an input made by a foldable op (the LayerNorm or
    RMSNorm of a pre-norm block), searches one scale for each such group on the full-precision
    inputs and folds ``1/s`` into that op. Every other linear layer is searched on its own in
    :meth:`quantize_layer` and keeps an explicit input scale ``1/s`` (its bytes counted). As in
    the reference, the inputs come from the full-precision model, scaled but not quantized
    (``sequential = False``).

    Per-layer ``info``: ``awq_alpha``, ``awq_folded`` (1/0), ``awq_rel_err`` and ``awq_rtn_rel_err``
    (relative output error on the calibration inputs, after AWQ and for RTN).
    """

    label = "AWQ"
    menu_position = 5
    controls = ("bits", "group_size", "symmetric")
    needs_inputs = True
    sequential = False
    layer_types = ("linear",)

    def config_from_controls(self, c: Controls) -> AWQ:
        """``AWQ(bits, group_size, symmetric)`` from the explorer's knobs."""
        if c.group_size == "tensor":
            raise ValueError("AWQ takes a group size or 'channel', not 'tensor'.")
        return AWQ(bits=c.bits, group_size=c.group_size, symmetric=bool(c.symmetric))

    def changes_model(self, cfg: AWQ) -> bool:
        """True: :meth:`prepare` folds ``1/s`` into the preceding norms of the copy."""
        return True

    def format_bits(self, cfg: AWQ, row_length: int) -> FormatBits:
        """Packed codes and a float16 scale (and uint8 zero point) per group; input scales folded away."""
        return scale_format_bits(cfg.label, cfg.bits, cfg.group_size, cfg.symmetric, row_length,
                                 " (input scales folded into the previous layer)")

    def prepare(self, model: Any, cfg: AWQ, calib: Any, layers: dict[str, nn.Module]) -> dict[str, Any]:
        from qviz.quant.methods._model import as_qviz_model, find_input_groups, fold_scale_
        from qviz.models import layer_type
        from qviz.activations.engine import as_rows, capture_inputs, check_calib

        check_calib(calib, "AWQ (it searches scales on each layer's calibration inputs)")
        model = as_qviz_model(model)
        names = [n for n, m in layers.items() if layer_type(m) == "linear"]
        state: dict[str, Any] = {"folded": {}, "search": {}, "reasons": {}}
        if not names:
            return state
        groups = find_input_groups(model, names, calib)
        foldable = [g for g in groups if g.foldable]
        for g in groups:
            if not g.foldable:
                for n in g.layers:
                    state["reasons"][n] = g.reason
        if not foldable:
            return state
        modules = dict(model.module.named_modules())
        first = [g.layers[0] for g in foldable]
        inputs = {n: as_rows(modules[n], x) for n, x in capture_inputs(model, calib, first).items()}  # [tokens, in]
        for g in foldable:
            weights = [layer_weight(modules[n], n) for n in g.layers]
            W = torch.cat(weights)  # [sum of outs, in]
            ds = awq_search(W, inputs[g.layers[0]], cfg.bits, cfg.group_size, cfg.n_grid, cfg.clip_search, cfg.symmetric)
            s = torch.from_numpy(np.asarray(ds.scale.values, np.float32))
            with torch.no_grad():
                fold_scale_(modules[g.predecessor], [modules[n] for n in g.layers], s)
            start = 0
            for n, w in zip(g.layers, weights, strict=True):
                rows = slice(start, start + w.shape[0])
                start += w.shape[0]
                state["folded"][n] = {"s": s, "clip": torch.from_numpy(np.asarray(ds["clip_ratio"].values[rows], np.float32)),
                                      "alpha": float(ds.best_alpha), "rel_err": float(ds.rel_err),
                                      "rtn_rel_err": float(ds.rtn_rel_err), "predecessor": g.predecessor}
                state["search"][n] = ds
        return state

    def quantize_layer(self, name: str, module: nn.Module, cfg: AWQ, inputs: Any, state: Any) -> LayerQuant:
        from qviz.quant.methods.gptq import layer_input_rows

        state = state if state is not None else {"folded": {}, "search": {}, "reasons": {}}
        W = layer_weight(module, name)  # [out, in]; already scaled by s when folded
        out, cols = W.shape
        nbytes = rtn_nbytes((out, cols), cfg.bits, cfg.group_size, cfg.symmetric)
        folded = state["folded"].get(name)
        if folded is not None:
            res = _apply(W, torch.ones(cols, device=W.device), folded["clip"], cfg.bits, cfg.group_size, cfg.symmetric)
            replacement = replacement_for(module, res.weight_scaled_hat)
            weight_hat = res.weight_scaled_hat  # the layer's basis: its weight and inputs are already scaled
            info = {"awq_alpha": folded["alpha"], "awq_folded": 1.0, "awq_rel_err": folded["rel_err"],
                    "awq_rtn_rel_err": folded["rtn_rel_err"]}
        else:
            X = layer_input_rows(name, module, inputs, cols)
            ds = awq_search(W, X, cfg.bits, cfg.group_size, cfg.n_grid, cfg.clip_search, cfg.symmetric)
            state["search"][name] = ds
            res = awq_apply(W, ds)
            replacement = replacement_for(module, res.weight_scaled_hat,
                                          input_scale=(1.0 / res.input_scale.double()).float())
            weight_hat = res.weight_hat
            nbytes += 2 * cols  # the explicit float16 input scale
            info = {"awq_alpha": float(ds.best_alpha), "awq_folded": 0.0, "awq_rel_err": float(ds.rel_err),
                    "awq_rtn_rel_err": float(ds.rtn_rel_err)}
        return LayerQuant(module=replacement, weight_hat=weight_hat, nbytes=nbytes, info=info)

    def finalize(self, model: Any, cfg: AWQ, calib: Any, state: Any) -> dict[str, Any]:
        state = state or {}
        explicit = sorted(set(state.get("search", {})) - set(state.get("folded", {})))
        if explicit and state.get("reasons"):
            why = {state["reasons"].get(n, "") for n in explicit}
            warnings.warn(
                f"AWQ kept an explicit input scale on {len(explicit)} layer(s) (e.g. {explicit[0]}): "
                + "; ".join(sorted(w for w in why if w))[:400]
                + ". The result is the same; the scale costs one multiply per input channel at run time.",
                UserWarning,
                stacklevel=2,
            )
        return {"awq_search": dict(state.get("search", {}))}
