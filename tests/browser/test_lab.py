"""The explorers in a real JupyterLab, Notebook 7 and Voilà, in Debian's Chromium.

Each test opens a notebook, runs every cell, and then acts like a user: it
changes a control and waits for the browser to redraw, measuring the time from
the change to the redraw (plotly's ``plotly_afterplot`` event for the figures,
the canvas heatmap's draw counter for the heatmaps). The timings go to
``test-artifacts/browser-timings.json``; the screenshots beside them.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

RUN_TIMEOUT_MS = 420_000  # a loaded 2-core machine needs minutes for a MiniLM notebook
# anywidget gives a model 2 s to load its module, then rejects a promise nobody awaits; on a busy
# machine that fires although the widget renders. Recorded, not failed on (the tests check the drawing).
ANYWIDGET_SLOW_INIT = "[anywidget] Failed to initialize model."


# Errors Notebook 7's own front end raises while starting with a private settings directory
# (nothing of qviz runs in them); recorded, not failed on.
HOST_APP_ERRORS = ("Cannot read properties of undefined (reading 'schema')",
                   "Command 'filebrowser:open-path' not registered.")


def page_errors(page) -> list[str]:
    """The page's uncaught errors, less the known ones above (counted in browser-timings.json)."""
    known = [e for e in page.errors if e == ANYWIDGET_SLOW_INIT or e in HOST_APP_ERRORS]
    for e in known:
        key = "anywidget_slow_init_warnings" if e == ANYWIDGET_SLOW_INIT else "host_app_errors"
        TIMINGS[key] = TIMINGS.get(key, 0) + 1
    return [e for e in page.errors if e not in known]
REDRAW_TARGET_MS = 500.0
TIMINGS: dict[str, object] = {}


@pytest.fixture(scope="module", autouse=True)
def _write_timings(artifacts):
    yield
    path = artifacts / "browser-timings.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update(TIMINGS)
    path.write_text(json.dumps(old, indent=2))


PANEL_JS = """(path) => {
    const shell = window.jupyterapp && window.jupyterapp.shell;
    if (!shell) return null;
    const all = shell.widgets ? [...shell.widgets('main')] : [];
    return all.find(w => w.context && w.context.path === path) || null;
}"""


def open_and_run_all(page, jupyter, path: str, app: str = "lab", timeout_ms: int = RUN_TIMEOUT_MS) -> None:
    """Open ``path`` in JupyterLab (or Notebook 7), run all cells and wait until every cell ran without error.

    JupyterLab restores the notebooks an earlier test left open (its workspace is
    kept on the server), so the page asks for a fresh workspace (``?reset``) and
    everything below addresses the notebook by its path, never "the current widget".
    """
    url = jupyter.page_url(f"/lab/tree/{path}?reset" if app == "lab" else f"/notebooks/{path}")
    page.goto(url)
    panel = f"({PANEL_JS})({json.dumps(path)})"
    page.wait_for_function(f"() => {{ const p = {panel}; return p && p.sessionContext; }}", timeout=120_000)
    page.evaluate(f"""async () => {{
        const panel = {panel};
        await panel.sessionContext.ready;
        await panel.context.ready;
        window.jupyterapp.shell.activateById(panel.id);
    }}""")
    page.wait_for_function(f"""() => {{
        const k = {panel}.sessionContext.session?.kernel;
        return k && k.status === 'idle';
    }}""", timeout=120_000)
    page.evaluate(f"""async () => {{
        const panel = {panel};
        window.jupyterapp.shell.activateById(panel.id);
        window.jupyterapp.commands.execute('notebook:run-all-cells');  // not awaited: the wait is below
    }}""")
    page.wait_for_function(f"""() => {{
        const panel = {panel};
        const cells = panel.content.widgets.filter(c => c.model.type === 'code');
        const k = panel.sessionContext.session?.kernel;
        const done = cells.every(c => c.model.executionCount !== null);
        const failed = cells.some(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'));
        return failed || (done && k && k.status === 'idle');
    }}""", timeout=timeout_ms)
    errors = page.evaluate(f"""() => {panel}.content.widgets
        .filter(c => c.model.type === 'code')
        .flatMap(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error'))
        .map(o => o.ename + ': ' + o.evalue)""")
    assert not errors, f"cells raised: {errors}"


