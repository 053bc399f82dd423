"""Quantize one layer of a model for one config and measure it: the numbers behind QuantExplorer.

:class:`LayerLab` holds a model, its calibration inputs and caches, and answers
"what does config C do to layer L" through the registered method of C
(:func:`qviz.quant.registry.method_for`), exactly as :func:`qviz.layer_error`
measures it: weight MSE and SQNR, and the output error
``||X W^T - Q(X) W_hat^T||^2 / ||X W^T||^2`` on the layer's calibration inputs.
Methods that change the model first (``Method.changes_model``: SmoothQuant, AWQ,
rotations) run their ``prepare`` on a copy once per config; nothing here touches
the user's model. :func:`make_config` turns an explorer's knobs into a config
through the method's own ``config_from_controls``; :func:`available_methods` is
the registered methods' menu.

Examples
--------
>>> import torch, qviz
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
>>> lab = LayerLab(net, torch.randn(16, 64))
>>> res = lab.quantize("0", qviz.RTN(bits=8, group_size=None))
>>> res.weight_sqnr_db > 40, res.bits_per_weight
(True, 8.375)
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from qviz._errors import did_you_mean
from qviz._filters import LayerSpec
from qviz.models import QvizModel, layer_type, load, weight_matrix
from qviz.quant.api import as_float32, as_rows, capture_inputs, check_calib, fake_quantize, plan, quantize_tensor, reusable
from qviz.quant.config import RTN, QuantConfig
from qviz.measure.error import quantized_output
from qviz.quant.registry import Controls, LayerQuant, Method, menu, method_for
from qviz.quant.rtn import output_without_bias
from kernels_numba.histogram import ErrorHistogram, error_and_histogram

MAX_ROWS = 256
"""Calibration rows (tokens) kept per layer for the output error."""

SWEEP_BITS = (2, 3, 4, 5, 6, 7, 8)


def available_methods() -> list[str]:
    """The registered methods an explorer offers (those with a menu ``label``), in menu order.

    Examples
    --------
    >>> available_methods()[:4]
    ['RTN', 'NF4', 'FP4', 'Int8']
    """
    return list(menu())


def method_controls(name: str) -> tuple[str, ...]:
    """The explorer controls (``bits``, ``group_size``, ...) the menu's method ``name`` reads.

    Examples
    --------
    >>> method_controls("SmoothQuant")
    ('bits', 'alpha')
    """
    return _menu_method(name).controls


def _menu_method(name: str) -> Method:
    methods = menu()
    if name not in methods:
        raise ValueError(f"Unknown method {name!r}; pick one of {', '.join(methods)}.")
    return methods[name]


def parse_group_size(text: Any) -> int | str | None:
    """The group-size control's text as a config value: ``None`` (per channel), ``"tensor"`` or an int.

    Examples
    --------
    >>> parse_group_size("128"), parse_group_size("channel"), parse_group_size("tensor")
    (128, None, 'tensor')
    >>> parse_group_size("12x")
    Traceback (most recent call last):
    ...
    ValueError: group size '12x' is not understood. Type a whole number such as 32, 64 or 128, 'channel' for one scale per output row, or 'tensor' for a single scale.
    """
    if text is None or isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        return None if text is None else int(text)
    s = str(text).strip().lower()
    if s in ("", "none", "channel", "ch", "per-channel", "row"):
        return None
    if s in ("tensor", "per-tensor"):
        return "tensor"
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    raise ValueError(
        f"group size {text!r} is not understood. Type a whole number such as 32, 64 or 128, "
        "'channel' for one scale per output row, or 'tensor' for a single scale."
    )


def make_config(
    method: str, bits: Any = 4, group_size: Any = 128, symmetric: bool = False, alpha: float = 0.5,
    threshold: float = 6.0,
) -> QuantConfig:
    """The config the explorer's controls describe: the method's ``config_from_controls`` (validated by the config).

    ``method`` is a name of :func:`available_methods`. For NF4/FP4 the group size is
    bitsandbytes' block size (per-channel means the default 64).

    Examples
    --------
    >>> make_config("RTN", bits=3, group_size="64").label
    'RTN w3 g64 asym'
    >>> make_config("NF4", group_size="128").label
    'bnb nf4 b128'
    """
    chosen = _menu_method(method)
    gs = parse_group_size(group_size)
    if isinstance(bits, float) and bits.is_integer():
        bits = int(bits)
    return chosen.config_from_controls(Controls(bits=bits, group_size=gs, symmetric=symmetric, alpha=alpha,
                                                threshold=threshold))


def divisors_hint(cols: int) -> str:
    """A few group sizes that divide ``cols`` (powers of two first).

    Examples
    --------
    >>> divisors_hint(384)
    '32, 64, 128'
    """
    good = [g for g in (32, 64, 128, 256, 16, 8) if cols % g == 0 and g < cols][:3]
    return ", ".join(str(g) for g in sorted(good)) or str(cols)


def check_fits(cfg: QuantConfig, name: str, cols: int) -> None:
    """Raise ``ValueError`` when ``cfg``'s group size does not divide the layer's ``cols`` input columns."""
    gs = getattr(cfg, "group_size", None)
    if isinstance(gs, int) and not isinstance(gs, bool) and cols % gs:
        raise ValueError(
            f"group size {gs} does not divide the {cols} input columns of {name} "
            f"({cols} / {gs} = {cols / gs:.3g}). Pick a divisor such as {divisors_hint(cols)}, or 'channel'."
        )
    why = method_for(cfg).refuse(name, (0, cols), cfg)  # a method's own rule (GGUF's block lengths)
    if why:
        raise ValueError(f"{cfg.label} cannot quantize {name}: {why}.")


@dataclass
class LayerResult:
    """One layer quantized with one config.

    Attributes
    ----------
    layer, config : str
        Layer name and config label.
    weight_mse, weight_sqnr_db, max_abs_err : float
    bits_per_weight : float
        Stored bits per weight, overhead included.
    hist : ErrorHistogram
        Error statistics and the histogram of the quantized weight.
    output_rel_err : float
        NaN until :meth:`LayerLab.output_error` has run.
    """

    layer: str
    config: str
    weight_mse: float
    weight_sqnr_db: float
    max_abs_err: float
    bits_per_weight: float
    nbytes: int
    kernel: str
    hist: ErrorHistogram
    output_rel_err: float = math.nan
    lq: LayerQuant | None = field(default=None, repr=False)
    method: Method | None = field(default=None, repr=False)


class LayerLab:
    """Quantize single layers of a model with any registered config and measure the error.

    Parameters
    ----------
    model
        A :class:`~qviz.QvizModel`, ``torch.nn.Module`` or model name. Never changed.
    calib
        Calibration inputs; the first ``max_rows`` tokens of each layer's input are kept.
    layers
        Which quantizable layers (a layer filter; default all).
    max_rows
        Calibration rows kept per layer.
    n_bins
        Bins of the weight histograms.
    """

    def __init__(self, model: Any, calib: Any, layers: LayerSpec = None, *, max_rows: int = MAX_ROWS,
                 n_bins: int = 256) -> None:
        # float16/bfloat16 models are measured in float32 (the captured inputs are float32)
        self.model = as_float32(model if isinstance(model, QvizModel) else load(model))
        check_calib(calib, "QuantExplorer")
        calib = reusable(calib)
        if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive int; got {max_rows!r}.")
        self.calib = calib
        self.max_rows = max_rows
        self.n_bins = n_bins
        self.plan = plan(self.model, RTN(bits=8, group_size=None), layers)
        self.names: list[str] = list(self.plan.assign)
        if not self.names:
            raise ValueError(f"The layer filter {layers!r} selected no quantizable layer; pass layers=None for all.")
        root = self.model.module
        self.modules: dict[str, nn.Module] = {n: root.get_submodule(n) for n in self.names}
        self._weights: dict[str, np.ndarray] = {}
        self._ranges: dict[str, tuple[float, float, np.ndarray]] = {}
        self._inputs: dict[str, torch.Tensor] | None = None
        self._ref: dict[str, torch.Tensor] = {}
        self._prepared: dict[str, tuple[QvizModel, dict[str, torch.Tensor], Any]] = {}
        self._nbytes: dict[tuple[str, str], int] = {}  # (layer, config label) -> stored bytes
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- cached inputs
    def shape(self, name: str) -> tuple[int, int]:
        """``(out, in)`` of the layer's weight matrix."""
        w = weight_matrix(self.modules[self._check(name)])
        return int(w.shape[0]), int(w.shape[1])

    def check_layer(self, name: str) -> str:
        """``name`` when it is one of :attr:`names`; else ``ValueError`` with the close matches."""
        return self._check(name)

    def _check(self, name: str) -> str:
        if name not in self.modules:
            raise ValueError(f"Unknown layer {name!r}.{did_you_mean(name, self.names)} Pick one of lab.names.")
        return name

    def weight(self, name: str) -> np.ndarray:
        """The layer's float32 weight ``[out, in]`` (a private copy)."""
        with self._lock:
            if name not in self._weights:
                w = weight_matrix(self.modules[self._check(name)]).detach().float().cpu().numpy()
                self._weights[name] = np.ascontiguousarray(w)  # [out, in]
            return self._weights[name]

    def before(self, name: str) -> ErrorHistogram:
        """Histogram of the unquantized weight (its range is the range of every later histogram)."""
        with self._lock:
            if name not in self._ranges:
                w = self.weight(name)
                lo, hi = float(w.min()), float(w.max())
                pad = 0.02 * (hi - lo) if hi > lo else 1.0
                h = error_and_histogram(w, w, lo - pad, hi + pad, self.n_bins)
                self._ranges[name] = (lo - pad, hi + pad, h)
            return self._ranges[name][2]

    def inputs(self, name: str) -> torch.Tensor:
        """The layer's raw calibration input (``[rows, in]`` for a Linear), captured once for every layer."""
        with self._lock:
            if self._inputs is None:
                self._inputs = capture_inputs(self.model, self.calib, self.names, self.max_rows)
            return self._inputs[self._check(name)]

    def _reference(self, name: str) -> torch.Tensor:
        with self._lock:
            if name not in self._ref:
                with torch.no_grad():
                    self._ref[name] = output_without_bias(self.modules[name], self.inputs(name)).double()
            return self._ref[name]

    @staticmethod
    def needs_prepare(cfg: QuantConfig) -> bool:
        """True when ``cfg``'s method changes the model before quantizing layers (SmoothQuant, AWQ, rotations)."""
        return method_for(cfg).changes_model(cfg)

    def prepare(self, cfg: QuantConfig) -> None:
        """Run ``cfg``'s model-level ``prepare`` now (cached per config; it may run the model)."""
        self._context(cfg)

    def is_prepared(self, cfg: QuantConfig) -> bool:
        """True when :meth:`prepare` has run for ``cfg`` (or the method has nothing to prepare)."""
        return not method_for(cfg).has_prepare or cfg.label in self._prepared

    def _context(self, cfg: QuantConfig) -> tuple[QvizModel, dict[str, torch.Tensor] | None, Any]:
        """(model to quantize from, its inputs or None for the cached ones, method state), once per config.

        A model-changing method prepares a copy (and its inputs are that copy's); a method whose
        ``prepare`` only reads the model (GGUF's types, static activation scales) prepares on it.
        """
        method = method_for(cfg)
        if not method.has_prepare:
            return self.model, None, None
        with self._lock:
            if cfg.label not in self._prepared:
                if method.changes_model(cfg):
                    work = self.model.copy()
                    mods = {n: work.module.get_submodule(n) for n in self.names}
                    state = method.prepare(work, cfg, self.calib, mods)
                    ins = capture_inputs(work, self.calib, self.names, self.max_rows)
                else:
                    work, ins = self.model, None
                    state = method.prepare(work, cfg, self.calib, dict(self.modules))
                self._prepared[cfg.label] = (work, ins, state)
            return self._prepared[cfg.label]

    # ----------------------------------------------------------------- the measurement
    def quantize(self, name: str, cfg: QuantConfig) -> LayerResult:
        """Quantize layer ``name`` with ``cfg`` and measure the weight error (output error: :meth:`output_error`).

        Raises ``ValueError`` with a readable message for a config that does not fit the layer.
        """
        method = method_for(cfg)
        self._check(name)
        out_f, in_f = self.shape(name)
        check_fits(cfg, name, in_f)
        if layer_type(self.modules[name]) not in method.layer_types:
            raise ValueError(
                f"{type(cfg).__name__} does not quantize {layer_type(self.modules[name])} layers such as {name}; "
                f"it handles {', '.join(method.layer_types)}. Pick another layer or method."
            )
        if self.tensor_path(cfg):
            # data-free formats: quantize the weight alone (no replacement module is built here;
            # output_error builds it when it is needed)
            w = torch.from_numpy(self.weight(name))  # [out, in], shares the cached array
            key = (name, cfg.label)
            if key not in self._nbytes:
                nbytes = method.storage_nbytes((out_f, in_f), cfg)  # None: only the codes tell
                if nbytes is not None:
                    self._nbytes[key] = int(nbytes)
            if key in self._nbytes:  # storage is known: one fused fake-quant pass is enough
                w_hat_t, nbytes = fake_quantize(w, cfg), self._nbytes[key]
            else:
                qt = quantize_tensor(w, cfg)
                w_hat_t, nbytes = qt.dequantize(), int(qt.nbytes)
                self._nbytes[key] = nbytes
            kernel, lq = "", None
        else:
            lq = self._layer_quant(name, cfg)
            w_hat_t, nbytes, kernel = lq.weight_hat, int(lq.nbytes), lq.kernel
        w_hat = w_hat_t.detach().float().cpu().numpy().reshape(out_f, in_f)  # [out, in]
        self.before(name)
        lo, hi, _ = self._ranges[name]
        h = error_and_histogram(self.weight(name), w_hat, lo, hi, self.n_bins)
        return LayerResult(
            layer=name, config=cfg.label, weight_mse=h.mse, weight_sqnr_db=h.sqnr_db, max_abs_err=h.max_abs_err,
            bits_per_weight=8.0 * nbytes / (out_f * in_f), nbytes=nbytes, kernel=kernel, hist=h, lq=lq,
            method=method,
        )

    @staticmethod
    def tensor_path(cfg: QuantConfig) -> bool:
        """True when ``cfg``'s method quantizes a lone tensor as it quantizes the layer (``Method.data_free``)."""
        return method_for(cfg).data_free

    def _layer_quant(self, name: str, cfg: QuantConfig) -> LayerQuant:
        """Run the method's ``quantize_layer`` on the layer (of the prepared copy where the method needs one)."""
        method = method_for(cfg)
        work, prepared_inputs, state = self._context(cfg)
        module = work.module.get_submodule(name)
        rows = None
        if method.needs_inputs:
            x = prepared_inputs[name] if prepared_inputs is not None else self.inputs(name)
            rows = as_rows(module, x)  # [rows, in]
        with torch.no_grad():
            return method.quantize_layer(name, module, cfg, rows, state)

    def output_error(self, res: LayerResult, cfg: QuantConfig) -> float:
        """``||X W^T - Q(X) W_hat^T||^2 / ||X W^T||^2`` on the layer's calibration inputs; stored in ``res``."""
        if res.method is None:
            raise ValueError("This result has no quantization method; make it with LayerLab.quantize.")
        name = res.layer
        if res.lq is None:
            res.lq = self._layer_quant(name, cfg)
            res.kernel = res.lq.kernel
        ref = self._reference(name)
        work, prepared_inputs, _ = self._context(cfg)
        x = prepared_inputs[name] if prepared_inputs is not None else self.inputs(name)
        with torch.no_grad():
            got = quantized_output(res.method, res.lq, work.module.get_submodule(name), x).double()
        energy = float((ref * ref).sum())
        noise = float(((ref - got) ** 2).sum())
        res.output_rel_err = noise / energy if energy > 0 else (0.0 if noise == 0 else math.inf)
        return res.output_rel_err

    def sweep_bits(self, name: str, cfg: QuantConfig, bits: tuple[int, ...] = SWEEP_BITS,
                   cancelled: Any = None) -> list[tuple[int, float]]:
        """``[(bits, weight SQNR dB)]`` for ``cfg`` at each bit width (configs with a ``bits``/``w_bits`` field)."""
        field_name = "bits" if hasattr(cfg, "bits") else "w_bits" if hasattr(cfg, "w_bits") else None
        if field_name is None:
            return [(int(cfg.weight_bits or 0), self.quantize(name, cfg).weight_sqnr_db)]
        out = []
        for b in bits:
            if cancelled is not None and cancelled():
                break
            out.append((b, self.quantize(name, cfg.replace(**{field_name: b})).weight_sqnr_db))
        return out
