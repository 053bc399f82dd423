"""Granularity types: the scale shape each gives, labels, and what a config's group_size means."""

from __future__ import annotations

import pytest

from qviz.quant.granularity import PerChannel, PerGroup, PerTensor, granularity_of


@pytest.mark.parametrize(
    ("g", "shape", "scale_shape", "label"),
    [
        (PerTensor(), (256, 512), (1, 1), "per-tensor"),
        (PerChannel(), (256, 512), (256, 1), "per-channel"),
        (PerGroup(128), (256, 512), (256, 4), "g128"),
        (PerGroup(1), (3, 5), (3, 5), "g1"),
    ],
)
def test_scale_shapes_and_labels(g, shape, scale_shape, label):
    assert g.scale_shape(shape) == scale_shape
    assert g.label == label


def test_group_size_means_a_granularity():
    assert granularity_of(None) == PerChannel()
    assert granularity_of("tensor") == PerTensor()
    assert granularity_of(64) == PerGroup(64)


@pytest.mark.parametrize("bad", [0, -4, 2.0, True, "64"])
def test_bad_group_size(bad):
    with pytest.raises(ValueError, match=f"PerGroup size must be a positive int; got {bad!r}"):
        PerGroup(bad)


def test_group_that_does_not_divide_the_row_names_divisors():
    with pytest.raises(ValueError, match=r"Group size 48 does not divide the row length 64 of a 8x64 weight.*e\.g\. 64, 32, 16"):
        PerGroup(48).scale_shape((8, 64))
    with pytest.raises(ValueError, match=r"\(e\.g\. 1\)"):
        PerGroup(2).scale_shape((2, 7))
