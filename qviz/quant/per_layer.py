"""Per-layer configs: ``qviz.PerLayer({pattern: config}, default=config)``, for any mix of qviz methods.

Like ``llama-quantize --tensor-type attn_v=q6_k``, but for every qviz config:
the first pattern (an exact module name or a glob, as in ``layers=``) that
matches a layer picks its config, ``None`` keeps it in full precision, and the
other layers get ``default``. A :class:`PerLayer` is one config, so it goes
wherever a config goes: :func:`qviz.quantize`, :func:`qviz.layer_error`,
:func:`qviz.sensitivity`, :func:`qviz.compare`.

The work is delegated to each sub-config's registered method: its ``prepare``
runs on the layers it owns, its ``quantize_layer`` on each of them, its
``finalize`` at the end. Sub-configs that need calibration inputs get them
captured once, after every ``prepare``, from the model before any layer is
replaced (so a sequential method such as GPTQ sees full-precision inputs here).

Examples
--------
>>> import torch, qviz
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
>>> cfg = qviz.PerLayer({"2": qviz.RTN(bits=8, group_size=None)}, default=qviz.RTN(bits=4, group_size=32))
>>> q = qviz.quantize(net, cfg, progress=False)
>>> {k: r.config for k, r in q.quantization.layers.items()}
{'0': 'RTN w4 g32 asym', '2': 'RTN w8 ch asym'}
"""

from __future__ import annotations

import dataclasses
import fnmatch
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from qviz.quant.config import QuantConfig
from qviz.quant.method import LayerQuant, Method, method_for, register, weight_only_output


def _as_config(value: Any, where: str) -> QuantConfig | None:
    if value is None or isinstance(value, QuantConfig):
        if isinstance(value, PerLayer):
            raise ValueError(f"PerLayer {where} is itself a PerLayer; merge the two mappings into one.")
        if value is not None:
            method_for(value)  # TypeError listing the known configs
        return value
    raise TypeError(f"PerLayer {where} must be a quantization config (qviz.RTN(...), qviz.GGUF(...)) or None; "
                    f"got {type(value).__name__} {value!r}.")


@dataclass(frozen=True)
class PerLayer(QuantConfig):
    """Different configs for different layers, chosen by name pattern; the first match wins.

    Parameters
    ----------
    rules : dict or sequence of (pattern, config) pairs
        Pattern: an exact module name or a glob (``"*.v_proj"``); config: any
        registered config, or ``None`` for full precision.
    default : QuantConfig or None
        The config of layers no pattern matches (``None``: leave them in full precision).

    Examples
    --------
    >>> import qviz
    >>> PerLayer({"*.v_proj": qviz.GGUF("Q6_K")}, default=qviz.GGUF("Q4_K")).label
    'GGUF Q4_K; *.v_proj: GGUF Q6_K'
    """

    rules: Mapping | tuple | list = ()
    default: QuantConfig | None = None
    method: ClassVar[str] = "per-layer"

    def __post_init__(self) -> None:
        items = list(self.rules.items()) if isinstance(self.rules, Mapping) else list(self.rules)
        pairs = []
        for item in items:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
                raise TypeError(f"PerLayer rules must map name patterns (str) to configs; got the entry {item!r}.")
            pairs.append((item[0], _as_config(item[1], f"rule {item[0]!r}")))
        if not pairs:
            raise ValueError("PerLayer needs at least one rule, e.g. PerLayer({'*.v_proj': qviz.GGUF('Q6_K')}, "
                             "default=qviz.GGUF('Q4_K')).")
        object.__setattr__(self, "rules", tuple(pairs))
        object.__setattr__(self, "default", _as_config(self.default, "default"))

    def config_for(self, name: str) -> tuple[QuantConfig | None, str]:
        """``(config, why)`` for a layer name: the first matching rule's config, else the default."""
        for pattern, cfg in self.rules:
            if name == pattern or fnmatch.fnmatchcase(name, pattern):
                return cfg, f"PerLayer rule {pattern!r}"
        return self.default, "PerLayer default"

    @property
    def configs(self) -> list[QuantConfig]:
        """The distinct sub-configs, rules first."""
        seen = dict.fromkeys(c for _, c in [*self.rules, ("", self.default)] if c is not None)
        return list(seen)

    @property
    def label(self) -> str:
        head = self.default.label if self.default is not None else "fp"
        return head + "; " + ", ".join(f"{p}: {c.label if c is not None else 'fp'}" for p, c in self.rules)

    @property
    def weight_bits(self) -> int | None:
        return None if self.default is None else self.default.weight_bits

    def replace(self, **changes: Any) -> QuantConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class _Plan:
    owners: dict[str, tuple[QuantConfig, Method, Any]]
    inputs: dict[str, torch.Tensor]


