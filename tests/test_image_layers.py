"""`make image-wan21` from a fresh copy of the project with no weights lock, under a 2 MB layer cap.

The fake Hub serves the wan21 files, the 1.3B DiT as a real 5 MB safetensors file and the T5 as 4.5 MB:
the build pins the lock itself, stores the DiT as shards and the T5 as parts, keeps every weight layer
under the cap, and the container trains from the first shard and the T5 joined once into the cache volume.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import EXAMPLE_DATASET, FAKES, ROOT, clean_env
from container_support import ensure_base_image, remove_named, require_podman, run_name
from fakes.fake_hub import FakeHub
from test_layers import DIT, repos

from launcher import loracheck
from launcher.imagebuild import image_tag
from launcher.weights import lockfile

CAP_GB = "0.002"
CAP = 2_000_000
REGISTRY = f"localhost/{run_name('cap')}"  # holds the run id: the session check finds anything left


def fresh_copy(target: Path) -> Path:
    """The tracked files as a new clone has them (no lock is committed: none is copied)."""
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                             check=True).stdout.split()
    for name in tracked:
        if (ROOT / name).is_file() and not name.endswith("weights.lock.json"):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(image tag, the fresh copy, make's output, the fake hub), the image removed afterwards."""
    require_podman()
    tmp = tmp_path_factory.mktemp("layercap")
    base = ensure_base_image(tmp)
    source = fresh_copy(tmp / "clone")
    opts = (f"--base-image {base} --musubi-dir {FAKES / 'fake_musubi_tuner'} --network host "
            "--build-arg TRAINING_STACK=0")
    if Path("/etc/ssl/certs/ca-certificates.crt").exists():  # pip behind this machine's TLS proxy
        opts += " --ca-file /etc/ssl/certs/ca-certificates.crt"
    try:
        with FakeHub(repos(tmp)) as hub:
            done = subprocess.run(["make", "-C", str(source), "image-wan21", "ENGINE=podman", "TASKS=t2v",
                                   f"MAX_LAYER_GB={CAP_GB}", f"REGISTRY={REGISTRY}", f"IMAGE_OPTS={opts}"],
                                  env=clean_env(HF_ENDPOINT=hub.url), capture_output=True, text=True, timeout=1500)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            yield image_tag("wan21", "full", "t2v", REGISTRY), source, done.stdout + done.stderr, hub
    finally:  # a failed build too: whatever holds the registry's name goes
        remove_named(REGISTRY.removeprefix("localhost/"))


def test_make_image_pins_a_missing_lock_first_and_says_to_commit_it(built):
    _, source, log, hub = built
    lock = source / "images" / "wan21" / "weights.lock.json"
    doc = lockfile.read(lock)
    assert {e["repo"] for e in doc["files"]} <= set(hub.repos) and "commit it" in log
    assert lock.read_text().count('"shardable": true') == sum(1 for e in doc["files"] if e.get("shardable"))


def _weight_layers(archive: Path) -> dict[str, int]:
    """layer tar name -> size, for each layer of a docker-archive that holds files under weights/."""
    found = {}
    with tarfile.open(archive) as saved:
        for member in saved.getmembers():
            if member.isfile() and member.name.endswith(".tar"):
                with tarfile.open(fileobj=saved.extractfile(member)) as layer:
                    if any(m.name.lstrip("./").startswith("weights/") and m.isfile() for m in layer.getmembers()):
                        found[member.name] = member.size
    return found


def test_no_weight_layer_is_over_the_cap(built, tmp_path):
    tag = built[0]
    archive = tmp_path / "image.tar"
    subprocess.run(["podman", "save", "--format", "docker-archive", "-o", str(archive), tag], check=True,
                   capture_output=True)
    sizes = _weight_layers(archive)
    assert len(sizes) >= 5 and max(sizes.values()) <= CAP, sizes  # the 5 MB DiT and 4.5 MB T5 needed several


def test_the_container_trains_from_the_first_shard_and_joins_the_t5_once(built, tmp_path):
    tag = built[0]
    volume = run_name("cache")
    output = tmp_path / "out"
    output.mkdir()
    command = ["podman", "run", "--rm", "-e", "LORA_GYM_PRESET=wan21-t2v-1.3b",
               "-e", "LORA_GYM_SET=train.max_train_epochs=1", "-v", f"{EXAMPLE_DATASET}:/dataset:ro",
               "-v", f"{output}:/output", "-v", f"{volume}:/cache", "--user", f"{os.getuid()}:{os.getgid()}", tag]
    try:
        first = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        second = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    finally:
        subprocess.run(["podman", "volume", "rm", "-f", volume], capture_output=True)
    assert "into the cache volume, once" in first.stdout and "joining" not in second.stdout
    layout = json.loads(subprocess.run(["podman", "run", "--rm", "--entrypoint", "cat", tag,
                                        "/opt/lora-gym/weights.layout.json"], capture_output=True, text=True,
                                       check=True).stdout)["files"]
    shard = f"/weights/{layout[DIT]['pieces'][0]}"
    assert re.search(r"-00001-of-0000[2-9]\.safetensors$", shard) and f"--dit {shard}" in first.stdout
    assert "--t5 /cache/weights/" in first.stdout
    lora = next(output.glob("*/wan21-t2v-1.3b.safetensors"))
    # musubi records the --dit file's name; the entrypoint checked every LoRA key against all the shards.
    assert loracheck.read_header(lora).metadata["ss_sd_model_name"] == Path(shard).name
    record = json.loads((lora.parent / "run.json").read_text())["lora_check"]["train"]
    assert record["status"] == "passed" and record["dit"] == shard and record["files"][0]["modules"] == 24

