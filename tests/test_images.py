"""The real image, built with Podman from images/Dockerfile, end to end on the example dataset.

The build uses a Debian base made with debootstrap, a loopback fake of the Hugging Face Hub serving tiny
files for a test lock, and the musubi-tuner test double as the `musubi` build context. Build arguments
are the only test-specific inputs: it is the same Dockerfile `make image-wan21` uses.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest
from conftest import EXAMPLE_DATASET, ROOT, clean_env
from container_support import podman_service, remove_named, require_podman, run_name
from fakes import tiny_wan
from image_support import TOKEN, image_builder

from launcher.weights import lockfile

PREFIX = run_name("images")  # every image, volume and container below holds it; removed at the module's end
PRESET = "wan21-t2v-1.3b"


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    with image_builder(tmp_path_factory.mktemp("images"), PREFIX) as builder:
        yield builder


@pytest.fixture(scope="module")
def full_image(build):
    return build("full")


@pytest.fixture(scope="module")
def docker_host(tmp_path_factory):
    require_podman()
    with podman_service(tmp_path_factory.mktemp("service")) as host:
        yield host


@pytest.fixture
def volume():
    name = f"{PREFIX}-cache-{uuid.uuid4().hex[:6]}"
    yield name
    remove_named(name)


def launcher(*argv: str, docker_host: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "launcher"
    return subprocess.run([str(exe), *argv], env=clean_env(DOCKER_HOST=docker_host), capture_output=True,
                          text=True, timeout=600)


def local_run(image: str, output: Path, volume: str, docker_host: str, *extra: str):
    return launcher("run", "--backend", "local", "--preset", PRESET, "--dataset", str(EXAMPLE_DATASET), "--output",
                    str(output), "--gpu-ids", "none", "--image", image, "--cache-volume", volume,
                    "--set", "train.max_train_epochs=2", *extra, docker_host=docker_host)


def manifest(output: Path) -> dict:
    [run_json] = sorted(output.glob("*/run.json"))[-1:]
    return json.loads(run_json.read_text())


def test_launcher_local_runs_the_image_end_to_end(full_image, build, docker_host, volume, tmp_path):
    result = local_run(full_image, tmp_path / "out", volume, docker_host)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "[cache-latents] caching latents: 3/3" in result.stdout  # a \r-drawn bar, shown once, prefixed
    run = manifest(tmp_path / "out")
    assert run["status"] == "succeeded" and [o["path"] for o in run["outputs"]] == [f"{PRESET}.safetensors"]
    [report] = (tmp_path / "out").glob("*/report.html")  # the image has matplotlib: the report is written there
    assert "<img" in report.read_text()
    assert run["image_labels"]["ai.loragym.flavor"] == "full" and run["image_labels"]["ai.loragym.tasks"] == "t2v"
    lock = lockfile.read(build.lock_dir / "weights.lock.json")
    assert run["image_labels"]["ai.loragym.weights-lock"] == lockfile.digest(lock)
    again = local_run(full_image, tmp_path / "out", volume, docker_host)
    assert again.returncode == 0 and "cache-latents: skipped" in again.stdout  # the cache volume is reused
    assert len(list((tmp_path / "out").glob("*/run.json"))) == 2


def test_a_local_sweep_on_the_image_caches_once_and_trains_every_combination(full_image, docker_host, volume,
                                                                              tmp_path):
    out = tmp_path / "out"
    result = launcher("sweep", "--backend", "local", "--preset", PRESET, "--dataset", str(EXAMPLE_DATASET),
                      "--grid", "train.learning_rate=5e-5,1e-4", "--grid", "train.network_dim=16,32", "--output",
                      str(out), "--gpu-ids", "none", "--image", full_image, "--cache-volume", volume,
                      "--set", "train.max_train_epochs=1", "--set", "samples.enabled=false", docker_host=docker_host)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*/run.json"))]
    trainings = [r for r in runs if r["stage"] == "train"]
    assert len(trainings) == 4 and all(r["status"] == "succeeded" for r in runs)
    cached = [s for r in runs for s in r["steps"] if s["name"].startswith("cache-") and s["status"] == "succeeded"]
    assert sorted(s["name"] for s in cached) == ["cache-latents", "cache-text-encoder"]  # once for all four
    grid = {(s["argv"][s["argv"].index("--learning_rate") + 1], s["argv"][s["argv"].index("--network_dim") + 1])
            for r in trainings for s in r["steps"] if s["name"] == "train"}
    assert grid == {("5e-05", "16"), ("5e-05", "32"), ("0.0001", "16"), ("0.0001", "32")}


def _plain_command(full_image: str, output: Path, volume: str, docker_host: str) -> list[str]:
    dry = local_run(full_image, output, volume, docker_host, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    command = shlex.split(dry.stdout.replace("\\\n", " "))  # one command, continued over lines
    assert command[:2] == ["docker", "run"]
    return ["podman", *command[1:]]


def test_plain_podman_run_and_exit_codes(full_image, docker_host, volume, tmp_path):
    command = _plain_command(full_image, tmp_path / "out", volume, docker_host)
    (tmp_path / "out").mkdir()
    ok = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    # The printed command names its run folder (LORA_GYM_RUN_ID), and a finished run is never overwritten: the
    # second run gets a folder of its own.
    again = [f"{a}-again" if a.startswith("LORA_GYM_RUN_ID=") else a for a in command]
    assert again != command
    failing = [*again[:2], "-e", "FAKE_MUSUBI_FAIL=wan_train_network", *again[2:]]
    failed = subprocess.run(failing, capture_output=True, text=True, timeout=600)
    assert failed.returncode == 3 and "stopping the run" in failed.stdout
    runs = sorted((tmp_path / "out").glob("*/run.json"))
    assert [json.loads(p.read_text())["status"] for p in runs] == ["succeeded", "failed"]


def test_stop_reaches_the_running_step(full_image, docker_host, volume, tmp_path):
    name = f"{PREFIX}-stop-{uuid.uuid4().hex[:6]}"
    command = _plain_command(full_image, tmp_path / "out", volume, docker_host)
    (tmp_path / "out").mkdir()
    hanging = [*command[:2], "--name", name, "-e", "FAKE_MUSUBI_HANG=wan_cache_latents", *command[2:]]
    proc = subprocess.Popen(hanging, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not proc.stdout.readline().rstrip().endswith("ready"):
            pass
        subprocess.run(["podman", "stop", "-t", "20", name], capture_output=True, timeout=60)
        rest, _ = proc.communicate(timeout=60)
    finally:  # on a failure too: neither the container nor the `podman run` holding it outlives the test
        remove_named(name)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143 and "got signal 15" in rest
    assert manifest(tmp_path / "out")["status"] == "stopped"


def test_build_secret_is_in_no_layer_history_or_label(full_image, build, tmp_path):
    assert build.hub.token == TOKEN  # the fake hub refused any request without it, so the build used it
    history = subprocess.run(["podman", "history", "--no-trunc", "--format", "{{.CreatedBy}}", full_image],
                             capture_output=True, text=True, check=True).stdout
    inspect = subprocess.run(["podman", "inspect", full_image], capture_output=True, text=True, check=True).stdout
    assert TOKEN not in history and TOKEN not in inspect and "hf_token" in history  # mounted, never stored
    archive = tmp_path / "image.tar"
    subprocess.run(["podman", "save", "-o", str(archive), full_image], check=True, capture_output=True)
    with tarfile.open(archive) as saved:  # docker-archive: uncompressed layer tars, config and manifest
        for member in saved.getmembers():
            if member.isfile():
                assert TOKEN.encode() not in saved.extractfile(member).read(), member.name


def test_code_only_change_reuses_every_weight_layer(full_image, build, tmp_path):
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                             check=True).stdout.split()
    copy = tmp_path / "src"
    for name in tracked:
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    init = copy / "launcher" / "__init__.py"
    init.write_text(init.read_text() + "# a code-only change\n")
    served = sum(build.hub.served.values())
    build("full", context=copy)
    assert sum(build.hub.served.values()) == served  # 0 bytes fetched from the hub
    assert build.log.count("Using cache") >= 12


def test_slim_image_downloads_once_into_the_cache_volume(build, volume, tmp_path):
    slim = build("slim")
    assert subprocess.run(["podman", "run", "--rm", "--entrypoint", "ls", slim, "/weights"],
                          capture_output=True).returncode != 0  # nothing baked
    output = tmp_path / "out"
    output.mkdir()
    command = ["podman", "run", "--rm", "--network", "host", "-e", f"HF_ENDPOINT={build.hub.url}",
               "-e", f"HF_TOKEN={TOKEN}", "-e", f"LORA_GYM_PRESET={PRESET}",
               "-e", "LORA_GYM_SET=train.max_train_epochs=1",
               "-v", f"{EXAMPLE_DATASET}:/dataset:ro", "-v", f"{output}:/output", "-v", f"{volume}:/cache",
               "--user", f"{os.getuid()}:{os.getgid()}", slim]
    before = sum(build.hub.served.values())
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    downloaded = sum(build.hub.served.values()) - before
    # The 1.3B DiT, the VAE and T5: exactly what this preset needs.
    assert downloaded == len(tiny_wan.dit_bytes()) + 2 * 2048
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and sum(build.hub.served.values()) - before == downloaded
    assert "weights: 0 downloaded" in second.stdout


def test_hadolint_passes_on_every_dockerfile():
    hadolint = Path(sys.executable).parent / "hadolint"
    dockerfiles = sorted(ROOT.glob("images/**/Dockerfile"))
    assert dockerfiles
    result = subprocess.run([str(hadolint), *map(str, dockerfiles)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
