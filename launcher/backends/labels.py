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
    return f"{registry}/{name}" if registry else name


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
