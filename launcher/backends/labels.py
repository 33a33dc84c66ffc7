"""The image labels the launcher reads, defined once, and the checks a backend runs on them.

The images set these labels at build time (see images/README.md); a backend reads them before it starts
anything, so a stale or wrong image fails with one line naming the `make` command that fixes it, instead
of failing inside the container after the GPU is already paid for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import launcher
from launcher.contract import CONTRACT_VERSION
from launcher.core.engine_values import image_reference
from launcher.core.errors import UserError

VERSION = "org.opencontainers.image.version"
REVISION = "org.opencontainers.image.revision"
FAMILY = "ai.loragym.family"  # wan21 | wan22
FLAVOR = "ai.loragym.flavor"  # full (weights baked in) | slim
TASKS = "ai.loragym.tasks"  # comma list of t2v,i2v: the weights a full image holds
MUSUBI_COMMIT = "ai.loragym.musubi-commit"
CONTRACT = "ai.loragym.contract"  # must equal launcher.contract.CONTRACT_VERSION
WEIGHTS_LOCK = "ai.loragym.weights-lock"  # sha256 of the weights lock

# Set by the launcher on the containers it starts (not by the image), so they can be found and cleaned up.
LAUNCHED_BY = "ai.loragym.launched-by"

REGISTRY_ENV = "LORA_GYM_REGISTRY"


def default_image(family: str, env: Mapping[str, str] | None = None) -> str:
    """`[REGISTRY/]lora-gym-<family>:<launcher version>`: the image built from this checkout."""
    registry = (os.environ if env is None else env).get(REGISTRY_ENV, "").rstrip("/")
    name = f"lora-gym-{family}:{launcher.__version__}"
    return image_reference(f"{registry}/{name}", f"the default image (from {REGISTRY_ENV})") if registry else name


# Hosts that only this machine can reach: a cloud machine pulling `localhost:5000/x` asks itself.
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def registry_of(ref: str) -> str | None:
    """The registry host a reference names, or None for a bare name (`lora-gym-wan22:0.1.0`, which a cloud
    reads as Docker Hub's `library/lora-gym-wan22`). Docker's reference grammar: the first component names
    a registry when it holds a `.` or `:` or is `localhost`; `user/name` is a Docker Hub repository."""
    name = ref.split("@", 1)[0]
    if "/" not in name:
        return None
    first = name.split("/", 1)[0]
    if "." in first or ":" in first or first == "localhost":
        return first
    return "docker.io"


def image_tag(ref: str) -> str:
    """The tag of a reference, '' when it has none; a digest after it (`NAME:TAG@sha256:...`, as a launch pins a
    tag) leaves the tag's meaning (its flavor and tasks) as it was."""
    name = ref.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.partition(":")[2]


def cloud_image(ref: str | None, family: str, platform: str, env: Mapping[str, str] | None = None) -> str:
    """The image a cloud platform pulls: --image or the family's default, refused when only this machine has
    it (no registry, or a loopback one). Every cloud backend calls this before it prints or sends anything."""
    ref = image_reference(ref) if ref is not None else default_image(family, env)
    registry = registry_of(ref)
    if registry is None or registry.rsplit(":", 1)[0] in _LOCAL_HOSTS:
        where = "names no registry" if registry is None else f"is in {registry}, a registry only this machine reaches"
        raise UserError(f"{platform} pulls the image from a registry, and {ref} {where}: push it with "
                        f"`make push-{family} REGISTRY=ghcr.io/you` and set {REGISTRY_ENV}=ghcr.io/you "
                        "(or pass --image REGISTRY/NAME:TAG)")
    return ref


def make_command(family: str, tasks_all: bool = False) -> str:
    return f"make image-{family}" + (" TASKS=all" if tasks_all else "")


def task_mode(model_task: str) -> str:
    """`t2v` or `i2v` from a musubi task such as `i2v-A14B`."""
    return model_task.split("-", 1)[0]


def check_image(image: str, labels: Mapping[str, str] | None, family: str, model_task: str) -> None:
    """UserError unless `image` is a LoRA Gym image for this family, contract and task mode."""
    labels = labels or {}
    fix = make_command(family)
    if CONTRACT not in labels:
        raise UserError(f"image {image} has no {CONTRACT} label, so it is not a LoRA Gym image: "
                        f"build one with `{fix}`")
    if labels.get(FAMILY) != family:
        raise UserError(f"image {image} is for {labels.get(FAMILY) or 'no family'}, the preset needs {family}: "
                        f"build it with `{fix}` (or pass --image lora-gym-{family}:TAG)")
    if labels[CONTRACT] != CONTRACT_VERSION:
        raise UserError(f"image {image} was built for {labels[CONTRACT]}, this launcher needs {CONTRACT_VERSION}: "
                        f"rebuild with `{fix}`")
    # Only a full image carries weights, and only for the task modes it was built with.
    mode = task_mode(model_task)
    tasks = [t.strip() for t in labels.get(TASKS, "").split(",") if t.strip()]
    # "all" is also accepted: it is how `make image-* TASKS=all` spells t2v,i2v on the build side.
    if labels.get(FLAVOR) == "full" and mode not in tasks and "all" not in tasks:
        raise UserError(f"image {image} holds weights for {','.join(tasks) or 'no task'} only, the preset needs "
                        f"{mode}: rebuild with `{make_command(family, tasks_all=True)}`")
