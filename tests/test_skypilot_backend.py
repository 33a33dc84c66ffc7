"""`--backend skypilot`: the task as data, printed as YAML by --dry-run without secret values and without `sky`;
every generated task read by SkyPilot's own parser (sky.Task.from_yaml_config, the pinned release), round-
tripped, and passed through its launch-time secret resolution; the docker login reaching SkyPilot's
DockerLoginConfig; the per-user bucket name; SkyPilot's refusals turned into one line; the record of a
submitted run; `pull` through SkyPilot's own download command (a double of the AWS CLI). The SkyPilot tests
skip where the `skypilot` extra is not installed (see pyproject.toml for why it is not in `dev`). The
container side (SkyPilot's setup, mount and run commands in the image): tests/test_skypilot_container.py."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import sys

import pytest
import yaml
from conftest import EXAMPLE_DATASET, FAKES

from launcher import runs
from launcher.backends import LaunchOptions, skypilot_store
from launcher.backends.skypilot_backend import DOCKER_LOGIN, SkyPilotBackend, sky_task, task_config
from launcher.cli.main import main
from launcher.core.job import prepare
from launcher.core.presets import load_preset, preset_names

SECRET = "hf_SkyPilotMustNotPrintThis"
PASSWORD = "ghp_RegistryPasswordMustNotShow"
DS = str(EXAMPLE_DATASET)
WAN22 = "ghcr.io/you/lora-gym-wan22:0.1.0"
LOGIN = {"SKYPILOT_DOCKER_USERNAME": "you", "SKYPILOT_DOCKER_PASSWORD": PASSWORD, "SKYPILOT_DOCKER_SERVER": "ghcr.io"}


@pytest.fixture(autouse=True, scope="module")
def _private_home(tmp_path_factory):
    """SkyPilot keeps its state in ~/.sky (user hash, locks): a home of the tests' own, never the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(tmp_path_factory.mktemp("sky-home")))
        yield


def import_sky():
    """SkyPilot, where the `skypilot` extra is installed. CI installs it in a venv of its own (its click<8.2 pin
    does not fit the dev environment) and sets LORA_GYM_TEST_SKYPILOT=1, so there a missing `sky` fails."""
    if os.environ.get("LORA_GYM_TEST_SKYPILOT") == "1":
        import sky

        return sky
    return pytest.importorskip("sky")


def dry_run(capsys, *extra) -> tuple[dict, str]:
    assert main(["run", "--preset", "wan22-t2v-lightning", "--expert", "high", "--dataset", DS, "--backend",
                 "skypilot", "--dry-run", *extra]) == 0
    out = capsys.readouterr()
    return yaml.safe_load(out.out), out.out + out.err


