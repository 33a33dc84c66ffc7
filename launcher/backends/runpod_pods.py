"""RunPod pods as data: the CreatePodRequest bodies (RunPod's REST API v2) that `--dry-run` prints and
`launch` posts, and the names they put on the network volume. No SDK, no network: dry runs build them.

The container runs as the image's default user, root. RunPod's pod API cannot choose another: the v2
CreatePodRequest is ContainerConfig (image, args, disk, env, ports, registry) plus placement and mounts, with
`unevaluatedProperties: false` (api-reference-v2/openapi.json in github.com/runpod/docs), so no user, uid or
security field exists. The network volume replaces the pod's volume disk at /workspace
(storage/network-volumes.mdx, pods/storage/types.mdx), and every example RunPod's docs give of writing there is
as root (`ssh root@...`, `rsync ... /workspace/ root@...:/workspace` in storage/network-volumes.mdx): a
non-root default user could not create the run folders on a root-owned volume (tests/test_runpod_container.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
from pathlib import Path

from launcher import cost
from launcher.backends import LaunchOptions, labels
from launcher.backends.runpod_gpus import CLOUD, price_of
from launcher.core.engine_values import runpod_volume_id
from launcher.core.errors import UserError
from launcher.core.job import Job

MOUNT = "/workspace"  # where a pod's network volume is mounted by default (storage/network-volumes.mdx)
ROOT = "lora-gym"  # our folder on the volume: the S3 key prefix and the path under MOUNT
DEFAULT_DATACENTER = "US-KS-2"  # has the S3 API; RUNPOD_DATACENTER picks another for a new volume
HF_SECRET = "{{ RUNPOD_SECRET_hf_token }}"  # resolved by RunPod inside the pod; the value never passes here
# Container disk: the image is pulled onto it. Full images bake the weights (docs/images.md, Sizes).
SOFTWARE_GB, DISK_MARGIN_GB = 20, 30
APPROX_WEIGHTS_GB = {("wan22", "all"): 130, ("wan22", "t2v"): 70, ("wan22", "i2v"): 70,
                     ("wan21", "all"): 130, ("wan21", "t2v"): 43, ("wan21", "i2v"): 87}
REGISTRY_AUTH_ENV = "RUNPOD_REGISTRY_AUTH_ID"
TOKEN_PREFIXES = ("ghp_", "gho_", "ghs_", "github_pat_", "glpat-", "dckr_pat_")  # GitHub, GitLab, Docker Hub


def image_of(job: Job, options: LaunchOptions) -> str:
    """The image RunPod pulls. A bare local tag is refused here (so by run, dry run and sweep alike): RunPod
    would retry pulling it from Docker Hub for as long as the pod lives, billing the GPU meanwhile, and the
    entrypoint that ends the pod would never start."""
    return labels.cloud_image(options.image, job.loaded.preset.family, "RunPod")


def registry_auth(environ=os.environ) -> str | None:
    """RUNPOD_REGISTRY_AUTH_ID: the id of a RunPod container registry credential, for a private image (a new
    GHCR package is private). RunPod keeps the username and password; the pod body names only the id, in the
    CreatePodRequest field `registry` ("Container registry credential ID (for private images)", ContainerConfig
    in api-reference-v2/openapi.json). The credential is made once with `runpodctl registry create --name ghcr
    --username USER --password TOKEN` (runpodctl/reference/runpodctl-registry.mdx) or POST /v2/registries."""
    value = environ.get(REGISTRY_AUTH_ENV, "").strip()
    # Never echoed: a token pasted here by mistake must not reach a terminal, a log or the pod body.
    if value and (value.startswith(TOKEN_PREFIXES) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", value)):
        raise UserError(f"{REGISTRY_AUTH_ENV} does not hold a RunPod container registry credential id: set it to "
                        "the id `runpodctl registry list` prints (the token itself stays with RunPod)")
    return value or None


def image_flavor(image: str) -> tuple[str, str]:
    """(full | slim, all | t2v | i2v) from a tag `<version>[-slim][-<tasks>]`; a bare digest counts as full, all."""
    parts = labels.image_tag(image).split("-")[1:]
    return ("slim" if "slim" in parts else "full"), next((p for p in parts if p in ("t2v", "i2v")), "all")


def weights_gb(family: str, tasks: str) -> float:
    """The lock's total where this checkout has one (images/<family>/weights.lock.json), else docs/images.md's."""
    lock = Path(__file__).resolve().parents[2] / "images" / family / "weights.lock.json"
    if lock.is_file():
        files = json.loads(lock.read_text(encoding="utf-8"))["files"]
        return sum(f["size"] for f in files if tasks == "all" or tasks in f.get("tasks", [tasks])) / 1e9
    return APPROX_WEIGHTS_GB[(family, tasks)]


def container_disk_gb(job: Job, image: str) -> int:
    flavor, tasks = image_flavor(image)
    weights = 0 if flavor == "slim" else weights_gb(job.loaded.preset.family, tasks)
    return math.ceil(SOFTWARE_GB + weights + DISK_MARGIN_GB)


def dataset_key(job: Job) -> str:
    """Content-addressed: a changed dataset gets a new folder, so no stale file is ever trained on."""
    digest = hashlib.sha256("".join(f"{d.relpath}:{d.digest};" for d in job.layout.dirs).encode()).hexdigest()
    return f"{ROOT}/datasets/{digest[:16]}"


def preset_key(job: Job) -> str | None:
    origin = job.loaded.origin
    return f"{ROOT}/presets/{job.loaded.content_hash[:12]}-{Path(origin).stem}.toml" if Path(origin).is_file() \
        else None


def experts(job: Job) -> list[str | None]:
    # `both`: two pods on the same volume, one per expert; the entrypoint's cache lock makes the second
    # wait for the first's caches, so the caches are computed once and nothing waits on this machine.
    # Each names the other's run folder (LORA_GYM_PAIR_DIR): the pod that finishes training last samples the pair
    # with both LoRAs, so no third pod and no waiting pod is billed for it. storage/network-volumes.mdx leaves
    # concurrent writes to the application: each pod writes only its own run folder, and the one shared file, the
    # claim of a tie, is an exclusive create as the cache lock's (should two both win, each samples into its own).
    return ["high", "low"] if job.plan.expert == "both" else [job.plan.expert]


def pod_run_id(job: Job, expert: str | None) -> str:
    return f"{job.plan.run_id}-{expert}" if job.plan.expert == "both" else job.plan.run_id


def pod_env(job: Job, options: LaunchOptions, expert: str | None, hours: float) -> dict[str, str]:
    """The entrypoint's contract, pointed at the volume. Only references to secrets, never their values."""
    key = preset_key(job)
    # LORA_GYM_IMAGE: run.json records the image (its digest when the reference carries one).
    env = {"LORA_GYM_PRESET": f"{MOUNT}/{key}" if key else job.loaded.origin, "LORA_GYM_IMAGE": image_of(job, options)}
    if expert:
        env["LORA_GYM_EXPERT"] = expert
    if job.loaded.overrides:
        env["LORA_GYM_SET"] = shlex.join(job.loaded.overrides)
    if job.plan.expert == "both":
        env["LORA_GYM_PAIR_DIR"] = f"{MOUNT}/{ROOT}/output/{pod_run_id(job, {'high': 'low', 'low': 'high'}[expert])}"
    env |= {"LORA_GYM_RUN_ID": pod_run_id(job, expert), "LORA_GYM_DATASET_DIR": f"{MOUNT}/{dataset_key(job)}",
            "LORA_GYM_OUTPUT_DIR": f"{MOUNT}/{ROOT}/output", "LORA_GYM_CACHE_DIR": f"{MOUNT}/{ROOT}/cache",
            "LORA_GYM_MAX_HOURS": f"{hours:.4g}", "LORA_GYM_TERMINATE_POD": "1"}
    if image_flavor(image_of(job, options))[0] == "slim":  # slim images download (possibly gated) weights
        env["HF_TOKEN"] = HF_SECRET
    return env


