"""Every `launcher` command in the README's shell blocks runs and succeeds; the `make` ones run in CI."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, clean_env

BLOCK = re.compile(r"```bash\n(.*?)```", re.S)


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    lines = [line.split("  #")[0].strip() for block in BLOCK.findall(text) for line in block.splitlines()]
    return [line for line in lines if line]


def test_readme_shows_the_two_setup_commands():
    assert readme_commands()[:2] == ["make demo", "make test"]


def test_ci_runs_the_make_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    for command in readme_commands():
        if command.startswith("make "):
            assert command in ci


def test_every_launcher_command_in_the_readme_succeeds(tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # README paths are relative to the checkout
    launcher = Path(sys.executable).parent / "launcher"
    commands = [c for c in readme_commands() if c.startswith("launcher ")]
    assert len(commands) >= 8
    for command in commands:  # in order: a later command may use a file an earlier one made
        result = subprocess.run([str(launcher), *shlex.split(command)[1:]], cwd=tmp_path, env=clean_env(),
                                capture_output=True, text=True)
        assert result.returncode == 0, f"{command}: {result.stderr}"
        assert result.stdout.strip(), command