def test_dry_run_prints_the_task_yaml_naming_no_secret_a_full_image_does_not_need(capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    task, text = dry_run(capsys, "--image", WAN22)
    assert SECRET not in text and "secrets" not in task  # a full image has the weights: no token goes
    assert task["resources"]["image_id"] == f"docker:{WAN22}"
    assert task["resources"]["accelerators"] == {"H100": 1} and "use_spot" not in task["resources"]
    env = task["envs"]
    assert env["LORA_GYM_EXPERT"] == "high" and env["LORA_GYM_RUN_ID"] in task["name"]
    assert env["LORA_GYM_OUTPUT_DIR"].startswith("/lora-gym/store/") and task["run"] == "lora-gym-entrypoint"
    store_id = (runs.home() / skypilot_store.ID_FILE).read_text().strip()
    assert task["file_mounts"]["/lora-gym/store"] == {"name": f"lora-gym-wan22-{store_id}", "mode": "MOUNT_CACHED"}


def test_a_slim_image_names_hf_token_only_when_it_is_set(capsys, monkeypatch):
    slim = f"{WAN22}-slim"
    task, _ = dry_run(capsys, "--image", slim)
    assert "secrets" not in task  # unset: naming it would make SkyPilot refuse the launch (see below)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    task, text = dry_run(capsys, "--image", slim)
    assert task["secrets"] == {"HF_TOKEN": None} and SECRET not in text and "--secret NAME" in text


def test_the_default_bucket_is_random_per_user_and_kept(capsys, monkeypatch, tmp_path):
    first = dry_run(capsys, "--image", WAN22)[0]["file_mounts"]["/lora-gym/store"]["name"]
    assert re.fullmatch(r"lora-gym-wan22-[0-9a-f]{10}", first)
    assert dry_run(capsys, "--image", WAN22)[0]["file_mounts"]["/lora-gym/store"]["name"] == first
    monkeypatch.setenv("LORA_GYM_HOME", str(tmp_path / "another-user"))
    other = dry_run(capsys, "--image", WAN22)[0]["file_mounts"]["/lora-gym/store"]["name"]
    assert re.fullmatch(r"lora-gym-wan22-[0-9a-f]{10}", other) and other != first
    (tmp_path / "another-user" / skypilot_store.ID_FILE).write_text("../../etc\n")
    assert main(["run", "--preset", "wan22-t2v-lightning", "--expert", "high", "--dataset", DS, "--backend",
                 "skypilot", "--dry-run", "--image", WAN22]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a store id" in err[0] and "--volume" in err[0]


@pytest.mark.parametrize("args, env, expected", [
    ((), {}, "names no registry"),
    (("--image", "localhost:5000/lora-gym-wan22:0.1.0"), {}, "a registry only this machine reaches"),
    (("--image", WAN22), {"SKYPILOT_DOCKER_USERNAME": "you"}, "not SKYPILOT_DOCKER_PASSWORD"),
    (("--image", WAN22), LOGIN | {"SKYPILOT_DOCKER_SERVER": "docker.io"}, "set SKYPILOT_DOCKER_SERVER=ghcr.io"),
    (("--image", WAN22, "--volume", "My_Bucket"), {}, "is not a bucket name"),
])
def test_what_skypilot_could_not_pull_or_name_is_one_error_line(capsys, monkeypatch, args, env, expected):
    monkeypatch.delenv("LORA_GYM_REGISTRY", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["run", "--preset", "wan22-t2v-lightning", "--expert", "high", "--dataset", DS, "--backend",
                 "skypilot", "--dry-run", *args]) == 2
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert out.out == "" and len(err) == 1 and err[0].startswith("error: ") and expected in err[0], out.err
    assert PASSWORD not in out.err


def test_lora_gym_registry_names_the_default_image(capsys, monkeypatch):
    monkeypatch.setenv("LORA_GYM_REGISTRY", "ghcr.io/you")
    task, _ = dry_run(capsys)
    assert task["resources"]["image_id"] == f"docker:{WAN22}"


def test_spot_and_gpus_per_run_reach_the_resources(capsys):
    task, text = dry_run(capsys, "--spot", "--gpus-per-run", "2", "--gpu", "A100-80GB", "--volume", "my-bucket",
                         "--image", WAN22)
    assert task["resources"]["accelerators"] == {"A100-80GB": 2}
    assert task["resources"]["use_spot"] is True and task["resources"]["job_recovery"]["strategy"] == "FAILOVER"
    assert task["file_mounts"]["/lora-gym/store"]["name"] == "my-bucket"
    assert "train.save_state=true" in text  # a preempted run resumes only from a saved state


def test_a_preset_file_travels_as_a_file_mount(tmp_path, capsys):
    preset = tmp_path / "mine.toml"
    assert main(["presets", "cp", "wan21-t2v-1.3b", str(preset)]) == 0
    capsys.readouterr()
    assert main(["run", "--preset", str(preset), "--dataset", DS, "--backend", "skypilot", "--dry-run", "--image",
                 "ghcr.io/you/lora-gym-wan21:0.1.0"]) == 0
    task = yaml.safe_load(capsys.readouterr().out)
    assert task["envs"]["LORA_GYM_PRESET"] == "/lora-gym/preset/mine.toml"
    assert task["file_mounts"]["/lora-gym/preset/mine.toml"] == str(preset)


# --- SkyPilot's own parser ------------------------------------------------------------------------------------

def every_task() -> list[tuple[str, dict]]:
    found = []
    for name in preset_names():
        for expert in ("high", "low", "both") if load_preset(name).preset.experts else (None,):
            for overrides, spot in (((), False), (("resources.gpus=2", "train.save_state=true"), True)):
                job = prepare(name, expert, overrides, EXAMPLE_DATASET, run_id="r1")
                image = f"ghcr.io/you/lora-gym-{job.loaded.preset.family}:0.1.0"
                options = LaunchOptions(dataset=DS, spot=spot, image=image)
                found.append((f"{name}-{expert}-{spot}", task_config(job, options)))
    return found


def test_every_generated_task_is_read_by_skypilot_and_round_trips(monkeypatch):
    sky = import_sky()
    from sky import execution

    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert sky.__version__ == "0.14.1"  # the pinned release whose schema this was checked against
    tasks = every_task()
    assert len(tasks) == 2 * (4 * 3 + 4)
    for label, config in tasks:
        task = sky.Task.from_yaml_config(copy.deepcopy(config))
        dumped = task.to_yaml_config()
        again = sky.Task.from_yaml_config(copy.deepcopy(dumped)).to_yaml_config()
        for data in (dumped, again):
            data.pop("_user_specified_yaml", None)
        assert again == dumped, label
        [resources] = task.resources
        assert resources.accelerators == config["resources"]["accelerators"], label
        assert resources.use_spot == config["resources"].get("use_spot", False), label
        assert resources.extract_docker_image() == config["resources"]["image_id"].removeprefix("docker:"), label
        assert task.envs == config["envs"], label
        assert "secrets" not in dumped and not task.managed_secret_refs, label
        # what SkyPilot runs at launch (sky/execution.py): it refuses any named secret left without a value
        execution._resolve_managed_secrets(_dag_of(sky, task))
        assert set(task.storage_mounts) == {"/lora-gym/store"}, label
    # ... which is what the task used to send: HF_TOKEN named, unset here
    config = copy.deepcopy(tasks[0][1]) | {"secrets": {"HF_TOKEN": None}}
    with pytest.raises(RuntimeError, match="No value available for secret"):
        execution._resolve_managed_secrets(_dag_of(sky, sky.Task.from_yaml_config(config)))


def _dag_of(sky, task):
    dag = sky.Dag()
    dag.add(task)
    return dag


def test_the_docker_login_reaches_skypilot_as_secrets_and_is_shown_nowhere(monkeypatch, capsys):
    import_sky()
    for name, value in LOGIN.items():
        monkeypatch.setenv(name, value)
    task, text = dry_run(capsys, "--image", WAN22)
    assert task["secrets"] == dict.fromkeys(DOCKER_LOGIN) and PASSWORD not in text
    launched = sky_task(task)
    [resources] = launched.resources
    login = resources.docker_login_config  # what sky/provision/docker_utils.py logs in with on the VM
    assert (login.username, login.password, login.server) == ("you", PASSWORD, "ghcr.io")
    assert login.format_image(resources.extract_docker_image()) == WAN22  # the image SkyPilot pulls, unchanged
    assert PASSWORD not in json.dumps(launched.to_yaml_config(use_user_specified_yaml=True))


def test_the_secret_goes_to_skypilot_at_launch_and_nowhere_else(monkeypatch, capsys):
    sky = import_sky()
    monkeypatch.setenv("HF_TOKEN", SECRET)
    launched = []

    def launch(task, name=None, **kwargs):
        launched.append((task, name))
        return "request-1"

    monkeypatch.setattr(sky.jobs, "launch", launch)
    monkeypatch.setattr(sky, "stream_and_get", lambda request: ([42], None))
    store_ls(monkeypatch, sky, {"lora-gym-wan21-0123456789": "GCS"})
    (runs.home() / skypilot_store.ID_FILE).parent.mkdir(parents=True, exist_ok=True)
    (runs.home() / skypilot_store.ID_FILE).write_text("0123456789\n")
    assert main(["run", "--preset", "wan21-t2v-1.3b", "--dataset", DS, "--backend", "skypilot", "--no-check",
                 "--image", "ghcr.io/you/lora-gym-wan21:0.1.0-slim"]) == 0
    [(task, name)] = launched
    # SkyPilot's to pass into the job, by its secret mechanism (kept as a SecretStr, redacted when shown)
    assert list(task.secrets) == ["HF_TOKEN"] and task.secrets["HF_TOKEN"].get_secret_value() == SECRET
    assert not task.managed_secret_refs
    [record] = runs.all_runs()
    assert record["job_id"] == 42 and record["backend"] == "skypilot"
    assert record["store"] == "lora-gym-wan21-0123456789" and record["store_url"] == "gs://lora-gym-wan21-0123456789"
    assert SECRET not in json.dumps(record) + "".join(capsys.readouterr())


def store_ls(monkeypatch, sky, buckets: dict[str, str]) -> None:
    """`sky storage ls` answering with SkyPilot's own record type, as its API server does (sky/core.py)."""
    from sky.data.storage import StoreType
    from sky.schemas.api.responses import StorageRecord
    from sky.utils.status_lib import StorageStatus

    records = [StorageRecord(name=name, launched_at=0, store=[StoreType(store)], last_use="",
                             status=StorageStatus.READY) for name, store in buckets.items()]
    monkeypatch.setattr(sky, "storage_ls", lambda: "storage-ls-request")
    monkeypatch.setattr(sky, "get", lambda request: records if request == "storage-ls-request" else None)


# --- `launcher pull`: SkyPilot's own download command, run here against a double of the AWS CLI --------------

@pytest.fixture
def fake_s3(tmp_path, monkeypatch):
    """$FAKE_S3_ROOT/<bucket>/ stands for the bucket; `aws` on PATH is tests/fakes/fake_aws_cli.py."""
    root, bin_dir = tmp_path / "s3", tmp_path / "bin"
    root.mkdir()
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKES / "fake_aws_cli.py"}" "$@"\n')
    (bin_dir / "aws").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_S3_ROOT", str(root))
    return root


def test_pull_downloads_the_run_folder_with_skypilots_sync_command(fake_s3, tmp_path, monkeypatch, capsys):
    sky = import_sky()
    run_dir = fake_s3 / "lora-gym-wan21-0123456789" / "output" / "r1"
    (run_dir / "samples").mkdir(parents=True)
    (run_dir / "run.json").write_text('{"status": "succeeded"}')
    (run_dir / "samples" / "e1.mp4").write_bytes(b"video")
    (fake_s3 / "lora-gym-wan21-0123456789" / "output" / "r2").mkdir()
    (fake_s3 / "lora-gym-wan21-0123456789" / "output" / "r2" / "run.json").write_text("{}")  # another run
    record = {"run_id": "r1", "backend": "skypilot", "store": "lora-gym-wan21-0123456789",
              "store_url": "s3://lora-gym-wan21-0123456789"}
    dest = tmp_path / "my runs"  # a space: SkyPilot pastes the destination into a shell command
    assert SkyPilotBackend().pull(record, str(dest)) == 0
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "r1/run.json", "r1/samples/e1.mp4"]
    calls = (fake_s3 / "calls.log").read_text().splitlines()
    assert calls == [f"s3 sync --no-follow-symlinks s3://lora-gym-wan21-0123456789/output/r1 {dest / 'r1'}"]
    # a record made before the bucket existed has no URL: SkyPilot's storage table gives it
    store_ls(monkeypatch, sky, {"lora-gym-wan21-0123456789": "S3"})
    del record["store_url"]
    assert SkyPilotBackend().pull(record, str(tmp_path / "again")) == 0
    assert (tmp_path / "again" / "r1" / "run.json").is_file()


