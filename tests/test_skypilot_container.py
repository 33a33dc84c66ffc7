"""SkyPilot 0.14.1's own container setup, mount and run commands, run against the test image as SkyPilot runs
them on a cloud VM: the task `launcher run --backend skypilot` sends then trains and writes its run folder into
the mounted bucket.

SkyPilot's, called (never copied): the `docker:` section of its AWS cluster template (sky/templates/
aws-ray.yml.j2, rendered from the task's resources, so with the task's image and docker login); the container
setup, DockerInitializer.initialize (sky/provision/docker_utils.py: docker login, pull, `docker run`, then as
root `docker exec -u 0` the apt installs, sshd, the sudo alias, and the detection of the image's default user);
every later command over SSH into the container as that user with its SSHCommandRunner and
parallel_data_transfer_to_nodes (sky/utils/command_runner.py, sky/backends/backend_utils.py); the bucket's
MOUNT_CACHED script, S3Store.mount_cached_command (sky/data/storage.py, sky/data/mounting_utils.py: rclone);
the file mount's symlink command, FileMountHelper.make_safe_symlink_command, with the sudo alias as
_execute_file_mounts sends it (sky/backends/cloud_vm_ray_backend.py); the job's script,
log_lib.make_task_bash_script with the task's envs and secrets, run as its job driver runs it, `/bin/bash -i`
(sky/skylet/log_lib.py).

What stands in, and why:
- The VM is this machine, and its Docker is Podman through a `docker` shim on PATH: `pull` answers from local
  storage (no registry here; the reference is a registry one, as labels.cloud_image requires) and `login` is
  recorded, not sent; `info -f {{.Runtimes}}`, which Podman's info lacks, answers "runc" (no GPU here); the
  template's `--ulimit nofile=1048576` is dropped (these VMs forbid raising ulimits: shared/ENVIRONMENT.md).
  SkyPilot's setup runs `sudo docker ...`: a `sudo` shim runs `docker` and refuses anything else (the VM-level
  steps it would change on this machine: docker group, jq, systemctl; SkyPilot runs them with `|| true`). The
  host has no rsync: an `rsync` shim copies the one file SkyPilot sends that way (authorized_keys).
- SSH goes straight to the container's sshd (on a free port instead of 10022), not through the VM's sshd.
- The bucket: a moto S3 server on this machine. SkyPilot's rclone profile has no endpoint (it means AWS), so
  the container gets RCLONE_S3_ENDPOINT and host entries for it through `docker.run_options` (a SkyPilot
  setting a user may set; SkyPilot's setup exports the container's environment to its SSH sessions). SkyPilot
  creates the bucket at launch; here boto3 does.
- rclone: SkyPilot downloads v1.68.2 from rclone's site when `rclone` is missing (unreachable here); Debian's
  rclone 1.60 is installed instead, behind a wrapper that adds the unit to `--daemon-wait 10`, which 1.60
  cannot parse without one. SkyPilot's runtime setup (its Python runtime, Ray, ~/.sky, ~/sky_workdir) is
  reduced to the two folders.
- The dataset: a managed job uploads it to an intermediate bucket and the VM copies it back (`aws s3 sync`);
  here it is copied in with `podman cp`, then SkyPilot's own mkdir and symlink commands place it.

It fails when the image does not suit SkyPilot, as these images did (each seen failing here): the earlier
uid-1000 image (SSH as `lora` is refused: its home is world-writable, and its mount script would find no
sudo); root with HOME=/home/lora (SkyPilot writes authorized_keys under `printenv HOME`, sshd reads root's from
/root/.ssh); the venv only on the image's ENV PATH (SkyPilot's setup saves the environment of a login shell,
where Debian's /etc/profile has reset PATH, so `lora-gym-entrypoint` is not found).
Runs under LORA_GYM_TEST_SKYPILOT=1 in the SkyPilot venv (.ci/run); skips elsewhere.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from conftest import EXAMPLE_DATASET
from container_support import remove_named, run_name

from launcher.backends import LaunchOptions
from launcher.backends.skypilot_backend import MOUNT, sky_task, task_config
from launcher.core.job import prepare

if os.environ.get("LORA_GYM_TEST_SKYPILOT") != "1":
    pytest.skip("runs in the SkyPilot venv with LORA_GYM_TEST_SKYPILOT=1 (.ci/run)", allow_module_level=True)

PREFIX = run_name("skypilot")
REGISTRY = "registry.test"  # a registry name no machine resolves: the `docker` shim answers its pulls
LOGIN = {"SKYPILOT_DOCKER_USERNAME": "lora", "SKYPILOT_DOCKER_PASSWORD": "registry-password-double",
         "SKYPILOT_DOCKER_SERVER": REGISTRY}
S3_HOST = "s3.test"

DOCKER_SHIM = """#!/bin/sh
# The VM's `docker` is Podman here (tests/test_skypilot_container.py says why each case differs)
log=$(dirname "$0")/docker.log
case "$1" in
  login) echo "$*" >> "$log"; exit 0 ;;
  pull) echo "$*" >> "$log"; exec podman image exists "$2" ;;
  info) if [ "$2" = -f ]; then echo "map[runc:{runc []}]"; exit 0; fi ;;
  run) shift; set -- run $(echo "$*" | sed "s/--ulimit nofile=1048576:1048576//") ;;
