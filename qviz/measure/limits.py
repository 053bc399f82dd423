"""How far from the limit: SQNR versus bits for each method, beside what theory allows.

For each layer's weights ``w`` (treated as i.i.d. samples of one source) and each rate ``R`` in bits per weight:

* ``rule_db`` — the classic 6.02 dB/bit rule of a uniform quantizer whose ``2**R``
  levels span the tensor's own range ``[-max|w|, max|w|]`` with noise ``step**2 / 12``:
  ``6.02 R + 10 log10(3 E[w^2] / max|w|^2)``;
* ``gaussian_db`` — the rate-distortion function of a Gaussian source with the
  weights' variance, ``D(R) = var * 2**(-2R)``. The Gaussian is the hardest source
  of a given variance, so some (vector) quantizer reaches at least this:
  ``10 log10(E[w^2] / var) + 6.02 R``;
* ``shannon_bound_db`` — the Shannon lower bound ``D(R) >= N(w) * 2**(-2R)``, with
  ``N(w) = 2**(2 h(w)) / (2 pi e)`` the entropy power of the weights' distribution and
  ``h(w)`` its differential entropy (Vasicek m-spacing estimate, ``m = round(sqrt(n))``,
  in bits). No quantizer at ``R`` bits per weight beats ``10 log10(E[w^2] / N(w)) + 6.02 R``
  (for this marginal; the bound is tight as ``R`` grows).

For each scheme (configs with ``bits`` are swept over ``bits``; others, e.g.
NF4/FP4, sit at their own width) it measures ``sqnr_db``, the true stored
``bits_per_weight`` and ``code_entropy_bits``: the empirical entropy of the codes,
i.e. the bits per weight the codes actually carry (what an ideal entropy coder
would store), against the ``bits`` they are given.

Examples
--------
>>> import torch, qviz
>>> from torch import nn
>>> lim = qviz.measure.limits.limits(nn.Sequential(nn.Linear(256, 64)), bits=[2, 4, 8])
>>> bool((lim.sqnr_db <= lim.shannon_bound_db + 1e-6).sel(scheme="RTN ch sym").all())
True
"""

from __future__ import annotations

import dataclasses
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
from qviz.quant.api import plan, quantize_tensor
from qviz.quant.config import RTN, QuantConfig
from qviz.quant.registry import method_for

DB_PER_BIT = 20.0 * math.log10(2.0)  # 6.0206


def differential_entropy_bits(x: np.ndarray) -> float:
    """Differential entropy of the samples ``x`` in bits: Vasicek's m-spacing estimate, ``m = round(sqrt(n))``.

    ``h = mean_i log2( n / (2m) * (x_(i+m) - x_(i-m)) )`` over the sorted samples,
    indices clipped at the ends. Spacings of exactly zero (repeated values) are
    raised to the float32 resolution of the data, so an atom gives a very low,
    finite entropy rather than ``-inf``.

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=200_000)
    >>> round(differential_entropy_bits(x), 2), round(float(0.5 * np.log2(2 * np.pi * np.e)), 2)
    (2.05, 2.05)
    """
    x = np.sort(np.asarray(x, np.float64).ravel())
    n = x.size
    if n < 4:
        raise ValueError(f"Need at least 4 samples to estimate a differential entropy; got {n}.")
    m = max(1, int(round(math.sqrt(n))))
    idx = np.arange(n)
    spacing = x[np.minimum(idx + m, n - 1)] - x[np.maximum(idx - m, 0)]
    floor = max(float(np.abs(x).max()) * np.finfo(np.float32).eps, np.finfo(np.float32).tiny)
    spacing = np.maximum(spacing, floor)
    return float(np.mean(np.log2(n / (2.0 * m) * spacing)))


def code_entropy_bits(codes: Any) -> float:
    """Empirical entropy of a code array, in bits per code: ``-sum p log2 p`` over the code histogram.

    Examples
    --------
    >>> code_entropy_bits(np.array([0, 1, 2, 3], np.uint8))
    2.0
    """
    c = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    c = c.ravel()
    if c.size == 0:
        raise ValueError("codes is empty; expected at least one code.")
    if c.dtype != np.uint8:
        c = c.astype(np.int64) - int(c.min())
    counts = np.bincount(c)
    p = counts[counts > 0] / c.size
    return float(-(p * np.log2(p)).sum()) + 0.0