@pytest.mark.parametrize("buckets, expected", [
    ({}, "SkyPilot lists no bucket"),
    ({"lora-gym-wan21-0123456789": "S3"}, "holds no files yet"),
    ({"lora-gym-wan21-0123456789": "AZURE"}, "az storage blob download-batch"),
])
def test_pull_says_in_one_line_what_it_cannot_download(fake_s3, tmp_path, monkeypatch, capsys, buckets, expected):
    sky = import_sky()
    (fake_s3 / "lora-gym-wan21-0123456789").mkdir()
    store_ls(monkeypatch, sky, buckets)
    runs.save({"run_id": "r1", "backend": "skypilot", "store": "lora-gym-wan21-0123456789", "store_url": None,
               "job_id": 3})
    assert main(["pull", "r1", str(tmp_path / "dest")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and expected in err[-1] and "Traceback" not in "".join(err)


@pytest.mark.parametrize("error, expected", [
    ("NoCloudAccessError", "run `sky check`"),
    ("ApiServerConnectionError", "sky api start"),
])
def test_skypilot_refusals_are_one_line(monkeypatch, capsys, error, expected):
    sky = import_sky()
    exc_type = getattr(sky.exceptions, error)

    def refuse(task, name=None, **kwargs):
        raise exc_type("http://127.0.0.1:46580") if error.startswith("Api") else exc_type(
            "No cloud access is available")

    monkeypatch.setattr(sky.jobs, "launch", refuse)
    # pinned by digest, so no registry is asked and no note about it comes first
    assert main(["run", "--preset", "wan21-t2v-1.3b", "--dataset", DS, "--backend", "skypilot", "--no-check",
                 "--image", f"ghcr.io/you/lora-gym-wan21:0.1.0@sha256:{'0' * 64}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0] and "Traceback" not in err[0]
    assert runs.all_runs() == []


# --- a real SkyPilot API server on this machine, with no cloud enabled -------------------------------------

@pytest.fixture
def api_server(tmp_path):
    """`sky api start --foreground` in a private home (its own ~/.sky, no credentials) on a free port, in its
    own process group, which is ended after the test (`sky api stop` only stops the default-port server)."""
    import os
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    from conftest import FAKES, clean_env

    import_sky()
    home = tmp_path / "home"
    catalog = home / ".sky" / "catalogs" / "v8" / "common"
    catalog.mkdir(parents=True)
    shutil.copy(FAKES / "sky_catalog" / "accelerators.csv", catalog / "accelerators.csv")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    env = clean_env(HOME=str(home), SKYPILOT_API_SERVER_ENDPOINT=endpoint)
    server = subprocess.Popen([str(Path(sys.executable).parent / "sky"), "api", "start", "--foreground", "--port",
                               str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/api/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the SkyPilot API server did not start"
                time.sleep(0.5)
        yield env
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        finally:
            # Its request executors outlive a SIGTERM to the server: end the whole group it started.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


def test_a_submission_reaches_skypilot_and_its_no_cloud_answer_becomes_one_line(api_server):
    import subprocess
    import sys
    from pathlib import Path

    launcher = Path(sys.executable).parent / "launcher"
    result = subprocess.run([str(launcher), "run", "--preset", "wan21-t2v-1.3b", "--dataset", DS, "--backend",
                             "skypilot", "--no-check", "--image", "ghcr.io/you/lora-gym-wan21:0.1.0"], env=api_server,
                            capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert lines[-1].startswith("error: SkyPilot has no enabled cloud") and "`sky check`" in lines[-1]
    assert "no cloud storage is available" in lines[-1]  # SkyPilot's own answer, from its server
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in result.stderr


def test_a_launch_pins_the_image_tag_to_the_digest_its_registry_names(monkeypatch, capsys):
    from fakes.fake_registry import serving

    sky = import_sky()
    image = "ghcr.io/you/lora-gym-wan21:0.1.0-slim"
    launched = []
    monkeypatch.setattr(sky.jobs, "launch", lambda task, name=None, **kwargs: launched.append(task) or "request-1")
    monkeypatch.setattr(sky, "stream_and_get", lambda request: ([42], None))
    store_ls(monkeypatch, sky, {"lora-gym-wan21-0123456789": "GCS"})
    (runs.home() / skypilot_store.ID_FILE).parent.mkdir(parents=True, exist_ok=True)
    (runs.home() / skypilot_store.ID_FILE).write_text("0123456789\n")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with serving(monkeypatch, "you/lora-gym-wan21", "0.1.0-slim") as registry:
        assert main(["run", "--preset", "wan21-t2v-1.3b", "--dataset", DS, "--backend", "skypilot", "--no-check",
                     "--image", image]) == 0
    digest = registry.digest("you/lora-gym-wan21", "0.1.0-slim")
    [task] = launched  # SkyPilot runs `docker pull <image>` on the VM (sky/provision/docker_utils.py)
    [resources] = task.resources
    assert resources.extract_docker_image() == task.envs["LORA_GYM_IMAGE"] == f"{image}@{digest}"
    assert list(task.secrets) == ["HF_TOKEN"]  # still a slim image: its tag is kept before the digest
    [record] = runs.all_runs()
    assert record["reproduce"]["image"] == {"ref": f"{image}@{digest}", "digest": digest, "source": "reference"}
    assert f"image: {image} is {digest}" in capsys.readouterr().err