# replacement module -> (method, config) that made it, for layer_output
_MADE_BY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@register(PerLayer)
class PerLayerMethod(Method):
    """Delegates every layer to the registered method of the config its pattern picks."""

    needs_inputs = False
    sequential = False
    layer_types = ("linear", "conv1d", "conv2d")

    def refuse(self, name: str, shape: tuple[int, int], cfg: PerLayer) -> str | None:
        """Full precision where the mapping says ``None`` or the chosen method cannot take the layer."""
        sub, why = cfg.config_for(name)
        if sub is None:
            return f"kept in full precision by the {why} (None)"
        group = getattr(sub, "group_size", None)
        if isinstance(group, int) and not isinstance(group, bool) and shape[1] % group:
            raise ValueError(
                f"group_size={group} of {sub.label} (the {why}) does not divide the row length {shape[1]} "
                f"of layer {name!r}. Pick a divisor, or give this layer its own rule."
            )
        method = method_for(sub)
        return method.refuse(name, shape, sub)

    def prepare(self, model: Any, cfg: PerLayer, calib: Any, layers: dict[str, nn.Module]) -> _Plan:
        """Each sub-method's ``prepare`` on its own layers; inputs captured for those that need them."""
        from qviz.models import layer_type
        from qviz.activations.engine import capture_inputs, check_calib

        groups: dict[QuantConfig, dict[str, nn.Module]] = {}
        for name, module in layers.items():
            sub, why = cfg.config_for(name)
            if sub is None:
                continue
            method = method_for(sub)
            if layer_type(module) not in method.layer_types:
                raise ValueError(f"{sub.label} (the {why}) cannot quantize {layer_type(module)} layer {name!r}; "
                                 f"it takes {', '.join(method.layer_types)} layers.")
            groups.setdefault(sub, {})[name] = module
        owners: dict[str, tuple[QuantConfig, Method, Any]] = {}
        for sub, mods in groups.items():
            method = method_for(sub)
            if method.needs_inputs:
                check_calib(calib, f"{sub.label} inside {cfg.label}")
            state = method.prepare(model, sub, calib, mods)
            owners.update({n: (sub, method, state) for n in mods})
        need = [n for n, (_, m, _) in owners.items() if m.needs_inputs]
        inputs = capture_inputs(model, calib, need) if need else {}
        return _Plan(owners, inputs)

    def quantize_layer(self, name: str, module: nn.Module, cfg: PerLayer, inputs: torch.Tensor | None,
                       state: Any) -> LayerQuant:
        """The chosen sub-method's ``quantize_layer`` for this layer."""
        from qviz.activations.engine import as_rows

        if isinstance(state, _Plan) and name in state.owners:
            sub, method, sub_state = state.owners[name]
            rows = state.inputs.get(name)
        else:  # no prepare (a lone tensor): the config this name picks, data-free
            sub = cfg.config_for(name)[0] or cfg.default
            method, sub_state, rows = method_for(sub), None, None
        if method.needs_inputs and rows is None:
            raise ValueError(f"{sub.label} needs the calibration inputs of {name!r}; quantize the model with calib=.")
        if rows is not None:
            rows = as_rows(module, rows.to(module.weight.device))
        lq = method.quantize_layer(name, module, sub, rows if method.needs_inputs else None, sub_state)
        _MADE_BY[lq.module] = (method, sub)
        lq.config_label = lq.config_label or sub.label
        return lq

    def finalize(self, model: Any, cfg: PerLayer, calib: Any, state: Any) -> dict[str, Any]:
        """Each sub-method's ``finalize`` (e.g. QAT's fine-tune), keyed by sub-config label."""
        out: dict[str, Any] = {}
        if not isinstance(state, _Plan):
            return out
        done = set()
        for sub, method, sub_state in state.owners.values():
            if sub in done:
                continue
            done.add(sub)
            extra = method.finalize(model, sub, calib, sub_state)
            if extra:
                out[sub.label] = extra
        return out

    def changes_model(self, cfg: PerLayer) -> bool:
        """True when any sub-config's method changes the model (its prepare runs on the same copy)."""
        return any(method_for(c).changes_model(c) for c in cfg.configs)

    def weight_only(self, cfg: PerLayer) -> bool:
        """True when every sub-config is weight-only."""
        return all(method_for(c).weight_only(c) for c in cfg.configs)

    def layer_output(self, lq: LayerQuant, x: torch.Tensor) -> torch.Tensor:
        """The output of the sub-method that made ``lq`` (its ``layer_output``, or ``x W_hat^T``)."""
        from qviz.quant.rtn import output_without_bias

        made = _MADE_BY.get(lq.module)
        if made is None:
            return output_without_bias(lq.module, x)
        own = getattr(made[0], "layer_output", None)
        return own(lq, x) if own is not None else weight_only_output(lq.module, x, lq.weight_hat)

    def quantize_tensor(self, w: torch.Tensor, cfg: PerLayer) -> tuple:
        """A lone tensor goes to the default config."""
        if cfg.default is None:
            raise TypeError(f"{cfg.label} has no default config to quantize a lone tensor with; give default=.")
        method = method_for(cfg.default)
        builder = getattr(method, "quantize_tensor", None)
        if builder is None:
            raise TypeError(f"{cfg.default.label} needs calibration inputs; it cannot quantize a lone tensor.")
        return builder(w, cfg.default)
