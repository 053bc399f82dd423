"""Activation capture: streaming per-channel statistics through forward hooks.

:func:`capture` runs a calibration batch through the model once, with a hook
on every hookable layer, and keeps for each layer running per-channel
statistics of the activation that layer sees (the INPUT of Linear, Conv and
norm layers — what quantizing that layer sees — and the OUTPUT of an
Embedding). Memory is bounded: count, min, max, absmax, mean and the central
moments M2..M4 (merged batch by batch with the Chan/Pébay formulas) and a
fixed-bin log-magnitude histogram; raw activations are kept only for the
layers named in ``sample=``, capped at ``max_sample_tokens`` tokens.

Examples
--------
>>> import qviz
>>> model = qviz.load("digits-cnn")                                  # doctest: +SKIP
>>> stats = qviz.capture(model, qviz.calibration_data(model, n=64))  # doctest: +SKIP
>>> stats.outlier_ratio.to_series().round(1)                         # doctest: +SKIP
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

import qviz
from qviz._filters import LayerSpec
from qviz._hooks import hooks, select_layers
from qviz.models import QvizModel, layer_type, load, weight_matrix

HIST_LOG10_RANGE = (-6.0, 4.0)  # |x| from 1e-6 to 1e4; the end bins also hold what falls outside


@dataclass
class _ChannelStats:
    """Running per-channel statistics of one layer's activations (float64 accumulators)."""

    n_channels: int
    n_bins: int
    lo: float
    hi: float
    device: torch.device
    count: torch.Tensor = field(init=False)
    min: torch.Tensor = field(init=False)
    max: torch.Tensor = field(init=False)
    absmax: torch.Tensor = field(init=False)
    mean: torch.Tensor = field(init=False)
    m2: torch.Tensor = field(init=False)
    m3: torch.Tensor = field(init=False)
    m4: torch.Tensor = field(init=False)
    hist: torch.Tensor = field(init=False)
    n_nonfinite: int = 0

    def __post_init__(self) -> None:
        c, dev, f64 = self.n_channels, self.device, torch.float64
        self.count = torch.zeros(c, dtype=f64, device=dev)
        self.min = torch.full((c,), float("inf"), dtype=f64, device=dev)
        self.max = torch.full((c,), float("-inf"), dtype=f64, device=dev)
        self.absmax = torch.zeros(c, dtype=f64, device=dev)
        self.mean = torch.zeros(c, dtype=f64, device=dev)
        self.m2 = torch.zeros(c, dtype=f64, device=dev)
        self.m3 = torch.zeros(c, dtype=f64, device=dev)
        self.m4 = torch.zeros(c, dtype=f64, device=dev)
        self.hist = torch.zeros(c * self.n_bins, dtype=torch.long, device=dev)

    @torch.no_grad()
    def batch_stats(self, x: torch.Tensor) -> dict[str, Any]:
        """Statistics of one batch ``x`` ``[rows, channels]``, ready for :meth:`merge`."""
        xt = x.detach().float().t().contiguous()  # [channels, rows]: reductions run along memory
        absmax_b = xt.abs().amax(1)  # NaN and Inf propagate, so this doubles as the finiteness check
        all_finite = bool(torch.isfinite(absmax_b).all())
        n_nonfinite = 0
        if all_finite:
            nb = torch.full((self.n_channels,), float(xt.shape[1]), dtype=torch.float64, device=x.device)
            lo_b, hi_b = torch.aminmax(xt, dim=1)
        else:
            finite = torch.isfinite(xt)
            n_nonfinite = int((~finite).sum())
            nb = finite.sum(1).double()
            xt = torch.where(finite, xt, torch.zeros((), device=x.device))
            absmax_b = xt.abs().amax(1)
            lo_b = torch.where(finite, xt, torch.full((), float("inf"), device=x.device)).amin(1)
            hi_b = torch.where(finite, xt, torch.full((), float("-inf"), device=x.device)).amax(1)

        # central moments about the batch mean (float32 is accurate once centred)
        mb32 = xt.sum(1) / nb.clamp_min(1).float()
        d = xt - mb32[:, None]
        if not all_finite:
            d = torch.where(finite, d, torch.zeros((), device=x.device))
        d2 = d * d

        # log10|x| histogram, one row of bins per channel, via a single bincount
        mag = torch.log10(xt.abs().clamp_min(1e-30))
        idx = ((mag - self.lo) * (self.n_bins / (self.hi - self.lo))).clamp_(0, self.n_bins - 1).to(torch.int32)
        idx += torch.arange(0, self.n_channels * self.n_bins, self.n_bins, dtype=torch.int32, device=x.device)[:, None]
        if not all_finite:
            idx = idx[finite]
        return {
            "n": nb,
            "mean": mb32.double(),
            "m2": d2.sum(1).double(),
            "m3": (d2 * d).sum(1).double(),
            "m4": (d2 * d2).sum(1).double(),
            "min": lo_b.double(),
            "max": hi_b.double(),
            "absmax": absmax_b.double(),
            "hist": torch.bincount(idx.reshape(-1), minlength=self.n_channels * self.n_bins),
            "n_nonfinite": n_nonfinite,
        }

    def merge(self, b: dict[str, Any]) -> None:
        """Fold one batch's statistics into the running ones (Chan et al. / Pébay 2008)."""
        self.n_nonfinite += b["n_nonfinite"]
        self.min = torch.minimum(self.min, b["min"])
        self.max = torch.maximum(self.max, b["max"])
        self.absmax = torch.maximum(self.absmax, b["absmax"])
        self.hist += b["hist"]
        na, ma, nb, mb = self.count, self.mean, b["n"], b["mean"]
        m2a, m3a, m4a, m2b, m3b, m4b = self.m2, self.m3, self.m4, b["m2"], b["m3"], b["m4"]
        n = na + nb
        safe_n = n.clamp_min(1)
        delta = mb - ma
        self.mean = ma + delta * nb / safe_n
        self.m2 = m2a + m2b + delta**2 * na * nb / safe_n
        self.m3 = (
            m3a + m3b
            + delta**3 * na * nb * (na - nb) / safe_n**2
            + 3 * delta * (na * m2b - nb * m2a) / safe_n
        )
        self.m4 = (
            m4a + m4b
            + delta**4 * na * nb * (na * na - na * nb + nb * nb) / safe_n**3
            + 6 * delta**2 * (na * na * m2b + nb * nb * m2a) / safe_n**2
            + 4 * delta * (na * m3b - nb * m3a) / safe_n
        )
        self.count = n

    def update(self, x: torch.Tensor) -> None:  # x: [rows, channels]
        """Fold the batch ``x`` into the running statistics."""
        if x.shape[0]:
            self.merge(self.batch_stats(x))

    def finalize(self) -> dict[str, np.ndarray]:
        """Per-channel summary; same definitions as ``kernels_numba.finalize_channel_stats``."""
        state = torch.stack(  # one copy to the host
            [self.count, self.min, self.max, self.absmax, self.mean, self.m2, self.m3, self.m4]).cpu().numpy()
        return _summary_from(state, self.hist.reshape(self.n_channels, self.n_bins).cpu().numpy())


