"""OutlierExplorer: which channels of which layers carry the outliers, live.

The explorer runs :func:`qviz.capture` once, then every control works on the
statistics it kept (:func:`qviz.outlier_summary` recomputes the outliers for a
new threshold without running the model again).

Examples
--------
>>> import qviz
>>> model = qviz.load("minilm")                                   # doctest: +SKIP
>>> qviz.widgets.OutlierExplorer(model, qviz.calibration_data(model, n=32))  # doctest: +SKIP
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as W
import numpy as np
import xarray as xr

from qviz.activations.outliers import _check_stats, outlier_summary
from qviz.plot import channel_profile
from qviz.widgets._base import Choice, Explorer, PlotPane, sync_figure
from qviz.widgets._canvas import HeatmapCanvas
from qviz.widgets._static import heatmap_png, png_img, table_html

HEATMAP_VARS = ("absmax", "std", "kurtosis", "weight_absmax_in", "max", "min", "mean")
SAMPLE_BUDGET_BYTES = 64 * 2**20
"""Token × channel samples are kept for every layer when they fit this budget, else for the shown layer only."""


def top_table_rows(stats: xr.Dataset, layer: str, threshold: float) -> list[list[object]]:
    """Rows ``[rank, channel, absmax, std, kurtosis, weight absmax, over threshold, layers in top-k]`` of one layer.

    Examples
    --------
    >>> ds = xr.Dataset({"absmax": (("layer", "channel"), np.array([[1.0, 9.0]]))}, coords={"layer": ["fc"]})
    >>> top_table_rows(outlier_summary(ds, top_k=1), "fc", 6.0)
    [[1, 9, 9.0, nan, nan, nan, 'yes', 1]]
    """
    row = stats.sel(layer=layer)
    top = row["top_channels"].values
    rec = stats["channel_recurrence"].values

    def get(var: str, ch: int) -> float:
        return float(row[var].values[ch]) if var in row else float("nan")

    out: list[list[object]] = []
    for rank, ch in enumerate(int(c) for c in top):
        if ch < 0:
            continue
        absmax = get("absmax", ch)
        out.append([
            rank + 1, ch, absmax, get("std", ch), get("kurtosis", ch), get("weight_absmax_in", ch),
            "yes" if absmax > threshold else "no", int(rec[ch]),
        ])
    return out


TABLE_COLUMNS = ["rank", "channel", "absmax", "std", "kurtosis", "weight absmax", "over threshold", "layers in top-k"]


def transform_views(model: Any, batch: Any) -> list[str]:
    """The "model" toggle's choices: the original, and what :func:`qviz.rotate` / SmoothQuant can make of ``model``."""
    if model is None or batch is None:
        return ["original"]
    from qviz.quant.rotate import why_not_rotatable

    return ["original", *(["after rotation"] if why_not_rotatable(model) is None else []), "after smoothing"]


def transformed_model(model: Any, batch: Any, view: str, names: list[str]) -> Any:
    """A copy of ``model`` rotated (:func:`qviz.rotate`) or smoothed (SmoothQuant's fold, alpha 0.5, on ``batch``)."""
    from qviz.models import QvizModel, load

    model = model if isinstance(model, QvizModel) else load(model)
    if view == "after rotation":
        from qviz.quant.rotate import rotate

        return rotate(model)
    if view == "after smoothing":
        import warnings

        from qviz.quant.config import SmoothQuant
        from qviz.quant.registry import method_for

        cfg = SmoothQuant(alpha=0.5)
        work = model.copy()
        with warnings.catch_warnings():  # layers without a foldable predecessor keep their input: said in the docs
            warnings.simplefilter("ignore")
            method_for(cfg).prepare(work, cfg, batch, {n: work.module.get_submodule(n) for n in names
                                                       if _is_linear(work.module.get_submodule(n))})
        return work
    raise ValueError(f"Unknown model view {view!r}; expected 'original', 'after rotation' or 'after smoothing'.")


def _is_linear(module: Any) -> bool:
    from qviz.models import layer_type

    return layer_type(module) == "linear"


