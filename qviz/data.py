"""Offline calibration and held-out evaluation data for every embedded model.

Text models get real English sentences (Python's standard-library docstrings,
split by a hash of the text into calibration and held-out parts); the digits
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

import functools

import numpy as np
import torch

from qviz import _corpus
from qviz.models import QvizModel, load

_DIGITS_TEST_FRACTION = 0.2


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [n, 1, 8, 8] in [0, 1]
    y = torch.tensor(bunch.target, dtype=torch.long)  # [n]
    order = np.random.default_rng(0).permutation(len(x))
    return x, y, order


def digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [n, 1, 8, 8], labels [n])`` of scikit-learn's digits: ``"train"`` or ``"test"``.

    The split is a fixed permutation (seed 0); 20% is held out as the test set.

    Examples
    --------
    >>> x, y = digits_split("test")
    >>> tuple(x.shape[1:]), int(y.max())
    ((1, 8, 8), 9)
    """
    x, y, order = _digits()
    n_test = int(round(len(x) * _DIGITS_TEST_FRACTION))
    if split == "train":
        idx = order[n_test:]
    elif split == "test":
        idx = order[:n_test]
    else:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
    idx = torch.from_numpy(np.sort(idx))
    return x[idx].clone(), y[idx].clone()


def _check_n(n: int | None, available: int, what: str) -> int:
    if n is None:
        return available
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int (how many inputs); got {n!r}.")
    if n > available:
        raise ValueError(f"n={n} is more than the {available} {what} available. Pass n <= {available}.")
    return int(n)


def calibration_data(model: QvizModel | str, n: int = 64) -> list[str] | torch.Tensor:
    """Offline calibration inputs for ``model``: sentences for text models, images for the CNN.

    Parameters
    ----------
    model
        A :class:`~qviz.QvizModel` or a name for :func:`qviz.load`.
    n
        How many inputs.

    Returns
    -------
    list of str (text models) or ``torch.Tensor`` ``[n, 1, 8, 8]`` (digits-cnn).

    Examples
    --------
    >>> import qviz
    >>> qviz.calibration_data("digits-cnn", n=8).shape    # doctest: +SKIP
    torch.Size([8, 1, 8, 8])
    """
    model = load(model) if isinstance(model, str) else model
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


def eval_data(model: QvizModel | str, n: int | None = None) -> tuple[list[str] | torch.Tensor, torch.Tensor | None]:
    """Held-out inputs (never used for calibration) and their labels, if the task has labels.

    Returns ``(sentences, None)`` for text models and ``(images, labels)`` for digits-cnn.

    Examples
    --------
    >>> import qviz
    >>> x, y = qviz.eval_data("digits-cnn")              # doctest: +SKIP
    >>> len(x) == len(y)                                 # doctest: +SKIP
    True
    """
    model = load(model) if isinstance(model, str) else model
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
