"""``qviz.generate``: greedy answers of a decoder to prompts, and where two configs' answers first differ.

Decoding is greedy (the most likely token each step), so answers are
deterministic and a quantized copy's answer can be compared token by token
with full precision's. Chat models (a tokenizer with a chat template) get each
prompt as one user turn with the generation prompt appended; other decoders
get the raw text after BOS.

Examples
--------
>>> import qviz
>>> m = qviz.load("tiny-llama")
>>> out = qviz.generate(m, ["Hi"], max_new_tokens=4)
>>> len(out), len(out[0].token_ids)
(1, 4)
>>> qviz.generate(m, [], max_new_tokens=4)
Traceback (most recent call last):
...
ValueError: prompts is empty; pass a list of at least one string, e.g. ['What is the capital of France?'].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from qviz.models import ByteTokenizer, QvizModel, load

__all__ = ["Answer", "check_max_new_tokens", "check_prompts", "first_divergence", "generate"]


@dataclass(frozen=True)
class Answer:
    """One prompt's greedy answer.

    Attributes
    ----------
    prompt : str
        The prompt as given.
    text : str
        The answer, decoded (special tokens dropped).
    token_ids : tuple of int
        The generated token ids (the end-of-turn token included, if reached).
    tokens : tuple of str
        Those tokens as strings.
    """

    prompt: str
    text: str
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]

    def __str__(self) -> str:
        return self.text


def check_prompts(prompts: Any) -> list[str]:
    """The prompts as a list of strings, or a clear error (one string, an empty list, a non-string entry).

    Examples
    --------
    >>> check_prompts(("Hi", "Hello"))
    ['Hi', 'Hello']
    """
    if isinstance(prompts, str):
        raise TypeError(f"prompts must be a list of strings, not one string; pass [{prompts!r}].")
    if not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of strings; got {type(prompts).__name__}.")
    if len(prompts) == 0:
        raise ValueError("prompts is empty; pass a list of at least one string, e.g. ['What is the capital of France?'].")
    bad = [(i, type(p).__name__) for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        i, kind = bad[0]
        raise TypeError(f"prompts must all be strings; prompts[{i}] is a {kind}. Pass text, e.g. ['Hello'].")
    return list(prompts)


def check_max_new_tokens(n: Any) -> int:
    """``n`` if it is a positive int (tokens to generate per prompt), else a ValueError naming it.

    Examples
    --------
    >>> check_max_new_tokens(16)
    16
    """
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"max_new_tokens must be a positive int (tokens to generate per prompt); got {n!r}.")
    return n


def _prompt_ids(model: QvizModel, prompt: str, chat: bool) -> list[int]:
    tok = model.tokenizer
    if isinstance(tok, ByteTokenizer):
        return [tok.bos_id, *prompt.encode("utf-8")]
    if chat:
        enc = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
        ids = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc
        return [int(i) for i in ids]
    ids = list(tok(prompt, add_special_tokens=False)["input_ids"])
    bos = getattr(tok, "bos_token_id", None)
    return ([bos] if bos is not None else []) + ids


def _stop_ids(model: QvizModel) -> set[int]:
    tok = model.tokenizer
    if isinstance(tok, ByteTokenizer):
        return {tok.eos_id}
    stops = {getattr(tok, "eos_token_id", None)}
    cfg = getattr(model.module, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None)
    stops.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return {int(s) for s in stops if s is not None}


def _decode(model: QvizModel, ids: list[int]) -> tuple[str, tuple[str, ...]]:
    tok = model.tokenizer
    if isinstance(tok, ByteTokenizer):
        keep = [i for i in ids if i < 256]
        return bytes(keep).decode("utf-8", errors="replace"), tuple(tok.convert_ids_to_tokens(ids))
    return tok.decode(ids, skip_special_tokens=True), tuple(tok.convert_ids_to_tokens(ids))


@torch.no_grad()
def _greedy(model: QvizModel, ids: list[int], max_new_tokens: int, stops: set[int]) -> list[int]:
    """Greedy decoding by the module's own ``generate`` (its key/value cache, whatever the transformers version)."""
    import warnings

    module = model.module
    x = torch.tensor([ids], device=model.device)  # [1, prompt]
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the checkpoint's sampling defaults do not apply to greedy decoding
            out = module.generate(
                input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens, do_sample=False,
                num_beams=1, eos_token_id=sorted(stops), pad_token_id=min(stops), temperature=None, top_p=None, top_k=None,
            )  # [1, prompt + new]
    finally:
        module.train(was_training)
    return [int(i) for i in out[0, len(ids) :]]


