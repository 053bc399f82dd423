"""The quantization driver: one tensor (:func:`fake_quantize`, :func:`quantize_tensor`) or a whole model (:func:`quantize`).

:func:`quantize` never touches the model it is given: it deep-copies it,
selects the layers, checks every one of them before changing anything, runs
the registered method (``prepare`` -> ``quantize_layer`` per layer ->
``finalize``) on the copy and returns the copy with a
:class:`QuantizationRecord` at ``qmodel.quantization``: the config, what each
layer became (bytes, bits per weight, kernel), every layer left in full
precision and why, and the total bytes of the model.

Examples
--------
>>> import torch, qviz
>>> from torch import nn
>>> net = nn.Sequential(nn.Embedding(10, 32), nn.Linear(32, 32))
>>> q = qviz.quantize(net, qviz.RTN(bits=4, group_size=32), progress=False)
>>> list(q.quantization.layers), q.quantization.skipped
(['1'], {'0': 'embedding layers are not quantized (lookup tables; pass them to quantize_tensor to study them)'})
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from qviz.activations.engine import MAX_ROWS, as_float32, as_rows, capture_inputs, check_calib, reusable  # noqa: F401 - as_float32 etc. also read from here by notebook 03 and the widgets
from qviz._filters import LayerSpec, layer_predicate
from qviz.models import QvizModel, as_module, layer_type, load, quantizable_layers, weight_matrix
from qviz.quant.config import QuantConfig
from qviz.quant.primitives import check_tensor, count_nonfinite
from qviz.quant.method import Fused
from qviz.quant.registry import Method, method_for, replacement_types


# --------------------------------------------------------------------------- one tensor


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A tensor in a quantized format, with every stored byte counted.

    Attributes
    ----------
    codes : torch.Tensor or np.ndarray
        The codes as one small integer per weight, ``[rows, cols]``: uint8 RTN
        codes, uint8 NF4/FP4 code indices (0..15), or int8 LLM.int8 codes.
        (Stored packed: :attr:`nbytes` counts the packed size.)
    scale : torch.Tensor or np.ndarray
        float32 scales: RTN ``[rows, n_groups]``; NF4/FP4 per-block absmax
        ``[n_blocks]``; LLM.int8 per-row ``absmax / 127`` ``[rows]``.
    zero : torch.Tensor, np.ndarray or None
        uint8 RTN zero points (like ``scale``); None for the bitsandbytes formats.
    config : QuantConfig
    shape : tuple of int
        Shape of the original tensor; ``rows = shape[0]``, ``cols`` = the rest.
    nbytes : int
        Stored bytes: packed codes, scales, zero points, absmax and code tables.
    """

    codes: Any
    scale: Any
    zero: Any
    config: QuantConfig
    shape: tuple[int, ...]
    nbytes: int
    _dequant: Callable[[], Any] = field(repr=False)
    _like: Any = field(repr=False)

    @property
    def numel(self) -> int:
        """Number of weights."""
        return int(np.prod(self.shape))

    @property
    def bits_per_weight(self) -> float:
        """``8 * nbytes / numel``: the true storage rate, overhead included."""
        return 8.0 * self.nbytes / max(self.numel, 1)

    def dequantize(self) -> Any:
        """The dequantized tensor: same type (torch/numpy), shape, dtype and device as the input."""
        return _restore(self._dequant(), self._like)


