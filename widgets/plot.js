// qviz plot pane: one long-lived Plotly figure, redrawn in place with
// Plotly.react when the `figure` trait changes (no new DOM, no re-layout of
// the notebook output).
//
// plotly.js (4-5 MB) is loaded once per page, not once per figure: the first
// pane asks its kernel for the bundle (one binary message), every other pane
// waits on the same promise, kept on globalThis because anywidget evaluates
// this module afresh for every widget model.

const KEY = "__qvizPlotly";

function loadPlotly(model) {
  if (globalThis.Plotly && globalThis.Plotly.react) return Promise.resolve(globalThis.Plotly);
  if (globalThis[KEY]) return globalThis[KEY];
  const promise = new Promise((resolve, reject) => {
    const onMessage = (msg, buffers) => {
      if (!msg || msg.kind !== "plotly-js") return;
      model.off("msg:custom", onMessage);
      const url = URL.createObjectURL(new Blob([buffers[0]], { type: "text/javascript" }));
      const script = document.createElement("script");
      // an AMD loader on the page (classic notebook, some Voila templates) would
      // take the bundle as a module and leave window.Plotly unset
      const amd = window.define;
      window.define = undefined;
      const done = (ok) => {
        window.define = amd;
        URL.revokeObjectURL(url);
        if (ok && globalThis.Plotly) resolve(globalThis.Plotly);
        else {
          globalThis[KEY] = null;
          reject(new Error("qviz: plotly.js did not load"));
        }
      };
      script.onload = () => done(true);
      script.onerror = () => done(false);
      script.src = url;
      document.head.appendChild(script);
    };
    model.on("msg:custom", onMessage);
    model.send({ kind: "need-plotly" });
  });
  globalThis[KEY] = promise;
  return promise;
}

function render({ model, el }) {
  el.classList.add("qviz-plot");
  const gd = document.createElement("div");
  gd.className = "qviz-plot-figure";
  el.append(gd);
  let Plotly = null;
  let alive = true;
  let pending = false;

  const draw = () => {
    if (!Plotly || !alive) return;
    const fig = model.get("figure") || {};
    const config = { displaylogo: false, responsive: true, ...(model.get("config") || {}) };
    // an explicit height: with `responsive`, plotly sizes the plot to its
    // container, and a notebook output has no height of its own
    const layout = fig.layout || {};
    gd.style.width = "100%";
    gd.style.height = `${Number(layout.height) || 450}px`;
    const t0 = performance.now();
    Plotly.react(gd, fig.data || [], layout, config).then(() => {
      el.dataset.qvizDraws = String(Number(el.dataset.qvizDraws || 0) + 1);
      el.dataset.qvizDrawMs = (performance.now() - t0).toFixed(1);
    });
  };
  // several trait changes in one tick (figure + config) make one draw
  const schedule = () => {
    if (pending) return;
    pending = true;
    queueMicrotask(() => {
      pending = false;
      draw();
    });
  };

  // a notebook reopened without a kernel restores the widget but nobody answers
  // the request for plotly.js: say so instead of leaving a blank space
  const waiting = setTimeout(() => {
    if (!Plotly) {
      gd.classList.add("qviz-plot-waiting");
      gd.textContent = "This figure is drawn by the running kernel: run the cell again to see it.";
    }
  }, 8000);
  loadPlotly(model).then(
    (P) => {
      clearTimeout(waiting);
      gd.classList.remove("qviz-plot-waiting");
      gd.textContent = "";
      Plotly = P;
      draw();
    },
    (err) => {
      gd.textContent = String(err);
    },
  );
  model.on("change:figure", schedule);
  model.on("change:config", schedule);

  // JupyterLab resizes output areas without a window resize event
  const observer = new ResizeObserver(() => {
    if (Plotly && gd.offsetWidth > 0 && gd.data) Plotly.Plots.resize(gd);
  });
  observer.observe(el);

  return () => {
    alive = false;
    clearTimeout(waiting);
    observer.disconnect();
    model.off("change:figure", schedule);
    model.off("change:config", schedule);
    if (Plotly) Plotly.purge(gd);
  };
}

export default { render };
