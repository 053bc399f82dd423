"""Pieces every explorer shares: header, message line, debouncing, background jobs, figure sync.

Examples
--------
>>> calls = []
>>> d = Debouncer(lambda: calls.append(1), delay=0)
>>> d(); calls
[1]
"""

from __future__ import annotations

import functools
import html
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import anywidget
import ipywidgets as W
import plotly.graph_objects as go
import traitlets

from qviz.widgets._assets import read_asset
from qviz.widgets._static import fallback_html


class ExplorerFrame(anywidget.AnyWidget):
    """The explorer's header (title and a note); it also hides the cell's static fallback when live."""

    _esm = read_asset("frame.js")
    _css = read_asset("qviz.css")

    title = traitlets.Unicode("").tag(sync=True)
    note = traitlets.Unicode("").tag(sync=True)
    static_id = traitlets.Unicode("").tag(sync=True)


class Debouncer:
    """Call ``fn`` once, ``delay`` seconds after the last of a burst of calls.

    With ``delay=0`` the call is synchronous (what tests and benchmarks use).
    Otherwise ``fn`` runs on a timer thread, so a slider drag never queues a
    model evaluation per pixel and the kernel keeps answering while it runs;
    ``fn`` calls never overlap.

    Examples
    --------
    >>> out = []
    >>> d = Debouncer(lambda: out.append(len(out)), delay=0.01)
    >>> d(); d(); d.flush(); out
    [0]
    """

    def __init__(self, fn: Callable[[], None], delay: float = 0.15) -> None:
        if not isinstance(delay, (int, float)) or isinstance(delay, bool) or delay < 0:
            raise ValueError(f"debounce delay must be a number of seconds >= 0; got {delay!r}.")
        self.fn = fn
        self.delay = float(delay)
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()

    def __call__(self) -> None:
        if self.delay == 0:
            with self._run_lock:
                self.fn()
            return
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.delay, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        with self._run_lock:
            self.fn()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until a pending call has run."""
        with self._lock:
            timer = self._timer
        if timer is not None:
            timer.join(timeout)
        with self._run_lock:  # a call that already started finishes first
            pass


class BackgroundJob:
    """Whole-model work on a thread, with a progress bar, a status line and a Cancel button.

    ``start(work, total)`` cancels the running job (it stops at its next
    check; nobody waits for it) and starts ``work(job)`` on a new thread;
    ``work`` calls ``job.advance(text)`` after each step and returns early when
    ``job.cancelled`` is set. Only the newest run moves the progress bar.

    Examples
    --------
    >>> job = BackgroundJob()
    >>> def work(job):
    ...     for i in range(3):
    ...         job.advance(f"step {i}")
    >>> job.start(work, total=3); job.wait(); job.progress.value
    3
    """

    def __init__(self) -> None:
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="220px"))
        self.status = W.HTML("")
        self.cancel_button = W.Button(description="Cancel", icon="stop", disabled=True,
                                      layout=W.Layout(width="90px"))
        self.cancel_button.on_click(lambda _: self.cancel())
        self.box = W.HBox([self.progress, self.cancel_button, self.status])
        self._thread: threading.Thread | None = None
        self._event = threading.Event()
        self._done = 0
        self.error: BaseException | None = None
        self.elapsed: float | None = None

    def _current(self) -> bool:
        return threading.current_thread() is self._thread

    @property
    def cancelled(self) -> bool:
        """True once this run was cancelled (or replaced by a newer one)."""
        if threading.current_thread() is not self._thread and isinstance(threading.current_thread(), _JobThread):
            return True
        return self._event.is_set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def advance(self, text: str = "") -> None:
        """One step done (only the newest run reports)."""
        if not self._current():
            return
        self._done += 1
        self.progress.value = min(self._done, self.progress.max)
        if text:
            self.status.value = html.escape(text)

    def start(self, work: Callable[[BackgroundJob], Any], total: int, label: str = "working") -> None:
        self.cancel()
        event = threading.Event()
        self._event = event
        self._done = 0
        self.error = None
        self.elapsed = None
        self.progress.max = max(1, int(total))
        self.progress.value = 0
        self.progress.bar_style = "info"
        self.status.value = html.escape(label)
        self.cancel_button.disabled = False

        def run() -> None:
            t0 = time.perf_counter()
            try:
                work(self)
            except Exception as err:  # shown in the widget; the thread must not die silently
                if self._current():
                    self.error = err
                    self.progress.bar_style = "danger"
                    self.status.value = (
                        f"<span style='color:#8a1f11'>{html.escape(type(err).__name__)}: {html.escape(str(err))}</span>"
                    )
            else:
                if self._current():
                    self.progress.bar_style = "warning" if event.is_set() else "success"
                    if event.is_set():
                        self.status.value = "cancelled"
            finally:
                if self._current():
                    self.elapsed = time.perf_counter() - t0
                    self.cancel_button.disabled = True

        thread = _JobThread(target=run, name="qviz-widget-job", daemon=True)
        self._thread = thread
        thread.start()

    def cancel(self) -> None:
        """Ask the running job to stop after its current step."""
        self._event.set()

    def wait(self, timeout: float | None = 300.0) -> None:
        """Block until the newest run (if any) has finished."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


