"""Small models and a message recorder for the widget-state tests (no browser)."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from torch import nn


class OutlierNet(nn.Module):
    """A tiny 3-layer MLP whose first layer sees an input with two large channels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.LayerNorm(64)
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 96)
        self.fc3 = nn.Linear(96, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, 64] -> [batch, 10]
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(self.norm(x))))))


@pytest.fixture(scope="session")
def outlier_net():
    return OutlierNet()


@pytest.fixture(scope="session")
def outlier_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 64, generator=g)
    x[:, 5] *= 40.0  # outlier channels at the input of the norm
    x[:, 17] *= 12.0
    return x


@contextlib.contextmanager
def recorded(widget):
    """Record what ``widget`` sends to the front end: a list of ``(json_bytes, buffer_bytes)``."""
    sent: list[tuple[int, int]] = []
    original = widget.comm.send

    def send(data=None, metadata=None, buffers=None, **kw):
        n_json = len(json.dumps(data, default=str).encode())
        n_buf = sum(memoryview(b).nbytes for b in (buffers or []))
        sent.append((n_json, n_buf))
        return original(data=data, metadata=metadata, buffers=buffers, **kw)

    widget.comm.send = send
    try:
        yield sent
    finally:
        widget.comm.send = original


@pytest.fixture()
def record():
    return recorded