def generate(
    model: QvizModel | str, prompts: Sequence[str], max_new_tokens: int = 32, *, chat: bool | None = None
) -> list[Answer]:
    """Greedy, deterministic answers of ``model`` to ``prompts``.

    Parameters
    ----------
    model
        A decoder (:func:`qviz.load`, or a quantized copy from :func:`qviz.quantize`).
    prompts
        Non-empty list of strings.
    max_new_tokens
        Tokens to generate per prompt at most (> 0); an answer stops early at
        the end-of-turn / end-of-text token.
    chat
        Apply the tokenizer's chat template (default: True when it has one).

    Returns
    -------
    list of :class:`Answer`, one per prompt, in order.

    Raises
    ------
    ValueError
        An empty prompt list, ``max_new_tokens`` <= 0, or a model that is not a decoder.
    TypeError
        Prompts that are not strings.

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("smollm2-135m")                                      # doctest: +SKIP
    >>> qviz.generate(m, ["What is the capital of France?"])[0].text       # doctest: +SKIP
    'The capital of France is Paris.'
    >>> qviz.generate(qviz.load("tiny-llama"), ["Hi"], max_new_tokens=0)
    Traceback (most recent call last):
    ...
    ValueError: max_new_tokens must be a positive int (tokens to generate per prompt); got 0.
    """
    model = load(model) if not isinstance(model, QvizModel) else model
    prompts = check_prompts(prompts)
    max_new_tokens = check_max_new_tokens(max_new_tokens)
    if model.kind != "decoder" or model.tokenizer is None:
        raise ValueError(
            f"generate needs a decoder with a tokenizer; {model.name!r} is a {model.kind!r}. "
            "Load one, e.g. qviz.load('smollm2-135m')."
        )
    if chat is not None and not isinstance(chat, bool):
        raise TypeError(f"chat must be True, False or None; got {chat!r}.")
    use_chat = bool(getattr(model.tokenizer, "chat_template", None)) if chat is None else chat
    if use_chat and not getattr(model.tokenizer, "chat_template", None):
        raise ValueError(f"chat=True, but {model.name!r}'s tokenizer has no chat template; pass chat=False.")
    stops = _stop_ids(model)
    answers = []
    for p in prompts:
        ids = _greedy(model, _prompt_ids(model, p, use_chat), max_new_tokens, stops)
        text, tokens = _decode(model, ids)
        answers.append(Answer(p, text.strip(), tuple(ids), tokens))
    return answers


def first_divergence(a: Answer | Sequence[int], b: Answer | Sequence[int]) -> int:
    """Index of the first generated token where two answers differ; -1 when they are the same.

    A shorter answer that is a prefix of the longer one diverges at its length.

    Examples
    --------
    >>> first_divergence([1, 2, 3], [1, 2, 4]), first_divergence([1, 2], [1, 2]), first_divergence([1], [1, 5])
    (2, -1, 1)
    """
    x = list(a.token_ids if isinstance(a, Answer) else a)
    y = list(b.token_ids if isinstance(b, Answer) else b)
    for i, (u, v) in enumerate(zip(x, y)):
        if u != v:
            return i
    return -1 if len(x) == len(y) else min(len(x), len(y))