def _as_2d(weight: Any, name: str = "weight", *, check_finite: bool = True) -> tuple[torch.Tensor, Any]:
    """Check ``weight`` and return ``(float32 torch [rows, cols] on its device, like-info)``.

    ``check_finite=False`` leaves the NaN/Inf check to a GPU kernel that makes it in its own pass.
    """
    if isinstance(weight, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(weight)) if weight.dtype != object else None
    elif isinstance(weight, torch.Tensor):
        t = weight.detach()
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray of floats; got {type(weight).__name__}. "
            "For a layer pass layer.weight."
        )
    if t is None:
        raise TypeError(f"{name} has dtype object; expected floats.")
    if t.device.type == "meta":
        raise ValueError(
            f"{name} is a meta tensor (a shape without data, {tuple(t.shape)}); there is nothing to quantize. "
            "Pass a tensor with real values (load the weights first)."
        )
    if t.ndim == 0:
        raise ValueError(f"{name} is a scalar (shape ()); expected a vector or a weight matrix.")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); expected at least one value to quantize.")
    like = (isinstance(weight, np.ndarray), tuple(t.shape), weight.dtype, getattr(weight, "device", None))
    t2 = t.reshape(1, -1) if t.ndim == 1 else t.reshape(t.shape[0], -1)  # [rows, cols]
    if check_finite:
        check_tensor(t2, name)  # type, emptiness, NaN/Inf with the count
    elif not t2.is_floating_point():
        check_tensor(t2, name)  # the clear dtype error (the tensor is not floating, so no NaN pass runs)
    return t2.float(), like


def _restore(x2d: torch.Tensor, like: Any) -> Any:
    is_numpy, shape, dtype, device = like
    x = x2d.reshape(shape)
    if is_numpy:
        return x.cpu().numpy().astype(dtype, copy=False)
    return x.to(device=device, dtype=dtype)


def quantize_tensor(weight: Any, cfg: QuantConfig) -> QuantizedTensor:
    """Quantize one tensor (torch or numpy) to the format of ``cfg``.

    Rows are ``weight.shape[0]`` (output channels); the other dims fold into
    the row (a conv kernel ``[out, in, kh, kw]`` becomes ``[out, in*kh*kw]``; a
    vector is one row). The input is not modified.

    Parameters
    ----------
    weight : torch.Tensor or np.ndarray
        Floating, finite, non-empty.
    cfg : QuantConfig
        A data-free config: ``RTN``, ``BnbInt8``, ``BnbNF4``, ``BnbFP4``.

    Returns
    -------
    QuantizedTensor
        ``.codes .scale .zero .dequantize() .nbytes .bits_per_weight``.

    Examples
    --------
    >>> import torch, qviz
    >>> qt = qviz.quantize_tensor(torch.randn(16, 256), qviz.RTN(bits=4, group_size=128))
    >>> qt.codes.shape, qt.scale.shape, qt.bits_per_weight
    (torch.Size([16, 256]), torch.Size([16, 2]), 4.1875)
    """
    method = method_for(cfg)
    w, like = _as_2d(weight)
    codes, scale, zero, nbytes, dequant = method.quantize_tensor(w, cfg)
    warn_if_zeroed("the tensor", w, dequant(), cfg)
    if like[0]:  # numpy in, numpy out
        codes, scale = codes.cpu().numpy(), scale.cpu().numpy()
        zero = None if zero is None else zero.cpu().numpy()
    return QuantizedTensor(codes, scale, zero, cfg, like[1], int(nbytes), dequant, like)


def fake_quantize(weight: Any, cfg: QuantConfig) -> Any:
    """Quantize and dequantize one tensor: same type, shape, dtype and device out as in.

    RTN runs the fused one-pass Numba kernel; NF4/FP4 without double
    quantization run the Numba kernel that reproduces bitsandbytes' arithmetic
    (equal results, tested); on CUDA both run their Triton twins
    (:mod:`qviz.gpu.fakequant`, bit-identical, one read and one write of the
    weights); LLM.int8 and double-quantized NF4/FP4 run bitsandbytes itself.
    The input is not modified.

    Parameters
    ----------
    weight : torch.Tensor or np.ndarray
        Floating, finite, non-empty; rows are ``shape[0]``.
    cfg : QuantConfig
        ``RTN``, ``BnbInt8``, ``BnbNF4`` or ``BnbFP4``.

    Examples
    --------
    >>> import numpy as np, qviz
    >>> w = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    >>> w_hat = qviz.fake_quantize(w, qviz.RTN(bits=8, group_size=None))
    >>> w_hat.dtype, bool(np.abs(w_hat - w).max() < 0.02)
    (dtype('float32'), True)
    """
    from qviz.gpu import available  # lazy: the GPU backend loads Triton

    method = method_for(cfg)
    on_gpu = available(weight)  # the fused Triton kernels check NaN/Inf in their own single pass
    w, like = _as_2d(weight, check_finite=not on_gpu)
    w_hat = method.fake_quantize(w, cfg, check_finite=not on_gpu)  # the method's fused pass, if it has one
    if w_hat is None:
        return quantize_tensor(weight, cfg).dequantize()
    if isinstance(w_hat, Fused):  # a GPU pass that also told whether everything became zero
        w_hat, zeroed = w_hat
        if zeroed is not False:
            warn_if_zeroed("the tensor", w, w_hat, cfg)  # None: it could not tell; True: the message needs |w|
        return _restore(w_hat, like)
    warn_if_zeroed("the tensor", w, w_hat, cfg)
    return _restore(w_hat, like)


