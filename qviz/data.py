"""Offline calibration and held-out evaluation data for every embedded model.

Text models get real English sentences (Python's standard-library docstrings,
split by a hash of the text into calibration and held-out parts); pretrained
decoders get the same text as token batches (:func:`token_batches`: one token
stream cut into equal chunks, each starting with BOS, as llama.cpp's
``perplexity`` reads text), the calibration chunks from the first half of the
calibration sentences and the held-out chunks from the held-out sentences plus
the second half (disjoint, deterministic); the digits
CNN gets scikit-learn's bundled 8×8 digit images, split into train (which the
calibration set is drawn from) and a held-out test part.

Examples
--------
>>> import qviz
>>> m = qviz.load("minilm")                             # doctest: +SKIP
>>> qviz.calibration_data(m, n=2)                       # doctest: +SKIP
['Convert a numeric value to an IntEnum member.', ...]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from qviz import _corpus
from qviz._digits import digits_split
from qviz.models.model import QvizModel
from qviz.models.tokenizer import ByteTokenizer
from qviz.models.zoo import load

CALIB_SEQ_LEN = 128
"""Tokens per calibration chunk for pretrained decoders."""
EVAL_SEQ_LEN = 256
"""Tokens per held-out chunk for pretrained decoders (the second half of each is scored)."""


def _check_n(n: int | None, available: int, what: str) -> int:
    if n is None:
        return available
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int (how many inputs); got {n!r}.")
    if n > available:
        raise ValueError(f"n={n} is more than the {available} {what} available. Pass n <= {available}.")
    return int(n)


def _token_ids(model: QvizModel, text: str) -> list[int]:
    tok = model.tokenizer
    if isinstance(tok, ByteTokenizer):
        return list(text.encode("utf-8"))
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _bos_id(model: QvizModel) -> int | None:
    tok = model.tokenizer
    bos = getattr(tok, "bos_id", None)
    return int(bos) if bos is not None else getattr(tok, "bos_token_id", None)


def token_batches(
    model: QvizModel | str, texts: Sequence[str], seq_len: int = EVAL_SEQ_LEN, n: int | None = None
) -> dict[str, torch.Tensor]:
    """``texts`` as one token stream cut into ``n`` chunks of ``seq_len`` tokens, each starting with BOS.

    The texts are joined with spaces, tokenized once (no special tokens) and
    cut into consecutive pieces of ``seq_len - 1`` tokens, each prefixed with the
    tokenizer's BOS token (where it has one; else pieces of ``seq_len``). A
    remainder shorter than a chunk is dropped, unless the stream holds less
    than one chunk: then it is the only, shorter, chunk.

    Parameters
    ----------
    model
        A decoder with a tokenizer.
    texts
        Non-empty list of strings (or one string).
    seq_len
        Tokens per chunk (>= 2).
    n
        How many chunks (default: all there are).

    Returns
    -------
    dict
        ``input_ids`` and ``attention_mask``, both ``[n, seq_len]`` int64.

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("tiny-llama")
    >>> b = token_batches(m, ["Some text to read, and more of it."], seq_len=8)
    >>> tuple(b["input_ids"].shape), int(b["input_ids"][0, 0])
    ((4, 8), 256)
    """
    model = load(model) if isinstance(model, str) else model
    if model.tokenizer is None:
        raise TypeError(f"{model.name!r} has no tokenizer; token_batches needs a text model.")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) or not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"texts must be a non-empty list of strings; got {type(texts).__name__} {str(texts)[:60]!r}.")
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 2:
        raise ValueError(f"seq_len must be an int >= 2 (tokens per chunk); got {seq_len!r}.")
    ids = _token_ids(model, " ".join(texts))
    bos = _bos_id(model)
    body = seq_len - 1 if bos is not None else seq_len
    if len(ids) < 2:
        raise ValueError(f"The texts hold {len(ids)} token(s); pass more text (at least two tokens).")
    pieces = [ids[i : i + body] for i in range(0, len(ids) - body + 1, body)] or [ids]
    k = _check_n(n, len(pieces), f"chunks of {seq_len} tokens")
    rows = torch.tensor([([bos] if bos is not None else []) + p for p in pieces[:k]], dtype=torch.long)
    return {"input_ids": rows, "attention_mask": torch.ones_like(rows)}


def _decoder_text(split: str) -> tuple[str, ...]:
    """Sentences for pretrained decoders: calibration = first half of the calibration split;
    held-out = the held-out split, then the calibration split's second half (never calibrated on)."""
    calib = _corpus.split("calib")
    half = len(calib) // 2
    return calib[:half] if split == "calib" else _corpus.split("eval") + calib[half:]


