// qviz heatmap canvas: a large matrix arrives as one binary buffer (float32,
// row-major) and is drawn on a <canvas>, one pixel per cell, then scaled.
// Hover reads the value back; a click selects a row (the Python side hears
// it through the `selected_row` trait). Plain ES module, no bundler.

const VIRIDIS = [
  [68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37],
];
const MAGMA = [
  [0, 0, 4], [28, 16, 68], [79, 18, 123], [129, 37, 129], [181, 54, 122],
  [229, 80, 100], [251, 135, 97], [254, 194, 135], [252, 253, 191],
];
const SCALES = { viridis: VIRIDIS, magma: MAGMA };
const HIGHLIGHT = [214, 39, 40];
const NAN_RGB = [235, 235, 235];

function lut(name) {
  const stops = SCALES[name] || VIRIDIS;
  const out = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * (stops.length - 1);
    const k = Math.min(Math.floor(t), stops.length - 2);
    const f = t - k;
    for (let c = 0; c < 3; c++) {
      out[i * 3 + c] = Math.round(stops[k][c] + f * (stops[k + 1][c] - stops[k][c]));
    }
  }
  return out;
}

// ipywidgets hands a Bytes trait over as a DataView; accept the other views too.
function asFloat32(buf) {
  if (!buf) return new Float32Array(0);
  if (buf instanceof Float32Array) return buf;
  if (buf instanceof DataView) return new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  if (ArrayBuffer.isView(buf)) return new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  if (buf instanceof ArrayBuffer) return new Float32Array(buf);
  return new Float32Array(0);
}

function fmt(v) {
  if (!Number.isFinite(v)) return "n/a";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e4)) return v.toExponential(3);
  return v.toPrecision(4);
}