esac
exec podman "$@"
"""
SUDO_SHIM = """#!/bin/sh
# The VM's passwordless sudo, for `sudo docker ...` only
[ "$1" = docker ] && exec "$@"
echo "sudo shim: not run on this machine: $*" >&2
exit 1
"""
RSYNC_SHIM = """#!/bin/sh
# `rsync -e "sudo docker exec -i" -avz FILE CONTAINER:PATH`, the one host-side rsync of SkyPilot's setup
[ "$1" = -e ] && [ "$3" = -avz ] || { echo "rsync shim: unexpected $*" >&2; exit 2; }
exec $2 "${5%%:*}" sh -c "cat > '${5#*:}'" < "$4"
"""
# Debian 12's rclone 1.60 needs a unit on durations; SkyPilot's command passes `--daemon-wait 10`.
RCLONE_WRAPPER = """#!/bin/sh
for arg; do
  shift
  [ "$previous" = --daemon-wait ] && case "$arg" in *[0-9]) arg="${arg}s" ;; esac
  set -- "$@" "$arg"; previous=$arg
done
exec /usr/bin/rclone "$@"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The test image under a registry reference, as a cloud backend requires."""
    from image_support import image_builder

    with image_builder(tmp_path_factory.mktemp("build"), PREFIX) as build:
        local = build("full")
        remote = f"{REGISTRY}/{PREFIX}/{local.rsplit('/', 1)[1]}"
        subprocess.run(["podman", "tag", local, remote], check=True)
        yield remote


@pytest.fixture
def s3(tmp_path):
    """A moto S3 server on this machine: the endpoint and a boto3 client of it."""
    import boto3

    server = Path(sys.executable).parent / "moto_server"
    assert server.exists(), "moto_server is missing: install moto[server] in this venv (.ci/run does)"
    port = free_port()
    process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.list_buckets()
                break
            except Exception:
                assert process.poll() is None and time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.3)
        yield port, client
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def vm(tmp_path, monkeypatch):
    """This machine as SkyPilot's VM: the shims first on PATH, a HOME with the key SkyPilot authorizes."""
    from sky.skylet import constants

    bin_dir, home = tmp_path / "vm-bin", tmp_path / "vm-home"
    bin_dir.mkdir()
    (home / ".ssh").mkdir(parents=True)
    for name, text in (("docker", DOCKER_SHIM), ("sudo", SUDO_SHIM), ("rsync", RSYNC_SHIM)):
        executable(bin_dir / name, text)
    key = home / ".ssh" / "sky-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (home / ".ssh" / "authorized_keys").write_text((home / ".ssh" / "sky-key.pub").read_text())
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(constants, "DEFAULT_DOCKER_CONTAINER_NAME", f"{PREFIX}-vm")
    monkeypatch.setattr(constants, "DEFAULT_DOCKER_PORT", free_port())
    try:
        yield types.SimpleNamespace(bin=bin_dir, key=key, log=tmp_path / "sky.log")
    finally:
        remove_named(f"{PREFIX}-vm")


def docker_config(task, run_options: list[str]) -> dict:
    """The cluster config's `docker:` section, rendered by SkyPilot's AWS template from the task's resources."""
    import jinja2
    import sky
    import yaml
    from sky.skylet import constants

    template = (Path(sky.__file__).parent / "templates" / "aws-ray.yml.j2").read_text()
    section = re.search(r"\{%- if docker_image is not none %\}.*?\n(?=provider:)", template, re.S)[0]
    [resources] = task.resources
    rendered = jinja2.Template(section).render(
        docker_image=resources.extract_docker_image(), docker_container_name=constants.DEFAULT_DOCKER_CONTAINER_NAME,
        docker_run_options=run_options, docker_login_config=resources.docker_login_config)
    return yaml.safe_load(rendered)["docker"]


def over_ssh(runner, command: str, what: str, **kwargs) -> str:
    rc, out, err = runner.run(command, require_outputs=True, stream_logs=False, **kwargs)
    assert rc == 0, f"{what} failed over SSH (exit code {rc}):\n{(out + err)[-4000:]}"
    return out


