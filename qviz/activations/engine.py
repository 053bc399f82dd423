"""The capture engine: run data through a model with hooks, batch by batch, and turn layer inputs into rows.

Everything in qviz that reads activations over a calibration set goes through
:func:`run_hooked`: statistics capture (:func:`qviz.capture`), the calibration
inputs the methods and the error measurement use (:func:`capture_inputs`),
SmoothQuant's activation ranges (:func:`input_absmax`) and the attacks' layer
outputs (:func:`capture_outputs`). It is built on :func:`qviz.hooks`, so the
hooks are gone when it returns, however it returns.

A layer's input becomes rows in one of two ways, both here:

* :func:`channel_rows` — ``[rows, channels]`` with the channels the layer sees
  last (a convolution's pixels become rows), for per-channel statistics;
* :func:`weight_rows` — ``[rows, in]``, the rows the layer's ``[out, in]`` weight
  matrix multiplies (a convolution's input unfolded into patches), for errors,
  Hessians and scale searches.

Both drop padding tokens where a ``[batch, tokens]`` mask matches the input.

Examples
--------
>>> import torch, qviz
>>> from torch import nn
>>> model = qviz.load(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
>>> capture_inputs(model, torch.randn(10, 4), ["2"])["2"].shape
torch.Size([10, 8])
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from qviz.activations.hooks import HookFn, HookRecorder, hooks
from qviz.models import QvizModel

MAX_ROWS = 4096  # calibration rows kept per layer by capture_inputs (a uniform sample beyond that)
CAPTURE_BATCH = 16  # inputs per forward pass when reading calibration data

__all__ = [
    "CAPTURE_BATCH",
    "MAX_ROWS",
    "as_float32",
    "as_rows",
    "capture_inputs",
    "capture_outputs",
    "channel_rows",
    "check_calib",
    "conv_patches",
    "input_absmax",
    "n_batches",
    "reusable",
    "run_hooked",
    "weight_rows",
]


# --------------------------------------------------------------------------- the batch loop


def _progress(iterable: Iterable[Any], enabled: bool, total: int | None, desc: str) -> Iterable[Any]:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm  # lazy: tqdm loads only when a progress bar is asked for

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


def n_batches(data: Any, batch_size: int) -> int | None:
    """How many forward passes ``model.batches(data, batch_size)`` makes, when it can be told in advance.

    Examples
    --------
    >>> n_batches(list("abcde"), 2), n_batches(iter([]), 2)
    (3, None)
    """
    if isinstance(data, (torch.Tensor, np.ndarray)) and data.ndim == 0:
        return None  # refused with a clear message by QvizModel.batches
    if isinstance(data, (list, tuple, torch.Tensor, np.ndarray)):
        return -(-len(data) // batch_size)
    return None


def run_hooked(
    model: QvizModel,
    data: Any,
    fn: HookFn | None,
    *,
    layers: Any = None,
    include_norms: bool = True,
    batch_size: int = CAPTURE_BATCH,
    on_batch: Callable[[Any], None] | None = None,
    nonfinite: str = "raise",
    prepared: bool = False,
    progress: bool = False,
    desc: str = "qviz",
) -> HookRecorder:
    """Run ``data`` through ``model`` batch by batch, without gradients, with ``fn`` hooked on the selected layers.

    Parameters
    ----------
    model
        The model; it is not changed (hooks removed on exit, train/eval mode restored).
    data
        Raw data for :meth:`QvizModel.batches` (texts, images, a tensor, a dict, a DataLoader),
        or with ``prepared=True`` an iterable of already prepared batches.
    fn
        ``fn(name, module, inputs, output)`` as for :func:`qviz.hooks`.
    layers, include_norms
        The layer selection, as for :func:`qviz.hooks`.
    batch_size
        Inputs per forward pass.
    on_batch
        Called with each prepared batch before it runs (e.g. to note its padding mask).
    nonfinite
        ``"raise"`` or ``"warn"`` on NaN/Inf inputs (see :meth:`QvizModel.batches`).
    prepared
        ``data`` is an iterable of prepared batches; they run as they are.
    progress, desc
        A ``tqdm.auto`` progress bar over batches, with this label.

    Returns
    -------
    HookRecorder
        The hooked layer names and how often each ran.

    Examples
    --------
    >>> import torch, qviz
    >>> from torch import nn
    >>> model = qviz.load(nn.Sequential(nn.Linear(2, 2)))
    >>> run_hooked(model, torch.randn(5, 2), None, batch_size=2).calls
    {'0': 3}
    """
    batches = data if prepared else model.batches(data, batch_size, nonfinite=nonfinite)
    total = None if prepared else n_batches(data, batch_size)
    with torch.no_grad(), hooks(model, fn, layers=layers, include_norms=include_norms) as rec:
        for inputs in _progress(batches, progress, total, desc):
            if on_batch is not None:
                on_batch(inputs)
            model.run(inputs)
    return rec


class _Mask:
    """The padding mask of the batch now running, for hooks that drop padding tokens."""

    def __init__(self, model: QvizModel) -> None:
        self.model = model
        self.value: torch.Tensor | None = None  # [batch, tokens] bool, or None

    def __call__(self, inputs: Any) -> None:
        self.value = self.model.token_mask(inputs)


# --------------------------------------------------------------------------- layer input -> rows


def _token_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``[..., channels]`` -> ``[rows, channels]``, padding tokens dropped where ``mask`` ``[batch, tokens]`` fits."""
    if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask]  # [real tokens, channels]
    return x.reshape(-1, x.shape[-1])