class QuantizedToZeroWarning(UserWarning):
    """Every nonzero weight of a tensor or layer quantized to zero (weights below the format's smallest step)."""


def zeroed_reason(w: torch.Tensor, w_hat: torch.Tensor, cfg: QuantConfig) -> str | None:
    """Why ``w_hat`` is useless when ``w`` has nonzero weights and every one of them became zero, else None."""
    if not bool(w.any()) or bool(torch.as_tensor(w_hat).any()):
        return None
    amax = float(w.abs().max())
    return (
        f"every nonzero weight (largest |w| = {amax:.3g}) quantizes to zero with {cfg.label}: the weights are "
        "below the smallest step its scales can hold"
    )


def warn_if_zeroed(what: str, w: torch.Tensor, w_hat: Any, cfg: QuantConfig) -> None:
    """Warn (:class:`QuantizedToZeroWarning`) when quantizing ``w`` turned all of it into zeros."""
    import warnings

    reason = zeroed_reason(w, torch.as_tensor(w_hat), cfg)
    if reason:
        warnings.warn(
            f"In {what}, {reason}. Rescale the weights (e.g. multiply by 2**k and divide the next layer) "
            "before quantizing, or keep them in full precision.",
            QuantizedToZeroWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------- records


@dataclass
class LayerRecord:
    """What one layer became: config label, bytes, bits per weight, what runs, method numbers."""

    config: str
    nbytes: int
    n_weights: int
    kernel: str
    info: dict[str, float] = field(default_factory=dict)

    @property
    def bits_per_weight(self) -> float:
        """``8 * nbytes / n_weights``."""
        return 8.0 * self.nbytes / max(self.n_weights, 1)


@dataclass
class QuantizationRecord:
    """What :func:`quantize` did, attached to the result as ``qmodel.quantization``.

    Attributes
    ----------
    config : QuantConfig or dict
        The config, or the per-layer mapping that was given.
    layers : dict
        Layer name -> :class:`LayerRecord`, in module order.
    skipped : dict
        Layer name -> why it was left in full precision.
    total_bytes : int
        Bytes of the whole quantized model: the quantized weights as stored
        plus every other parameter and buffer at its own dtype.
    original_bytes : int
        Bytes of the input model's parameters and buffers.
    extra : dict
        What the methods' ``finalize`` returned, by config label; with a sequential method
        (GPTQ), also ``"sequential"``: how its layers' inputs were computed, block by block or
        layer by layer, with the passes made (:meth:`~qviz.quant._blockwise.SequentialInputs.summary`).
    """

    config: Any
    layers: dict[str, LayerRecord]
    skipped: dict[str, str]
    total_bytes: int
    original_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def quantized_bytes(self) -> int:
        """Bytes of the quantized weights alone."""
        return sum(r.nbytes for r in self.layers.values())

    @property
    def bits_per_weight(self) -> float:
        """Bits per weight over the quantized layers (overhead included)."""
        n = sum(r.n_weights for r in self.layers.values())
        return 8.0 * self.quantized_bytes / max(n, 1)

    @property
    def compression(self) -> float:
        """``original_bytes / total_bytes`` for the whole model."""
        return self.original_bytes / max(self.total_bytes, 1)

    def summary(self) -> str:
        """A few readable lines: totals, then each skipped layer with its reason."""
        lines = [
            f"{len(self.layers)} layers quantized, {len(self.skipped)} left in full precision; "
            f"{self.bits_per_weight:.3f} bits/weight on quantized layers; model "
            f"{self.original_bytes / 1e6:.2f} MB -> {self.total_bytes / 1e6:.2f} MB ({self.compression:.2f}x)"
        ]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


# --------------------------------------------------------------------------- selection


@dataclass
class Plan:
    """Which layer gets which config, and which are skipped (with reasons). Built before any change."""

    assign: dict[str, QuantConfig]
    skipped: dict[str, str]


def _config_map(cfg: Any, names: list[str]) -> Callable[[str], tuple[QuantConfig | None, str | None]]:
    """Normalise ``cfg`` (one config, or a mapping name/glob -> config or None) into a lookup."""
    if isinstance(cfg, Mapping):
        if not cfg:
            raise ValueError("The config mapping is empty. Map layer names or globs to configs, e.g. {'*': qviz.RTN()}.")
        entries = []
        for key, value in cfg.items():
            if value is not None:
                method_for(value)  # TypeError listing the known configs
            entries.append((layer_predicate(key, names), value, key))

        def lookup(name: str) -> tuple[QuantConfig | None, str | None]:
            for pred, value, key in entries:
                if pred(name, None):
                    if value is None:
                        return None, f"kept in full precision by the config mapping ({key!r}: None)"
                    return value, None
            return None, "not named in the config mapping"

        return lookup
    method_for(cfg)  # TypeError listing the known configs

    def single(name: str) -> tuple[QuantConfig | None, str | None]:
        return cfg, None

    return single


def plan(model: QvizModel | nn.Module, cfg: Any, layers: LayerSpec = None, skip: LayerSpec = None) -> Plan:
    """Decide, before changing anything, which layers each config quantizes and which are skipped and why.

    Raises ``ValueError`` for NaN/Inf weights (naming the layer and the count)
    and for a group size that does not divide a selected layer's row (naming the
    layer and valid sizes).

    Examples
    --------
    >>> from torch import nn
    >>> import qviz
    >>> p = plan(nn.Sequential(nn.Linear(8, 8), nn.Conv2d(1, 2, 3)), qviz.BnbInt8())
    >>> list(p.assign), p.skipped
    (['0'], {'1': 'BnbInt8 quantizes only linear layers; this is a conv2d layer'})
    """
    check_not_quantized(model, "qviz.quantize and qviz.layer_error")
    from qviz.models import check_materialized

    check_materialized(model, "quantizing it")
    candidates = quantizable_layers(model)
    if not candidates:
        raise ValueError(
            f"{type(as_module(model)).__name__} has no quantizable layer (Linear, Conv1d/2d, GPT-2 Conv1D). "
            "qviz quantizes networks built from these layers."
        )
    names = list(candidates)
    keep = layer_predicate(layers, names)
    drop = layer_predicate(skip, names) if skip is not None else (lambda n, m: False)
    lookup = _config_map(cfg, names)
    assign: dict[str, QuantConfig] = {}
    skipped: dict[str, str] = {}
    for name, module in candidates.items():
        if not keep(name, module):
            continue
        if drop(name, module):
            skipped[name] = "excluded by skip="
            continue
        kind = layer_type(module)
        if kind == "embedding":
            skipped[name] = "embedding layers are not quantized (lookup tables; pass them to quantize_tensor to study them)"
            continue
        c, reason = lookup(name)
        if c is None:
            skipped[name] = reason or "no config"
            continue
        method = method_for(c)
        if kind not in method.layer_types:
            skipped[name] = f"{type(c).__name__} quantizes only {', '.join(method.layer_types)} layers; this is a {kind} layer"
            continue
        groups = getattr(module, "groups", 1)
        if method.needs_inputs and isinstance(groups, int) and groups != 1:
            skipped[name] = (
                f"a grouped convolution (groups={groups}): {type(c).__name__} pairs each weight column with one "
                "input feature, which a grouped or depthwise convolution does not give; left in full precision"
            )
            continue
        refusal = method.refuse(name, tuple(weight_matrix(module).shape), c)
        if refusal:
            skipped[name] = refusal
            continue
        _check_layer(name, module, c)
        assign[name] = c
    if not assign:
        why = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:5])
        raise ValueError(f"No layer is left to quantize ({why}). Check layers=, skip= and the config.")
    return Plan(assign, skipped)


