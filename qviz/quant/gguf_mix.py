"""Which GGUF type each tensor gets: llama-quantize's choice for a file type (``llama_tensor_get_type``).

A llama.cpp file type (``Q4_K_M``, ``Q2_K``, ``Q4_0``, ...) names a default block
type and a set of rules that give some tensors more bits: the output projection
(Q6_K unless the file type is Q8_0), ``attn_v`` and ``ffn_down`` in some layers
(``use_more_bits``: the first and last eighth of the layers and every third one
between), ``attn_output`` for the low-bit types. When a row does not divide into
the chosen type's blocks llama.cpp falls back (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K ->
Q8_0, Q2_K/Q3_K -> Q4_0) and, if 32 does not divide the row either, to F16.

Rules for mixture-of-experts, Falcon and the IQ1/IQ2/IQ3 file types are not
reproduced; the Llama-2-70B rule (``attn_v`` in Q5_K where it would be Q3_K or
Q4_K) applies when ``model_70b`` is set.

Tensor roles are read from Hugging Face module names (Llama/Mistral/Qwen
``q_proj ... down_proj``, GPT-2 ``c_attn``/``c_fc``/``c_proj``, BERT
``query``/``intermediate.dense``/``output.dense``, GPT-NeoX ``query_key_value``).

Examples
--------
>>> names = [f"model.layers.{i}.self_attn.v_proj" for i in range(8)]
>>> t = tensor_types({n: 4096 for n in names}, "Q4_K_M")
>>> [t[n][0] for n in names]
['Q6_K', 'Q4_K', 'Q4_K', 'Q6_K', 'Q4_K', 'Q4_K', 'Q6_K', 'Q6_K']
"""

from __future__ import annotations

import re

from kernels_numba.gguf import GGUF_TYPES

#: file type -> default tensor type (llama_ftype_get_default_type)
FILE_TYPES: dict[str, str] = {
    "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q8_0": "Q8_0", "IQ4_NL": "IQ4_NL",
    "Q2_K": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K", "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K",
    "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K",
}

_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}

# (role, pattern on the module name); the first match wins
_ROLES = [
    ("output", r"(^|\.)(lm_head|embed_out)$"),
    ("attn_qkv", r"\.(c_attn|query_key_value|qkv_proj|Wqkv)$"),
    ("attn_v", r"\.(v_proj|value)$"),
    ("attn_k", r"\.(k_proj|key)$"),
    ("attn_q", r"\.(q_proj|query)$"),
    ("attn_output", r"(\.(o_proj|out_proj)|\.attn\.c_proj|\.attention\.output\.dense|\.attention\.dense)$"),
    ("ffn_gate", r"\.(gate_proj|w1)$"),
    ("ffn_up", r"\.(up_proj|c_fc|fc1|dense_h_to_4h|w3)$|\.intermediate\.dense$"),
    ("ffn_down", r"\.(down_proj|fc2|dense_4h_to_h|w2)$|\.mlp\.c_proj$|\.\d+\.output\.dense$"),
]


def tensor_role(name: str) -> str:
    """llama.cpp's tensor category for a module name (``"other"`` when none applies).

    Examples
    --------
    >>> tensor_role("model.layers.3.mlp.down_proj"), tensor_role("transformer.h.0.attn.c_attn")
    ('ffn_down', 'attn_qkv')
    """
    for role, pattern in _ROLES:
        if re.search(pattern, name):
            return role
    return "other"


