"""The model wrapper: :class:`QvizModel` (a module plus how to feed and run it) and the checks at its door.

Everything downstream (capture, quantize, compare) takes a ``QvizModel`` or a
plain module, which :func:`qviz.load` wraps.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qviz._checks import check_int
from qviz.models.layers import _named_layers, is_quantizable, layer_type, weight_matrix
from qviz.models.tokenizer import ByteTokenizer

KINDS = ("text-encoder", "decoder", "image-classifier", "module")

__all__ = [
    "KINDS",
    "NonFiniteInputWarning",
    "QvizModel",
    "as_module",
    "available_memory",
    "check_batch",
    "check_finite_inputs",
    "check_fits_in_memory",
    "check_materialized",
    "layer_names",
    "quantizable_layers",
]


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
        """The device of the first parameter, else of the first buffer (a kernel model's packed weights are
        buffers), else CPU."""
        for p in self.module.parameters():
            return p.device
        for b in self.module.buffers():
            return b.device
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
        inputs = self._on_device(inputs)
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

    def _on_device(self, inputs: Any) -> Any:
        """Tensors of a batch (a tensor or a dict of them) moved to the model's device where they are elsewhere."""
        dev = self.device
        if dev.type == "meta":  # offloaded weights: the dispatch hooks place the inputs
            return inputs
        if isinstance(inputs, torch.Tensor):
            return inputs if inputs.device == dev else inputs.to(dev)
        if isinstance(inputs, dict) and any(isinstance(v, torch.Tensor) and v.device != dev for v in inputs.values()):
            return {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        return inputs

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
        if not any(m.training for m in self.module.modules()):  # all in eval mode already: train()/eval() would
            return self.forward(inputs)  # set the flag on every submodule twice per batch (ms on a 30-block LLM)
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
                        NonFiniteInputWarning, stacklevel=5,  # the caller of qviz.capture (via run_hooked and batches)
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
        import psutil  # lazy: optional; /proc/meminfo is the fallback
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
