"""What a quantization method declares, and the table methods register themselves in.

A method is a :class:`Method` subclass registered for its config type with
:func:`register`. Everything a driver, a size count, a widget or a report asks
about a method is declared here, on the method, so no caller switches on config
types or class names:

* how it runs: :meth:`Method.prepare`, :meth:`Method.quantize_layer`,
  :meth:`Method.finalize`, ``needs_inputs``, ``sequential``, ``layer_types``,
  :meth:`Method.refuse`;
* what it does to the model: :meth:`Method.changes_model` (``prepare`` changes
  the copy outside the quantized layers), :meth:`Method.weight_only` (the layer
  computes ``x Ŵᵀ`` exactly), ``finalize_changes_layers``;
* one tensor: :meth:`Method.quantize_tensor`, :meth:`Method.fake_quantize`, ``data_free``;
* storage: :meth:`Method.storage_nbytes` (bytes from a shape),
  :meth:`Method.format_bits` (bits per weight from a row length),
  :meth:`Method.pack` / :meth:`Method.packs`;
* presentation: ``label`` (the name a menu shows), ``menu_position``,
  ``controls`` (which explorer controls it reads) and
  :meth:`Method.config_from_controls` (how those controls become a config).

The layers of the package: configs (:mod:`qviz.quant.config`) at the bottom,
this module above them, the method modules above this one (they import
:func:`register`), and :mod:`qviz.quant.registry` above the methods: it imports
every built-in method module and is what the drivers ask. Nothing here imports a
method module.

Examples
--------
>>> from dataclasses import dataclass
>>> from qviz.quant.config import QuantConfig
>>> @dataclass(frozen=True)
... class Mine(QuantConfig):
...     label = "mine"
>>> @register(Mine)
... class MineMethod(Method):
...     label = "Mine"
>>> method_for(Mine()).label, method_for(Mine()).needs_inputs
('Mine', False)
>>> unregister(Mine)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from qviz.quant.config import QuantConfig

if TYPE_CHECKING:  # torch is imported where it is used: the size accounting reads FormatBits without it
    import torch
    from torch import nn

CONTROL_NAMES = ("bits", "group_size", "symmetric", "alpha", "threshold")
"""The knobs an explorer offers; a method's ``controls`` names the ones it reads."""


class Fused(NamedTuple):
    """What a fused GPU pass returns from :meth:`Method.fake_quantize`: ``x_hat`` and its all-zero verdict.

    ``zeroed`` is True when the input had nonzero values and ``x_hat`` has none, False when not,
    None when the pass could not tell (the driver then checks the tensors itself).
    """

    x_hat: Any
    zeroed: bool | None


@dataclass(frozen=True)
class Controls:
    """The state of an explorer's knobs, as :meth:`Method.config_from_controls` reads it.

    Attributes
    ----------
    bits : int
    group_size : int, "tensor" or None
        Already parsed: ``None`` is one scale per output channel.
    symmetric : bool
    alpha : float
    threshold : float
    """

    bits: Any = 4
    group_size: Any = 128
    symmetric: bool = False
    alpha: float = 0.5
    threshold: float = 6.0


@dataclass(frozen=True)
class FormatBits:
    """Bits per weight of a format: code bits plus overhead, and what the overhead is.

    Examples
    --------
    >>> FormatBits("x", 4.0, 0.25, "a float16 scale per 64 weights").total_bits
    4.25
    """

    label: str
    code_bits: float
    overhead_bits: float
    overhead: str

    @property
    def total_bits(self) -> float:
        """Code bits plus overhead bits per weight."""
        return self.code_bits + self.overhead_bits


def scale_format_bits(label: str, bits: int, group: Any, symmetric: bool, row_length: int, note: str = "") -> FormatBits:
    """Bits per weight of integer codes with one float16 scale (and, asymmetric, one uint8 zero point) per group.

    ``group``: an int (groups of that many weights along the row), ``None`` (one
    per row of ``row_length`` weights) or ``"tensor"`` (one per tensor: negligible).
    ``note`` is added to the overhead's description.

    Examples
    --------
    >>> scale_format_bits("w4 g128", 4, 128, False, 8192).total_bits
    4.1875
    """
    per = {"tensor": None, None: row_length}.get(group, group)
    parts = "a float16 scale" + ("" if symmetric else " and a uint8 zero point")
    if per is None:
        return FormatBits(label, float(bits), 0.0, f"{parts} per tensor (negligible){note}")
    extra = (16 + (0 if symmetric else 8)) / per
    where = f"per group of {per} weights" if group not in (None, "tensor") else f"per row of {per} weights"
    return FormatBits(label, float(bits), extra, f"{parts} {where}{note}")


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


