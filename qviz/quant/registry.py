"""One verb, one config, one registry.

Each quantization method is a :class:`Method` registered for its config type
with :func:`register`. :func:`qviz.quantize`, :func:`qviz.layer_error`,
:func:`qviz.sensitivity` and :func:`qviz.compare` look the method up with
:func:`method_for` and drive it; they never switch on method names.

A method quantizes one layer at a time (:meth:`Method.quantize_layer`), may
transform the model copy before (:meth:`Method.prepare`, e.g. SmoothQuant's
folding of smoothing scales into the preceding norm) and after
(:meth:`Method.finalize`, e.g. QAT's fine-tune), and says whether it needs the
layer's calibration inputs and whether those must come from the
already-quantized earlier layers (``sequential``, as GPTQ's reference does).

Examples
--------
>>> from qviz.quant.config import RTN
>>> method_for(RTN()).needs_inputs
False
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from qviz.quant.config import QuantConfig


@dataclass
class LayerQuant:
    """What quantizing one layer produced.

    Attributes
    ----------
    module : nn.Module
        The replacement module; same call signature and output as the original.
    weight_hat : torch.Tensor
        ``[out, in]`` float weight the replacement effectively applies, expressed
        in the ORIGINAL input basis (for SmoothQuant/AWQ the scales are undone),
        so ``weight_mse`` and ``output_rel_err`` compare like with like.
    nbytes : int
        True storage bytes of the layer's weight: codes, scales, zero points,
        absmax tables, outlier columns. Bias and other full-precision
        parameters are counted separately by the caller.
    kernel : str
        What runs in the forward: e.g. ``"simulated (fake-quant)"``,
        ``"real kernel: bitsandbytes Linear8bitLt"``.
    info : dict
        Method-specific per-layer numbers (``gptq_loss``, ``awq_alpha``, ...).
    """

    module: nn.Module
    weight_hat: torch.Tensor
    nbytes: int
    kernel: str = "simulated (fake-quant)"
    info: dict[str, float] = field(default_factory=dict)
    #: label of the config that made the layer when it is not the one given (a PerLayer's sub-config)
    config_label: str = ""

    @property
    def n_weights(self) -> int:
        return int(self.weight_hat.numel())

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / max(self.n_weights, 1)


class Method:
    """Base class of a registered quantization method. Subclasses override what they need.

    Besides the hooks below, a method may define these optional ones, which the
    drivers look up by name (a method without them gets the stated default):

    ``quantize_tensor(w, cfg) -> (codes, scale, zero, nbytes, dequantize)``
        Data-free quantization of one weight ``[out, in]``, used by
        :func:`qviz.quantize_tensor` and :func:`qviz.fake_quantize`. Without it
        those functions refuse the config (it needs calibration data).
    ``weight_only(cfg) -> bool``
        True when the replacement applies only a quantized weight, so
        :func:`qviz.layer_error` may compute the output error as ``X (Ŵ − W)ᵀ``.
        Default: True unless ``layer_output`` is defined.
    ``layer_output(lq, x) -> y``
        The replacement layer's output without bias for inputs ``x`` in the
        ORIGINAL input basis (activation quantization, outlier decomposition,
        SmoothQuant's folded scales); used by :func:`qviz.layer_error`.
    ``pack(module, cfg) -> nn.Module | None``
        A packed-storage replacement (real low-bit GEMV) for ``quantize(..., packed=True)``.
    ``refuse(name, shape, cfg) -> str | None``
        Why the method leaves this layer in full precision (e.g. a row that GGUF's
        blocks do not divide); :func:`qviz.quantize` records it as skipped. Default: never.
    ``storage_nbytes(shape, cfg) -> int``
        The bytes ``quantize_tensor`` would store for a weight of ``shape`` ``(out, in)``,
        from the shape alone; lets the live widgets skip building the codes when only
        the error and the size are shown. Must equal ``quantize_tensor(...)[3]`` (tested).
    """

    config_type: type[QuantConfig] = QuantConfig
    #: quantize_layer wants the layer's calibration inputs ``[tokens, in]``
    needs_inputs: bool = False
    #: inputs come from the model with earlier layers already quantized
    sequential: bool = False
    #: ``finalize`` changes the quantized layers (QAT's fine-tune): per-layer numbers are taken after it
    finalize_changes_layers: bool = False
    #: layer types (qviz.models.layer_type) this method can quantize
    layer_types: tuple[str, ...] = ("linear", "conv1d", "conv2d")

    def prepare(self, model: Any, cfg: QuantConfig, calib: Any, layers: dict[str, nn.Module]) -> Any:
        """Model-level work on the COPY before layers are quantized; returns state for later steps."""
        return None

    def quantize_layer(
        self, name: str, module: nn.Module, cfg: QuantConfig, inputs: torch.Tensor | None, state: Any
    ) -> LayerQuant:
        """Quantize one layer (never in place: return a new module)."""
        raise NotImplementedError

    def finalize(self, model: Any, cfg: QuantConfig, calib: Any, state: Any) -> dict[str, Any]:
        """Model-level work after every layer is replaced (e.g. a QAT fine-tune); returns extra info."""
        return {}


_REGISTRY: dict[type[QuantConfig], Method] = {}


def register(config_type: type[QuantConfig]) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a :class:`Method` subclass as the handler of ``config_type``.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Mine(QuantConfig):
    ...     label = "mine"
    >>> @register(Mine)
    ... class MineMethod(Method):
    ...     pass
    >>> type(method_for(Mine())).__name__
    'MineMethod'
    """
    if not (isinstance(config_type, type) and issubclass(config_type, QuantConfig)):
        raise TypeError(f"register() takes a QuantConfig subclass; got {config_type!r}.")

    def decorator(cls: type[Method]) -> type[Method]:
        instance = cls()
        instance.config_type = config_type
        _REGISTRY[config_type] = instance
        return cls

    return decorator


def _load_builtin_methods() -> None:
    # Importing these modules runs their @register decorators.
    import importlib

    for mod in ("qviz.quant.rtn", "qviz.quant.bnb", "qviz.quant.gguf", "qviz.quant.per_layer", "qviz.methods",
                "qviz.quant.fp", "qviz.quant.hqq", "qviz.quant.rotate"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name != mod:  # a real missing dependency, not a not-yet-built module
                raise


def known_config_types() -> list[type[QuantConfig]]:
    """Every config type that has a registered method."""
    _load_builtin_methods()
    return list(_REGISTRY)


def method_for(cfg: Any) -> Method:
    """The registered :class:`Method` for a config instance.

    Raises ``TypeError`` listing the known config types for anything else.
    """
    _load_builtin_methods()
    method = _REGISTRY.get(type(cfg))
    if method is None:
        known = ", ".join(sorted(t.__name__ for t in _REGISTRY)) or "none registered"
        hint = " Pass an instance, e.g. qviz.RTN(bits=4), not the class." if isinstance(cfg, type) else ""
        raise TypeError(
            f"No quantization method is registered for {type(cfg).__name__} ({cfg!r}). "
            f"Known configs: {known}.{hint}"
        )
    return method