def test_skypilots_own_setup_mounts_and_run_train_in_the_image(image, s3, vm, monkeypatch):
    from sky.backends import backend_utils
    from sky.data import storage
    from sky.provision import docker_utils
    from sky.skylet import constants, log_lib
    from sky.utils import command_runner

    port, bucket_api = s3
    for name, value in LOGIN.items():
        monkeypatch.setenv(name, value)
    # SkyPilot embeds the launching machine's AWS keys in the rclone profile (data_utils.Rclone); moto takes any
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    job = prepare("wan21-t2v-1.3b", None, ("train.max_train_epochs=1", "samples.enabled=false"), EXAMPLE_DATASET,
                  run_id=f"{PREFIX}-run")
    config = task_config(job, LaunchOptions(dataset=str(EXAMPLE_DATASET), image=image))
    task = sky_task(config)  # what `launcher run` hands to sky.jobs.launch
    store = task.storage_mounts[f"{MOUNT}/store"]
    bucket_api.create_bucket(Bucket=store.name)

    # 1. The VM: SkyPilot's container setup, as root in the container.
    run_options = [f"--add-host {host}:127.0.0.1" for host in (S3_HOST, f"{store.name}.{S3_HOST}")]
    run_options.append(f"-e RCLONE_S3_ENDPOINT=http://{S3_HOST}:{port}")
    initializer = docker_utils.DockerInitializer(docker_config(task, run_options),
                                                 command_runner.LocalProcessCommandRunner(), str(vm.log))
    user = initializer.initialize()  # the image's default user, which every later step runs as
    calls = (vm.bin / "docker.log").read_text().splitlines()
    assert calls == [f"login --username lora --password {LOGIN['SKYPILOT_DOCKER_PASSWORD']} {REGISTRY}",
                     f"pull {image}"]  # the task's registry login, then exactly the task's image
    container = constants.DEFAULT_DOCKER_CONTAINER_NAME
    rclone = subprocess.run(["podman", "exec", "-u", "0", "-i", container, "sh", "-c",
                             "apt-get install -y -qq rclone >/dev/null && cat > /usr/local/bin/rclone && "
                             "chmod 755 /usr/local/bin/rclone"], input=RCLONE_WRAPPER, text=True,
                            capture_output=True, timeout=600)
    assert rclone.returncode == 0, rclone.stderr[-2000:]

    # 2. Everything else over SSH, as the user SkyPilot found, as its backend sends it.
    ssh = command_runner.SSHCommandRunner(("127.0.0.1", constants.DEFAULT_DOCKER_PORT), ssh_user=user,
                                          ssh_private_key=str(vm.key), disable_control_master=True)
    over_ssh(ssh, "mkdir -p ~/.sky ~/sky_workdir", "SSH into the container as its default user")
    mount = storage.S3Store.mount_cached_command(  # the method's own code; `self` holds only what it reads
        types.SimpleNamespace(name=store.name, bucket=types.SimpleNamespace(name=store.name)),
        f"{MOUNT}/store", config=store.resolve_mount_cached_config())
    backend_utils.parallel_data_transfer_to_nodes([ssh], source=store.name, target=f"{MOUNT}/store", cmd=mount,
                                                  run_rsync=False, action_message="Mounting cached mode",
                                                  log_path=str(vm.log), source_bashrc=True)
    [(dst, src)] = task.file_mounts.items()
    assert (dst, src) == (f"{MOUNT}/dataset", str(EXAMPLE_DATASET))
    wrapped = backend_utils.FileMountHelper.wrap_file_mount(dst)
    home = over_ssh(ssh, "echo SKY_HOME=$HOME", "reading HOME").split("SKY_HOME=")[1].split()[0]
    backend_utils.parallel_data_transfer_to_nodes([ssh], source=src, target=wrapped, cmd=f"mkdir -p {wrapped}",
                                                  run_rsync=False, action_message="Syncing", log_path=str(vm.log))
    subprocess.run(["podman", "cp", f"{src}/.", f"{container}:{wrapped.replace('~', home, 1)}"], check=True)
    over_ssh(ssh, f"{command_runner.ALIAS_SUDO_TO_EMPTY_FOR_ROOT_CMD} && "
             f"{backend_utils.FileMountHelper.make_safe_symlink_command(source=dst, target=wrapped)}",
             "SkyPilot's file mount symlink")

    # 3. The job: SkyPilot's script for the task's `run` with its envs and secrets, run as its driver runs it.
    from sky import task as task_lib

    script = log_lib.make_task_bash_script(task.run, env_vars=task_lib.get_plaintext_envs_and_secrets(
        task.envs_and_secrets))
    encoded = base64.b64encode(script.encode()).decode()
    out = over_ssh(ssh, f"echo {encoded} | base64 -d > /tmp/sky_app_lora_gym && /bin/bash -i /tmp/sky_app_lora_gym",
                   "the task's run")
    assert "run succeeded" in out, out[-3000:]

    # 4. The run folder reached the bucket through SkyPilot's mount (rclone uploads a second after each write).
    key, deadline = f"output/{job.plan.run_id}/run.json", time.monotonic() + 60
    while "Contents" not in bucket_api.list_objects_v2(Bucket=store.name, Prefix=key):
        assert time.monotonic() < deadline, f"{key} never reached the bucket"
        time.sleep(1)
    manifest = json.loads(bucket_api.get_object(Bucket=store.name, Key=key)["Body"].read())
    assert manifest["status"] == "succeeded" and manifest["exit_code"] == 0
    lora = f"output/{job.plan.run_id}/wan21-t2v-1.3b.safetensors"
    assert "Contents" in bucket_api.list_objects_v2(Bucket=store.name, Prefix=lora)