def channel_rows(x: torch.Tensor, channels_first: bool, mask: torch.Tensor | None = None) -> torch.Tensor:
    """An activation as ``[rows, channels]`` with its channels last, padding tokens dropped.

    ``channels_first`` (convolutions, BatchNorm, GroupNorm) moves dim 1 last, so each
    pixel or time step is a row.

    Examples
    --------
    >>> channel_rows(torch.zeros(2, 3, 4, 5), channels_first=True).shape
    torch.Size([40, 3])
    """
    if channels_first and x.dim() >= 2:
        return x.movedim(1, -1).reshape(-1, x.shape[1])  # [batch, channels, *spatial] -> [batch * spatial, channels]
    return _token_rows(x, mask)


def _unfold(conv: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``[batch * positions, in * kernel]`` patches of a convolution's input ``[batch, in, *spatial]``."""
    if isinstance(conv, nn.Conv1d):
        x4 = x.unsqueeze(-1)  # [batch, in, length, 1]
        cols = nn.functional.unfold(x4, (conv.kernel_size[0], 1), dilation=(conv.dilation[0], 1),
                                    padding=(conv.padding[0], 0), stride=(conv.stride[0], 1))
    else:
        cols = nn.functional.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding,
                                    stride=conv.stride)  # [batch, in*kh*kw, positions]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def conv_patches(conv: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``[batch * positions, in * kernel]`` input patches of an ungrouped convolution (what its weight matrix multiplies).

    Examples
    --------
    >>> conv_patches(nn.Conv2d(3, 8, 2), torch.zeros(1, 3, 4, 4)).shape
    torch.Size([9, 12])
    """
    if conv.groups != 1:
        raise TypeError(f"Grouped convolutions (groups={conv.groups}) are not supported; use groups=1 layers.")
    return _unfold(conv, x)


def weight_rows(module: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A layer's raw input as the rows its ``[out, in]`` weight multiplies: ``[rows, in]``.

    Linear inputs are already rows (padding tokens dropped where ``mask`` fits); a
    convolution's input images are unfolded into patches (a Conv2d input that is
    not 4-D is taken as patches already).

    Examples
    --------
    >>> weight_rows(nn.Linear(3, 2), torch.zeros(2, 5, 3)).shape
    torch.Size([10, 3])
    """
    if isinstance(module, nn.Conv2d):
        return _unfold(module, x) if x.dim() == 4 else x
    if isinstance(module, nn.Conv1d):
        return _unfold(module, x)
    return _token_rows(x, mask)