_QUANTIZED_MODULE_PREFIXES = ("bitsandbytes.", "torch.ao.nn.quantized", "torch.nn.quantized")


def quantized_layer_names(model: QvizModel | nn.Module) -> dict[str, str]:
    """Layer name -> what it is, for every layer that is already quantized (a qviz replacement,
    a bitsandbytes or torch quantized module, or a layer whose weight is not floating point)."""
    modules = dict(as_module(model).named_modules())
    record = getattr(model, "quantization", None)
    if record is not None and getattr(record, "layers", None):
        return {n: f"a {type(modules[n]).__name__ if n in modules else 'layer'} quantized by qviz.quantize ({r.config})"
                for n, r in record.layers.items()}
    classes = replacement_types()
    out = {}
    for name, sub in modules.items():
        w = getattr(sub, "weight", None)
        if isinstance(sub, classes) or type(sub).__module__.startswith(_QUANTIZED_MODULE_PREFIXES):
            out[name] = f"a {type(sub).__name__}"
        elif isinstance(w, torch.Tensor) and not w.is_floating_point() and not isinstance(sub, nn.Embedding):
            out[name] = f"a {type(sub).__name__} with {str(w.dtype).replace('torch.', '')} weights"
    return out


def check_not_quantized(model: QvizModel | nn.Module, who: str) -> None:
    """Refuse an already-quantized model: its layers hold codes (or fake-quant weights), not the originals.

    Examples
    --------
    >>> import qviz
    >>> from torch import nn
    >>> q = qviz.quantize(nn.Sequential(nn.Linear(8, 8)), qviz.RTN(bits=4, group_size=None), progress=False)
    >>> check_not_quantized(q, "qviz.quantize")
    Traceback (most recent call last):
    ...
    ValueError: This model is already quantized (layer '0' is a FakeQuantLinear quantized by qviz.quantize (RTN w4 ch asym); ...
    """
    found = quantized_layer_names(model)
    if found:
        name, what = next(iter(found.items()))
        raise ValueError(
            f"This model is already quantized (layer {name!r} is {what}; {len(found)} such layer(s)). {who} work on "
            "the full-precision model: quantizing again or measuring against codes would give meaningless numbers. "
            "Pass the original model (keep a reference to what you gave qviz.quantize); qviz.capture and "
            "qviz.compare analyse quantized models as they are."
        )


