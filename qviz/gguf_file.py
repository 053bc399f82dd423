"""GGUF files: :func:`inspect_gguf` (what a file stores, per tensor) and :func:`export_gguf` (write one).

Both go through ``gguf`` (gguf-py, llama.cpp's own Python library): the
reader's tensor table for :func:`inspect_gguf`, ``GGUFWriter`` for
:func:`export_gguf`, which writes a Llama-architecture decoder quantized with
:class:`qviz.GGUF` configs so that llama.cpp loads it: the architecture's
metadata, the tokenizer, each GGUF layer's packed bytes as they are, every other
matrix in F16 and every vector (norms) in F32.

Examples
--------
>>> import qviz
>>> q = qviz.quantize(qviz.load("tiny-llama"), qviz.GGUF("Q8_0"), progress=False)   # doctest: +SKIP
>>> qviz.export_gguf(q, "tiny.gguf")                                                 # doctest: +SKIP
>>> qviz.inspect_gguf("tiny.gguf").attrs["bits_per_weight"]                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from qviz.models.gguf import GGUF_MAGIC  # noqa: F401  (its old home)
from qviz.models.gguf import field_strings
from qviz.models.gguf import open_gguf_reader as _open_reader  # the whole-file check qviz.load uses too

__all__ = ["inspect_gguf", "export_gguf", "read_gguf_tensors"]

LLAMA_TYPES = ("llama", "mistral")


def _field_value(field: Any) -> Any:
    import gguf

    types = field.types
    if not types or not field.data:
        return None
    if types[0] == gguf.GGUFValueType.STRING:
        return field_strings(field)[0]
    if types[0] == gguf.GGUFValueType.ARRAY:
        return f"array of {len(field.data)}"
    value = field.parts[field.data[0]]
    return value.tolist()[0] if hasattr(value, "tolist") else value


def inspect_gguf(path: str | os.PathLike) -> xr.Dataset:
    """What a GGUF file stores: each tensor's type, shape, weights, bytes and bits per weight.

    Parameters
    ----------
    path : str or path-like
        A ``.gguf`` file.

    Returns
    -------
    xr.Dataset
        dim ``tensor`` (the file's tensor names, in file order): ``type`` (``"Q4_1"``,
        ``"F32"``, ...), ``shape`` (PyTorch order, ``"49152x576"``), ``n_weights``,
        ``nbytes``, ``bits_per_weight``. attrs: ``bits_per_weight`` (the whole file's
        tensor data, every tensor counted), ``bits_per_weight_matrices`` (2-D tensors
        only, what llama.cpp's "BPW" line reports for the weights), ``n_tensors``,
        ``type_counts`` (JSON), ``metadata`` (JSON of the scalar metadata), ``path``.

    Raises
    ------
    FileNotFoundError, ValueError
        No file; not a GGUF file (wrong magic); a truncated or corrupt file; an unsupported version.

    Examples
    --------
    >>> ds = qviz.inspect_gguf("model.gguf")          # doctest: +SKIP
    >>> ds.type.to_series().value_counts()            # doctest: +SKIP
    """
    reader = _open_reader(path)
    names, types, shapes, n_w, n_b, dims = [], [], [], [], [], []
    for t in reader.tensors:
        names.append(t.name)
        types.append(t.tensor_type.name)
        shape = [int(s) for s in reversed(list(t.shape))]  # ggml lists ne0 (the row) first
        shapes.append("x".join(str(s) for s in shape))
        dims.append(len(shape))
        n_w.append(int(t.n_elements))
        n_b.append(int(t.n_bytes))
    n_w_arr, n_b_arr = np.array(n_w, np.int64), np.array(n_b, np.int64)
    bpw = 8.0 * n_b_arr / np.maximum(n_w_arr, 1)
    mats = np.array(dims) >= 2
    counts: dict[str, int] = {}
    for ty in types:
        counts[ty] = counts.get(ty, 0) + 1
    meta = {k: _field_value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    meta = {k: v for k, v in meta.items() if isinstance(v, (int, float, str, bool)) and k != "tokenizer.chat_template"}
    ds = xr.Dataset(
        {
            "type": ("tensor", np.array(types, dtype=object), {"long_name": "GGML storage type"}),
            "shape": ("tensor", np.array(shapes, dtype=object), {"long_name": "shape (PyTorch order, rows x row length)"}),
            "n_weights": ("tensor", n_w_arr, {"long_name": "weights in the tensor", "units": "1"}),
            "nbytes": ("tensor", n_b_arr, {"long_name": "stored bytes", "units": "byte"}),
            "bits_per_weight": ("tensor", bpw, {"long_name": "stored bits per weight, scales included", "units": "bit"}),
        },
        coords={"tensor": np.array(names, dtype=object)},
    )
    ds.attrs.update(
        title=f"GGUF file {Path(os.fspath(path)).name}",
        path=str(path),
        n_tensors=len(names),
        bits_per_weight=float(8.0 * n_b_arr.sum() / max(int(n_w_arr.sum()), 1)),
        bits_per_weight_matrices=float(8.0 * n_b_arr[mats].sum() / max(int(n_w_arr[mats].sum()), 1)),
        type_counts=json.dumps(counts),
        metadata=json.dumps(meta),
    )
    return ds


def read_gguf_tensors(path: str | os.PathLike, names: Any = None) -> dict[str, np.ndarray]:
    """Tensors of a GGUF file dequantized to float32 by gguf-py, in PyTorch order (``[rows, row length]``).

    Examples
    --------
    >>> w = read_gguf_tensors("model.gguf", ["blk.0.attn_q.weight"])   # doctest: +SKIP
    """
    from gguf.quants import dequantize

    reader = _open_reader(path)
    wanted = None if names is None else set([names] if isinstance(names, str) else names)
    out = {}
    for t in reader.tensors:
        if wanted is not None and t.name not in wanted:
            continue
        shape = tuple(int(s) for s in reversed(list(t.shape)))
        out[t.name] = np.asarray(dequantize(t.data, t.tensor_type), np.float32).reshape(shape)
    if wanted is not None and wanted - set(out):
        from qviz._errors import did_you_mean

        missing = sorted(wanted - set(out))[0]
        raise KeyError(f"{missing!r} is not a tensor of {str(path)!r}.{did_you_mean(missing, [t.name for t in reader.tensors])}")
    return out


# --------------------------------------------------------------------------- export


def _add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int, pre: str) -> str:
    """Write the vocabulary llama.cpp needs; returns the tokenizer model written (``gpt2`` or ``none``)."""
    import gguf

    from qviz.models import ByteTokenizer

    if isinstance(tokenizer, ByteTokenizer):
        tokens = ByteTokenizer.gguf_tokens()
        types = [gguf.TokenType.NORMAL] * 256 + [gguf.TokenType.CONTROL] * len(ByteTokenizer.special_tokens)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        # llama.cpp refuses a BPE vocabulary without a merges key, and gguf-py cannot write an empty
        # array: one merge of two NUL bytes stands for "no merges" (NUL never occurs in text, and the
        # merged string is not in the vocabulary, so llama.cpp falls back to the bytes). transformers
        # refuses that merge; qviz's loader knows this vocabulary and gives a ByteTokenizer back.
        writer.add_token_merges([f"{tokens[0]} {tokens[0]}"])
        writer.add_bos_token_id(tokenizer.bos_id)
        writer.add_eos_token_id(tokenizer.eos_id)
        writer.add_pad_token_id(tokenizer.pad_id)
        writer.add_add_bos_token(True)
        return "gpt2"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") == "BPE":
        n = max(vocab_size, len(tokenizer))
        tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
        special = set(getattr(tokenizer, "all_special_ids", []))
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list([t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)])
        writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(n)])
        merges = model.get("merges", [])
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
        for key, fn in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                        ("pad_token_id", writer.add_pad_token_id), ("unk_token_id", writer.add_unk_token_id)):
            if getattr(tokenizer, key, None) is not None:
                fn(int(getattr(tokenizer, key)))
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, str):
            writer.add_chat_template(template)
        return "gpt2"
    writer.add_tokenizer_model("none")
    return "none"


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _permute_rows(n_rows: int, n_head: int) -> np.ndarray:
    """The row order llama.cpp expects for q/k (its rotary pairs halves differently from Hugging Face's)."""
    return np.arange(n_rows).reshape(n_head, 2, n_rows // n_head // 2).swapaxes(1, 2).reshape(-1)


def export_gguf(qmodel: Any, path: str | os.PathLike, *, tokenizer_pre: str = "default") -> Path:
    """Write a (GGUF-quantized) Llama-architecture decoder as a GGUF file llama.cpp can load.

    Layers quantized with :class:`qviz.GGUF` are written as their packed bytes
    (exactly what was measured); every other matrix (full precision, or another
    qviz method's dequantized weight) in F16; vectors (norms) in F32. ``q_proj`` and
    ``k_proj`` rows are reordered as llama.cpp's rotary embedding expects
    (``convert_hf_to_gguf``'s permutation; it moves whole rows, so packed blocks
    stay intact). The metadata (block count, sizes, heads, RoPE base, norm eps,
    file type) and the tokenizer (byte-level BPE vocabularies and merges; qviz's
    byte tokenizer as 256 byte tokens) are included.

    Parameters
    ----------
    qmodel : QvizModel
        A Llama-architecture decoder, usually from ``qviz.quantize(model, qviz.GGUF(...))``. Not changed.
    path : str or path-like
        Where to write (an existing file is replaced).
    tokenizer_pre : str
        llama.cpp's pre-tokenizer name (``"default"``, ``"smollm"``, ``"llama-bpe"``, ...).

    Returns
    -------
    pathlib.Path
        The file written.

    Examples
    --------
    >>> q = qviz.quantize(qviz.load("tiny-llama"), qviz.GGUF("Q8_0"), progress=False)   # doctest: +SKIP
    >>> qviz.export_gguf(q, "tiny-q8_0.gguf")                                           # doctest: +SKIP
    """
    import gguf
    import torch

    from qviz.models import QvizModel

    if not isinstance(qmodel, QvizModel):
        raise TypeError(f"export_gguf takes a qviz model (qviz.load / qviz.quantize); got {type(qmodel).__name__}.")
    module = qmodel.module
    config = getattr(module, "config", None)
    arch = getattr(config, "model_type", None)
    if qmodel.kind != "decoder" or arch not in LLAMA_TYPES:
        raise ValueError(
            f"export_gguf writes Llama-architecture decoders ({', '.join(LLAMA_TYPES)}); {qmodel.name!r} is a "
            f"{qmodel.kind} of type {arch!r}. Use llama.cpp's convert_hf_to_gguf.py for other architectures."
        )
    n_layer = int(config.num_hidden_layers)
    n_head = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // n_head)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    record = getattr(qmodel, "quantization", None)
    cfg = getattr(record, "config", None)
    base = getattr(cfg, "type", None)
    ftype_name = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}.get(base, base)
    ftype = getattr(gguf.LlamaFileType, f"MOSTLY_{ftype_name}", gguf.LlamaFileType.MOSTLY_F16)

    out = Path(os.fspath(path))
    writer = gguf.GGUFWriter(str(out), "llama")
    try:
        writer.add_name(str(qmodel.name))
        writer.add_block_count(n_layer)
        writer.add_context_length(int(getattr(config, "max_position_embeddings", 2048)))
        writer.add_embedding_length(int(config.hidden_size))
        writer.add_feed_forward_length(int(config.intermediate_size))
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_rope_dimension_count(head_dim)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_freq_base(_rope_theta(config))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_vocab_size(int(config.vocab_size))
        writer.add_file_type(int(ftype))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_tokenizer(writer, qmodel.tokenizer, int(config.vocab_size), tokenizer_pre)

        # a GGUF layer's weight, under any of its names: a quantized head tied to the token embedding is
        # written once, as token_embd in the head's type (what llama-quantize writes for a tied model)
        quantized = {id(sub.weight): sub for sub in module.modules() if getattr(sub, "gguf_packed", None) is not None}
        seen = set()
        for key, tensor in module.state_dict(keep_vars=True).items():
            if id(tensor) in seen and (id(tensor) in quantized or not key.startswith("lm_head")):
                continue
            seen.add(id(tensor))
            gname = tmap.get_name(key, try_suffixes=(".weight", ".bias"))
            if gname is None:
                continue  # buffers llama.cpp does not store (rotary tables)
            owner = quantized.get(id(tensor)) if key.endswith(".weight") else None
            packed = getattr(owner, "gguf_packed", None)
            perm = None
            if key.endswith("self_attn.q_proj.weight"):
                perm = _permute_rows(tensor.shape[0], n_head)
            elif key.endswith("self_attn.k_proj.weight"):
                perm = _permute_rows(tensor.shape[0], n_kv)
            if packed is not None:
                data = packed if perm is None else packed[perm]
                writer.add_tensor(gname, np.ascontiguousarray(data),
                                  raw_dtype=gguf.GGMLQuantizationType[owner.gguf_type])
                continue
            arr = tensor.detach().to(torch.float32).cpu().numpy()
            if perm is not None:
                arr = arr[perm]
            arr = np.ascontiguousarray(arr.astype(np.float16) if arr.ndim >= 2 else arr)
            writer.add_tensor(gname, arr)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return out