def as_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:func:`weight_rows` of an input :func:`capture_inputs` kept (padding already gone)."""
    return weight_rows(module, x)


# --------------------------------------------------------------------------- what the engine captures


class _Reservoir:
    """Keeps a uniform random sample of at most ``cap`` rows of a stream (smallest random keys win)."""

    def __init__(self, cap: int, seed: int) -> None:
        self.cap = cap
        self.gen = torch.Generator().manual_seed(seed)
        self.rows: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None

    def add(self, rows: torch.Tensor) -> None:  # rows [n, ...]
        keys = torch.rand(rows.shape[0], generator=self.gen)
        if self.rows is not None:
            rows = torch.cat([self.rows, rows])
            keys = torch.cat([self.keys, keys])
        if rows.shape[0] > self.cap:
            idx = torch.topk(keys, self.cap, largest=False).indices.sort().values
            rows, keys = rows[idx], keys[idx]
        self.rows, self.keys = rows, keys


def capture_inputs(
    model: QvizModel, calib: Any, names: Iterable[str], max_rows: int = MAX_ROWS, batch_size: int = CAPTURE_BATCH
) -> dict[str, torch.Tensor]:
    """Run ``calib`` through ``model`` and keep each named layer's input (float32, on CPU).

    Linear inputs are kept as rows ``[tokens, in]`` with padding tokens
    removed (``model.token_mask``); convolution inputs are kept as whole images
    ``[images, channels, ...]`` (:func:`weight_rows` unfolds them). At most
    ``max_rows`` tokens (or pixel positions) per layer are kept, a uniform
    random sample (seed 0) when there are more.

    Examples
    --------
    >>> import qviz
    >>> model = qviz.load(nn.Sequential(nn.Conv2d(1, 2, 3)))
    >>> capture_inputs(model, torch.randn(4, 1, 5, 5), ["0"])["0"].shape
    torch.Size([4, 1, 5, 5])
    """
    names = list(names)
    if not names:
        return {}
    store = {n: _Reservoir(max_rows, seed=i) for i, n in enumerate(names)}
    image_budget = dict.fromkeys(names, max_rows)
    mask = _Mask(model)

    def keep(name: str, mod: nn.Module, inputs: tuple, output: Any) -> None:
        x = inputs[0].detach()
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            positions = int(np.prod(output.shape[2:])) or 1
            if image_budget[name] <= 0:
                return
            take = max(1, min(x.shape[0], -(-image_budget[name] // positions)))
            image_budget[name] -= take * positions
            store[name].add(x[:take].float().cpu())  # [images, channels, ...]
            return
        store[name].add(_token_rows(x, mask.value).float().cpu())  # [real tokens, in]

    run_hooked(model, calib, keep, layers=names, include_norms=False, batch_size=batch_size, on_batch=mask)
    out = {}
    for n in names:
        rows = store[n].rows
        if rows is None:
            raise RuntimeError(
                f"Layer {n!r} never ran on the calibration batch, so it has no inputs. "
                "Is it used in the model's forward pass? Leave it out with skip=[...]."
            )
        out[n] = rows
    return out


def input_absmax(model: QvizModel, calib: Any, names: Sequence[str], *, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Streaming per-input-channel ``max |X_j|`` ``[in]`` of each named layer over the calibration set.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(2, 2))
    >>> input_absmax(QvizModel(net, "net", "module"), torch.tensor([[1.0, -3.0], [-2.0, 0.5]]), ["0"])["0"].tolist()
    [2.0, 3.0]
    """
    names = list(names)
    out: dict[str, torch.Tensor] = {}
    mask = _Mask(model)

    def fold(name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
        x = weight_rows(module, inputs[0].detach(), mask.value).float()  # [tokens, in]
        if x.shape[0] == 0:
            return
        amax = x.abs().amax(0)  # stays on the layer's device: no host sync per layer
        out[name] = amax if name not in out else torch.maximum(out[name], amax)

    run_hooked(model, calib, fold, layers=names, include_norms=False, batch_size=batch_size, on_batch=mask)
    missing = [n for n in names if n not in out]
    if missing:
        raise ValueError(
            f"The calibration data never reached layer(s) {missing[:5]}; they saw no input. Check that the "
            "calibration batch is not empty and that these layers are used in the forward pass."
        )
    return out


def capture_outputs(model: QvizModel, inputs: Any, names: Sequence[str],
                    mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Each named layer's output on one prepared batch, per example: ``[batch, features]`` (float32).

    Padding tokens are zeroed (``mask`` ``[batch, tokens]``, by default ``model.token_mask(inputs)``);
    outputs without the batch dim (e.g. position embeddings shared by the batch) are left out.

    Examples
    --------
    >>> import qviz
    >>> model = qviz.load(nn.Sequential(nn.Linear(3, 4)))
    >>> capture_outputs(model, torch.zeros(2, 3), ["0"])["0"].shape
    torch.Size([2, 4])
    """
    mask = model.token_mask(inputs) if mask is None else mask
    batch = _batch_len(inputs)
    out: dict[str, torch.Tensor] = {}

    def grab(name: str, module: nn.Module, args: tuple, output: Any) -> None:
        t = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] != batch:
            return  # not per example
        t = t.detach().float()
        if mask is not None and t.dim() == 3 and t.shape[:2] == mask.shape:
            t = t * mask.unsqueeze(-1).to(t.dtype)  # [batch, tokens, channels], padding zeroed
        out[name] = t.flatten(1)  # [batch, features]

    run_hooked(model, [inputs], grab, layers=list(names), prepared=True)
    return out


def _batch_len(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0])
    return int(next(iter(inputs.values())).shape[0])


# --------------------------------------------------------------------------- calibration data


def reusable(calib: Any) -> Any:
    """``calib`` itself, or a list of its batches when it is a one-shot iterator (a generator).

    The drivers read the calibration data more than once (one pass per config,
    per layer for GPTQ); a generator would be empty from the second pass on.

    Examples
    --------
    >>> reusable(x for x in [1, 2])
    [1, 2]
    """
    if isinstance(calib, Iterator) and not isinstance(calib, (torch.Tensor, np.ndarray)):
        return list(calib)
    return calib


def as_float32(model: QvizModel) -> QvizModel:
    """``model`` itself when it computes in float32 (or float64), else a float32 copy of it.

    Measurements (layer errors, the explorers) run in float32: half-precision
    weights are exact in float32, so the error measured is that of quantizing
    the model's own weights, and captured inputs (kept as float32) match the layers.
    """
    if model.dtype in (torch.float32, torch.float64):
        return model
    return model.with_module(copy.deepcopy(model.module).float())


def check_calib(calib: Any, who: str) -> None:
    """Raise a clear error when calibration data is missing or empty.

    Examples
    --------
    >>> check_calib([], "layer_error")
    Traceback (most recent call last):
    ...
    ValueError: layer_error got an empty calibration batch. Pass at least one input, e.g. qviz.calibration_data(model, n=64).
    """
    if calib is None:
        raise ValueError(
            f"{who} needs calibration inputs (calib=...). Pass e.g. calib=qviz.calibration_data(model, n=64)."
        )
    if isinstance(calib, (list, tuple)) and len(calib) == 0:
        raise ValueError(f"{who} got an empty calibration batch. Pass at least one input, e.g. qviz.calibration_data(model, n=64).")
    if isinstance(calib, (torch.Tensor, np.ndarray)) and (calib.ndim == 0 or len(calib) == 0):
        raise ValueError(f"{who} got an empty calibration batch (shape {tuple(calib.shape)}). Pass at least one input.")
