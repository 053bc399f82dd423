"""Attacks on a text encoder's nearest-neighbour retrieval: PGD in the input-embedding space, and HotFlip token swaps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.nn import functional as F

from qviz.models import QvizModel
from qviz.robustness._checks import as_qviz, check_eps, check_steps
from qviz.robustness.attack import EvalMode, grad_of, gradient_model, run_attack


def _check_retrieval(model: QvizModel, queries: Any, index: Any, targets: Any) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    if model.kind != "text-encoder":
        raise ValueError(
            f"Retrieval attacks need a text encoder (kind 'text-encoder', e.g. qviz.load('minilm')); "
            f"{model.name!r} is a {model.kind!r}."
        )
    if isinstance(queries, str) or not isinstance(queries, Sequence) or not queries or not all(isinstance(q, str) for q in queries):
        raise TypeError("queries must be a non-empty list of strings.")
    if not isinstance(index, torch.Tensor) or index.dim() != 2:
        raise TypeError(f"index must be a [n_items, dim] tensor of item embeddings; got {type(index).__name__}.")
    targets = torch.as_tensor(targets, dtype=torch.long)
    if targets.shape != (len(queries),):
        raise ValueError(f"targets must have one index per query ({len(queries)}); got shape {tuple(targets.shape)}.")
    if (targets < 0).any() or (targets >= index.shape[0]).any():
        raise ValueError(f"targets must index rows of index (0 .. {index.shape[0] - 1}).")
    return list(queries), index.detach().float(), targets


def embed_inputs(model: QvizModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The input embeddings ``[batch, tokens, dim]`` (float32) of a text model's tokenized ``inputs``.

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("tiny-llama")
    >>> embed_inputs(m, {"input_ids": torch.tensor([[1, 2, 3]])}).shape[:2]
    torch.Size([1, 3])
    """
    emb = model.module.get_input_embeddings()
    with torch.no_grad():
        return emb(inputs["input_ids"]).float()  # [batch, tokens, dim]


def _retrieval_loss(gm: QvizModel, mask: torch.Tensor, index: torch.Tensor, targets: torch.Tensor, temperature: float) -> Callable:
    def loss(e: torch.Tensor) -> torch.Tensor:  # e: [batch, tokens, dim]
        q = gm.forward({"inputs_embeds": e, "attention_mask": mask})  # [batch, dim]
        logits = q @ index.t() / temperature  # [batch, n_items]
        return F.cross_entropy(logits, targets, reduction="none")

    return loss


