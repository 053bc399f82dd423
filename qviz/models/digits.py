"""The digits CNN: its architecture, its training on scikit-learn's digits, and its checksummed cache."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from qviz._digits import digits_split
from qviz.models.catalogue import KNOWN_MODELS, cache_dir
from qviz.models.model import QvizModel

__all__ = ["DIGITS_CNN_VERSION", "DigitsCNN", "train_digits_cnn"]


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


def train_digits_cnn(epochs: int = 40, seed: int = 0) -> DigitsCNN:
    """Train :class:`DigitsCNN` on the training split of scikit-learn's digits (a few seconds)."""
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


def load_digits_cnn() -> QvizModel:
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
