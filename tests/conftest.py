"""Shared fixtures. Loading real models once per session keeps the suite fast."""

from __future__ import annotations

import os
import tempfile

import pytest

# Train digits-cnn once per test session into a private cache (never the user's).
os.environ.setdefault("QVIZ_CACHE_DIR", tempfile.mkdtemp(prefix="qviz-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def minilm():
    import qviz

    return qviz.load("minilm")


@pytest.fixture(scope="session")
def minilm_calib(minilm):
    import qviz

    return qviz.calibration_data(minilm, n=32)


@pytest.fixture(scope="session")
def digits():
    import qviz

    return qviz.load("digits-cnn")


@pytest.fixture(scope="session")
def digits_calib(digits):
    import qviz

    return qviz.calibration_data(digits, n=64)
