"""The IPython extension: ``%load_ext qviz``.

It registers the ``%qviz`` line magic::

    %qviz outliers [--model minilm] [--n 32] [--threshold 6]      OutlierExplorer
    %qviz explore  [--model minilm] [--n 32] [--layer NAME] [--method RTN] [--bits 4] [--group-size 128]
    %qviz compare  [CMP_VARIABLE] [--model ...]                      CompareDashboard
    %qviz report   [--model minilm] [--out report.html] [--n 64] [--sections outliers,quant] [--inline]

(``--model`` and ``--data`` may name a variable of the notebook: a loaded
model, a calibration batch), and rich display of qviz results: a ``stats``
Dataset (from :func:`qviz.capture`), an ``errors`` Dataset (from
:func:`qviz.layer_error`) or a ``cmp`` Dataset (from :func:`qviz.compare`)
left as the last expression of a cell shows its figure above xarray's usual
summary. Other Datasets display as before.

Examples
--------
>>> %load_ext qviz                      # doctest: +SKIP
>>> %qviz outliers --model minilm       # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import html
import importlib
import shlex
from typing import Any

from qviz._errors import did_you_mean

MAGIC_NAME = "qviz"
COMMANDS = ("outliers", "explore", "compare", "report")

USAGE = """\
%qviz outliers [--model NAME|VAR] [--data VAR] [--n N] [--threshold T]
%qviz explore  [--model NAME|VAR] [--data VAR] [--n N] [--layer NAME] [--method M] [--bits B] [--group-size G]
%qviz compare  [CMP_VAR] [--model NAME|VAR]
%qviz report   [--model NAME|VAR] [--out PATH] [--n N] [--sections a,b] [--inline]"""


# --------------------------------------------------------------------------- rich display


def result_kind(obj: Any) -> str | None:
    """``"stats"``, ``"errors"``, ``"cmp"`` or None: which qviz result a Dataset is.

    Examples
    --------
    >>> import xarray as xr
    >>> result_kind(xr.Dataset({"accuracy": ("config", [0.9]), "size_bytes": ("config", [10])}))
    'cmp'
    >>> result_kind(xr.Dataset()) is None
    True
    """
    import xarray as xr  # lazy: %load_ext qviz stays fast

    if not isinstance(obj, xr.Dataset):
        return None
    if obj.attrs.get("title") == "qviz activation statistics" and "absmax" in obj:
        return "stats"
    if "weight_sqnr_db" in obj:
        return "errors"
    if "accuracy" in obj and "size_bytes" in obj:
        return "cmp"
    return None


def result_figure(ds: Any) -> Any:
    """The figure a qviz result Dataset displays as (a Plotly figure), or None for other objects."""
    kind = result_kind(ds)
    if kind is None:
        return None
    import qviz.plot  # lazy: Plotly loads only when a result is displayed

    if kind == "stats":
        return qviz.plot.outliers(ds)
    if kind == "errors":
        return qviz.plot.layer_error(ds)
    try:
        dashboard = qviz.plot.dashboard
    except AttributeError:  # the dashboard figure is not part of this install: use the widget's charts
        from qviz.widgets.compare import compare_figure  # lazy: the widget stack loads only for this fallback

        return compare_figure(ds)
    return dashboard(ds)


def _dataset_mimebundle(ds: Any, include: Any = None, exclude: Any = None) -> dict[str, Any] | None:
    """The figure of a qviz result followed by xarray's own HTML summary; None for other Datasets."""
    fig = result_figure(ds)
    if fig is None:
        return None
    bundle = dict(fig._repr_mimebundle_(include=include, exclude=exclude) or {})
    if "application/vnd.plotly.v1+json" not in bundle:  # outside a notebook plotly's default renderer is ""
        import plotly.io as pio  # lazy: Plotly loads only when a result is displayed

        bundle.update(pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_plotly_json()))
    summary = ds._repr_html_()
    if "text/html" in bundle:
        bundle["text/html"] = bundle["text/html"] + summary
    else:
        bundle["text/html"] = summary
    bundle["text/plain"] = repr(ds)
    return bundle