class _NumbaChannelStats:
    """The CPU accumulator: one fused pass per batch in ``kernels_numba`` (same interface as :class:`_ChannelStats`)."""

    def __init__(self, n_channels: int, n_bins: int, lo: float, hi: float) -> None:
        import kernels_numba as kn

        self._kn = kn
        self.n_channels, self.n_bins, self.lo, self.hi = n_channels, n_bins, lo, hi
        self.state = kn.new_channel_stats(n_channels, n_bins, lo, hi)

    @property
    def n_nonfinite(self) -> int:
        return int(self.state.nonfinite.sum())

    @torch.no_grad()
    def batch_stats(self, x: torch.Tensor) -> Any:
        """Statistics of one batch ``x`` ``[rows, channels]``, ready for :meth:`merge`."""
        rows = x.detach().to(torch.float32).contiguous().numpy()  # [rows, channels]
        batch = self._kn.new_channel_stats(self.n_channels, self.n_bins, self.lo, self.hi)
        return self._kn.update_channel_stats(batch, rows)

    def merge(self, batch: Any) -> None:
        """Fold one batch's statistics into the running ones."""
        self._kn.merge_channel_stats(self.state, batch)

    def update(self, x: torch.Tensor) -> None:  # x: [rows, channels]
        """Fold the batch ``x`` into the running statistics."""
        if x.shape[0]:
            self._kn.update_channel_stats(self.state, x.detach().to(torch.float32).contiguous().numpy())

    def finalize(self) -> dict[str, np.ndarray]:
        summary = self._kn.finalize_channel_stats(self.state)
        out = {k: getattr(summary, k) for k in ("count", "min", "max", "absmax", "mean", "std", "skewness", "kurtosis")}
        out["count"] = out["count"].astype(np.float64)
        out["hist"] = self.state.hist
        return out


