"""The figures the docs share with the tool (memory estimates, host RAM, the preset table, prices) are the code's:
tools/docs_figures.py generates them, and the pages hold exactly its output."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT, clean_env

sys.path.insert(0, str(ROOT / "tools"))
import docs_figures  # noqa: E402


def test_every_page_holds_the_figures_the_code_makes():
    drifted = docs_figures.drifted()
    assert not drifted, f"run `python tools/docs_figures.py` (figures differ in {sorted(map(str, drifted))})"


def test_every_figure_is_on_a_page():
    shown = {m["name"] for page in docs_figures.pages() for m in docs_figures.BLOCK.finditer(page.read_text())}
    assert shown == set(docs_figures.FIGURES)


def test_a_changed_figure_is_put_back():
    page = "<!-- figure: modal-prices -->\n| GPU | memory | $/h |\n| `H100` | 80 GB | 1.00 |\n<!-- /figure -->\n"
    rendered = docs_figures.render(page, {})
    assert "| `H100` | 80 GB | 3.95 |" in rendered and "1.00" not in rendered


def test_the_memory_table_says_what_the_dry_run_prints():
    """End to end: the row of the table against `launcher run --dry-run`'s own lines, for a Wan 2.2 preset (two
    trainings, and the samples' host RAM) and a Wan 2.1 one with block swap and offload."""
    table = (ROOT / "docs" / "gpu-memory.md").read_text()
    for preset, gb, expert in (("wan22-t2v-lightning", 80, ["--expert", "both"]), ("wan21-t2v-14b", 24, [])):
        row = re.search(rf"^\| `{preset}` \| {gb} GB \| (.*) \|$", table, re.M)[1].split(" | ")
        gpu_peaks = re.findall(r"([\d.]+) GB", row[1])
        host_training, host_asked = row[2].removesuffix(" GB"), row[3].removesuffix(" GB")
        out = subprocess.run([sys.executable, "-m", "launcher.cli.main", "run", "--preset", preset, *expert,
                              "--dataset", str(ROOT / "examples" / "dataset"), "--gpu-memory", str(gb), "--dry-run"],
                             env=clean_env(), capture_output=True, text=True, check=True).stdout
        assert f"host RAM {host_asked} GB," in out
        printed = re.findall(r"estimated ([\d.]+) GB GPU, ([\d.]+) GB host", out)
        assert [gpu for gpu, _ in printed] == gpu_peaks
        assert {host for _, host in printed} == {host_training}
