"""``qviz.compare``: accuracy, size, cost and robustness of several quantization configs, side by side.

For each config the model is quantized (:func:`qviz.quantize`, a copy), then

* **accuracy** on the model's held-out task (:mod:`qviz.evaluate.accuracy`)
  and agreement with full precision;
* **size**: the true bytes recorded by the quantizer, bits per weight, and the
  bytes of the stored tensors written with safetensors (where the model holds
  real storage; a weight-only RTN config is re-quantized with ``packed=True``
  for the check);
* **cost**: batch-1 latency and batched throughput measured here, by the real
  low-bit kernel where one exists (bitsandbytes modules; the Numba INT4/INT8
  GEMV for weight-only RTN Linear layers) and otherwise by the fake-quant model,
  labelled ``simulated``; dollars per million items at this CPU's price; the
  roofline decode estimate, cost and fits-on flag for every hardware row;
* **robustness**: attack success rate per ε. Images (L∞): FGSM and PGD through
  straight-through gradients of the quantized model (white-box) and PGD
  crafted on full precision (transfer). Text encoders: L2 PGD in input-embedding
  space (white-box and transfer) and gradient-guided token substitution
  (dim ``n_tokens``). Plus per-layer error amplification ‖Δactivation‖/‖Δinput‖
  under the same full-precision-crafted perturbation for every config.

Examples
--------
>>> import qviz
>>> model = qviz.load("digits-cnn")                                              # doctest: +SKIP
>>> cmp = qviz.compare(model, [qviz.RTN(bits=4, group_size=None), qviz.BnbInt8()])  # doctest: +SKIP
>>> cmp.accuracy.to_series()                                                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr

from qviz._errors import did_you_mean
from qviz.evaluate import accuracy as acc
from qviz.evaluate import cost as cost_mod
from qviz.evaluate import intervals
from qviz.evaluate import size as size_mod
from qviz.models import QvizModel, load

__all__ = ["METRICS", "compare"]

METRICS = ("accuracy", "size", "cost", "robustness")
"""The groups of measurements :func:`compare` can take (``metrics=``)."""

BASELINE = "fp32"

DEFAULT_EPS = {
    "image-classifier": (0.0, 0.02, 0.05, 0.1, 0.2),  # L∞ on pixels in [0, 1]
    "text-encoder": (0.0, 0.02, 0.05, 0.1, 0.2),  # L2 over a query's word embeddings
}
EPS_UNITS = {
    "image-classifier": "L∞ pixel change (inputs in [0, 1])",
    "text-encoder": "L2 norm of the word-embedding perturbation of a query",
}


# --------------------------------------------------------------------------- argument checks


def _check_metrics(metrics: Any) -> tuple[str, ...]:
    if metrics is None:
        return METRICS
    if isinstance(metrics, str):
        metrics = [metrics]
    out = []
    for m in metrics:
        if m not in METRICS:
            raise ValueError(
                f"Unknown metric {m!r}.{did_you_mean(str(m), METRICS)} compare measures: {', '.join(METRICS)}; "
                "pass a subset, e.g. metrics=['accuracy', 'size']."
            )
        out.append(m)
    if not out:
        raise ValueError(f"metrics is empty; pass a subset of {METRICS} or None for all.")
    return tuple(out)


def _check_configs(configs: Any) -> list[Any]:
    from qviz.quant.registry import method_for

    if configs is None or isinstance(configs, (str, bytes)) or not isinstance(configs, Sequence):
        if configs is not None and not isinstance(configs, (str, bytes)) and hasattr(configs, "label"):
            configs = [configs]
        else:
            raise TypeError(
                "configs must be a list of quantization configs, e.g. [qviz.RTN(bits=4), qviz.BnbNF4()] "
                f"('fp32' is always included as the baseline); got {configs!r}."
            )
    out: list[Any] = []
    for c in configs:
        if c == BASELINE:
            continue
        method_for(c)  # TypeError listing the known configs
        out.append(c)
    labels = [BASELINE] + [c.label for c in out]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ValueError(f"Each config must appear once; {dupes} is repeated.")
    return out


def _check_eps(eps: Any, kind: str) -> np.ndarray:
    if eps is None:
        return np.array(DEFAULT_EPS.get(kind, (0.0,)), dtype=np.float64)
    arr = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"eps must be a number or a list of numbers; got {eps!r}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"eps must be finite; got {eps!r}.")
    if np.any(arr < 0):
        raise ValueError(
            f"eps must be >= 0 (attack strengths); got {float(arr.min()):g}. "
            f"E.g. eps=[0, 0.05, 0.1] ({EPS_UNITS.get(kind, 'input units')})."
        )
    if len(set(arr.tolist())) != arr.size:
        raise ValueError(f"eps values must be distinct; got {eps!r}.")
    return np.sort(arr)


# --------------------------------------------------------------------------- shared context


@dataclass
class _Context:
    """Everything computed once on full precision and shared by every config's evaluation."""

    model: QvizModel
    task: acc.Task
    ref: Any
    metrics: tuple[str, ...]
    eps: np.ndarray
    calib: Any
    hardware: xr.Dataset
    cost_inputs: Any
    n_tokens: int
    threads: int | None = 1
    attack: dict[str, Any] = field(default_factory=dict)
    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = 32
    ref_answers: list[Any] = field(default_factory=list)