function render({ model, el }) {
  el.classList.add("qviz-heatmap");
  const title = document.createElement("div");
  title.className = "qviz-heatmap-title";
  const body = document.createElement("div");
  body.className = "qviz-heatmap-body";
  const labels = document.createElement("canvas");
  labels.className = "qviz-heatmap-labels";
  const canvas = document.createElement("canvas");
  canvas.className = "qviz-heatmap-canvas";
  const bar = document.createElement("canvas");
  bar.className = "qviz-heatmap-colorbar";
  const readout = document.createElement("div");
  readout.className = "qviz-heatmap-readout";
  body.append(labels, canvas, bar);
  el.append(title, body, readout);

  let values = new Float32Array(0);
  let lo = 0, hi = 1, nOver = 0;
  let draws = 0;

  function decode() {
    values = asFloat32(model.get("values"));
  }

  function range() {
    const log = model.get("log_scale");
    lo = Infinity; hi = -Infinity;
    for (let i = 0; i < values.length; i++) {
      let v = values[i];
      if (!Number.isFinite(v)) continue;
      if (log) { if (v <= 0) continue; v = Math.log10(v); }
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (!Number.isFinite(lo)) { lo = 0; hi = 1; }
    if (hi === lo) hi = lo + 1;
  }

  function draw() {
    const [rows, cols] = model.get("shape");
    const n = rows * cols;
    if (!rows || !cols || values.length < n) {
      readout.textContent = values.length < n ? "waiting for data..." : "no data";
      return;
    }
    range();
    const log = model.get("log_scale");
    const thr = model.get("threshold");
    const useThr = Number.isFinite(thr) && thr > 0;
    const colours = lut(model.get("colorscale"));
    const sel = model.get("selected_row");
    const off = document.createElement("canvas");
    off.width = cols;
    off.height = rows;
    const ctx = off.getContext("2d");
    const img = ctx.createImageData(cols, rows);
    const px = img.data;
    const scale = 255 / (hi - lo);
    nOver = 0;
    for (let i = 0; i < n; i++) {
      const raw = values[i];
      let rgb;
      if (!Number.isFinite(raw) || (log && raw <= 0)) {
        rgb = NAN_RGB;
      } else if (useThr && Math.abs(raw) > thr) {
        rgb = HIGHLIGHT;
        nOver++;
      } else {
        const v = log ? Math.log10(raw) : raw;
        const k = Math.max(0, Math.min(255, Math.round((v - lo) * scale))) * 3;
        px[i * 4] = colours[k]; px[i * 4 + 1] = colours[k + 1]; px[i * 4 + 2] = colours[k + 2];
        px[i * 4 + 3] = 255;
        continue;
      }
      px[i * 4] = rgb[0]; px[i * 4 + 1] = rgb[1]; px[i * 4 + 2] = rgb[2]; px[i * 4 + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);

    const width = Math.max(200, (el.clientWidth || 820) - 230);
    const height = Math.max(120, Math.min(model.get("max_height"), rows * model.get("row_px")));
    canvas.width = width;
    canvas.height = height;
    const c = canvas.getContext("2d");
    c.imageSmoothingEnabled = false;
    c.drawImage(off, 0, 0, width, height);
    if (sel >= 0 && sel < rows) {
      c.strokeStyle = "#000";
      c.lineWidth = 2;
      c.strokeRect(1, (sel * height) / rows, width - 2, Math.max(2, height / rows));
    }
    drawLabels(rows, height);
    drawColorbar(colours, height, log);
    const over = useThr ? ` · ${nOver} cell${nOver === 1 ? "" : "s"} over ${fmt(thr)} in red` : "";
    title.textContent = model.get("title") + over;
    draws += 1;
    el.dataset.qvizDraws = String(draws);
    el.dataset.qvizDrawnAt = String(performance.now());
    el.dataset.qvizOver = String(nOver);
  }

  function drawLabels(rows, height) {
    const names = model.get("row_labels");
    labels.width = 170;
    labels.height = height;
    const c = labels.getContext("2d");
    c.clearRect(0, 0, labels.width, height);
    const rowH = height / rows;
    if (rowH < 7) return; // too dense: hover shows the name
    c.font = `${Math.min(11, Math.floor(rowH))}px sans-serif`;
    c.fillStyle = "#333";
    c.textAlign = "right";
    c.textBaseline = "middle";
    for (let r = 0; r < rows; r++) {
      let text = String(names[r] ?? r);
      while (text.length > 4 && c.measureText(text).width > 164) text = "…" + text.slice(2);
      c.fillText(text, 166, (r + 0.5) * rowH);
    }
  }

  function drawColorbar(colours, height, log) {
    bar.width = 56;
    bar.height = height;
    const c = bar.getContext("2d");
    c.clearRect(0, 0, bar.width, height);
    for (let y = 0; y < height; y++) {
      const k = Math.round((1 - y / Math.max(1, height - 1)) * 255) * 3;
      c.fillStyle = `rgb(${colours[k]},${colours[k + 1]},${colours[k + 2]})`;
      c.fillRect(0, y, 12, 1);
    }
    c.fillStyle = "#333";
    c.font = "10px sans-serif";
    c.textBaseline = "top";
    const top = log ? 10 ** hi : hi;
    const bottom = log ? 10 ** lo : lo;
    c.fillText(fmt(top), 15, 0);
    c.textBaseline = "bottom";
    c.fillText(fmt(bottom), 15, height);
    if (log) { c.textBaseline = "middle"; c.fillText("log", 15, height / 2); }
  }

  function cellAt(ev) {
    const [rows, cols] = model.get("shape");
    const rect = canvas.getBoundingClientRect();
    const r = Math.floor(((ev.clientY - rect.top) / rect.height) * rows);
    const k = Math.floor(((ev.clientX - rect.left) / rect.width) * cols);
    if (r < 0 || r >= rows || k < 0 || k >= cols) return null;
    return [r, k];
  }

  canvas.addEventListener("mousemove", (ev) => {
    const cell = cellAt(ev);
    if (!cell) return;
    const [r, k] = cell;
    const cols = model.get("shape")[1];
    const starts = model.get("col_starts");
    const total = model.get("n_cols_total");
    const first = starts.length ? starts[k] : k;
    const last = starts.length ? (k + 1 < starts.length ? starts[k + 1] - 1 : total - 1) : k;
    const colText = first === last ? `${first}` : `${first}–${last} (max)`;
    const name = model.get("row_labels")[r] ?? r;
    readout.textContent =
      `${model.get("row_name")} ${name} · ${model.get("col_name")} ${colText} · ` +
      `${model.get("value_name")} ${fmt(values[r * cols + k])}`;
  });
  canvas.addEventListener("mouseleave", () => { readout.textContent = model.get("hint"); });
  canvas.addEventListener("click", (ev) => {
    const cell = cellAt(ev);
    if (!cell) return;
    model.set("selected_row", cell[0]);
    model.save_changes();
  });

  // Several traits usually change in one message: draw once per animation frame.
  let pending = false;
  let dirtyData = true;
  function schedule(data) {
    dirtyData = dirtyData || data;
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      if (dirtyData) { decode(); dirtyData = false; }
      draw();
    });
  }
  const onData = () => schedule(true);
  const onLook = () => schedule(false);
  const keys = ["shape", "threshold", "log_scale", "colorscale", "selected_row", "title", "row_labels"];
  model.on("change:values", onData);
  for (const key of keys) model.on(`change:${key}`, onLook);
  let lastWidth = 0;
  const ro = typeof ResizeObserver === "undefined" ? null : new ResizeObserver(() => {
    if (el.clientWidth !== lastWidth) { lastWidth = el.clientWidth; schedule(false); }
  });
  if (ro) ro.observe(el);
  readout.textContent = model.get("hint");
  schedule(true);
  return () => {
    model.off("change:values", onData);
    for (const key of keys) model.off(`change:${key}`, onLook);
    if (ro) ro.disconnect();
  };
}

export default { render };