class _TritonChannelStats(_ChannelStats):
    """The CUDA accumulator: one Triton launch per layer and batch (:mod:`qviz.gpu.stats`), no host sync.

    Padding rows are masked out in the kernel instead of being gathered away (a boolean index
    would wait for the device); the NaN/Inf count stays on the device until :meth:`finalize`.
    """

    takes_row_mask = True

    def __post_init__(self) -> None:
        c, dev = self.n_channels, self.device
        # one [8, channels] float64 block, so that the summary crosses to the host in one copy
        self._state = torch.zeros((8, c), dtype=torch.float64, device=dev)
        self._state[1] = float("inf")
        self._state[2] = float("-inf")
        self.count, self.min, self.max, self.absmax, self.mean, self.m2, self.m3, self.m4 = self._state.unbind(0)
        self.hist = torch.zeros(c * self.n_bins, dtype=torch.int32, device=dev)
        self._bad = torch.zeros(1, dtype=torch.int32, device=dev)
        self._host: tuple[np.ndarray, np.ndarray, int] | None = None

    @property
    def n_nonfinite(self) -> int:  # type: ignore[override]
        """NaN/Inf values skipped (read from the device unless :func:`_fetch_all` brought it over)."""
        return self._host[2] if self._host is not None else int(self._bad.item())

    @n_nonfinite.setter
    def n_nonfinite(self, value: int) -> None:  # the dataclass __init__ sets the field; the count lives on the device
        pass

    @torch.no_grad()
    def batch_stats(self, x: torch.Tensor, row_mask: torch.Tensor | None = None) -> Any:  # type: ignore[override]
        """Summary of one batch ``x`` ``[rows, channels]`` (rows where ``row_mask`` is False left out)."""
        from qviz.gpu.stats import channel_stats

        return channel_stats(x.detach(), row_mask, self, accumulate=False)

    def merge(self, b: Any) -> None:  # type: ignore[override]
        """Fold a batch summary into the running statistics."""
        from qviz.gpu.stats import merge_summary

        merge_summary(b, self)

    @torch.no_grad()
    def update(self, x: torch.Tensor, row_mask: torch.Tensor | None = None) -> None:  # type: ignore[override]
        """Fold the batch ``x`` into the running statistics (one launch)."""
        from qviz.gpu.stats import channel_stats

        if x.shape[0]:
            channel_stats(x.detach(), row_mask, self, accumulate=True)

    def finalize(self) -> dict[str, np.ndarray]:
        """Per-channel summary, from the host copy :func:`_fetch_all` made (or one made now)."""
        if self._host is None:
            _fetch_all([self])
        state, hist, _ = self._host
        return _summary_from(state, hist.reshape(self.n_channels, self.n_bins))