def weight_only_output(module: nn.Module, x: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
    """``x`` through ``module``'s operation with weight ``w_hat [out, in]`` and no bias (a weight-only layer's output)."""
    from torch import nn  # lazy: see the module's imports

    if isinstance(module, nn.Conv2d):
        return module._conv_forward(x, w_hat.reshape(module.weight.shape).to(x.dtype), None)
    if isinstance(module, nn.Conv1d):
        return module._conv_forward(x, w_hat.reshape(module.weight.shape).to(x.dtype), None)
    return nn.functional.linear(x, w_hat.to(x.dtype))


class Method:
    """Base class of a registered quantization method: every question a caller may ask, with its default.

    Subclasses override what differs. ``layer_output(lq, x) -> y`` is the one
    optional hook (the replacement's output without bias on the raw input ``x``,
    for methods whose layer is not ``x Ŵᵀ``); :func:`qviz.layer_error` uses it
    when a method defines it.
    """

    config_type: type[QuantConfig] = QuantConfig
    #: the method's name in menus (the explorer's dropdown); "" keeps it out of them
    label: str = ""
    #: where it sits in menus (smaller first; ties keep registration order)
    menu_position: int = 1000
    #: the explorer controls (names from CONTROL_NAMES) config_from_controls reads
    controls: tuple[str, ...] = ()
    #: quantize_layer wants the layer's calibration inputs ``[tokens, in]``
    needs_inputs: bool = False
    #: inputs come from the model with earlier layers already quantized
    sequential: bool = False
    #: ``finalize`` changes the quantized layers (QAT's fine-tune): per-layer numbers are taken after it
    finalize_changes_layers: bool = False
    #: quantize_tensor needs only the weight (no calibration data, no prepare state) and gives what
    #: quantize_layer gives: a per-layer explorer may quantize the lone weight instead of the layer
    data_free: bool = False
    #: layer types (qviz.models.layer_type) this method can quantize
    layer_types: tuple[str, ...] = ("linear", "conv1d", "conv2d")
    #: module classes of its own that quantize_layer puts in the model (beyond qviz.quant.modules'
    #: fake-quant and packed layers), so a quantized model is recognised as one
    replacement_types: tuple[type, ...] = ()

    # ----------------------------------------------------------------- running it
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

    def refuse(self, name: str, shape: tuple[int, int], cfg: QuantConfig) -> str | None:
        """Why the method leaves a layer of weight ``shape`` ``(out, in)`` in full precision; None: it takes it."""
        return None

    @property
    def has_prepare(self) -> bool:
        """True when the method has model-level work before its layers (it overrides :meth:`prepare`)."""
        return type(self).prepare is not Method.prepare

    @property
    def has_finalize(self) -> bool:
        """True when the method has model-level work after its layers (it overrides :meth:`finalize`)."""
        return type(self).finalize is not Method.finalize

    # ----------------------------------------------------------------- what it does to the model
    def changes_model(self, cfg: QuantConfig) -> bool:
        """True when :meth:`prepare` changes the model copy outside the quantized layers.

        (SmoothQuant and AWQ fold scales into the preceding norms, a rotation rotates
        the residual stream.) A per-layer measurement must then quantize layers of a
        prepared copy, fed with that copy's inputs. Default: False.
        """
        return False

    def weight_only(self, cfg: QuantConfig) -> bool:
        """True when the quantized layer computes ``x Ŵᵀ`` exactly (no activation quantization), so
        :func:`qviz.layer_error` may compute the output error as ``X (Ŵ − W)ᵀ``. Default: True."""
        return True

    # ----------------------------------------------------------------- one tensor
    def quantize_tensor(self, w: torch.Tensor, cfg: QuantConfig) -> tuple:
        """``(codes, scale, zero, nbytes, dequantize)`` of one weight ``w [rows, cols]`` (float32).

        Default: :meth:`quantize_layer` on a bare ``nn.Linear`` holding ``w`` (the codes
        are then the dequantized weight and ``scale`` is 1); refused with a
        ``TypeError`` when the method needs calibration inputs.
        """
        if self.needs_inputs:
            raise TypeError(
                f"{type(cfg).__name__} needs calibration inputs, so it cannot quantize a lone tensor. "
                "Use qviz.quantize(model, cfg, calib=batch) or qviz.layer_error(model, cfg, calib=batch)."
            )
        import torch  # lazy: see the module's imports
        from torch import nn

        lin = nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device)
        with torch.no_grad():
            lin.weight.copy_(w)
        lq = self.quantize_layer("tensor", lin, cfg, None, None)
        w_hat = lq.weight_hat.detach().float()
        return w_hat, torch.ones(1), None, lq.nbytes, lambda: w_hat

    def fake_quantize(self, w: torch.Tensor, cfg: QuantConfig, *,
                      check_finite: bool) -> torch.Tensor | Fused | None:
        """A fused quantize-dequantize of ``w [rows, cols]`` float32 on its device, or None (no fused path).

        ``check_finite=False``: the caller left the NaN/Inf check to this fused pass (a GPU kernel).
        A :class:`Fused` result also tells whether everything quantized to zero, so that the driver's
        warning needs no second pass. With None the driver dequantizes :meth:`quantize_tensor`'s codes.
        """
        return None

    # ----------------------------------------------------------------- storage
    def storage_nbytes(self, shape: tuple[int, int], cfg: QuantConfig) -> int | None:
        """Bytes ``quantize_tensor`` stores for a weight of ``shape`` ``(out, in)``, from the shape alone.

        None when the shape does not decide it. Must equal ``quantize_tensor(...)[3]`` (tested).
        """
        return None

    def format_bits(self, cfg: QuantConfig, row_length: int) -> FormatBits:
        """Bits per weight of ``cfg``'s storage, code bits and overhead apart, for rows of ``row_length`` weights."""
        raise TypeError(
            f"qviz does not know the storage format of {type(cfg).__name__}: its method "
            f"{type(self).__name__} declares no format_bits(cfg, row_length)."
        )

    def pack(self, module: nn.Module, cfg: QuantConfig) -> nn.Module | None:
        """A packed-storage replacement of the ORIGINAL layer (real low-bit GEMV), or None."""
        return None

    def packs(self, cfg: QuantConfig) -> bool:
        """True when :meth:`pack` stores ``cfg`` as packed codes (on Linear layers)."""
        return False

    # ----------------------------------------------------------------- presentation
    def config_from_controls(self, controls: Controls) -> QuantConfig:
        """The config an explorer's knobs describe (validated by the config itself)."""
        raise TypeError(f"{type(self).__name__} declares no explorer controls (config_from_controls).")


