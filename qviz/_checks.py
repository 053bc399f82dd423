"""Argument checks, written once: every config field and every numeric keyword of the drivers goes through these.

Each check raises ``TypeError`` (wrong type) or ``ValueError`` (right type,
wrong value) with a message that names the owner and the parameter, shows the
bad value with its type, and says what to pass instead. ``bool`` is never
accepted where an ``int`` or a number is meant (``True`` is an ``int`` to
Python), and a string is never read as a bool (``symmetric='no'`` is refused,
not taken as true).

:func:`check_fields` checks every field of a dataclass against its type
annotation; :class:`qviz.quant.config.QuantConfig` runs it before each
config's own ``__post_init__``, so a new config is type-checked without
writing a line for it.

Examples
--------
>>> check_bool("RTN", "symmetric", "no")
Traceback (most recent call last):
...
qviz._checks.BadArgumentType: RTN symmetric must be True or False; got 'no' (str). Pass symmetric=True or symmetric=False ...
>>> check_int("capture", "batch_size", 0, lo=1)
Traceback (most recent call last):
...
ValueError: capture batch_size must be an int >= 1; got 0. ...
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Sequence
from typing import Any


class BadArgumentType(TypeError, ValueError):
    """A parameter of the wrong type. A ``TypeError``, and a ``ValueError`` too, so that code written
    when qviz raised ``ValueError`` for every bad field keeps catching it."""


def _where(owner: str, name: str) -> str:
    return f"{owner} {name}" if owner else name


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_bool(owner: str, name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (numpy bools too), else ``TypeError``."""
    if isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_":  # numpy.bool_
        return bool(value)
    raise BadArgumentType(
        f"{_where(owner, name)} must be True or False; got {_shown(value)}. Pass {name}=True or {name}=False "
        "(strings such as 'no' and numbers are not read as booleans)."
    )


def _range_text(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    return " and ".join(parts)


def check_int(
    owner: str, name: str, value: Any, *, lo: int | None = None, hi: int | None = None, allow_none: bool = False,
    hint: str = "",
) -> int | None:
    """``value`` as an ``int`` in ``[lo, hi]`` (numpy integers are accepted and converted), else a clear error."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        what = "an int" + (" or None" if allow_none else "")
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            hint = hint or f"Pass {name}={int(value)} (an int, not a float)."
        raise BadArgumentType(f"{_where(owner, name)} must be {what}; got {_shown(value)}. {hint}".rstrip())
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(
            f"{_where(owner, name)} must be an int {_range_text(lo, hi)}; got {value}. "
            f"{hint or 'Pass a value in that range.'}"
        )
    return value


def check_number(
    owner: str, name: str, value: Any, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
    hi_open: bool = False, allow_none: bool = False, hint: str = "",
) -> float | None:
    """``value`` as a finite ``float`` in the range, else a clear error (NaN, Inf and bools are refused)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        what = "a number" + (" or None" if allow_none else "")
        raise BadArgumentType(f"{_where(owner, name)} must be {what}; got {_shown(value)}. {hint}".rstrip())
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{_where(owner, name)} must be a finite number; got {value}. {hint or 'Pass a finite value.'}")
    bad = (
        (lo is not None and (value < lo or (lo_open and value == lo)))
        or (hi is not None and (value > hi or (hi_open and value == hi)))
    )
    if bad:
        raise ValueError(
            f"{_where(owner, name)} must be a number {_range_text(lo, hi, lo_open, hi_open)}; got {value:g}. "
            f"{hint or 'Pass a value in that range.'}"
        )
    return value


def check_choice(owner: str, name: str, value: Any, choices: Sequence[Any], hint: str = "") -> Any:
    """``value`` if it is one of ``choices`` (compared with ``==`` and the same type), else ``ValueError``."""
    for c in choices:
        if type(c) is type(value) and c == value:
            return value
    from qviz._errors import did_you_mean

    close = did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else ""
    raise ValueError(
        f"{_where(owner, name)} must be one of {tuple(choices)}; got {_shown(value)}.{close} {hint}".rstrip()
    )


# --------------------------------------------------------------------------- dataclass fields by annotation


@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, tuple[Any, ...] | None]:
    """Field name -> the allowed types of its annotation (None: not checkable, e.g. ``Any``)."""
    import sys

    module = sys.modules.get(cls.__module__)
    try:
        hints = typing.get_type_hints(cls, globalns=vars(module) if module else None)
    except Exception:  # an annotation that cannot be evaluated is simply not checked
        hints = {}
    out: dict[str, tuple[Any, ...] | None] = {}
    for f in dataclasses.fields(cls):
        hint = hints.get(f.name)
        if hint is None or hint is Any:
            out[f.name] = None
            continue
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        allowed = []
        for a in args:
            origin = typing.get_origin(a) or a
            if origin is typing.Literal:
                allowed.extend(type(v) for v in typing.get_args(a))
            elif isinstance(origin, type):
                allowed.append(origin)
            else:  # a TypeVar, a Callable[...] and the like: leave the field to its owner's own checks
                allowed = None
                break
        out[f.name] = tuple(dict.fromkeys(allowed)) if allowed is not None else None
    return out