def layer_index(name: str) -> int | None:
    """The block index in a module name (``model.layers.7.mlp.up_proj`` -> 7), None outside the blocks."""
    m = re.search(r"\.(\d+)\.", f".{name}.")
    return int(m.group(1)) if m else None


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's pick of layers that get more bits: the first and last eighth, and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _impl(ft: str, base: str, role: str, i: int, n: int, n_gqa: int, has_imatrix: bool, model_70b: bool) -> str:
    """The per-role rules of ``llama_tensor_get_type_impl`` for the file types in FILE_TYPES."""
    new = base
    if role in ("attn_v", "attn_qkv"):
        if ft == "Q2_K":
            new = "Q4_K" if n_gqa >= 4 else "Q3_K"
        elif ft == "Q3_K_M":
            new = "Q5_K" if i < 2 else "Q4_K"
        elif ft == "Q3_K_L":
            new = "Q5_K"
        elif ft == "IQ4_NL" and n_gqa >= 4:
            new = "Q5_K"
        elif ft in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            new = "Q6_K"
        elif ft == "Q4_K_S" and i < 4:
            new = "Q5_K"
        if model_70b and new in ("Q3_K", "Q4_K"):
            new = "Q5_K"
    elif role == "ffn_down":
        if ft == "Q2_K":
            new = "Q3_K"
        elif ft == "Q3_K_M":
            new = "Q5_K" if i < n // 16 else "Q4_K"
        elif ft == "Q3_K_L":
            new = "Q5_K"
        elif ft == "Q4_K_M":
            if use_more_bits(i, n):
                new = "Q6_K"
        elif i < n // 8 and ft == "IQ4_NL" and not has_imatrix:
            new = "Q5_K"
        elif ft == "Q5_K_M" and use_more_bits(i, n):
            new = "Q6_K"
        elif ft == "Q4_K_S" and i < n // 8:
            new = "Q5_K"
        elif ft in ("Q4_0", "Q5_0") and has_imatrix and i < n // 8:
            new = "Q4_1" if ft == "Q4_0" else "Q5_1"
    elif role == "attn_output":
        new = {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(ft, base)
    return new


def fallback(type_name: str, cols: int) -> tuple[str | None, str | None]:
    """``(type, note)``: llama.cpp's fallback for a row of ``cols`` weights; ``(None, why)`` means F16."""
    if cols % GGUF_TYPES[type_name].block == 0:
        return type_name, None
    alt = _FALLBACK.get(type_name, type_name)
    if cols % GGUF_TYPES[alt].block == 0:
        return alt, f"row of {cols} not divisible by {GGUF_TYPES[type_name].block}: {type_name} falls back to {alt}"
    return None, (f"row of {cols} weights is not a multiple of 32 (needed by {alt}, the fallback of "
                  f"{type_name}); llama.cpp keeps such tensors in F16")


def tensor_types(
    cols: dict[str, int], file_type: str, *, n_gqa: int = 1, has_imatrix: bool = False, model_70b: bool = False,
) -> dict[str, tuple[str | None, str | None]]:
    """Type of every tensor as ``llama-quantize`` picks it for ``file_type``.

    Parameters
    ----------
    cols : dict
        Module name -> row length (input features), in model order.
    file_type : str
        A key of :data:`FILE_TYPES`.
    n_gqa : int
        Attention heads per key/value head.
    has_imatrix, model_70b : bool
        Whether an importance matrix is used; whether the Llama-70B rule applies.

    Returns
    -------
    dict
        name -> ``(type, note)``: the GGUF type (None: F16) and why it differs from the default, if it does.
    """
    if file_type not in FILE_TYPES:
        raise ValueError(f"Unknown llama.cpp file type {file_type!r}; known: {', '.join(FILE_TYPES)}.")
    base = FILE_TYPES[file_type]
    indices = {layer_index(n) for n in cols if layer_index(n) is not None}
    n_layer = max(indices) + 1 if indices else 1
    out: dict[str, tuple[str | None, str | None]] = {}
    for name, c in cols.items():
        role = tensor_role(name)
        i = layer_index(name) or 0
        if role == "output":
            new = "Q8_0" if c % GGUF_TYPES[base].block else ("Q6_K" if base != "Q8_0" else base)
        else:
            new = _impl(file_type, base, role, i, n_layer, n_gqa, has_imatrix, model_70b)
        note = None if new == base else f"{role} in {file_type}: {new}"
        final, why = fallback(new, int(c))
        out[name] = (final, why or note)
    return out
