"""Shared by the container tests: names unique to the run, their removal, a Debian base image made without a
registry, and a Podman API service.

Hermetic: every image, volume and container a test makes is named with `run_name()` (it holds RUN, new for
each pytest run: uuid4 reads os.urandom, so pytest-randomly's reseeding of `random` cannot repeat it) and
is removed by the fixture that made it, failed or not (`remove_named` in a `finally`). The session then
checks that nothing holding RUN is left (conftest.py). No test relies on what an earlier test or run left:
CI (.ci/run) runs the suite against a throw-away Podman storage root, so there is nothing earlier to find.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

RUN = uuid.uuid4().hex[:8]
USED = False  # set once a test reaches Podman: only then does the session check for leftovers

# Not run-unique, on purpose: the base is made when missing and never changed or removed by a test (the
# images built FROM it are run-unique and removed). Its content is a function of Debian bookworm alone,
# so reusing it hides nothing a new one would show; CI makes it afresh in each run's empty storage root,
# and on a developer's machine it saves the ~45 s debootstrap each run, like Podman's build cache does.
BASE_IMAGE = "localhost/debian:bookworm"


def require_podman() -> None:
    global USED
    if not shutil.which("podman"):
        pytest.skip("podman is not installed: the container tests run through it (.ci/run installs it)")
    USED = True


def run_name(kind: str) -> str:
    """`lgtest-<RUN>-<kind>-<6 hex>`: a name for an image repository, volume or container of this run only."""
    return f"lgtest-{RUN}-{kind}-{uuid.uuid4().hex[:6]}"


def _podman_lines(*argv: str) -> list[str]:
    return subprocess.run(["podman", *argv], capture_output=True, text=True).stdout.splitlines()


def remove_named(fragment: str) -> list[str]:
    """Remove the containers, volumes and images whose name (or a container's image) holds `fragment`;
    returns what was there. Never raises: it runs in finalizers, after a failure too."""
    containers = [line.split()[0] for line in _podman_lines("ps", "-a", "--format", "{{.ID}} {{.Names}} {{.Image}}")
                  if fragment in line]
    volumes = [name for name in _podman_lines("volume", "ls", "--format", "{{.Name}}") if fragment in name]
    images = [ref for ref in _podman_lines("images", "--format", "{{.Repository}}:{{.Tag}}") if fragment in ref]
    for argv, names in ((["rm", "-f", "-i", "-t", "0"], containers), (["volume", "rm", "-f"], volumes),
                        (["rmi", "-f", "-i"], images)):
        if names:
            subprocess.run(["podman", *argv, *names], capture_output=True)
    return [f"container {c}" for c in containers] + [f"volume {v}" for v in volumes] + [f"image {i}" for i in images]


def ensure_base_image(tmp: Path) -> str:
    """localhost/debian:bookworm from Debian's packages when missing (about 45 s, once per storage root)."""
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE]).returncode == 0:
        return BASE_IMAGE
    if not shutil.which("debootstrap"):
        pytest.fail(f"{BASE_IMAGE} is missing and debootstrap is not installed: apt-get install -y debootstrap")
    rootfs = tmp / "rootfs"
    try:
        for command in (["debootstrap", "--variant=minbase", "bookworm", str(rootfs), "http://deb.debian.org/debian"],
                        ["sh", "-c", f"tar -C {shlex.quote(str(rootfs))} -c . | podman import - {BASE_IMAGE}"]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.fail(f"making {BASE_IMAGE} failed: {' '.join(command)}: {(done.stderr or done.stdout)[-500:]}")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)  # 200 MB, now inside the image
    return BASE_IMAGE


@contextmanager
def podman_service(tmp: Path):
    """DOCKER_HOST of a private Podman API service (docker-py speaks to it), stopped afterwards. It inherits
    this process's environment, so it sees the same storage root (CONTAINERS_STORAGE_CONF) as the podman CLI."""
    socket = tmp / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{socket}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not socket.exists() and service.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not socket.exists():
            pytest.fail(f"podman system service did not open {socket} (exit status {service.poll()})")
        yield f"unix://{socket}"
    finally:
        service.terminate()
        try:
            service.wait(10)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
