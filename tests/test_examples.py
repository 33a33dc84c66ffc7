"""Every shell example in README.md and docs/ runs: each ```bash block's commands are executed, in order, and
must succeed (a `launcher` command must also print something). ```text blocks are shown only: commands that
cannot run here (real cloud runs, image builds, real API keys); each `launcher` command in them must still
parse (every option and choice exists: Click itself parses it, without running it). A transcript, a text
block whose first line is `$ COMMAND`, is run too, and every other line of the block must be a line of its
output (how the troubleshooting page shows real `error:` lines, which so cannot drift from the code). `make`
commands are not run here (`make test` would run itself); CI runs them, so each must be in .ci/run."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import click
import pytest
from conftest import ROOT, clean_env

FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.S | re.M)
LANGUAGES = {"bash", "text", "json", "toml", "python", "yaml"}  # `sh`, `console`...: unexecuted shell, refused
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(page: Path) -> list[tuple[str, str]]:
    """(language, dedented text) of every fenced block, indented ones (in a list item) included."""
    found = []
    for indent, language, body in FENCE.findall(page.read_text(encoding="utf-8")):
        found.append((language, "\n".join(line[len(indent):] for line in body.splitlines())))
    return found


def steps(page: Path) -> list[tuple[str, list[str] | None]]:
    """In page order: (command, None) for each command of a bash block (continuation lines joined, comments and
    blank lines dropped), (command, expected output lines) for each transcript."""
    result = []
    for language, body in blocks(page):
        if language == "text" and body.startswith("$ "):
            first, *expected = body.splitlines()
            result.append((first[2:], [line for line in expected if line.strip()]))
        if language != "bash":
            continue
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                result.append((line, None))
    return result


def commands(page: Path) -> list[str]:
    return [command for command, expected in steps(page) if expected is None]


def shown_commands(page: Path) -> list[str]:
    """The `launcher` commands of the page's text blocks (not transcripts), continuation lines joined."""
    result = []
    for language, body in blocks(page):
        if language == "text" and not body.startswith("$ "):
            for line in re.sub(r"\\\n\s*", " ", body).splitlines():
                line = line.split("  #")[0].strip()
                if line.startswith("launcher "):
                    result.append(line)
    return result


def parse(argv: list[str]) -> click.Context:
    """Click's own parsing of a command line, down to the subcommand, without running anything."""
    from launcher.cli.main import cli

    ctx = cli.make_context("launcher", list(argv))
    command = cli
    while isinstance(command, click.Group):
        name, command, args = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        ctx = command.make_context(name, args, parent=ctx)
    return ctx


def test_the_readme_shows_the_two_setup_commands_first():
    assert commands(ROOT / "README.md")[:2] == ["make demo", "make test"]


def test_ci_runs_every_make_command_shown():
    ci = (ROOT / ".ci" / "run").read_text()
    for page in PAGES:
        for command in commands(page):
            if command.startswith("make "):
                assert command in ci, f"{page.name}: {command}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_block_says_whether_it_runs(page):
    for language, _ in blocks(page):
        assert language in LANGUAGES, f"{page.name}: a ```{language or '(none)'} block: use bash (run) or text"


@pytest.mark.parametrize("page", [p for p in PAGES if shown_commands(p)], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_command_shown_but_not_run_parses(page):
    for command in shown_commands(page):
        try:
            parse(shlex.split(command)[1:])
        except click.ClickException as exc:
            pytest.fail(f"{page.name}: {command}: {exc.format_message()}")


def test_a_command_with_an_option_that_does_not_exist_does_not_parse():
    assert parse(["run", "--preset", "p", "--dataset", "d", "--backend", "local", "--gpu-ids", "0,1"]).params["gpus"]
    with pytest.raises(click.NoSuchOption):
        parse(["run", "--preset", "p", "--dataset", "d", "--gpuz", "0,1"])


def test_the_examples_cover_the_commands():
    launched = [c for page in PAGES for c in commands(page) if c.startswith("launcher ")]
    assert len(launched) >= 40
    verbs = {c.split()[1] for c in launched}
    assert {"presets", "run", "dataset", "caption", "sweep"} <= verbs


@pytest.mark.parametrize("page", [p for p in PAGES if steps(p)], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_bash_example_succeeds(page, tmp_path):
    """In a fresh folder (examples/ linked in: the paths are relative to the checkout), with a private HOME and
    state folder and no secret in the environment; in order, as a later command may read what an earlier one
    wrote; `export` lines hold for the commands after them on the same page."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / "home").mkdir()
    env = clean_env(HOME=str(tmp_path / "home"), LORA_GYM_HOME=str(tmp_path / "state"))
    exports = []
    for command, expected in steps(page):
        if command.startswith("make "):
            continue
        if command.startswith("export "):
            exports.append(command)
            continue
        script = "\n".join(["set -euo pipefail", *exports, command])
        result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=300)
        if expected is not None:  # a transcript: its lines, as the command prints them
            printed = (result.stdout + result.stderr).splitlines()
            assert [line for line in expected if line not in printed] == [], f"{page.name}: {command}: {printed}"
            if any(line.startswith("error:") for line in expected):
                assert result.returncode != 0, f"{page.name}: {command} showed an error but succeeded"
            continue
        assert result.returncode == 0, f"{page.name}: {command}: {result.stderr}"
        if command.startswith("launcher "):
            assert result.stdout.strip(), f"{page.name}: {command} printed nothing"