def quote_for(job: Job, gpu: dict) -> cost.Quote:
    """The price of this GPU type for the whole run: every pod (two with `--expert both`) x its GPUs."""
    usd, source = price_of(gpu)
    pods = len(experts(job))  # they train at the same time
    return cost.Quote(gpu["id"], usd, gpus=pods * job.plan.resources.gpu_count, source=source, parallel=pods)


def volume_id(options: LaunchOptions) -> str | None:
    """--volume, checked: it goes into API paths and is the S3 bucket name, so only an id's characters pass."""
    return None if options.volume is None else runpod_volume_id(options.volume)


def pod_body(job: Job, options: LaunchOptions, expert: str | None, gpu: str, volume: str, datacenter: str | None,
             hours: float) -> dict:
    """The CreatePodRequest of RunPod's REST API v2, as sent."""
    image, registry = image_of(job, options), registry_auth()
    body = {"name": f"lora-gym-{pod_run_id(job, expert)}"[:120], "image": image,
            "gpu": {"id": gpu, "count": job.plan.resources.gpu_count}, "cloud": CLOUD,
            "disk": container_disk_gb(job, image), "mounts": {"network": [{"volumeId": volume, "path": MOUNT}]},
            "env": pod_env(job, options, expert, hours)}
    if registry:
        body["registry"] = registry
    if datacenter:  # a network volume is attached only to pods in its own datacenter
        body["dataCenterIds"] = [datacenter]
    return body


def check_pull(job: Job, options: LaunchOptions) -> None:
    """What RunPod needs to pull the image and mount the volume, checked before a volume, an upload or a pod is
    made (and by run and sweep before anything is printed)."""
    image_of(job, options)
    registry_auth()
    volume_id(options)


def pull_note(job: Job, options: LaunchOptions) -> str:
    image, registry = image_of(job, options), registry_auth()
    if registry:
        return f"# RunPod pulls {image} with registry credential {registry}"
    return (f"# RunPod pulls {image} without credentials: for a private image (a new GHCR package is private) "
            f"set {REGISTRY_AUTH_ENV} to a RunPod registry credential id")