def _default_calib(model: QvizModel, n: int | None) -> Any:
    from qviz.data import calibration_data

    default = 16 if model.kind in ("text-encoder", "decoder") else 64
    return calibration_data(model, n=n or default)


def _prepare_attacks(ctx: _Context, n_attack: int | None, steps: int, seed: int) -> None:
    """Pick the attacked inputs and craft the transfer attacks on full precision, once for every config.

    Only ε > 0 is attacked: at ε = 0 the input is the clean one (success is measured on it as is).
    """
    from qviz import robustness as R

    model = ctx.model
    active = ctx.eps[ctx.eps > 0]  # [n_active]
    mid = float(active[len(active) // 2]) if len(active) else 0.0
    if model.kind == "image-classifier":
        n = n_attack or 128
        x, y = ctx.ref["x"][:n], ctx.ref["y"][:n]
        rows_eps = torch.tensor(np.repeat(active, len(x)))  # [n_active * n]
        xs, ys = x.repeat(len(active), 1, 1, 1), y.repeat(len(active))
        fp_adv = R.pgd(model, xs, ys, rows_eps, steps=steps) if len(active) else xs  # transfer source
        amp = _chunks(fp_adv, len(active))[len(active) // 2] if len(active) else x
        ctx.attack = {"x": x, "y": y, "xs": xs, "ys": ys, "rows_eps": rows_eps, "fp_adv": fp_adv,
                      "amp_adv": amp, "amp_eps": mid, "steps": steps}
    elif model.kind == "text-encoder":
        n = n_attack or 16
        queries = list(ctx.ref["queries"][:n])
        targets = ctx.ref["labels"][:n]
        index = ctx.ref["index"]
        rows_eps = torch.tensor(np.repeat(active, len(queries)))
        fp = R.embedding_pgd(model, queries * len(active), index, targets.repeat(len(active)), rows_eps, steps=steps) \
            if len(active) else None
        hot = R.token_substitution(model, queries, index, targets, max_tokens=3)
        delta = fp["delta"] if fp is not None else None
        amp = _chunks(delta, len(active))[len(active) // 2] if delta is not None else None
        ctx.attack = {"queries": queries, "targets": targets, "rows_eps": rows_eps, "fp_delta": delta,
                      "hot_ids": hot["input_ids"], "amp_delta": amp, "amp_eps": mid, "steps": steps}


# --------------------------------------------------------------------------- one config


def _chunks(values: Any, n_chunks: int) -> list[Any]:
    """``values`` [n_chunks * n, ...] split into ``n_chunks`` consecutive parts."""
    n = len(values) // max(n_chunks, 1)
    return [values[i * n : (i + 1) * n] for i in range(n_chunks)]


def _per_eps(ctx: _Context, active_rates: list[float], zero_rate: float) -> list[float]:
    """Rates over every ε of ``ctx.eps``: ``zero_rate`` at ε = 0, the crafted ones elsewhere (in order)."""
    it = iter(active_rates)
    return [zero_rate if e == 0 else next(it) for e in ctx.eps]


def _image_robustness(ctx: _Context, q: QvizModel) -> dict[str, Any]:
    from qviz import robustness as R

    a = ctx.attack
    n_active = int((ctx.eps > 0).sum())
    x, y = a["x"], a["y"]
    zero = R.success_rate(q, x, x, y)
    n_correct = R.success_counts(q, x, x, y)[1]  # the sample size of every rate below
    rates: dict[str, list[float]] = {}
    crafted = {"FGSM L∞ white-box (STE)": None, "PGD L∞ white-box (STE)": None, "PGD L∞ transfer from fp32": a["fp_adv"]}
    if n_active:
        crafted["FGSM L∞ white-box (STE)"] = R.fgsm(q, a["xs"], a["ys"], a["rows_eps"], reference=ctx.model)
        crafted["PGD L∞ white-box (STE)"] = R.pgd(q, a["xs"], a["ys"], a["rows_eps"], steps=a["steps"], reference=ctx.model)
    for name, adv in crafted.items():
        active = [R.success_rate(q, x, chunk, y) for chunk in _chunks(adv, n_active)] if n_active else []
        rates[name] = _per_eps(ctx, active, zero)
    amp = R.error_amplification(q, x, a["amp_adv"]) if n_active else None
    return {"attack": rates, "amplification": amp, "n": n_correct}


def _text_robustness(ctx: _Context, q: QvizModel, index: torch.Tensor) -> dict[str, Any]:
    from qviz import robustness as R

    a = ctx.attack
    n_active = int((ctx.eps > 0).sum())
    queries, targets = a["queries"], a["targets"]
    clean_inputs = q.prepare(queries)
    zero = R.retrieval_success_rate(q, clean_inputs, clean_inputs, index, targets)
    n_right = R.retrieval_success_counts(q, clean_inputs, clean_inputs, index, targets)[1]  # every rate's sample size
    rates: dict[str, list[float]] = {}
    names = ("PGD L2 embedding white-box (STE)", "PGD L2 embedding transfer from fp32")
    if n_active:
        all_q, all_t = queries * n_active, targets.repeat(n_active)
        white = R.embedding_pgd(q, all_q, index, all_t, a["rows_eps"], steps=a["steps"])
        transfer = R.embedding_pgd(q, all_q, index, all_t, a["rows_eps"], delta=a["fp_delta"])
        for name, out in zip(names, (white, transfer), strict=True):
            clean = _chunks_dict(out["clean"], n_active)
            adv = _chunks_dict(out["inputs"], n_active)
            active = [R.retrieval_success_rate(q, c, d, index, targets) for c, d in zip(clean, adv, strict=True)]
            rates[name] = _per_eps(ctx, active, zero)
    else:
        rates = {name: _per_eps(ctx, [], zero) for name in names}
    hot = R.token_substitution(q, queries, index, targets, max_tokens=a["hot_ids"].shape[0])
    transfer_hot = [
        R.retrieval_success_rate(q, clean_inputs, {**clean_inputs, "input_ids": ids}, index, targets)
        for ids in a["hot_ids"]
    ]
    tokens = {"HotFlip white-box (STE)": hot["success"].tolist(), "HotFlip transfer from fp32": transfer_hot}
    amp = None
    if n_active:
        e0 = R.embed_inputs(q, clean_inputs)
        mask = clean_inputs["attention_mask"]
        amp = R.error_amplification(
            q, {"inputs_embeds": e0, "attention_mask": mask}, {"inputs_embeds": e0 + a["amp_delta"], "attention_mask": mask}
        )
    return {"attack": rates, "tokens": tokens, "amplification": amp, "n": n_right}


def _chunks_dict(d: dict[str, torch.Tensor], n_chunks: int) -> list[dict[str, torch.Tensor]]:
    parts = {k: _chunks(v, n_chunks) for k, v in d.items()}
    return [{k: parts[k][i] for k in d} for i in range(n_chunks)]


def _serialized(ctx: _Context, q: QvizModel, cfg: Any) -> float:
    from qviz.quant.registry import method_for

    try:
        return float(size_mod.serialized_size(q)["file_bytes"])
    except ValueError:
        pass
    if method_for(cfg).packs(cfg):  # the method stores this config as packed codes
        from qviz.quant.api import quantize

        packed = quantize(ctx.model, cfg, calib=ctx.calib, progress=False, packed=True)
        try:
            return float(size_mod.serialized_size(packed)["file_bytes"])
        except ValueError:  # convolutions stay fake-quant: no packed storage for them
            return math.nan
    return math.nan


def _evaluate_config(ctx: _Context, cfg: Any) -> xr.Dataset:
    """Every requested measurement for one config (``cfg`` None is the full-precision baseline)."""
    t0 = time.perf_counter()
    model = ctx.model
    if cfg is None:
        q, label = model, BASELINE
    else:
        from qviz.quant.api import quantize

        q, label = quantize(model, cfg, calib=ctx.calib, progress=False), cfg.label
    t_quant = time.perf_counter() - t0
    data: dict[str, Any] = {}
    notes: dict[str, str] = {}
    index = None
    if "accuracy" in ctx.metrics or "robustness" in ctx.metrics:
        scores, state = ctx.task.score_full(q, ctx.ref)
        index = state.get("index")
        if "accuracy" in ctx.metrics:
            for k, v in scores.items():
                data[k] = (("config",), [v], ctx.task.metric_attrs.get(k, {"long_name": k, "units": "1"}))
            data["accuracy_n"] = (("config",), [_sample_size(scores, ctx.ref)],
                                  {"long_name": "items the accuracy and agreement are shares of", "units": "1"})
    size = size_mod.model_size(q)
    if "size" in ctx.metrics:
        data["size_bytes"] = (("config",), [size["total_bytes"]], {"long_name": "model size as stored (every byte)", "units": "B"})
        data["bits_per_weight"] = (("config",), [size["bits_per_weight"]],
                                   {"long_name": "bits per weight of the quantized layers, overhead included", "units": "bit"})
        data["quantized_bytes"] = (("config",), [size["quantized_bytes"]], {"long_name": "bytes of the quantized weights", "units": "B"})
        data["full_precision_bytes"] = (("config",), [size["other_bytes"]],
                                        {"long_name": "bytes kept in full precision (embeddings, norms, biases, skipped layers)", "units": "B"})
        data["serialized_bytes"] = (("config",), [_serialized(ctx, q, cfg)],
                                    {"long_name": "safetensors file of the stored tensors (NaN: simulated storage)", "units": "B"})
    if "cost" in ctx.metrics:
        runner = q
        if cfg is not None:
            km = cost_mod.kernel_model(model, cfg, quantized=q)
            if km is not None:
                runner = km
        c = cost_mod.measure_latency(runner, ctx.cost_inputs, batch_size=16, repeats=3, threads=ctx.threads)
        per_item_tokens = ctx.n_tokens
        on_gpu = model.device.type == "cuda"  # priced on the hardware row of the device that ran it
        row = cost_mod.gpu_row_name(ctx.hardware) if on_gpu else next(
            (str(h) for h in ctx.hardware.hardware.values if str(h).startswith("this CPU")), None)
        where = "this GPU" if on_gpu else "this CPU"
        price = float(ctx.hardware.usd_per_hour.sel(hardware=row)) if row else math.nan
        rate = c["throughput"] * per_item_tokens  # tokens (or images) per second
        data["latency_ms"] = (("config",), [c["latency_ms"]], {"long_name": f"batch-1 latency per {c['item']} (median, {where})", "units": "ms"})
        data["throughput"] = (("config",), [c["throughput"]], {"long_name": f"throughput at batch 16 ({c['item']}s/s, {where})", "units": f"{c['item']}/s"})
        data["usd_per_1m"] = (("config",), [cost_mod.usd_per_1m_tokens(rate, price) if price == price else math.nan],
                              {"long_name": f"USD per million {'tokens' if per_item_tokens > 1 else c['item'] + 's'} on {where} (measured throughput)", "units": "USD"})
        data["usd_per_1k_queries"] = (("config",), [cost_mod.usd_per_1k_queries(c["throughput"], price) if price == price else math.nan],
                                      {"long_name": f"USD per thousand {c['item']}s on {where} (measured throughput)", "units": "USD"})
        data["kernel"] = (("config",), np.array([c["kernel"]], dtype=object), {"long_name": "what ran in the timed forward"})
        data["kernel_class"] = (("config",), np.array([c["kernel_class"]], dtype=object), {"long_name": "real kernel or simulated"})
        table = cost_mod.cost_table(float(size["total_bytes"]), ctx.hardware, n_params=float(model.n_params()))
        data["roofline_tokens_per_s"] = (("config", "hardware"), table.tokens_per_s.values[None],
                                         {"long_name": "batch-1 decode estimate (memory roofline)", "units": "tokens/s"})
        data["roofline_usd_per_1m"] = (("config", "hardware"), table.usd_per_1m_tokens.values[None],
                                       {"long_name": "USD per million tokens at the roofline estimate", "units": "USD"})
        data["fits"] = (("config", "hardware"), table.fits.values[None], {"long_name": "fits in memory with 20% headroom", "units": "bool"})
    coords: dict[str, Any] = {"config": [label], "hardware": ctx.hardware.hardware.values}
    if "robustness" in ctx.metrics and ctx.attack:
        rob = _image_robustness(ctx, q) if model.kind == "image-classifier" else _text_robustness(ctx, q, index)
        names = list(rob["attack"])
        data["attack_success_rate"] = (("config", "attack", "eps"), np.array([[rob["attack"][n] for n in names]]),
                                       {"long_name": "attack success rate (share of correct inputs flipped)", "units": "fraction"})
        data["attack_n"] = (("config",), [rob["n"]],
                            {"long_name": "attacked inputs the config gets right when clean (the rates' sample size)", "units": "1"})
        coords["attack"] = names
        coords["eps"] = ctx.eps
        if "tokens" in rob:
            tnames = list(rob["tokens"])
            data["token_attack_success_rate"] = (("config", "token_attack", "n_tokens"), np.array([[rob["tokens"][n] for n in tnames]]),
                                                 {"long_name": "token-substitution success rate (share of correct queries flipped)", "units": "fraction"})
            coords["token_attack"] = tnames
            coords["n_tokens"] = np.arange(1, len(rob["tokens"][tnames[0]]) + 1)
        amp = rob["amplification"]
        if amp is not None:
            data["error_amplification"] = (("config", "layer"), amp.amplification.values[None],
                                           {"long_name": "‖Δactivation‖ / ‖Δinput‖ under the fp32-crafted perturbation", "units": "1"})
            coords["layer"] = amp.layer.values
    elif "robustness" in ctx.metrics:
        notes["robustness"] = f"no attack is defined for a {model.kind!r} model; robustness was skipped"
    if ctx.prompts:
        data.update(_answers(ctx, q, cfg))
        coords["prompt"] = ctx.prompts
    data["eval_seconds"] = (("config",), [time.perf_counter() - t0], {"long_name": "time to quantize and evaluate this config", "units": "s"})
    data["quantize_seconds"] = (("config",), [t_quant], {"long_name": "time to quantize", "units": "s"})
    if "hardware" not in {d for v in data.values() for d in v[0]}:
        coords.pop("hardware")
    ds = xr.Dataset(data, coords=coords)
    ds.attrs["notes"] = json.dumps(notes)
    return ds


def _answers(ctx: _Context, q: QvizModel, cfg: Any) -> dict[str, Any]:
    """Each prompt's greedy answer and the first generated token where it leaves full precision's."""
    from qviz.generation import first_divergence, generate

    answers = ctx.ref_answers if cfg is None else generate(q, ctx.prompts, ctx.max_new_tokens)
    div = [first_divergence(a, r) for a, r in zip(answers, ctx.ref_answers, strict=True)]
    return {
        "answer": (("config", "prompt"), np.array([[a.text for a in answers]], dtype=object),
                   {"long_name": f"greedy answer ({ctx.max_new_tokens} new tokens at most)"}),
        "answer_tokens": (("config", "prompt"), np.array([[json.dumps(list(a.tokens)) for a in answers]], dtype=object),
                          {"long_name": "the answer's tokens (JSON list of strings)"}),
        "first_divergence": (("config", "prompt"), np.array([div], dtype=np.int64),
                             {"long_name": "index of the first generated token that differs from full precision's (-1: none)",
                              "units": "token"}),
    }


# --------------------------------------------------------------------------- driver


def compare(
    model: QvizModel | str,
    configs: Sequence[Any],
    task: acc.Task | str | None = None,
    *,
    eps: Sequence[float] | float | None = None,
    metrics: Sequence[str] | None = None,
    calib: Any = None,
    hardware: Any = None,
    n_attack: int | None = None,
    attack_steps: int = 5,
    threads: int | None = 1,
    client: Any = None,
    progress: bool = True,
    prompts: Sequence[str] | None = None,
    max_new_tokens: int = 32,
) -> xr.Dataset:
    """Accuracy, size, cost and robustness of each config next to full precision, as one Dataset.

    Parameters
    ----------
    model
        A :class:`~qviz.QvizModel` or a name for :func:`qviz.load`. Never changed.
    configs
        Quantization configs; ``"fp32"`` (the unquantized model) is always the first row.
    task
        The accuracy task: None (the model's default: digits test set,
        minilm topic classification, decoder perplexity), a name
        (``"digits"``, ``"topic"``, ``"perplexity"``) or a
        :class:`~qviz.evaluate.accuracy.Task`.
    eps
        Attack strengths (>= 0). Default: ``[0, 0.02, 0.05, 0.1, 0.2]`` (L∞ pixel
        change for images; L2 norm of the word-embedding perturbation for text).
    metrics
        Subset of ``("accuracy", "size", "cost", "robustness")``; None for all.
    calib
        Calibration inputs for methods that need them (GPTQ, AWQ, SmoothQuant);
        default: 16 sentences or 64 images from :func:`qviz.calibration_data`.
    hardware
        The hardware table for the roofline/cost columns (:func:`~qviz.evaluate.cost.hardware_table`).
    n_attack
        Inputs attacked per config (default 128 images or 16 sentences; only those the
        config gets right count).
    attack_steps
        PGD steps.
    threads
        torch and Numba threads while timing (default 1: every kernel core for
        core, and no waiting on a busy second core on a shared machine); None
        keeps the current setting. The rest of the evaluation is not affected.
    client
        A ``dask.distributed.Client``: the configs run as dask tasks on its
        workers. None runs them here, one after another.
    progress
        Show a progress bar over configs.
    prompts
        Decoders: prompts each config answers (greedy, :func:`qviz.generate`);
        adds ``answer``, ``answer_tokens`` and ``first_divergence`` on dims
        ``config`` × ``prompt``.
    max_new_tokens
        Tokens per answer at most.

    Returns
    -------
    xr.Dataset
        dim ``config`` ("fp32" first) and, where a variable needs them,
        ``hardware``, ``attack`` × ``eps``, ``token_attack`` × ``n_tokens`` and
        ``layer``. Variables: ``accuracy``, ``agreement`` (+ task extras: for
        decoders ``perplexity``, ``perplexity_stderr``, ``perplexity_ratio``,
        ``kl_divergence`` with its median/p90/p99/p99.9/max, ``delta_p_*``; see
        :mod:`qviz.evaluate.decoder`),
        ``size_bytes``, ``bits_per_weight``, ``serialized_bytes``, ``latency_ms``,
        ``throughput``, ``usd_per_1m``, ``kernel``, ``kernel_class``,
        ``roofline_tokens_per_s``, ``fits``, ``attack_success_rate``,
        ``error_amplification``, each with ``long_name`` and ``units``.

    Raises
    ------
    ValueError
        An unknown metric, a negative ε, repeated configs.
    TypeError
        Something that is not a registered config.

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("tiny-llama")
    >>> cmp = qviz.compare(m, [qviz.RTN(bits=4, group_size=16)], metrics=["accuracy", "size"], progress=False)
    >>> list(cmp.config.values)
    ['fp32', 'RTN w4 g16 asym']
    >>> qviz.compare(m, [qviz.RTN()], metrics=["speed"])
    Traceback (most recent call last):
    ...
    ValueError: Unknown metric 'speed'. compare measures: accuracy, size, cost, robustness; pass a subset, e.g. metrics=['accuracy', 'size'].
    """
    model = load(model) if not isinstance(model, QvizModel) else model
    metrics = _check_metrics(metrics)
    cfgs = _check_configs(configs)
    eps_arr = _check_eps(eps, model.kind)
    if not isinstance(attack_steps, int) or isinstance(attack_steps, bool) or attack_steps < 1:
        raise ValueError(f"attack_steps must be a positive int; got {attack_steps!r}.")
    if n_attack is not None and (not isinstance(n_attack, int) or n_attack < 1):
        raise ValueError(f"n_attack must be a positive int (inputs attacked per config); got {n_attack!r}.")
    t = acc.get_task(task, model)
    from qviz.quant.registry import method_for

    if calib is None and any(method_for(c).needs_inputs for c in cfgs):
        calib = _default_calib(model, None)
    hw = cost_mod.as_hardware_table(hardware) if isinstance(hardware, xr.Dataset) else cost_mod.hardware_table(hardware)
    ref = t.reference(model)
    cost_inputs, n_tokens = _cost_inputs(model, ref)
    cost_mod.Threads(threads)  # validates
    ctx = _Context(model, t, ref, metrics, eps_arr, calib, hw, cost_inputs, n_tokens, threads)
    if prompts is not None:
        from qviz.generation import check_max_new_tokens, check_prompts, generate

        ctx.prompts = check_prompts(prompts)
        ctx.max_new_tokens = check_max_new_tokens(max_new_tokens)
        ctx.ref_answers = generate(model, ctx.prompts, ctx.max_new_tokens)
    if "robustness" in metrics:
        _prepare_attacks(ctx, n_attack, attack_steps, seed=0)
    jobs: list[Any] = [None, *cfgs]
    if client is None:
        parts = []
        bar = _bar(jobs, progress)
        for c in bar:
            if progress:
                bar.set_postfix_str(BASELINE if c is None else c.label)
            parts.append(_evaluate_config(ctx, c))
    else:
        parts = _run_on_dask(client, ctx, jobs, progress)
    out = xr.concat(parts, dim="config", join="outer", combine_attrs="drop", data_vars="all", coords="minimal")
    for name, part in zip(["fp32", *[c.label for c in cfgs]], parts, strict=True):
        notes = json.loads(part.attrs.get("notes", "{}"))
        if notes:
            out.attrs[f"notes {name}"] = json.dumps(notes)
    for v in parts[0].data_vars:  # concat keeps the first part's attrs only if asked; restore them all
        out[v].attrs = dict(parts[0][v].attrs)
    if "eps" in out.coords:
        out["eps"].attrs = {"long_name": "attack strength ε", "units": EPS_UNITS.get(model.kind, "input units")}
    if "n_tokens" in out.coords:
        out["n_tokens"].attrs = {"long_name": "tokens substituted (at most)", "units": "tokens"}
    if "prompt" in out.coords:
        out["prompt"].attrs = {"long_name": "prompt (one user turn for chat models)"}
    if getattr(t, "name", "") == "perplexity":
        from qviz.models.gguf import reference_note

        out.attrs["reference"] = reference_note(model)
    if "hardware" in out.dims:
        for k in ("memory_gb", "bandwidth_gbps", "usd_per_hour"):
            out[f"hardware_{k}"] = hw[k]
        out["hardware_note"] = hw["note"].astype(str)
    out.attrs.update({
        "model": model.name,
        "task": t.name,
        "task_description": (t.__doc__ or "").strip().splitlines()[0],
        "configs": json.dumps({c.label: c.to_json() for c in cfgs}),
        "metrics": ",".join(metrics),
        "attack_inputs": int(len(ctx.attack.get("x", ctx.attack.get("queries", [])))),
        "attack_steps": attack_steps,
        "amplification_eps": ctx.attack.get("amp_eps", float("nan")),
        "torch_threads": int(torch.get_num_threads()),
        "timing_threads": "as set" if threads is None else int(threads),
        "title": f"qviz.compare on {model.name}",
    })
    return intervals.annotate(out)


def _sample_size(scores: dict[str, Any], ref: Any) -> float:
    """How many items a task's accuracy is a share of: its own count where it gives one, else the reference's labels."""
    for key in ("n", "n_tokens"):
        if key in scores:
            return float(scores[key])
    for key in ("y", "labels"):
        if isinstance(ref, dict) and key in ref:
            return float(len(ref[key]))
    return math.nan


def _cost_inputs(model: QvizModel, ref: Any) -> tuple[Any, int]:
    """Inputs to time and tokens per item (1 for images)."""
    if model.kind == "image-classifier" and isinstance(ref, dict) and "x" in ref:
        return ref["x"][:64], 1
    if model.kind == "text-encoder" and isinstance(ref, dict) and "queries" in ref:
        texts = list(ref["queries"][:16])
    elif model.kind == "decoder" and isinstance(ref, dict) and "data" in ref:
        ids = ref["data"]["input_ids"][:16, :128]  # [items, tokens] of the held-out chunks
        return ids, int(ids.shape[1])
    else:
        from qviz.data import eval_data

        x, _ = eval_data(model, n=16)
        return x, 1 if isinstance(x, torch.Tensor) else 16
    mask = model.prepare(texts)["attention_mask"]
    return texts, max(1, int(round(float(mask.sum()) / len(texts))))


def _bar(items: list[Any], show: bool) -> Any:
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="compare", unit="config", leave=False)


def _run_on_dask(client: Any, ctx: _Context, jobs: list[Any], progress: bool) -> list[xr.Dataset]:
    """Run each config as a dask task on ``client``'s workers; results come back in config order."""
    if not (hasattr(client, "submit") and hasattr(client, "gather")):
        raise TypeError(f"client must be a dask.distributed.Client (or None to run here); got {type(client).__name__}.")
    shared = client.scatter(ctx, broadcast=True)
    futures = [client.submit(_evaluate_config, shared, c, pure=False) for c in jobs]
    if progress:
        from distributed import as_completed
        from tqdm.auto import tqdm

        for _ in tqdm(as_completed(futures), total=len(futures), desc="compare (dask)", unit="config", leave=False):
            pass
    return client.gather(futures)
