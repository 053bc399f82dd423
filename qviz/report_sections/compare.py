"""The comparison section of ``qviz report``: accuracy, size, cost and robustness per config.

``ctx`` keys read (all optional): ``compare_configs`` (configs to compare;
default RTN 8/4/3/2-bit, LLM.int8 and NF4), ``compare_metrics`` (subset of
:data:`qviz.evaluate.compare.METRICS`), ``compare_n_attack`` (inputs
attacked per config), ``hardware`` (rows for the hardware table), ``progress``.
Datasets written into ``ctx["datasets"]``: ``comparison`` (the ``cmp``
Dataset), ``size_projection`` (the 70B table) and ``gemv`` (per-token kernel timings).
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from qviz import plot
from qviz.evaluate.accuracy import TopicTask
from qviz.evaluate.compare import compare
from qviz.evaluate.cost import gemv_benchmark
from qviz.evaluate.size import projection_table
from qviz.models import layer_type, quantizable_layers, weight_matrix
from qviz.quant.config import RTN, BnbInt8, BnbNF4
from qviz.report_sections import default_group_size
from qviz.report_sections._html import html_table
from qviz.report_sections.decoder import MAX_NEW_TOKENS, PROMPTS


def default_configs(model: Any) -> list[Any]:
    """RTN 8-bit per channel, RTN 4/3/2-bit (groups of 128 where every Linear row divides by 128, else per channel), LLM.int8, NF4."""
    group = default_group_size(model)
    return [
        RTN(bits=8, group_size=None),
        RTN(bits=4, group_size=group),
        RTN(bits=3, group_size=group),
        RTN(bits=2, group_size=group),
        BnbInt8(threshold=6.0),
        BnbNF4(blocksize=64),
    ]


def quick_configs(model: Any) -> list[Any]:
    """The quick report's comparison: the two 4-bit formats, RTN 4-bit (qviz's packed kernel) and NF4 (bitsandbytes)."""
    return [c for c in default_configs(model) if c.weight_bits == 4]


def _decoder_args(model: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    """For decoders: the prompts each config answers (the decoder section shows them side by side)."""
    if model.kind != "decoder":
        return {}
    return {"prompts": list(ctx.get("decoder_prompts", PROMPTS)), "max_new_tokens": int(ctx.get("decoder_max_new_tokens", MAX_NEW_TOKENS))}


def projection_html(table: Any) -> str:
    """The 70B size table as HTML: size, bits per weight, overhead in GB and in words."""
    rows = [
        [html.escape(str(c)), f"{float(table.size_gb.sel(config=c)):.2f}", f"{float(table.bits_per_weight.sel(config=c)):.4g}",
         f"{float(table.overhead_gb.sel(config=c)):.2f}", html.escape(str(table.overhead.sel(config=c).item()))]
        for c in table.config.values
    ]
    return html_table(rows, ["format", "size [GB]", "bits/weight", "overhead [GB]", "overhead is"])


def gemv_html(ds: Any) -> str:
    """Per-token (batch-1 matrix-vector) timings per kernel and shape, with the speed-up over torch fp32."""
    rows = []
    for s in ds.shape.values:
        row = [html.escape(str(s))]
        for k in ds.kernel.values:
            t, sp = float(ds.time_us.sel(shape=s, kernel=k)), float(ds.speedup.sel(shape=s, kernel=k))
            row.append("—" if not np.isfinite(t) else f"{t:.0f} µs ({sp:.2f}x)")
        rows.append(row)
    return html_table(rows, ["weight [out x in]", *[str(k) for k in ds.kernel.values]])


SMOKE_WIDTH = 0.3
"""An attack section whose widest 95% interval is wider than this is labelled a smoke run."""


def _noise_html(cmp: Any) -> str:
    """What the rates rest on: sample sizes, interval widths, which differences exceed the noise; a smoke-run label."""
    parts = []
    if "accuracy_n" in cmp:
        n = cmp.accuracy_n.values
        beyond = [str(c) for c in cmp.config.values if "accuracy_exceeds_noise" in cmp
                  and bool(cmp.accuracy_exceeds_noise.sel(config=c))]
        parts.append(
            f"Accuracy is a share of {int(np.nanmax(n)) if np.isfinite(n).any() else '?'} held-out items; the summary "
            "gives each rate its 95% Wilson interval and marks with * a config that differs from fp32 by more than "
            "the noise (Newcombe's interval for the difference excludes 0): "
            + (html.escape(", ".join(beyond)) if beyond else "none does") + ".")
    if "attack_success_rate_low" in cmp:
        width = float(np.nanmax((cmp.attack_success_rate_high - cmp.attack_success_rate_low).values))
        n = cmp.attack_n.values
        sizes = ", ".join(f"{html.escape(str(c))} {int(k)}" for c, k in zip(cmp.config.values, n, strict=True))
        text = (f"Attack success rates are shares of the attacked inputs each config gets right when clean ({sizes}); "
                f"the widest 95% interval is {width:.2f} wide.")
        if width > SMOKE_WIDTH:
            text = ("<b>Smoke run:</b> too few attacked inputs for the success rates to tell configs apart; the attack "
                    "section shows that the attacks run, not how robust the configs are (qviz report --thorough "
                    "attacks more inputs). " + text)
        parts.append(text)
    return "".join(f"<p>{p}</p>" for p in parts)


def section(model: Any, calib: Any, ctx: dict[str, Any]) -> list[tuple[str, Any]]:
    """Compare configs on the model's held-out task; the dashboard, attack curves, size and kernel tables.

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("digits-cnn")                                                     # doctest: +SKIP
    >>> items = section(m, qviz.calibration_data(m, n=64), {"datasets": {}})            # doctest: +SKIP
    """
    datasets = ctx.setdefault("datasets", {})
    if ctx.get("compare_configs"):
        configs = list(ctx["compare_configs"])
    else:
        configs = quick_configs(model) if ctx.get("compare_quick_configs") else default_configs(model)
    task = None
    if ctx.get("compare_n_eval") and model.kind == "text-encoder":
        task = TopicTask(n_eval=int(ctx["compare_n_eval"]), support_per_class=int(ctx.get("compare_support", 6)))
    cmp = compare(
        model, configs, task, calib=calib, metrics=ctx.get("compare_metrics"), hardware=ctx.get("hardware"),
        n_attack=ctx.get("compare_n_attack"), eps=ctx.get("compare_eps"),
        attack_steps=int(ctx.get("compare_attack_steps", 5)), threads=ctx.get("compare_timing_threads", 1),
        progress=bool(ctx.get("progress", False)), **_decoder_args(model, ctx),
    )
    datasets["comparison"] = cmp
    proj = projection_table(70e9)
    datasets["size_projection"] = proj
    shapes = sorted({tuple(int(d) for d in weight_matrix(m).shape) for m in quantizable_layers(model).values()
                     if layer_type(m) == "linear"})[:3]
    gemv = gemv_benchmark([*shapes, (4096, 4096)], kernels=["torch fp32", "numba int4", "numba int8", "torch int8 dynamic"],
                          repeats=10, threads=1)
    datasets["gemv"] = gemv
    intro = (
        f"<p>{cmp.sizes['config']} configs of <b>{html.escape(str(cmp.attrs.get('model')))}</b> on the "
        f"<b>{html.escape(str(cmp.attrs.get('task')))}</b> task ({html.escape(str(cmp.attrs.get('task_description', '')))}). "
        "Sizes count every stored byte; timings are measured on this machine by the kernel named in each row "
        "(<i>real kernel</i>: bitsandbytes or the Numba packed GEMV; <i>simulated</i>: fake-quant float arithmetic, "
        "which is no faster than full precision). Attacks: white-box through straight-through gradients of the "
        "quantized model, and transfer from full precision.</p>"
        f"<p>Attacks: {cmp.attrs.get('attack_inputs', '?')} inputs per config, {cmp.attrs.get('attack_steps', '?')} PGD steps; "
        f"{'the quick report compares the two 4-bit formats at reduced sizes (timings with all cores): qviz report --thorough compares RTN 8/4/3/2-bit, LLM.int8 and NF4 at full size' if ctx.get('compare_quick_configs') else 'full-size comparison'}.</p>"
    )
    intro += _noise_html(cmp)
    items: list[tuple[str, Any]] = [("Comparison", intro), ("Dashboard", plot.dashboard(cmp))]
    if "latency_ms" in cmp:
        items.append(("Throughput, measured", plot.cost_bars(cmp, "throughput")))
    if "attack_success_rate" in cmp:
        items.append(("Attack success vs ε", plot.attack_curves(cmp)))
    if "error_amplification" in cmp:
        items.append(("Error amplification per layer", plot.amplification(cmp)))
    items.append(("Size of a 70B-weight model per format", projection_html(proj)))
    items.append(("One token at batch 1: matrix-vector time per kernel", gemv_html(gemv)))
    return items
