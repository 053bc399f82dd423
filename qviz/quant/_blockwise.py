"""Sequential calibration inputs computed block by block: about one pass of the calibration set in all.

A sequential method (GPTQ; ``Method.sequential``) calibrates each layer on the
inputs it receives once every layer before it is quantized. Taken literally
that is a pass of the whole calibration set through the whole model per layer
(:func:`~qviz.activations.engine.capture_inputs` with one name): 211 passes for
SmolLM2-135M. The GPTQ reference implementation (IST-DASLab/gptq, AutoGPTQ)
computes the same inputs block by block, and so does :class:`SequentialInputs`:

1. the model runs on each calibration batch until it calls its first repeated
   block (:func:`qviz.models.blocks.repeated_blocks`); that call's positional
   and keyword inputs (hidden states, attention mask, position embeddings) are
   kept, and the rest of the model does not run;
2. the layers of block ``i`` get their inputs from runs of block ``i`` alone on
   its kept inputs, with the block's already-quantized layers in place: one run
   per group of layers that read the same tensor (q/k/v, gate/up:
   :func:`~qviz.quant.methods._model.find_input_groups`), stopped as soon as
   the group's layers have run;
3. block ``i``, quantized, runs once more on its inputs; its outputs become
   block ``i + 1``'s inputs (a KV cache the model passes is dropped: every
   block sees a fresh forward, as in a full pass).

Each layer receives what the per-layer path would capture (the same batches,
padding masks and row sample), so the quantized model is the same. Layers
outside the blocks (``lm_head``) are captured by the per-layer path, one full
pass each. Where the structure does not allow the shortcut (no repeated blocks;
on a probe batch a block that does not run once, in order; a block whose input
is not the previous block's output, or whose other arguments differ from block
0's; layers quantized out of block order; convolutions inside blocks), every
layer takes the per-layer path and :attr:`SequentialInputs.reason` says why.

Memory: the kept inputs of one block for the whole calibration set, on the
model's device (:attr:`SequentialInputs.cached_bytes`): the hidden states,
``tokens × hidden`` values in the model's dtype, plus what the model passes
beside them (a ``[batch, 1, tokens, tokens]`` mask where padding needs one,
rotary cos/sin); while a block's outputs replace them, one batch's output more.
SmolLM2-135M with 16 calibration chunks of 128 tokens: 4.79 MB (the hidden
states 16 × 128 × 576 float32 are 4.72 MB of it).

Examples
--------
>>> import qviz
>>> m = qviz.load("tiny-llama")
>>> q = qviz.quantize(m, qviz.GPTQ(bits=4, group_size=None), calib=qviz.calibration_data(m, n=4), progress=False)
>>> s = q.quantization.extra["sequential"]
>>> s["mode"], s["blocks"], s["full_passes"]
('blockwise', 2, 1)
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qviz.activations.engine import (
    CAPTURE_BATCH,
    MAX_ROWS,
    _Reservoir,
    _token_rows,
    capture_inputs,
)
from qviz.activations.hooks import hooks
from qviz.models import QvizModel, layer_type
from qviz.models.blocks import Blocks, repeated_blocks

__all__ = ["SequentialInputs"]


class _Stop(Exception):
    """Raised from a hook to end a forward pass early: a module's forward cannot be stopped from outside otherwise."""


@dataclass
class _Entry:
    """One calibration batch's inputs to the current block."""

    args: tuple  # positional inputs; hidden states [batch, tokens, hidden] first unless passed by keyword
    kwargs: dict[str, Any]
    mask: torch.Tensor | None  # [batch, tokens] bool, real (non-padding) tokens of the batch


# --------------------------------------------------------------------------- a block call's inputs and output


def _hidden(args: tuple, kwargs: dict[str, Any]) -> Any:
    """The hidden states a block call reads: its first positional input, or ``hidden_states=``."""
    return args[0] if args else kwargs.get("hidden_states")


def _with_hidden(args: tuple, kwargs: dict[str, Any], hidden: torch.Tensor) -> tuple[tuple, dict[str, Any]]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _output_hidden(output: Any) -> Any:
    """The hidden states a block returns: the output itself, or its first element (older transformers' tuples)."""
    if isinstance(output, (tuple, list)) and output:
        return output[0]
    return output


