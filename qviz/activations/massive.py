"""Massive activations of a decoder's residual stream: which channels, how large, from which block, on which tokens.

Pretrained LLMs carry a few residual-stream channels whose values reach
thousands of times the typical size, from some block on, almost always on the
first token (BOS) of a sequence (Sun et al., "Massive activations in large
language models", 2024). They are read here where the residual stream enters
each block's first normalisation layer (and the final one), through
:func:`qviz.hooks`, keeping per channel only the running largest ``|x|`` and the
token it sat on, never the activations themselves.

Examples
--------
>>> import qviz
>>> m = qviz.load("tiny-llama")
>>> ds = qviz.massive_activations(m, ["Some text to read."], top_k=2)
>>> ds.channel.dims, int(ds.sizes["block"])
(('block', 'rank'), 3)
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
import xarray as xr

from qviz.activations.hooks import hooks
from qviz.models import QvizModel, is_norm, load

__all__ = ["massive_activations"]

_BLOCK = re.compile(r"\.(\d+)\.")


def _stream_norms(model: QvizModel) -> dict[str, int]:
    """Name -> block index of the norms that read the residual stream entering each block, and the final norm."""
    norms = [(n, m) for n, m in model.module.named_modules() if n and is_norm(m)]
    firsts: dict[int, str] = {}
    final = None
    for name, _ in norms:
        hit = _BLOCK.search(name)
        if hit is None:
            final = name
        else:
            firsts.setdefault(int(hit.group(1)), name)  # the first norm of each block reads its input
    out = {name: i for i, name in sorted(firsts.items())}
    if final is not None:
        out[final] = len(firsts)
    if not out:
        raise ValueError(f"{model.name!r} has no normalisation layers; massive_activations needs a transformer decoder.")
    return out


@torch.no_grad()
def massive_activations(model: QvizModel | str, batch: Any, *, top_k: int = 4, batch_size: int = 8) -> xr.Dataset:
    """The largest residual-stream channels entering each block, their size, and the token they sit on.

    Parameters
    ----------
    model
        A decoder (or encoder) with per-block normalisation layers.
    batch
        Inputs: texts, token batches (``qviz.calibration_data(model)``) or an iterable of them.
    top_k
        Channels reported per block.
    batch_size
        Inputs per forward pass when ``batch`` is a list.

    Returns
    -------
    xr.Dataset
        dims ``block`` (the residual stream entering block ``i``; the last is
        the final norm's input) and ``rank``. Variables: ``channel``,
        ``absmax`` (largest ``|x|`` over every token), ``token_position``
        (position in its sequence), ``token`` (the token's text),
        ``median_channel_absmax`` and ``ratio`` (largest channel absmax over the
        median one), ``layer`` (the hooked norm).

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("smollm2-135m")                                       # doctest: +SKIP
    >>> ds = qviz.massive_activations(m, qviz.calibration_data(m, n=4))     # doctest: +SKIP
    >>> int(ds.channel.sel(block=20, rank=0)), int(ds.token_position.sel(block=20, rank=0))  # doctest: +SKIP
    (507, 0)
    """
    model = load(model) if not isinstance(model, QvizModel) else model
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k must be a positive int (channels per block); got {top_k!r}.")
    names = _stream_norms(model)
    best: dict[str, torch.Tensor] = {}  # name -> [channels] running max |x|
    where: dict[str, torch.Tensor] = {}  # name -> [channels, 2] (position, token id) of it
    current: dict[str, Any] = {}

    def record(name: str, module: Any, inputs: tuple, output: Any) -> None:
        x = inputs[0].detach().float().abs()  # [b, t, channels]
        mask = current["mask"].to(x.device)  # [b, t] bool
        x = x.masked_fill(~mask[..., None], -1.0)
        per_tok, pos = x.max(dim=0)  # [t, channels]
        val, t_idx = per_tok.max(dim=0)  # [channels]
        b_idx = pos.gather(0, t_idx[None])[0]  # [channels]
        ids = current["ids"].to(x.device)[b_idx, t_idx]  # [channels]; the batch may sit on another device
        if name not in best:
            best[name], where[name] = val.cpu(), torch.stack([t_idx, ids], -1).cpu()
            return
        better = val.cpu() > best[name]
        best[name] = torch.where(better, val.cpu(), best[name])
        where[name][better] = torch.stack([t_idx, ids], -1).cpu()[better]

    n_inputs = 0
    with hooks(model, record, layers=list(names)):
        for inputs in model.batches(batch, batch_size):
            ids = inputs["input_ids"] if isinstance(inputs, dict) else inputs
            mask = model.token_mask(inputs) if isinstance(inputs, dict) else None
            current["ids"] = ids
            current["mask"] = (mask if mask is not None else torch.ones_like(ids, dtype=torch.bool)).to(ids.device)
            model.run(inputs)
            n_inputs += int(ids.shape[0])
    layer_names = list(names)
    k = min(top_k, int(best[layer_names[0]].numel()))
    shape = (len(layer_names), k)
    channel = np.zeros(shape, np.int64)
    absmax = np.zeros(shape, np.float64)
    position = np.zeros(shape, np.int64)
    token_id = np.zeros(shape, np.int64)
    median = np.zeros(len(layer_names))
    for i, name in enumerate(layer_names):
        v = best[name]
        top = torch.topk(v, k)
        channel[i], absmax[i] = top.indices.numpy(), top.values.double().numpy()
        position[i], token_id[i] = where[name][top.indices, 0].numpy(), where[name][top.indices, 1].numpy()
        median[i] = float(v.median())
    tokens = np.array([[_token_text(model, int(t)) for t in row] for row in token_id], dtype=object)
    ds = xr.Dataset(
        {
            "channel": (("block", "rank"), channel, {"long_name": "residual-stream channel", "units": "index"}),
            "absmax": (("block", "rank"), absmax, {"long_name": "largest |activation| over every token", "units": "1"}),
            "token_position": (("block", "rank"), position, {"long_name": "position of that token in its sequence (0: first / BOS)", "units": "token"}),
            "token": (("block", "rank"), tokens, {"long_name": "the token the largest |activation| sat on"}),
            "median_channel_absmax": (("block",), median, {"long_name": "median over channels of the channel absmax", "units": "1"}),
            "ratio": (("block",), absmax[:, 0] / np.maximum(median, 1e-12), {"long_name": "largest channel absmax / median channel absmax", "units": "1"}),
            "layer": (("block",), np.array(layer_names, dtype=object), {"long_name": "the norm whose input is read"}),
        },
        coords={"block": np.array(list(names.values())), "rank": np.arange(k)},
    )
    ds["block"].attrs = {"long_name": "residual stream entering this block (the last: the final norm's input)"}
    ds.attrs.update({"model": model.name, "n_inputs": n_inputs, "title": f"massive activations of {model.name}"})
    return ds


def _token_text(model: QvizModel, token_id: int) -> str:
    tok = model.tokenizer
    if tok is None:
        return str(token_id)
    return str(tok.convert_ids_to_tokens([token_id])[0])
