"""qviz report: one self-contained HTML file plus netCDF, from the CLI and the API."""

from __future__ import annotations

import re

import pytest

import qviz
from qviz._io import open_dataset
from qviz.cli import main
from qviz.report import build_report


def test_report_on_digits_writes_html_and_netcdf(tmp_path, digits):
    out = tmp_path / "digits.html"
    result = build_report(digits, out, n_calib=64, sections=["outliers"], quiet=True, progress=False)
    assert result.ok and result.html_path == out
    text = out.read_text()
    # plotly.js is embedded exactly once and no script is loaded from the network
    assert text.count("plotly.js v") >= 1
    assert len(re.findall(r"<script[^>]*\bsrc=", text)) == 0
    assert text.count("Plotly.newPlot") >= 4
    assert "Activation outliers" in text and "conv2" in text
    stats = open_dataset(result.netcdf_paths["stats"])
    assert stats.attrs["model"] == "digits-cnn" and set(stats.layer.values) == {"conv1", "conv2", "fc1", "fc2"}


def test_cli_report_and_errors(tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", "--model", "digits-cnn", "--out", str(out), "--sections", "outliers", "--quiet"]) == 0
    assert out.exists() and (tmp_path / "r_data" / "stats.nc").exists()
    assert main(["report", "--model", "nonexistent-model", "--out", str(out), "--quiet"]) == 2
    assert "Unknown model 'nonexistent-model'" in capsys.readouterr().err
    assert main(["report", "--model", "digits-cnn", "--out", str(tmp_path / "r.txt"), "--quiet"]) == 2
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def test_unknown_section(tmp_path):
    with pytest.raises(ValueError, match="Unknown report section"):
        build_report("digits-cnn", tmp_path / "x.html", sections=["nope"], quiet=True)


def test_failed_section_is_shown_and_reported(tmp_path, monkeypatch, digits):
    import qviz.report_sections.outliers as sec

    def broken(model, calib, ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(sec, "section", broken)
    result = build_report(digits, tmp_path / "b.html", sections=["outliers"], quiet=True)
    assert result.failed == {"outliers": "RuntimeError: boom"}
    assert "This section failed" in (tmp_path / "b.html").read_text()


def test_version_is_consistent():
    from importlib.metadata import version

    assert version("qviz") == qviz.__version__
