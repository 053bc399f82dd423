"""Per-layer quantization error: :func:`layer_error` -> the ``errors`` Dataset.

For every selected layer and every config: the weight error (MSE, SQNR, max
abs error, from the quantizer's fused statistics where it reports them), the
output error on the layer's own calibration inputs ``X``

    output_rel_err = ||X W^T - Q(X) W_hat^T||^2 / ||X W^T||^2

where the quantized side is what the replacement layer really computes (INT
activation fake-quant for W8A8, the LLM.int8 matmul with its outlier
decomposition for ``BnbInt8``, bitsandbytes' ``Linear4bit`` for NF4/FP4), and
the true storage (bytes and bits per weight). One forward pass captures the
inputs of every layer for all configs.

Examples
--------
>>> import qviz
>>> model = qviz.load("minilm")                                                    # doctest: +SKIP
>>> errors = qviz.layer_error(model, [qviz.RTN(bits=4), qviz.BnbNF4()],
...                           calib=qviz.calibration_data(model, n=64))           # doctest: +SKIP
>>> errors.output_rel_err.sel(config="bnb nf4 b64").max().item()                   # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from qviz._filters import LayerSpec
from qviz.models import QvizModel, layer_type, load, weight_matrix
from qviz.activations.engine import MAX_ROWS, as_float32, as_rows, capture_inputs, check_calib, reusable
from qviz.quant.api import _set_module, plan
from qviz.quant.config import QuantConfig
from qviz.quant.method import weight_only_output
from qviz.quant.registry import LayerQuant, Method, method_for
from qviz.quant.rtn import output_without_bias

VARIABLES = {
    "weight_mse": ("weight mean squared error, mean((W_hat - W)^2)", "1"),
    "weight_sqnr_db": ("weight signal-to-quantization-noise ratio, 10 log10(sum W^2 / sum (W_hat - W)^2)", "dB"),
    "max_abs_err": ("largest absolute weight error, max |W_hat - W|", "1"),
    "output_rel_err": ("relative output error ||XW^T - Q(X)W_hat^T||^2 / ||XW^T||^2 on calibration inputs", "1"),
    "output_sqnr_db": ("output signal-to-noise ratio, -10 log10(output_rel_err)", "dB"),
    "bits_per_weight": ("stored bits per weight: codes, scales, zero points, absmax tables, outlier columns", "bit"),
    "nbytes": ("stored bytes of the layer's quantized weight", "byte"),
}


def normalize_configs(cfg: Any) -> tuple[list[QuantConfig], bool]:
    """``(configs, was_list)``: one config or a non-empty list of distinct registered configs."""
    if isinstance(cfg, (list, tuple)):
        if not cfg:
            raise ValueError("The config list is empty. Pass one config or a list, e.g. [qviz.RTN(bits=4), qviz.BnbNF4()].")
        configs, was_list = list(cfg), True
    else:
        configs, was_list = [cfg], False
    for c in configs:
        method_for(c)  # TypeError listing the known configs
    labels = [c.label for c in configs]
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise ValueError(f"Configs must be distinct; {dupes} appear more than once. Remove the duplicates.")
    return configs, was_list


def _whole_model(cfg: QuantConfig) -> bool:
    """True for methods whose layers change after every layer is replaced (``finalize``: QAT's fine-tune)."""
    return bool(method_for(cfg).finalize_changes_layers)


def _finished_layers(qm: QvizModel, cfg: QuantConfig, calib: Any, names: list[str], max_rows: int) -> dict[str, Any]:
    """Each layer's :class:`LayerQuant` after the whole-model method has run to the end on a copy.

    QAT's per-layer error is that of the fine-tuned layers (measured against the
    ORIGINAL layers on the original inputs), not of the layers before training.
    Layers are replaced in model order, as :func:`qviz.quantize` does.
    """

    method = method_for(cfg)
    work = qm.copy()
    root = work.module
    state = method.prepare(work, cfg, calib, {n: root.get_submodule(n) for n in names})
    finished = {}
    for name in names:
        module = root.get_submodule(name)
        rows = None
        if method.needs_inputs:
            rows = as_rows(module, capture_inputs(work, calib, [name], max_rows)[name])
        with torch.no_grad():
            lq = method.quantize_layer(name, module, cfg, rows, state)
        _set_module(root, name, lq.module)
        finished[name] = lq
    method.finalize(work, cfg, calib, state)
    return finished


def quantized_output(method: Method, lq: LayerQuant, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the quantized layer computes on its raw input ``x``, bias removed.

    Uses the method's ``layer_output`` (the real replacement module) when it
    has one, else the weight-only product with ``lq.weight_hat``.
    """
    fn = getattr(method, "layer_output", None)
    if fn is not None:
        return fn(lq, x)
    return weight_only_output(module, x, lq.weight_hat)


def is_weight_only(method: Method, cfg: QuantConfig) -> bool:
    """True when the quantized layer computes ``x W_hat^T`` exactly (no activation quantization).

    Every method declares it (:meth:`~qviz.quant.method.Method.weight_only`; default True).
    """
    return bool(method.weight_only(cfg))


def _sq(t: torch.Tensor) -> float:
    """Sum of squares, accumulated in float64."""
    return float(torch.linalg.vector_norm(t.reshape(-1), dtype=torch.float64) ** 2)


def _weight_stats(lq: LayerQuant, w: torch.Tensor, signal: float) -> tuple[float, float, float, torch.Tensor]:
    """``(sse, signal, max_abs_err, delta [out, in])`` of ``W_hat - W``."""
    delta = lq.weight_hat.detach().float().reshape(w.shape) - w  # [out, in]
    info = lq.info or {}
    if {"sse", "signal", "max_abs_err"} <= set(info):
        return float(info["sse"]), float(info["signal"]), float(info["max_abs_err"]), delta
    return _sq(delta), signal, float(delta.abs().max()), delta


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def layer_error(
    model: QvizModel | nn.Module,
    cfg: QuantConfig | Sequence[QuantConfig],
    calib: Any,
    layers: LayerSpec = None,
    *,
    skip: LayerSpec = None,
    max_rows: int = MAX_ROWS,
) -> xr.Dataset:
    """Quantize each layer on its own and measure its weight and output error.

    Parameters
    ----------
    model : QvizModel or torch.nn.Module
        Not changed (hooks are removed however the call ends).
    cfg : QuantConfig or list of QuantConfig
        One config (result dim ``layer``) or a list (dims ``layer``, ``config``).
    calib
        Calibration inputs, e.g. ``qviz.calibration_data(model, n=64)``.
    layers, skip : layer filters
        Which quantizable layers to measure / leave out.
    max_rows : int
        Calibration rows (tokens or pixel positions) kept per layer.

    Returns
    -------
    xr.Dataset
        The ``errors`` Dataset: ``weight_mse``, ``weight_sqnr_db``, ``max_abs_err``,
        ``output_rel_err``, ``output_sqnr_db``, ``bits_per_weight``, ``nbytes``
        (NaN where a config skips a layer; the reasons are in ``attrs["skipped"]``),
        coords ``layer_type``, ``n_weights``, ``calib_rows``.

    Examples
    --------
    >>> import torch, qviz
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    >>> err = qviz.layer_error(net, [qviz.RTN(bits=8, group_size=None), qviz.RTN(bits=2, group_size=None)],
    ...                        calib=torch.randn(64, 16))
    >>> dict(err.sizes), bool((err.weight_sqnr_db.sel(config="RTN w8 ch asym") > 30).all())
    ({'layer': 2, 'config': 2}, True)
    """
    qm = load(model) if not isinstance(model, QvizModel) else model
    configs, was_list = normalize_configs(cfg)
    check_calib(calib, "layer_error")
    calib = reusable(calib)
    plans = {c.label: plan(qm, c, layers, skip) for c in configs}
    model_dtype = str(qm.dtype).replace("torch.", "")
    qm = as_float32(qm)  # float16/bfloat16 weights are measured in float32 (exactly representable)
    root = qm.module
    order = [n for n, _ in root.named_modules() if any(n in p.assign for p in plans.values())]

    shared = [c for c in configs if not method_for(c).has_prepare or _whole_model(c)]
    inputs = capture_inputs(qm, calib, order, max_rows) if shared else {}

    shape = (len(order), len(configs))
    data = {k: np.full(shape, np.nan) for k in VARIABLES}
    setups = []  # per config: (method, model to measure on, layer inputs, method state, finished layers)
    for c in configs:
        method = method_for(c)
        if _whole_model(c):  # QAT: the layers are what the whole-model fine-tune leaves
            setups.append((method, qm, inputs, None, _finished_layers(qm, c, calib, list(plans[c.label].assign),
                                                                       max_rows)))
        elif method.has_prepare:  # model-level work first (it may change the model): measure on its own copy
            work = qm.copy()
            names = list(plans[c.label].assign)
            state = method.prepare(work, c, calib, {n: work.module.get_submodule(n) for n in names})
            setups.append((method, work, capture_inputs(work, calib, names, max_rows), state, None))
        else:
            setups.append((method, qm, inputs, None, None))
    for i, name in enumerate(order):
        ref_cache: dict[Any, Any] = {}  # id(model) -> (w, sum w^2, Y, sum Y^2); 'gram' -> X^T X
        for j, c in enumerate(configs):
            if name not in plans[c.label].assign:
                continue
            method, work, layer_inputs, state, finished = setups[j]
            module = work.module.get_submodule(name)
            x = layer_inputs[name].to(module.weight.device)  # raw layer input: [rows, in] or [images, channels, ...]
            rows = as_rows(module, x) if method.needs_inputs else None  # [rows, in]
            with torch.no_grad():
                if id(work) not in ref_cache:
                    w = weight_matrix(module).float()  # [out, in]
                    y = output_without_bias(module, x)  # [rows, out] or [images, out, ...]
                    ref_cache[id(work)] = (w, _sq(w), y, _sq(y))
                w, w_signal, y, energy = ref_cache[id(work)]
                lq = finished[name] if finished is not None else method.quantize_layer(name, module, c, rows, state)
                sse, signal, mx, delta = _weight_stats(lq, w, w_signal)
                if is_weight_only(method, c) and x.dim() == 2 and x.shape[0] > x.shape[1]:
                    # ||X D^T||^2 = sum((D G) * D) with G = X^T X [in, in], shared by every weight-only config
                    if ("gram", id(work)) not in ref_cache:
                        ref_cache["gram", id(work)] = x.T @ x  # [in, in]
                    noise = float(torch.sum((delta @ ref_cache["gram", id(work)]) * delta, dtype=torch.float64))
                elif is_weight_only(method, c):  # Y_hat - Y = X (W_hat - W)^T: one product, no cancellation
                    noise = _sq(weight_only_output(module, x, delta))
                else:  # the real replacement layer (activation quantization, LLM.int8 decomposition)
                    noise = _sq(quantized_output(method, lq, module, x) - y)
            data["weight_mse"][i, j] = sse / w.numel()
            data["weight_sqnr_db"][i, j] = _sqnr(signal, sse)
            data["max_abs_err"][i, j] = mx
            data["output_rel_err"][i, j] = noise / energy if energy > 0 else (0.0 if noise == 0 else math.inf)
            data["output_sqnr_db"][i, j] = _sqnr(energy, noise)
            data["nbytes"][i, j] = lq.nbytes
            data["bits_per_weight"][i, j] = lq.bits_per_weight

    mods = {n: root.get_submodule(n) for n in order}
    coords = {
        "layer": order,
        "config": [c.label for c in configs],
        "layer_type": ("layer", [layer_type(m) for m in mods.values()]),
        "n_weights": ("layer", [int(weight_matrix(m).numel()) for m in mods.values()]),
        "calib_rows": ("layer", [int(as_rows(mods[n], inputs[n]).shape[0]) if n in inputs else -1 for n in order]),
    }
    ds = xr.Dataset({k: (("layer", "config"), v) for k, v in data.items()}, coords=coords)
    for k, (long_name, units) in VARIABLES.items():
        ds[k].attrs.update(long_name=long_name, units=units)
    ds["calib_rows"].attrs.update(long_name="calibration rows (tokens or pixel positions) per layer", units="1")
    ds["n_weights"].attrs.update(long_name="weights in the layer", units="1")
    ds.attrs.update(
        title="per-layer quantization error",
        model=qm.name,
        configs=json.dumps([c.to_json() for c in configs]),
        skipped=json.dumps({c.label: plans[c.label].skipped for c in configs}),
        max_rows=int(max_rows),
        model_dtype=model_dtype,
        measured_in="float32",
    )
    if not was_list:
        ds = ds.isel(config=0).drop_vars("config")
        ds.attrs["config"] = configs[0].label
    return ds
