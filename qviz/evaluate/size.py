"""True storage size of a quantized model, and its projection to any model size.

Two views of the same accounting:

* :func:`model_size` reads what :func:`qviz.quantize` recorded (every byte of
  every quantized layer: packed codes, float16 scales, uint8 zero points,
  bitsandbytes absmax and code tables, explicit input scales) plus every
  parameter left in full precision at its own dtype; :func:`serialized_size`
  writes the model's stored tensors with safetensors and counts the bytes, the
  independent check.
* :func:`format_bits` gives a format's bits per weight split into the code
  bits and the overhead (with the overhead said in words), and
  :func:`project_size` / :func:`projection_table` scale it to any number of
  weights: the familiar "70B model" table.

Examples
--------
>>> import qviz
>>> round(qviz.project_size(70e9, "fp16") / 1e9, 1)
140.0
>>> f = format_bits(qviz.BnbNF4(blocksize=64))
>>> f.code_bits, f.overhead_bits
(4.0, 0.5)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from qviz.quant.method import FormatBits

__all__ = [
    "BASELINES",
    "FormatBits",
    "format_bits",
    "model_size",
    "project_size",
    "projection_table",
    "serialized_size",
    "storage_tensors",
]

BASELINES: dict[str, int] = {"fp32": 32, "fp16": 16, "bf16": 16}
"""Unquantized formats by name, with their bits per weight."""

DEFAULT_ROW_LENGTH = 8192
"""Row length (input features) assumed for per-channel overheads: Llama-2-70B's hidden size."""


def _check_row_length(row_length: Any) -> int:
    if not isinstance(row_length, (int, np.integer)) or isinstance(row_length, bool) or row_length < 1:
        raise ValueError(f"row_length must be a positive int (input features of a layer); got {row_length!r}.")
    return int(row_length)


def format_bits(cfg: Any, *, row_length: int = DEFAULT_ROW_LENGTH) -> FormatBits:
    """Bits per weight of ``cfg``'s storage format, split into code bits and overhead.

    Each method declares its accounting (:meth:`~qviz.quant.method.Method.format_bits`).
    It is the one :func:`qviz.quantize` records: RTN/GPTQ/AWQ/QAT
    codes packed tightly, one float16 scale (and, asymmetric, one uint8 zero
    point) per group or row; LLM.int8 one float32 absmax per row; NF4/FP4 one
    float32 absmax per block (double quantization: one uint8 per block plus one
    float32 per 256 blocks). Per-layer constants (the 16-entry NF4 code table,
    64 bytes) are left out: they vanish at model scale.

    Parameters
    ----------
    cfg
        A quantization config or a baseline name (``"fp32"``, ``"fp16"``, ``"bf16"``).
    row_length
        Input features of a layer, for per-row overheads (default 8192, Llama-2-70B).

    Examples
    --------
    >>> import qviz
    >>> format_bits(qviz.RTN(bits=4, group_size=128)).total_bits
    4.1875
    >>> format_bits(qviz.BnbNF4(double_quant=True)).overhead
    'a uint8 absmax per block of 64 weights plus a float32 absmax per 256 blocks'
    """
    from qviz.quant.config import QuantConfig

    row_length = _check_row_length(row_length)
    if isinstance(cfg, str):
        if cfg not in BASELINES:
            from qviz._errors import did_you_mean

            raise ValueError(
                f"Unknown format {cfg!r}.{did_you_mean(cfg, BASELINES)} Pass a quantization config "
                f"(qviz.RTN(bits=4), qviz.BnbNF4(), ...) or one of {', '.join(BASELINES)}."
            )
        return FormatBits(cfg, float(BASELINES[cfg]), 0.0, "none")
    if isinstance(cfg, QuantConfig):
        from qviz.quant.registry import method_for  # lazy: loads every method (torch, numba)

        return method_for(cfg).format_bits(cfg, row_length)  # each method declares its own accounting
    raise TypeError(
        f"cfg must be a quantization config (qviz.RTN(...), qviz.BnbNF4(), ...) or one of "
        f"{', '.join(BASELINES)}; got {type(cfg).__name__}."
    )


def _check_n(n_params: Any, name: str = "n_params") -> float:
    try:
        n = float(n_params)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number of weights (e.g. 70e9); got {n_params!r}.") from err
    if not math.isfinite(n) or n < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (e.g. 70e9 for a 70B model); got {n_params!r}.")
    return n


