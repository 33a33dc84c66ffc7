"""The test image, built with Podman from images/Dockerfile exactly as `make image-wan21` builds it: a Debian
base made with debootstrap, a loopback fake of the Hugging Face Hub serving tiny files for a test lock, and the
musubi-tuner test double as the `musubi` build context. Shared by every test module that runs the image;
Podman's build cache makes a second module's build of the same image take seconds.
"""

from __future__ import annotations

import random
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

from conftest import FAKES, ROOT, clean_env
from container_support import ensure_base_image, remove_named, require_podman
from fakes import tiny_wan
from fakes.fake_hub import FakeHub

from launcher.imagebuild import image_tag
from launcher.weights import lockfile

TOKEN = "hf_BuildTimeSecret_" + uuid.uuid4().hex[:12]


def tiny_repos(family: str) -> dict[str, dict[str, bytes]]:
    """Every file the family's lock needs at its real repo and path: each DiT a tiny real Wan DiT (the trainer
    double writes a LoRA for it, the entrypoint checks every key against it), the rest 2 KB of random bytes."""
    rnd, repos = random.Random(0), {}
    for entry in lockfile.skeleton(family):
        files = repos.setdefault(entry["repo"], {})
        if entry.get("shardable"):  # DiTs only (lockfile.skeleton)
            files[entry["path"]] = tiny_wan.dit_bytes(i2v="i2v" in entry["path"] and "2.1" in entry["path"])
        elif entry["kind"] == "weight":
            files[entry["path"]] = rnd.randbytes(2048)
        else:
            for name in ("tokenizer.json", "tokenizer_config.json", "spiece.model"):
                files[f"{entry['subfolder']}/{name}"] = rnd.randbytes(64)
    return repos


class Build:
    def __init__(self, hub: FakeHub, lock_dir: Path, base: str, registry: str):
        self.hub, self.lock_dir, self.base, self.registry = hub, lock_dir, base, registry

    def __call__(self, flavor: str = "full", context: Path = ROOT) -> str:
        argv = [sys.executable, "-m", "launcher.imagebuild", "build", "--family", "wan21", "--tasks", "t2v",
                "--flavor", flavor, "--engine", "podman", "--registry", self.registry, "--base-image", self.base,
                "--musubi-dir", str(FAKES / "fake_musubi_tuner"), "--lock-dir", str(self.lock_dir),
                "--network", "host", "--build-arg", "TRAINING_STACK=0", "--context", str(context)]
        if Path("/etc/ssl/certs/ca-certificates.crt").exists():  # pip behind this machine's TLS proxy
            argv += ["--ca-file", "/etc/ssl/certs/ca-certificates.crt"]
        env = clean_env(HF_ENDPOINT=self.hub.url, HF_TOKEN=TOKEN)
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        self.log = done.stdout + done.stderr
        return image_tag("wan21", flavor, "t2v", self.registry)


@contextmanager
def image_builder(tmp: Path, prefix: str):
    """A Build making images under localhost/<prefix>; they (and any container or volume holding `prefix`) are
    removed afterwards, after a failed setup or build too."""
    require_podman()
    hub = FakeHub(tiny_repos("wan21"), token=TOKEN).start()  # the build must present the token
    try:
        base = ensure_base_image(tmp)
        lockfile.write(tmp / "weights.lock.json", lockfile.resolve("wan21", endpoint=hub.url, token=TOKEN))
        yield Build(hub, tmp, base, f"localhost/{prefix}")
    finally:
        hub.stop()
        remove_named(prefix)
