"""The quantization section of ``qviz report``: per-layer error of several formats and how far they are from the limit.

``ctx`` keys read (all optional): ``quant_configs`` (a list of configs to compare),
``quant_sensitivity`` (bool: also run the one-layer-at-a-time sensitivity and a
mixed-precision recommendation; default on for models of at most 8 quantizable
layers, where it takes seconds), ``progress``. Datasets written: ``errors``,
``limits`` (and ``sensitivity``, ``recommendation``) into ``ctx["datasets"]``.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from qviz.models import quantizable_layers
from qviz.plot import quant as qplot
from qviz.quant.config import RTN, ActQuant, BnbInt8, BnbNF4
from qviz.measure.error import layer_error
from qviz.measure.limits import limits
from qviz.measure.sensitivity import recommend, sensitivity
from qviz.report_sections import default_group_size


def default_configs(model: Any) -> list[Any]:
    """RTN at 8/4/3 bits, W8A8, LLM.int8 and NF4; groups of 128 where every Linear row divides by 128, else per channel."""
    group = default_group_size(model)
    return [
        RTN(bits=8, group_size=None, symmetric=True),
        RTN(bits=4, group_size=group),
        RTN(bits=3, group_size=group),
        ActQuant(8, "per-token"),
        BnbInt8(threshold=6.0),
        BnbNF4(blocksize=64),
    ]


def summary_table(errors: Any) -> str:
    """One row per config: layers measured, bits per weight, median weight SQNR, median and worst output error."""
    rows = [
        "<tr><th>config</th><th>layers</th><th>bits/weight</th><th>median weight SQNR [dB]</th>"
        "<th>median output rel. err.</th><th>worst layer (output rel. err.)</th></tr>"
    ]
    layers = [str(n) for n in errors.layer.values]
    for cfg in errors.config.values:
        e = errors.sel(config=cfg)
        ok = np.isfinite(e["output_rel_err"].values)
        if not ok.any():
            rows.append(f"<tr><td>{html.escape(str(cfg))}</td><td>0</td><td colspan=4>every layer skipped</td></tr>")
            continue
        bytes_ = np.nansum(e["nbytes"].values)
        n_w = np.sum(e["n_weights"].values[ok])
        worst = int(np.nanargmax(e["output_rel_err"].values))
        rows.append(
            f"<tr><td>{html.escape(str(cfg))}</td><td>{int(ok.sum())}</td><td>{8 * bytes_ / n_w:.3f}</td>"
            f"<td>{np.nanmedian(e['weight_sqnr_db'].values):.1f}</td>"
            f"<td>{np.nanmedian(e['output_rel_err'].values):.2e}</td>"
            f"<td><code>{html.escape(layers[worst])}</code> ({e['output_rel_err'].values[worst]:.2e})</td></tr>"
        )
    return '<table class="qv">' + "".join(rows) + "</table>"


def section(model: Any, calib: Any, ctx: dict[str, Any]) -> list[tuple[str, Any]]:
    """Per-layer error of several formats, SQNR against the bounds, and (small models) sensitivity.

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("digits-cnn")                                                     # doctest: +SKIP
    >>> items = section(m, qviz.calibration_data(m, n=64), {"datasets": {}})            # doctest: +SKIP
    """
    datasets = ctx.setdefault("datasets", {})
    configs = list(ctx.get("quant_configs") or default_configs(model))
    errors = layer_error(model, configs, calib)
    datasets["errors"] = errors
    lim = limits(model, bits=range(2, 9))
    datasets["limits"] = lim
    first = str(lim.scheme.values[0])
    gap = float((lim["shannon_bound_db"] - lim["sqnr_db"].sel(scheme=first)).sel(bits=4).mean())
    intro = (
        f"<p>Each of {errors.sizes['layer']} layers quantized on its own with {len(configs)} formats; the output "
        "error is measured on the layer's own calibration inputs (with the real bitsandbytes layers for LLM.int8 "
        "and NF4, and INT8 activation fake-quant for W8A8). Sizes count every stored byte. "
        f"At 4 bits, <b>{html.escape(first)}</b> sits {gap:.1f} dB below the Shannon lower bound of the weights' own "
        "distribution on average.</p>"
    )
    items: list[tuple[str, Any]] = [
        ("Summary", intro + summary_table(errors)),
        ("Output error per layer", qplot.layer_error(errors, "output_rel_err")),
        ("Weight SQNR per layer and config", qplot.bits_heatmap(errors, "weight_sqnr_db")),
        ("Weight SQNR per layer and bit width", qplot.bits_heatmap(lim, "sqnr_db", first)),
        ("SQNR vs rate beside the limits", qplot.sqnr_vs_bits(lim)),
    ]
    n_layers = len([m for m in quantizable_layers(model).values() if type(m).__name__ != "Embedding"])
    if ctx.get("quant_sensitivity", n_layers <= 8):
        choices = [c for c in configs if c.label in ("RTN w8 ch sym",) or getattr(c, "bits", None) in (4, 3)]
        choices = [c for c in choices if getattr(c, "act_bits", None) is None]
        sens = sensitivity(model, choices, calib)
        datasets["sensitivity"] = sens
        items.append(("Sensitivity: end-to-end change with one layer quantized", qplot.bits_heatmap(sens, "sensitivity")))
        budget = float(np.nanmean(sens["bits_per_weight"].values))
        try:
            _, rec = recommend(model, choices, calib, budget_bits_per_weight=budget, sens=sens)
        except ValueError as err:
            items.append(("Mixed precision", f"<p>No recommendation: {html.escape(str(err))}</p>"))
        else:
            datasets["recommendation"] = rec
            items.append((f"Mixed precision at {budget:.2f} bits/weight", qplot.recommendation(rec)))
    return items
