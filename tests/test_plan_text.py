"""The text plan of `--dry-run`: short (each distinct command once), still exact shell, ending with the next
command; and the `estimate:` line of every backend's dry run, runs and sweeps alike."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from conftest import EXAMPLE_DATASET

from launcher.cli.main import main
from launcher.cli.render import argv_lines, quoted
from launcher.cli.run_cmd import build_job
from launcher.estimate import nominal_seconds
from launcher.media.check import check_dataset

DEMO = ["run", "--preset", "wan22-t2v-lightning", "--expert", "high", "--dataset", str(EXAMPLE_DATASET), "--dry-run"]
IMAGE = "ghcr.io/you/lora-gym-wan22:0.1.0"


def cli(capsys, *args, stream: str = "out"):
    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out if stream == "out" else err


def backend_cli(capsys, *args) -> tuple[str, str]:
    """A dry run with --backend: stdout is the platform's request alone, the estimate and next step on stderr."""
    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "estimate: " not in out and "Next: " not in out
    return out, err


def test_the_demo_plan_fits_a_screen_and_shows_each_command_once(capsys):
    out = cli(capsys, *DEMO)
    lines = out.splitlines()
    assert len(lines) <= 60, out
    assert out.count("wan_generate_video.py") == 1 and "samples at epochs 10, 20, 30, 40, 50" in out
    assert out.count("lora_gym_entrypoint.merge") == 1 and "5. merge-lightning-low: step 3's command with other " \
        "--dit, --lora, --output" in out
    assert "dataset.toml): batch size 1, buckets on" in out and "[[datasets]]" not in out  # TOML: --format json


def test_the_plan_ends_with_the_command_that_runs_it(capsys):
    out = cli(capsys, *DEMO, "--set", "train.seed=7", "--set", "samples.prompts=[{\"text\": \"a b\"}]")
    next_line = out.rstrip().splitlines()[-2]
    assert next_line.startswith("Next: ")
    typed = shlex.split(next_line.removeprefix("Next: "))
    assert typed == ["launcher", *[a for a in DEMO if a != "--dry-run"], "--set", "train.seed=7", "--set",
                     "samples.prompts=[{\"text\": \"a b\"}]", "--backend", "local"]


@pytest.mark.parametrize("preset, expert", [("wan22-t2v-lightning", "both"), ("wan21-i2v-720p", None)])
def test_every_shown_command_is_the_plans_argv_as_shell(capsys, preset, expert):
    args = ["run", "--preset", preset, "--dataset", str(EXAMPLE_DATASET), "--dry-run", "--set", "train.seed=7"]
    args += ["--expert", expert] if expert else []
    plan = json.loads(cli(capsys, *args, "--format", "json"))
    text = cli(capsys, *args).replace(" \\\n", " ").replace("$RUN", plan["run_dir"])
    commands = re.findall(r"^ {5}((?:python|accelerate) .*)$", text, re.MULTILINE)
    argvs = [s["argv"] for s in plan["steps"]]
    assert len(commands) >= 5 and all(shlex.split(c) in argvs for c in commands)
    shown = [int(n) for n in re.findall(r"^ {2}(\d+)[.-]", text, re.MULTILINE)]
    assert len(shown) < len(argvs) and shown[0] == 1  # groups, still in order, cover every step
    assert re.findall(r"^ {2}(?:\d+-)?(\d+)\.", text, re.MULTILINE)[-1] == str(len(argvs))


def test_wrapped_lines_keep_the_width_unless_one_value_is_longer():
    argv = ["python", "x.py", *[f"--flag{i}" for i in range(30)], "--long", "/" + "a" * 150]
    lines = argv_lines(argv, width=60)
    assert all(len(line) <= 60 for line in lines[:-1]) and lines[-1].strip() == "--long /" + "a" * 150
    assert shlex.split(" ".join(lines)) == argv


def test_only_unquoted_paths_in_the_run_folder_become_run():
    assert quoted("/output/r1/x.toml", "/output/r1") == "$RUN/x.toml"
    assert quoted("/output/r10/x", "/output/r1") == "/output/r10/x"
    assert quoted("/output/r1/a b", "/output/r1") == "'/output/r1/a b'"  # "$RUN" inside quotes would not expand


# --- estimates ---------------------------------------------------------------------------------------

def priced(line: str) -> tuple[float, float, int, float]:
    """hours, $/h, GPUs and $ of an `estimate: ~H h on [N x ]GPU at $P/h = $T` line."""
    found = re.match(r"estimate: ~([\d.]+) h on (?:(\d+) x )?.+? at \$([\d.]+)/h = \$([\d.]+) \(([\d.]+) GPU-hours",
                     line)
    assert found, line
    return float(found[1]), float(found[3]), int(found[2] or 1), float(found[4])


