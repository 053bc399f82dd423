"""Layer filters: ``None``, a name, a glob, a list of those, or a predicate.

Every function that takes ``layers=`` normalises it once with
:func:`layer_predicate` and then only calls the predicate.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from qviz._errors import did_you_mean

LayerSpec = None | str | Sequence[str] | Callable[[str, Any], bool]
Predicate = Callable[[str, Any], bool]

_GLOB_CHARS = set("*?[")


def _is_glob(text: str) -> bool:
    return any(c in _GLOB_CHARS for c in text)


def layer_predicate(spec: LayerSpec, names: Iterable[str]) -> Predicate:
    """Normalise a layer filter into a predicate ``(name, module) -> bool``.

    Parameters
    ----------
    spec
        ``None`` (every layer), an exact module name, a glob such as
        ``"encoder.layer.*.attention.*"``, a list of names and globs, or a
        callable ``(name, module) -> bool``.
    names
        The names the filter may refer to; exact names and globs are checked
        against them so a typo fails loudly instead of selecting nothing.

    Examples
    --------
    >>> pred = layer_predicate("fc*", ["fc1", "fc2", "conv"])
    >>> [n for n in ["fc1", "fc2", "conv"] if pred(n, None)]
    ['fc1', 'fc2']
    """
    names = list(names)
    if spec is None:
        return lambda name, module: True
    if callable(spec):
        return lambda name, module: bool(spec(name, module))
    if isinstance(spec, str):
        patterns = [spec]
    elif isinstance(spec, (list, tuple, set, frozenset)):
        patterns = list(spec)
        if not patterns:
            raise ValueError(
                "layers=[] selects no layer. Pass None for every layer, or a list of "
                "module names or globs such as ['encoder.layer.0.*']."
            )
    else:
        raise TypeError(
            f"layers must be None, a name, a glob, a list of those or a callable "
            f"(name, module) -> bool; got {type(spec).__name__}."
        )
    exact: set[str] = set()
    globs: list[str] = []
    name_set = set(names)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"layer names must be strings; got {pattern!r} ({type(pattern).__name__}).")
        if _is_glob(pattern):
            if not fnmatch.filter(names, pattern):
                raise ValueError(
                    f"The layer glob {pattern!r} matches no layer of this model."
                    f"{did_you_mean(pattern.replace('*', ''), names)} "
                    "List the layers with qviz.models.layer_names(model)."
                )
            globs.append(pattern)
        elif pattern in name_set:
            exact.add(pattern)
        else:
            raise ValueError(
                f"Unknown layer name {pattern!r}.{did_you_mean(pattern, names)} "
                "List the layers with qviz.models.layer_names(model)."
            )

    def predicate(name: str, module: Any) -> bool:
        return name in exact or any(fnmatch.fnmatchcase(name, g) for g in globs)

    return predicate
