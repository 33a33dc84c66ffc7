"""Shared by the container tests: a Debian base image made without a registry, and a Podman API service."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

BASE_IMAGE = "localhost/debian:bookworm"


def require_podman() -> None:
    if not shutil.which("podman"):
        pytest.skip("podman is not installed: the container tests run through it (.ci/run installs it)")


def ensure_base_image(tmp: Path) -> str:
    """localhost/debian:bookworm from Debian's packages when missing (about 45 s, once per machine)."""
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE]).returncode == 0:
        return BASE_IMAGE
    if not shutil.which("debootstrap"):
        pytest.fail(f"{BASE_IMAGE} is missing and debootstrap is not installed: apt-get install -y debootstrap")
    rootfs = tmp / "rootfs"
    for command in (["debootstrap", "--variant=minbase", "bookworm", str(rootfs), "http://deb.debian.org/debian"],
                    ["sh", "-c", f"tar -C {shlex.quote(str(rootfs))} -c . | podman import - {BASE_IMAGE}"]):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"making {BASE_IMAGE} failed: {' '.join(command)}: {(done.stderr or done.stdout)[-500:]}")
    shutil.rmtree(rootfs)  # 200 MB, now inside the image
    return BASE_IMAGE


@contextmanager
def podman_service(tmp: Path):
    """DOCKER_HOST of a private Podman API service (docker-py speaks to it), stopped afterwards."""
    socket = tmp / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{socket}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not socket.exists() and service.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not socket.exists():
        service.kill()
        pytest.fail(f"podman system service did not open {socket} (exit status {service.poll()})")
    try:
        yield f"unix://{socket}"
    finally:
        service.terminate()
        service.wait(10)