def _replacement_problem(name: str, original: nn.Module, new: nn.Module, root: nn.Module, method: Method,
                         cfg: QuantConfig) -> str | None:
    """Why the replacement ``new`` of layer ``name`` cannot stand in for ``original`` in ``root``, or None."""
    parent_name = name.rpartition(".")[0]
    parent = root.get_submodule(parent_name) if parent_name else None
    if isinstance(parent, nn.MultiheadAttention):
        w = getattr(new, "weight", None)
        fits = isinstance(w, torch.Tensor) and w.is_floating_point() and w.shape == original.weight.shape
        if not (fits and method.weight_only(cfg)):
            return (
                f"it is the out_proj of an nn.MultiheadAttention, which reads out_proj.weight directly and never "
                f"calls the layer, so {cfg.label}'s {type(new).__name__} would break it or be bypassed; "
                "left in full precision"
            )
    if layer_type(original) != "linear":
        return None
    w = weight_matrix(original)  # [out, in]
    probe = copy.deepcopy(new)  # a smoke test on a copy: the returned module is left exactly as built
    x = torch.zeros(2, w.shape[1], dtype=original.weight.dtype, device=original.weight.device)  # [2, in]
    try:
        with torch.no_grad():
            y = probe(x)
    except Exception as err:  # noqa: BLE001 - any failure means the layer cannot be replaced
        first = str(err).splitlines()[0] if str(err) else ""
        return f"the {type(new).__name__} replacement cannot run on this layer ({type(err).__name__}: {first}); left in full precision"
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != (2, w.shape[0]):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        return f"the {type(new).__name__} replacement returns {shape} instead of (2, {w.shape[0]}); left in full precision"
    return None


