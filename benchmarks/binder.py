"""Build the Binder environment the way Binder does, then run the tour in it and weigh it.

Binder (repo2docker) knows nothing but ``binder/``: it installs ``binder/requirements.txt``
into a fresh environment, runs ``binder/postBuild`` in the repository root and starts
JupyterLab. This script does the same, with no other install step:

1. copies the working tree (no ``.git``, no build outputs) to a new folder;
2. makes a fresh virtual environment there, ``pip install -r binder/requirements.txt``;
3. runs ``binder/postBuild`` with that environment first on ``PATH`` and an empty home
   (so the caches it fills are its own);
4. executes the tour with nbclient in that environment, sampling the resident memory
   of the whole process tree (runner + kernel) every 50 ms, and prints the peak.

Binder gives a session 1-2 GB; the tour must stay under 2 GB.

Run: python benchmarks/binder.py [--work /tmp/qviz-binder] [--notebook notebooks/00_tour.ipynb] [--reuse]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".git", ".venv", "__pycache__", ".pytest_cache", ".ipynb_checkpoints", "dist", "build"}

# runs inside the Binder-made environment: executes one notebook and samples memory
MEASURE = r"""
import sys, threading, time, tempfile, psutil, nbformat, nbclient
path = sys.argv[1]
me = psutil.Process()
peak = {"tree": 0, "kernel": 0}
done = threading.Event()
def tree_rss():
    total, kernel = me.memory_info().rss, 0
    for child in me.children(recursive=True):
        try:
            rss = child.memory_info().rss
        except psutil.Error:
            continue
        total += rss
        kernel = max(kernel, rss)
    return total, kernel
def sample():
    while not done.is_set():
        total, kernel = tree_rss()
        peak["tree"] = max(peak["tree"], total)
        peak["kernel"] = max(peak["kernel"], kernel)
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
nb = nbformat.read(path, as_version=4)
start = time.perf_counter()
with tempfile.TemporaryDirectory() as work:
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": work}}).execute()
done.set()
errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
print(f"ran {path} in {time.perf_counter() - start:.0f} s, errors: {len(errors)}")
print(f"peak resident memory: process tree {peak['tree'] / 2**20:.0f} MiB, kernel {peak['kernel'] / 2**20:.0f} MiB")
sys.exit(1 if errors else 0)
"""


def copy_tree(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(ROOT, dest, ignore=lambda d, names: [n for n in names if n in SKIP or n.endswith(".egg-info")])


def run(cmd, **kw) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(cmd, check=True, **kw)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/qviz-binder"))
    parser.add_argument("--notebook", default="notebooks/00_tour.ipynb")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the environment an earlier run made (step 2): copy the tree anew, run postBuild, measure")
    args = parser.parse_args(argv)
    repo, venv, home = args.work / "repo", args.work / "venv", args.work / "home"
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "HF_HUB_OFFLINE": "1",
           "VIRTUAL_ENV": str(venv), "LANG": "C.UTF-8"}
    for key in ("PIP_FIND_LINKS", "PIP_CERT", "PIP_DEFAULT_TIMEOUT"):  # this machine's registry set-up
        if key in os.environ:
            env[key] = os.environ[key]
    t0 = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    copy_tree(repo)
    if home.exists():
        shutil.rmtree(home)
    home.mkdir()
    if not args.reuse:
        if venv.exists():
            shutil.rmtree(venv)
        run([sys.executable, "-m", "venv", str(venv)])
        run([venv / "bin" / "pip", "install", "--no-cache-dir", "-r", "binder/requirements.txt"], cwd=repo, env=env)
    run(["bash", "binder/postBuild"], cwd=repo, env=env)
    print(f"built in {time.perf_counter() - t0:.0f} s", flush=True)
    run([venv / "bin" / "python", "-c", MEASURE, args.notebook], cwd=repo, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
