"""Shared fixtures. Loading real models once per session keeps the suite fast."""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run (CI reruns are reproducible); to explore new
# ones, run e.g. `pytest --hypothesis-seed=7` or set QVIZ_HYPOTHESIS_PROFILE=explore.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("QVIZ_HYPOTHESIS_PROFILE", "repeatable"))

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
