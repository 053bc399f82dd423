"""Which layers can take fewer bits: :func:`sensitivity` and the mixed-precision :func:`recommend`.

:func:`sensitivity` quantizes ONE layer at a time (everything else stays in
full precision) and measures the end-to-end change on held-out data:

* text encoders: ``1 - mean cosine`` between the quantized and full-precision embeddings;
* decoders: mean KL divergence ``KL(p_fp || p_q)`` of the next-token distributions over real tokens (nats);
* image classifiers: accuracy drop (full-precision accuracy minus quantized, on labelled data);
* other modules: relative output error ``||y_q - y||^2 / ||y||^2``.

:func:`recommend` picks one config per layer minimising the summed single-layer
sensitivities under a size budget. The choice is exact: a multiple-choice
knapsack solved by dynamic programming over the Pareto frontier of (bytes,
summed sensitivity) pairs, layer by layer (no rounding of sizes). It then
quantizes the model with that mixed assignment and measures the real
end-to-end metric beside the predicted sum.

Examples
--------
>>> import qviz
>>> model = qviz.load("digits-cnn")                                       # doctest: +SKIP
>>> sens = qviz.sensitivity(model, [qviz.RTN(bits=4, group_size=None), qviz.RTN(bits=2, group_size=None)],
...                         calib=qviz.calibration_data(model, n=64))     # doctest: +SKIP
>>> qmodel, rec = qviz.recommend(model, [qviz.RTN(bits=8, group_size=None), qviz.RTN(bits=2, group_size=None)],
...                              calib=qviz.calibration_data(model, n=64), budget_bits_per_weight=4.0)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from qviz._filters import LayerSpec
from qviz.models import QvizModel, layer_type, load, weight_matrix
from qviz.quant.api import MAX_ROWS, _device_of, _set_module, as_rows, capture_inputs, check_calib, plan, quantize
from qviz.quant.config import QuantConfig
from qviz.measure.error import normalize_configs
from qviz.quant.registry import method_for

METRICS = {
    "text-encoder": ("embedding_cosine_drop", "1 - mean cosine similarity of embeddings to full precision", "1"),
    "decoder": ("next_token_kl", "mean KL(p_fp || p_q) of next-token distributions", "nat"),
    "image-classifier": ("accuracy_drop", "full-precision accuracy minus quantized accuracy", "1"),
    "module": ("output_rel_err", "relative output error ||y_q - y||^2 / ||y||^2", "1"),
}


# --------------------------------------------------------------------------- end-to-end metric


class _Evaluator:
    """Runs held-out data through a model and scores it against the full-precision reference."""

    def __init__(self, model: QvizModel, eval_data: Any, batch_size: int) -> None:
        self.model = model
        self.batch_size = batch_size
        self.kind = model.kind if model.kind in METRICS else "module"
        inputs, labels = self._resolve(model, eval_data)
        if self.kind == "image-classifier" and labels is None:
            raise ValueError(
                "Accuracy drop needs labels: pass eval_data=(inputs, labels) for an image classifier, "
                "e.g. eval_data=qviz.eval_data(model)."
            )
        self.inputs, self.labels = inputs, labels
        self.name, self.long_name, self.units = METRICS[self.kind]
        self.ref = self._outputs(model)  # embeddings [n, dim] / logits [n_tokens, vocab] / [n, classes]
        self.ref_log_probs = torch.log_softmax(self.ref.double(), -1) if self.kind == "decoder" else None
        self.baseline = self.accuracy(self.ref) if self.kind == "image-classifier" else 0.0

    @staticmethod
    def _resolve(model: QvizModel, eval_data: Any) -> tuple[Any, torch.Tensor | None]:
        if eval_data is None:
            from qviz.data import eval_data as default_eval

            try:
                return default_eval(model, n=64 if model.kind != "image-classifier" else None)
            except ValueError as err:
                raise ValueError(
                    f"No default held-out data for {model.name!r}; pass eval_data=(inputs, labels) or eval_data=inputs."
                ) from err
        if isinstance(eval_data, tuple) and len(eval_data) == 2 and not isinstance(eval_data[0], str):
            x, y = eval_data
            return x, (None if y is None else torch.as_tensor(y))
        return eval_data, None

    def _outputs(self, model: QvizModel) -> torch.Tensor:
        return model.outputs(self.inputs, batch_size=self.batch_size).double()

    def accuracy(self, logits: torch.Tensor) -> float:
        return float((logits.argmax(-1) == self.labels.to(logits.device)).double().mean())

    def score(self, model: QvizModel) -> float:
        """The metric of ``model`` against the full-precision reference (0 = no change)."""
        out = self._outputs(model)
        if self.kind == "text-encoder":
            cos = nn.functional.cosine_similarity(out, self.ref, dim=-1)
            return float(1.0 - cos.mean())
        if self.kind == "decoder":
            logq = torch.log_softmax(out, -1)
            kl = (self.ref_log_probs.exp() * (self.ref_log_probs - logq)).sum(-1)
            return float(kl.mean())
        if self.kind == "image-classifier":
            return self.baseline - self.accuracy(out)
        return float(((out - self.ref) ** 2).sum() / (self.ref**2).sum().clamp_min(1e-300))


# --------------------------------------------------------------------------- sensitivity


def sensitivity(
    model: QvizModel | nn.Module,
    configs: QuantConfig | Sequence[QuantConfig],
    calib: Any,
    layers: LayerSpec = None,
    eval_data: Any = None,
    *,
    skip: LayerSpec = None,
    max_rows: int = MAX_ROWS,
    batch_size: int = 32,
) -> xr.Dataset:
    """End-to-end change when ONE layer is quantized, for every (layer, config).

    Parameters
    ----------
    model : QvizModel or torch.nn.Module
        Not changed: layers are swapped in a private copy.
    configs : QuantConfig or list of QuantConfig
    calib
        Calibration inputs (used by methods that need activations).
    layers, skip : layer filters
    eval_data : optional
        Held-out inputs, or ``(inputs, labels)``; default ``qviz.eval_data(model)``
        (64 sentences for text models, the digits test split for digits-cnn).
    max_rows, batch_size : int
        Calibration rows kept per layer; evaluation batch size.

    Returns
    -------
    xr.Dataset
        dims ``(layer, config)``: ``sensitivity`` (the metric named in
        ``attrs["metric"]``; NaN where a config skips a layer), ``nbytes``,
        ``bits_per_weight``; coords ``n_weights``, ``layer_type``; attrs
        ``metric``, ``baseline`` (full-precision accuracy for classifiers).

    Examples
    --------
    >>> import torch, qviz
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> s = qviz.sensitivity(net, [qviz.RTN(bits=8, group_size=None), qviz.RTN(bits=2, group_size=None)],
    ...                      calib=torch.randn(32, 8), eval_data=torch.randn(64, 8))
    >>> s.attrs["metric"], bool((s.sensitivity.sel(config="RTN w2 ch asym") > s.sensitivity.sel(config="RTN w8 ch asym")).all())
    ('output_rel_err', True)
    """
    qm = load(model) if not isinstance(model, QvizModel) else model
    cfgs, _ = normalize_configs(configs)
    check_calib(calib, "sensitivity")
    plans = {c.label: plan(qm, c, layers, skip) for c in cfgs}
    order = [n for n, _ in qm.module.named_modules() if any(n in p.assign for p in plans.values())]
    evaluator = _Evaluator(qm, eval_data, batch_size)

    work = qm.copy()
    root = work.module
    need = [n for n in order if any(method_for(c).needs_inputs and n in plans[c.label].assign for c in cfgs)]
    inputs = capture_inputs(work, calib, need, max_rows) if need else {}

    shape = (len(order), len(cfgs))
    sens, nbytes, bpw = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    for j, c in enumerate(cfgs):
        method = method_for(c)
        for i, name in enumerate(order):
            if name not in plans[c.label].assign:
                continue
            if method.has_prepare or method.has_finalize:
                # model-level steps: go through the full driver for this one layer
                q = quantize(qm, c, calib, layers=[name], progress=False, max_rows=max_rows)
                sens[i, j] = evaluator.score(q)
                rec = q.quantization.layers[name]
                nbytes[i, j], bpw[i, j] = rec.nbytes, rec.bits_per_weight
                continue
            original = root.get_submodule(name)
            rows = as_rows(original, inputs[name].to(_device_of(original))) if method.needs_inputs else None
            with torch.no_grad():
                lq = method.quantize_layer(name, original, c, rows, None)
            _set_module(root, name, lq.module)
            try:
                sens[i, j] = evaluator.score(work)
            finally:
                _set_module(root, name, original)
            nbytes[i, j], bpw[i, j] = lq.nbytes, lq.bits_per_weight

    mods = {n: qm.module.get_submodule(n) for n in order}
    ds = xr.Dataset(
        {
            "sensitivity": (("layer", "config"), sens),
            "nbytes": (("layer", "config"), nbytes),
            "bits_per_weight": (("layer", "config"), bpw),
        },
        coords={
            "layer": order,
            "config": [c.label for c in cfgs],
            "layer_type": ("layer", [layer_type(m) for m in mods.values()]),
            "n_weights": ("layer", [int(weight_matrix(m).numel()) for m in mods.values()]),
        },
    )
    ds["sensitivity"].attrs.update(long_name=f"end-to-end change with only this layer quantized: {evaluator.long_name}",
                                   units=evaluator.units)
    ds["nbytes"].attrs.update(long_name="stored bytes of the layer's quantized weight", units="byte")
    ds["bits_per_weight"].attrs.update(long_name="stored bits per weight, overhead included", units="bit")
    ds["n_weights"].attrs.update(long_name="weights in the layer", units="1")
    ds.attrs.update(
        title="per-layer sensitivity",
        model=qm.name,
        metric=evaluator.name,
        metric_long_name=evaluator.long_name,
        baseline=float(evaluator.baseline),
        configs=json.dumps([c.to_json() for c in cfgs]),
        skipped=json.dumps({c.label: plans[c.label].skipped for c in cfgs}),
    )
    return ds


# --------------------------------------------------------------------------- knapsack


def choose_configs(cost: np.ndarray, size: np.ndarray, budget: float) -> tuple[np.ndarray, float, float]:
    """Exact multiple-choice knapsack: one option per row minimising summed ``cost`` with summed ``size <= budget``.

    Dynamic programming over layers keeps the Pareto frontier of (size, cost)
    partial sums; dominated partial assignments are dropped, so the answer is
    optimal without rounding sizes. NaN entries are unavailable options.

    Parameters
    ----------
    cost, size : np.ndarray
        ``[layers, options]``.
    budget : float
        Largest allowed total size.

    Returns
    -------
    (choice [layers] int, total cost, total size)

    Examples
    --------
    >>> cost = np.array([[0.0, 5.0], [0.0, 1.0]])
    >>> size = np.array([[8.0, 2.0], [8.0, 2.0]])
    >>> choose_configs(cost, size, budget=10.0)
    (array([0, 1]), 1.0, 10.0)
    """
    cost = np.asarray(cost, float)
    size = np.asarray(size, float)
    n_layers, _ = cost.shape
    ok = np.isfinite(cost) & np.isfinite(size)
    if not ok.any(axis=1).all():
        bad = int(np.where(~ok.any(axis=1))[0][0])
        raise ValueError(f"Row {bad} has no usable option (all NaN); every layer needs at least one config.")
    min_total = float(np.nansum(np.where(ok, size, np.inf).min(axis=1)))
    if min_total > budget * (1 + 1e-12):
        raise ValueError(f"infeasible: the smallest choice per layer needs {min_total:.0f}, above the budget {budget:.0f}")
    # frontier: sizes [F], costs [F], back-pointers per layer
    f_size, f_cost = np.zeros(1), np.zeros(1)
    parents: list[np.ndarray] = []
    options: list[np.ndarray] = []
    for layer in range(n_layers):
        opts = np.where(ok[layer])[0]
        s = (f_size[:, None] + size[layer, opts][None, :]).ravel()
        c = (f_cost[:, None] + cost[layer, opts][None, :]).ravel()
        parent = np.repeat(np.arange(f_size.size), opts.size)
        option = np.tile(opts, f_size.size)
        keep = s <= budget * (1 + 1e-12)
        s, c, parent, option = s[keep], c[keep], parent[keep], option[keep]
        order = np.lexsort((c, s))  # by size, then cost
        s, c, parent, option = s[order], c[order], parent[order], option[order]
        best_before = np.minimum.accumulate(np.concatenate([[np.inf], c[:-1]]))
        pareto = c < best_before  # strictly better than every smaller-or-equal-size point
        f_size, f_cost = s[pareto], c[pareto]
        parents.append(parent[pareto])
        options.append(option[pareto])
    k = int(np.argmin(f_cost))
    total_cost, total_size = float(f_cost[k]), float(f_size[k])
    choice = np.empty(n_layers, int)
    for layer in range(n_layers - 1, -1, -1):
        choice[layer] = options[layer][k]
        k = int(parents[layer][k])
    return choice, total_cost, total_size


def recommend(
    model: QvizModel | nn.Module,
    configs: Sequence[QuantConfig],
    calib: Any,
    budget_bits_per_weight: float,
    *,
    layers: LayerSpec = None,
    skip: LayerSpec = None,
    eval_data: Any = None,
    sens: xr.Dataset | None = None,
    max_rows: int = MAX_ROWS,
    batch_size: int = 32,
) -> tuple[QvizModel, xr.Dataset]:
    """Pick one config per layer under a size budget, quantize with it, and compare predicted with measured.

    Parameters
    ----------
    model : QvizModel or torch.nn.Module
    configs : list of QuantConfig
        The choices per layer (e.g. RTN at 8, 4, 3 and 2 bits).
    calib
        Calibration inputs.
    budget_bits_per_weight : float
        Average stored bits per weight allowed over the selected layers
        (overhead included, as in ``bits_per_weight``).
    layers, skip, eval_data, max_rows, batch_size
        As in :func:`sensitivity`.
    sens : xr.Dataset, optional
        A :func:`sensitivity` result for these configs, to skip recomputing it.

    Returns
    -------
    (QvizModel, xr.Dataset)
        The quantized model (``.quantization`` records the mixed assignment) and a
        Dataset with dim ``layer``: ``assignment`` (config label),
        ``sensitivity``, ``bits_per_weight``; scalars ``predicted`` (sum of the
        chosen single-layer sensitivities), ``measured`` (the metric of the mixed
        model), ``budget_bits_per_weight``, ``achieved_bits_per_weight``.

    Examples
    --------
    >>> import torch, qviz
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    >>> q, rec = qviz.recommend(net, [qviz.RTN(bits=8, group_size=32), qviz.RTN(bits=2, group_size=32)],
    ...                         calib=torch.randn(32, 32), budget_bits_per_weight=5.0, eval_data=torch.randn(64, 32))
    >>> float(rec.achieved_bits_per_weight) <= 5.0
    True
    """
    qm = load(model) if not isinstance(model, QvizModel) else model
    cfgs, _ = normalize_configs(list(configs) if isinstance(configs, (list, tuple)) else [configs])
    if isinstance(budget_bits_per_weight, bool) or not isinstance(budget_bits_per_weight, (int, float)) \
            or not budget_bits_per_weight > 0:
        raise ValueError(f"budget_bits_per_weight must be a positive number (e.g. 4.5); got {budget_bits_per_weight!r}.")
    check_calib(calib, "recommend")
    if sens is None:
        sens = sensitivity(qm, cfgs, calib, layers, eval_data, skip=skip, max_rows=max_rows, batch_size=batch_size)
    else:
        missing = [c.label for c in cfgs if c.label not in list(sens.config.values)]
        if missing:
            raise ValueError(f"sens has no results for {missing}; compute it with qviz.sensitivity(model, configs, calib).")
        sens = sens.sel(config=[c.label for c in cfgs])
    cost = sens.sensitivity.values  # [layer, config]
    size = sens["nbytes"].values
    n_weights = sens.n_weights.values.astype(float)
    budget_bytes = float(budget_bits_per_weight) * n_weights.sum() / 8.0
    try:
        choice, predicted, total = choose_configs(cost, size, budget_bytes)
    except ValueError as err:
        smallest = np.nanmin(np.where(np.isfinite(cost), size, np.nan), axis=1).sum() * 8.0 / n_weights.sum()
        raise ValueError(
            f"No assignment fits {budget_bits_per_weight} bits per weight: the smallest config per layer already "
            f"needs {smallest:.3f}. Raise the budget or add a smaller config (fewer bits, larger groups)."
        ) from err
    layer_names = [str(n) for n in sens.layer.values]
    mapping = {name: cfgs[k] for name, k in zip(layer_names, choice, strict=True)}
    qmodel = quantize(qm, mapping, calib, layers=layer_names, progress=False, max_rows=max_rows)
    evaluator = _Evaluator(qm, eval_data, batch_size)
    measured = evaluator.score(qmodel)
    labels = np.array([cfgs[k].label for k in choice], dtype=object)
    rows = np.arange(len(choice))
    ds = xr.Dataset(
        {
            "assignment": ("layer", labels.astype(str)),
            "sensitivity": ("layer", cost[rows, choice]),
            "bits_per_weight": ("layer", sens.bits_per_weight.values[rows, choice]),
            "predicted": ((), predicted),
            "measured": ((), measured),
            "budget_bits_per_weight": ((), float(budget_bits_per_weight)),
            "achieved_bits_per_weight": ((), 8.0 * total / n_weights.sum()),
        },
        coords={"layer": layer_names, "n_weights": ("layer", n_weights.astype(int))},
    )
    units = sens.sensitivity.attrs.get("units", "1")
    ds["assignment"].attrs.update(long_name="config chosen for the layer")
    ds["sensitivity"].attrs.update(long_name="single-layer sensitivity of the chosen config", units=units)
    ds["bits_per_weight"].attrs.update(long_name="stored bits per weight of the chosen config", units="bit")
    ds["predicted"].attrs.update(long_name=f"predicted {sens.attrs.get('metric')}: sum of single-layer sensitivities",
                                 units=units)
    ds["measured"].attrs.update(long_name=f"measured {evaluator.name} of the mixed-precision model", units=units)
    ds["budget_bits_per_weight"].attrs.update(long_name="size budget", units="bit")
    ds["achieved_bits_per_weight"].attrs.update(long_name="stored bits per weight of the assignment", units="bit")
    ds.attrs.update(
        title="mixed-precision recommendation",
        model=qm.name,
        metric=evaluator.name,
        solver="exact multiple-choice knapsack: dynamic programming over the (bytes, cost) Pareto frontier",
        configs=json.dumps([c.to_json() for c in cfgs]),
    )
    return qmodel, ds
