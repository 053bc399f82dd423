"""The browser tier: a real JupyterLab on 127.0.0.1 driven through Debian's Chromium with Playwright.

The server runs from a temporary directory holding copies of the notebooks, with
its own config and runtime directories and a random token; it is killed in a
finalizer however the session ends. The tier is skipped (with the reason) only
when /usr/bin/chromium or the playwright package is missing.

Screenshots go to ``test-artifacts/`` (git-ignored) at the repository root.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
SERVER_START_TIMEOUT = 120.0

pytestmark = pytest.mark.browser


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install playwright)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _missing()
    if reason and os.environ.get("QVIZ_REQUIRE_BROWSER") == "1":
        raise pytest.UsageError(f"QVIZ_REQUIRE_BROWSER=1 (CI) but the browser tier cannot run: {reason}")
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"browser tier skipped: {reason}"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterServer:
    """A running ``jupyter lab`` (base URL, token, notebook directory, log file)."""

    def __init__(self, proc: subprocess.Popen, url: str, token: str, root: Path, log: Path) -> None:
        self.proc, self.url, self.token, self.root, self.log = proc, url, token, root, log

    def page_url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.url}{path}{sep}token={self.token}"

    def api(self, path: str) -> dict:
        req = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def jupyter(tmp_path_factory, request) -> JupyterServer:
    root = tmp_path_factory.mktemp("lab-root")
    home = tmp_path_factory.mktemp("lab-home")
    for nb in (REPO / "notebooks").glob("*.ipynb"):
        shutil.copy(nb, root / nb.name)
    token = secrets.token_hex(16)
    port = _free_port()
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        IPYTHONDIR=str(home / "ipython"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    env.setdefault("QVIZ_CACHE_DIR", str(home / "qviz-cache"))
    cmd = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--ServerApp.open_browser=False", "--LabApp.expose_app_in_browser=True",
        "--JupyterNotebookApp.expose_app_in_browser=True",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    # no "get Jupyter news?" pop-up over the screenshots
    settings = home / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    # render every cell: with JupyterLab's default windowing, outputs far down a long notebook are not
    # in the page until scrolled to, and a test looking for them waits in vain
    nb_settings = home / "lab-settings" / "@jupyterlab" / "notebook-extension"
    nb_settings.mkdir(parents=True)
    (nb_settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    cmd.append(f"--LabApp.user_settings_dir={home / 'lab-settings'}")
    log = home / "jupyter.log"
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    server = JupyterServer(proc, f"http://127.0.0.1:{port}", token, root, log)

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        fh.close()
        shutil.copy(log, ARTIFACTS / "jupyter-server.log") if ARTIFACTS.exists() else None

    request.addfinalizer(stop)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited with code {proc.returncode}:\n{server.log_tail()}")
        try:
            server.api("/api/status")
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within {SERVER_START_TIMEOUT:.0f} s:\n{server.log_tail()}")
            time.sleep(0.5)
    return server


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path=CHROMIUM,
                           args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
    try:
        yield b
    finally:
        b.close()
        pw.stop()


@pytest.fixture()
def page(browser, jupyter):
    ctx = browser.new_context(viewport={"width": 1400, "height": 2200})
    pg = ctx.new_page()
    errors: list[str] = []
    console: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    pg.errors = errors
    pg.console = console
    try:
        yield pg
    finally:
        if console:
            (ARTIFACTS / "browser-console.log").open("a").write("\n".join(console) + "\n")
        ctx.close()
        for s in jupyter.api("/api/sessions"):  # shut the notebook kernels down between tests
            req = urllib.request.Request(f"{jupyter.url}/api/sessions/{s['id']}", method="DELETE",
                                         headers={"Authorization": f"token {jupyter.token}"})
            urllib.request.urlopen(req, timeout=30).close()