def _default_schemes(widths: list[int]) -> list[QuantConfig]:
    schemes: list[QuantConfig] = [RTN(bits=4, group_size=None, symmetric=True)]
    if all(w % 128 == 0 for w in widths):
        schemes.insert(0, RTN(bits=4, group_size=128, symmetric=False))
    return schemes


def _scheme_label(cfg: QuantConfig) -> str:
    """The config's label with its bit width taken out (``RTN w4 g128 asym`` -> ``RTN g128 asym``)."""
    if "bits" in {f.name for f in dataclasses.fields(cfg)}:
        return " ".join(part for part in cfg.label.split() if part != f"w{cfg.bits}")
    return cfg.label


def _measure(w: torch.Tensor, wnp: np.ndarray, cfg: QuantConfig) -> tuple[float, Any, int]:
    """``(sum of squared error, codes, stored bytes)`` of one weight matrix under ``cfg``."""
    if isinstance(cfg, RTN):  # one fused kernel pass: codes, scales and the error together
        import kernels_numba as kn

        from qviz.quant.primitives import rtn_nbytes

        codes, _, st = kn.quantize_with_stats(wnp, cfg.bits, cfg.group_size, symmetric=cfg.symmetric,
                                              clip_search=cfg.clip_search)
        return st.sse, codes, rtn_nbytes(tuple(wnp.shape), cfg.bits, cfg.group_size, cfg.symmetric)
    qt = quantize_tensor(w, cfg)
    err = qt.dequantize().double() - w.double()
    return float((err * err).sum()), qt.codes, qt.nbytes


