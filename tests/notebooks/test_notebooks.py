"""Every notebook runs top to bottom offline on the embedded models."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    client.execute()
    print(f"{path.name} ran in {time.perf_counter() - start:.0f} s")  # shown with -rP; --durations lists it too
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert {"00_tour.ipynb", "07_qat.ipynb", "08_checking_the_claims.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    """Outputs vary by machine and bloat diffs: notebooks are committed clean (clear them before committing)."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and (c.get("outputs") or c.get("execution_count") is not None or "execution" in c.get("metadata", {}))]
    assert not dirty, (f"{path.name}: code cells {dirty} carry outputs or execution records; clear them "
                       f"(jupyter nbconvert --clear-output --inplace {path.relative_to(ROOT)}).")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_states_a_goal_and_has_an_exercise_with_a_collapsed_solution(path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "**Goal.**" in nb.cells[0].source, f"{path.name}: the first cell must state the notebook's goal"
    assert "## Exercise" in text, f"{path.name}: no exercise"
    collapsed = "<details>" in text or any(
        c.get("metadata", {}).get("jupyter", {}).get("source_hidden") for c in nb.cells if c.cell_type == "code")
    assert collapsed, f"{path.name}: the exercise's solution must be collapsed (<details> or a hidden cell)"
