"""Build, at image-build time, what the tour would otherwise build in the user's session.

Binder's postBuild runs this once. It trains and caches digits-cnn, caches the LLM's
weights where this qviz knows the LLM, and then executes the tour notebook top to bottom
(outputs thrown away): every Numba kernel the tour calls is compiled into the on-disk
cache beside its source, and a tour that fails to run fails the build instead of the demo.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOUR = ROOT / "notebooks" / "00_tour.ipynb"


def main() -> int:
    import nbclient
    import nbformat

    import qviz
    from qviz.models import KNOWN_MODELS

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    qviz.load("digits-cnn")
    if "smollm2-135m" in KNOWN_MODELS:
        qviz.load("smollm2-135m")
    start = time.perf_counter()
    nb = nbformat.read(TOUR, as_version=4)
    with tempfile.TemporaryDirectory() as work:
        nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                resources={"metadata": {"path": work}}).execute()
    print(f"prebuild: the tour ran in {time.perf_counter() - start:.0f} s; caches are warm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