def _check_layer(name: str, module: nn.Module, cfg: QuantConfig) -> None:
    w = weight_matrix(module)  # [out, in]
    bad = count_nonfinite(w)
    if bad:
        raise ValueError(
            f"Layer {name!r} has {bad} NaN/Inf weight(s) out of {w.numel()}; quantizing it would spread them. "
            "Fix the weights (a diverged fine-tune?) or leave the layer out with skip=[...]."
        )
    group = getattr(cfg, "group_size", None)
    if isinstance(group, int) and not isinstance(group, bool) and w.shape[1] % group:
        cols = int(w.shape[1])
        valid = [g for g in (32, 64, 128, 256, 512) if cols % g == 0] or [d for d in range(1, cols + 1) if cols % d == 0][-4:]
        raise ValueError(
            f"group_size={group} does not divide the row length {cols} of layer {name!r} "
            f"({tuple(w.shape)[0]}x{cols}). Valid group sizes for it include {valid}; or use group_size=None "
            f"(one scale per output channel), or leave the layer out with skip=[{name!r}]."
        )


# --------------------------------------------------------------------------- the driver


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _model_bytes(module: nn.Module, exclude: set[str] = frozenset()) -> int:
    """Bytes of every tensor of ``module`` counted once; a tensor with any name in ``exclude`` is not counted.

    A tied tensor (one tensor under two names, as a head sharing the token
    embedding) is one tensor: left out whichever of its names ``exclude`` holds.
    """
    named = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    seen = {id(t) for name, t in named if name in exclude}
    total = 0
    for _, t in named:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _weight_names(module: nn.Module, prefix: str) -> set[str]:
    """Names of the tensors that hold a quantized layer's weight (counted by its LayerQuant instead)."""
    keep = {"bias"}
    return {f"{prefix}.{n}" for n, _ in [*module.named_parameters(), *module.named_buffers()] if n not in keep}