def project_size(
    n_params: float, cfg: Any, *, row_length: int = DEFAULT_ROW_LENGTH, fp_params: float = 0, fp_bits: int = 16
) -> int:
    """Bytes of a model with ``n_params`` weights stored in ``cfg``'s format, overhead included.

    Parameters
    ----------
    n_params
        Number of quantized weights (70e9 for a 70B model).
    cfg
        A config or a baseline name (``"fp16"``, ...); see :func:`format_bits`.
    row_length
        Input features per layer, for per-row overheads.
    fp_params, fp_bits
        Parameters kept in full precision (embeddings, norms) and their width.

    Examples
    --------
    >>> import qviz
    >>> [round(project_size(70e9, c) / 1e9, 2) for c in ("fp16", qviz.RTN(bits=8, group_size=None))]
    [140.0, 70.03]
    >>> round(project_size(70e9, qviz.RTN(bits=2, group_size=128)) / 1e9, 2)
    19.14
    """
    n = _check_n(n_params)
    extra = _check_n(fp_params, "fp_params")
    if not isinstance(fp_bits, int) or fp_bits < 1:
        raise ValueError(f"fp_bits must be a positive int (16 or 32); got {fp_bits!r}.")
    f = format_bits(cfg, row_length=row_length)
    return int(math.ceil(n * f.total_bits / 8 + extra * fp_bits / 8))


def projection_table(
    n_params: float = 70e9, configs: Any = None, *, row_length: int = DEFAULT_ROW_LENGTH
) -> xr.Dataset:
    """The size table for a model of ``n_params`` weights: one row per format, overhead spelled out.

    Default formats: FP32, FP16, INT8 (LLM.int8), RTN 8/4/3/2-bit (group 128),
    NF4 (block 64, without and with double quantization), FP4.

    Returns
    -------
    xr.Dataset
        dim ``config``; ``size_bytes``, ``size_gb``, ``bits_per_weight``,
        ``code_bits``, ``overhead_bits``, ``overhead_gb`` and ``overhead`` (words).

    Examples
    --------
    >>> t = projection_table(70e9)
    >>> float(t.size_gb.sel(config="fp16"))
    140.0
    """
    from qviz.quant.config import RTN, BnbFP4, BnbInt8, BnbNF4

    if configs is None:
        configs = [
            "fp32", "fp16", BnbInt8(), RTN(bits=8, group_size=None, symmetric=True),
            RTN(bits=4, group_size=128), BnbNF4(blocksize=64), BnbNF4(blocksize=64, double_quant=True),
            BnbFP4(blocksize=64), RTN(bits=3, group_size=128), RTN(bits=2, group_size=128),
        ]
    n = _check_n(n_params)
    rows = [format_bits(c, row_length=row_length) for c in configs]
    labels = [r.label for r in rows]
    if len(set(labels)) != len(labels):
        raise ValueError(f"configs must be distinct; got the labels {labels}.")
    size = np.array([project_size(n, c, row_length=row_length) for c in configs], dtype=np.int64)
    return xr.Dataset(
        {
            "size_bytes": ("config", size, {"long_name": "projected size", "units": "B"}),
            "size_gb": ("config", size / 1e9, {"long_name": "projected size", "units": "GB (1e9 B)"}),
            "bits_per_weight": ("config", np.array([r.total_bits for r in rows]), {"long_name": "bits per weight, overhead included", "units": "bit"}),
            "code_bits": ("config", np.array([r.code_bits for r in rows]), {"long_name": "bits of a weight code", "units": "bit"}),
            "overhead_bits": ("config", np.array([r.overhead_bits for r in rows]), {"long_name": "overhead per weight", "units": "bit"}),
            "overhead_gb": ("config", np.array([n * r.overhead_bits / 8e9 for r in rows]), {"long_name": "overhead", "units": "GB (1e9 B)"}),
            "overhead": ("config", np.array([r.overhead for r in rows], dtype=object), {"long_name": "what the overhead is"}),
        },
        coords={"config": np.array(labels, dtype=object)},
        attrs={"n_params": n, "row_length": row_length, "title": f"size of a {n / 1e9:g}B-weight model per format"},
    )


# --------------------------------------------------------------------------- measured size of a model