def explorer_root(page, title: str):
    """The VBox of the explorer whose header shows ``title``."""
    frame = page.locator(".qviz-frame", has=page.locator(".qviz-frame-title", has_text=title)).first
    frame.wait_for(state="attached", timeout=60_000)
    frame.scroll_into_view_if_needed()
    return frame.locator("xpath=ancestor::div[contains(@class, 'widget-vbox')][1]")


def measure_plot_redraw(page, root, plot_index: int, expect: str, act) -> float:
    """Run ``act()``; return ms until plot ``plot_index`` inside ``root`` shows a title containing ``expect``.

    The time is taken in the page, at the first animation frame where the drawn SVG title has changed.
    """
    handle = root.element_handle()
    page.evaluate("() => { window.__qvizDone = null; window.__qvizT0 = performance.now(); }")
    act()
    page.wait_for_function("""([root, i, expect]) => {
        const gd = root.querySelectorAll('.js-plotly-plot')[i];
        const title = gd && gd.querySelector('.gtitle');
        const ok = !!title && title.textContent.includes(expect);
        if (ok && window.__qvizDone === null) window.__qvizDone = performance.now();
        return ok;
    }""", arg=[handle, plot_index, expect], polling="raf", timeout=60_000)
    return page.evaluate("() => window.__qvizDone - window.__qvizT0")


def plot_title(root, index: int) -> str:
    return root.locator(".js-plotly-plot").nth(index).locator(".gtitle").text_content()


def set_text(root, label: str, value: str) -> None:
    box = root.locator(".widget-text", has=root.page.locator("label", has_text=re.compile(f"^{re.escape(label)}$")))
    field = box.locator("input").first
    field.fill(value)
    field.press("Enter")


def test_quant_explorer_in_jupyterlab(page, jupyter, artifacts):
    open_and_run_all(page, jupyter, "02_quantizers_and_layer_error.ipynb")
    root = explorer_root(page, "QuantExplorer")
    root.locator(".js-plotly-plot").nth(2).wait_for(state="visible", timeout=60_000)
    assert len(root.locator(".js-plotly-plot").all()) == 3  # bars, histogram, SQNR vs bits all drawn
    root.screenshot(path=str(artifacts / "lab-quant-explorer-before.png"))
    hist_before = plot_title(root, 1)
    timings, all_three = [], []
    for bits in ("2", "5", "4"):
        page.wait_for_timeout(1500)  # the background work of the previous change has settled
        timings.append(measure_plot_redraw(page, root, 1, f"RTN w{bits} ", lambda b=bits: set_text(root, "bits", b)))
        # ... and until the per-layer bars (drawn last) show the new config too
        all_three.append(measure_plot_redraw(page, root, 0, f"RTN w{bits} ", lambda: None) + timings[-1])
    TIMINGS["lab_quant_bits_all_figures_ms"] = all_three
    hist_after = plot_title(root, 1)
    assert hist_after != hist_before and "RTN w4 " in hist_after
    # the histogram really holds data: its bars are drawn
    assert root.locator(".js-plotly-plot").nth(1).locator("path.js-line").count() >= 2
    # bad input: a readable message in the widget, the figure stays
    set_text(root, "group size", "100")
    msg = root.locator(".qviz-message")
    msg.wait_for(state="visible", timeout=30_000)
    assert "does not divide" in msg.inner_text() and "Traceback" not in root.inner_text()
    assert plot_title(root, 1) == hist_after
    root.screenshot(path=str(artifacts / "lab-quant-explorer-bad-input.png"))
    page.screenshot(path=str(artifacts / "lab-quant-explorer-page.png"))
    TIMINGS["lab_quant_bits_redraw_ms"] = timings
    assert not page_errors(page), page.errors
    assert sorted(timings)[1] <= 4 * REDRAW_TARGET_MS, f"control-change-to-redraw {timings} ms"


