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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from qviz._checks import check_bool, check_int, check_number
from qviz.activations.engine import channel_rows, run_hooked
from qviz._errors import did_you_mean
from qviz._filters import LayerSpec
from qviz.activations.hooks import select_layers
from qviz.activations.moments import HIST_LOG10_RANGE, DeviceQueue, TritonMoments, accumulator, fetch_all
from qviz._version import __version__
from qviz.models import QvizModel, dequantized_weight, layer_type, load, weight_matrix
from qviz.activations.outliers import outlier_summary

__all__ = ["HIST_LOG10_RANGE", "capture"]


# --------------------------------------------------------------------------- what each layer is


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


def _absmax(w: torch.Tensor, dims: int | list[int]) -> torch.Tensor:
    """``w.abs().amax(dims)`` without the ``abs`` copy: ``max(amax, -amin)`` (NaN propagates; several times faster)."""
    return torch.maximum(w.amax(dims), -w.amin(dims))


def _weight_channel_absmax(module: nn.Module, ltype: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per input-channel and per output-channel absmax of a layer's weight (float32, on its device)."""
    if getattr(module, "weight", None) is None or ltype == "norm":
        return None, None
    if not module.weight.is_floating_point() or ltype == "linear":
        try:
            wm = dequantized_weight(module)  # [out, in]: also right for int8 codes and packed 4-bit weights
        except TypeError:
            return None, None
        return _absmax(wm, 0), _absmax(wm, 1)  # tensors: _to_host moves them together
    w = module.weight.detach().float()
    if ltype == "embedding":
        return _absmax(w, 0), None  # per embedding dim; vocab rows are not channels
    if ltype in ("conv2d", "conv1d"):
        dims_in = [d for d in range(w.dim()) if d != 1]
        dims_out = [d for d in range(w.dim()) if d != 0]
        return _absmax(w, dims_in), _absmax(w, dims_out)
    wm = weight_matrix(module).float()  # [out, in]
    return _absmax(wm, 0), _absmax(wm, 1)


@dataclass(frozen=True)
class _Layer:
    """A captured layer: its module, type, channel count and where its channels sit."""

    module: nn.Module
    ltype: str
    channels: int
    channels_first: bool

    @classmethod
    def of(cls, module: nn.Module) -> _Layer:
        ltype = layer_type(module)
        return cls(module, ltype, _channels_of(module, ltype), _channels_first(module, ltype))

    @property
    def site(self) -> str:
        """Which activation is captured: an Embedding's output, every other layer's input."""
        return "output" if self.ltype == "embedding" else "input"


# --------------------------------------------------------------------------- the hook


def _version(t: torch.Tensor) -> int | None:
    """The tensor's in-place version counter, or None for tensors without one (made under inference_mode)."""
    try:
        return int(t._version)
    except RuntimeError:
        return None


class _StatsHook:
    """The forward hook of :func:`capture`: folds each layer's activation into its running statistics.

    q, k and v projections read one tensor: its statistics are computed once per batch. Which
    layers share is learnt in the first batch a layer runs in; a layer that shared nothing then
    folds its batches straight into its running state.

    On a CUDA device the first batch runs layer by layer (one launch each) while the hook notes
    every tensor's version counter. If the forward pass wrote to none of them in place after its
    layer ran, the later batches are queued (:class:`~qviz.activations.moments.DeviceQueue`) and
    folded in a few grouped launches, so the host does not launch per layer.
    """

    def __init__(self, model: QvizModel, layers: dict[str, _Layer], n_bins: int,
                 sample_names: list[str], max_sample_tokens: int) -> None:
        self.model, self.layers, self.n_bins = model, layers, n_bins
        self.acc: dict[str, Any] = {}  # made on first use, on the device the activations live on
        self.role: dict[str, str] = {}  # "alone", "source" or "alias" of a shared input tensor
        self.samples: dict[str, list[torch.Tensor]] = {name: [] for name in sample_names}
        self.sampled_tokens = dict.fromkeys(sample_names, 0)
        self.max_sample_tokens = max_sample_tokens
        self.token_text: list[str] = []
        self.mask: torch.Tensor | None = None  # [batch, tokens] of the batch now running
        self.flat_mask: torch.Tensor | None = None  # the same, flattened: [batch * tokens]
        self.seen: dict[tuple, tuple[str, Any, weakref.ref]] = {}  # this batch's inputs -> their statistics
        self.n_tokens = 0
        self.n_items = 0
        self.n_batches = 0
        self.queue: DeviceQueue | None = None  # set once the first batch showed queueing is safe
        self.probe: list[tuple[torch.Tensor, int]] | None = []  # first batch's CUDA tensors and versions
        self._probe_held: set[int] = set()  # data addresses of the distinct tensors the probe holds
        self._probe_total = 0
        self.budget_bytes: int | None = None  # what the probe and the queue may hold on the device

    def start_batch(self, inputs: Any) -> None:
        """Note a batch's padding mask and its token and item counts before it runs.

        The batch before is folded now (grouped launches, no host wait): the device works on its
        statistics while the host is still launching this batch's forward pass, and the queue holds
        one batch's activations at a time.
        """
        if self.queue is not None:
            self.queue.flush()
        if self.n_batches == 1 and self.probe and all(_version(t) == v for t, v in self.probe):
            self.queue = DeviceQueue(self.budget_bytes)  # nothing was written in place after its hook: queue now
        if self.n_batches >= 1:
            self.probe = None
        self.n_batches += 1
        mask = self.model.token_mask(inputs)
        self.mask, self.seen = mask, {}
        self.flat_mask = None if mask is None else mask.reshape(-1)  # the row mask of every [batch, tokens, c] input
        if mask is not None:
            self.n_tokens += mask.sum() if mask.is_cuda else int(mask.sum())  # no host wait per batch on a GPU
            if self.samples and len(self.token_text) < self.max_sample_tokens:
                for row in self.model.token_strings(inputs) or []:
                    self.token_text.extend(row)
                del self.token_text[self.max_sample_tokens:]
            self.n_items += int(mask.shape[0])
        else:
            first = inputs if isinstance(inputs, torch.Tensor) else next(iter(inputs.values()))
            self.n_tokens += int(first.shape[0])
            self.n_items += int(first.shape[0])

    def accumulator(self, name: str, device: torch.device) -> Any:
        lo, hi = HIST_LOG10_RANGE
        if name not in self.acc:
            acc = accumulator(self.layers[name].channels, self.n_bins, lo, hi, device)
            if isinstance(acc, TritonMoments):  # every layer still without one, in one device allocation
                todo = [n for n in self.layers if n not in self.acc]
                self.acc.update(zip(todo, TritonMoments.many([self.layers[n].channels for n in todo], self.n_bins,
                                                             lo, hi, device)))
            else:
                self.acc[name] = acc
        elif isinstance(self.acc[name], TritonMoments) and self.acc[name]._state.device != device:
            raise RuntimeError(f"Layer {name!r} ran on {device} after running on {self.acc[name]._state.device}; "
                               "a capture expects each layer to stay on one device.")
        return self.acc[name]

    def finish(self) -> None:
        """Fold whatever is still queued (the end of the capture)."""
        if self.queue is not None:
            self.queue.flush()
        self.probe = None

    def __call__(self, name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
        layer = self.layers[name]
        x = output if layer.ltype == "embedding" else (inputs[0] if inputs else None)
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return
        acc = self.accumulator(name, x.device)
        if self.queue is not None and isinstance(acc, TritonMoments):  # later CUDA batches: queue and go on
            rows, row_mask = self._rows(x, layer, masked=True)
            if rows.shape[-1] == layer.channels and rows.shape[0]:
                self.queue.add(rows, row_mask, acc, x)
                if name in self.samples:
                    self._sample(name, rows, row_mask)
            return
        key = (x.data_ptr(), tuple(x.shape), x.dtype)
        shared = self.seen.get(key)
        if shared is not None and shared[2]() is not x:  # a freed tensor's memory, reused by another one
            shared = None
        if self.probe is not None and isinstance(acc, TritonMoments):
            if self.budget_bytes is None:  # a quarter of the device's free memory, at most 8 GiB
                self.budget_bytes = min(torch.cuda.mem_get_info(x.device)[0] // 4, 8 << 30)
            if x.data_ptr() not in self._probe_held:
                self._probe_held.add(x.data_ptr())
                self._probe_total += x.numel() * x.element_size()
            version = _version(x)
            if self._probe_total > self.budget_bytes or version is None:
                self.probe = None  # too much to hold for the check, or no version counter: stay layer by layer
            else:
                self.probe.append((x, version))
        first_batch = name not in self.role
        if shared is not None and self.layers[shared[0]].channels == layer.channels and name not in self.samples:
            acc.merge(shared[1])
            self.role[name] = "alias"
            self.role[shared[0]] = "source"
            return
        rows, row_mask = self._rows(x, layer, masked=acc.takes_row_mask)  # [rows, channels]
        if rows.shape[-1] != layer.channels or rows.shape[0] == 0:
            return  # a norm applied over another axis; nothing per-channel to say
        extra = (row_mask,) if acc.takes_row_mask else ()
        if first_batch or self.role[name] != "alone":
            batch_stats = acc.batch_stats(rows, *extra)
            acc.merge(batch_stats)
            self.seen[key] = (name, batch_stats, weakref.ref(x))  # the tensor itself, not just its address
            self.role.setdefault(name, "alone")
        else:
            acc.update(rows, *extra)
        if name in self.samples:
            self._sample(name, rows, row_mask)

    def _rows(self, x: torch.Tensor, layer: _Layer, masked: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(rows [rows, channels], row mask or None)``: padding gathered away, or left as a mask for
        an accumulator that masks rows itself (the GPU kernel: a boolean index would wait for the device)."""
        mask = self.mask
        if masked and not layer.channels_first and mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
            return x.reshape(-1, x.shape[-1]), self.flat_mask
        return channel_rows(x, layer.channels_first, mask), None

    def _sample(self, name: str, rows: torch.Tensor, row_mask: torch.Tensor | None) -> None:
        if self.sampled_tokens[name] >= self.max_sample_tokens:
            return
        if row_mask is not None:
            rows = rows[row_mask.reshape(-1)]
        take = rows[: self.max_sample_tokens - self.sampled_tokens[name]].detach().float().cpu()
        self.samples[name].append(take)
        self.sampled_tokens[name] += take.shape[0]


# --------------------------------------------------------------------------- weights, for comparison


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


def _weight_absmax(layers: dict[str, _Layer], width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(weight_absmax_in [layer, channel], weight_absmax_out [layer, out_channel])``, NaN-padded."""
    names = list(layers)
    w_in = np.full((len(names), width), np.nan)
    w_out_list = {}
    pairs = [_weight_channel_absmax(layers[name].module, layers[name].ltype) for name in names]
    host = _to_host([t for pair in pairs for t in pair])
    for i, name in enumerate(names):
        channels = layers[name].channels
        a_in, a_out = host[2 * i], host[2 * i + 1]
        if a_in is not None and a_in.shape[0] == channels:
            w_in[i, :channels] = a_in
        if a_out is not None:
            w_out_list[name] = a_out
    out_width = max((len(v) for v in w_out_list.values()), default=1)
    w_out = np.full((len(names), out_width), np.nan)
    for i, name in enumerate(names):
        if name in w_out_list:
            w_out[i, : len(w_out_list[name])] = w_out_list[name]
    return w_in, w_out


# --------------------------------------------------------------------------- the Dataset


def _statistics_dataset(qmodel: QvizModel, layers: dict[str, _Layer], hook: _StatsHook, n_bins: int,
                        never_ran: list[str]) -> xr.Dataset:
    """The ``stats`` Dataset of a finished capture (before the outlier summary)."""
    names = list(layers)
    channels = {name: layers[name].channels for name in names}
    width = max(channels.values())
    lo, hi = HIST_LOG10_RANGE
    acc = {name: hook.acc[name] if name in hook.acc else accumulator(channels[name], n_bins, lo, hi, torch.device("cpu"))
           for name in names}  # layers that never ran report NaN statistics
    fetch_all([acc[name] for name in names])  # GPU statistics cross to the host together
    finals = {name: acc[name].finalize() for name in names}

    def padded(key: str) -> np.ndarray:
        out = np.full((len(names), width), np.nan)
        for i, name in enumerate(names):
            out[i, : channels[name]] = finals[name][key]
        return out

    hist = np.zeros((len(names), width, n_bins), dtype=np.int32)
    for i, name in enumerate(names):
        hist[i, : channels[name]] = finals[name]["hist"]
    w_in, w_out = _weight_absmax(layers, width)
    out_width = w_out.shape[1]
    ltypes = {name: layers[name].ltype for name in names}
    device = qmodel.device
    n_items, n_tokens = hook.n_items, int(hook.n_tokens)
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
            "site": ("layer", [layers[n].site for n in names]),
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
            "qviz_version": __version__,
        },
    )
    return _with_sample(ds, hook, width)


def _with_sample(ds: xr.Dataset, hook: _StatsHook, width: int) -> xr.Dataset:
    """Add the token x channel sample of the ``sample=`` layers (and the tokens' text) to ``ds``."""
    sample_names = list(hook.samples)
    if not sample_names:
        return ds
    n_tok = max(hook.sampled_tokens.values())
    smp = np.full((len(sample_names), n_tok, width), np.nan, dtype=np.float32)
    for i, name in enumerate(sample_names):
        if hook.samples[name]:
            block = torch.cat(hook.samples[name]).numpy()
            smp[i, : block.shape[0], : block.shape[1]] = block
    ds["sample"] = (
        ("sample_layer", "token", "channel"),
        smp,
        {"long_name": "sampled activation", "units": "1"},
    )
    ds = ds.assign_coords(sample_layer=("sample_layer", sample_names), token=("token", np.arange(n_tok)))
    if hook.token_text:
        text = (hook.token_text + [""] * n_tok)[:n_tok]
        ds = ds.assign_coords(token_text=("token", text))
    return ds


# --------------------------------------------------------------------------- capture


def _checked_sample(sample: str | Sequence[str] | None, selected: dict[str, nn.Module]) -> list[str]:
    names = [sample] if isinstance(sample, str) else list(sample or [])
    for name in names:
        if name not in selected:
            raise ValueError(
                f"sample= names {name!r}, which is not a captured layer.{did_you_mean(name, selected)} "
                "Name one of the layers capture hooks (qviz.models.layer_names(model))."
            )
    return names


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
    check_number("capture", "threshold", threshold, lo=0.0, lo_open=True, hint="LLM.int8 uses 6.0.")
    check_int("capture", "top_k", top_k, lo=1, hint="8 is the default.")
    check_int("capture", "n_bins", n_bins, lo=2, hint="64 is the default.")
    check_int("capture", "max_sample_tokens", max_sample_tokens, lo=1, hint="256 is the default.")
    check_int("capture", "batch_size", batch_size, lo=1, hint="Pass e.g. batch_size=16 (inputs per forward pass).")
    check_bool("capture", "progress", progress)

    selected = select_layers(qmodel, layers)
    if not selected:
        raise ValueError("The layer filter selected no layer. Pass layers=None for every layer.")
    sample_names = _checked_sample(sample, selected)
    described = {name: _Layer.of(mod) for name, mod in selected.items()}
    hook = _StatsHook(qmodel, described, n_bins, sample_names, max_sample_tokens)
    rec = run_hooked(qmodel, batch, hook, layers=list(selected), batch_size=batch_size, on_batch=hook.start_batch,
                     nonfinite="warn", progress=progress, desc="qviz capture")
    hook.finish()
    never_ran = [name for name in selected if rec.calls.get(name, 0) == 0]
    ds = _statistics_dataset(qmodel, described, hook, n_bins, never_ran)
    return outlier_summary(ds, threshold=threshold, top_k=top_k)