@torch.no_grad()
def _retrieve(model: QvizModel, inputs: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    q = model.run(inputs)  # [batch, dim]
    return (q.float() @ index.t()).argmax(-1)  # [batch]


def embedding_pgd(
    model: QvizModel,
    queries: Sequence[str],
    index: torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    eps: float | Sequence[float] | torch.Tensor,
    *,
    steps: int = 5,
    alpha: float | None = None,
    temperature: float = 0.05,
    ste: bool = True,
    delta: torch.Tensor | None = None,
) -> dict[str, Any]:
    """L2 PGD in a text encoder's input-embedding space against nearest-neighbour retrieval.

    The query's word embeddings ``e`` (``[tokens, dim]`` per query) get a
    perturbation ``δ`` with ``‖δ‖₂ ≤ ε`` over the whole query (padding
    excluded), chosen to push the query's embedding away from its right item
    ``index[target]`` (cross-entropy over cosine similarities / temperature).
    Success (:func:`retrieval_success_rate`) means the top-1 item is no longer
    the right one.

    Parameters
    ----------
    model
        Text encoder (``kind="text-encoder"``); a quantized one is attacked
        through straight-through gradients.
    queries
        Query texts.
    index
        ``[n_items, dim]`` item embeddings (unit norm), the retrieval corpus.
    targets
        The right item of each query, ``[n_queries]``.
    eps
        L2 radius: one number or one per query.
    steps, alpha, temperature
        PGD steps, step size (default ``2.5 * eps / steps``) and softmax temperature.
    delta
        Apply this perturbation ``[n_queries, tokens, dim]`` instead of crafting one
        (a transfer attack: pass ``result["delta"]`` crafted on another model).

    Returns
    -------
    dict
        ``inputs`` (prepared inputs with ``inputs_embeds``), ``delta`` (the
        perturbation ``[n_queries, tokens, dim]``) and ``clean`` (the clean prepared inputs).

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("minilm")                                              # doctest: +SKIP
    >>> idx = m.outputs(["a cat sat", "stocks fell"])                        # doctest: +SKIP
    >>> adv = embedding_pgd(m, ["the cat"], idx, [0], eps=2.0)               # doctest: +SKIP
    >>> retrieval_success_rate(m, adv["clean"], adv["inputs"], idx, [0])     # doctest: +SKIP
    """
    qm = as_qviz(model)
    queries, index, targets = _check_retrieval(qm, queries, index, targets)
    eps_t = check_eps(eps)
    steps = check_steps(steps)
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a positive number; got {temperature!r}.")
    alpha_t = 2.5 * eps_t / steps if alpha is None else check_eps(alpha, "alpha")
    clean = qm.prepare(queries)
    mask = clean["attention_mask"]
    e0 = embed_inputs(qm, clean)  # [batch, tokens, dim]
    keep = mask.unsqueeze(-1).to(e0.dtype)  # [batch, tokens, 1]
    if delta is not None:
        if delta.shape != e0.shape:
            raise ValueError(f"delta must have shape {tuple(e0.shape)} (queries, tokens, dim); got {tuple(delta.shape)}.")
        e_adv = e0 + delta.to(e0.dtype) * keep
    else:
        gm = gradient_model(qm, ste)
        base = _retrieval_loss(gm, mask, index, targets, float(temperature))

        def masked_loss(e: torch.Tensor) -> torch.Tensor:
            return base(e0 + (e - e0) * keep)

        with EvalMode(gm.module):
            e_adv = run_attack(masked_loss, e0, eps_t, alpha_t, steps, "l2", None, False, 0, gm, ste)
        e_adv = e0 + (e_adv - e0) * keep
    inputs = {"inputs_embeds": e_adv, "attention_mask": mask}
    return {"inputs": inputs, "delta": (e_adv - e0).detach(), "clean": clean}


def retrieval_success_rate(
    model: QvizModel, clean: dict[str, torch.Tensor], adversarial: dict[str, torch.Tensor], index: torch.Tensor, targets: Any
) -> float:
    """Share of queries retrieved right on clean inputs whose top-1 item changes under attack.

    ``clean`` and ``adversarial`` are prepared inputs (token ids, or
    ``inputs_embeds`` as :func:`embedding_pgd` returns). For a transfer
    attack whose perturbation was crafted with another model's embeddings,
    pass the crafted ``delta`` back through :func:`embedding_pgd` so it is
    added to this model's own embeddings.

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("minilm")                                              # doctest: +SKIP
    >>> retrieval_success_rate(m, clean, adv, idx, targets)                  # doctest: +SKIP
    0.4
    """
    moved, right = retrieval_success_counts(model, clean, adversarial, index, targets)
    return moved / right if right else float("nan")


def retrieval_success_counts(
    model: QvizModel, clean: dict[str, torch.Tensor], adversarial: dict[str, torch.Tensor], index: torch.Tensor, targets: Any
) -> tuple[int, int]:
    """``(moved, right)``: the counts behind :func:`retrieval_success_rate` (its sample size is ``right``).

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("minilm")                                              # doctest: +SKIP
    >>> retrieval_success_counts(m, clean, adv, idx, targets)                # doctest: +SKIP
    (4, 10)
    """
    qm = as_qviz(model)
    targets = torch.as_tensor(targets, dtype=torch.long)
    right = _retrieve(qm, clean, index.float()) == targets
    moved = _retrieve(qm, adversarial, index.float()) != targets
    return int((moved & right).sum()), int(right.sum())


def token_substitution(
    model: QvizModel,
    queries: Sequence[str],
    index: torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    max_tokens: int = 3,
    *,
    temperature: float = 0.05,
    ste: bool = True,
    candidates: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Gradient-guided token substitution (HotFlip) against nearest-neighbour retrieval.

    Greedy: at each of ``max_tokens`` rounds, the first-order estimate of the
    loss change of replacing token ``t`` at position ``i`` by ``v``,
    ``(E[v] - e_i) · ∇_{e_i}``, picks one (position, token) per query among
    positions not yet changed (special tokens and padding are never touched);
    the swap is applied to the discrete tokens and the real model decides. A
    query counts as flipped at ``k`` swaps once its top-1 item has changed.

    Parameters
    ----------
    max_tokens
        Largest number of swapped tokens per query (>= 1).
    candidates
        Token ids allowed as replacements; default: every whole-word,
        alphabetic token of the vocabulary.

    Returns
    -------
    dict
        ``input_ids`` after each round ``[max_tokens, n_queries, tokens]``,
        ``flipped`` ``[max_tokens, n_queries]`` bool (cumulative), ``right``
        ``[n_queries]`` (retrieved right when clean), ``success`` ``[max_tokens]``
        (share of the right queries flipped with at most k swaps).

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("minilm")                                              # doctest: +SKIP
    >>> out = token_substitution(m, ["the cat sat"], idx, [0], max_tokens=2)  # doctest: +SKIP
    >>> out["success"].shape                                                 # doctest: +SKIP
    torch.Size([2])
    """
    qm = as_qviz(model)
    queries, index, targets = _check_retrieval(qm, queries, index, targets)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an int >= 1 (how many tokens may be swapped); got {max_tokens!r}.")
    clean = qm.prepare(queries)
    ids = clean["input_ids"].clone()  # [batch, tokens]
    mask = clean["attention_mask"]
    emb = qm.module.get_input_embeddings()
    table = emb.weight.detach().float()  # [vocab, dim]
    if candidates is None:
        candidates = _word_tokens(qm)
    special = torch.tensor(sorted(set(getattr(qm.tokenizer, "all_special_ids", []) or [])), dtype=torch.long)
    editable = mask.bool() & ~torch.isin(ids, special)  # [batch, tokens]
    gm = gradient_model(qm, ste)
    loss_fn = _retrieval_loss(gm, mask, index, targets, float(temperature))
    cand_table = table[candidates]  # [n_cand, dim]
    right = _retrieve(qm, clean, index) == targets
    flipped = torch.zeros(max_tokens, len(queries), dtype=torch.bool)
    history = []
    done = ~right
    with EvalMode(gm.module):
        for k in range(max_tokens):
            e = table[ids]  # [batch, tokens, dim]
            g = grad_of(loss_fn, e, gm, ste)  # [batch, tokens, dim]
            gain = torch.einsum("btd,vd->btv", g, cand_table) - (g * e).sum(-1, keepdim=True)  # [batch, tokens, n_cand]
            gain = gain.masked_fill(~editable.unsqueeze(-1), float("-inf"))
            gain = gain.masked_fill(candidates.view(1, 1, -1) == ids.unsqueeze(-1), float("-inf"))
            best = gain.flatten(1).argmax(1)  # [batch]
            pos, tok = best // len(candidates), candidates[best % len(candidates)]
            rows = torch.arange(len(queries))
            change = ~done & torch.isfinite(gain.flatten(1).max(1).values)
            ids[rows[change], pos[change]] = tok[change]
            editable[rows[change], pos[change]] = False
            now = _retrieve(qm, {**clean, "input_ids": ids}, index) != targets
            done = done | (now & right)
            flipped[k] = done & right
            history.append(ids.clone())
    n_right = int(right.sum())
    success = flipped.sum(1).double() / n_right if n_right else torch.full((max_tokens,), float("nan"), dtype=torch.float64)
    return {"input_ids": torch.stack(history), "flipped": flipped, "right": right, "success": success}


def _word_tokens(model: QvizModel) -> torch.Tensor:
    """Ids of whole-word alphabetic tokens (no '##' pieces, no special or unused tokens)."""
    tok = model.tokenizer
    vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
    special = set(getattr(tok, "all_special_ids", []) or [])
    ids = [i for t, i in vocab.items() if t.isalpha() and t.isascii() and i not in special and len(t) > 1]
    if not ids:
        raise ValueError(f"The tokenizer of {model.name!r} has no whole-word tokens to substitute; pass candidates=.")
    return torch.tensor(sorted(ids), dtype=torch.long)
