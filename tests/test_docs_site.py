"""The documentation site (mkdocs.yml, docs/) builds in strict mode: any warning (a broken link or anchor, a page
missing from the nav, a nav entry without its page, a missing included file) fails the build, and so this test.
Material's web fonts are off, so the build reaches no network."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, clean_env


def build(project: Path, site: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH: mkdocs-click imports launcher.cli.main from this checkout to render the CLI reference.
    env = clean_env(PYTHONPATH=str(ROOT), NO_MKDOCS_2_WARNING="1")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(project / "mkdocs.yml"), "--site-dir", str(site)], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_site_builds_strictly_with_every_page_and_the_cli_reference(tmp_path):
    result = build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    pages = {p.stem for p in (ROOT / "docs").glob("*.md")} - {"index"}
    assert all((tmp_path / "site" / page / "index.html").is_file() for page in pages)
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    for command in ("launcher run", "launcher presets show", "launcher dataset check", "launcher sweep"):
        assert f">{command}<" in cli.replace("</a>", "<"), command  # each command's heading, from Click itself
    assert "--dry-run" in cli and "--gpu-memory" in cli
    assert "LORA_GYM_PRESET" in (tmp_path / "site" / "environment" / "index.html").read_text()
    for html in (tmp_path / "site").rglob("*.html"):
        assert "fonts.googleapis.com" not in html.read_text(), html  # no download at build or view time


def test_a_broken_link_or_a_page_left_out_of_the_nav_fails_the_build(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "docs", project / "docs")
    shutil.copy(ROOT / "mkdocs.yml", project)
    (project / "entrypoints").mkdir()
    shutil.copy(ROOT / "entrypoints" / "README.md", project / "entrypoints")
    assert build(project, tmp_path / "site0").returncode == 0  # the copy itself builds
    (project / "docs" / "orphan.md").write_text("# Not in the nav\n")
    result = build(project, tmp_path / "site1")
    assert result.returncode != 0 and "orphan.md" in result.stderr
    os.remove(project / "docs" / "orphan.md")
    with (project / "docs" / "local.md").open("a") as page:
        page.write("\nSee [the missing page](missing.md).\n")
    result = build(project, tmp_path / "site2")
    assert result.returncode != 0 and "missing.md" in result.stderr


def test_the_assistant_can_read_every_page():
    """`launcher mcp` serves the docs as resources (lora-gym://docs/<slug>): every page of the site among them."""
    from launcher.mcp_server.resources import doc_sections

    sections = doc_sections()
    for page in (ROOT / "docs").glob("*.md"):
        assert sections[page.stem][1] == page.read_text(encoding="utf-8")
    assert sections["troubleshooting"][0] == "Troubleshooting" and "your-first-lora" in sections
