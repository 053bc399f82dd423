"""Granularity is a type: how many scales a weight matrix ``[out, in]`` gets.

Examples
--------
>>> PerGroup(128).scale_shape((256, 512))
(256, 4)
>>> PerChannel().scale_shape((256, 512))
(256, 1)
>>> PerTensor().scale_shape((256, 512))
(1, 1)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PerTensor:
    """One scale (and zero point) for the whole tensor: scale shape ``(1, 1)``."""

    def scale_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Shape of the scale array for a weight of ``shape`` ``[out, in]``."""
        return (1, 1)

    @property
    def label(self) -> str:
        return "per-tensor"


@dataclass(frozen=True)
class PerChannel:
    """One scale per output channel (row) of ``[out, in]``: scale shape ``(out, 1)``.

    ``axis`` is the output-channel axis of the original weight (0 for Linear/Conv).
    """

    axis: int = 0

    def scale_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Shape of the scale array for a weight of ``shape`` ``[out, in]``."""
        return (shape[0], 1)

    @property
    def label(self) -> str:
        return "per-channel"


@dataclass(frozen=True)
class PerGroup:
    """One scale per ``size`` consecutive input weights of each row: scale shape ``(out, in // size)``."""

    size: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ValueError(f"PerGroup size must be a positive int; got {self.size!r}. Common sizes: 32, 64, 128.")

    def scale_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Shape of the scale array for a weight of ``shape`` ``[out, in]``; ``in`` must divide by ``size``."""
        if shape[1] % self.size:
            raise ValueError(
                f"Group size {self.size} does not divide the row length {shape[1]} of a {shape[0]}x{shape[1]} "
                f"weight. Use a group size that divides {shape[1]} (e.g. {_divisors_hint(shape[1])}) "
                "or group_size=None for one scale per output channel."
            )
        return (shape[0], shape[1] // self.size)

    @property
    def label(self) -> str:
        return f"g{self.size}"


def _divisors_hint(n: int) -> str:
    good = [g for g in (256, 128, 64, 32, 16, 8) if n % g == 0]
    return ", ".join(map(str, good[:3])) if good else "1"


Granularity = PerTensor | PerChannel | PerGroup


def granularity_of(group_size: int | str | None) -> Granularity:
    """The granularity a config's ``group_size`` means: None -> per channel, int -> per group, "tensor"."""
    if group_size is None:
        return PerChannel()
    if group_size == "tensor":
        return PerTensor()
    return PerGroup(group_size)
