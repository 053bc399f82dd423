"""``qviz report``: the whole analysis of one model in one self-contained HTML file.

The report is a list of sections. Each section module in
:mod:`qviz.report_sections` exposes ``section(model, calib, ctx)`` returning a
list of ``(title, content)`` pairs, where content is a Plotly figure or an
HTML fragment. ``ctx`` is a dict shared by the sections: ``ctx["stats"]`` is
the capture Dataset, and a section that puts a Dataset into
``ctx["datasets"]`` has it written to netCDF beside the report.

The HTML embeds plotly.js once and opens offline.

Examples
--------
>>> from qviz.report import build_report
>>> build_report("digits-cnn", "report.html")   # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import html
import importlib
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qviz._version import __version__

# Section modules in report order. A module that does not exist yet is skipped.
SECTIONS = (
    "qviz.report_sections.outliers",
    "qviz.report_sections.quant",
    "qviz.report_sections.methods",
    "qviz.report_sections.compare",
    "qviz.report_sections.decoder",
)


@dataclass
class ReportResult:
    """What :func:`build_report` wrote and how each section went."""

    html_path: Path
    netcdf_paths: dict[str, Path]
    seconds: dict[str, float]
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"qviz: {msg}", file=sys.stderr, flush=True)


def _render(content: Any, div_id: str) -> str:
    import plotly.graph_objects as go  # lazy: Plotly loads only when a page is written

    if isinstance(content, go.Figure):
        return content.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"responsive": True})
    if isinstance(content, str):
        return content
    raise TypeError(f"A report section returned a {type(content).__name__}; expected a plotly Figure or HTML text.")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#14213d;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px 0;font-size:22px} header p{margin:2px 0;color:#cdd5e0;font-size:13px}
nav{padding:10px 28px;background:#fff;border-bottom:1px solid #dde1e6;font-size:13px}
nav a{margin-right:14px;color:#14213d}
main{padding:8px 28px 40px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;margin:18px 0;padding:12px 18px}
section h2{font-size:17px;margin:6px 0 10px}
.item h3{font-size:14px;margin:14px 0 4px;color:#3a4452}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:8px 12px}
.err{background:#fdecec;border-left:4px solid #d62728;padding:8px 12px;white-space:pre-wrap;font-family:monospace;font-size:12px}
table.qv{border-collapse:collapse;font-size:12px} table.qv td,table.qv th{border:1px solid #dde1e6;padding:3px 8px;text-align:right}
table.qv th{background:#f0f2f5} table.qv td:first-child,table.qv th:first-child{text-align:left}
footer{color:#6a7280;font-size:12px;padding:0 28px 30px}
"""


def _page(title: str, subtitle: list[str], sections: list[tuple[str, str, list[tuple[str, str]]]], footer: str) -> str:
    from plotly.offline import get_plotlyjs  # lazy: as above

    nav = " ".join(f'<a href="#{sid}">{html.escape(name)}</a>' for sid, name, _ in sections)
    body = []
    for sid, name, items in sections:
        parts = [f'<section id="{sid}"><h2>{html.escape(name)}</h2>']
        for item_title, item_html in items:
            parts.append(f'<div class="item"><h3>{html.escape(item_title)}</h3>{item_html}</div>')
        parts.append("</section>")
        body.append("\n".join(parts))
    subtitle_html = "".join(f"<p>{html.escape(s)}</p>" for s in subtitle)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<header><h1>{html.escape(title)}</h1>{subtitle_html}</header>
<nav>{nav}</nav>
<main>
{"".join(body)}
</main>
<footer>{html.escape(footer)}</footer>
</body></html>
"""


def _section_title(module_name: str) -> str:
    return {
        "outliers": "Activation outliers",
        "quant": "Quantizers and per-layer error",
        "methods": "Outlier-aware methods",
        "compare": "Accuracy, size, cost and robustness",
    }.get(module_name.rsplit(".", 1)[-1], module_name.rsplit(".", 1)[-1])


QUICK: dict[str, Any] = {
    "methods_alphas": [0.5, 0.8],
    "methods_sweep_n": 32,
    "methods_max_layers": 8,
    "awq_n_grid": 10,
    "compare_n_eval": 64,
    "compare_n_attack": 4,
    "compare_eps": [0.0, 0.1],
    "compare_attack_steps": 3,
    "compare_quick_configs": True,
    "compare_support": 3,
    "compare_timing_threads": None,
}
"""Sample sizes of the default (quick) report: a minute or so for MiniLM on two CPU cores. Every
section states what it measured on; ``thorough=True`` (``qviz report --thorough``) uses each
section's full-size defaults instead (about four minutes for MiniLM)."""


def check_writable(out: Path) -> None:
    """Check, before any section runs, that ``out`` and its ``<stem>_data/`` folder can be written.

    Examples
    --------
    >>> import tempfile
    >>> check_writable(Path(tempfile.mkdtemp()))
    Traceback (most recent call last):
    ...
    ValueError: --out ... is a directory; expected the path of an .html file ...
    """
    if out.is_dir():
        raise ValueError(
            f"--out {str(out)!r} is a directory; expected the path of an .html file to write, "
            f"e.g. --out {str(out / 'report.html')!r}."
        )
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".{out.name}.qviz-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"--out {str(out)!r} cannot be written ({type(err).__name__}: {err.strerror or err}). Nothing was run. "
            "Pass a path in a folder you can write to, e.g. --out ./report.html."
        ) from err
    data_dir = out.with_name(out.stem + "_data")
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(
            f"The data folder {str(data_dir)!r} beside --out exists and is a file; move it or pick another --out."
        )


