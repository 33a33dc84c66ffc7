"""Optional packages (pyproject's extras), checked before a command prints or starts anything: found with
importlib.util.find_spec, never imported, so the check is as cheap as `--help` and a missing one is one `error:`
line naming the pip command that installs it here. Standard library only.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from launcher.core.errors import UserError

CHECKOUT = Path(__file__).resolve().parents[2]  # the clone's root when the launcher runs from one (pip -e)


def missing(modules: Iterable[str]) -> list[str]:
    """The modules Python cannot find. A finder that refuses a name (raises) counts as not found."""
    gone = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            gone.append(module)
    return gone


def install_command(extra: str) -> str:
    """The pip command that adds `extra` to this installation: an editable install of the clone when the launcher
    runs from one (the venv's own pip, so the right environment gets it), else the package from PyPI."""
    if not (CHECKOUT / "pyproject.toml").is_file():
        return f"pip install 'lora-gym[{extra}]'"
    pip = Path(sys.executable).parent / "pip"
    here = Path.cwd().resolve()
    shown_pip = os.path.relpath(pip, here) if pip.is_relative_to(here) else str(pip)
    target = "." if here == CHECKOUT else str(CHECKOUT)
    return f"{shown_pip} install -e '{target}[{extra}]'"


def require(extra: str, packages: Mapping[str, str], purpose: str, hint: str = "") -> None:
    """UserError naming the install command unless every module (import name -> the package's name) can be
    imported; `purpose` starts the line."""
    gone = [packages[module] for module in missing(packages)]
    if gone:
        raise UserError(f"{purpose} needs {' and '.join(gone)}, not installed: {install_command(extra)}{hint}")
