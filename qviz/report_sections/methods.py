"""The outlier-aware methods section of ``qviz report``: SmoothQuant, AWQ and GPTQ against RTN, layer by layer.

Shows, for the model and calibration batch of the report:

* per-layer output error of GPTQ and AWQ relative to RTN at the same bits and groups, and of
  SmoothQuant W8A8 relative to naive W8A8 (``qviz.layer_error``), with win counts;
* SmoothQuant's migration of difficulty on the layer with the worst activation outliers, and
  its alpha sweep (end-to-end, held-out);
* AWQ's search curves on that layer;
* GPTQ's loss per layer against RTN's on the same Hessian, with unusual layers flagged.

``ctx`` keys read (all optional): ``methods_bits`` (default 4), ``methods_alphas`` (the sweep's
alphas; ``[]`` skips it), ``stats`` (the capture Dataset, to pick the outlier layer). Datasets
written into ``ctx["datasets"]``: ``method_errors``, ``smoothing_ranges``, ``awq_search``,
``gptq_loss``, ``smoothquant_sweep``.
"""

from __future__ import annotations

import html
import warnings
from typing import Any

import numpy as np

import qviz.plot
from qviz.activations.engine import as_rows, capture_inputs, input_absmax
from qviz.data import eval_data
from qviz.quant.methods import awq_search, smoothing_ranges, smoothquant_alpha_sweep
from qviz.quant.methods._common import layer_weight
from qviz.quant.methods.gptq import GPTQMethod, gptq_loss_dataset
from qviz.models import layer_type, quantizable_layers
from qviz.quant.config import AWQ, GPTQ, RTN, ActQuant, SmoothQuant
from qviz.measure.error import layer_error

_DEFAULT_ALPHAS = (0.3, 0.5, 0.7, 0.9)


def _fig(fig: Any) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"responsive": True})


def _linear_layers(model: Any) -> dict[str, Any]:
    return {n: m for n, m in quantizable_layers(model).items() if layer_type(m) == "linear"}