def limits(
    model: QvizModel | nn.Module,
    bits: Sequence[int] = (2, 3, 4, 5, 6, 7, 8),
    schemes: Sequence[QuantConfig] | None = None,
    layers: LayerSpec = None,
    *,
    skip: LayerSpec = None,
) -> xr.Dataset:
    """SQNR versus bits per layer and scheme, beside the 6.02 dB/bit rule and the rate-distortion bounds.

    Parameters
    ----------
    model : QvizModel or torch.nn.Module
        Only its weights are read.
    bits : sequence of int
        Bit widths to sweep (2 to 8).
    schemes : list of QuantConfig, optional
        Data-free configs. Those with a ``bits`` field are swept (their own
        ``bits`` is replaced); the others are measured at their own width only.
        Default: RTN group-128 asymmetric (when every layer's row divides by 128)
        and RTN per-channel symmetric.
    layers, skip : layer filters

    Returns
    -------
    xr.Dataset
        dims ``(layer, scheme, bits)``: ``sqnr_db``, ``bits_per_weight``,
        ``code_entropy_bits`` (NaN where a scheme has no such width); dims
        ``(layer, bits)``: ``rule_db``, ``gaussian_db``, ``shannon_bound_db``;
        dim ``layer``: ``entropy_bits`` (differential entropy ``h``),
        ``variance``, ``mean_square``, ``absmax``.

    Examples
    --------
    >>> import qviz
    >>> lim = limits(qviz.load("minilm"), bits=[8, 4, 2])          # doctest: +SKIP
    >>> lim.sqnr_db.sel(scheme="RTN g128 asym").mean("layer")      # doctest: +SKIP
    """
    qm = load(model) if not isinstance(model, QvizModel) else model
    widths = sorted({int(b) for b in bits}) if not isinstance(bits, int) else [int(bits)]
    if not widths:
        raise ValueError("bits is empty; pass e.g. bits=[2, 3, 4, 8].")
    for b in widths:
        if not 2 <= b <= 8:
            raise ValueError(f"bits must be ints from 2 to 8; got {b}. Pass e.g. bits=range(2, 9).")
    any_cfg = RTN(bits=8, group_size=None)
    layer_plan = plan(qm, any_cfg, layers, skip)
    names = list(layer_plan.assign)
    root = qm.module
    mats = {n: weight_matrix(root.get_submodule(n)).float().cpu() for n in names}  # [out, in]
    if schemes is None:
        schemes = _default_schemes([int(m.shape[1]) for m in mats.values()])
    schemes = list(schemes)
    if not schemes:
        raise ValueError("schemes is empty; pass configs such as [qviz.RTN(group_size=128), qviz.BnbNF4()].")
    for s in schemes:
        if method_for(s).needs_inputs:
            raise TypeError(f"{type(s).__name__} needs calibration inputs; limits() takes data-free schemes (RTN, bnb).")
    labels = [_scheme_label(s) for s in schemes]
    if len(set(labels)) != len(labels):
        raise ValueError(f"Schemes must be distinct once the bit width is taken out; got {labels}.")

    shape = (len(names), len(schemes), len(widths))
    sqnr, bpw, ent = (np.full(shape, np.nan) for _ in range(3))
    stats = {k: np.empty(len(names)) for k in ("entropy_bits", "variance", "mean_square", "absmax")}
    for i, name in enumerate(names):
        w = mats[name]
        wnp = np.ascontiguousarray(w.numpy())  # [out, in] float32
        w64 = w.double()
        signal = float((w64 * w64).sum())
        stats["mean_square"][i] = signal / w.numel()
        stats["variance"][i] = float(w64.var(unbiased=False))
        stats["absmax"][i] = float(w64.abs().max())
        stats["entropy_bits"][i] = differential_entropy_bits(w.numpy())
        for j, scheme in enumerate(schemes):
            sweeps = "bits" in {f.name for f in dataclasses.fields(scheme)}
            for k, b in enumerate(widths):
                if sweeps:
                    cfg = scheme.replace(bits=b)
                elif scheme.weight_bits == b:
                    cfg = scheme
                else:
                    continue
                sse, codes, nbytes = _measure(w, wnp, cfg)
                sqnr[i, j, k] = math.inf if sse == 0 else 10.0 * math.log10(signal / sse)
                bpw[i, j, k] = 8.0 * nbytes / w.numel()
                ent[i, j, k] = code_entropy_bits(codes)

    rate = np.asarray(widths, float)[None, :]  # [1, bits]
    ms = stats["mean_square"][:, None]
    rule = DB_PER_BIT * rate + 10.0 * np.log10(3.0 * ms / np.maximum(stats["absmax"][:, None] ** 2, 1e-300))
    gauss = DB_PER_BIT * rate + 10.0 * np.log10(ms / np.maximum(stats["variance"][:, None], 1e-300))
    entropy_power = 2.0 ** (2.0 * stats["entropy_bits"][:, None]) / (2.0 * math.pi * math.e)
    shannon = DB_PER_BIT * rate + 10.0 * np.log10(ms / entropy_power)

    mods = {n: root.get_submodule(n) for n in names}
    ds = xr.Dataset(
        {
            "sqnr_db": (("layer", "scheme", "bits"), sqnr),
            "bits_per_weight": (("layer", "scheme", "bits"), bpw),
            "code_entropy_bits": (("layer", "scheme", "bits"), ent),
            "rule_db": (("layer", "bits"), rule),
            "gaussian_db": (("layer", "bits"), gauss),
            "shannon_bound_db": (("layer", "bits"), shannon),
            **{k: ("layer", v) for k, v in stats.items()},
        },
        coords={
            "layer": names,
            "scheme": labels,
            "bits": widths,
            "layer_type": ("layer", [layer_type(m) for m in mods.values()]),
            "n_weights": ("layer", [int(mats[n].numel()) for n in names]),
        },
    )
    attrs = {
        "sqnr_db": ("weight SQNR, 10 log10(sum w^2 / sum (w_hat - w)^2)", "dB"),
        "bits_per_weight": ("stored bits per weight, overhead included", "bit"),
        "code_entropy_bits": ("empirical entropy of the codes: bits per weight the codes carry", "bit"),
        "rule_db": ("6.02 dB/bit rule: uniform quantizer over [-max|w|, max|w|], noise step^2/12", "dB"),
        "gaussian_db": ("rate-distortion SQNR of a Gaussian source with the weights' variance (achievable)", "dB"),
        "shannon_bound_db": ("Shannon lower bound on distortion: largest SQNR any quantizer can reach at this rate", "dB"),
        "entropy_bits": ("differential entropy of the weights (Vasicek m-spacing estimate)", "bit"),
        "variance": ("variance of the weights", "1"),
        "mean_square": ("mean square of the weights, E[w^2]", "1"),
        "absmax": ("largest |w|", "1"),
        "bits": ("nominal code width (rate for the bounds)", "bit"),
    }
    for k, (long_name, units) in attrs.items():
        ds[k].attrs.update(long_name=long_name, units=units)
    ds.attrs.update(
        title="quantization limits",
        model=qm.name,
        schemes=json.dumps([s.to_json() for s in schemes]),
        bound="Shannon lower bound D(R) >= N(w) 2^(-2R), N = 2^(2h)/(2 pi e), h by Vasicek m-spacing (m = sqrt(n))",
        skipped=json.dumps(layer_plan.skipped),
    )
    return ds
