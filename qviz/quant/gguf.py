"""llama.cpp's GGUF formats as a qviz method: ``qviz.GGUF("Q4_K_M")``, ``qviz.GGUF("Q8_0")``.

:class:`GGUFMethod` quantizes each Linear's ``[out, in]`` weight row by row
with :mod:`kernels_numba.gguf` (llama.cpp's reference quantizers, the exact
packed bytes), swaps in a fake-quant Linear holding the dequantized weight and
keeps the packed bytes on it (``module.gguf_type``, ``module.gguf_packed``) for
:func:`qviz.export_gguf`. The stored bytes are the packed blocks: every scale
counted.

* A llama.cpp **file type** (``Q4_0 ... Q8_0``, ``Q2_K``, ``Q3_K_S/M/L``,
  ``Q4_K_S/M``, ``Q5_K_S/M``, ``Q6_K``, ``IQ4_NL``) gives each tensor the type
  ``llama-quantize`` would (:mod:`qviz.quant.gguf_mix`): the output projection
  in Q6_K, more bits for some ``attn_v``/``ffn_down``, llama.cpp's fallbacks for
  rows its blocks do not divide. ``pure=True`` gives every tensor the file
  type's own type (``llama-quantize --pure``).
* A bare **block type** that is not a file type (``Q3_K``, ``Q4_K``, ``Q5_K``)
  is used for every tensor.
* Where a row is not a multiple of the type's block (pure types), or not even of
  32 (file types), the layer is left in full precision with the reason recorded.
* A weight tied to another module's (an output head sharing the token
  embedding) stays tied: llama.cpp stores the pair once, as ``token_embd`` in
  the head's type, and looks the input rows up in the same quantized tensor, so
  the quantized copy's embedding reads the head's dequantized weight and the
  stored bytes count it once.
* ``imatrix=True``: an importance matrix (per input channel, the mean of the
  squared activations, ``std**2 + mean**2`` from :func:`qviz.capture` on the
  calibration batch) weights the quantizers' searches, as ``llama-quantize
  --imatrix`` does.

Examples
--------
>>> import torch, qviz
>>> qt = qviz.quantize_tensor(torch.randn(8, 256), qviz.GGUF("Q4_K"))
>>> qt.bits_per_weight, tuple(qt.scale.shape)
(4.5, (8, 8))
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from kernels_numba.gguf import GGUF_TYPES, dequantize_gguf, gguf_nbytes, quantize_gguf, unpack_gguf
from qviz.models import weight_matrix
from qviz.quant.config import QuantConfig
from qviz.quant.gguf_mix import FILE_TYPES, tensor_types
from qviz.quant.method import Controls, FormatBits, LayerQuant, Method, register

NAMES = tuple(dict.fromkeys([*FILE_TYPES, *GGUF_TYPES]))
"""Every name :class:`GGUF` accepts: llama.cpp file types, then block types."""

_CODE_BITS = {"Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "Q8_0": 8, "Q2_K": 2, "Q3_K": 3, "Q4_K": 4, "Q5_K": 5,
              "Q6_K": 6, "IQ4_NL": 4}
_OVERHEAD = {
    "Q4_0": "a float16 scale per block of 32 weights",
    "Q4_1": "a float16 scale and a float16 minimum per block of 32 weights",
    "Q5_0": "a float16 scale per block of 32 weights",
    "Q5_1": "a float16 scale and a float16 minimum per block of 32 weights",
    "Q8_0": "a float16 scale per block of 32 weights",
    "Q2_K": "a 4-bit scale and a 4-bit minimum per 16 weights, float16 d and dmin per 256",
    "Q3_K": "a 6-bit scale per 16 weights, a float16 d per 256",
    "Q4_K": "a 6-bit scale and a 6-bit minimum per 32 weights, float16 d and dmin per 256",
    "Q5_K": "a 6-bit scale and a 6-bit minimum per 32 weights, float16 d and dmin per 256",
    "Q6_K": "an 8-bit scale per 16 weights, a float16 d per 256",
    "IQ4_NL": "a float16 scale per block of 32 weights (16 non-uniform levels)",
}


@dataclass(frozen=True)
class GGUF(QuantConfig):
    """llama.cpp's GGUF quantization: a file type (a mix, as llama-quantize picks it) or one block type.

    Parameters
    ----------
    type : str
        ``"Q4_K_M"``, ``"Q8_0"``, ``"Q2_K"``, ... (see :data:`NAMES`); case-insensitive.
    imatrix : bool
        Weight the quantizers by an importance matrix from the calibration batch
        (needs ``calib=``).
    pure : bool
        Use the file type's own block type for every tensor (``llama-quantize --pure``).

    Examples
    --------
    >>> GGUF("q4_k_m").label, GGUF("Q4_0", pure=True).label, GGUF("Q2_K", imatrix=True).label
    ('GGUF Q4_K_M', 'GGUF Q4_0 pure', 'GGUF Q2_K imatrix')
    >>> GGUF("Q4_KM")
    Traceback (most recent call last):
    ...
    ValueError: Unknown GGUF type 'Q4_KM'. Did you mean 'Q4_K_M' or ...
    """

    type: str = "Q4_K_M"
    imatrix: bool = False
    pure: bool = False
    method: ClassVar[str] = "gguf"

    def __post_init__(self) -> None:
        if not isinstance(self.type, str):
            raise ValueError(f"GGUF type must be a str such as 'Q4_K_M' or 'Q8_0'; got {self.type!r}.")
        key = self.type.upper()
        if key not in NAMES:
            close = difflib.get_close_matches(key, NAMES, n=3, cutoff=0.5)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"Unknown GGUF type {self.type!r}.{hint} Known: {', '.join(NAMES)}.")
        object.__setattr__(self, "type", key)
        for name in ("imatrix", "pure"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GGUF {name} must be True or False; got {getattr(self, name)!r}.")

    @property
    def is_mix(self) -> bool:
        """True when tensors get types by llama-quantize's rules (a file type, not ``pure``)."""
        return self.type in FILE_TYPES and not self.pure

    @property
    def base_type(self) -> str:
        """The block type of the bulk of the tensors (the file type's default)."""
        return FILE_TYPES.get(self.type, self.type)

    @property
    def label(self) -> str:
        return f"GGUF {self.type}" + (" pure" if self.pure and self.type in FILE_TYPES else "") + (
            " imatrix" if self.imatrix else "")

    @property
    def weight_bits(self) -> int:
        return _CODE_BITS[self.base_type]


