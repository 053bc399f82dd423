// qviz explorer header. Besides the title it does one job: when the live
// widget is on screen, it hides the static picture that the same cell printed
// as a fallback (for a notebook reopened without a kernel or an HTML export).

function hideStatic(id) {
  if (!id) return 0;
  const nodes = document.querySelectorAll(`.qviz-static[data-qviz-static="${id}"]`);
  nodes.forEach((node) => {
    node.style.display = "none";
    const output = node.closest(".jp-OutputArea-child, .output_area");
    if (output) output.style.display = "none";
  });
  return nodes.length;
}

function render({ model, el }) {
  el.classList.add("qviz-frame");
  const title = document.createElement("div");
  title.className = "qviz-frame-title";
  const note = document.createElement("div");
  note.className = "qviz-frame-note";
  el.append(title, note);
  const update = () => {
    title.textContent = model.get("title");
    note.textContent = model.get("note");
  };
  update();
  model.on("change:title", update);
  model.on("change:note", update);
  const id = model.get("static_id");
  let tries = 0;
  const sweep = () => {
    hideStatic(id);
    if (++tries < 10) setTimeout(sweep, 300);
  };
  sweep();
  return () => {
    model.off("change:title", update);
    model.off("change:note", update);
  };
}

export default { render };
