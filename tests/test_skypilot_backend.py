"""`--backend skypilot`: the task as data, printed as YAML by --dry-run without secrets and without `sky`;
every generated task read by SkyPilot's own parser (sky.Task.from_yaml_config, the pinned release) and round-
tripped; SkyPilot's refusals turned into one line; the record of a submitted run. The SkyPilot tests skip
where the `skypilot` extra is not installed (see pyproject.toml for why it is not in `dev`)."""

from __future__ import annotations

import contextlib
import copy
import json
import os

import pytest
import yaml
from conftest import EXAMPLE_DATASET

from launcher import runs
from launcher.backends import LaunchOptions
from launcher.backends.skypilot_backend import task_config
from launcher.cli.main import main
from launcher.core.job import prepare
from launcher.core.presets import load_preset, preset_names

SECRET = "hf_SkyPilotMustNotPrintThis"
DS = str(EXAMPLE_DATASET)


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


def test_dry_run_prints_the_task_yaml_with_secrets_by_reference_only(capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    task, text = dry_run(capsys, "--image", "ghcr.io/you/lora-gym-wan22:0.1.0")
    assert SECRET not in text and task["secrets"] == {"HF_TOKEN": None}
    assert task["resources"]["image_id"] == "docker:ghcr.io/you/lora-gym-wan22:0.1.0"
    assert task["resources"]["accelerators"] == {"H100": 1} and "use_spot" not in task["resources"]
    env = task["envs"]
    assert env["LORA_GYM_EXPERT"] == "high" and env["LORA_GYM_RUN_ID"] in task["name"]
    assert env["LORA_GYM_OUTPUT_DIR"].startswith("/lora-gym/store/") and task["run"] == "lora-gym-entrypoint"
    assert task["file_mounts"]["/lora-gym/store"] == {"name": "lora-gym-wan22-store", "mode": "MOUNT_CACHED"}


def test_spot_and_gpus_per_run_reach_the_resources(capsys):
    task, text = dry_run(capsys, "--spot", "--gpus-per-run", "2", "--gpu", "A100-80GB", "--volume", "my-bucket")
    assert task["resources"]["accelerators"] == {"A100-80GB": 2}
    assert task["resources"]["use_spot"] is True and task["resources"]["job_recovery"]["strategy"] == "FAILOVER"
    assert task["file_mounts"]["/lora-gym/store"]["name"] == "my-bucket"
    assert "train.save_state=true" in text  # a preempted run resumes only from a saved state


def test_a_preset_file_travels_as_a_file_mount(tmp_path, capsys):
    preset = tmp_path / "mine.toml"
    assert main(["presets", "cp", "wan21-t2v-1.3b", str(preset)]) == 0
    capsys.readouterr()
    assert main(["run", "--preset", str(preset), "--dataset", DS, "--backend", "skypilot", "--dry-run"]) == 0
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
                options = LaunchOptions(dataset=DS, spot=spot)
                found.append((f"{name}-{expert}-{spot}", task_config(job, options)))
    return found


def test_every_generated_task_is_read_by_skypilot_and_round_trips():
    sky = import_sky()
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
        assert dumped["secrets"] == ["secrets:HF_TOKEN"], label  # a reference: no value anywhere
        assert set(task.storage_mounts) == {"/lora-gym/store"}, label


def test_the_secret_goes_to_skypilot_at_launch_and_nowhere_else(monkeypatch, capsys):
    sky = import_sky()
    monkeypatch.setenv("HF_TOKEN", SECRET)
    launched = []

    def launch(task, name=None, **kwargs):
        launched.append((task, name))
        return "request-1"

    monkeypatch.setattr(sky.jobs, "launch", launch)
    monkeypatch.setattr(sky, "stream_and_get", lambda request: ([42], None))
    assert main(["run", "--preset", "wan21-t2v-1.3b", "--dataset", DS, "--backend", "skypilot", "--no-check"]) == 0
    [(task, name)] = launched
    # SkyPilot's to pass into the job, by its secret mechanism (kept as a SecretStr, redacted when shown)
    assert list(task.secrets) == ["HF_TOKEN"] and task.secrets["HF_TOKEN"].get_secret_value() == SECRET
    [record] = runs.all_runs()
    assert record["job_id"] == 42 and record["backend"] == "skypilot"
    assert SECRET not in json.dumps(record) + "".join(capsys.readouterr())


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
    assert main(["run", "--preset", "wan21-t2v-1.3b", "--dataset", DS, "--backend", "skypilot", "--no-check"]) == 2
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
                             "skypilot", "--no-check"], env=api_server, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert lines[-1].startswith("error: SkyPilot has no enabled cloud") and "`sky check`" in lines[-1]
    assert "no cloud storage is available" in lines[-1]  # SkyPilot's own answer, from its server
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in result.stderr