def _module_of(model: Any) -> Any:
    from qviz.models import as_module

    return as_module(model)


def model_size(model: Any) -> dict[str, float]:
    """Bytes of a model as stored: quantized layers as recorded, everything else at its dtype.

    For a model from :func:`qviz.quantize` this is ``qmodel.quantization``'s
    accounting; for a full-precision model, the bytes of its parameters and buffers.

    Returns
    -------
    dict
        ``total_bytes``, ``quantized_bytes`` (weights of quantized layers),
        ``other_bytes`` (everything kept in full precision), ``quantized_weights``
        (number of weights in quantized layers) and ``bits_per_weight`` (over
        the quantized layers; the full-precision width for an unquantized model).

    Examples
    --------
    >>> from torch import nn
    >>> model_size(nn.Linear(4, 2))["total_bytes"]
    40
    """
    record = getattr(model, "quantization", None)
    module = _module_of(model)
    if record is None:
        total, n, bits = 0, 0, []
        for t in [*module.parameters(), *module.buffers()]:
            total += t.numel() * t.element_size()
            if t.is_floating_point():
                n += t.numel()
                bits.append(8 * t.element_size())
        return {
            "total_bytes": int(total), "quantized_bytes": 0, "other_bytes": int(total),
            "quantized_weights": 0, "bits_per_weight": float(max(bits) if bits else 32),
        }
    q = int(record.quantized_bytes)
    n_w = int(sum(r.n_weights for r in record.layers.values()))
    return {
        "total_bytes": int(record.total_bytes),
        "quantized_bytes": q,
        "other_bytes": int(record.total_bytes) - q,
        "quantized_weights": n_w,
        "bits_per_weight": float(record.bits_per_weight),
    }


def storage_tensors(model: Any) -> dict[str, Any]:
    """The tensors that hold the model as stored (its state dict, minus what need not be stored).

    Raises ``ValueError`` when a quantized layer is simulated (fake-quant): its
    state holds float weights, not the quantized format, so its stored bytes
    cannot be read off the model. Quantize with ``packed=True`` (RTN) or a
    bitsandbytes config for real storage.

    Examples
    --------
    >>> from torch import nn
    >>> sorted(storage_tensors(nn.Linear(2, 2)))
    ['bias', 'weight']
    """
    module = _module_of(model)
    record = getattr(model, "quantization", None)
    drop: set[str] = set()
    if record is not None:
        simulated = [n for n, r in record.layers.items() if r.kernel.startswith("simulated")]
        if simulated:
            raise ValueError(
                f"{len(simulated)} quantized layer(s) (e.g. {simulated[0]!r}) are simulated (fake-quant): they hold "
                "float weights, so the model's tensors are not its quantized storage. Quantize with "
                "qviz.quantize(..., packed=True) (RTN) or a bitsandbytes config to serialise real storage."
            )
        for name in record.layers:
            sub = module.get_submodule(name)
            if getattr(sub, "symmetric", False) and hasattr(sub, "zero") and hasattr(sub, "packed"):
                drop.add(f"{name}.zero")  # a symmetric zero point is the constant 2**(bits-1)
    out = {}
    for k, v in module.state_dict().items():
        if k in drop or not hasattr(v, "contiguous"):
            continue
        out[k] = v.detach().contiguous()
    return out


def serialized_size(model: Any) -> dict[str, int]:
    """Bytes of the model's stored tensors written with safetensors.

    Returns
    -------
    dict
        ``file_bytes`` (the whole safetensors file, header included) and
        ``payload_bytes`` (the tensor data alone).

    Examples
    --------
    >>> from torch import nn
    >>> serialized_size(nn.Linear(4, 2))["payload_bytes"]
    40
    """
    from safetensors.torch import save

    tensors = storage_tensors(model)
    # Tied weights (one tensor under two names) are stored once, as the accounting counts them.
    seen: set[tuple[int, tuple[int, ...], Any]] = set()
    for k, v in list(tensors.items()):
        key = (v.untyped_storage().data_ptr(), tuple(v.shape), v.dtype)
        if v.numel() and key in seen:
            del tensors[k]
        seen.add(key)
    blob = save(tensors)
    payload = sum(v.numel() * v.element_size() for v in tensors.values())
    return {"file_bytes": len(blob), "payload_bytes": int(payload)}
