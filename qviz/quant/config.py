"""Quantization configs: frozen dataclasses that validate themselves.

One config type per method; :func:`qviz.quantize` dispatches on the type
through :mod:`qviz.quant.registry`. This module is the bottom layer: it imports
no method and no registry (:func:`qviz.quant.registry.config_from_json` reads
configs back from JSON). ``cfg.label`` is the readable name used as
the ``config`` coordinate of every result Dataset.

Examples
--------
>>> RTN(bits=4, group_size=128).label
'RTN w4 g128 asym'
>>> RTN(bits=9)
Traceback (most recent call last):
...
ValueError: RTN bits must be an int from 2 to 8; got 9. ...
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from qviz._checks import check_bool, check_choice, check_fields, check_int, check_number
from qviz.quant.granularity import Granularity, granularity_of
from qviz.quant.primitives import check_bits, check_group_size

# The one set of field checks every config uses (the format modules import these too).
_check_bool, _check_int, _check_number, _check_choice = check_bool, check_int, check_number, check_choice

ACT_SCHEMES = ("per-token", "per-tensor")
FOLD_MODES = ("auto", "require", "never")


def _check_unit(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{owner} {name} must be a number in [0, 1]; got {value!r}. 0.5 is the usual choice.")


def _check_act(owner: str, act_bits: Any, act_scheme: Any) -> None:
    check_bits(act_bits, "act_bits", owner=owner, allow_none=True)
    if act_scheme not in ACT_SCHEMES:
        raise ValueError(f"{owner} act_scheme must be one of {ACT_SCHEMES}; got {act_scheme!r}.")


@dataclass(frozen=True)
class QuantConfig:
    """Base class of every config. Subclasses are frozen dataclasses that validate in ``__post_init__``."""

    method: ClassVar[str] = "base"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every config's own __post_init__ runs after its fields are checked against their
        # annotations (bools are bools, ints ints, numbers finite): a new config needs no code for it.
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None and not getattr(own, "_checks_fields", False):
            def __post_init__(self: QuantConfig, _own: Any = own) -> None:
                check_fields(self)
                _own(self)

            __post_init__._checks_fields = True  # type: ignore[attr-defined]
            __post_init__.__doc__ = own.__doc__
            cls.__post_init__ = __post_init__  # type: ignore[method-assign]

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def label(self) -> str:
        """A short readable name, unique per distinct setting (used as the ``config`` coordinate)."""
        raise NotImplementedError

    def to_json(self) -> str:
        """The config as a JSON string (``{"method": ..., fields...}``), for Dataset attrs.

        A field holding another config (``Rotated.inner``, ``PerLayer``'s rules) is written as
        that config's own JSON object, so :func:`qviz.quant.registry.config_from_json` rebuilds it.
        """
        return json.dumps(_json_value(self))

    def replace(self, **changes: Any) -> QuantConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def weight_bits(self) -> int | None:
        """Nominal bits of a weight code (None when not a fixed integer width)."""
        return getattr(self, "bits", None)


def _json_value(value: Any) -> Any:
    """A config (at any depth of tuples, lists and dicts) as plain JSON data with its ``"method"`` key."""
    if isinstance(value, QuantConfig):
        return {"method": type(value).__name__,
                **{f.name: _json_value(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def from_json_value(value: Any, types: dict[str, type]) -> Any:
    """Inverse of :func:`_json_value`: every object with a ``"method"`` key becomes its config."""
    if isinstance(value, list):
        return [from_json_value(v, types) for v in value]
    if not isinstance(value, dict):
        return value
    data = {k: from_json_value(v, types) for k, v in value.items()}
    if "method" not in data:
        return data
    name = data.pop("method")
    if name not in types:
        raise ValueError(f"Unknown config type {name!r}; known: {', '.join(sorted(types))}.")
    fields = [f.name for f in dataclasses.fields(types[name])]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{name} has no field(s) {unknown}; its fields are {fields}. Was the JSON written by another qviz version?")
    return types[name](**data)


@dataclass(frozen=True)
class RTN(QuantConfig):
    """Round-to-nearest weight quantization (optionally with INT activation fake-quant).

    Parameters
    ----------
    bits : int
        2 to 8.
    group_size : int, None or "tensor"
        ``None``: one scale per output channel; an int: groups of that many
        weights along the input dim (must divide the row); ``"tensor"``: one scale.
    symmetric : bool
        Symmetric (zero point fixed at the middle code) or asymmetric (min/max) range.
    clip_search : bool
        Search per group for the clipping ratio that minimises squared error.
    act_bits : int or None
        Fake-quantize the layer's input activations to this many bits (W8A8: 8).
    act_scheme : str
        ``"per-token"`` (one scale per token row) or ``"per-tensor"``.

    Examples
    --------
    >>> RTN(bits=8, group_size=None, symmetric=True, act_bits=8).label
    'RTN w8 ch sym a8/token'
    """

    bits: int = 4
    group_size: int | str | None = 128
    symmetric: bool = False
    clip_search: bool = False
    act_bits: int | None = None
    act_scheme: str = "per-token"
    method: ClassVar[str] = "rtn"

    def __post_init__(self) -> None:
        check_bits(self.bits, "bits", owner="RTN")
        check_group_size(self.group_size, owner="RTN")
        _check_act("RTN", self.act_bits, self.act_scheme)

    @property
    def granularity(self) -> Granularity:
        return granularity_of(self.group_size)

    @property
    def label(self) -> str:
        g = {None: "ch", "tensor": "tensor"}.get(self.group_size, f"g{self.group_size}")  # type: ignore[arg-type]
        text = f"RTN w{self.bits} {g} {'sym' if self.symmetric else 'asym'}"
        if self.clip_search:
            text += " clip"
        if self.act_bits is not None:
            text += f" a{self.act_bits}/{self.act_scheme.split('-')[1]}"
        return text


@dataclass(frozen=True)
class BnbInt8(QuantConfig):
    """LLM.int8() through bitsandbytes: int8 vector-wise weights, fp16 outlier columns above ``threshold``.

    Examples
    --------
    >>> BnbInt8().label
    'bnb int8 t6.0'
    """

    threshold: float = 6.0
    method: ClassVar[str] = "bnb-int8"

    def __post_init__(self) -> None:
        check_number("BnbInt8", "threshold", self.threshold, lo=0.0,
                     hint="0 disables the outlier decomposition; LLM.int8 uses 6.0.")

    @property
    def label(self) -> str:
        return f"bnb int8 t{float(self.threshold)}"

    @property
    def weight_bits(self) -> int:
        return 8


BNB_CPU_KERNELS = ("generic", "packed", "auto")


@dataclass(frozen=True)
class _Bnb4bit(QuantConfig):
    """Shared fields of the bitsandbytes 4-bit formats.

    ``cpu_kernel`` picks which of bitsandbytes' two CPU kernels runs a model on
    the CPU (qviz decides, not the processor):

    * ``"generic"`` (default): dequantize-then-matmul in float32, the same
      numbers on every x86 CPU;
    * ``"packed"``: the fused bf16 kernel bitsandbytes uses on CPUs with
      AVX512-BF16 (weights repacked in blocks of 32 output rows, activations and
      absmax in bfloat16); refused with a clear error on a CPU without it;
    * ``"auto"``: ``"packed"`` where the CPU has it, else ``"generic"``.

    Layers the packed kernel cannot take (output rows not a multiple of 32, an
    odd input width, rows that do not hold a whole number of blocks) run the
    generic kernel, and the layer's record says why.
    """

    blocksize: int = 64
    double_quant: bool = False
    cpu_kernel: str = "generic"
    quant_type: ClassVar[str] = "nf4"

    def __post_init__(self) -> None:
        if not isinstance(self.cpu_kernel, str) or self.cpu_kernel not in BNB_CPU_KERNELS:
            raise ValueError(
                f"{type(self).__name__} cpu_kernel must be one of {BNB_CPU_KERNELS}; got {self.cpu_kernel!r}. "
                "'generic' gives the same numbers on every CPU; 'packed' needs a CPU with AVX512-BF16."
            )
        allowed = (32, 64, 128, 256, 512, 1024, 2048, 4096)
        if self.blocksize not in allowed:
            raise ValueError(
                f"{type(self).__name__} blocksize must be one of {allowed} (bitsandbytes' block sizes); "
                f"got {self.blocksize!r}. 64 is the QLoRA default."
            )
        check_bool(type(self).__name__, "double_quant", self.double_quant)

    @property
    def label(self) -> str:
        cpu = "" if self.cpu_kernel == "generic" else f" cpu-{self.cpu_kernel}"
        return f"bnb {self.quant_type} b{self.blocksize}{' dq' if self.double_quant else ''}{cpu}"

    @property
    def weight_bits(self) -> int:
        return 4


@dataclass(frozen=True)
class BnbNF4(_Bnb4bit):
    """4-bit NormalFloat through bitsandbytes ``quantize_4bit`` (blockwise absmax).

    Examples
    --------
    >>> BnbNF4(blocksize=64).label
    'bnb nf4 b64'
    """

    quant_type: ClassVar[str] = "nf4"
    method: ClassVar[str] = "bnb-nf4"


@dataclass(frozen=True)
class BnbFP4(_Bnb4bit):
    """4-bit float (e2m1) through bitsandbytes ``quantize_4bit`` (blockwise absmax).

    Examples
    --------
    >>> BnbFP4().label
    'bnb fp4 b64'
    """

    quant_type: ClassVar[str] = "fp4"
    method: ClassVar[str] = "bnb-fp4"


@dataclass(frozen=True)
class SmoothQuant(QuantConfig):
    """SmoothQuant (Xiao et al. 2023): migrate activation outliers into weights, then W8A8.

    ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` per input channel ``j``.

    Examples
    --------
    >>> SmoothQuant(alpha=0.5).label
    'SmoothQuant a0.5 w8a8/tensor'
    """

    alpha: float = 0.5
    w_bits: int = 8
    a_bits: int | None = 8
    act_scheme: str = "per-tensor"
    fold: str = "auto"
    act_static: bool = False
    method: ClassVar[str] = "smoothquant"

    def __post_init__(self) -> None:
        _check_unit("SmoothQuant", "alpha", self.alpha)
        check_bits(self.w_bits, "w_bits", owner="SmoothQuant")
        _check_act("SmoothQuant", self.a_bits, self.act_scheme)
        if self.fold not in FOLD_MODES:
            raise ValueError(
                f"SmoothQuant fold must be one of {FOLD_MODES}; got {self.fold!r}. 'auto' folds 1/s into the "
                "preceding norm where that is exact and keeps an explicit input scale elsewhere (with a warning); "
                "'require' raises for layers without a foldable predecessor; 'never' always uses explicit scales."
            )
        check_bool("SmoothQuant", "act_static", self.act_static)
        if self.act_static and self.act_scheme != "per-tensor":
            raise ValueError(
                f"SmoothQuant act_static must be True or False, and True only with act_scheme='per-tensor' "
                f"(one calibrated activation scale per layer); got act_static={self.act_static!r}, "
                f"act_scheme={self.act_scheme!r}."
            )

    @property
    def label(self) -> str:
        text = f"SmoothQuant a{self.alpha:g} w{self.w_bits}a{self.a_bits}/{self.act_scheme.split('-')[1]}"
        text += " static" if self.act_static else ""
        return text if self.fold == "auto" else f"{text} fold={self.fold}"

    @property
    def weight_bits(self) -> int:
        return self.w_bits


@dataclass(frozen=True)
class AWQ(QuantConfig):
    """Activation-aware weight quantization (Lin et al. 2024): per-input-channel scales ``mean|X|^alpha``.

    Examples
    --------
    >>> AWQ(bits=4, group_size=128).label
    'AWQ w4 g128'
    """

    bits: int = 4
    group_size: int | None = 128
    n_grid: int = 20
    clip_search: bool = True
    symmetric: bool = False
    method: ClassVar[str] = "awq"

    def __post_init__(self) -> None:
        check_bits(self.bits, "bits", owner="AWQ")
        check_group_size(self.group_size, owner="AWQ")
        check_int("AWQ", "n_grid", self.n_grid, lo=1, hint="It is the number of grid points for alpha in [0, 1); 20 is usual.")

    @property
    def label(self) -> str:
        g = "ch" if self.group_size is None else f"g{self.group_size}"
        return f"AWQ w{self.bits} {g}"


@dataclass(frozen=True)
class GPTQ(QuantConfig):
    """GPTQ (Frantar et al. 2023): column-wise quantization with Hessian-based error feedback.

    Examples
    --------
    >>> GPTQ(bits=3, group_size=128).label
    'GPTQ w3 g128 act'
    """

    bits: int = 4
    group_size: int | None = 128
    act_order: bool = True
    damp: float = 0.01
    block_size: int = 128
    symmetric: bool = False
    method: ClassVar[str] = "gptq"

    def __post_init__(self) -> None:
        check_bits(self.bits, "bits", owner="GPTQ")
        check_group_size(self.group_size, owner="GPTQ")
        check_number("GPTQ", "damp", self.damp, lo=0.0, hi=1.0, lo_open=True, hi_open=True,
                     hint="It is a fraction of the mean Hessian diagonal; 0.01 is usual.")
        check_int("GPTQ", "block_size", self.block_size, lo=1, hint="128 is usual.")

    @property
    def label(self) -> str:
        g = "ch" if self.group_size is None else f"g{self.group_size}"
        return f"GPTQ w{self.bits} {g}{' act' if self.act_order else ''}"


@dataclass(frozen=True)
class QAT(QuantConfig):
    """Quantization-aware training: fake-quant with straight-through gradients and a short distillation fine-tune.

    Examples
    --------
    >>> QAT(bits=3).label
    'QAT w3 ch'
    >>> QAT(bits=2, steps=50).label
    'QAT w2 ch 50 steps'
    """

    bits: int = 4
    group_size: int | None = None
    symmetric: bool = False
    act_bits: int | None = None
    steps: int = 200
    lr: float = 1e-3
    batch_size: int = 32
    method: ClassVar[str] = "qat"

    def __post_init__(self) -> None:
        check_bits(self.bits, "bits", owner="QAT")
        check_group_size(self.group_size, owner="QAT")
        check_bits(self.act_bits, "act_bits", owner="QAT", allow_none=True)
        check_int("QAT", "steps", self.steps, lo=0, hint="200 fine-tuning steps is the default; 0 skips training.")
        check_number("QAT", "lr", self.lr, lo=0.0, lo_open=True, hint="1e-3 is the default.")
        check_int("QAT", "batch_size", self.batch_size, lo=1, hint="32 is the default.")

    @property
    def label(self) -> str:
        g = "ch" if self.group_size is None else f"g{self.group_size}"
        out = f"QAT w{self.bits} {g}" + (" sym" if self.symmetric else "") + (f" a{self.act_bits}" if self.act_bits else "")
        # the training settings name the config only when they differ from the field defaults
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, text in (("steps", f" {self.steps} steps"), ("lr", f" lr {self.lr:g}"),
                           ("batch_size", f" batch {self.batch_size}")):
            if getattr(self, name) != defaults[name]:
                out += text
        return out


# W8A8 is RTN with activation bits; kept as a name for readability.
def ActQuant(bits: int = 8, scheme: str = "per-token", w_bits: int = 8) -> RTN:
    """An RTN W{w_bits}A{bits} config: per-channel symmetric weights, INT activation fake-quant.

    Examples
    --------
    >>> ActQuant(8, "per-tensor").label
    'RTN w8 ch sym a8/tensor'
    """
    return RTN(bits=w_bits, group_size=None, symmetric=True, act_bits=bits, act_scheme=scheme)
