"""Where the browser side of the widgets lives.

The wheel ships the repository's ``widgets/`` folder as ``qviz/_static``; an
editable install reads the repository's ``widgets/`` next to the ``qviz``
package instead.
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path


@functools.cache
def static_dir() -> Path:
    """The folder holding the widgets' ESM modules and CSS.

    Examples
    --------
    >>> (static_dir() / "heatmap.js").is_file()
    True
    """
    shipped = importlib.resources.files("qviz") / "_static"
    if shipped.is_dir():
        return Path(str(shipped))
    repo = Path(__file__).resolve().parents[2] / "widgets"
    if repo.is_dir():
        return repo
    raise FileNotFoundError(
        f"qviz's widget front-end files are missing: looked in {shipped} (installed wheel) and "
        f"{repo} (source checkout). Reinstall qviz (pip install --force-reinstall qviz)."
    )


@functools.cache
def read_asset(name: str) -> str:
    """The text of one front-end file, e.g. ``"heatmap.js"``.

    Examples
    --------
    >>> "export default" in read_asset("heatmap.js")
    True
    """
    path = static_dir() / name
    if not path.is_file():
        known = sorted(p.name for p in static_dir().iterdir() if p.is_file())
        raise FileNotFoundError(f"No front-end file {name!r} in {static_dir()}; files there: {known}.")
    return path.read_text(encoding="utf-8")