class OutlierExplorer(Explorer):
    """Layer × channel outliers with a layer selector and an LLM.int8-style threshold slider.

    Parameters
    ----------
    model
        A :class:`~qviz.QvizModel`, ``torch.nn.Module`` or model name. Not changed.
    batch
        Calibration inputs for :func:`qviz.capture` (e.g. ``qviz.calibration_data(model, n=32)``).
    stats
        A ``stats`` Dataset from :func:`qviz.capture` to explore instead of capturing
        (``model`` and ``batch`` may then be None; the token map needs them or a
        Dataset captured with ``sample=``).
    threshold
        Starting outlier threshold on channel absmax (LLM.int8 uses 6.0).
    top_k
        Channels listed per layer.
    layers
        Layer filter passed to :func:`qviz.capture`.
    max_sample_tokens
        Tokens kept for the token × channel map.
    max_channels
        Heatmap columns sent to the browser; wider layers are merged in blocks keeping the maximum.
    debounce
        Seconds to wait after the last control change before updating (0: at once, synchronously).

    Attributes
    ----------
    stats : xarray.Dataset
        The statistics with the outlier summary for the current threshold and top-k.
    layer_select, threshold_slider, var_select, top_k_slider, log_toggle
        The controls (ipywidgets).
    transform_toggle
        "original" / "after rotation" (Llama-family decoders) / "after smoothing" (SmoothQuant's
        fold, alpha 0.5): which model the statistics are of (the others are captured on first use).
    heatmap, tokens : HeatmapCanvas
        Layer × channel and token × channel maps, drawn on a canvas from binary buffers.
    profile : PlotPane
        The selected layer's channel profile.
    table : ipywidgets.HTML
        The selected layer's top-k channels.

    Examples
    --------
    >>> import torch, qviz
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> ex = qviz.widgets.OutlierExplorer(net, torch.randn(32, 8), debounce=0)
    >>> ex.threshold_slider.value = 1.0
    >>> int(ex.stats.attrs["threshold"])
    1
    """

    title = "qviz OutlierExplorer"

    def __init__(
        self,
        model: Any = None,
        batch: Any = None,
        *,
        stats: xr.Dataset | None = None,
        threshold: float = 6.0,
        top_k: int = 8,
        layers: Any = None,
        max_sample_tokens: int = 128,
        max_channels: int = 512,
        debounce: float = 0.05,
        progress: bool = False,
    ) -> None:
        if not isinstance(max_channels, int) or isinstance(max_channels, bool) or max_channels < 1:
            raise ValueError(f"max_channels must be a positive int (heatmap columns sent); got {max_channels!r}.")
        if stats is None:
            if model is None or batch is None:
                raise ValueError(
                    "OutlierExplorer needs a model and a calibration batch, e.g. "
                    "OutlierExplorer(model, qviz.calibration_data(model, n=32)), or stats=qviz.capture(...)."
                )
            from qviz.activations.capture import capture
            from qviz.models import QvizModel, load

            model = model if isinstance(model, QvizModel) else load(model)
            stats = capture(model, batch, layers=layers, threshold=threshold, top_k=top_k, progress=progress)
        else:
            _check_stats(stats)
            stats = outlier_summary(stats, threshold=threshold, top_k=top_k)
        self.model = model
        self.batch = batch
        self.max_sample_tokens = max_sample_tokens
        self.max_channels = max_channels
        self.stats = stats
        self._base_stats = stats
        self._samples: dict[str, tuple[np.ndarray, list[str] | None]] = {}
        self._load_samples_from(stats)
        self._sample_all_done = False
        names = [str(n) for n in stats.layer.values]
        self._names = names
        first = names[int(np.nanargmax(stats["outlier_ratio"].values))] if np.isfinite(stats["outlier_ratio"].values).any() else names[0]

        style = {"description_width": "initial"}
        self.layer_select = Choice(options=names, value=first, description="layer", style=style,
                                       layout=W.Layout(width="420px"))
        self.threshold_slider = W.FloatLogSlider(value=float(threshold), base=10, min=-1, max=3, step=0.01,
                                                 description="threshold", readout_format=".3g",
                                                 continuous_update=False, style=style)
        var_options = [v for v in HEATMAP_VARS if v in stats and stats[v].dims == ("layer", "channel")]
        self.var_select = Choice(options=var_options, value="absmax", description="statistic", style=style,
                                     layout=W.Layout(width="220px"))
        self.top_k_slider = W.IntSlider(value=int(top_k), min=1, max=32, description="top-k",
                                        continuous_update=False, style=style)
        self.log_toggle = W.Checkbox(value=True, description="log colour scale", indent=False)
        self._capture_args = {"layers": layers, "threshold": threshold, "top_k": top_k}
        self._view = "original"
        self._views: dict[str, tuple] = {}
        self.transform_toggle = W.ToggleButtons(options=transform_views(model, batch), value="original",
                                                description="model", style=style)

        self.heatmap = HeatmapCanvas(row_name="layer", col_name="channel", row_px=12, max_height=560,
                                     hint="hover for values · click a row to select that layer")
        self.tokens = HeatmapCanvas(row_name="token", col_name="channel", value_name="|x|", colorscale="magma",
                                    row_px=5, max_height=420, hint="hover for values")
        self.profile = PlotPane()
        self.table = W.HTML()
        controls = W.HBox([self.layer_select, self.var_select, self.log_toggle])
        knobs = W.HBox([self.threshold_slider, self.top_k_slider])
        super().__init__(
            [controls, knobs, *([self.transform_toggle] if len(self.transform_toggle.options) > 1 else []), self.heatmap, self.profile, W.HTML("<b>Token × channel |activation|</b>"),
             self.tokens, W.HTML("<b>Top channels</b>"), self.table],
            note=self._note(), debounce=debounce,
        )
        self._refresh_guarded()
        for ctrl in (self.layer_select, self.threshold_slider, self.var_select, self.top_k_slider, self.log_toggle,
                     self.transform_toggle):
            ctrl.observe(self._on_control, names="value")
        self.heatmap.observe(self._on_row_click, names="selected_row")

    # ------------------------------------------------------------------ helpers
    def _note(self) -> str:
        s = self._base_stats
        n = s.attrs.get("n_tokens", "?")
        rnd = " · RANDOM WEIGHTS" if int(s.attrs.get("random_weights", 0)) else ""
        return f"{s.attrs.get('model', 'model')} · {s.sizes['layer']} layers · {n} calibration tokens{rnd}"

    def _load_samples_from(self, stats: xr.Dataset) -> None:
        if "sample" not in stats:
            return
        texts = [str(t) for t in stats["token_text"].values] if "token_text" in stats.coords else None
        for name in stats.sample_layer.values:
            block = np.abs(stats["sample"].sel(sample_layer=name).values)  # [token, channel]
            n_ch = int(stats["n_channels"].sel(layer=name)) if "n_channels" in stats else block.shape[1]
            keep = np.isfinite(block).any(axis=1)
            self._samples[str(name)] = (block[keep, :n_ch], [t for t, k in zip(texts, keep, strict=True) if k] if texts else None)

    def _sample_for(self, layer: str) -> tuple[np.ndarray, list[str] | None] | None:
        """The layer's token × channel sample, captured on first use (for every layer when that fits the budget)."""
        if layer in self._samples:
            return self._samples[layer]
        if self.model is None or self.batch is None:
            return None
        from qviz.activations.capture import capture

        widths = self._base_stats["n_channels"].values if "n_channels" in self._base_stats else None
        budget_all = (
            widths is not None
            and not self._sample_all_done
            and len(self._names) * self.max_sample_tokens * int(np.max(widths)) * 4 <= SAMPLE_BUDGET_BYTES
        )
        names = self._names if budget_all else [layer]
        head = self.batch[:16] if isinstance(self.batch, (list, tuple)) or hasattr(self.batch, "shape") else self.batch
        s = capture(self.model, head, layers=names, sample=names, max_sample_tokens=self.max_sample_tokens,
                    progress=False)
        self._sample_all_done = self._sample_all_done or budget_all
        self._load_samples_from(s)
        return self._samples.get(layer)

    def _use_view(self, view: str) -> None:
        """Switch the statistics (and token samples) to the original, rotated or smoothed model."""
        if view == self._view:
            return
        self._views[self._view] = (self.model, self._base_stats, self._samples, self._sample_all_done)
        if view not in self._views:
            from qviz.activations.capture import capture

            model = transformed_model(self._views["original"][0], self.batch, view, self._names)
            stats = capture(model, self.batch, progress=False, **self._capture_args)
            self._views[view] = (model, stats.sel(layer=self._names), {}, False)
        self.model, self._base_stats, self._samples, self._sample_all_done = self._views[view]
        self._view = view

    def _on_row_click(self, change: dict[str, Any]) -> None:
        row = change["new"]
        if 0 <= row < len(self._names) and self._names[row] != self.layer_select.value:
            self.layer_select.value = self._names[row]

    # ------------------------------------------------------------------ the update
    def _refresh(self) -> None:
        threshold = float(self.threshold_slider.value)
        top_k = int(self.top_k_slider.value)
        layer = self.layer_select.value
        var = self.var_select.value
        log = bool(self.log_toggle.value)
        if not np.isfinite(threshold) or threshold <= 0:
            raise ValueError(f"threshold must be a positive number (LLM.int8 uses 6.0); got {threshold!r}.")
        if layer not in self._names:
            raise ValueError(f"Unknown layer {layer!r}; pick one of the {len(self._names)} captured layers.")
        self._use_view(self.transform_toggle.value)
        # the canvases recolour from the threshold alone: send it first, the rest follows
        heat_threshold = threshold if var in ("absmax", "max", "min") else 0.0
        self.heatmap.threshold = heat_threshold
        self.tokens.threshold = threshold
        stats = outlier_summary(self._base_stats, threshold=threshold, top_k=top_k)
        values = stats[var].values
        values = np.abs(values) if log else values
        unit = stats[var].attrs.get("long_name", var)
        self.heatmap.set_matrix(
            values, self._names, self.max_channels,
            title=f"{unit} per layer and channel",
            value_name=var,
            threshold=heat_threshold,
            log_scale=log,
            selected_row=self._names.index(layer),
        )
        sync_figure(self.profile, channel_profile(stats, layer, threshold))
        sample = self._sample_for(layer)
        if sample is not None and sample[0].size:
            block, texts = sample
            labels = [f"{i}: {t}" for i, t in enumerate(texts)] if texts else None
            self.tokens.set_matrix(
                block, labels, self.max_channels,
                title=f"|activation| at the input of {layer} (first {block.shape[0]} tokens)",
                threshold=threshold,
            )
        rows = top_table_rows(stats, layer, threshold)
        self.table.value = table_html(TABLE_COLUMNS, rows)
        self.stats = stats
        over = int(stats["n_over_threshold"].sel(layer=layer))
        ratio = float(stats["outlier_ratio"].sel(layer=layer))
        self.frame.note = f"{self._note()} · {layer}: outlier ratio {ratio:.1f}, {over} channels over {threshold:g}"

    # ------------------------------------------------------------------ static picture
    def static_parts(self) -> list[str]:
        layer = self.layer_select.value
        thr = float(self.threshold_slider.value)
        parts = [
            f"<b>{html.escape(self.heatmap.title)}</b> (rows: {len(self._names)} layers, red: over {thr:g})",
            png_img(heatmap_png(self.heatmap.matrix(), log=self.heatmap.log_scale, threshold=self.heatmap.threshold),
                    "layer x channel heatmap"),
        ]
        if self.tokens.values:
            parts += [f"<b>{html.escape(self.tokens.title)}</b>",
                      png_img(heatmap_png(self.tokens.matrix(), threshold=thr), "token x channel map")]
        parts += [f"<b>Top channels of {html.escape(layer)}</b>", self.table.value]
        return parts

    # ------------------------------------------------------------------ convenience
    def select(self, layer: str | None = None, threshold: float | None = None, var: str | None = None,
               top_k: int | None = None) -> OutlierExplorer:
        """Set several controls at once (one update); returns self.

        Examples
        --------
        >>> ex.select(layer="encoder.layer.0.output.dense", threshold=3.0)   # doctest: +SKIP
        """
        if layer is not None:
            self.layer_select.value = layer
        if threshold is not None:
            self.threshold_slider.value = threshold
        if var is not None:
            self.var_select.value = var
        if top_k is not None:
            self.top_k_slider.value = top_k
        self.flush()
        return self
