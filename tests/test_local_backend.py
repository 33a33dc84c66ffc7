"""`launcher run --backend local`: the container spec and `docker run` rendering as data, then real runs of
a fake LoRA Gym image through Podman's Docker-compatible API (the same docker-py calls Docker Engine gets).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLE_DATASET, FAKES, ROOT, clean_env
from container_support import BASE_IMAGE, ensure_base_image, podman_service, remove_named, require_podman, run_name

from launcher import runs
from launcher.backends import LaunchOptions, labels, local
from launcher.cli.main import main
from launcher.contract import CONTRACT_VERSION
from launcher.core.errors import UserError
from launcher.core.job import prepare

NOWHERE = "unix:///nonexistent/lora-gym-test.sock"


def spec_for(preset, tmp_path, expert=None, overrides=(), **options):
    job = prepare(preset, expert, overrides, EXAMPLE_DATASET)
    opts = LaunchOptions(dataset=str(EXAMPLE_DATASET), output=str(tmp_path / "out"), **options)
    return local.container_spec(job, opts, user="1000:1000")


# --- the container as data ----------------------------------------------------------------------------------

def test_spec_holds_the_env_contract_mounts_user_and_gpus(tmp_path):
    spec = spec_for("wan22-t2v-lightning", tmp_path, "high", ["train.max_train_epochs=20", "model.clip=none"])
    assert spec.env == {"LORA_GYM_PRESET": "wan22-t2v-lightning", "LORA_GYM_IMAGE": "lora-gym-wan22:0.1.0",
                        "LORA_GYM_EXPERT": "high", "LORA_GYM_SET": "train.max_train_epochs=20 model.clip=none",
                        "LORA_GYM_DATASET_DIR": "/dataset", "LORA_GYM_OUTPUT_DIR": "/output",
                        "LORA_GYM_CACHE_DIR": "/cache"}
    assert [m.bind for m in spec.mounts] == [f"{EXAMPLE_DATASET}:/dataset:ro", f"{tmp_path}/out:/output:rw",
                                             "lora-gym-cache-wan22:/cache:rw"]
    assert (spec.image, spec.user, spec.gpus) == ("lora-gym-wan22:0.1.0", "1000:1000", "all")
    assert not (tmp_path / "out").exists()  # describing a run creates nothing


def test_spec_options_registry_image_volume_run_id(tmp_path, monkeypatch):
    monkeypatch.setenv(labels.REGISTRY_ENV, "ghcr.io/acme/")
    assert spec_for("wan21-t2v-1.3b", tmp_path).image == "ghcr.io/acme/lora-gym-wan21:0.1.0"
    spec = spec_for("wan21-t2v-1.3b", tmp_path, image="me/img@sha256:" + "a" * 64, cache_volume="c1",
                    run_id="r1", gpus="none")
    assert spec.image.endswith("a" * 64) and spec.mounts[2].bind == "c1:/cache:rw"
    assert spec.env["LORA_GYM_RUN_ID"] == "r1" and spec.gpus is None and "LORA_GYM_EXPERT" not in spec.env


def test_user_preset_file_is_mounted_read_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "presets" / "wan21-t2v-1.3b.toml", "mine.toml")
    spec = spec_for("mine.toml", tmp_path)
    assert spec.env["LORA_GYM_PRESET"] == "/presets/mine.toml"
    assert spec.mounts[-1].bind == f"{tmp_path}/mine.toml:/presets/mine.toml:ro"


def test_rendered_command_is_one_shell_command_equal_to_the_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_very_secret")  # nothing from the host environment goes in
    spec = spec_for("wan21-t2v-1.3b", tmp_path, overrides=["dataset.videos.1.resolution=640x352"], gpus="0,1")
    argv = local.docker_run_argv(spec)
    text = local.render_command(argv)
    assert shlex.split(text.replace("\\\n", "")) == argv
    assert argv[:3] == ["docker", "run", "--rm"] and argv[-1] == "lora-gym-wan21:0.1.0"
    assert "--gpus '\"device=0,1\"'" in text and "--user 1000:1000" in text
    assert "-e 'LORA_GYM_SET=dataset.videos.1.resolution=640x352'" not in text  # no needless quoting...
    assert "-e LORA_GYM_SET=dataset.videos.1.resolution=640x352" in text  # ...but exact words
    assert "secret" not in text and "HF_TOKEN" not in text


@pytest.mark.parametrize(("gpus", "engine", "version", "expected"), [
    ("all", "docker", (), [{"count": -1, "capabilities": [["gpu"]]}]),
    ("0,1", "docker", (), [{"device_ids": ["0", "1"], "capabilities": [["gpu"]]}]),
    ("none", "docker", (), []),
    ("all", "podman", (5, 4, 0), [{"driver": "cdi", "device_ids": ["nvidia.com/gpu=all"], "capabilities": [["gpu"]]}]),
    ("1", "podman", (5, 6), [{"driver": "cdi", "device_ids": ["nvidia.com/gpu=1"], "capabilities": [["gpu"]]}]),
    ("none", "podman", (4, 3, 1), []),
])
def test_gpu_requests_per_engine(gpus, engine, version, expected):
    assert local.gpu_requests(local.parse_gpus(gpus), engine, version) == expected


def test_malformed_or_ignored_options_are_refused():
    with pytest.raises(UserError, match="Podman 4.3.1 ignores GPU requests.*--gpu-ids none"):
        local.gpu_requests("all", "podman", (4, 3, 1))
    with pytest.raises(UserError, match="use all, none, or GPU indexes"):
        local.parse_gpus("0;rm -rf /")
    with pytest.raises(UserError, match="is not a volume name"):
        local.cache_volume(LaunchOptions(dataset=".", cache_volume="./cache"), "wan21")


@pytest.mark.parametrize(("explanation", "fix"), [
    ('could not select device driver "" with capabilities: [[gpu]]', "install the NVIDIA Container Toolkit"),
    ("setting up CDI devices: unresolvable CDI devices nvidia.com/gpu=all", "nvidia-ctk cdi generate"),
    ("OCI runtime error", None),
])
def test_gpu_start_failures_name_the_fix(explanation, fix):
    message = local.start_error(explanation).problems[0]
    assert message.startswith(f"the container did not start: {explanation}")
    assert (fix in message) if fix else message.endswith(explanation)


GOOD = {labels.FAMILY: "wan22", labels.FLAVOR: "full", labels.TASKS: "t2v", labels.CONTRACT: CONTRACT_VERSION}


@pytest.mark.parametrize(("change", "task", "message"), [
    ({}, "t2v-A14B", None),
    ({labels.FLAVOR: "slim", labels.TASKS: ""}, "i2v-A14B", None),  # a slim image brings no weights
    ({labels.TASKS: "t2v,i2v"}, "i2v-A14B", None),
    ({labels.TASKS: "all"}, "i2v-A14B", None),
    ({labels.TASKS: "t2v"}, "i2v-A14B", "needs i2v: rebuild with `make image-wan22 TASKS=all`"),
    ({labels.CONTRACT: "musubi-old"}, "t2v-A14B", "built for musubi-old.*rebuild with `make image-wan22`"),
    ({labels.FAMILY: "wan21"}, "t2v-A14B", "is for wan21, the preset needs wan22"),
    ({labels.CONTRACT: None}, "t2v-A14B", "not a LoRA Gym image: build one with `make image-wan22`"),
])
def test_image_label_checks(change, task, message):
    found = {k: v for k, v in (GOOD | change).items() if v is not None}
    if message is None:
        labels.check_image("img", found, "wan22", task)
    else:
        with pytest.raises(UserError, match=message):
            labels.check_image("img", found, "wan22", task)


def run_cli(capfd, *argv):
    """(exit code, stdout, the `error:` lines of stderr): the media check may add `warning:` lines."""
    code = main(list(argv))
    out, err = capfd.readouterr()
    return code, out, "".join(line for line in err.splitlines(keepends=True) if not line.startswith("warning: "))


def test_cli_dry_run_prints_the_docker_command_and_needs_output(capfd, tmp_path, monkeypatch):
    base = ["run", "--preset", "wan21-t2v-1.3b", "--dataset", str(EXAMPLE_DATASET), "--backend", "local"]
    code, out, _ = run_cli(capfd, *base, "--dry-run", "--output", str(tmp_path / "o"), "--gpu-ids", "none")
    assert code == 0 and out.startswith("docker run --rm") and "--gpus" not in out
    assert not (tmp_path / "o").exists()
    code, _, err = run_cli(capfd, *base, "--dry-run")
    assert code == 2 and err == "error: --backend local needs --output DIR: the folder on this machine where " \
                                 "each run's LoRAs and run.json are written\n"
    monkeypatch.setenv("DOCKER_HOST", NOWHERE)  # no engine, so no local backend to fall back on
    code, _, err = run_cli(capfd, *base[:5])
    assert code == 2 and "no backend (cannot reach Docker or Podman" in err and len(err.splitlines()) == 1


def test_unreachable_engine_is_one_line_with_the_fix(capfd, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", NOWHERE)
    code, _, err = run_cli(capfd, "run", "--preset", "wan21-t2v-1.3b", "--dataset", str(EXAMPLE_DATASET),
                           "--backend", "local", "--output", str(tmp_path / "o"))
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: cannot reach Docker or Podman at {NOWHERE}") and "podman system service" in err
    assert not (tmp_path / "o").exists()


def test_bad_input_fails_before_the_engine_is_touched(capfd, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", NOWHERE)
    code, _, err = run_cli(capfd, "run", "--preset", "wan21-t2v-1.3b", "--expert", "high", "--dataset",
                           str(EXAMPLE_DATASET), "--backend", "local", "--output", str(tmp_path / "o"))
    assert code == 2 and "--expert is only for Wan 2.2 presets" in err and "Docker" not in err


# --- real containers through Podman's Docker API ------------------------------------------------------------

PREFIX = run_name("local")  # every image, volume and container below holds it; removed at the session's end
TAG = f"localhost/{PREFIX}-fake:test"
CACHE = f"{PREFIX}-cache"
FAKE_LABELS = {labels.VERSION: "0.1.0", labels.REVISION: "test", labels.FAMILY: "wan21", labels.FLAVOR: "full",
               labels.TASKS: "t2v", labels.MUSUBI_COMMIT: "30c658c4", labels.CONTRACT: CONTRACT_VERSION,
               labels.WEIGHTS_LOCK: "0" * 64}
VARIANTS = {"exit3": "ENV FAKE_EXIT=3", "slow": "ENV FAKE_SLEEP=60", "old": f'LABEL "{labels.CONTRACT}"="musubi-old"'}


def _build(context: Path, tag: str, lines: list[str]) -> None:
    (context / "Containerfile").write_text("\n".join(lines) + "\n")
    subprocess.run(["podman", "build", "-q", "-t", tag, str(context)], check=True, capture_output=True)


@pytest.fixture(scope="session")
def podman(tmp_path_factory):
    """DOCKER_HOST of a private Podman API service, with the fake images built; the images, the cache volume
    and any container left by a failed test are removed afterwards, after a failed setup too."""
    require_podman()
    tmp = tmp_path_factory.mktemp("podman")
    try:
        ensure_base_image(tmp)
        shutil.copy(FAKES / "fake_image_entrypoint.sh", tmp / "entrypoint.sh")
        (tmp / "entrypoint.sh").chmod(0o755)
        label_lines = [f'LABEL "{key}"="{value}"' for key, value in FAKE_LABELS.items()]
        _build(tmp, TAG, [f"FROM {BASE_IMAGE}", *label_lines,
                          "COPY entrypoint.sh /usr/local/bin/lora-gym-entrypoint",
                          'ENTRYPOINT ["/usr/local/bin/lora-gym-entrypoint"]'])
        for name, line in VARIANTS.items():
            _build(tmp, f"{TAG}-{name}", [f"FROM {TAG}", line])
        with podman_service(tmp) as docker_host:
            yield docker_host
    finally:
        remove_named(PREFIX)


def our_containers() -> list[str]:
    listing = subprocess.run(["podman", "ps", "-a", "--filter", f"label={labels.LAUNCHED_BY}", "--format",
                              "{{.Image}}"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if TAG in line]


@pytest.fixture
def local_run(podman, capfd, monkeypatch, tmp_path):
    """`launcher run --backend local --gpus none` on the example dataset; returns (code, stdout, stderr)."""
    monkeypatch.setenv("DOCKER_HOST", podman)

    def run(preset="wan21-t2v-1.3b", *extra, image=TAG):
        argv = ["run", "--preset", preset, "--dataset", str(EXAMPLE_DATASET), "--backend", "local", "--gpu-ids", "none",
                "--output", str(tmp_path / "out" / "new"), "--cache-volume", CACHE]
        return run_cli(capfd, *argv, *(["--image", image] if image else []), *extra)
    return run


def test_run_streams_logs_writes_outputs_and_removes_the_container(local_run, tmp_path):
    code, out, _ = local_run("wan21-t2v-1.3b", "--set", "train.max_train_epochs=3")
    assert code == 0, out
    assert out.splitlines()[0] == "[cache-latents] preset=wan21-t2v-1.3b expert= set=train.max_train_epochs=3"
    [record] = runs.all_runs()  # the launcher names the run folder and records the run, as for a cloud run
    assert record["backend"] == "local" and record["output"] == str(tmp_path / "out" / "new")
    assert f"[cache-latents] user={os.getuid()}:{os.getgid()} run_id={record['run_id']}" in out
    image_id = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", TAG], capture_output=True,
                              text=True, check=True).stdout.strip()
    # what run.json records: the tag, and the id of the image it named when the run started (launcher run --from)
    assert f"[cache-latents] image={TAG} id=sha256:{image_id.removeprefix('sha256:')}" in out
    assert "[cache-latents] dataset is read-only" in out and "[cache-latents] captions: 6" in out
    assert "[cache-text] cache written" in out and out.rstrip().endswith("[train] done, exit 0")
    lora = tmp_path / "out" / "new" / record["run_id"] / "fake-lora.safetensors"
    assert lora.read_text() == "fake lora\n" and lora.stat().st_uid == os.getuid()
    assert our_containers() == []


def test_exit_status_and_user_preset_file(local_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "presets" / "wan21-t2v-1.3b.toml", "mine.toml")
    code, out, _ = local_run("./mine.toml", image=f"{TAG}-exit3")
    assert code == 3 and "[train] done, exit 3" in out
    assert "preset=/presets/mine.toml" in out and "preset file: # wan21-t2v-1.3b:" in out
    assert our_containers() == []


@pytest.mark.parametrize(("preset", "image", "message"), [
    ("wan21-t2v-1.3b", f"{TAG}-old", "built for musubi-old, this launcher needs .*: rebuild with `make image-wan21`"),
    ("wan21-i2v-480p", TAG, "holds weights for t2v only, the preset needs i2v: .*`make image-wan21 TASKS=all`"),
    ("wan21-t2v-1.3b", f"{TAG}-missing", "is not on this machine: pull it, or build .* `make image-wan21`"),
], ids=["old-contract", "no-i2v-weights", "missing"])
def test_wrong_images_are_refused_before_anything_runs(local_run, tmp_path, preset, image, message):
    code, out, err = local_run(preset, image=image)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_missing_default_image_names_the_make_command(local_run, monkeypatch):
    monkeypatch.setenv(labels.REGISTRY_ENV, f"localhost/{run_name('absent')}")
    code, _, err = local_run(image=None)
    assert code == 2 and err.endswith("lora-gym-wan21:0.1.0 is not on this machine: build it with "
                                      "`make image-wan21`\n")


def test_gpus_on_podman_before_5_4_are_refused(local_run):
    code, _, err = local_run("wan21-t2v-1.3b", "--gpu-ids", "all")
    assert code == 2 and ("ignores GPU requests" in err or "did not start" in err), err
    assert our_containers() == []


def _first_line(pipe) -> bytes:
    """One line read byte by byte from an unbuffered pipe, so communicate() later gets every byte after it."""
    line = b""
    while not line.endswith(b"\n") and (byte := pipe.read(1)):
        line += byte
    return line


def test_ctrl_c_streams_to_the_last_line_then_removes_the_container_and_exits_130(podman, tmp_path):
    launcher = Path(sys.executable).parent / "launcher"
    proc = subprocess.Popen([str(launcher), "run", "--preset", "wan21-t2v-1.3b", "--dataset", str(EXAMPLE_DATASET),
                             "--backend", "local", "--gpu-ids", "none", "--output", str(tmp_path / "out"),
                             "--image", f"{TAG}-slow", "--cache-volume", CACHE],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
                            env=clean_env(DOCKER_HOST=podman),
                            # As from a terminal: a shell running the suite in the background ignores SIGINT,
                            # and Python then never turns it into KeyboardInterrupt.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = _first_line(proc.stdout).decode()
        proc.send_signal(signal.SIGINT)
        out, err = (stream.decode() for stream in proc.communicate(timeout=60))
    finally:  # a launcher that hung is not left running (its container goes with the session's images)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert first.startswith("[cache-latents] preset=wan21-t2v-1.3b"), first + err
    assert proc.returncode == 130, err
    assert "stopping the container" in err and "Traceback" not in err
    # The container printed its last line a second after SIGTERM: it still reached the user.
    assert out.splitlines()[-2:] == ["[train] got TERM", "[train] last words after TERM"], out
    assert our_containers() == []


def test_the_promised_command_trains_in_a_folder_made_by_init(podman, capfd, monkeypatch, tmp_path):
    """`make image-wan22 && launcher run --preset wan22-t2v-lightning --expert high`, typed as written in a folder
    made by `launcher init` with the user's media in its dataset/: no --dataset, no --backend, no --output.
    The image `make image-wan22` builds is stood for by the fake image relabelled as a wan22 build, at the default
    name under a registry of this test run (the project file's `registry`); a real container runs it through
    Podman's Docker API, its entrypoint the test double (the real trainer is tests/test_images.py's business)."""
    registry = f"localhost/{PREFIX}"
    wan22 = {**FAKE_LABELS, labels.FAMILY: "wan22", labels.TASKS: "all"}
    (tmp_path / "image").mkdir()
    _build(tmp_path / "image", labels.default_image("wan22", {labels.REGISTRY_ENV: registry}),
           [f"FROM {TAG}", *(f'LABEL "{key}"="{value}"' for key, value in wan22.items())])
    monkeypatch.setenv("DOCKER_HOST", podman)
    monkeypatch.delenv(labels.REGISTRY_ENV, raising=False)
    # Without a project file: ./dataset and the image are found, and the one thing missing is said, with its fix.
    shutil.copytree(EXAMPLE_DATASET, tmp_path / "bare" / "dataset")
    monkeypatch.chdir(tmp_path / "bare")
    monkeypatch.setenv(labels.REGISTRY_ENV, registry)
    capfd.readouterr()
    assert main(["run", "--preset", "wan22-t2v-lightning", "--expert", "high"]) == 2
    out, err = capfd.readouterr()
    assert (out, err) == ("", "error: cannot start the run: no output folder (pass --output ./runs, or set output in "
                              "lora-gym.toml); `launcher init` writes these defaults to lora-gym.toml\n")
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == ["dataset"]
    monkeypatch.delenv(labels.REGISTRY_ENV)

    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    assert main(["init"]) == 0
    shutil.copytree(EXAMPLE_DATASET, project / "dataset", dirs_exist_ok=True)
    settings = (project / "lora-gym.toml").read_text()
    # This machine's Podman (4.3) takes no GPU request, and the cache volume is this test run's own.
    settings = settings.replace('# registry = "ghcr.io/you"', f'registry = "{registry}"').replace(
        "[backends.local]\n", f'[backends.local]\ngpu_ids = "none"\ncache_volume = "{CACHE}"\n')
    (project / "lora-gym.toml").write_text(settings)
    capfd.readouterr()

    code = main(["run", "--preset", "wan22-t2v-lightning", "--expert", "high"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert err.splitlines()[0] == (f"note: running on this machine (the local backend): {registry}/lora-gym-wan22:"
                                   "0.1.0 is here; --backend modal, runpod or skypilot runs elsewhere")
    assert out.splitlines()[0] == "[cache-latents] preset=wan22-t2v-lightning expert=high set="
    # The double counts every .txt: the 6 captions and init's dataset/README.txt (which the dataset check ignores).
    assert "[cache-latents] captions: 7" in out and out.rstrip().endswith("[train] done, exit 0")
    [record] = runs.all_runs()  # recorded like every run, its folder named by the launcher
    assert (project / "runs" / record["run_id"] / "fake-lora.safetensors").read_text() == "fake lora\n"
    assert our_containers() == []