def _type_words(allowed: tuple[Any, ...]) -> str:
    words = {bool: "True or False", int: "an int", float: "a number", str: "a string", type(None): "None"}
    return " or ".join(words.get(t, f"a {t.__name__}") for t in allowed)


def _conforms(value: Any, allowed: tuple[Any, ...]) -> tuple[bool, Any]:
    """``(ok, value normalised)``: numpy scalars become Python ones, ints are accepted where floats are."""
    for t in allowed:
        if t is type(None) and value is None:
            return True, value
        if t is bool and (isinstance(value, bool) or type(value).__name__ == "bool_"):
            return True, bool(value)
        if t is int and isinstance(value, numbers.Integral) and not isinstance(value, bool) \
                and type(value).__name__ != "bool_":
            return True, int(value)
        if t is float and isinstance(value, numbers.Real) and not isinstance(value, bool) \
                and type(value).__name__ != "bool_":
            if not math.isfinite(float(value)):
                return False, value
            return True, value if isinstance(value, (int, float)) else float(value)
        if t not in (bool, int, float, type(None)) and isinstance(value, t):
            return True, value
    return False, value


def check_fields(obj: Any) -> None:
    """Check every field of the dataclass instance ``obj`` against its annotation (normalising numpy scalars).

    ``bool`` fields take only ``True``/``False``; ``int`` fields only ints (not
    bools, not floats); ``float`` fields finite numbers (not bools, NaN or
    Inf); ``str`` fields strings; other annotated classes an instance of them.
    A field annotated ``Any`` (or with an annotation that is not a plain type)
    is left to the owner's own ``__post_init__``.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Cfg:
    ...     steps: int = 10
    >>> check_fields(Cfg(steps=True))
    Traceback (most recent call last):
    ...
    qviz._checks.BadArgumentType: Cfg steps must be an int; got True (bool). The default is steps=10.
    """
    cls = type(obj)
    owner = cls.__name__
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for name, allowed in _field_types(cls).items():
        if allowed is None:
            continue
        value = getattr(obj, name)
        ok, normalised = _conforms(value, allowed)
        if not ok:
            default = defaults.get(name, dataclasses.MISSING)
            fix = f" The default is {name}={default!r}." if default is not dataclasses.MISSING else ""
            if bool in allowed and isinstance(value, (str, int, float)):
                fix = f" Pass {name}=True or {name}=False (strings and numbers are not read as booleans).{fix}"
            if float in allowed and isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{owner} {name} must be a finite number; got {value}.{fix}")
            raise BadArgumentType(f"{owner} {name} must be {_type_words(allowed)}; got {_shown(value)}.{fix}")
        if normalised is not value and type(normalised) is not type(value):
            object.__setattr__(obj, name, normalised)  # frozen dataclasses too: numpy scalars become Python ones