def test_outlier_explorer_canvas_in_jupyterlab(page, jupyter, artifacts):
    open_and_run_all(page, jupyter, "01_outliers.ipynb")
    root = explorer_root(page, "OutlierExplorer")
    heat = root.locator(".qviz-heatmap").first
    heat.wait_for(state="visible")
    page.wait_for_function("(el) => Number(el.dataset.qvizDraws || 0) > 0", arg=heat.element_handle())
    # static fallback printed by the same cell is hidden while the live widget is on screen
    assert page.locator(".qviz-static").count() >= 1
    assert page.locator(".qviz-static").first.is_hidden()
    over_before = int(heat.get_attribute("data-qviz-over"))
    draws = int(heat.get_attribute("data-qviz-draws"))
    timings = []
    for value in ("2", "30", "1.5"):
        readout = root.locator(".widget-slider", has=page.locator("label", has_text="threshold")).locator(
            ".widget-readout").first
        page.evaluate("() => { window.__qvizT0 = performance.now(); }")
        readout.click()
        page.keyboard.press("Control+A")
        page.keyboard.type(value)
        page.keyboard.press("Enter")
        page.wait_for_function("([el, n]) => Number(el.dataset.qvizDraws) > n", arg=[heat.element_handle(), draws],
                               timeout=60_000)
        time.sleep(0.2)
        draws = int(heat.get_attribute("data-qviz-draws"))
        timings.append(float(heat.get_attribute("data-qviz-drawn-at")) - page.evaluate("() => window.__qvizT0"))
    over_after = int(heat.get_attribute("data-qviz-over"))
    assert over_after > over_before  # threshold 1.5 marks more cells than 6.0
    # hover read-out names the layer, the channel and the value
    box = heat.locator("canvas.qviz-heatmap-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + 5)
    assert re.search(r"layer .+ · channel \d+", heat.locator(".qviz-heatmap-readout").inner_text())
    root.screenshot(path=str(artifacts / "lab-outlier-explorer.png"))
    TIMINGS["lab_outlier_threshold_redraw_ms"] = timings
    # keep the run: the saved-notebook and HTML-export tests reopen it
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_timeout(1500)
    shutil.copy(Path(jupyter.root) / "01_outliers.ipynb", Path(jupyter.root) / "01_outliers_saved.ipynb")
    assert not page_errors(page), page.errors
    assert sorted(timings)[1] <= 4 * REDRAW_TARGET_MS, f"control-change-to-redraw {timings} ms"


def test_notebook7_renders_the_explorer(page, jupyter, artifacts):
    open_and_run_all(page, jupyter, "01_outliers.ipynb", app="notebook")
    root = explorer_root(page, "OutlierExplorer")
    heat = root.locator(".qviz-heatmap").first
    page.wait_for_function("(el) => Number(el.dataset.qvizDraws || 0) > 0", arg=heat.element_handle(), timeout=60_000)
    root.locator(".js-plotly-plot").first.wait_for(state="visible", timeout=60_000)
    root.screenshot(path=str(artifacts / "notebook7-outlier-explorer.png"))
    assert not page_errors(page), page.errors


def test_voila_renders_the_explorer(page, jupyter, artifacts):
    page.goto(jupyter.page_url("/voila/render/01_outliers.ipynb"), timeout=RUN_TIMEOUT_MS)
    heat = page.locator(".qviz-heatmap").first
    heat.wait_for(state="visible", timeout=RUN_TIMEOUT_MS)
    page.wait_for_function("(el) => Number(el.dataset.qvizDraws || 0) > 0", arg=heat.element_handle(), timeout=60_000)
    page.locator(".js-plotly-plot").first.wait_for(state="visible", timeout=60_000)
    assert page.locator(".qviz-frame-title", has_text="OutlierExplorer").count() == 1
    page.screenshot(path=str(artifacts / "voila-outlier-explorer.png"), full_page=True)


@pytest.fixture(scope="module")
def executed_outliers(jupyter, tmp_path_factory):
    """01_outliers run and saved, as a user leaves it: saved from JupyterLab, else executed with nbclient."""
    import nbformat
    from nbclient import NotebookClient

    out = Path(jupyter.root) / "01_outliers_saved.ipynb"
    if out.exists():  # saved from JupyterLab by test_outlier_explorer_canvas_in_jupyterlab
        nb = nbformat.read(out, as_version=4)
        if any(o.get("output_type") == "display_data" for c in nb.cells for o in c.get("outputs", [])):
            return out
    nb = nbformat.read(Path(jupyter.root) / "01_outliers.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(jupyter.root)}}).execute()
    nbformat.write(nb, out)
    return out


def test_saved_notebook_shows_a_picture_without_running(page, jupyter, executed_outliers, artifacts):
    """Reopened, nothing run: the static fallback shows, or (when JupyterLab saved the widget state with
    the notebook) the restored widget draws its heatmap from that state; either way there is a picture."""
    page.goto(jupyter.page_url(f"/lab/tree/{executed_outliers.name}"))
    page.wait_for_function("""() => {
        const img = [...document.querySelectorAll('.qviz-static img')].find(i => i.offsetParent !== null);
        const heat = [...document.querySelectorAll('.qviz-heatmap')].find(h => Number(h.dataset.qvizDraws) > 0);
        return (img && img.naturalWidth > 100) || !!heat;
    }""", timeout=120_000)
    shown = page.evaluate("""() => ({
        static: [...document.querySelectorAll('.qviz-static img')].filter(i => i.offsetParent !== null).length,
        restored: [...document.querySelectorAll('.qviz-heatmap')].filter(h => Number(h.dataset.qvizDraws) > 0).length,
    })""")
    TIMINGS["saved_notebook_picture"] = shown
    # scroll to the very element found above (a locator's first match can be another, hidden copy)
    page.evaluate("""() => {
        const img = [...document.querySelectorAll('.qviz-static img')].find(i => i.offsetParent !== null && i.naturalWidth > 100);
        const heat = [...document.querySelectorAll('.qviz-heatmap')].find(h => Number(h.dataset.qvizDraws) > 0);
        (img || heat).scrollIntoView();
    }""")
    page.screenshot(path=str(artifacts / "lab-saved-notebook-no-run.png"))


def test_html_export_shows_a_picture(page, executed_outliers, artifacts, tmp_path):
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed_outliers, as_version=4))
    html_path = tmp_path / "01_outliers.html"
    html_path.write_text(body)
    shutil.copy(html_path, artifacts / "01_outliers.html")
    page.goto(html_path.as_uri())
    img = page.locator(".qviz-static img").first
    img.wait_for(state="visible", timeout=30_000)
    assert img.evaluate("el => el.naturalWidth") > 100
    img.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "html-export.png"))


@pytest.mark.parametrize("name", ["00_tour.ipynb", "05_llm.ipynb"])
def test_tour_and_llm_notebook_run_and_draw_in_jupyterlab(page, jupyter, artifacts, name):
    """The two front doors, run top to bottom in JupyterLab: every cell runs, every Plotly figure draws,
    and the screenshots (the first figure; the notebook's last output) are kept for a person to look at."""
    # the LLM notebook loads SmolLM2, generates and runs a four-config compare: minutes on a loaded 2-core machine
    open_and_run_all(page, jupyter, name, timeout_ms=900_000)
    stem = name.removesuffix(".ipynb")
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .main-svg').length > 0", timeout=120_000)
    drawn = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')]
        .map(gd => gd.querySelectorAll('.main-svg').length > 0 && gd.getBoundingClientRect().width > 100)""")
    TIMINGS[f"{stem}_figures_drawn"] = f"{sum(drawn)}/{len(drawn)}"
    assert drawn and all(drawn), f"{name}: {sum(drawn)} of {len(drawn)} Plotly figures drew"
    page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / f"lab-{stem}-first-figure.png"))
    page.locator(".jp-OutputArea-output").last.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / f"lab-{stem}-last-output.png"))