class _JobThread(threading.Thread):
    """Marks threads started by :class:`BackgroundJob` (a superseded one reads as cancelled)."""


_TEMPLATE: dict | None = None


def _template() -> dict:
    """plotly's default template as JSON (what a ``go.Figure`` would carry), computed once."""
    global _TEMPLATE
    if _TEMPLATE is None:
        import plotly.io as pio

        _TEMPLATE = pio.templates[pio.templates.default].to_plotly_json()
    return _TEMPLATE


def figure_json(fig: go.Figure | dict) -> dict:
    """A figure (``go.Figure`` or figure dict) as plain JSON data: numpy arrays to lists, NaN/Inf to null.

    Examples
    --------
    >>> import numpy as np
    >>> figure_json({"data": [{"type": "bar", "y": np.array([1.0, np.nan])}]})["data"][0]["y"]
    [1.0, None]
    """
    import json

    from plotly.utils import PlotlyJSONEncoder

    spec = fig.to_plotly_json() if isinstance(fig, go.Figure) else {"data": list(fig.get("data", [])),
                                                                      "layout": dict(fig.get("layout", {}))}
    out = json.loads(json.dumps(spec, cls=PlotlyJSONEncoder))
    out.setdefault("layout", {}).setdefault("template", _template())
    return out


@functools.cache
def plotly_js() -> bytes:
    """The plotly.js bundle of the installed ``plotly`` package (sent once per page to the browser)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode("utf-8")


class PlotPane(anywidget.AnyWidget):
    """A long-lived Plotly figure in the notebook, redrawn in place by :meth:`show`.

    The figure travels as plain JSON in the ``figure`` trait (one message per
    change) and ``widgets/plot.js`` redraws it with ``Plotly.react``, which
    updates the existing plot instead of building a new one. plotly.js itself
    (4-5 MB) crosses to the browser once per page, on the first pane's request,
    and every pane shares it. (``go.FigureWidget`` does the same job but, in
    plotly 7.1, ships the whole bundle inside each figure's module, and
    anywidget 0.11 gives a module 2 s to load: on a busy machine the late
    figures stayed blank, as the browser tier showed.) Setting a trait is one
    message and works from any thread.

    Examples
    --------
    >>> pane = PlotPane()
    >>> pane.show({"data": [{"type": "bar", "y": [3, 4]}], "layout": {"title": {"text": "t"}}})
    >>> pane.figure["data"][0]["y"], pane.title
    ([3, 4], 't')
    """

    _esm = read_asset("plot.js")
    _css = read_asset("qviz.css")

    figure = traitlets.Dict().tag(sync=True)
    config = traitlets.Dict().tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("figure", {"data": [], "layout": {}})
        super().__init__(**kwargs)
        self.on_msg(self._on_front_end_message)

    def _on_front_end_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("kind") == "need-plotly":
            self.send({"kind": "plotly-js"}, buffers=[plotly_js()])

    @property
    def title(self) -> str:
        t = self.figure.get("layout", {}).get("title", "")
        return t.get("text", "") if isinstance(t, dict) else str(t)

    def show(self, fig: go.Figure | dict) -> None:
        """Replace the figure (one message to the browser; none when the figure is unchanged)."""
        data = figure_json(fig)
        if data == self.figure:
            return  # nothing changed: no message, no redraw in the browser
        self.figure = data


def sync_figure(pane: PlotPane, fig: go.Figure | dict) -> None:
    """Show ``fig`` in ``pane`` (kept as the single place where explorers redraw a figure)."""
    pane.show(fig)


class SelectionError(traitlets.TraitError, ValueError):
    """A control was set to a value that is not one of its choices (a ``ValueError`` and a ``TraitError``)."""


class Choice(W.Dropdown):
    """A ``Dropdown`` whose bad selections say which value was refused and what the choices are.

    ipywidgets' own message ("Invalid selection: value not found") names neither.

    Examples
    --------
    >>> c = Choice(options=["a", "b"], value="a", description="layer")
    >>> c.value = "z"
    Traceback (most recent call last):
    ...
    qviz.widgets._base.SelectionError: layer: 'z' is not one of the choices ['a', 'b']. Pick one of those.
    """

    def _refuse(self, what: str, value: Any, choices: list[Any]) -> SelectionError:
        from qviz._errors import did_you_mean

        close = did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else ""
        shown = choices if len(choices) <= 12 else [*choices[:12], f"... {len(choices) - 12} more"]
        return SelectionError(
            f"{self.description or 'selection'}: {value!r} is not one of the {what} {shown}.{close} Pick one of those."
        )

    @traitlets.validate("value")
    def _validate_value(self, proposal: Any) -> Any:
        try:
            return super()._validate_value(proposal)
        except traitlets.TraitError as err:
            raise self._refuse("choices", proposal.value, list(self._options_values)) from err

    @traitlets.validate("label")
    def _validate_label(self, proposal: Any) -> Any:
        try:
            return super()._validate_label(proposal)
        except traitlets.TraitError as err:
            raise self._refuse("labels", proposal.value, list(self._options_labels)) from err

    @traitlets.validate("index")
    def _validate_index(self, proposal: Any) -> Any:
        try:
            return super()._validate_index(proposal)
        except traitlets.TraitError as err:
            raise SelectionError(
                f"{self.description or 'selection'}: index {proposal.value!r} is out of range; there are "
                f"{len(self._options_values)} choices (0 to {len(self._options_values) - 1})."
            ) from err


def message_html(err: BaseException | str) -> str:
    """The readable message shown in place of a traceback."""
    text = err if isinstance(err, str) else f"{err}"
    return f'<div class="qviz-message"><b>Not applied:</b> {html.escape(text)}</div>'


class Explorer(W.VBox):
    """Base of the explorers: a header, a message line, the static fallback, error containment."""

    title = "qviz"

    def __init__(self, children: list[W.Widget], note: str = "", debounce: float = 0.05) -> None:
        self._static_id = uuid.uuid4().hex
        self.frame = ExplorerFrame(title=self.title, note=note, static_id=self._static_id)
        self.message = W.HTML("", layout=W.Layout(margin="2px 0"))
        self.last_error: str | None = None
        self._lock = threading.RLock()
        self._debounced = Debouncer(self._refresh_guarded, delay=debounce)
        super().__init__([self.frame, self.message, *children])

    # --- error containment: bad input gets a message, the figures stay as they were
    def _refresh(self) -> None:  # pragma: no cover - each explorer defines it
        raise NotImplementedError

    def _refresh_guarded(self) -> None:
        with self._lock:
            try:
                self._refresh()
            except Exception as err:  # noqa: BLE001 - shown to the user instead of a traceback
                self.last_error = f"{type(err).__name__}: {err}" if not isinstance(err, (ValueError, TypeError)) else str(err)
                self.message.value = message_html(self.last_error)
            else:
                self.last_error = None
                self.message.value = ""

    def _on_control(self, change: dict[str, Any] | None = None) -> None:
        self._debounced()

    def flush(self) -> None:
        """Wait for pending (debounced) updates and background work to finish (for scripts and tests)."""
        self._debounced.flush()
        job = getattr(self, "job", None)
        if job is not None:
            job.wait()

    # --- static fallback
    def static_parts(self) -> list[str]:  # pragma: no cover - each explorer defines it
        raise NotImplementedError

    def static_html(self) -> str:
        """The static picture of the current state (HTML with inline PNG images, no script)."""
        with self._lock:
            return fallback_html(self._static_id, f"{self.title}: {self.frame.note}", self.static_parts())

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display({"text/html": self.static_html(), "text/plain": f"<{self.title} (static picture)>"}, raw=True)
        display(super()._repr_mimebundle_(), raw=True)
