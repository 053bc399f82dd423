"""Model-supplied strings are shown, never run: a layer named ``<img src=x onerror=alert(1)>`` in a real browser.

The report (plotly figures and HTML fragments) and the explorers' static
picture are opened in Chromium; no dialog may open, no ``<img>`` element may
appear, and the name must be readable as text.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qviz

EVIL = "<img src=x onerror=alert(1)>"


class EvilNames(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.add_module(EVIL, nn.Linear(16, 16))
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, 16] -> [batch, 4]
        return self.out(torch.relu(getattr(self, EVIL)(x)))


def _open(browser, path):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1800})
    page = ctx.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_timeout(1500)  # plotly draws after load
    return ctx, page, dialogs


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_evil_layer_name_is_escaped_in_the_report_and_the_static_picture(browser, tmp_path, monkeypatch):
    import qviz.data as data

    model = qviz.load(EvilNames())
    x = torch.randn(32, 16)
    # qviz's public name first: it is resolved lazily from qviz.data, and resolving it after qviz.data
    # is patched would make monkeypatch "restore" the fake, for every later test in the session
    monkeypatch.setattr(qviz, "calibration_data", lambda m, n=64: x)
    monkeypatch.setattr(data, "calibration_data", lambda m, n=64: x)
    res = qviz.report.build_report(model, tmp_path / "r.html", sections=["outliers"], quiet=True, progress=False)
    static = tmp_path / "static.html"
    ex = qviz.widgets.QuantExplorer(model, x, group_size=None, debounce=0, background=False)
    static.write_text(f"<!doctype html><html><body>{ex.static_html()}{ex.summary.value}</body></html>")
    for path in (res.html_path, static):
        ctx, page, dialogs = _open(browser, path)
        try:
            assert dialogs == [], f"{path.name}: a model-supplied string ran as code"
            assert page.locator("img[src='x']").count() == 0, f"{path.name}: an <img> from a layer name was built"
            assert EVIL in page.inner_text("body"), f"{path.name}: the layer name is not shown as text"
        finally:
            ctx.close()