def _fetch_all(accs: list[Any]) -> None:
    """Copy the state of every GPU accumulator to the host in three transfers (not three per layer)."""
    gpu = [a for a in accs if isinstance(a, _TritonChannelStats) and a._host is None]
    if not gpu:
        return
    states = torch.cat([a._state for a in gpu], dim=1).cpu().numpy()  # [8, sum of channels]
    hists = torch.cat([a.hist for a in gpu]).cpu().numpy()
    bad = torch.cat([a._bad for a in gpu]).cpu().numpy()
    c0 = h0 = 0
    for i, a in enumerate(gpu):
        c1, h1 = c0 + a.n_channels, h0 + a.n_channels * a.n_bins
        a._host = (states[:, c0:c1], hists[h0:h1], int(bad[i]))
        c0, h0 = c1, h1


def _summary_from(state: np.ndarray, hist: np.ndarray) -> dict[str, np.ndarray]:
    """The per-channel summary of float64 ``[count, min, max, absmax, mean, m2, m3, m4]`` rows."""
    n, lo, hi, amax, mean, m2, m3, m4 = state
    has = n > 0
    pos = has & (m2 > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "count": n,
            "min": np.where(has, lo, np.nan),
            "max": np.where(has, hi, np.nan),
            "absmax": np.where(has, amax, np.nan),
            "mean": np.where(has, mean, np.nan),
            "std": np.sqrt(np.where(has, m2 / np.where(has, n, 1), np.nan)),
            "skewness": np.where(pos, np.sqrt(n) * m3 / np.where(pos, m2, 1) ** 1.5, np.nan),
            "kurtosis": np.where(pos, n * m4 / np.where(pos, m2, 1) ** 2, np.nan),
            "hist": hist,
        }


def _accumulator(n_channels: int, n_bins: int, lo: float, hi: float, device: torch.device) -> Any:
    """Numba on the CPU (one fused pass), Triton on CUDA, torch reductions on other accelerators."""
    if device.type == "cpu":
        return _NumbaChannelStats(n_channels, n_bins, lo, hi)
    from qviz.gpu import _has_triton

    if device.type == "cuda" and _has_triton():
        return _TritonChannelStats(n_channels, n_bins, lo, hi, device)
    return _ChannelStats(n_channels, n_bins, lo, hi, device)


def _to_rows(x: torch.Tensor, channels_first: bool, mask: torch.Tensor | None) -> torch.Tensor:
    """Reshape an activation to ``[rows, channels]`` (channels last), dropping padding tokens."""
    if channels_first and x.dim() >= 2:
        # [batch, channels, *spatial] -> [batch * spatial, channels]
        return x.movedim(1, -1).reshape(-1, x.shape[1])
    if mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
        return x[mask]  # [real tokens, channels]
    return x.reshape(-1, x.shape[-1])


