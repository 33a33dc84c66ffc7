"""The local backend's GPUs: --gpu-ids checked (against this machine's GPUs where they can be counted), and the
engine's GPU request for them (Docker's NVIDIA request, or CDI devices for Podman)."""

from __future__ import annotations

import os
import shutil
import subprocess

from launcher.core.engine_values import gpu_ids
from launcher.core.errors import UserError

PODMAN_CDI_API = (5, 4)  # first Podman whose Docker API honours GPU (CDI) device requests


def parse_gpus(value: str, count: int | None = None) -> tuple[str, ...] | str | None:
    return gpu_ids(value, "--gpu-ids", count)


def host_gpu_count() -> int | None:
    """This machine's GPUs (`nvidia-smi -L`) when the engine runs here too; None when that cannot be known (a
    remote DOCKER_HOST, no nvidia-smi): --gpu-ids then gets only the static range check."""
    host = os.environ.get("DOCKER_HOST", "")
    found = shutil.which("nvidia-smi")
    if (host and not host.startswith("unix://")) or not found:
        return None
    try:
        listed = subprocess.run([found, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return sum(line.startswith("GPU ") for line in listed.stdout.splitlines()) if listed.returncode == 0 else None


def gpu_requests(gpus: tuple[str, ...] | str | None, engine: str, version: tuple[int, ...]) -> list[dict]:
    """docker-py device_requests: Docker's NVIDIA request, or CDI devices for Podman (which ignores the former)."""
    if not gpus:
        return []
    ids = None if gpus == "all" else list(gpus)
    if engine != "podman":
        request = {"count": -1} if ids is None else {"device_ids": ids}
        return [request | {"capabilities": [["gpu"]]}]
    if version < PODMAN_CDI_API:
        raise UserError(f"Podman {'.'.join(map(str, version))} ignores GPU requests over its Docker API "
                        "(honoured from Podman 5.4): upgrade Podman or use Docker, or pass --gpu-ids none")
    cdi = [f"nvidia.com/gpu={i}" for i in (ids or ["all"])]
    return [{"driver": "cdi", "device_ids": cdi, "capabilities": [["gpu"]]}]