def imatrix_of(stats: Any, name: str, n_in: int) -> np.ndarray:
    """llama.cpp's importance of each input channel of layer ``name``: the mean of its squared inputs.

    ``E[x^2] = std^2 + mean^2`` from a :func:`qviz.capture` Dataset (population std), float32 ``[n_in]``.
    """
    mean = stats["mean"].sel(layer=name).values[:n_in].astype(np.float64)
    std = stats["std"].sel(layer=name).values[:n_in].astype(np.float64)
    imat = np.nan_to_num(std * std + mean * mean, nan=0.0)
    return np.ascontiguousarray(imat, dtype=np.float32)


def _n_gqa(model: Any) -> int:
    config = getattr(getattr(model, "module", model), "config", None)
    heads = getattr(config, "num_attention_heads", None)
    kv = getattr(config, "num_key_value_heads", None) or heads
    return int(heads // kv) if heads and kv else 1


@dataclass
class _State:
    types: dict[str, tuple[str | None, str | None]]
    imatrix: dict[str, np.ndarray]
    ties: dict[str, list[tuple[str, str]]]


def _get(root: nn.Module, name: str) -> nn.Module | None:
    try:
        return root.get_submodule(name)
    except AttributeError:
        return None


def tied_parameters(root: nn.Module, layers: dict[str, nn.Module]) -> dict[str, list[tuple[str, str]]]:
    """For each layer, the ``(module name, parameter name)`` pairs elsewhere in ``root`` that hold its very weight.

    A tied output head (``lm_head.weight is model.embed_tokens.weight``) gives
    ``{"lm_head": [("model.embed_tokens", "weight")]}``; layers without ties are left out.
    """
    owner = {id(m.weight): name for name, m in layers.items() if isinstance(getattr(m, "weight", None), nn.Parameter)}
    ties: dict[str, list[tuple[str, str]]] = {}
    for mname, mod in root.named_modules():
        for pname, p in mod._parameters.items():
            name = owner.get(id(p)) if p is not None else None
            if name is not None and (mname, pname) != (name, "weight"):
                ties.setdefault(name, []).append((mname, pname))
    return ties


def quantize_weight(w: torch.Tensor, type_name: str, imatrix: np.ndarray | None = None):
    """``(packed uint8 [out, row_bytes], w_hat float32 [out, in])`` of a weight in GGUF ``type_name``."""
    x = np.ascontiguousarray(w.detach().float().cpu().numpy())  # [out, in]
    packed = quantize_gguf(x, type_name, imatrix)
    return packed, torch.from_numpy(dequantize_gguf(packed, type_name, x.shape[1]))


GGUF_BY_BITS = {2: "Q2_K", 3: "Q3_K", 4: "Q4_K", 5: "Q5_K", 6: "Q6_K", 8: "Q8_0"}
"""The GGUF block type an explorer's bits control picks."""


@register(GGUF)
class GGUFMethod(Method):
    """GGUF block quantization (llama.cpp's reference quantizers), optionally importance-weighted."""

    label = "GGUF"
    menu_position = 7
    controls = ("bits",)
    needs_inputs = False
    sequential = False
    layer_types = ("linear",)

    def config_from_controls(self, c: Controls) -> GGUF:
        """The GGUF block type of the bits knob (:data:`GGUF_BY_BITS`)."""
        if c.bits not in GGUF_BY_BITS:
            raise ValueError(f"GGUF has no {c.bits}-bit type; pick bits from {sorted(GGUF_BY_BITS)} "
                             f"({', '.join(GGUF_BY_BITS.values())}).")
        return GGUF(GGUF_BY_BITS[c.bits])

    def refuse(self, name: str, shape: tuple[int, int], cfg: GGUF) -> str | None:
        """Why ``cfg`` leaves a layer of weight ``shape`` ``(out, in)`` in full precision (None: it quantizes it)."""
        cols = int(shape[1])
        if cfg.is_mix:
            if cols % 32:
                return (f"row of {cols} weights is not a multiple of 32, the smallest GGUF block; "
                        "llama.cpp keeps such tensors in F16")
            return None
        block = GGUF_TYPES[cfg.base_type].block
        if cols % block:
            return (f"{cfg.base_type} needs rows that are a multiple of {block} weights; this row has {cols} "
                    f"({cols} % {block} = {cols % block}), so llama.cpp refuses the tensor")
        return None

    def prepare(self, model: Any, cfg: GGUF, calib: Any, layers: dict[str, nn.Module]) -> _State:
        """Each layer's GGUF type (llama-quantize's mix rules) and, with ``imatrix``, its importance matrix."""
        cols = {n: int(weight_matrix(m).shape[1]) for n, m in layers.items()}
        if cfg.is_mix:
            types = tensor_types(cols, cfg.type, n_gqa=_n_gqa(model), has_imatrix=cfg.imatrix)
        else:
            types = {n: (cfg.base_type, None) for n in cols}
        imat: dict[str, np.ndarray] = {}
        if cfg.imatrix and layers:
            from qviz.activations.capture import capture
            from qviz.activations.engine import check_calib

            check_calib(calib, f"{cfg.label} (the importance matrix comes from the calibration batch)")
            stats = capture(model, calib, layers=list(layers), progress=False)
            imat = {n: imatrix_of(stats, n, cols[n]) for n in layers}
        return _State(types, imat, tied_parameters(getattr(model, "module", model), layers))

    def finalize(self, model: Any, cfg: GGUF, calib: Any, state: _State) -> dict[str, Any]:
        """Tie back what shared a quantized layer's weight (the token embedding of a tied head), as llama.cpp stores it.

        Returns ``{"tied": {layer: [parameter, ...]}, "types": {layer: why}}``: the parameters that now read
        a layer's dequantized weight (empty when nothing was tied), and for each quantized layer whose type
        is not the config's own, that type and why (llama-quantize's mix rule, or its fallback for a row
        the type's blocks do not divide: ``"Q5_0: row of 576 not divisible by 256: Q4_K falls back to Q5_0"``).
        """
        root = getattr(model, "module", model)
        types = {name: f"{t}: {why}" for name, (t, why) in state.types.items()
                 if why and t is not None and getattr(_get(root, name), "gguf_packed", None) is not None}
        tied: dict[str, list[str]] = {}
        for name, owners in state.ties.items():
            new = root.get_submodule(name)
            if getattr(new, "gguf_packed", None) is None:
                continue  # left in full precision: the tie was never broken
            for mname, pname in owners:
                setattr(root.get_submodule(mname), pname, new.weight)
                tied.setdefault(name, []).append(f"{mname}.{pname}")
        return {"tied": tied, "types": types}

    def layer_type_of(self, name: str, cfg: GGUF, state: _State | None) -> str:
        """The GGUF type this layer is stored in."""
        if state is not None and name in state.types and state.types[name][0] is not None:
            return str(state.types[name][0])
        return cfg.base_type

    def quantize_layer(self, name: str, module: nn.Module, cfg: GGUF, inputs: torch.Tensor | None,
                       state: Any) -> LayerQuant:
        """Quantize one Linear to its GGUF type; the replacement keeps the packed bytes."""
        from qviz.quant.modules import fake_quant_module

        t = self.layer_type_of(name, cfg, state)
        w = weight_matrix(module).float()  # [out, in]
        imat = state.imatrix.get(name) if isinstance(state, _State) else None
        packed, w_hat = quantize_weight(w, t, imat)
        w_hat = w_hat.to(w.device)
        new = fake_quant_module(module, w_hat)
        new.gguf_type = t
        new.gguf_packed = packed
        new.kernel = f"simulated (fake-quant, GGUF {t})"
        info = {"gguf_ggml_type": float(GGUF_TYPES[t].ggml_type), "imatrix": float(imat is not None)}
        return LayerQuant(new, w_hat, int(packed.nbytes), new.kernel, info)

    def quantize_tensor(self, w: torch.Tensor, cfg: GGUF) -> tuple:
        """``(codes uint8 [rows, cols], sub-block scales, sub-block offsets or None, nbytes, dequantize)``.

        A file type uses its default block type for a lone tensor.
        """
        t = cfg.base_type
        x = np.ascontiguousarray(w.detach().float().cpu().numpy())
        packed = quantize_gguf(x, t)
        codes, scale, offset, _ = unpack_gguf(packed, t, x.shape[1])
        device = w.device

        def dequantize() -> torch.Tensor:
            return torch.from_numpy(dequantize_gguf(packed, t, x.shape[1])).to(device)

        zero = torch.from_numpy(offset) if GGUF_TYPES[t].has_offset else None
        return torch.from_numpy(codes), torch.from_numpy(scale), zero, int(packed.nbytes), dequantize

    def storage_nbytes(self, shape: tuple[int, int], cfg: GGUF) -> int:
        """Bytes of an ``(out, in)`` weight in the config's block type (blocks times block size)."""
        return gguf_nbytes(tuple(shape), cfg.base_type)

    def weight_only(self, cfg: GGUF) -> bool:
        """True: the replacement computes ``x W_hat^T``."""
        return True

    def format_bits(self, cfg: GGUF, row_length: int) -> FormatBits:
        """Bits per weight of the format; for a file type, over Llama-2-70B's tensors as llama-quantize types them."""
        if not cfg.is_mix:
            t = GGUF_TYPES[cfg.base_type]
            code = float(_CODE_BITS[t.name])
            return FormatBits(cfg.label, code, t.bits_per_weight - code, _OVERHEAD[t.name])
        shapes = llama2_70b_shapes()
        types = tensor_types({n: s[1] for n, s in shapes.items()}, cfg.type, n_gqa=8, has_imatrix=cfg.imatrix,
                             model_70b=True)
        n = sum(a * b for a, b in shapes.values())
        bits = sum(8 * gguf_nbytes(s, types[k][0]) for k, s in shapes.items())
        code = float(_CODE_BITS[cfg.base_type])
        return FormatBits(cfg.label, code, bits / n - code,
                          f"{_OVERHEAD[cfg.base_type]}; llama-quantize's higher-bit tensors (output, some attn_v "
                          "and ffn_down) as chosen for Llama-2-70B")


def llama2_70b_shapes() -> dict[str, tuple[int, int]]:
    """``(out, in)`` of every matrix of Llama-2-70B (80 layers, 8192 hidden, 28672 FFN, 8 KV heads, 32000 tokens)."""
    shapes: dict[str, tuple[int, int]] = {}
    for i in range(80):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj": (8192, 8192), p + "self_attn.k_proj": (1024, 8192),
                       p + "self_attn.v_proj": (1024, 8192), p + "self_attn.o_proj": (8192, 8192),
                       p + "mlp.gate_proj": (28672, 8192), p + "mlp.up_proj": (28672, 8192),
                       p + "mlp.down_proj": (8192, 28672)})
    shapes["lm_head"] = (32000, 8192)
    return shapes
