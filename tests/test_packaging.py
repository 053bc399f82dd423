"""The built wheel installs into a fresh virtual environment and works there.

The fresh venv reuses this environment's dependencies through a .pth file
(installing torch again would take minutes and the network), installs the
wheel itself with --no-deps, and runs a smoke test from an empty directory so
the checkout cannot shadow the installed package.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMOKE = r"""
import sys, pathlib
import qviz, kernels_numba, numpy as np
assert "site-packages" in qviz.__file__, qviz.__file__
static = pathlib.Path(qviz.__file__).parent / "_static"
assert static.is_dir(), "widgets/ assets missing from the wheel"
print("assets", sorted(p.name for p in static.iterdir()))
w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
print("kernels", [n for n in dir(kernels_numba) if not n.startswith("_")][:5])
import torch
stats = qviz.capture(torch.nn.Sequential(torch.nn.Linear(4, 4)), torch.randn(8, 4), progress=False)
print("capture", dict(stats.sizes))
"""


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv(tmp_path):
    pytest.importorskip("build")
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        capture_output=True, text=True,
    )
    assert built.returncode == 0, (built.stdout + built.stderr)[-3000:]
    (wheel,) = dist.glob("qviz-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("kernels_numba/") for n in names)
    assert any(n.startswith("qviz/_static/") for n in names)
    assert not any(n.startswith("widgets/") for n in names), "no top-level widgets module may be installed"
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: torch<2.15,>=2.2" in meta or "Requires-Dist: torch>=2.2,<2.15" in meta

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # dependencies from this environment, but not the editable qviz
    deps = sysconfig.get_paths()["purelib"]
    (Path(site) / "_qviz_test_deps.pth").write_text(deps + "\n")
    subprocess.run([py, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {"PATH": str(venv / "bin"), "HOME": str(tmp_path), "QVIZ_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([py, "-I", "-c", SMOKE], cwd=work, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "capture" in out.stdout
