# ruff: noqa: F811  (the fixtures imported from test_runpod_backend are test arguments here)
"""The test image started the way RunPod starts a pod, from the body the launcher really sends.

`launcher run --backend runpod` runs against the fake RunPod API and moto's S3 (the volume's S3 API): it uploads
the dataset and creates the pod. Then this test does what RunPod does with that body (github.com/runpod/docs):
- the network volume is mounted at /workspace (storage/network-volumes.mdx), its files as the S3 API put them
  (a key `k` is /workspace/k, storage/s3-api.mdx), owned by root;
- the image runs as its own default user: the CreatePodRequest has no field for another (api-reference-v2
  openapi.json), so no `--user`;
- the container gets the body's `env`, exactly, plus what RunPod sets in every pod
  (pods/templates/environment-variables.mdx): RUNPOD_POD_ID, RUNPOD_API_KEY (the pod-scoped key), RUNPOD_DC_ID,
  RUNPOD_VOLUME_ID, RUNPOD_GPU_COUNT, RUNPOD_POD_HOSTNAME; and RUNPOD_API_BASE_URL pointing the entrypoint at the
  fake API on loopback (--network host) instead of api.runpod.io.
The image is built from images/Dockerfile with the musubi-tuner test double (tests/image_support.py). The pod
trains, writes its run folder on the volume and ends itself through the fake API; `launcher pull` then fetches
the folder through the S3 API. The same pod run as uid 1000 (the image's default user before issue 16) cannot
write to the root-owned volume: that case shows this test can fail.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
from container_support import remove_named, run_name
from image_support import image_builder
from test_runpod_backend import (  # noqa: F401  (fixtures)
    REGISTRY,
    fake,
    launch,
    registry,
    s3,
    volume,
)

from launcher import runs
from launcher.backends import runpod_s3
from launcher.cli.main import main

PREFIX = run_name("runpod")  # every image, volume and container below holds it; removed at the module's end


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    with image_builder(tmp_path_factory.mktemp("runpod-image"), PREFIX) as build:
        # launcher.weights.lockfile.write leaves the test lock 0600 (mkstemp), and COPY keeps the mode: readable
        # as a checked-out lock is, so that the uid 1000 case fails on the volume alone.
        (build.lock_dir / "weights.lock.json").chmod(0o644)
        yield build("full")


def podman(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *argv], capture_output=True, **kwargs)


def volume_from_s3(bucket: str) -> str:
    """A Podman volume holding the network volume's files as RunPod's S3 API stored them, owned by root."""
    client, archive, folders = s3(), io.BytesIO(), set()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for item in runpod_s3.list_objects(client, bucket, "lora-gym"):  # ROOT, all the launcher writes
            parents = [str(p) for p in reversed(Path(item["Key"]).parents) if str(p) != "."]
            for folder in (f for f in parents if f not in folders):
                folders.add(folder)
                tar.addfile(_owned_by_root(tarfile.TarInfo(folder), tarfile.DIRTYPE, 0o755))
            data = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            info = _owned_by_root(tarfile.TarInfo(item["Key"]), tarfile.REGTYPE, 0o644)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    name = f"{PREFIX}-volume-{uuid.uuid4().hex[:6]}"
    podman("volume", "create", name, check=True)
    podman("volume", "import", name, "-", input=archive.getvalue(), check=True)
    return name


def _owned_by_root(info: tarfile.TarInfo, kind: bytes, mode: int) -> tarfile.TarInfo:
    info.type, info.mode, info.uid, info.gid = kind, mode, 0, 0
    return info


def volume_files(name: str) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    """Every file on the volume: its path below the mount point, its owner and mode, its content."""
    exported = podman("volume", "export", name, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(exported)) as tar:
        return {m.name.removeprefix("./"): (m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()}


def start_pod(image: str, body: dict, pod: dict, fake, volume_name: str, user: str | None):
    """`podman run` as RunPod runs the pod: the body's env as sent, RunPod's own variables, the volume."""
    (mount,) = body["mounts"]["network"]
    env = body["env"] | {"RUNPOD_POD_ID": pod["id"], "RUNPOD_API_KEY": fake.pod_key(pod["id"]),
                         "RUNPOD_DC_ID": pod["dataCenterId"], "RUNPOD_VOLUME_ID": mount["volumeId"],
                         "RUNPOD_GPU_COUNT": str(body["gpu"]["count"]), "RUNPOD_POD_HOSTNAME": f"{pod['id']}-host",
                         "RUNPOD_API_BASE_URL": fake.url}
    argv = ["run", "--rm", "--name", f"{PREFIX}-pod-{uuid.uuid4().hex[:6]}", "--network", "host",
            "-v", f"{volume_name}:{mount['path']}"]
    argv += [f"--user={user}"] if user else []  # only the negative case: RunPod has no such option
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    return podman(*argv, image, text=True, timeout=600)


@pytest.mark.parametrize("user", [None, "1000:1000"], ids=["as-runpod-runs-it", "as-uid-1000"])
def test_the_image_trains_on_a_runpod_pod_and_ends_it(image, dataset, volume, fake, capsys, tmp_path, user):
    tag = image.rsplit("/", 1)[1]  # the image the launcher names is this build, pushed to REGISTRY
    assert launch(dataset, volume, "--image", f"{REGISTRY}/{tag}", "--set", "train.max_train_epochs=1") == 0
    (body,), (pod,) = fake.created, fake.pods.values()
    assert body["image"] == f"{REGISTRY}/{tag}"
    run_id = body["env"]["LORA_GYM_RUN_ID"]
    volume_name = volume_from_s3(volume)
    try:
        done = start_pod(image, body, dict(pod), fake, volume_name, user)
        files = volume_files(volume_name)
    finally:
        remove_named(volume_name)
    output = f"lora-gym/output/{run_id}/"
    if user:  # the old non-root default user: it cannot write to the volume RunPod mounts root-owned
        assert done.returncode == 2 and "/workspace/lora-gym" in done.stderr, done.stdout[-2000:] + done.stderr
        assert not [path for path in files if path.startswith(output)]
    else:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        manifest = json.loads(files[output + "run.json"][1])
        assert manifest["status"] == "succeeded" and manifest["exit_code"] == 0
        lora = output + manifest["outputs"][0]["path"]
        assert files[lora][0].size > 0 and files[lora][0].uid == 0
        for path, (_, data) in files.items():  # what the volume's S3 API then shows
            if path.startswith(output):
                s3().put_object(Bucket=volume, Key=path, Body=data)
        capsys.readouterr()
        assert main(["pull", runs.all_runs()[0]["run_id"], str(tmp_path / "pulled")]) == 0
        assert (tmp_path / "pulled" / run_id / Path(lora).name).read_bytes() == files[lora][1]
    # Either way the pod ended itself, with its own key, through the API (on bad input too: exit code 2).
    assert fake.endings == [(pod["id"], "terminate", "pod key")] and fake.pods[pod["id"]]["status"] == "TERMINATED"
    assert ("DELETE", f"/v2/pods/{pod['id']}") in fake.requests
    assert fake.pod_key(pod["id"]) not in done.stdout + done.stderr