_REGISTRY: dict[type[QuantConfig], Method] = {}


def register(config_type: type[QuantConfig]) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a :class:`Method` subclass as the handler of ``config_type``.

    Registering a config type again replaces its method.

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
    >>> unregister(Mine)
    """
    if not (isinstance(config_type, type) and issubclass(config_type, QuantConfig)):
        raise TypeError(f"register() takes a QuantConfig subclass; got {config_type!r}.")

    def decorator(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register({config_type.__name__}) decorates a Method subclass; got {cls!r}.")
        instance = cls()
        instance.config_type = config_type
        _REGISTRY[config_type] = instance
        return cls

    return decorator


def unregister(config_type: type[QuantConfig]) -> None:
    """Remove the method registered for ``config_type`` (e.g. a test's own method, at teardown).

    Raises ``KeyError`` naming the registered types when ``config_type`` has no method.
    """
    if config_type not in _REGISTRY:
        known = ", ".join(sorted(t.__name__ for t in _REGISTRY)) or "none"
        raise KeyError(f"{getattr(config_type, '__name__', config_type)!r} has no registered method; registered: {known}.")
    del _REGISTRY[config_type]


def registered_methods() -> list[Method]:
    """The registered Method instances, in registration order."""
    return list(_REGISTRY.values())


def registered_types() -> list[type[QuantConfig]]:
    """The config types registered so far, in registration order."""
    return list(_REGISTRY)


def method_for(cfg: Any) -> Method:
    """The registered :class:`Method` for a config instance.

    Raises ``TypeError`` listing the known config types for anything else.
    (:mod:`qviz.quant.registry` offers the same function with every built-in method loaded.)
    """
    method = _REGISTRY.get(type(cfg))
    if method is None:
        known = ", ".join(sorted(t.__name__ for t in _REGISTRY)) or "none registered"
        hint = " Pass an instance, e.g. qviz.RTN(bits=4), not the class." if isinstance(cfg, type) else ""
        raise TypeError(
            f"No quantization method is registered for {type(cfg).__name__} ({cfg!r}). "
            f"Known configs: {known}.{hint}"
        )
    return method


def menu() -> dict[str, Method]:
    """Menu name -> method, for every registered method with a ``label``, in menu order."""
    methods = [m for m in _REGISTRY.values() if m.label]
    methods.sort(key=lambda m: m.menu_position)  # stable: ties keep registration order
    return {m.label: m for m in methods}