def _token_decoder(model: QvizModel) -> bool:
    return model.kind == "decoder" and model.tokenizer is not None and not model.random_weights


def calibration_data(
    model: QvizModel | str, n: int = 64, *, texts: Sequence[str] | None = None, seq_len: int = CALIB_SEQ_LEN
) -> list[str] | torch.Tensor | dict[str, torch.Tensor]:
    """Offline calibration inputs for ``model``: sentences for text models, token batches for decoders, images for the CNN.

    Parameters
    ----------
    model
        A :class:`~qviz.QvizModel` or a name for :func:`qviz.load`.
    n
        How many inputs (sentences, chunks or images).
    texts
        Pretrained decoders only: your own text to cut into token batches
        instead of the built-in English sentences.
    seq_len
        Pretrained decoders only: tokens per chunk.

    Returns
    -------
    list of str (text encoders and the random-weight decoders), a dict of
    ``input_ids``/``attention_mask`` ``[n, seq_len]`` (pretrained decoders such
    as ``smollm2-135m``; see :func:`token_batches`) or ``torch.Tensor``
    ``[n, 1, 8, 8]`` (digits-cnn).

    Examples
    --------
    >>> import qviz
    >>> qviz.calibration_data("digits-cnn", n=8).shape    # doctest: +SKIP
    torch.Size([8, 1, 8, 8])
    """
    model = load(model) if isinstance(model, str) else model
    if _token_decoder(model):
        return token_batches(model, _decoder_text("calib") if texts is None else texts, seq_len, n)
    if texts is not None:
        raise ValueError("texts= is for pretrained decoders; for other models pass your own inputs directly.")
    if model.kind in ("text-encoder", "decoder") and model.tokenizer is not None:
        pool = _corpus.split("calib")
        return list(pool[: _check_n(n, len(pool), "calibration sentences")])
    if model.name == "digits-cnn":
        x, _ = digits_split("train")
        return x[: _check_n(n, len(x), "training images")]
    raise ValueError(
        f"qviz has no default calibration data for {model.name!r} (kind {model.kind!r}). "
        "Pass your own inputs (a tensor, a list of texts or a DataLoader) wherever a batch is taken."
    )


def eval_data(
    model: QvizModel | str, n: int | None = None, *, texts: Sequence[str] | None = None, seq_len: int = EVAL_SEQ_LEN
) -> tuple[list[str] | torch.Tensor | dict[str, torch.Tensor], torch.Tensor | None]:
    """Held-out inputs (never used for calibration) and their labels, if the task has labels.

    Returns ``(sentences, None)`` for text encoders and the random-weight
    decoders, ``(token batches [n, seq_len], None)`` for pretrained decoders
    (``texts=`` your own held-out text; see :func:`calibration_data`) and
    ``(images, labels)`` for digits-cnn.

    Examples
    --------
    >>> import qviz
    >>> x, y = qviz.eval_data("digits-cnn")              # doctest: +SKIP
    >>> len(x) == len(y)                                 # doctest: +SKIP
    True
    """
    model = load(model) if isinstance(model, str) else model
    if _token_decoder(model):
        return token_batches(model, _decoder_text("eval") if texts is None else texts, seq_len, n), None
    if texts is not None:
        raise ValueError("texts= is for pretrained decoders; for other models pass your own inputs directly.")
    if model.kind in ("text-encoder", "decoder") and model.tokenizer is not None:
        pool = _corpus.split("eval")
        return list(pool[: _check_n(n, len(pool), "held-out sentences")]), None
    if model.name == "digits-cnn":
        x, y = digits_split("test")
        k = _check_n(n, len(x), "test images")
        return x[:k], y[:k]
    raise ValueError(
        f"qviz has no default evaluation data for {model.name!r} (kind {model.kind!r}). "
        "Pass your own held-out inputs and labels."
    )
