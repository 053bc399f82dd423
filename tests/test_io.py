"""Datasets save to netCDF and reopen identically."""

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import qviz
from qviz._io import open_dataset, save


def test_capture_dataset_round_trip(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
    stats = qviz.capture(net, torch.randn(30, 5), sample="2", progress=False)
    path = save(stats, tmp_path / "stats.nc")
    back = open_dataset(path)
    xr.testing.assert_identical(stats, back)


def test_attrs_that_netcdf_cannot_hold_come_back():
    ds = xr.Dataset({"a": ("layer", np.arange(2.0))}, attrs={"flag": True, "cfg": {"bits": 4, "g": None}, "xs": [1, 2]})
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "a.nc"
    save(ds, path)
    assert open_dataset(path).attrs == {"flag": True, "cfg": {"bits": 4, "g": None}, "xs": [1, 2]}


def test_bad_input(tmp_path):
    with pytest.raises(TypeError, match="xarray.Dataset"):
        save({"a": 1}, tmp_path / "a.nc")
    with pytest.raises(ValueError, match="end in '.nc'"):
        save(xr.Dataset(), tmp_path / "a.csv")
    with pytest.raises(FileNotFoundError, match="No such netCDF"):
        open_dataset(tmp_path / "missing.nc")