def build_report(
    model: Any = "minilm",
    out: str | Path = "report.html",
    *,
    n_calib: int = 64,
    sections: list[str] | None = None,
    thorough: bool = False,
    quiet: bool = False,
    progress: bool = True,
) -> ReportResult:
    """Run the analysis on ``model`` and write one self-contained HTML file plus the Datasets as netCDF.

    Parameters
    ----------
    model
        A name for :func:`qviz.load` (default ``"minilm"``), a :class:`~qviz.QvizModel` or a module.
    out
        Path of the HTML file. The netCDF files go into ``<stem>_data/`` beside it.
    n_calib
        Calibration inputs (from :func:`qviz.calibration_data`).
    sections
        Section names to run (``"outliers"``, ``"quant"``, ``"methods"``,
        ``"compare"``); ``None`` runs every available one.
    thorough
        Full-size measurements (every Linear layer in the methods section, four SmoothQuant
        alphas, the full comparison with attacks); default: the quick sizes of :data:`QUICK`.
    quiet
        No progress messages on stderr.
    progress
        Progress bars inside the sections.

    Returns
    -------
    ReportResult
        Paths written, seconds per section, and the sections that failed (with the error).

    Examples
    --------
    >>> res = build_report("digits-cnn", "digits.html")   # doctest: +SKIP
    >>> res.html_path                                     # doctest: +SKIP
    PosixPath('digits.html')
    """
    from qviz._io import save  # lazy: xarray and netCDF load only when a report is built
    from qviz.data import calibration_data  # lazy: torch loads only when a report is built
    from qviz.models import load  # lazy: as above

    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out should be an .html file; got {str(out)!r}.")
    check_writable(out)
    wanted = list(SECTIONS)
    if sections is not None:
        known = [s.rsplit(".", 1)[-1] for s in SECTIONS]
        bad = [s for s in sections if s not in known]
        if bad:
            raise ValueError(f"Unknown report section(s) {bad}; known sections: {known}.")
        wanted = [s for s in SECTIONS if s.rsplit(".", 1)[-1] in sections]

    t0 = time.perf_counter()
    _say(f"loading model {model if isinstance(model, str) else type(model).__name__!s} ...", quiet)
    qmodel = load(model)
    calib = calibration_data(qmodel, n=n_calib)
    ctx: dict[str, Any] = {"datasets": {}, "progress": progress, **({} if thorough else QUICK)}
    seconds: dict[str, float] = {"load": time.perf_counter() - t0}
    rendered: list[tuple[str, str, list[tuple[str, str]]]] = []
    failed: dict[str, str] = {}
    skipped: list[str] = []
    for i, mod_name in enumerate(wanted, 1):
        short = mod_name.rsplit(".", 1)[-1]
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as err:
            if err.name == mod_name:
                skipped.append(short)
                continue
            raise
        fn: Callable = module.section
        _say(f"[{i}/{len(wanted)}] {_section_title(mod_name)} ...", quiet)
        ts = time.perf_counter()
        try:
            items = fn(qmodel, calib, ctx)
            html_items = [(title, _render(content, f"{short}-{j}")) for j, (title, content) in enumerate(items)]
        except Exception as err:  # a failed section is shown in the report and reported, not hidden
            failed[short] = f"{type(err).__name__}: {err}"
            html_items = [("This section failed", f'<div class="err">{html.escape(traceback.format_exc())}</div>')]
            _say(f"section {short!r} FAILED: {type(err).__name__}: {err}", quiet)
        seconds[short] = time.perf_counter() - ts
        rendered.append((short, _section_title(mod_name), html_items))

    data_dir = out.with_name(out.stem + "_data")
    netcdf_paths = {}
    for name, ds in ctx["datasets"].items():
        netcdf_paths[name] = save(ds, data_dir / f"{name}.nc")
    total = time.perf_counter() - t0
    import torch  # lazy: as above

    subtitle = [
        f"{qmodel!r}",
        qmodel.description,
        f"{len(calib['input_ids']) if isinstance(calib, dict) else len(calib)} calibration inputs · torch {torch.__version__} · {platform.machine()} · "
        f"{torch.get_num_threads()} threads · built {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} in {total:.1f} s",
        "Thorough report: full-size measurements." if thorough else
        "Quick report: reduced sample sizes, stated in each section (qviz report --thorough measures at full size).",
    ]
    if qmodel.random_weights:
        subtitle.append("This model has RANDOM weights: its numbers test code paths, not a real network.")
    footer = f"qviz {__version__}. Datasets: " + ", ".join(str(p) for p in netcdf_paths.values())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_page(f"qviz report: {qmodel.name}", subtitle, rendered, footer), encoding="utf-8")
    _say(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {len(netcdf_paths)} netCDF files in {data_dir}", quiet)
    return ReportResult(out, netcdf_paths, seconds, failed, skipped)