def quantize(
    model: QvizModel | nn.Module,
    cfg: QuantConfig | Mapping[str, QuantConfig | None],
    calib: Any = None,
    layers: LayerSpec = None,
    *,
    skip: LayerSpec = None,
    progress: bool = True,
    packed: bool = False,
    max_rows: int = MAX_ROWS,
) -> QvizModel:
    """Quantize a copy of ``model``; the model passed in is left bit-for-bit unchanged.

    Parameters
    ----------
    model : QvizModel or torch.nn.Module
    cfg : QuantConfig or dict
        One config for every selected layer, or a mapping from layer names or
        globs to configs (the first matching key wins; ``None`` keeps a layer
        in full precision) for mixed precision.
    calib : optional
        Calibration inputs (``qviz.calibration_data(model)``); required by
        methods that need activations (GPTQ, AWQ, SmoothQuant).
    layers : None, name, glob, list or callable
        Which quantizable layers to consider (default: all).
    skip : same forms as ``layers``
        Layers to leave in full precision (recorded as skipped).
    progress : bool
        Show a progress bar over layers.
    packed : bool
        Store weight-only RTN Linear layers as packed codes (:class:`~qviz.quant.modules.PackedLinear`)
        instead of fake-quant float weights.
    max_rows : int
        Calibration rows kept per layer for methods that need inputs.

    Returns
    -------
    QvizModel
        The quantized copy, with ``.quantization`` (:class:`QuantizationRecord`).

    Raises
    ------
    TypeError
        ``cfg`` is not a registered config (the message lists the known ones).
    ValueError
        NaN/Inf weights, a group size that does not divide a layer's row, a
        method that needs calibration inputs without ``calib``, unknown layer names.

    Examples
    --------
    >>> import qviz
    >>> model = qviz.load("digits-cnn")                                           # doctest: +SKIP
    >>> q = qviz.quantize(model, qviz.RTN(bits=4, group_size=None), progress=False)  # doctest: +SKIP
    >>> print(q.quantization.summary())                                           # doctest: +SKIP
    """
    qm = load(model) if not isinstance(model, QvizModel) else model
    p = plan(qm, cfg, layers, skip)
    calib = reusable(calib)
    from qviz._checks import check_bool

    check_bool("quantize", "progress", progress)
    check_bool("quantize", "packed", packed)
    methods = {name: method_for(c) for name, c in p.assign.items()}
    if any(m.needs_inputs for m in methods.values()):
        check_calib(calib, "quantize with " + ", ".join(sorted({type(c).__name__ for n, c in p.assign.items() if methods[n].needs_inputs})))
    if not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be a positive int; got {max_rows!r}.")

    original_bytes = _model_bytes(qm.module)
    from qviz.models import check_fits_in_memory

    check_fits_in_memory(original_bytes, f"Quantizing {qm.name!r} (a copy of its {original_bytes / 1e9:.2f} GB of weights)")
    out = qm.copy()
    root = out.module
    by_cfg: dict[QuantConfig, list[str]] = {}
    for name, c in p.assign.items():
        by_cfg.setdefault(c, []).append(name)
    states = {}
    for c, names in by_cfg.items():
        states[c] = method_for(c).prepare(out, c, calib, {n: root.get_submodule(n) for n in names})

    need_now = [n for n, m in methods.items() if m.needs_inputs and not m.sequential]
    captured = capture_inputs(out, calib, need_now, max_rows) if need_now else {}
    from qviz.quant._blockwise import SequentialInputs

    later = [n for n, m in methods.items() if m.needs_inputs and m.sequential]  # inputs after the earlier layers are replaced
    sequential_inputs = SequentialInputs(out, calib, list(p.assign), later, max_rows) if later else None

    records: dict[str, LayerRecord] = {}
    weight_tensors: set[str] = set()
    bar = _progress(list(p.assign), progress)
    for name in bar:
        c, method = p.assign[name], methods[name]
        module = root.get_submodule(name)
        x = None
        if method.needs_inputs:
            raw = captured.pop(name) if name in captured else sequential_inputs(name)
            x = as_rows(module, raw.to(_device_of(module)))  # [rows, in], on the layer's device
        lq = method.quantize_layer(name, module, c, x, states[c])
        new = lq.module
        if packed:
            new = method.pack(module, c) or new
        warn_if_zeroed(f"layer {name!r}", weight_matrix(module).float(), lq.weight_hat, c)
        problem = _replacement_problem(name, module, new, root, method, c)
        if problem:
            p.skipped[name] = problem
            continue
        kernel = getattr(new, "kernel", lq.kernel)
        _set_module(root, name, new)
        weight_tensors |= _weight_names(new, name)
        records[name] = LayerRecord(lq.config_label or c.label, int(lq.nbytes), lq.n_weights, str(kernel), dict(lq.info))
    extra = {}
    for c in by_cfg:
        extra[c.label] = method_for(c).finalize(out, c, calib, states[c])
    if sequential_inputs is not None:
        extra["sequential"] = sequential_inputs.summary()
    total = _model_bytes(root, weight_tensors) + sum(r.nbytes for r in records.values())
    out.quantization = QuantizationRecord(
        config=dict(cfg) if isinstance(cfg, Mapping) else cfg,
        layers=records,
        skipped=p.skipped,
        total_bytes=int(total),
        original_bytes=int(original_bytes),
        extra=extra,
    )
    out.name = f"{qm.name} [{_config_label(cfg)}]"
    return out


def _config_label(cfg: Any) -> str:
    if isinstance(cfg, Mapping):
        labels = sorted({c.label for c in cfg.values() if c is not None})
        return "mixed: " + ", ".join(labels)
    return cfg.label


def _progress(items: list[str], show: bool) -> Iterable[str]:
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="quantize", unit="layer", leave=False)
