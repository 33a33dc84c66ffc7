"""report.html: written at the end of a run (fake musubi), self-contained, and rendered by headless Chromium
(Debian's package; .ci/run installs it) with the loss plot and the contact sheets, no broken image, no error."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys

import pytest
from conftest import EXAMPLE_DATASET
from PIL import Image
from test_entrypoint import Container

from launcher import report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install "
                                    "chromium; .ci/run does)")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    dataset = tmp / "dataset"
    shutil.copytree(EXAMPLE_DATASET, dataset)
    box = Container(tmp, dataset)
    box.stock_weights("wan22-t2v-vanilla", "both")
    result = box.run(box.env("wan22-t2v-vanilla", "both", LORA_GYM_SET="train.max_train_epochs=10"))
    assert result.returncode == 0, result.stderr + result.stdout
    [folder] = box.runs()
    assert "report: " in result.stdout
    return folder


def test_the_run_writes_a_self_contained_report(run_dir):
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing fetched from a network
    run = json.loads((run_dir / "run.json").read_text())
    for output in run["outputs"]:
        assert output["path"] in text
    for step in run["steps"]:
        assert f"<td>{step['name']}</td>" in text
    videos = re.findall(r'<video[^>]* src="([^"]+)"', text)
    assert videos == [v["path"] for p in (1, 2) for v in run["samples"]["videos"] if v["prompt"] == p]
    assert all((run_dir / html.unescape(v)).is_file() for v in videos)
    assert text.count('src="data:image/png;base64,') == 1 + len(run["samples"]["sheets"])  # plot + sheets
    assert run["preset"]["sha256"][:16] in text and "train.max_train_epochs=10" in text


def test_launcher_report_rewrites_it_and_refuses_a_folder_without_run_json(run_dir, tmp_path):
    (run_dir / "report.html").unlink()
    done = subprocess.run([sys.executable, "-m", "launcher.cli.main", "report", str(run_dir)], capture_output=True,
                          text=True)
    assert done.returncode == 0 and (run_dir / "report.html").is_file(), done.stderr
    bad = subprocess.run([sys.executable, "-m", "launcher.cli.main", "report", str(tmp_path)], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ")
    assert "Traceback" not in bad.stderr


def test_without_history_or_samples_the_report_says_so(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "x", "status": "failed", "exit_code": 3, "steps": []}))
    text = report.render(tmp_path)
    assert "no loss recorded" in text and "no samples" in text and "no checkpoint written" in text


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", *args], capture_output=True, text=True, timeout=120)


@needs_chromium
def test_chromium_renders_the_plot_and_sheets_without_errors(run_dir):
    page = (run_dir / "report.html").as_uri()
    shown = chromium("--virtual-time-budget=5000", "--dump-dom", page)
    check = json.loads(html.unescape(re.search(r'data-check="([^"]*)"', shown.stdout)[1]))
    sheets = json.loads((run_dir / "run.json").read_text())["samples"]["sheets"]
    assert check == {"images": 1 + len(sheets), "broken": 0, "errors": []}
    assert not re.search(r"CONSOLE.*(Uncaught|Error)", shown.stderr), shown.stderr[-2000:]


def colours(image: Image.Image) -> set[tuple[int, int, int]]:
    return {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 20)}


@needs_chromium
def test_screenshot_shows_both_loss_curves_and_the_sheet(run_dir, tmp_path):
    shot = tmp_path / "report.png"
    done = chromium("--window-size=1200,2200", f"--screenshot={shot}", (run_dir / "report.html").as_uri())
    assert shot.is_file(), done.stderr[-2000:]
    image = Image.open(shot)
    assert image.size == (1200, 2200)
    seen = colours(image)
    assert {(31, 119, 180), (255, 127, 14)} <= seen  # matplotlib's first two line colours: one curve per expert
    sheet = Image.open(run_dir / "samples" / "prompt-1.png").convert("RGB")
    cell = sheet.getpixel((sheet.width - 40, sheet.height - 20))  # inside the last epoch's last frame
    assert any(max(abs(a - b) for a, b in zip(c, cell, strict=True)) <= 6 for c in seen)


@needs_chromium
def test_the_page_check_catches_a_broken_image_and_a_script_error(run_dir, tmp_path):
    broken = (run_dir / "report.html").read_text(encoding="utf-8").replace(
        "</body>", '<img alt="x" src="data:image/png;base64,AAAA"><script>nosuchfunction()</script></body>')
    page = tmp_path / "broken.html"
    page.write_text(broken, encoding="utf-8")
    shown = chromium("--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    check = json.loads(html.unescape(re.search(r'data-check="([^"]*)"', shown.stdout)[1]))
    assert check["broken"] == 1 and any("nosuchfunction" in e for e in check["errors"])


def test_a_pull_writes_the_report_of_every_run_folder_it_brought(run_dir, tmp_path):
    from launcher.cli.report_cmd import after_pull

    for expert in ("high", "low"):  # Modal's layout for --expert both: <run id>/<expert>/
        shutil.copytree(run_dir, tmp_path / "r1" / expert)
        (tmp_path / "r1" / expert / "report.html").unlink()
    shutil.copytree(run_dir, tmp_path / "other")
    written = after_pull("r1", str(tmp_path))
    assert written == [tmp_path / "r1" / "high" / "report.html", tmp_path / "r1" / "low" / "report.html"]
    assert all(path.is_file() for path in written)
