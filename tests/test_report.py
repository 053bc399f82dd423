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


@pytest.mark.slow
def test_quick_report_runs_every_section_and_says_it_is_quick(tmp_path, digits):
    result = build_report(digits, tmp_path / "q.html", n_calib=64, quiet=True, progress=False)
    assert result.ok, result.failed
    assert set(result.seconds) >= {"outliers", "quant", "methods", "compare"}
    text = (tmp_path / "q.html").read_text()
    assert "Quick report: reduced sample sizes" in text and "qviz report --thorough" in text
    cmp = open_dataset(result.netcdf_paths["comparison"])
    assert list(cmp.config.values) == ["fp32", "RTN w4 ch asym", "bnb nf4 b64"]  # the two 4-bit formats
    assert list(cmp.eps.values) == [0.0, 0.1]


@pytest.mark.slow
def test_thorough_report_compares_every_default_format(tmp_path, digits):
    out = tmp_path / "t.html"
    assert main(["report", "--model", "digits-cnn", "--out", str(out), "--sections", "compare", "--thorough",
                 "--quiet"]) == 0
    text = out.read_text()
    assert "Thorough report: full-size measurements." in text
    cmp = open_dataset(out.with_name("t_data") / "comparison.nc")
    assert len(cmp.config) == 7 and len(cmp.eps) == 5
