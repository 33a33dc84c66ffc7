"""`make install`/`make demo` on the wrong Python: the Makefile asks the interpreter its version before it makes a
venv, and refuses one pyproject.toml does not allow, or a venv made by another version, in one `error:` line with
the command that works, creating nothing. Driven with stand-in interpreters (shell scripts that report a version),
on a copy of the Makefile and pyproject.toml in a tmp folder, so no real Python 3.13 is needed."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT, clean_env
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REQUIRES_TEXT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
REQUIRES = SpecifierSet(REQUIRES_TEXT)
VERSIONS = ["2.7", "3.6", "3.9", "3.10", "3.11", "3.12", "3.13", "3.14", "3.20", "4.0"]


def fake_python(folder: Path, version: str) -> Path:
    """An 'interpreter' that answers every command with `version`, as `python -c 'print(version)'` would."""
    path = folder / f"fake-python{version}"
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def project(tmp_path) -> Path:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def make(project: Path, *args: str) -> subprocess.CompletedProcess:
    # As typed in a shell: under `make test` the environment says make is already running (MAKELEVEL), and the
    # inner make would then name itself `make[1]` in its messages.
    env = {k: v for k, v in clean_env().items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=project, capture_output=True, text=True,
                          env=env, timeout=60)


def refusal(result: subprocess.CompletedProcess) -> str:
    """The one `error:` line; make's own `make: *** [...] Error 2` trailer is the only other line allowed."""
    lines = [line for line in result.stderr.splitlines() if not line.startswith("make: *** ")]
    assert result.returncode == 2 and result.stdout == "" and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_only_the_versions_pyproject_allows_get_past_the_check(project, version):
    venv = project / "venv"
    result = make(project, "demo", f"PYTHON={fake_python(project, version)}", f"VENV={venv}")
    if Version(version) in REQUIRES:
        # Past the check: make goes on to make the venv (the stand-in cannot, so pip is missing next).
        assert "-m venv" in result.stdout and "error: " not in result.stderr
        return
    line = refusal(result)
    assert f"is Python {version}; LoRA Gym needs Python 3." in line and "requires-python" in line
    assert "run make demo PYTHON=python3." in line
    assert not venv.exists()


def test_the_accepted_range_is_read_from_pyproject(project):
    """Change requires-python in the copy and the Makefile follows it."""
    text = (project / "pyproject.toml").read_text()
    assert f'requires-python = "{REQUIRES_TEXT}"' in text
    (project / "pyproject.toml").write_text(text.replace(f'requires-python = "{REQUIRES_TEXT}"',
                                                         'requires-python = ">=3.12,<3.14"'))
    assert refusal(make(project, "install", f"PYTHON={fake_python(project, '3.11')}", "VENV=v"))
    assert "-m venv" in make(project, "install", f"PYTHON={fake_python(project, '3.13')}", "VENV=v").stdout


def test_an_interpreter_that_does_not_run_is_named(project):
    line = refusal(make(project, "install", "PYTHON=/nonexistent/python3.11", "VENV=v"))
    assert "PYTHON=/nonexistent/python3.11 does not run" in line and "run make install PYTHON=python3." in line
    assert not (project / "v").exists()


@pytest.mark.parametrize("config", ["home = /usr/bin\nversion = 3.13.1\n",
                                    "home = /usr/bin\nimplementation = CPython\nversion_info = 3.13.1.final.0\n"])
def test_a_venv_made_by_another_python_is_refused_with_make_clean(project, config):
    venv = project / "venv"
    venv.mkdir()
    (venv / "pyvenv.cfg").write_text(config)
    allowed = next(v for v in VERSIONS if Version(v) in REQUIRES)
    line = refusal(make(project, "demo", f"PYTHON={fake_python(project, allowed)}", f"VENV={venv}"))
    assert f"was made by Python 3.13, and {project}/fake-python{allowed} is {allowed}" in line
    assert f"run make clean VENV={venv}, then make demo" in line
    assert sorted(p.name for p in venv.iterdir()) == ["pyvenv.cfg"] and (venv / "pyvenv.cfg").read_text() == config