def _is_kv_cache(value: Any) -> bool:
    cache_utils = sys.modules.get("transformers.cache_utils")  # a model can pass a Cache only once transformers is imported
    return cache_utils is not None and isinstance(value, cache_utils.Cache)


def _without_cache(args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """A block call's inputs with any KV cache dropped: re-running a block must not append to the keys it attends over."""
    args = tuple(None if _is_kv_cache(v) else v for v in args)
    kwargs = {k: (None if _is_kv_cache(v) else v) for k, v in kwargs.items()}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return args, kwargs


def _same(a: Any, b: Any) -> bool:
    """``a`` and ``b`` are one object or hold equal values (tensors, tuples, dicts, plain scalars)."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    plain = (type(None), bool, int, float, str)
    return isinstance(a, plain) and type(a) is type(b) and a == b


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for x in obj:
            yield from _tensors(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x)


def _nbytes(entries: Iterable[_Entry]) -> int:
    """Bytes held by the entries' tensors, each storage counted once (the batches share their masks and positions)."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for e in entries:
        for t in _tensors((e.args, e.kwargs, e.mask)):
            key = (str(t.device), t.untyped_storage().data_ptr())
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


# --------------------------------------------------------------------------- hooks on blocks


@contextlib.contextmanager
def _block_hooks(blocks: Sequence[nn.Module], pre: Callable | None = None, post: Callable | None = None) -> Iterator[None]:
    """``pre(i, args, kwargs)`` before and ``post(i, output)`` after each call of block ``i``; removed in ``finally``.

    (:func:`qviz.hooks` hooks layers, with their positional inputs only; a block's keyword inputs are read here.)
    """
    handles = []
    try:
        for i, block in enumerate(blocks):
            if pre is not None:
                handles.append(block.register_forward_pre_hook(
                    lambda mod, args, kwargs, i=i: pre(i, args, kwargs), with_kwargs=True))
            if post is not None:
                handles.append(block.register_forward_hook(lambda mod, args, output, i=i: post(i, output)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _eval(module: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for a block run outside :meth:`QvizModel.run`, restored on exit as ``run`` does."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _structure_problem(calls: list[list[Any]], blocks: Blocks) -> str | None:
    """Why block-by-block inputs would differ from a full pass, from one probe forward's block calls; None: they would not.

    ``calls`` holds ``[block index, args, kwargs, output]`` per call, in call order.
    """
    order = [c[0] for c in calls]
    if order != list(range(len(blocks))):
        return (f"on a probe batch the blocks of {blocks.name} ran in the order {order[:8]}{'...' if len(order) > 8 else ''}, "
                f"not once each in list order (0..{len(blocks) - 1})")
    _, args0, kwargs0, _ = calls[0]
    if not isinstance(_hidden(args0, kwargs0), torch.Tensor):
        return f"block 0 of {blocks.name} takes no hidden-state tensor as its first input"
    for i in range(1, len(calls)):
        _, args, kwargs, _ = calls[i]
        if _hidden(args, kwargs) is not _output_hidden(calls[i - 1][3]):
            return f"the input of block {i} of {blocks.name} is not the output of block {i - 1}"
        if len(args) != len(args0) or not all(map(_same, args[1:], args0[1:])) or not _same(
                {k: v for k, v in kwargs.items() if k != "hidden_states"},
                {k: v for k, v in kwargs0.items() if k != "hidden_states"}):
            return f"block {i} of {blocks.name} is called with other arguments than block 0 (a per-block mask or position?)"
    return None


# --------------------------------------------------------------------------- the input source


class SequentialInputs:
    """The calibration inputs of sequential layers, as :func:`qviz.quantize`'s layer loop asks for them.

    ``source(name)`` returns what ``capture_inputs(model, calib, [name], max_rows)[name]`` would
    return at that moment (float32 rows ``[tokens, in]`` on the CPU), computed block by block
    (see the module docstring). Ask for the layers in ``order`` and replace each one before
    asking for the next, as the driver does.

    Parameters
    ----------
    model : QvizModel
        The copy being quantized (its layers are replaced between calls).
    calib
        Calibration data, readable more than once.
    order : sequence of str
        Every layer the driver quantizes, in its order (the sequential ones and the others).
    sequential : iterable of str
        The layers it will ask inputs for.
    max_rows, batch_size
        As for :func:`~qviz.activations.engine.capture_inputs`.

    Attributes
    ----------
    reason : str or None
        Why every layer takes the per-layer path; None when blocks are used.
    full_passes, stopped_passes, block_calls : int
        Full passes of the calibration set (per-layer captures), passes stopped at block 0,
        and calls of one block on one kept batch.
    cached_bytes : int
        The most bytes the kept block inputs held.
    """

    def __init__(self, model: QvizModel, calib: Any, order: Sequence[str], sequential: Iterable[str],
                 max_rows: int = MAX_ROWS, batch_size: int = CAPTURE_BATCH) -> None:
        self.model, self.calib, self.max_rows, self.batch_size = model, calib, max_rows, batch_size
        wanted = set(sequential)
        self.sequential = [n for n in order if n in wanted]
        self.blocks = repeated_blocks(model)
        where = {n: self.blocks.index_of(n) for n in order} if self.blocks else {}
        self.block_of: dict[str, int] = {n: i for n, i in where.items() if i is not None}
        self.reason = self._plan_problem(list(order))
        self.full_passes = self.stopped_passes = self.block_calls = self.cached_bytes = 0
        self._probed = False
        self._stop_early = False
        self._group_of: dict[str, list[str]] = {}
        self._entries: list[_Entry] | None = None  # inputs of block self._at, one entry per calibration batch
        self._at = 0
        self._kept: dict[str, torch.Tensor] = {}  # captured with an earlier layer of their group
        self._done: set[str] = set()

    @property
    def mode(self) -> str:
        """``"blockwise"`` or ``"per-layer"``."""
        return "per-layer" if self.reason else "blockwise"

    def summary(self) -> dict[str, Any]:
        """How the inputs were computed: mode, reason, blocks, passes, block calls, cached bytes."""
        return {"mode": self.mode, "reason": self.reason or "", "blocks": len(self.blocks) if self.blocks else 0,
                "full_passes": self.full_passes, "stopped_passes": self.stopped_passes,
                "block_calls": self.block_calls, "cached_bytes": self.cached_bytes}

    def _plan_problem(self, order: list[str]) -> str | None:
        """Why the layer order or types rule blocks out (checked before any forward), or None."""
        if self.blocks is None:
            return "the model has no repeated blocks (an nn.ModuleList of same-type blocks)"
        inside = [k for k, n in enumerate(order) if n in self.block_of]
        if not inside:
            return None  # nothing in the blocks: every layer is captured on its own anyway
        span = order[inside[0]: inside[-1] + 1]
        stray = [n for n in span if n not in self.block_of]
        if stray:
            return f"layer {stray[0]!r} lies outside {self.blocks.name} but is quantized between layers of its blocks"
        idx = [self.block_of[n] for n in span]
        if any(b < a for a, b in itertools.pairwise(idx)):
            return f"the layers of {self.blocks.name} are not quantized block after block"
        conv = [n for n in self.sequential if n in self.block_of
                and layer_type(self.model.module.get_submodule(n)) != "linear"]
        if conv:
            return f"{conv[0]!r} is a {layer_type(self.model.module.get_submodule(conv[0]))} layer inside a block"
        return None

    # ----------------------------------------------------------------- the driver's call
    def __call__(self, name: str) -> torch.Tensor:
        """The inputs of layer ``name`` on the calibration set, every layer before it as it is now."""
        if name in self._kept:
            return self._kept.pop(name)
        if self.reason is None and name in self.block_of and not self._probed:
            self._probe()
        if self.reason is not None or name not in self.block_of:
            self.full_passes += 1
            return capture_inputs(self.model, self.calib, [name], self.max_rows, self.batch_size)[name]
        self._reach(self.block_of[name])
        return self._capture_group(name)

    # ----------------------------------------------------------------- steps
    def _probe(self) -> None:
        """One forward on two calibration inputs: the layers' input groups and the blocks' call structure."""
        from qviz.quant.methods._model import find_input_groups

        self._probed = True
        names = [n for n in self.sequential if n in self.block_of]
        calls: list[list[Any]] = []

        def pre(i: int, args: tuple, kwargs: dict) -> None:
            calls.append([i, args, kwargs, None])

        def post(i: int, output: Any) -> None:
            for c in reversed(calls):
                if c[0] == i:
                    c[3] = output
                    break

        try:
            with _block_hooks(self.blocks.modules, pre, post), hooks(self.model, layers=names, include_norms=False) as rec:
                groups = find_input_groups(self.model, names, self.calib, check=False)
        except ValueError as err:
            self.reason = f"the probe batch did not reach every layer ({str(err).splitlines()[0]})"
            return
        self.reason = _structure_problem(calls, self.blocks)
        self._stop_early = all(rec.calls.get(n, 0) == 1 for n in names)  # no layer runs twice in its block
        for g in groups:
            for n in g.layers:
                self._group_of[n] = [m for m in g.layers if self.block_of[m] == self.block_of[n]]

    def _reach(self, i: int) -> None:
        if self._entries is None:
            self._catch()
        if i < self._at:
            raise RuntimeError(f"Block {i} was asked for after block {self._at}; ask for layers in block order.")
        while self._at < i:
            self._advance()

    def _catch(self) -> None:
        """Block 0's inputs for every calibration batch; the model stops there."""
        caught: list[tuple[tuple, dict]] = []

        def pre(i: int, args: tuple, kwargs: dict) -> None:
            caught.append(_without_cache(args, kwargs))
            raise _Stop

        entries = []
        with _block_hooks(self.blocks.modules[:1], pre):
            for inputs in self.model.batches(self.calib, self.batch_size):
                try:
                    self.model.run(inputs)
                except _Stop:
                    pass
                else:
                    raise RuntimeError(f"A calibration batch ran through the model without calling {self.blocks.name}.0.")
                args, kwargs = caught.pop()
                entries.append(_Entry(args, kwargs, self.model.token_mask(inputs)))
        self.stopped_passes += 1
        self._entries, self._at = entries, 0
        self.cached_bytes = max(self.cached_bytes, _nbytes(entries))

    def _advance(self) -> None:
        """Run the current block, as quantized so far, on its inputs: its outputs become the next block's inputs."""
        block = self.blocks.modules[self._at]
        entries = self._entries
        finished = False
        try:
            with torch.no_grad(), _eval(self.model.module):
                for k, e in enumerate(entries):
                    y = _output_hidden(block(*e.args, **e.kwargs))
                    self.block_calls += 1
                    entries[k] = _Entry(*_with_hidden(e.args, e.kwargs, y), e.mask)  # the old hidden states go now
            finished = True
        finally:
            if not finished:  # interrupted half way: start again from block 0 if asked again
                self._entries, self._at = None, 0
        self._at += 1
        self.cached_bytes = max(self.cached_bytes, _nbytes(entries))

    def _capture_group(self, name: str) -> torch.Tensor:
        """Inputs of ``name`` and of the layers of its block that read the same tensor, from one run of the block."""
        group = [n for n in self._group_of.get(name, [name]) if n not in self._done and n != name]
        group = [name, *group]
        store = {n: _Reservoir(self.max_rows, seed=0) for n in group}  # seed 0: what capture_inputs(..., [n]) draws
        fired: set[str] = set()
        mask: list[torch.Tensor | None] = [None]

        def keep(n: str, mod: nn.Module, inputs: tuple, output: Any) -> None:
            store[n].add(_token_rows(inputs[0].detach(), mask[0]).float().cpu())  # [real tokens, in]
            fired.add(n)
            if self._stop_early and len(fired) == len(group):
                raise _Stop  # the rest of the block does not change these inputs

        block = self.blocks.modules[self._at]
        with torch.no_grad(), _eval(self.model.module), hooks(self.model, keep, layers=group, include_norms=False):
            for e in self._entries:
                mask[0] = e.mask
                fired.clear()
                try:
                    block(*e.args, **e.kwargs)
                except _Stop:
                    pass
                self.block_calls += 1
        out = {}
        for n in group:
            if store[n].rows is None:
                raise RuntimeError(
                    f"Layer {n!r} never ran on the calibration batch, so it has no inputs. "
                    "Is it used in the model's forward pass? Leave it out with skip=[...]."
                )
            out[n] = store[n].rows
        self._done.update(group)
        self._kept.update({n: out[n] for n in group[1:]})
        return out[name]
