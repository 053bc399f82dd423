"""The comparison section states what its rates rest on and labels a too-small attack run a smoke run."""

from __future__ import annotations

import xarray as xr

from qviz.evaluate.intervals import annotate
from qviz.report_sections.compare import _noise_html


def _cmp(n_attack: int) -> xr.Dataset:
    return annotate(xr.Dataset(
        {
            "accuracy": ("config", [0.9, 0.5]),
            "accuracy_n": ("config", [100, 100]),
            "attack_success_rate": (("config", "eps"), [[0.0, 0.5], [0.0, 0.5]]),
            "attack_n": ("config", [n_attack, n_attack]),
        },
        coords={"config": ["fp32", "RTN w2"], "eps": [0.0, 0.1]},
    ))


def test_four_attacked_inputs_are_a_smoke_run():
    text = _noise_html(_cmp(4))
    assert "Smoke run" in text and "fp32 4, RTN w2 4" in text
    assert "100 held-out items" in text and "RTN w2" in text.split("noise")[1]


def test_enough_attacked_inputs_are_not():
    text = _noise_html(_cmp(200))
    assert "Smoke run" not in text and "interval is 0.14 wide" in text