def _outlier_layer(stats: Any, names: list[str]) -> str:
    """The Linear layer whose input has the largest outlier ratio (the middle one without statistics)."""
    if stats is not None and "outlier_ratio" in stats:
        ratio = {str(n): float(v) for n, v in zip(stats.layer.values, stats["outlier_ratio"].values, strict=True)}
        ranked = sorted((n for n in names if np.isfinite(ratio.get(n, np.nan))), key=lambda n: -ratio[n])
        if ranked:
            return ranked[0]
    return names[len(names) // 2]


def wins_table(errors: Any, pairs: list[tuple[str, str]]) -> str:
    """HTML table: for each (method, baseline) pair, layers where the method's output error is lower."""
    rows = ["<tr><th>method</th><th>baseline</th><th>layers won</th><th>median error ratio</th></tr>"]
    for method, base in pairs:
        a = errors.output_rel_err.sel(config=method).values
        b = errors.output_rel_err.sel(config=base).values
        ok = np.isfinite(a) & np.isfinite(b) & (b > 0)
        if not ok.any():
            continue
        wins = int((a[ok] < b[ok]).sum())
        rows.append(
            f"<tr><td>{html.escape(method)}</td><td>{html.escape(base)}</td>"
            f"<td>{wins}/{int(ok.sum())} ({100 * wins / ok.sum():.0f}%)</td>"
            f"<td>{np.median(a[ok] / b[ok]):.3f}</td></tr>"
        )
    return '<table class="qv">' + "".join(rows) + "</table>"


def _alpha_sweep(model: Any, calib: Any, alphas: list[float], n_held: int = 64) -> tuple[list[tuple[str, str]], float, Any]:
    """(report items, the alpha to compare layer by layer, the sweep Dataset or None).

    The alpha is the sweep's best by held-out cosine to full precision; 0.5 (the
    paper's default) when there is no sweep.
    """
    if not alphas:
        return [], 0.5, None
    try:
        inputs, labels = eval_data(model, n=256 if model.kind == "image-classifier" else n_held)
    except ValueError as err:  # no held-out data for this model: say so instead of a figure
        return [("SmoothQuant alpha sweep", f"<p>Skipped: {html.escape(str(err))}</p>")], 0.5, None
    held = (inputs, labels) if labels is not None else inputs
    # static per-tensor activation scales, calibrated once (SmoothQuant's deployment setting): dynamic
    # per-tensor scales over a padded batch would let the padding tokens set every sentence's scale
    sweep = smoothquant_alpha_sweep(model, calib, alphas, held, act_scheme="per-tensor", act_static=True)
    best = float(sweep.alpha.values[int(np.nanargmax(sweep.cosine.values))])
    title = f"SmoothQuant alpha sweep (held-out, end to end, {len(inputs)} inputs)"
    return [(title, _fig(qviz.plot.alpha_sweep(sweep)))], best, sweep


def _alpha_note(sweep: Any, alpha: float) -> str:
    """One sentence on where SmoothQuant's alpha came from."""
    if sweep is None:
        return f"<p>SmoothQuant uses alpha = {alpha:g} (the paper's default; no sweep was run).</p>"
    cos = float(sweep.cosine.sel(alpha=alpha))
    naive = float(sweep.naive_cosine)
    return (f"<p>SmoothQuant uses alpha = {alpha:g}, the best of the held-out sweep below "
            f"({', '.join(f'{a:g}' for a in sweep.alpha.values)}; static per-tensor activation scales): end-to-end "
            f"cosine to full precision {cos:.5f} against {naive:.5f} for naive W8A8.</p>")


def section(model: Any, calib: Any, ctx: dict[str, Any]) -> list[tuple[str, str]]:
    """GPTQ, AWQ and SmoothQuant against RTN on this model, layer by layer, with each method's own figure.

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("digits-cnn")                                                   # doctest: +SKIP
    >>> items = section(m, qviz.calibration_data(m, n=64), {"datasets": {}})          # doctest: +SKIP
    >>> [title for title, _ in items][:2]                                             # doctest: +SKIP
    ['Summary', 'Per-layer output error relative to the baseline']
    """
    datasets = ctx.setdefault("datasets", {})
    layers = _linear_layers(model)
    if not layers:
        return [("Summary", "<p>The model has no Linear layer; the outlier-aware methods quantize Linear layers.</p>")]
    names = list(layers)
    total_layers = len(names)
    cap = ctx.get("methods_max_layers")
    if cap is not None and len(names) > int(cap):  # quick report: the first layers in model order
        names = names[: int(cap)]
        layers = {n: layers[n] for n in names}
    bits = int(ctx.get("methods_bits", 4))
    widths = [int(layer_weight(m).shape[1]) for m in layers.values()]
    group = 128 if all(w % 128 == 0 for w in widths) else None
    rtn, gptq = RTN(bits=bits, group_size=group), GPTQ(bits=bits, group_size=group)
    awq = AWQ(bits=bits, group_size=group, n_grid=int(ctx.get("awq_n_grid", 20)))
    # SmoothQuant's alpha is model-specific (0.5 in the paper for OPT, ~0.8 for others): the held-out
    # sweep runs first and the best alpha is the one compared layer by layer
    sweep_items, alpha, sweep = _alpha_sweep(model, calib, list(ctx.get("methods_alphas", _DEFAULT_ALPHAS)),
                                             int(ctx.get("methods_sweep_n", 64)))
    if sweep is not None:
        datasets["smoothquant_sweep"] = sweep
    naive, sq = ActQuant(8, "per-tensor"), SmoothQuant(alpha=alpha, act_scheme="per-tensor")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # explicit scales, rank-deficient Hessians: reported in the figures
        errors = layer_error(model, [rtn, gptq, awq, naive, sq], calib, layers=names)
    datasets["method_errors"] = errors
    pairs = [(gptq.label, rtn.label), (awq.label, rtn.label), (sq.label, naive.label)]
    items: list[tuple[str, str]] = [(
        "Summary",
        f"<p>{len(names)} Linear layers"
        f"{'' if len(names) == total_layers else f' (the first {len(names)} of {total_layers} in model order; qviz report --thorough takes all)'}"
        f"; {bits}-bit weights, AWQ searching {awq.n_grid} alphas, "
        f"{'groups of 128' if group else 'one scale per output channel'}. Output error is "
        "‖XWᵀ − Q(X)Ŵᵀ‖²/‖XWᵀ‖² on each layer's calibration inputs; each method is compared with "
        "the plain quantizer it improves on.</p>" + _alpha_note(sweep, alpha) + wins_table(errors, pairs),
    )]
    items.append(("GPTQ and AWQ: per-layer output error relative to RTN",
                  _fig(qviz.plot.method_wins(errors.sel(config=[rtn.label, gptq.label, awq.label]), rtn.label))))
    items.append(("SmoothQuant W8A8: per-layer output error relative to naive W8A8",
                  _fig(qviz.plot.method_wins(errors.sel(config=[naive.label, sq.label]), naive.label))))

    target = _outlier_layer(ctx.get("stats"), names)
    absmax = input_absmax(model, calib, [target])[target]
    ranges = smoothing_ranges(absmax, layer_weight(layers[target], target), sq.alpha)
    datasets["smoothing_ranges"] = ranges
    items.append((f"SmoothQuant on {target}: the outliers move from activations to weights",
                  _fig(qviz.plot.smoothing_ranges(ranges))))

    items.extend(sweep_items)

    rows = {n: as_rows(layers[n], x) for n, x in capture_inputs(model, calib, names).items()}  # [tokens, in]
    search = awq_search(layer_weight(layers[target], target), rows[target], bits, group, awq.n_grid)
    datasets["awq_search"] = search
    items.append((f"AWQ search on {target}", _fig(qviz.plot.awq_search(search))))

    method, state = GPTQMethod(), {"layers": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in names:
            method.quantize_layer(n, layers[n], gptq, rows[n], state)
    losses = gptq_loss_dataset(state["layers"])
    datasets["gptq_loss"] = losses
    flagged = [str(n) for n in losses.layer.values[losses.flagged.values]]
    note = (f"<p>Flagged: {', '.join(html.escape(n) for n in flagged)}. Their GPTQ loss is unusually high "
            "for this model; more or more representative calibration data usually fixes it.</p>") if flagged else ""
    items.append(("GPTQ loss per layer (calibration inputs, dampened Hessian)", note + _fig(qviz.plot.gptq_loss(losses))))
    return items
