"""Argument checks shared by the public wrappers.

Every check runs in plain Python before any JIT code, and every message says
what was wrong, what was expected and how to fix it (STYLE rules 8 and 10).
"""

from __future__ import annotations

import numbers

import numpy as np

PER_TENSOR = "tensor"
"""``group_size`` value that asks for one scale for the whole tensor."""


def check_array(x, name: str, *, dtype, ndim=None) -> np.ndarray:
    """Return ``x`` as a C-contiguous ndarray after checking type, dtype and ndim.

    A non-contiguous input is copied (never written to); the caller's array is
    left untouched either way.
    """
    if not isinstance(x, np.ndarray):
        hint = " Convert it with `.detach().cpu().numpy()` first." if hasattr(x, "detach") else ""
        raise TypeError(
            f"{name} must be a numpy.ndarray, got {type(x).__name__}.{hint} "
            f"Pass np.asarray({name}, dtype=np.{np.dtype(dtype).name})."
        )
    if x.dtype != np.dtype(dtype):
        raise TypeError(
            f"{name} has dtype {x.dtype}, expected {np.dtype(dtype).name}. "
            f"Convert it with {name}.astype(np.{np.dtype(dtype).name})."
        )
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            fix = (
                f"reshape it, e.g. {name}.reshape({name}.shape[0], -1) for a conv weight "
                f"or {name}.reshape(1, -1) for a vector"
                if 2 in allowed
                else f"flatten it with {name}.ravel()"
            )
            raise ValueError(
                f"{name} must be {want}, got a {x.ndim}-D array of shape {x.shape}; {fix}."
            )
    return np.ascontiguousarray(x)


def check_int(value, name: str, lo: int, hi: int, hint: str = "") -> int:
    """Check that ``value`` is an int in ``[lo, hi]`` and return it as ``int``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int from {lo} to {hi}, got {value!r}.{hint}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} is out of range: expected an int from {lo} to {hi}.{hint}")
    return value


def check_bits(bits, lo: int = 2, hi: int = 8) -> int:
    """Check the bit width of an integer code."""
    return check_int(
        bits,
        "bits",
        lo,
        hi,
        f" Pick bits between {lo} and {hi} (8 for INT8, 4 for INT4, 2 for INT2).",
    )


def resolve_group_size(group_size, rows: int, cols: int) -> tuple[int, bool]:
    """Normalise ``group_size`` to ``(size, per_tensor)``.

    ``None`` -> one group per row; an int -> groups of that many columns;
    ``"tensor"`` -> one scale for the whole tensor.
    """
    if group_size is None:
        return cols, False
    if isinstance(group_size, str):
        if group_size == PER_TENSOR:
            return cols, True
        raise ValueError(
            f"group_size={group_size!r} is not understood: expected None (one scale per row), "
            f"a positive int dividing the row length {cols}, or {PER_TENSOR!r} (one scale for "
            f"the whole tensor)."
        )
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral):
        raise TypeError(
            f"group_size must be None, an int or {PER_TENSOR!r}, got {type(group_size).__name__} "
            f"{group_size!r}."
        )
    group_size = int(group_size)
    if group_size <= 0:
        raise ValueError(
            f"group_size={group_size} must be positive: pass a divisor of the row length "
            f"{cols} (e.g. 32, 64, 128), or None for one scale per row."
        )
    if cols % group_size:
        divisors = [g for g in (32, 64, 128, 256) if cols % g == 0]
        suggestion = f" such as {divisors}" if divisors else ""
        raise ValueError(
            f"group_size={group_size} does not divide the row length {cols} "
            f"({cols} % {group_size} = {cols % group_size}): expected a divisor of {cols}"
            f"{suggestion}. Pick another group size, pad the rows, or use group_size=None."
        )
    return group_size, False


def raise_nonfinite(x: np.ndarray, name: str) -> None:
    """Raise a ValueError locating the NaN/Inf values of ``x`` (error path only)."""
    bad = ~np.isfinite(x)
    count = int(bad.sum())
    first = np.unravel_index(int(np.argmax(bad)), x.shape)
    where = ", ".join(str(int(i)) for i in first)
    raise ValueError(
        f"{name} contains {count} NaN/Inf value(s) (first at index [{where}]: {x[first]!r}); "
        f"expected finite values. Find where they come from (an overflow upstream, a "
        f"division by zero) or clean them, e.g. np.nan_to_num({name}), before quantizing."
    )
