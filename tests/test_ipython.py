"""The IPython extension: %qviz magics and rich display of qviz result Datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from torch import nn

import qviz
from qviz._ipython import ReportOutput, result_kind, run_magic


@pytest.fixture()
def ip():
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "qviz")
    yield shell
    shell.run_line_magic("unload_ext", "qviz")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


@pytest.fixture(scope="module")
def batch():
    return torch.randn(24, 16, generator=torch.Generator().manual_seed(0))


def test_stats_dataset_displays_its_figure(ip, net, batch):
    from qviz.activations.capture import capture

    stats = capture(net, batch, progress=False)
    data, _ = ip.display_formatter.format(stats)
    assert "application/vnd.plotly.v1+json" in data
    assert "Outliers in" in str(data["application/vnd.plotly.v1+json"]["layout"]["title"])
    assert "xarray" in data["text/html"]  # xarray's own summary follows the figure


def test_errors_dataset_displays_its_figure(ip, net, batch):
    errors = qviz.layer_error(net, qviz.RTN(bits=4, group_size=8), calib=batch)
    data, _ = ip.display_formatter.format(errors)
    assert "application/vnd.plotly.v1+json" in data


def test_cmp_dataset_displays_its_figure(ip):
    cmp = xr.Dataset({"accuracy": ("config", [0.9, 0.8]), "size_bytes": ("config", [4.0, 1.0])},
                     coords={"config": ["fp32", "w4"]})
    data, _ = ip.display_formatter.format(cmp)
    assert "application/vnd.plotly.v1+json" in data


def test_other_datasets_display_as_before(ip):
    data, _ = ip.display_formatter.format(xr.Dataset({"a": ("x", np.arange(3))}))
    assert "application/vnd.plotly.v1+json" not in data and "text/html" in data


def test_unload_removes_the_display_and_the_magic(net, batch):
    from qviz.activations.capture import capture

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "qviz")
    shell.run_line_magic("unload_ext", "qviz")
    data, _ = shell.display_formatter.format(capture(net, batch, progress=False))
    assert "application/vnd.plotly.v1+json" not in data
    assert "qviz" not in shell.magics_manager.magics["line"]


def test_magic_outliers_and_explore_use_notebook_variables(ip, net, batch):
    ip.user_ns.update(net=net, batch=batch)
    ex = ip.run_line_magic("qviz", "outliers --model net --data batch --threshold 3")
    assert type(ex).__name__ == "OutlierExplorer" and ex.threshold_slider.value == 3.0
    qe = ip.run_line_magic("qviz", "explore --model net --data batch --bits 3 --group-size 8 --layer 2")
    assert type(qe).__name__ == "QuantExplorer" and qe.current.config == "RTN w3 g8 asym"
    qe.job.cancel()


def test_magic_compare_takes_a_cmp_variable(ip):
    ip.user_ns["cmp"] = xr.Dataset({"accuracy": ("config", [0.9, 0.8]), "size_bytes": ("config", [4.0, 1.0])},
                                   coords={"config": ["fp32", "w4"]})
    dash = ip.run_line_magic("qviz", "compare cmp")
    assert type(dash).__name__ == "CompareDashboard"


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("nonsense", "Unknown %qviz command 'nonsense'"),
        ("outliers --n 0 --model net", "--n must be a positive number"),
        ("outliers --model net --data nowhere", "not a variable of this notebook"),
        ("explore --bits four", "invalid int value"),
        ("compare missing_var", "not a variable of this notebook"),
        ("outliers extra --model net", "takes options only"),
        ('report --out "unclosed', "No closing quotation"),
    ],
)
def test_bad_magic_lines_give_a_usage_error_not_a_traceback(ip, net, line, match):
    ip.user_ns["net"] = net
    with pytest.raises(UsageError, match=match):
        ip.run_line_magic("qviz", line)


def test_help_prints_usage(ip, capsys):
    assert ip.run_line_magic("qviz", "") is None
    assert "%qviz explore" in capsys.readouterr().out
    assert run_magic("help").startswith("%qviz outliers")


@pytest.mark.slow
def test_magic_report_writes_the_file(ip, tmp_path):
    out = ip.run_line_magic("qviz", f"report --model digits-cnn --n 16 --sections outliers --out {tmp_path / 'r.html'}")
    assert isinstance(out, ReportOutput) and (tmp_path / "r.html").is_file()
    assert "qviz report written" in out._repr_html_()


def test_result_kind():
    assert result_kind("text") is None
    assert result_kind(xr.Dataset({"weight_sqnr_db": ("layer", [1.0])})) == "errors"