def _rows_and_mask(x: torch.Tensor, channels_first: bool, mask: torch.Tensor | None,
                   gather: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(rows [rows, channels], row mask or None)``: padding gathered away (``gather``) or returned as a mask."""
    if gather or channels_first or mask is None or x.dim() != 3 or x.shape[:2] != mask.shape:
        return _to_rows(x, channels_first, mask), None
    return x.reshape(-1, x.shape[-1]), mask.reshape(-1)


def _channels_first(module: nn.Module, ltype: str) -> bool:
    """Convolutions, BatchNorm and GroupNorm keep channels in dim 1; everything else last."""
    return ltype in ("conv2d", "conv1d") or isinstance(
        module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)
    )


def _channels_of(module: nn.Module, ltype: str) -> int:
    if ltype == "embedding":
        return module.embedding_dim
    if ltype in ("conv2d", "conv1d"):
        return module.in_channels
    if ltype == "linear":
        if isinstance(getattr(module, "in_features", None), int):  # also right for packed (quantized) weights
            return module.in_features
        return weight_matrix(module).shape[1]
    if ltype == "norm":
        shape = getattr(module, "normalized_shape", None)
        if shape:
            return int(shape[-1])
        for attr in ("num_features", "num_channels"):
            if hasattr(module, attr):
                return int(getattr(module, attr))
        if getattr(module, "weight", None) is not None:
            return int(module.weight.shape[-1])
    raise TypeError(f"qviz cannot tell the channel count of {type(module).__name__}.")


def _weight_channel_absmax(module: nn.Module, ltype: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per input-channel and per output-channel absmax of a layer's weight (float32, on its device)."""
    if getattr(module, "weight", None) is None or ltype == "norm":
        return None, None
    if not module.weight.is_floating_point() or ltype == "linear":
        from qviz.robustness import dequantized_weight

        try:
            wm = dequantized_weight(module)  # [out, in]: also right for int8 codes and packed 4-bit weights
        except TypeError:
            return None, None
        return wm.abs().amax(0), wm.abs().amax(1)  # tensors: _to_host moves them together
    w = module.weight.detach().float()
    if ltype == "embedding":
        return w.abs().amax(0), None  # per embedding dim; vocab rows are not channels
    if ltype in ("conv2d", "conv1d"):
        dims_in = [d for d in range(w.dim()) if d != 1]
        dims_out = [d for d in range(w.dim()) if d != 0]
        return w.abs().amax(dims_in), w.abs().amax(dims_out)
    wm = weight_matrix(module).float()  # [out, in]
    return wm.abs().amax(0), wm.abs().amax(1)


def _to_host(tensors: list[torch.Tensor | None]) -> list[np.ndarray | None]:
    """1-D tensors to numpy, those on one accelerator in a single copy."""
    out: list[np.ndarray | None] = [None if t is None else t for t in tensors]
    on_dev = [i for i, t in enumerate(tensors) if t is not None and t.device.type != "cpu"]
    if on_dev:
        flat = torch.cat([tensors[i].to(tensors[on_dev[0]].device) for i in on_dev]).cpu().numpy()
        start = 0
        for i in on_dev:
            n = tensors[i].numel()
            out[i] = flat[start : start + n]
            start += n
    return [t.numpy() if isinstance(t, torch.Tensor) else t for t in out]


def _progress(iterable: Any, enabled: bool, total: int | None, desc: str) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


def _n_items(batch: Any) -> int | None:
    if isinstance(batch, (torch.Tensor, np.ndarray)) and batch.ndim == 0:
        return None  # refused with a clear message by QvizModel.batches
    if isinstance(batch, (list, tuple, torch.Tensor, np.ndarray)):
        return len(batch)
    if isinstance(batch, dict):
        return len(next(iter(batch.values())))
    return None


def capture(
    model: QvizModel | nn.Module | str,
    batch: Any,
    *,
    layers: LayerSpec = None,
    batch_size: int = 16,
    threshold: float = 6.0,
    top_k: int = 8,
    sample: str | Sequence[str] | None = None,
    max_sample_tokens: int = 256,
    n_bins: int = 64,
    progress: bool = True,
) -> xr.Dataset:
    """Run ``batch`` through ``model`` and return per-layer, per-channel activation statistics.

    Parameters
    ----------
    model
        A :class:`~qviz.QvizModel`, a ``torch.nn.Module`` or a name for :func:`qviz.load`.
        It is not changed; every hook is removed on exit, also on an exception.
    batch
        Raw inputs (texts, images, a tensor), a dict from a tokenizer, or an
        iterable of batches (a ``DataLoader``).
    layers
        Which layers: ``None`` (every Linear, Conv, Embedding and norm layer),
        a name, a glob, a list or a predicate ``(name, module) -> bool``.
    batch_size
        Inputs per forward pass when ``batch`` is a list or a tensor.
    threshold
        Channel absmax above which a channel counts as an outlier
        (``n_over_threshold``); LLM.int8() uses 6.0.
    top_k
        How many of the largest channels per layer to list (``top_channels``).
    sample
        Layer name(s) for which to keep a token × channel sample of the raw activations.
    max_sample_tokens
        Cap on the sampled tokens (the first tokens of the batch, padding excluded).
    n_bins
        Bins of the log10|x| histogram over [1e-6, 1e4].
    progress
        Show a ``tqdm.auto`` progress bar over batches.

    Returns
    -------
    xarray.Dataset
        Dims ``layer``, ``channel`` (padded with NaN to the widest layer; see
        ``n_channels``), ``out_channel``, ``bin``, ``rank`` and, with ``sample``,
        ``sample_layer`` and ``token``. Variables ``absmax``, ``min``, ``max``,
        ``mean``, ``std``, ``kurtosis``, ``count``, ``hist``,
        ``weight_absmax_in``, ``weight_absmax_out``, ``n_nonfinite`` and the
        outlier summary of :func:`qviz.outlier_summary` (``outlier_ratio``,
        ``n_over_threshold``, ``max_kurtosis``, ``top_channels``,
        ``channel_recurrence``).

    Examples
    --------
    >>> import torch, qviz
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> stats = qviz.capture(net, torch.randn(32, 8), progress=False)
    >>> stats.sizes["layer"], int(stats.n_channels.max())
    (2, 16)
    """
    qmodel = load(model) if isinstance(model, (str, nn.Module)) else model
    if not isinstance(qmodel, QvizModel):
        raise TypeError(
            f"capture() takes a qviz model, a torch.nn.Module or a model name; got {type(model).__name__}."
        )
    from qviz._checks import check_bool, check_int, check_number

    check_number("capture", "threshold", threshold, lo=0.0, lo_open=True, hint="LLM.int8 uses 6.0.")
    check_int("capture", "top_k", top_k, lo=1, hint="8 is the default.")
    check_int("capture", "n_bins", n_bins, lo=2, hint="64 is the default.")
    check_int("capture", "max_sample_tokens", max_sample_tokens, lo=1, hint="256 is the default.")
    check_int("capture", "batch_size", batch_size, lo=1, hint="Pass e.g. batch_size=16 (inputs per forward pass).")
    check_bool("capture", "progress", progress)

    selected = select_layers(qmodel, layers)
    if not selected:
        raise ValueError("The layer filter selected no layer. Pass layers=None for every layer.")
    sample_names = [sample] if isinstance(sample, str) else list(sample or [])
    for name in sample_names:
        if name not in selected:
            from qviz._errors import did_you_mean

            raise ValueError(
                f"sample= names {name!r}, which is not a captured layer.{did_you_mean(name, selected)} "
                "Name one of the layers capture hooks (qviz.models.layer_names(model))."
            )

    ltypes = {name: layer_type(mod) for name, mod in selected.items()}
    channels = {name: _channels_of(mod, ltypes[name]) for name, mod in selected.items()}
    chan_first = {name: _channels_first(mod, ltypes[name]) for name, mod in selected.items()}
    device = qmodel.device
    lo, hi = HIST_LOG10_RANGE
    acc: dict[str, Any] = {}  # made on first use, on the device the activations live on
    role: dict[str, str] = {}  # "alone", "source" or "alias" of a shared input tensor
    samples: dict[str, list[torch.Tensor]] = {name: [] for name in sample_names}
    sampled_tokens = {name: 0 for name in sample_names}
    token_text: list[str] = []
    state: dict[str, Any] = {"mask": None, "seen": {}}
    n_tokens = 0
    n_items = 0

    def on_forward(name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
        ltype = ltypes[name]
        x = output if ltype == "embedding" else (inputs[0] if inputs else None)
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return
        # q, k and v projections read one tensor: compute its statistics once per batch.
        # Which layers share is learnt in the first batch a layer runs in; a layer that
        # shared nothing then folds its batches straight into its running state.
        key = (x.data_ptr(), tuple(x.shape), x.dtype)
        shared = state["seen"].get(key)
        if shared is not None and shared[2]() is not x:  # a freed tensor's memory, reused by another one
            shared = None
        if name not in acc:
            acc[name] = _accumulator(channels[name], n_bins, lo, hi, x.device)
        first_batch = name not in role
        if shared is not None and channels[shared[0]] == channels[name] and name not in samples:
            acc[name].merge(shared[1])
            role[name] = "alias"
            role[shared[0]] = "source"
            return
        masked = getattr(acc[name], "takes_row_mask", False)  # the GPU kernel masks padding rows itself
        rows, row_mask = _rows_and_mask(x, chan_first[name], state["mask"], gather=not masked)  # [rows, channels]
        if rows.shape[-1] != channels[name] or rows.shape[0] == 0:
            return  # a norm applied over another axis; nothing per-channel to say
        extra = (row_mask,) if masked else ()
        if first_batch or role[name] != "alone":
            batch_stats = acc[name].batch_stats(rows, *extra)
            acc[name].merge(batch_stats)
            state["seen"][key] = (name, batch_stats, weakref.ref(x))  # the tensor itself, not just its address
            role.setdefault(name, "alone")
        else:
            acc[name].update(rows, *extra)
        if name in samples and sampled_tokens[name] < max_sample_tokens:
            if row_mask is not None:
                rows = rows[row_mask.reshape(-1)]
            take = rows[: max_sample_tokens - sampled_tokens[name]].detach().float().cpu()
            samples[name].append(take)
            sampled_tokens[name] += take.shape[0]

    total = None
    n_raw = _n_items(batch)
    if n_raw is not None and not isinstance(batch, dict):
        total = -(-n_raw // batch_size)
    was_training = qmodel.module.training
    qmodel.module.eval()
    try:
        with hooks(qmodel, on_forward, layers=list(selected)) as rec:
            for inputs in _progress(qmodel.batches(batch, batch_size, nonfinite="warn"), progress, total, "qviz capture"):
                mask = qmodel.token_mask(inputs)
                state["mask"] = mask
                state["seen"] = {}
                if mask is not None:
                    n_tokens += int(mask.sum())
                    if sample_names and len(token_text) < max_sample_tokens:
                        for row in qmodel.token_strings(inputs) or []:
                            token_text.extend(row)
                        del token_text[max_sample_tokens:]
                else:
                    first = inputs if isinstance(inputs, torch.Tensor) else next(iter(inputs.values()))
                    n_tokens += int(first.shape[0])
                n_items += int((mask if mask is not None else first).shape[0])
                with torch.no_grad():
                    qmodel.forward(inputs)
    finally:
        qmodel.module.train(was_training)

    never_ran = [name for name in selected if rec.calls.get(name, 0) == 0]
    names = list(selected)
    width = max(channels.values())
    for name in names:  # layers that never ran report NaN statistics
        acc.setdefault(name, _accumulator(channels[name], n_bins, lo, hi, torch.device("cpu")))
    _fetch_all([acc[name] for name in names])  # GPU statistics cross to the host together
    finals = {name: acc[name].finalize() for name in names}

    def padded(key: str) -> np.ndarray:
        out = np.full((len(names), width), np.nan)
        for i, name in enumerate(names):
            out[i, : channels[name]] = finals[name][key]
        return out

    hist = np.zeros((len(names), width, n_bins), dtype=np.int32)
    w_in = np.full((len(names), width), np.nan)
    w_out_list = {}
    pairs = [_weight_channel_absmax(selected[name], ltypes[name]) for name in names]
    host = _to_host([t for pair in pairs for t in pair])
    for i, name in enumerate(names):
        hist[i, : channels[name]] = finals[name]["hist"]
        a_in, a_out = host[2 * i], host[2 * i + 1]
        if a_in is not None and a_in.shape[0] == channels[name]:
            w_in[i, : channels[name]] = a_in
        if a_out is not None:
            w_out_list[name] = a_out
    out_width = max((len(v) for v in w_out_list.values()), default=1)
    w_out = np.full((len(names), out_width), np.nan)
    for i, name in enumerate(names):
        if name in w_out_list:
            w_out[i, : len(w_out_list[name])] = w_out_list[name]

    edges = np.linspace(lo, hi, n_bins + 1)
    dims2 = ("layer", "channel")
    ds = xr.Dataset(
        {
            "count": (dims2, padded("count"), {"long_name": "finite values seen", "units": "1"}),
            "min": (dims2, padded("min"), {"long_name": "minimum activation", "units": "1"}),
            "max": (dims2, padded("max"), {"long_name": "maximum activation", "units": "1"}),
            "absmax": (dims2, padded("absmax"), {"long_name": "max |activation|", "units": "1"}),
            "mean": (dims2, padded("mean"), {"long_name": "mean activation", "units": "1"}),
            "std": (dims2, padded("std"), {"long_name": "standard deviation of activation", "units": "1"}),
            "skewness": (dims2, padded("skewness"), {"long_name": "skewness (Fisher-Pearson)", "units": "1"}),
            "kurtosis": (dims2, padded("kurtosis"), {"long_name": "kurtosis (Pearson; normal = 3)", "units": "1"}),
            "hist": (
                ("layer", "channel", "bin"),
                hist,
                {"long_name": "histogram of log10|activation| (end bins include out-of-range)", "units": "count"},
            ),
            "weight_absmax_in": (dims2, w_in, {"long_name": "max |weight| per input channel", "units": "1"}),
            "weight_absmax_out": (
                ("layer", "out_channel"),
                w_out,
                {"long_name": "max |weight| per output channel", "units": "1"},
            ),
            "n_channels": (("layer",), np.array([channels[n] for n in names]), {"long_name": "channels", "units": "1"}),
            "n_nonfinite": (
                ("layer",),
                np.array([acc[n].n_nonfinite for n in names]),
                {"long_name": "NaN/Inf activation values skipped", "units": "count"},
            ),
        },
        coords={
            "layer": ("layer", names),
            "channel": ("channel", np.arange(width)),
            "out_channel": ("out_channel", np.arange(out_width)),
            "bin": ("bin", np.arange(n_bins)),
            "bin_lo": ("bin", edges[:-1], {"long_name": "log10|x| lower edge", "units": "log10"}),
            "bin_hi": ("bin", edges[1:], {"long_name": "log10|x| upper edge", "units": "log10"}),
            "layer_type": ("layer", [ltypes[n] for n in names]),
            "site": ("layer", ["output" if ltypes[n] == "embedding" else "input" for n in names]),
        },
        attrs={
            "title": "qviz activation statistics",
            "model": qmodel.name,
            "model_kind": qmodel.kind,
            "random_weights": int(qmodel.random_weights),
            "n_items": n_items,
            "n_tokens": n_tokens,
            "dtype": str(qmodel.dtype).replace("torch.", ""),
            "device": str(device),
            "hist_log10_range": json.dumps([lo, hi]),
            "layers_never_called": json.dumps(never_ran),
            "qviz_version": qviz.__version__,
        },
    )
    if sample_names:
        n_tok = max(sampled_tokens.values()) if sampled_tokens else 0
        smp = np.full((len(sample_names), n_tok, width), np.nan, dtype=np.float32)
        for i, name in enumerate(sample_names):
            if samples[name]:
                block = torch.cat(samples[name]).numpy()
                smp[i, : block.shape[0], : block.shape[1]] = block
        ds["sample"] = (
            ("sample_layer", "token", "channel"),
            smp,
            {"long_name": "sampled activation", "units": "1"},
        )
        ds = ds.assign_coords(sample_layer=("sample_layer", sample_names), token=("token", np.arange(n_tok)))
        if token_text:
            text = (token_text + [""] * n_tok)[:n_tok]
            ds = ds.assign_coords(token_text=("token", text))
    from qviz.outliers import outlier_summary

    return outlier_summary(ds, threshold=threshold, top_k=top_k)
