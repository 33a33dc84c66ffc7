"""The GitHub Actions workflows (.github/workflows/) pass actionlint with no finding, and pin every action by
commit. actionlint comes with the dev extra (a wheel that carries the binary), so `make test` always runs it;
where shellcheck is installed (.ci/run installs it), actionlint also checks each `run:` script with it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))


def actionlint() -> str:
    # The venv's own bin first: the dev extra's binary, not whatever else is on PATH.
    found = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    assert found, "actionlint is missing: make install-dev (the dev extra installs it)"
    return found


def lint(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([actionlint(), "-no-color", *map(str, paths)], capture_output=True, text=True,
                          cwd=ROOT)


def test_there_is_a_release_workflow():
    assert ROOT / ".github" / "workflows" / "release.yml" in WORKFLOWS


def test_every_workflow_passes_actionlint():
    result = lint(*WORKFLOWS)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_actionlint_reports_a_broken_workflow(tmp_path):
    # The check above can fail: a workflow with an unknown runner label and a bad expression is reported.
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-lastest\n    steps:\n"
                      "      - run: echo ${{ github.nope.nope( }}\n")
    result = lint(broken)
    assert result.returncode == 1 and "broken.yml" in result.stdout


def test_every_action_is_pinned_by_commit():
    uses = [(path.name, ref) for path in WORKFLOWS
            for ref in re.findall(r"^\s*-?\s*uses:\s*(\S+)", path.read_text(), re.MULTILINE)]
    assert uses and all(re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref) for _, ref in uses), uses


def test_the_release_pushes_slim_images_with_the_jobs_own_token():
    text = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    assert re.search(r'tags: \["v\*"\]', text) and "packages: write" in text and "secrets.GITHUB_TOKEN" in text
    assert 'make "push-$FAMILY" FLAVOR=slim' in text and "GITHUB_STEP_SUMMARY" in text
