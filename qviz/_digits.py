"""scikit-learn's digits images, split into a fixed train and test set (for the digits CNN and its data)."""

from __future__ import annotations

import functools

import numpy as np
import torch

_DIGITS_TEST_FRACTION = 0.2

__all__ = ["digits_split"]


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    from sklearn.datasets import load_digits  # lazy: scikit-learn loads only when the digits are read

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
