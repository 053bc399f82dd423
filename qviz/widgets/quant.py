"""QuantExplorer: turn a quantization knob, watch one layer's error move.

Each control change re-quantizes the selected layer at once (weight error,
histogram before/after, its point on the SQNR-vs-bits chart, its bar); the
rest — the layer's output error on calibration inputs, the sweep over bit
widths, the fixed-format references and every other layer's bar — runs on a
background thread with a progress bar and a Cancel button, so the kernel never
freezes. Bad input (a group size that does not divide the layer, bits out of
range) shows a readable message and leaves the figures as they were.

Examples
--------
>>> import qviz
>>> model = qviz.load("minilm")                                           # doctest: +SKIP
>>> qviz.widgets.QuantExplorer(model, qviz.calibration_data(model, n=32))   # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
import threading
import time
from typing import Any

import ipywidgets as W

from qviz.quant.config import BnbFP4, BnbInt8, BnbNF4, QuantConfig
from qviz.measure.lab import LayerLab, LayerResult, available_methods, check_fits, make_config, method_controls
from qviz.widgets._base import BackgroundJob, Choice, Explorer, PlotPane, sync_figure
from qviz.widgets._figures import error_bars_spec, histogram_spec, sqnr_bits_spec
from qviz.widgets._static import bars_html, table_html

COMPUTE_LOCK = threading.RLock()
"""Serialises quantization work between the control thread and background jobs (Numba's
workqueue threading layer must not be entered from two threads at once)."""

METRICS = {
    "weight SQNR": ("weight_sqnr_db", "dB", False),
    "output rel. error": ("output_rel_err", "", True),
    "weight MSE": ("weight_mse", "", True),
    "bits per weight": ("bits_per_weight", "bit", False),
}
REFERENCE_FORMATS = (BnbNF4(), BnbFP4(), BnbInt8())


class QuantExplorer(Explorer):
    """Method, bits, group size, symmetric, α and threshold controls over one layer's quantization error.

    Parameters
    ----------
    model
        A :class:`~qviz.QvizModel`, ``torch.nn.Module`` or model name. Never changed.
    batch
        Calibration inputs (e.g. ``qviz.calibration_data(model, n=32)``): the output error,
        AWQ, GPTQ and SmoothQuant use them.
    layers
        Layer filter (default: every quantizable layer).
    layer
        Layer selected first (default: the first).
    method, bits, group_size, symmetric, alpha, threshold
        Starting values of the controls (``group_size``: an int, ``"channel"`` or ``"tensor"``).
    max_rows
        Calibration tokens kept per layer for the output error.
    debounce
        Seconds after the last control change before updating (0: synchronously).
    background
        Run the whole-model work (other layers, the bit sweep, output errors) on a thread.
        ``False`` skips it: only the selected layer's weight numbers update.

    Attributes
    ----------
    layer_select, method_select, bits_box, group_box, symmetric_box, alpha_slider, threshold_box, metric_select
        The controls.
    bars, hist, sqnr : PlotPane
        Per-layer error, weight histogram before/after, SQNR vs bits.
    job : BackgroundJob
        Progress bar and Cancel button of the background work.
    current : LayerResult or None
        The selected layer under the current config.
    timings : dict
        Seconds of the last synchronous update (``"update"``) and background job (``"background"``).

    Examples
    --------
    >>> import torch, qviz
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    >>> ex = qviz.widgets.QuantExplorer(net, torch.randn(16, 64), group_size=32, debounce=0, background=False)
    >>> ex.bits_box.value = 3
    >>> ex.current.config
    'RTN w3 g32 asym'
    >>> ex.group_box.value = "5"
    >>> ex.last_error.startswith("group size 5 does not divide")
    True
    """

    title = "qviz QuantExplorer"

    def __init__(
        self,
        model: Any,
        batch: Any,
        *,
        layers: Any = None,
        layer: str | None = None,
        method: str = "RTN",
        bits: int = 4,
        group_size: int | str | None = 128,
        symmetric: bool = False,
        alpha: float = 0.5,
        threshold: float = 6.0,
        max_rows: int = 256,
        debounce: float = 0.05,
        background: bool = True,
    ) -> None:
        self.lab = LayerLab(model, batch, layers, max_rows=max_rows)
        self.background = bool(background)
        names = self.lab.names
        if layer is not None and layer not in names:
            self.lab.check_layer(layer)
        methods = available_methods()
        if method not in methods:
            raise ValueError(f"Unknown method {method!r}; available: {', '.join(methods)}.")
        style = {"description_width": "initial"}
        self.layer_select = Choice(options=names, value=layer or names[0], description="layer", style=style,
                                       layout=W.Layout(width="440px"))
        self.method_select = Choice(options=methods, value=method, description="method", style=style,
                                        layout=W.Layout(width="200px"))
        self.bits_box = W.IntText(value=bits, description="bits", style=style, layout=W.Layout(width="110px"))
        gs_text = "channel" if group_size is None else str(group_size)
        self.group_box = W.Text(value=gs_text, description="group size", continuous_update=False, style=style,
                                placeholder="128, channel or tensor", layout=W.Layout(width="190px"))
        self.symmetric_box = W.Checkbox(value=symmetric, description="symmetric", indent=False,
                                        layout=W.Layout(width="110px"))
        self.alpha_slider = W.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.05, description="α",
                                          continuous_update=False, style=style, layout=W.Layout(width="230px"))
        self.threshold_box = W.FloatText(value=threshold, description="threshold", style=style,
                                         layout=W.Layout(width="150px"))
        self.metric_select = Choice(options=list(METRICS), value="weight SQNR", description="bars show",
                                        style=style, layout=W.Layout(width="240px"))
        self.summary = W.HTML()
        self.bars = PlotPane()
        self.hist = PlotPane(layout=W.Layout(width="50%"))
        self.sqnr = PlotPane(layout=W.Layout(width="50%"))
        self.job = BackgroundJob()
        self.current: LayerResult | None = None
        self.config: QuantConfig | None = None
        self.results: dict[tuple[str, str], LayerResult] = {}
        self.sweeps: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
        self.refs: dict[str, dict[str, tuple[float, float]]] = {}
        self.timings: dict[str, float] = {}
        self._generation = 0
        self.controls = {
            "layer": self.layer_select, "method": self.method_select, "bits": self.bits_box,
            "group_size": self.group_box, "symmetric": self.symmetric_box, "alpha": self.alpha_slider,
            "threshold": self.threshold_box, "metric": self.metric_select,
        }
        out_f, in_f = self.lab.shape(self.layer_select.value)
        super().__init__(
            [
                W.HBox([self.layer_select, self.method_select, self.metric_select]),
                W.HBox([self.bits_box, self.group_box, self.symmetric_box, self.alpha_slider, self.threshold_box]),
                self.summary, self.job.box, self.bars, W.HBox([self.hist, self.sqnr], layout=W.Layout(width="100%")),
            ],
            note=f"{self.lab.model.name} · {len(names)} quantizable layers · first layer {out_f}×{in_f}",
            debounce=debounce,
        )
        self._refresh_guarded()
        for ctrl in self.controls.values():
            ctrl.observe(self._on_control, names="value")

    # ------------------------------------------------------------------ config from the controls
    def current_config(self) -> QuantConfig:
        """The config the controls describe now (raises ``ValueError`` with a readable message)."""
        return make_config(
            self.method_select.value, self.bits_box.value, self.group_box.value, self.symmetric_box.value,
            self.alpha_slider.value, self.threshold_box.value,
        )

    def _grey_out(self, method: str) -> None:
        used = method_controls(method)
        for key in ("bits", "group_size", "symmetric", "alpha", "threshold"):
            self.controls[key].disabled = key not in used

    # ------------------------------------------------------------------ the synchronous update
    def _refresh(self) -> None:
        t0 = time.perf_counter()
        method = self.method_select.value
        self._grey_out(method)
        cfg = self.current_config()
        layer = self.layer_select.value
        check_fits(cfg, layer, self.lab.shape(layer)[1])
        # the input is valid: what the background was doing is now stale
        self._generation += 1
        self.job.cancel()
        if self.lab.needs_prepare(cfg) and not self.lab.is_prepared(cfg) and self.background:
            # SmoothQuant/AWQ change the model first: that runs the model, so it goes to the background
            self.summary.value = (
                f"<i>{html.escape(cfg.label)}: preparing the model (smoothing scales, forward passes) "
                "in the background…</i>"
            )
            self.config = cfg
            self._start_background(cfg, layer, first=True)
            return
        with COMPUTE_LOCK:
            res = self.lab.quantize(layer, cfg)
        self._show(cfg, layer, res)
        self.timings["update"] = time.perf_counter() - t0
        self._start_background(cfg, layer, first=False)

    def _show(self, cfg: QuantConfig, layer: str, res: LayerResult) -> None:
        key = (cfg.label, layer)
        old = self.results.get(key)
        if old is not None and math.isfinite(old.output_rel_err):
            res.output_rel_err = old.output_rel_err
            res.kernel = res.kernel or old.kernel
            res.lq = None
        self.results[key] = res
        self.current = res
        self.config = cfg
        self._draw(cfg, layer)

    def _draw(self, cfg: QuantConfig, layer: str) -> None:
        """Bring the summary line and the three figures up to date with the cached numbers.

        Order matters in the browser, which draws one figure after another: the
        summary and the histogram (what a knob changes most) go first.
        """
        res = self.results.get((cfg.label, layer))
        if res is not None:
            out_f, in_f = self.lab.shape(layer)
            out_err = "…" if not math.isfinite(res.output_rel_err) else f"{res.output_rel_err:.3e}"
            self.summary.value = (
                f"<b>{html.escape(layer)}</b> ({out_f}×{in_f}) · <b>{html.escape(cfg.label)}</b>: "
                f"weight SQNR <b>{res.weight_sqnr_db:.2f} dB</b>, MSE {res.weight_mse:.3e}, "
                f"max |error| {res.max_abs_err:.3g}, {res.bits_per_weight:.3f} bits/weight stored, "
                f"output rel. error {out_err} · {html.escape(res.kernel or 'kernel: measuring…')}"
            )
            before = self.lab.before(layer)
            sync_figure(self.hist, histogram_spec(before.edges, before.hist, res.hist.hist, layer, cfg.label))
            curve = self.sweeps.get((_sweep_key(cfg), layer), [])
            refs = self.refs.get(layer, {})
            sync_figure(self.sqnr, sqnr_bits_spec(curve, refs, (res.bits_per_weight, res.weight_sqnr_db), layer,
                                                  self.method_select.value, cfg.label))
        metric = self.metric_select.value
        var, units, log = METRICS[metric]
        values = [getattr(self.results[(cfg.label, n)], var) if (cfg.label, n) in self.results else math.nan
                  for n in self.lab.names]
        sync_figure(self.bars, error_bars_spec(self.lab.names, values, metric, units, layer, cfg.label, log=log))

    # ------------------------------------------------------------------ the background work
    def _start_background(self, cfg: QuantConfig, layer: str, first: bool) -> None:
        if not self.background:
            return
        generation = self._generation
        others = [n for n in self.lab.names if n != layer and (cfg.label, n) not in self.results]
        sweep_needed = (_sweep_key(cfg), layer) not in self.sweeps
        refs_needed = layer not in self.refs
        total = 1 + int(sweep_needed) + int(refs_needed) + len(others)

        def stale() -> bool:
            return self.job.cancelled or generation != self._generation

        def redraw() -> None:
            with self._lock:
                if generation == self._generation:
                    self._draw(cfg, layer)

        def work(job: BackgroundJob) -> None:
            t0 = time.perf_counter()
            last_draw = time.perf_counter()
            if first:  # the model-changing methods: prepare once (cached per config)
                self.lab.prepare(cfg)
                with COMPUTE_LOCK:
                    res = self.lab.quantize(layer, cfg)
                with self._lock:
                    if generation == self._generation:
                        self._show(cfg, layer, res)
            job.advance(f"{layer}: output error")
            res = self.results.get((cfg.label, layer))
            if res is not None and not math.isfinite(res.output_rel_err):
                with COMPUTE_LOCK:
                    self.lab.output_error(res, cfg)
                res.lq = None
                redraw()
            if sweep_needed and not stale():
                job.advance(f"{layer}: sweeping 2–8 bits")
                curve = []
                for b in _sweep_bits(cfg):
                    if stale():
                        return
                    with COMPUTE_LOCK:
                        r = self.lab.quantize(layer, cfg.replace(**{_bits_field(cfg): b}))
                    curve.append((b, r.bits_per_weight, r.weight_sqnr_db))
                self.sweeps[(_sweep_key(cfg), layer)] = curve
                redraw()
            if refs_needed and not stale():
                job.advance(f"{layer}: NF4 / FP4 / Int8 references")
                refs = {}
                for ref in REFERENCE_FORMATS:
                    if stale():
                        return
                    try:
                        with COMPUTE_LOCK:
                            r = self.lab.quantize(layer, ref)
                    except (ValueError, TypeError, RuntimeError, ImportError):
                        continue  # a format that does not apply to this layer has no reference point
                    refs[ref.label] = (r.bits_per_weight, r.weight_sqnr_db)
                self.refs[layer] = refs
                redraw()
            for name in others:
                if stale():
                    return
                job.advance(f"layer {name}")
                with COMPUTE_LOCK:
                    r = self.lab.quantize(name, cfg)
                    self.lab.output_error(r, cfg)
                r.lq = None
                self.results[(cfg.label, name)] = r
                if time.perf_counter() - last_draw > 1.0:
                    redraw()
                    last_draw = time.perf_counter()
            redraw()
            self.timings["background"] = time.perf_counter() - t0
            job.status.value = f"{len(self.lab.names)} layers measured for {html.escape(cfg.label)}"

        self.job.start(work, total=total, label=f"measuring {cfg.label}")

    # ------------------------------------------------------------------ static picture
    def static_parts(self) -> list[str]:
        cfg = self.config
        if cfg is None:
            return ["<i>nothing measured yet</i>"]
        names = self.lab.names
        rows = []
        vals = []
        for n in names:
            r = self.results.get((cfg.label, n))
            vals.append(r.weight_sqnr_db if r else math.nan)
            if r:
                rows.append([n, r.weight_sqnr_db, r.weight_mse, r.output_rel_err, r.bits_per_weight])
        sel = names.index(self.layer_select.value) if self.layer_select.value in names else None
        return [
            self.summary.value,
            f"<b>weight SQNR per layer (dB) · {html.escape(cfg.label)}</b>",
            bars_html(names, vals, " dB", highlight=sel),
            table_html(["layer", "weight SQNR (dB)", "weight MSE", "output rel. error", "bits/weight"], rows),
        ]

    # ------------------------------------------------------------------ convenience
    def set(self, **values: Any) -> QuantExplorer:
        """Set controls by name (``layer``, ``method``, ``bits``, ``group_size``, ``symmetric``, ``alpha``,
        ``threshold``, ``metric``) with one update, and wait for it; returns self.

        Examples
        --------
        >>> ex.set(method="NF4", group_size=64)   # doctest: +SKIP
        """
        unknown = sorted(set(values) - set(self.controls))
        if unknown:
            raise ValueError(f"Unknown control(s) {unknown}; controls: {', '.join(self.controls)}.")
        with _paused(self):
            for key, value in values.items():
                self.controls[key].value = str(value) if key == "group_size" else value
        self._on_control()
        self.flush()
        return self


def _bits_field(cfg: QuantConfig) -> str:
    return "bits" if hasattr(cfg, "bits") else "w_bits"


def _sweep_bits(cfg: QuantConfig) -> tuple[int, ...]:
    if not (hasattr(cfg, "bits") or hasattr(cfg, "w_bits")):
        return ()
    return (2, 3, 4, 5, 6, 7, 8)


def _sweep_key(cfg: QuantConfig) -> str:
    """The config with its bit width blanked: configs that differ only in bits share a sweep."""
    import dataclasses
    import json

    fields = dataclasses.asdict(cfg)
    fields.pop("bits", None)
    fields.pop("w_bits", None)
    return type(cfg).__name__ + json.dumps(fields, sort_keys=True, default=str)


class _paused:
    """Detach the control observers while several controls are set, so they make one update."""

    def __init__(self, ex: QuantExplorer) -> None:
        self.ex = ex

    def __enter__(self) -> None:
        for ctrl in self.ex.controls.values():
            ctrl.unobserve(self.ex._on_control, names="value")

    def __exit__(self, *exc: object) -> None:
        for ctrl in self.ex.controls.values():
            ctrl.observe(self.ex._on_control, names="value")


__all__ = ["QuantExplorer"]