# --------------------------------------------------------------------------- the magic


class QvizUsageError(Exception):
    """Bad arguments to ``%qviz`` (shown as a one-line message, not a traceback)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print and exit the kernel's process
        raise QvizUsageError(f"{message}\nusage:\n{USAGE}")


def _parser() -> _Parser:
    p = _Parser(prog="%qviz", add_help=False)
    p.add_argument("command", nargs="?", default="help")
    p.add_argument("target", nargs="?", default=None)
    p.add_argument("--model", default="minilm")
    p.add_argument("--data", default=None)
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--threshold", type=float, default=6.0)
    p.add_argument("--layer", default=None)
    p.add_argument("--method", default="RTN")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", default="128")
    p.add_argument("--out", default="report.html")
    p.add_argument("--sections", default=None)
    p.add_argument("--inline", action="store_true")
    return p


def _resolve_model(spec: str, user_ns: dict[str, Any]) -> Any:
    from qviz.models import QvizModel, load  # lazy: torch loads at the first magic, not at %load_ext

    value = user_ns.get(spec)
    if value is not None and not isinstance(value, str):
        return value if isinstance(value, QvizModel) else load(value)
    return load(spec)


def _resolve_data(args: argparse.Namespace, model: Any, user_ns: dict[str, Any], default_n: int) -> Any:
    from qviz.data import calibration_data  # lazy: torch loads at the first magic, not at %load_ext

    if args.data is not None:
        if args.data not in user_ns:
            raise QvizUsageError(f"--data names {args.data!r}, which is not a variable of this notebook.")
        return user_ns[args.data]
    n = default_n if args.n is None else args.n
    if n < 1:
        raise QvizUsageError(f"--n must be a positive number of calibration inputs; got {n}.")
    return calibration_data(model, n=n)


def run_magic(line: str, user_ns: dict[str, Any] | None = None) -> Any:
    """Run one ``%qviz`` line and return what it made (a widget, a report result, or the usage text).

    Examples
    --------
    >>> print(run_magic("help").splitlines()[0])
    %qviz outliers [--model NAME|VAR] [--data VAR] [--n N] [--threshold T]
    """
    user_ns = {} if user_ns is None else user_ns
    try:
        args = _parser().parse_args(shlex.split(line))
    except ValueError as err:  # an unbalanced quote
        raise QvizUsageError(f"{err}\nusage:\n{USAGE}") from err
    cmd = args.command
    if cmd in ("help", "-h", "--help"):
        return USAGE
    if cmd not in COMMANDS:
        raise QvizUsageError(f"Unknown %qviz command {cmd!r}.{did_you_mean(cmd, COMMANDS)}\nusage:\n{USAGE}")
    import qviz.widgets  # lazy: ipywidgets and anywidget load at the first magic, not at %load_ext

    if cmd == "compare":
        if args.target is not None:
            if args.target not in user_ns:
                raise QvizUsageError(f"{args.target!r} is not a variable of this notebook; pass a cmp Dataset.")
            return qviz.widgets.CompareDashboard(user_ns[args.target])
        model = _resolve_model(args.model, user_ns)
        from qviz.evaluate.compare import compare  # lazy: the evaluation stack loads only for this command
        from qviz.quant.config import RTN, BnbInt8, BnbNF4  # lazy: as above

        configs = [RTN(bits=8, group_size=None), RTN(bits=4, group_size=128), BnbNF4(), BnbInt8()]
        return qviz.widgets.CompareDashboard(compare(model, configs))
    if args.target is not None:
        raise QvizUsageError(f"%qviz {cmd} takes options only; got the extra word {args.target!r}.\nusage:\n{USAGE}")
    model = _resolve_model(args.model, user_ns)
    if cmd == "outliers":
        batch = _resolve_data(args, model, user_ns, 32)
        return qviz.widgets.OutlierExplorer(model, batch, threshold=args.threshold)
    if cmd == "explore":
        batch = _resolve_data(args, model, user_ns, 32)
        return qviz.widgets.QuantExplorer(model, batch, layer=args.layer, method=args.method, bits=args.bits,
                                          group_size=args.group_size)
    from qviz.report import build_report  # lazy: the report sections load only for this command

    sections = args.sections.split(",") if args.sections else None
    n = 64 if args.n is None else args.n
    result = build_report(model, args.out, n_calib=n, sections=sections, quiet=True, progress=False)
    return ReportOutput(result, model if args.inline else None, n, sections)


class ReportOutput:
    """What ``%qviz report`` shows: where the report went, and with ``--inline`` its figures."""

    def __init__(self, result: Any, inline_model: Any = None, n: int = 64, sections: list[str] | None = None) -> None:
        self.result = result
        self.inline_model = inline_model
        self.n = n
        self.sections = sections

    def _repr_html_(self) -> str:
        r = self.result
        rows = "".join(
            f"<li>{html.escape(k)}: {v:.1f} s</li>" for k, v in getattr(r, "seconds", {}).items()
        )
        failed = "".join(f"<li style='color:#8a1f11'>{html.escape(k)}: {html.escape(v)}</li>"
                         for k, v in getattr(r, "failed", {}).items())
        data = "".join(f"<li>{html.escape(k)}: {html.escape(str(p))}</li>" for k, p in getattr(r, "netcdf_paths", {}).items())
        return (
            f"<div><b>qviz report written</b> to <code>{html.escape(str(r.html_path))}</code>"
            f"<ul>{rows}{failed}</ul>{'<b>data</b><ul>' + data + '</ul>' if data else ''}</div>"
        )

    def _ipython_display_(self) -> None:
        from IPython.display import HTML, display  # lazy: IPython is there only inside a notebook

        display(HTML(self._repr_html_()))
        if self.inline_model is None:
            return
        from qviz.data import calibration_data  # lazy: torch loads only when the report is shown inline
        from qviz.report import SECTIONS  # lazy: as above

        calib = calibration_data(self.inline_model, n=self.n)
        ctx: dict[str, Any] = {"datasets": {}, "progress": False}
        for mod_name in SECTIONS:
            short = mod_name.rsplit(".", 1)[1]
            if self.sections and short not in self.sections:
                continue
            try:
                module = importlib.import_module(mod_name)
            except ModuleNotFoundError:
                continue
            for title, content in module.section(self.inline_model, calib, ctx):
                display(HTML(f"<h4>{html.escape(title)}</h4>"))
                display(HTML(content) if isinstance(content, str) else content)


def _make_magic(ipython: Any) -> Any:
    def qviz_magic(line: str) -> Any:
        """%qviz outliers | explore | compare | report  (``%qviz help`` for the options)."""
        from IPython.core.error import UsageError  # lazy: IPython is there only inside a notebook

        try:
            out = run_magic(line, ipython.user_ns)
        except QvizUsageError as err:
            raise UsageError(str(err)) from err
        if isinstance(out, str):
            print(out)
            return None
        return out

    return qviz_magic


# --------------------------------------------------------------------------- load / unload

_REGISTERED: dict[int, Any] = {}


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%qviz`` and the rich display of qviz result Datasets on ``ipython``."""
    import xarray as xr  # lazy: %load_ext qviz stays fast

    ipython.register_magic_function(_make_magic(ipython), magic_kind="line", magic_name=MAGIC_NAME)
    formatter = ipython.display_formatter.mimebundle_formatter
    previous = formatter.for_type(xr.Dataset, _dataset_mimebundle)
    _REGISTERED[id(ipython)] = previous


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the ``%qviz`` magic and the Dataset display that :func:`load_ipython_extension` added."""
    import xarray as xr  # lazy: %load_ext qviz stays fast

    magics = ipython.magics_manager.magics.get("line", {})
    magics.pop(MAGIC_NAME, None)
    formatter = ipython.display_formatter.mimebundle_formatter
    previous = _REGISTERED.pop(id(ipython), None)
    formatter.pop(xr.Dataset, None)
    if previous is not None:
        formatter.for_type(xr.Dataset, previous)
