"""Former home of :mod:`qviz.models.gguf` (GGUF models: SmolLM2 and any ``.gguf`` file); every name still resolves here."""

from __future__ import annotations

from typing import Any

from qviz.models import gguf as _gguf


def __getattr__(name: str) -> Any:
    return getattr(_gguf, name)


def __dir__() -> list[str]:
    return dir(_gguf)
