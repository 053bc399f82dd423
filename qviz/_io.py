"""Save qviz Datasets to netCDF and open them again, identically.

netCDF attributes hold only strings and numbers; anything else (bools, dicts,
lists, None) is stored as a JSON string under the same name with a ``json:``
prefix and decoded when the file is opened with :func:`open_dataset`.

Examples
--------
>>> import numpy as np, xarray as xr, tempfile, os
>>> ds = xr.Dataset({"a": ("layer", np.arange(3.0))}, coords={"layer": ["x", "y", "z"]}, attrs={"cfg": {"bits": 4}})
>>> path = os.path.join(tempfile.mkdtemp(), "a.nc")
>>> _ = save(ds, path)
>>> open_dataset(path).attrs["cfg"]
{'bits': 4}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

_PREFIX = "json:"


def _encode(value: Any) -> Any:
    if isinstance(value, (str, int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
        return value
    return _PREFIX + json.dumps(value, default=str)


def _decode(value: Any, name: str = "", path: Any = "") -> Any:
    if isinstance(value, str) and value.startswith(_PREFIX):
        try:
            return json.loads(value[len(_PREFIX) :])
        except json.JSONDecodeError as err:
            raise ValueError(
                f"The attribute {name!r} of {str(path)!r} should hold JSON after its {_PREFIX!r} prefix but is "
                f"corrupt ({err.msg} at character {err.pos}): {value[:60]!r}. Was the file edited or truncated? "
                "Write it again with qviz.save."
            ) from err
    return value


def _encode_attrs(ds: xr.Dataset) -> xr.Dataset:
    out = ds.copy()
    out.attrs = {k: _encode(v) for k, v in ds.attrs.items()}
    for name in out.variables:
        out[name].attrs = {k: _encode(v) for k, v in ds[name].attrs.items()}
    return out


def save(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write a qviz Dataset to a netCDF (``.nc``) file; returns the path.

    Examples
    --------
    >>> save(stats, "stats.nc")   # doctest: +SKIP
    PosixPath('stats.nc')
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"save() writes an xarray.Dataset; got {type(ds).__name__}.")
    path = Path(path)
    if path.suffix != ".nc":
        raise ValueError(f"qviz writes netCDF files; the path should end in '.nc', got {str(path)!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = _encode_attrs(ds)
    # compress numeric variables: NaN padding and histograms shrink several-fold
    encoding = {name: {"zlib": True, "complevel": 4} for name, var in encoded.data_vars.items() if var.dtype.kind in "iuf"}
    encoded.to_netcdf(path, engine="netcdf4", encoding=encoding)
    return path


def open_dataset(path: str | os.PathLike) -> xr.Dataset:
    """Open a Dataset written by :func:`save`, loaded into memory, attrs decoded.

    Examples
    --------
    >>> stats = open_dataset("stats.nc")   # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such netCDF file: {str(path)!r}.")
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a directory; pass the path of a netCDF (.nc) file written by qviz.save.")
    try:
        ds = xr.load_dataset(path, engine="netcdf4")
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{str(path)!r} is not a netCDF file qviz can read ({type(err).__name__}: {err}). Open a file "
            "written by qviz.save (or another netCDF-4 / HDF5 file)."
        ) from err
    ds.attrs = {k: _decode(v, k, path) for k, v in ds.attrs.items()}
    for name in ds.variables:
        ds[name].attrs = {k: _decode(v, f"{name}.{k}", path) for k, v in ds[name].attrs.items()}
    for name in list(ds.variables):
        if ds[name].dtype == object:
            ds[name] = ds[name].astype(str)
    return ds