@pytest.mark.parametrize("backend", ["modal", "runpod"])
def test_a_cloud_dry_run_prices_the_run_without_a_key(capsys, monkeypatch, backend):
    # A key and an API that cannot be reached: the dry run must price from the tables, never call out.
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_not_used")
    monkeypatch.setenv("RUNPOD_API_BASE_URL", "http://127.0.0.1:9")
    args = ["run", "--preset", "wan22-t2v-lightning", "--expert", "both", "--dataset", str(EXAMPLE_DATASET),
            "--dry-run", "--backend", backend, "--image", IMAGE]
    _, out = backend_cli(capsys, *args)
    line = next(x for x in out.splitlines() if x.startswith("estimate: "))
    hours, rate, gpus, usd = priced(line)
    assert gpus == 2 and usd > 0 and usd == pytest.approx(hours * rate * gpus, abs=0.05 * rate * gpus)  # ~H.H h
    assert "media not opened" in line and out.rstrip().endswith(shlex.join(
        ["launcher", *[a for a in args if a != "--dry-run"]]).replace(str(EXAMPLE_DATASET), shlex.quote(
            str(EXAMPLE_DATASET))))
    document = json.loads(cli(capsys, *args, "--format", "json"))
    assert document["estimate"] == line


@pytest.mark.parametrize("backend, price", [("local", "$0, this machine's own GPU"),
                                            ("skypilot", "SkyPilot picks the cloud")])
def test_unpriced_backends_say_gpu_hours_and_why_no_price(capsys, tmp_path, backend, price):
    _, out = backend_cli(capsys, "run", "--preset", "wan21-t2v-14b", "--dataset", str(EXAMPLE_DATASET), "--dry-run",
                         "--backend", backend, "--image", IMAGE.replace("22", "21"),
                         *(["--output", str(tmp_path)] if backend == "local" else []))  # --output: local only
    line = next(x for x in out.splitlines() if x.startswith("estimate: "))
    assert re.match(r"estimate: ~[\d.]+ h on 1 x 80 GB class GPU = [\d.]+ GPU-hours", line) and price in line


@pytest.mark.parametrize("backend", [None, "local", "modal", "runpod"])
def test_every_sweep_dry_run_ends_with_its_estimate_and_next_command(capsys, tmp_path, backend):
    args = ["sweep", "--preset", "wan21-t2v-1.3b", "--dataset", str(EXAMPLE_DATASET), "--grid",
            "train.max_train_epochs=10,40", "--dry-run"]
    args += ["--backend", backend, "--image", IMAGE.replace("22", "21")] if backend else []
    args += ["--output", str(tmp_path)] if backend == "local" else []
    out = backend_cli(capsys, *args)[1] if backend else cli(capsys, *args)
    line = next(x for x in out.splitlines() if x.startswith("estimate: "))
    assert line.startswith("estimate: 2 runs + 1 cache pass, ~") and "GPU-hours" in line
    if backend in ("modal", "runpod"):
        assert re.search(r"= \$[\d.]+ \(", line)
    job = build_job("wan21-t2v-1.3b", None, str(EXAMPLE_DATASET), ["train.max_train_epochs=10"])
    ten = nominal_seconds(job.loaded.preset, job.layout) / 3600
    gpu_hours = float(re.search(r"~([\d.]+) GPU-hours", line)[1])
    assert gpu_hours == pytest.approx(ten * 5 + 3 * 0.25, abs=0.06)  # 10 + 40 epochs, 2 runs + 1 cache start-up
    assert "Next: launcher sweep " in out and ("--dry-run" not in out.rsplit("Next: ", 1)[1].split("\n")[0])


@pytest.mark.parametrize("preset, expert", [("wan22-t2v-lightning", "high"), ("wan21-t2v-1.3b", None),
                                            ("wan21-i2v-480p", None)])
def test_the_dry_run_time_is_the_media_checks_at_full_size(preset, expert):
    # The example media are at most the presets' sizes: the dry run's every-file-at-full-size time bounds the
    # media check's from above, and stays within 2x of it.
    job = build_job(preset, expert, str(EXAMPLE_DATASET), ())
    real = check_dataset(EXAMPLE_DATASET, job.loaded.preset, 1, layout=job.layout, decode=False).seconds
    assert real <= nominal_seconds(job.loaded.preset, job.layout) <= 2 * real


def test_a_step_shaped_like_an_earlier_one_shows_its_own_values(capsys):
    out = cli(capsys, "run", "--preset", "wan22-t2v-lightning", "--expert", "both", "--dataset", str(EXAMPLE_DATASET),
              "--dry-run", "--set", "experts.low.learning_rate=3e-5")
    low = " ".join(out.split("  6. train-low: step 4's command with ", 1)[1].split("\n  7", 1)[0].split())
    assert "--network_dim 42 " in low and "--learning_rate 3e-05 " in low and low.endswith("and other --dit")
